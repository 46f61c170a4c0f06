"""The daemon on a private JACK server of this module's own: it stays hearing after an unterminated
SysEx, and it notices the server's death and comes back with it (issue 7 items 8 and 10)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Iterator

import mido
import pytest

from bridge.jack_server import jackd_args

from .harness import PRIVATE_REALTIME, PERIOD_FRAMES, RATE, BandInput, Client, Daemon, find_port, jack_connect, unique
from .player import chords, play


pytestmark = [pytest.mark.jack]


class PrivateJack:
    """A dummy-driver jackd under a name of its own, which a test may kill and start again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["jackd", "-n", self.name, *jackd_args(RATE, PERIOD_FRAMES, PRIVATE_REALTIME)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["jack_lsp"], capture_output=True, env=self.env, timeout=5).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.skip("could not start a private jackd")
            time.sleep(0.1)

    def kill(self) -> None:
        """A crash: jackd gets no chance to unregister its name from libjack's registry (8 slots for
        the whole machine); starting a server of the same name reclaims the slot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """A clean stop (the user restarts JACK): jackd tells its clients and frees what it holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """A clean exit, which frees the registry slot; after a crash, a server is started first."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(["jackd", "-n", self.name, *jackd_args(RATE, PERIOD_FRAMES, PRIVATE_REALTIME)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while subprocess.run(["jack_lsp"], capture_output=True, env=self.env, timeout=5).returncode != 0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)  # jackd waits several seconds for clients that died
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.stop()  # reclaim the slot the kill left


@pytest.fixture
def jack(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateJack]:
    if shutil.which("jackd") is None or shutil.which("jack_lsp") is None:
        pytest.skip("jackd is not installed (apt install jackd2)")
    server = PrivateJack(unique("vjrecover"))
    server.start()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server.name)  # the daemon and jack_connect inherit it
    yield server
    server.stop()


@pytest.fixture
def daemon(jack: PrivateJack, model_dir: str) -> Iterator[Daemon]:
    started = Daemon(model_dir, unique("vjt"))
    yield started
    print("daemon log:\n" + "".join(line for line in started.stderr if "Server is not running" not in line))
    if started.alive():  # a failed test: close its JACK clients cleanly if it still can
        try:
            started.stop(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            started.stop(signal.SIGKILL)


def _client(daemon: Daemon) -> Client:
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK")
    name = unique("vjc")
    client = Client(name, backend, backend.open_output("piano", client_name=name), BandInput(name, "band"))
    jack_connect(find_port(name, "piano"), find_port(daemon.client, "vaejam in"))
    jack_connect(find_port(daemon.client, "vaejam out"), find_port(name, "band"))
    return client


def _wait(condition, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)


def _evidence(daemon: Daemon, jack: PrivateJack) -> str:
    """What a failure needs to be read: the server's connections, the daemon's status and log."""
    graph = subprocess.run(["jack_lsp", "-c"], capture_output=True, text=True, env=jack.env, timeout=5).stdout
    return f"status {daemon.status()}\nJACK graph:\n{graph}\ndaemon log:\n{''.join(daemon.stderr[-30:])}"


def test_an_unterminated_sysex_leaves_the_band_hearing(daemon: Daemon) -> None:
    """`F0 7D 01` with no F7, then Start, clock and piano for 4 bars: bars are scheduled, the notes
    counted, the broken sysex counted (before the guard: 0 bars, 0 notes, nothing counted)."""
    import rtmidi

    client = _client(daemon)
    raw_name = unique("vjraw")
    raw = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, raw_name)
    raw.open_virtual_port("raw")
    try:
        jack_connect(find_port(raw_name, "raw"), find_port(daemon.client, "vaejam in"))
        time.sleep(0.2)  # jack_connect returned: the connection is in the graph from the next cycle on
        raw.send_message([0xF0, 0x7D, 0x01])
        play(client, 160.0, ticks=96 * 4 + 10, notes=chords(4))
        status = daemon.status()
        # glued onto what followed (broken_sysex, the bytes recovered), or ended by the guard's F7 first
        # when that came before the next event (a whole sysex, ignored): counted once either way
        assert status.get("midi/broken_sysex", 0) + status.get("midi/sysex", 0) == 1, status
        assert status["notes_in"] >= 40 and status["bars_scheduled"] >= 2, status
        client.send(mido.Message("stop"))
    finally:
        raw.delete()
        client.close()
    assert daemon.stop() == 0


# After a SIGKILLed jackd (which leaves its shared memory and futex files behind) is restarted,
# libjack segfaulted in 1 of 26 runs after the ports had come back and heard, in a client's close at
# the daemon's exit (before the port check, once in the test's own client too): inside libjack, and
# not seen after a clean stop. Run it with VAEJAM_JACK_CRASH_TEST=1.
CRASH = pytest.param("crash", marks=pytest.mark.skipif(
    os.environ.get("VAEJAM_JACK_CRASH_TEST") != "1",
    reason="libjack may segfault on a crashed jackd's restart (1 of 26 runs); VAEJAM_JACK_CRASH_TEST=1 runs it"))


@pytest.mark.parametrize("death", ["stop", CRASH])
def test_the_ports_come_back_with_a_restarted_jack_server(daemon: Daemon, jack: PrivateJack, death: str) -> None:
    """jackd stops or crashes: the daemon says so once (log, /vaejam/status midi_api_ok 0,
    midi/server_lost) and reopens `vaejam in`/`vaejam out` under their names when a server of that
    name is back."""
    assert daemon.status()["midi_api_ok"] == 1
    jack.terminate() if death == "stop" else jack.kill()
    _wait(lambda: daemon.status()["midi_api_ok"] == 0, 10, "the daemon never noticed that jackd died")
    assert daemon.status()["midi/server_lost"] == 1
    assert sum("JACK server went away" in line for line in daemon.stderr) == 1, "".join(daemon.stderr)
    jack.start()
    _wait(lambda: daemon.status()["midi_api_ok"] == 1, 15, lambda: "the ports never came back; " + _evidence(daemon, jack))
    client = _client(daemon)  # by the same names, as a DAW reconnects
    try:
        before = daemon.status()["notes_in"]
        client.send(mido.Message("note_on", note=60, velocity=80))
        client.send(mido.Message("note_off", note=60))
        _wait(lambda: daemon.status()["notes_in"] > before, 5, lambda: "the reopened input hears nothing; "
              + _evidence(daemon, jack))
        status = daemon.status()
        assert status["midi/server_lost"] == 1 and status["midi/server_back"] == 1, status
    finally:
        client.close()
    assert daemon.stop() == 0
