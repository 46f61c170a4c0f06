"""Live tests: the real daemon on real JACK MIDI ports (a dummy-driver jackd) and real UDP sockets.

A session fixture starts `jackd -d dummy` when no JACK server answers, and skips every live test when
jackd or JACK support in python-rtmidi is missing. The daemon runs as a subprocess, exactly as a user
starts it; a test client (virtual JACK ports in this process) plays clock + piano and records the band.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from typing import Iterator

import mido
import pytest

from bridge.jack_server import jackd_args

from .harness import PERIOD_FRAMES, RATE, BandInput, Client, Daemon, find_port, jack_answers, jack_connect, unique


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
    if not jack_answers():
        proc = subprocess.Popen(["jackd", *jackd_args(RATE, PERIOD_FRAMES)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not jack_answers():
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
        client = Client(name, backend, backend.open_output("piano", client_name=name), BandInput(name, "band"))
        jack_connect(find_port(name, "piano"), find_port(daemon.client, "vaejam in"))
        jack_connect(find_port(daemon.client, "vaejam out"), find_port(name, "band"))
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
