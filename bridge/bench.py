"""`vaejam bench`: how fast and how tight the live band is, measured, as a Markdown report.

- Inference: per-bar latency of what the worker does for a bar (BandEngine.step + note extraction)
  on the CPU with the daemon's one torch thread, and on CUDA when present.
- End to end: the real daemon (a subprocess, as a user starts it) follows `jack_midi_clock` at each
  tempo while a client plays piano chords; `jack_midi_dump` records the clock and the band on one
  JACK timeline, frame-accurate, so a band note-on's error is its frame minus the frame of the step
  clock that is due to play it (p50/p99/max in ms and in JACK periods). Also late bars (from
  /vaejam/status), start-up time to the ready line, and peak RSS (VmHWM).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.bars import N_PITCHES, STEPS_PER_BAR

REPO = Path(__file__).resolve().parents[1]
TICKS_PER_STEP = 3


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="measure inference latency and live timing against jack_midi_clock",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", metavar="DIR", help="model directory (default: the shipped models/default)")
    p.add_argument("--bars", type=int, default=500, help="bars per inference benchmark (default: 500)")
    p.add_argument("--bpm", default="120,200", help="tempos for the live runs, comma-separated (default: 120,200)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each live run (default: 30)")
    p.add_argument("--no-live", action="store_true", help="inference only (no JACK needed)")
    p.add_argument("--write", metavar="FILE", help="append the report to FILE (e.g. BENCHMARKS.md)")
    p.set_defaults(func=bench_command)


# ---- inference ---------------------------------------------------------------------------------
def piano_pattern(bar: int) -> np.ndarray:
    """A played-looking bar: a triad per beat over a four-chord loop, (32, 128) velocity/127."""
    roll = np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)
    root = (60, 65, 67, 57)[bar % 4]
    for beat in range(4):
        for interval in (0, 4, 7):
            roll[beat * 8: beat * 8 + 6, root + interval] = (70 + 5 * beat) / 127
    return roll


def summary(values: Sequence[float]) -> dict[str, float]:
    data = np.asarray(values, float)
    return {"n": len(data), "p50": float(np.percentile(data, 50)), "p99": float(np.percentile(data, 99)),
            "max": float(data.max())}


def inference_latency(model_dir: str | None, device: str, bars: int) -> dict[str, float]:
    """Milliseconds per bar of the worker's job: engine.step + note extraction."""
    import torch

    from bridge.daemon import TORCH_THREADS
    from bridge.session import roll_notes
    from models.checkpoint import load_band_model
    from models.engine import BandEngine
    from models.style import load_style_banks

    torch.set_num_threads(TORCH_THREADS)
    model = load_band_model(model_dir)
    engine = BandEngine(model, load_style_banks(model_dir, model), device)
    engine.warmup()
    times = []
    for bar in range(bars):
        started = time.perf_counter()
        out = engine.step(piano_pattern(bar))
        for row in out:
            roll_notes(row)
        times.append((time.perf_counter() - started) * 1000)
    return summary(times)


# ---- live --------------------------------------------------------------------------------------
def jack_answers() -> bool:
    env = {**os.environ, "JACK_NO_START_SERVER": "1"}
    return subprocess.run(["jack_lsp"], capture_output=True, env=env, timeout=5).returncode == 0


def jack_value(tool: str) -> int:
    return int(subprocess.run([tool], capture_output=True, text=True, timeout=5).stdout.split()[0])


def jack_ports() -> list[str]:
    return subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=5).stdout.split("\n")


def find_port(client: str, port: str, timeout: float = 5.0) -> str:
    """The full JACK name of `port` of client `client` (JACK may have numbered it: client-01)."""
    pattern = re.compile(rf"^{re.escape(client)}(-\d+)?:{re.escape(port)}$")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in jack_ports() if pattern.match(p)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise RuntimeError(f"no JACK port {client}:{port} in {jack_ports()}")


def transport(command: str) -> None:
    subprocess.run(["jack_transport"], input=f"{command}\nquit\n", capture_output=True, text=True, timeout=5)


@dataclass
class LiveResult:
    bpm: float
    seconds: float
    ready_s: float  # Popen -> ready line
    ready_own_s: float  # what the daemon reports (after its interpreter started)
    rss_mb: float
    status: dict
    errors_frames: np.ndarray  # every band note-on: frame minus its step clock's frame
    first_frames: np.ndarray  # the first note-on of each step only
    period: int
    rate: int


class PianoClient(threading.Thread):
    """Plays a triad per beat into the daemon (timing is not measured on this side)."""

    def __init__(self, port, bpm: float) -> None:
        super().__init__(name="bench-piano", daemon=True)
        self._port = port
        self._beat = 60.0 / bpm
        self._halt = threading.Event()  # set by stop()

    def run(self) -> None:
        import mido

        beat = 0
        while not self._halt.is_set():
            root = (60, 65, 67, 57)[(beat // 4) % 4]
            for interval in (0, 4, 7):
                self._port.send(mido.Message("note_on", note=root + interval, velocity=80))
            self._halt.wait(self._beat * 0.7)
            for interval in (0, 4, 7):
                self._port.send(mido.Message("note_off", note=root + interval))
            self._halt.wait(self._beat * 0.3)
            beat += 1

    def stop(self, block: bool = True) -> None:
        self._halt.set()
        if block and self.is_alive():
            self.join()


def osc_status(port: int) -> dict:
    from pythonosc.osc_message_builder import OscMessageBuilder
    from pythonosc.osc_packet import OscPacket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3.0)
        sock.sendto(OscMessageBuilder("/vaejam/status").build().dgram, ("127.0.0.1", port))
        data, _ = sock.recvfrom(65536)
    return {m.message.address.rsplit("/status/", 1)[-1]: (m.message.params or [None])[0]
            for m in OscPacket(data).messages}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def live_timing(model_dir: str | None, bpm: float, seconds: float) -> LiveResult:
    import mido

    client = f"vjbench{os.getpid()}"
    cmd = [sys.executable, "-m", "bridge.cli", "run", "--midi-api", "jack", "--client-name", client,
           "--osc-port", "0", "--autopilot", "4"] + (["--model", model_dir] if model_dir else [])
    started = time.perf_counter()
    daemon = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    helpers: list[subprocess.Popen] = []
    try:
        line = daemon.stdout.readline()
        ready_s = time.perf_counter() - started
        if not line.startswith("vaejam ready"):
            raise RuntimeError(f"the daemon did not start: {line!r}")
        ready_own_s = float(re.search(r"ready in ([\d.]+) s", line).group(1))
        osc_port = int(re.search(r"OSC [\d.]+:(\d+)", line).group(1))
        dump_name = f"{client}dump"
        dump_file = tempfile.NamedTemporaryFile("w+", suffix=".txt", delete=False)
        helpers.append(subprocess.Popen(["jack_midi_dump", "-a", dump_name], stdout=dump_file,
                                        stderr=subprocess.DEVNULL))
        helpers.append(subprocess.Popen(["jack_midi_clock", "-b", f"{bpm:g}", "-B", "-P"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
        piano = backend.open_output("piano", client_name=f"{client}piano")
        clock_port = find_port("jack_midi_clock", "mclk_out")
        for source, dest in ((clock_port, find_port(client, "vaejam in")),
                             (clock_port, find_port(dump_name, "input")),
                             (find_port(client, "vaejam out"), find_port(dump_name, "input")),
                             (find_port(f"{client}piano", "piano"), find_port(client, "vaejam in"))):
            subprocess.run(["jack_connect", source, dest], check=True, timeout=5)
        player = PianoClient(piano, bpm)
        transport("locate 0")
        transport("play")
        player.start()
        time.sleep(seconds)
        status = osc_status(osc_port)
        rss = peak_rss_mb(daemon.pid)
        transport("stop")
        player.stop()
        piano.close()
        time.sleep(0.5)
    finally:
        for proc in helpers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)
    errors, firsts = grid_errors(Path(dump_file.name).read_text())
    os.unlink(dump_file.name)
    return LiveResult(bpm, seconds, ready_s, ready_own_s, rss, status, errors, firsts,
                      jack_value("jack_bufsize"), jack_value("jack_samplerate"))


def grid_errors(dump: str) -> tuple[np.ndarray, np.ndarray]:
    """From `jack_midi_dump -a` lines ("  48640: f8", "  57088: 99 3c 5a ..."): each band note-on's
    frame minus the frame of the nearest step clock (every third clock after Start), signed."""
    clocks: list[int] = []
    note_ons: list[int] = []
    for line in dump.splitlines():
        match = re.match(r"\s*(\d+):\s+([0-9a-f]{2})(?:\s+([0-9a-f]{2})\s+([0-9a-f]{2}))?", line)
        if not match:
            continue
        frame, status = int(match.group(1)), int(match.group(2), 16)
        if status == 0xFA:
            clocks = []  # ticks count from the last Start
        elif status == 0xF8:
            clocks.append(frame)
        elif status & 0xF0 == 0x90 and match.group(4) and int(match.group(4), 16) > 0:
            note_ons.append(frame)
    steps = np.array(clocks[::TICKS_PER_STEP])
    errors, firsts, seen = [], [], set()
    if len(steps) < 2:
        return np.array(errors, float), np.array(firsts, float)
    for frame in note_ons:
        # The nearest step clock: a note can be early as well as late, since rtmidi's JACK output
        # writes at frame 0 of the cycle it is drained in, which may be the cycle its clock came in.
        index = int(np.clip(np.searchsorted(steps, frame), 1, len(steps) - 1))
        index -= int(frame - steps[index - 1] < steps[index] - frame)
        errors.append(frame - steps[index])
        if index not in seen:
            seen.add(index)
            firsts.append(frame - steps[index])
    return np.array(errors, float), np.array(firsts, float)


# ---- report ------------------------------------------------------------------------------------
def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def report(inference: dict[str, dict], live: list[LiveResult], command: str, model: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"## `{command}`", "", f"- When: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}; "
             f"load average at the end {load} (the machine is shared: other jobs ran meanwhile)",
             f"- Model: {model}", "", "### Inference per bar (engine.step + note extraction, one torch thread on CPU)",
             "", "| device | bars | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for device, s in inference.items():
        lines.append(f"| {device} | {s['n']} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} |")
    if live:
        lines += ["", "### End to end against `jack_midi_clock` (frame-accurate, `jack_midi_dump -a`)", "",
                  "Error = |a band note-on's frame minus the frame of its step's clock| (the nearest step clock); "
                  "early % = share of note-ons before their clock.", "",
                  "| BPM | run s | note-ons | p50 ms | p99 ms | max ms | p50 / p99 / max periods | first note of a step p99 ms "
                  "| late bars | bars played | early % | ready s (own) | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in live:
            ms = np.abs(r.errors_frames) / r.rate * 1000
            periods = np.abs(r.errors_frames) / r.period
            first_p99 = np.percentile(np.abs(r.first_frames) / r.rate * 1000, 99) if len(r.first_frames) else float("nan")
            early = float(np.mean(r.errors_frames < 0)) * 100 if len(r.errors_frames) else float("nan")
            if len(ms):
                p = np.percentile(ms, [50, 99]).tolist() + [ms.max()]
                q = np.percentile(periods, [50, 99]).tolist() + [periods.max()]
            else:
                p = q = [float("nan")] * 3
            lines.append(
                f"| {r.bpm:g} | {r.seconds:g} | {len(ms)} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} | "
                f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | {first_p99:.2f} | {r.status.get('late_bars')} | "
                f"{r.status.get('bars_scheduled')} | {early:.0f} | {r.ready_s:.2f} ({r.ready_own_s:.2f}) | {r.rss_mb:.0f} |")
        r = live[0]
        lines += ["", f"JACK: dummy driver, {r.period} frames at {r.rate} Hz = one period of "
                  f"{r.period / r.rate * 1000:.2f} ms. Ready s: from the bench starting the process to reading its ready "
                  "line (own: the age of the daemon's process when it printed the line)."]
    return "\n".join(lines) + "\n"


def bench_command(args: argparse.Namespace) -> int:
    import torch

    from bridge.cli import UsageError

    try:
        tempos = [float(b) for b in args.bpm.split(",") if b.strip()]
    except ValueError as err:
        raise UsageError(f"--bpm: {err}") from err
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    inference = {device: inference_latency(args.model, device, args.bars) for device in devices}
    for device, s in inference.items():
        print(f"inference {device}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms", flush=True)
    live: list[LiveResult] = []
    if not args.no_live:
        for tool in ("jackd", "jack_midi_clock", "jack_midi_dump", "jack_transport"):
            if shutil.which(tool) is None:
                raise UsageError(f"{tool} is not installed (apt install jackd2 jack-midi-clock), or use --no-live")
        if not jack_answers():
            raise UsageError("no JACK server is running: start one, e.g. `jackd --no-realtime -d dummy -r 48000 -p 256 &`")
        for bpm in tempos:
            result = live_timing(args.model, bpm, args.seconds)
            live.append(result)
            ms = np.abs(result.errors_frames) / result.rate * 1000
            print(f"live {bpm:g} BPM: {len(ms)} note-ons, error p50 {np.percentile(ms, 50):.2f} ms, "
                  f"p99 {np.percentile(ms, 99):.2f} ms, late bars {result.status.get('late_bars')}", flush=True)
    from models.checkpoint import DEFAULT_MODEL_DIR

    text = report(inference, live, "vaejam bench " + " ".join(sys.argv[2:]), args.model or str(DEFAULT_MODEL_DIR))
    print(text)
    if args.write:
        with open(args.write, "a") as out:
            out.write("\n" + text)
    return 0
