"""Helpers for the live tests: JACK port lookup, the daemon as a subprocess, the test's MIDI client."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mido
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from bridge.bench import find_port  # noqa: F401 - re-exported: one copy of the JACK port helpers
from bridge.jack_server import PERIOD_FRAMES, RATE  # the dummy driver the tests run
from bridge.midi_io import INPUT_POLL_S, batch_times


REPO = Path(__file__).resolve().parents[2]
# Private servers stay --no-realtime on purpose: the tests that provoke client churn and server
# restarts (test_jack_ports, test_jack_recovery) were measured and fixed on such servers (25 of 25); on
# real-time ones (jackd_args' default here) 2 of 6 looped runs failed in libjack itself (a client JACK
# never ran in 3 attempts; a segfault in a client's close), which DESIGN.md records as open
PRIVATE_REALTIME = False
PERIOD_S = PERIOD_FRAMES / RATE  # 5.33 ms: JACK moves MIDI once per period
READY_TIMEOUT_S = 30.0


def jack_answers() -> bool:
    if shutil.which("jack_lsp") is None:
        return False
    try:
        return subprocess.run(["jack_lsp"], capture_output=True, timeout=5,
                              env={**os.environ, "JACK_NO_START_SERVER": "1"}).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def jack_connect(source: str, destination: str) -> None:
    subprocess.run(["jack_connect", source, destination], check=True, timeout=5)


@dataclass
class Received:
    t: float
    msg: mido.Message


class BandInput:
    """A recording JACK input of the test's (a DAW track's MIDI input), by python-rtmidi directly:
    mido drops Active Sensing, which the daemon sends last on each port as it closes, so `ended`
    tells exactly when everything the daemon sent has arrived (no sleeping on the wall clock).

    Read from RtMidi's queue by a thread of ours, as the daemon reads its input (bridge.midi_io):
    a Python callback would run in JACK's process thread, where it waits for the GIL; closing the
    port with the GIL held then waits for a cycle that callback cannot finish (a hung test).
    """

    def __init__(self, client_name: str, port: str) -> None:
        import rtmidi

        self.client_name = client_name  # unique per test, so JACK keeps it as given
        self.received: list[Received] = []  # appended by the reader thread
        self.ended = threading.Event()  # set when the daemon's closing marker arrives
        self._halt = threading.Event()  # set by close(): the reader ends
        self._rt = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, client_name, queue_size_limit=8192)
        self._rt.ignore_types(sysex=True, timing=True, active_sense=False)
        self._rt.open_virtual_port(port)
        self._reader = threading.Thread(target=self._read, name=f"band-input:{client_name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._halt.is_set():
            batch = []
            while (event := self._rt.get_message()) is not None:
                batch.append(event)
            if not batch:
                time.sleep(INPUT_POLL_S)
                continue
            # arrival times from RtMidi's JACK-frame deltas, placed back from the newest
            for (data, _), t in zip(batch, batch_times([delta for _, delta in batch], time.perf_counter())):
                if data == [0xFE]:
                    self.ended.set()
                else:
                    self.received.append(Received(t, mido.Message.from_bytes(data)))

    def wait_ended(self, timeout: float = 10.0) -> None:
        assert self.ended.wait(timeout), (f"the closing marker never came: the port was not drained "
                                          f"({len(self.received)} messages came)")

    def close(self) -> None:
        self._halt.set()
        self._reader.join()
        self._rt.close_port()
        self._rt.delete()


@dataclass
class Client:
    """The test's side: a piano/clock output and a recording input, as a DAW would have."""

    name: str
    backend: mido.Backend
    out: mido.ports.BaseOutput
    inp: BandInput | None
    sent_ticks: list[float] = field(default_factory=list)  # send time of each clock, by tick

    def send(self, msg: mido.Message) -> None:
        self.out.send(msg)

    @property
    def received(self) -> list[Received]:
        return self.inp.received if self.inp is not None else []

    def wait_ended(self, timeout: float = 10.0) -> None:
        """Block until the daemon's output has closed with everything it sent delivered."""
        assert self.inp is not None
        self.inp.wait_ended(timeout)

    def band(self, kind: str = "note_on", since: float = 0.0) -> list[Received]:
        return [r for r in list(self.received) if r.msg.type == kind and r.t >= since
                and (kind != "note_on" or r.msg.velocity > 0)]

    def close(self) -> None:
        if self.inp is not None:
            self.inp.close()
        self.out.close()


class Daemon:
    """`python -m bridge.cli run ...` as a subprocess, with its ports and OSC address."""

    def __init__(self, model: str, client: str, *extra: str) -> None:
        self.client = client
        cmd = [sys.executable, "-m", "bridge.cli", "run", "--model", model, "--midi-api", "jack",
               "--client-name", client, "--osc-port", "0", *extra]
        if "--clock" not in extra:  # MIDI clock (internal until it starts): two daemons never join one Link session
            cmd += ["--clock", "midi"]
        # a crash prints every thread's Python stack into the log a failing test shows
        env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.ready_line = self._wait_ready()
        self.osc_port = int(re.search(r"OSC [\d.]+:(\d+)", self.ready_line).group(1))
        self.stderr: list[str] = []
        self._stderr_reader = threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True)
        self._stderr_reader.start()
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True).start()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"daemon exited: {self.proc.wait()} {self.proc.stderr.read()}")
            self.lines.append(line)
            if line.startswith("vaejam ready"):
                return line
        raise AssertionError("daemon not ready in time")

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def osc(self, address: str, *args: object) -> None:
        import socket

        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(builder.build().dgram, ("127.0.0.1", self.osc_port))

    def status(self) -> dict[str, object]:
        """Ask /vaejam/status and read the reply bundle."""
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(3.0)
            sock.sendto(OscMessageBuilder("/vaejam/status").build().dgram, ("127.0.0.1", self.osc_port))
            data, _ = sock.recvfrom(65536)
        values = {}
        for msg in OscPacket(data).messages:
            key = msg.message.address.removeprefix("/vaejam/status/")
            values[key] = msg.message.params[0] if msg.message.params else None
        return values

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and return the exit status; a death by another signal (a crash) fails here,
        with the daemon's stderr (faulthandler's stacks) in the message."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        if rc < 0 and rc != -sig:
            self._stderr_reader.join(timeout=5.0)  # it ends at the dead process's end of file
            raise AssertionError(f"daemon died of signal {-rc}; stderr:\n{''.join(self.stderr[-80:])}")
        return rc


_counter = iter(range(10**6))


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}"


