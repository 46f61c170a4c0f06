"""The real daemon with `--osc-out` and `--cc`: band notes received on a real UDP socket the way the
vaejam Band device receives them, piano sent the way vaejam Piano sends it, and a hardware knob on
the input port moving noise_sd."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import mido
import numpy as np
import pytest
from pythonosc.osc_message import OscMessage

from .player import chords, play

pytestmark = [pytest.mark.jack, pytest.mark.slow]
CHANNELS = {1: "guitar", 2: "bass", 3: "strings", 9: "drums"}  # the daemon's default band channels (0-based)


class Receiver(threading.Thread):
    """A UDP socket as vaejam Band's [udpreceive]: every datagram with its arrival time."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[float, str, list[int]]] = []  # appended by this thread only
        self.halt = threading.Event()  # set by stop()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            message = OscMessage(data)
            self.got.append((time.perf_counter(), message.address, list(message.params)))

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VAEJAM_CONFIG_DIR", str(tmp_path))  # the daemon subprocess inherits it
    return tmp_path


def test_every_band_note_arrives_over_osc_with_its_midi_twin(start_daemon, connect_client, receiver) -> None:
    daemon = start_daemon("--osc-out", f"127.0.0.1:{receiver.port}")
    client = connect_client(daemon)
    play(client, 160.0, ticks=96 * 4 + 1, notes=chords(3))
    assert daemon.stop() == 0
    client.wait_ended()
    time.sleep(0.1)  # the last datagrams: UDP has no closing marker
    midi = [(r.t, CHANNELS[r.msg.channel], r.msg.note, r.msg.velocity if r.msg.type == "note_on" else 0)
            for r in client.received if r.msg.type in ("note_on", "note_off") and r.msg.channel in CHANNELS]
    osc = [(t, address.rsplit("/", 1)[1], *params) for t, address, params in receiver.got]
    assert midi, f"the band played nothing; daemon said: {''.join(daemon.stderr)[-2000:]}"
    assert all(address.startswith("/vaejam/out/") for _, address, _ in receiver.got)
    # the same notes in the same order per instrument (pitch, velocity; note-offs as velocity 0)
    for name in CHANNELS.values():
        assert [m[2:] for m in midi if m[1] == name] == [o[2:4] for o in osc if o[1] == name], name
    ons = [o for o in osc if o[3] > 0]
    assert all(0 <= o[5] < 32 and o[4] >= 1 for o in ons)  # bar and step: the band starts at bar 1
    # arrival of each note-on over OSC against its MIDI twin through JACK (one period of buffering there)
    midi_ons = [m for m in midi if m[3] > 0]
    osc_ons = sorted(ons, key=lambda o: o[0])
    diffs = []
    for name in CHANNELS.values():
        mine = [m for m in midi_ons if m[1] == name]
        theirs = [o for o in osc_ons if o[1] == name]
        diffs += [(o[0] - m[0]) * 1000 for m, o in zip(mine, theirs)]
    diffs_ms = np.array(diffs)
    p50, p99 = np.percentile(diffs_ms, [50, 99])
    print(f"\nOSC note-on arrival minus MIDI (JACK) arrival: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"min {diffs_ms.min():.2f} ms, max {diffs_ms.max():.2f} ms over {len(diffs)} notes")
    assert abs(p50) < 20.0  # the same moment, give or take JACK's period and a busy machine


def test_piano_over_osc_in_and_band_over_osc_out(start_daemon, receiver) -> None:
    """No MIDI at all, as on Windows without loopMIDI: vaejam Piano's messages in, vaejam Band's out."""
    daemon = start_daemon("--osc-out", f"127.0.0.1:{receiver.port}")
    daemon.osc("/vaejam/tempo", 200.0)
    daemon.osc("/vaejam/play")
    bar_s = 4 * 60.0 / 200.0
    started = time.perf_counter()
    for bar in range(2):
        for beat in range(4):
            for pitch in (60, 64, 67):
                daemon.osc("/vaejam/note", pitch, 90)
            time.sleep(bar_s / 4 * 0.9)
            for pitch in (60, 64, 67):
                daemon.osc("/vaejam/note", pitch, 0)
            time.sleep(bar_s / 4 * 0.1)
    deadline = started + 5 * bar_s
    while not [g for g in receiver.got if g[2][1] > 0] and time.perf_counter() < deadline:
        time.sleep(0.05)
    time.sleep(bar_s)
    status = daemon.status()
    assert daemon.stop() == 0
    ons = [g for g in receiver.got if g[2][1] > 0]
    assert ons, f"no band notes over OSC; status {status}; {''.join(daemon.stderr)[-2000:]}"
    assert {g[1].rsplit("/", 1)[1] for g in ons} <= set(CHANNELS.values())
    assert status["notes_in"] >= 24 and status["osc_out/sent"] >= len(ons) and status["osc_out/errors"] == 0


def test_a_knob_moves_noise_sd_and_learn_binds_the_next_cc(start_daemon, connect_client, config: Path) -> None:
    daemon = start_daemon("--cc", "noise_sd=21")
    client = connect_client(daemon)

    def wait_for(key: str, value: object) -> dict[str, object]:
        deadline = time.monotonic() + 5
        while True:
            status = daemon.status()
            if status.get(key) == pytest.approx(value) or time.monotonic() > deadline:
                return status

    client.send(mido.Message("control_change", control=21, value=127))
    status = wait_for("noise_sd", 3.0)
    assert status["noise_sd"] == pytest.approx(3.0) and status["cc/noise_sd"] == 21
    client.send(mido.Message("control_change", control=21, value=0))
    assert wait_for("noise_sd", 0.0)["noise_sd"] == 0.0
    daemon.osc("/vaejam/learn", "alpha")
    assert wait_for("cc_learning", "alpha")["cc_learning"] == "alpha"
    client.send(mido.Message("control_change", channel=5, control=33, value=127))
    status = wait_for("alpha", 1.0)
    assert status["alpha"] == pytest.approx(1.0) and status["cc/alpha"] == 33 and status["cc_learning"] == ""
    assert daemon.stop() == 0
    saved = json.loads((config / "cc.json").read_text())
    assert saved["cc"] == {"noise_sd": 21, "alpha": 33}
