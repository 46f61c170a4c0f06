"""Live tests: the real daemon on real JACK MIDI ports (a dummy-driver jackd) and real UDP sockets.

A session fixture starts `jackd -d dummy` when no JACK server answers, and skips every live test when
jackd or JACK support in python-rtmidi is missing. The daemon runs as a subprocess, exactly as a user
starts it; a test client (virtual JACK ports in this process) plays clock + piano and records the band.
"""
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
from typing import Iterator

import mido
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

REPO = Path(__file__).resolve().parents[2]
PERIOD_FRAMES, RATE = 256, 48000
PERIOD_S = PERIOD_FRAMES / RATE  # 5.33 ms: JACK moves MIDI once per period
READY_TIMEOUT_S = 30.0


def _jack_answers() -> bool:
    if shutil.which("jack_lsp") is None:
        return False
    try:
        return subprocess.run(["jack_lsp"], capture_output=True, timeout=5,
                              env={**os.environ, "JACK_NO_START_SERVER": "1"}).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def jack_server() -> Iterator[None]:
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (apt install jackd2)")
    try:
        import rtmidi
    except ImportError:
        pytest.skip("python-rtmidi is not installed")
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        pytest.skip("python-rtmidi was built without JACK")
    proc = None
    if not _jack_answers():
        proc = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD_FRAMES)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _jack_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("could not start jackd -d dummy")
            time.sleep(0.2)
    yield
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped default model once it exists; before that a randomly initialised one."""
    from models.checkpoint import DEFAULT_MODEL_DIR, save_band_model

    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return str(DEFAULT_MODEL_DIR)
    import torch

    from models.networks import BandConfig, BandModel

    torch.manual_seed(0)
    model = BandModel(BandConfig())
    with torch.no_grad():
        # At plain random init every decoded cell is ~0.5, so the band would hold all 128 pitches of
        # every bar: a sharper, lower last layer gives a sparse band (about 10 notes a bar per part),
        # like a trained model, so the timing measured is that of a playable bar.
        for vae in model.vaes.values():
            vae.decoder[-1].weight.mul_(40.0)
            vae.decoder[-1].bias.fill_(-2.6)
    return str(save_band_model(model, tmp_path_factory.mktemp("model")))


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
    raise AssertionError(f"no JACK port {client}:{port} in {jack_ports()}")


def jack_connect(source: str, destination: str) -> None:
    subprocess.run(["jack_connect", source, destination], check=True, timeout=5)


@dataclass
class Received:
    t: float
    msg: mido.Message


@dataclass
class Client:
    """The test's side: a piano/clock output and a recording input, as a DAW would have."""

    name: str
    backend: mido.Backend
    out: mido.ports.BaseOutput
    inp: mido.ports.BaseInput
    received: list[Received] = field(default_factory=list)  # appended on the JACK thread
    sent_ticks: list[float] = field(default_factory=list)  # send time of each clock, by tick

    def send(self, msg: mido.Message) -> None:
        self.out.send(msg)

    def band(self, kind: str = "note_on", since: float = 0.0) -> list[Received]:
        return [r for r in list(self.received) if r.msg.type == kind and r.t >= since
                and (kind != "note_on" or r.msg.velocity > 0)]

    def close(self) -> None:
        self.inp.close()
        self.out.close()


class Daemon:
    """`python -m bridge.cli run ...` as a subprocess, with its ports and OSC address."""

    def __init__(self, model: str, client: str, *extra: str) -> None:
        self.client = client
        cmd = [sys.executable, "-m", "bridge.cli", "run", "--model", model, "--midi-api", "jack",
               "--client-name", client, "--osc-port", "0", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready_line = self._wait_ready()
        self.osc_port = int(re.search(r"OSC [\d.]+:(\d+)", self.ready_line).group(1))
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True).start()
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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


_counter = iter(range(10**6))


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}"


@pytest.fixture
def start_daemon(jack_server, model_dir) -> Iterator:
    started: list[Daemon] = []

    def start(*extra: str) -> Daemon:
        daemon = Daemon(model_dir, unique("vjt"), *extra)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.alive():
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def connect_client(jack_server) -> Iterator:
    """connect_client(daemon) -> a Client wired to the daemon's `vaejam in` / `vaejam out`."""
    clients: list[Client] = []

    def connect(daemon: Daemon) -> Client:
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
        name = unique("vjc")
        client = Client(name, backend, None, None)  # type: ignore[arg-type]
        client.out = backend.open_output("piano", client_name=name)
        client.inp = backend.open_input("band", client_name=name,
                                         callback=lambda msg: client.received.append(Received(time.perf_counter(), msg)))
        jack_connect(find_port(name, "piano"), find_port(daemon.client, "vaejam in"))
        jack_connect(find_port(daemon.client, "vaejam out"), find_port(name, "band"))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
