"""`vaejam bench`: how fast and how tight the live band is, measured, as a Markdown report.

- Inference: per-bar latency of what the worker does for a bar (BandEngine.step + note extraction)
  on the CPU with the daemon's one torch thread, and on CUDA when present: the engine through the
  nn modules (the reference) beside its fused float32 and int8 paths, in one run so ratios hold on
  a busy machine; the same job in a worker thread beside a busy Python thread (GIL switch interval);
  and 1, 2, 4 concurrent bands in as many processes.
- End to end: the real daemon (a subprocess, as a user starts it) follows `jack_midi_clock` at each
  tempo while a client plays piano chords; `jack_midi_dump` records the clock and the band on one
  JACK timeline, frame-accurate, so a band note-on's error is its frame minus the frame of the step
  clock that is due to play it (p50/p99/max in ms and in JACK periods). Also late bars (from
  /vaejam/status), start-up time to the ready line, and peak RSS (VmHWM).
- Ableton Link (bridge.bench_link, when the link extra is installed): the daemon with `--clock link`
  joins a Link peer of this process; its beat ticks against the peer's beats on the host clock.
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
    p.add_argument("--seconds", type=float, default=30.0, help="length of each live run, and of each Ableton Link run (default: 30)")
    p.add_argument("--no-live", action="store_true", help="inference only (no JACK needed)")
    p.add_argument("--bands", type=lambda text: [int(n) for n in text.split(",") if n.strip()], default=[1, 2, 4],
                   metavar="N,N", help="concurrent bands (processes) to time, comma-separated (default: 1,2,4; '' for none)")
    p.add_argument("--write", metavar="FILE", help="append the report to FILE (e.g. BENCHMARKS.md)")
    p.add_argument("--xruns", action="append", metavar="CHECKOUT",
                   help="instead: count a private jackd's xruns while CHECKOUT's daemon (a source tree, e.g. "
                   "from `git archive`; '.' for this one) follows jack_midi_clock at each --bpm (repeatable)")
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


# Engine variants timed side by side, in interleaved blocks so the machine's load falls on all alike:
# (label, BandEngine weights, decode the predicted piano, CUDA graph). "modules" is the reference: nn modules.
VARIANTS = (("nn modules", "modules", True, False), ("fused float32", "float32", True, False),
            ("fused float32, no piano", "float32", False, False),
            ("fused int8", "int8", True, False), ("fused int8, no piano", "int8", False, False))
# on CUDA: the whole network part of a bar replayed as one CUDA graph (BandEngine's default there) beside
# the same code launched kernel by kernel
CUDA_VARIANTS = (("nn modules", "modules", True, False), ("fused float32, eager", "float32", True, False),
                 ("fused float32, CUDA graph", "float32", True, True),
                 ("fused float32, CUDA graph, no piano", "float32", False, True))
BLOCK = 50  # bars per variant before the next one takes over


def _engine(model_dir: str | None, device: str, weights: str = "auto", decode_piano: bool = True,
            cuda_graph: bool | None = None):
    """Any system's engine (models.systems); `weights` and `cuda_graph` apply to VAE-NN only."""
    from models.systems import is_baseline, load_engine

    options = {} if cuda_graph is None or is_baseline(model_dir) else {"cuda_graph": cuda_graph}
    engine = load_engine(model_dir, device, decode_piano=decode_piano, weights=weights, **options)
    engine.warmup()
    return engine


def _variants(model_dir: str | None, device: str) -> list[tuple[str, str, bool, bool | None]]:
    """VARIANTS for VAE-NN (int8 where it is fast; CUDA_VARIANTS on a GPU); a baseline has one
    network path, with and without its predicted piano."""
    from models.fused import compact_weights_fast
    from models.systems import is_baseline, model_arch

    if is_baseline(model_dir):
        arch = model_arch(model_dir)
        return [(arch, "auto", True, None), (f"{arch}, no piano", "auto", False, None)]
    if device.startswith("cuda"):
        return list(CUDA_VARIANTS)
    return [v for v in VARIANTS if v[1] != "int8" or compact_weights_fast(device)]


def worker_bar_ms(engine, bar: int) -> float:
    """Milliseconds of the worker's job for one bar: engine.step + note extraction of the rows it plays."""
    from bridge.session import rolls_notes

    started = time.perf_counter()
    out = engine.step(piano_pattern(bar))
    rolls_notes(out[0 if engine.decode_piano else 1:])
    return (time.perf_counter() - started) * 1000


def inference_latency(model_dir: str | None, device: str, bars: int) -> dict[str, dict[str, float]]:
    """Per variant (VARIANTS), milliseconds per bar of the worker's job, one torch thread; and
    `ready_s`, the seconds from loading the model to a warm engine (a CUDA graph's capture included)."""
    import torch

    from bridge.daemon import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # the CUDA context, once, before any variant's clock starts
    engines, ready_s = {}, {}
    for label, weights, piano, graph in _variants(model_dir, device):
        started = time.perf_counter()
        engines[label] = _engine(model_dir, device, weights, piano, graph)
        ready_s[label] = time.perf_counter() - started
    times: dict[str, list[float]] = {label: [] for label in engines}
    for start in range(0, bars, BLOCK):
        for label, engine in engines.items():
            times[label] += [worker_bar_ms(engine, bar) for bar in range(start, min(bars, start + BLOCK))]
    return {label: {**summary(t), "ready_s": ready_s[label]} for label, t in times.items()}


MATMULS = {"aten::addmm": 2, "aten::baddbmm": 2, "aten::mm": 1, "aten::bmm": 1}  # op -> its weight operand


def matmul_costs(engine, bars: int = 8) -> list[tuple[int, int, float, tuple[int, int, int, int]]]:
    """Every matrix product the steps of `bars` bars ran, as (weight bytes, FLOPs, self seconds,
    (batch, m, k, n)): read from the profiler (input shapes and self time of addmm/baddbmm/mm/bmm);
    the weights are taken as float32."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for bar in range(bars):
            engine.step(piano_pattern(bar))
    costs = []
    for event in prof.events():
        operand = MATMULS.get(event.name)
        if operand is None:
            continue
        x, w = event.input_shapes[operand - 1], event.input_shapes[operand]
        batch, (m, k), n = int(np.prod(w[:-2])), x[-2:], w[-1]
        costs.append((4 * batch * k * n, 2 * batch * m * k * n, event.self_cpu_time_total / 1e6, (batch, m, k, n)))
    return costs


def _median_s(job, repeats: int = 30) -> float:
    """Median seconds of `job()` over `repeats` runs, after 3 unmeasured ones."""
    times = []
    for _ in range(repeats + 3):
        started = time.perf_counter()
        job()
        times.append(time.perf_counter() - started)
    return float(np.median(times[3:]))


def network_floor(model_dir: str | None, bars: int = 8) -> dict[str, float] | None:
    """What a bar's matrix products cost at least on this core, against what they cost in a step.
    Each product needs at least the longer of reading its weights (at the rate this thread reads a
    buffer the size of all of a bar's weights, over and over: the back-to-back case) and its FLOPs
    (at the rate of the bar's biggest product run alone, its weights in cache). The fused float32
    engine without the piano (the daemon's path on an AVX2 CPU); None for a baseline."""
    import torch

    from bridge.daemon import TORCH_THREADS
    from models.systems import is_baseline

    if is_baseline(model_dir):
        return None
    torch.set_num_threads(TORCH_THREADS)
    costs = matmul_costs(_engine(model_dir, "cpu", "float32", decode_piano=False), bars)
    weight_bytes = sum(c[0] for c in costs) / bars
    weights = torch.ones(int(weight_bytes) // 4)
    bytes_per_s = weight_bytes / _median_s(weights.sum)
    batch, m, k, n = max(costs, key=lambda c: c[1])[3]
    x, w = torch.rand(batch, m, k), torch.rand(batch, k, n)
    flops_per_s = 2 * batch * m * k * n / _median_s(lambda: torch.bmm(x, w))
    floor_s = sum(max(b / bytes_per_s, f / flops_per_s) for b, f, _, _ in costs) / bars
    return {"products": len(costs) // bars, "weight_mb": weight_bytes / 1e6,
            "mflop": sum(c[1] for c in costs) / bars / 1e6, "read_gb_s": bytes_per_s / 1e9,
            "gflop_s": flops_per_s / 1e9, "floor_ms": floor_s * 1000,
            "measured_ms": sum(c[2] for c in costs) / bars * 1000}


def _busy_neighbour(halt: threading.Event, period_s: float) -> None:
    """A Python thread like the daemon's MIDI/clock handlers: wakes every period, does a little work."""
    while not halt.wait(period_s):
        sum(range(200))  # ~5 us of bytecode, as a message handler


def threaded_latency(model_dir: str | None, bars: int, switch_s: float | None, period_s: float = 0.001) -> dict:
    """The worker's job in its own thread, as in the daemon (at the daemon's worker priority where the
    OS allows it: `priority` says what it got), beside a busy Python thread; with the GIL switch
    interval `switch_s` (None: leave Python's default)."""
    import torch

    from bridge.clock import HELPER_PRIORITY, _raise_thread_priority
    from bridge.daemon import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)
    engine = _engine(model_dir, "cpu")
    saved, halt, times, got = sys.getswitchinterval(), threading.Event(), [], {}
    neighbour = threading.Thread(target=_busy_neighbour, args=(halt, period_s), daemon=True)

    def work() -> None:
        got["priority"] = _raise_thread_priority(HELPER_PRIORITY)  # as bridge.session.InferenceWorker
        engine.warmup()  # on this thread first, as InferenceWorker.warm: torch's per-thread set-up (~40 ms) is not a bar
        times.extend(worker_bar_ms(engine, bar) for bar in range(bars))

    worker = threading.Thread(target=work)
    try:
        if switch_s is not None:
            sys.setswitchinterval(switch_s)
        neighbour.start()
        worker.start()
        worker.join()
    finally:
        halt.set()
        neighbour.join()
        sys.setswitchinterval(saved)
    return {**summary(times), "priority": got.get("priority", "normal")}


def _concurrent_worker(model_dir: str | None, bars: int, ready, results) -> None:
    import torch

    from bridge.daemon import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)
    engine = _engine(model_dir, "cpu")
    ready.wait()
    started = time.perf_counter()
    times = [worker_bar_ms(engine, bar) for bar in range(bars)]
    results.put((times, time.perf_counter() - started))


def concurrent_latency(model_dir: str | None, bands: int, bars: int) -> dict[str, float]:
    """`bands` engines in as many processes (two pianists, or many renders), started together:
    per-bar latency over all of them and the bars per second they make together."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(bands + 1), context.Queue()
    procs = [context.Process(target=_concurrent_worker, args=(model_dir, bars, ready, results)) for _ in range(bands)]
    for proc in procs:
        proc.start()
    try:
        ready.wait(timeout=120)
        done = [results.get(timeout=600) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    times = [t for part, _ in done for t in part]
    return {**summary(times), "bands": bands, "bars_per_s": bands * bars / max(wall for _, wall in done)}


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


def jack_xruns(checkout: str, model_dir: str | None, bpm: float, seconds: float) -> tuple[int, dict]:
    """xruns a private dummy jackd (256 frames, 48 kHz, as the live tests) reports in its log while
    the daemon of `checkout` follows jack_midi_clock with the piano playing; and its final status.
    jackd reports each one as a line with "xrun" in it (JackEngine::XRun, a client not finished)."""
    import mido

    name = f"vjxrun{os.getpid()}x{time.monotonic_ns() % 10**6}"  # a fresh server name each run
    saved = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name  # jackd's clients below, the daemon and jack_* tools
    log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    jackd = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"],
                             stdout=log_file, stderr=log_file)
    helpers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 10
        while not jack_answers():
            if time.monotonic() > deadline or jackd.poll() is not None:
                tail = " / ".join(Path(log_file.name).read_text(errors="replace").strip().splitlines()[-3:])
                raise RuntimeError(f"the private jackd {name} did not start: {tail}")
            time.sleep(0.1)
        client = "vjx"
        model = model_dir or str(Path(checkout) / "models" / "default")
        helpers.append(subprocess.Popen([sys.executable, "-m", "bridge.cli", "run", "--midi-api", "jack",
                                         "--client-name", client, "--osc-port", "0", "--model", model],
                                        cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        line = helpers[0].stdout.readline()
        if not line.startswith("vaejam ready"):
            raise RuntimeError(f"the daemon did not start: {line!r}")
        osc_port = int(re.search(r"OSC [\d.]+:(\d+)", line).group(1))
        helpers.append(subprocess.Popen(["jack_midi_clock", "-b", f"{bpm:g}", "-B", "-P"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        piano = mido.Backend("mido.backends.rtmidi/UNIX_JACK").open_output("piano", client_name=f"{client}piano")
        for source in (find_port("jack_midi_clock", "mclk_out"), find_port(f"{client}piano", "piano")):
            subprocess.run(["jack_connect", source, find_port(client, "vaejam in")], check=True, timeout=5)
        before = Path(log_file.name).read_text(errors="replace").lower().count("xrun")
        player = PianoClient(piano, bpm)
        transport("locate 0")
        transport("play")
        player.start()
        time.sleep(seconds)
        xruns = Path(log_file.name).read_text(errors="replace").lower().count("xrun") - before
        status = osc_status(osc_port)
        transport("stop")
        player.stop()
        piano.close()
    finally:
        for proc in reversed(helpers):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        jackd.terminate()
        jackd.wait(timeout=10)
        os.unlink(log_file.name)
        if saved is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = saved
    return xruns, status


def xrun_command(args: argparse.Namespace, tempos: list[float]) -> int:
    rows = ["| checkout | BPM | seconds | xruns | bars scheduled | notes in | late bars |", "|---|---|---|---|---|---|---|"]
    for checkout in args.xruns:
        for bpm in tempos:
            xruns, status = jack_xruns(checkout, args.model, bpm, args.seconds)
            rows.append(f"| {checkout} | {bpm:g} | {args.seconds:g} | {xruns} | {status.get('bars_scheduled')} | "
                        f"{status.get('notes_in')} | {status.get('late_bars')} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


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


def report(inference: dict[str, dict], live: list[LiveResult], command: str, model: str,
           threaded: dict[str, dict] | None = None, concurrent: list[dict] | None = None,
           link: Sequence[str] = (), floor: dict[str, float] | None = None) -> str:
    """The Markdown section; `link`: bench_link.link_report's lines, placed last."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"## `{command}`", "", f"- When: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}; "
             f"load average at the end {load} (the machine is shared: other jobs ran meanwhile)",
             f"- Model: {model}", "", "### Inference per bar (engine.step + note extraction, one torch thread on CPU)", "",
             f"Variants interleaved in blocks of {BLOCK} bars; ratio = this variant's p50 (p99) over the nn modules' "
             "p50 (p99) in the same run; ready s = loading the model to a warm engine (a CUDA graph's capture "
             "included).", "",
             "| device, path | bars | p50 ms | p99 ms | max ms | ratio p50 | ratio p99 | ready s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in inference.items():
        device = name.split(",")[0]
        ref = inference.get(f"{device}, nn modules")  # none for a baseline: no reference path to compare
        ratios = f"{s['p50'] / ref['p50']:.2f} | {s['p99'] / ref['p99']:.2f}" if ref else "— | —"
        ready = f"{s['ready_s']:.2f}" if "ready_s" in s else "—"
        lines.append(f"| {name} | {s['n']} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {ratios} | {ready} |")
    if floor:
        lines += ["", "### A bar's matrix products: what they cost at least on this core, and in a step", "",
                  "Fused float32, no piano. Floor = the sum over the products of the longer of reading the "
                  "product's weights (at the read rate of one thread over a buffer the size of all of a bar's "
                  "weights, again and again) and its FLOPs (at the rate of the bar's biggest product alone). "
                  "In a step = their profiled time (`bridge.bench.network_floor`).", "",
                  "| products a bar | weights MB | MFLOP | read GB/s | matmul GFLOP/s | floor ms | in a step ms |",
                  "|---|---|---|---|---|---|---|",
                  f"| {floor['products']} | {floor['weight_mb']:.2f} | {floor['mflop']:.1f} | {floor['read_gb_s']:.1f} | "
                  f"{floor['gflop_s']:.1f} | {floor['floor_ms']:.2f} | {floor['measured_ms']:.2f} |"]
    if threaded:
        lines += ["", "### The same job in a worker thread beside a Python thread waking every 1 ms (as in the daemon)", "",
                  "| GIL switch interval | worker priority | bars | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {s.get('priority', 'normal')} | {s['n']} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} |"
                  for name, s in threaded.items()]
    if concurrent:
        lines += ["", "### Concurrent bands (one process and one torch thread each, the default engine)", "",
                  "| bands | bars each | p50 ms | p99 ms | max ms | bars/s together |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['bands']} | {c['n'] // c['bands']} | {c['p50']:.2f} | {c['p99']:.2f} | {c['max']:.2f} | "
                  f"{c['bars_per_s']:.0f} |" for c in concurrent]
    if live:
        lines += ["", "### End to end against `jack_midi_clock` (frame-accurate, `jack_midi_dump -a`)", "",
                  "Error = |a band note-on's frame minus the frame of its step's clock| (the nearest step clock); "
                  "early % = share of note-ons before their clock.", "",
                  "| BPM | run s | note-ons | p50 ms | p99 ms | max ms | p50 / p99 / max periods | first note of a step p99 ms "
                  "| late bars | bars played | early % | inference in the daemon p50 / p99 ms | ready s (own) | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
                f"{r.status.get('bars_scheduled')} | {early:.0f} | {r.status.get('inference_ms_p50', float('nan')):.2f} / "
                f"{r.status.get('inference_ms_p99', float('nan')):.2f} | {r.ready_s:.2f} ({r.ready_own_s:.2f}) | {r.rss_mb:.0f} |")
        r = live[0]
        lines += ["", f"JACK: dummy driver, {r.period} frames at {r.rate} Hz = one period of "
                  f"{r.period / r.rate * 1000:.2f} ms. Ready s: from the bench starting the process to reading its ready "
                  "line (own: the age of the daemon's process when it printed the line). Inference in the daemon: the "
                  "worker's job per bar (step + notes) as the daemon timed it (status `inference_ms_p50`/`_p99`), "
                  "between idle waits, against the back-to-back loop of the inference table."]
    lines += link
    return "\n".join(lines) + "\n"


def link_runs(model_dir: str | None, tempos: list[float], seconds: float) -> list[str]:
    """The Ableton Link runs at each tempo (bridge.bench_link) as report lines; says so when the
    binding is missing instead."""
    from bridge.bench_link import link_missing, link_report, link_summary, link_timing

    missing = link_missing()
    if missing:
        print(f"link: not measured: {missing}", flush=True)
        return link_report([], missing)
    results = []
    for bpm in tempos:
        results.append(link_timing(model_dir, bpm, seconds))
        print(link_summary(results[-1]), flush=True)
    return link_report(results)


def bench_command(args: argparse.Namespace) -> int:
    import torch

    from bridge.cli import UsageError

    try:
        tempos = [float(b) for b in args.bpm.split(",") if b.strip()]
    except ValueError as err:
        raise UsageError(f"--bpm: {err}") from err
    if args.xruns:
        return xrun_command(args, tempos)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    inference = {f"{device}, {label}": s for device in devices
                 for label, s in inference_latency(args.model, device, args.bars).items()}
    for name, s in inference.items():
        print(f"inference {name}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms", flush=True)
    floor = network_floor(args.model)
    if floor:
        print(f"matrix products: floor {floor['floor_ms']:.2f} ms a bar, {floor['measured_ms']:.2f} ms in a step", flush=True)
    threaded = {f"{name}": threaded_latency(args.model, args.bars, switch)
                for name, switch in (("5 ms (Python's default)", None), ("1 ms (the daemon's)", 0.001))}
    concurrent = [concurrent_latency(args.model, bands, args.bars) for bands in args.bands]
    for c in concurrent:
        print(f"{c['bands']} bands: p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms, {c['bars_per_s']:.0f} bars/s", flush=True)
    live: list[LiveResult] = []
    link: list[str] = []
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
        link = link_runs(args.model, tempos, args.seconds)
    from models.checkpoint import DEFAULT_MODEL_DIR

    text = report(inference, live, "vaejam bench " + " ".join(sys.argv[2:]), args.model or str(DEFAULT_MODEL_DIR),
                  threaded, concurrent, link, floor)
    print(text)
    if args.write:
        with open(args.write, "a") as out:
            out.write("\n" + text)
    return 0
