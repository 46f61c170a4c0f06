"""Two real Ableton Link peers on this machine: the daemon (`vaejam run --clock link`) and a test peer.

Timing is read on the host clock both peers share (Link's micros, CLOCK_MONOTONIC_RAW on Linux): the
daemon reports when each beat tick really went out (status `link_beats`, "tick:micros ..."), and the
test peer says where that moment lies on its own Link timeline. JACK is not in that path on purpose:
its dummy driver moves MIDI once per 5.3 ms period, coarser than the 2 ms asked of Link.
"""
from __future__ import annotations

import threading
import time

import mido
import numpy as np
import pytest

from .player import unpaired_notes

link = pytest.importorskip("link", reason="Ableton Link binding not installed: pip install -e '.[link]'")
pytestmark = [pytest.mark.jack, pytest.mark.slow]
QUANTUM = 4.0


@pytest.fixture
def peer():
    """The test's Link peer (another app in the session), start/stop sync on."""
    peer = link.Link(180.0)
    peer.startStopSyncEnabled = True
    peer.enabled = True
    yield peer
    peer.enabled = False


def set_tempo(peer, bpm: float) -> int:
    state = peer.captureAppSessionState()
    now = peer.clock().micros()
    state.setTempo(bpm, now)
    peer.commitAppSessionState(state)
    return now


def set_playing(peer, playing: bool) -> None:
    state = peer.captureAppSessionState()
    now = peer.clock().micros()
    if playing:
        state.setIsPlayingAndRequestBeatAtTime(True, now, 0.0, QUANTUM)
    else:
        state.setIsPlaying(False, now)
    peer.commitAppSessionState(state)


def wait_for(daemon, check, timeout: float = 10.0, every: float = 0.01) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = daemon.status()
        if check(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status {status}; daemon said {''.join(daemon.stderr)[-2000:]}"
        time.sleep(every)


def beat_errors_ms(peer, beats: dict[int, int], since_us: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(every beat, bar downbeats only): ms between the daemon's beat tick and the peer's beat with the
    same phase (bar downbeat = the peer's phase 0 with quantum 4), on the peer's current timeline."""
    state = peer.captureAppSessionState()
    bpm = state.tempo()
    every, downbeats = [], []
    for tick, us in sorted(beats.items()):
        if us < since_us:
            continue
        expected = (tick / 24) % QUANTUM
        diff = (state.phaseAtTime(us, QUANTUM) - expected + QUANTUM / 2) % QUANTUM - QUANTUM / 2
        ms = diff * 60_000.0 / bpm
        every.append(ms)
        if tick % 96 == 0:
            downbeats.append(ms)
    return np.array(every), np.array(downbeats)


def collect_beats(daemon, seconds: float, into: dict[int, int]) -> None:
    """Read status link_beats (the last 16 beats) often enough to miss none."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for item in str(daemon.status().get("link_beats", "")).split():
            tick, us = item.split(":")
            into[int(tick)] = int(us)
        time.sleep(0.5)


def test_daemon_adopts_the_peers_tempo_phase_and_tempo_changes(start_daemon, peer) -> None:
    daemon = start_daemon("--clock", "link", "--bpm", "120")
    status = wait_for(daemon, lambda s: s.get("link_peers", 0) >= 1 and abs(float(s["tempo"]) - 180.0) < 0.01)
    assert status["clock_source"] == "link" and status["running"] == 1
    joined_us = peer.clock().micros()  # beats kept from before the join were on the daemon's own timeline
    beats: dict[int, int] = {}
    collect_beats(daemon, 16.0, beats)
    every, downbeats = beat_errors_ms(peer, beats, since_us=joined_us)
    assert len(downbeats) >= 8, beats
    p99 = float(np.percentile(np.abs(every), 99))
    print(f"\nLink 180 BPM: {len(every)} beats, error p50 {np.percentile(every, 50):.3f} ms, p99 |err| {p99:.3f} ms, "
          f"max {np.abs(every).max():.3f} ms; {len(downbeats)} downbeats max |err| {np.abs(downbeats).max():.3f} ms")
    assert float(np.percentile(np.abs(downbeats), 99)) < 2.0 and p99 < 2.0

    relocations = daemon.status()["link_relocations"]
    changed_us = set_tempo(peer, 140.0)  # a tempo change on the peer
    changed = time.monotonic()
    wait_for(daemon, lambda s: abs(float(s["tempo"]) - 140.0) < 0.01, timeout=60 / 140)
    followed_s = time.monotonic() - changed
    after: dict[int, int] = {}
    collect_beats(daemon, 8.0, after)
    every, downbeats = beat_errors_ms(peer, after, since_us=changed_us + 60e6 / 140)  # from one beat on
    print(f"tempo 180 -> 140 seen in status after {followed_s * 1000:.0f} ms; then {len(every)} beats p99 |err| "
          f"{np.percentile(np.abs(every), 99):.3f} ms")
    assert len(every) >= 12 and float(np.percentile(np.abs(every), 99)) < 2.0
    status = daemon.status()
    assert status["link_relocations"] == relocations, "a tempo change must not relocate the band"
    assert daemon.stop() == 0


def test_start_stop_from_the_peer_starts_and_stops_the_band_with_no_hung_notes(start_daemon, connect_client, peer) -> None:
    daemon = start_daemon("--clock", "link", "--autopilot", "0")
    client = connect_client(daemon)
    wait_for(daemon, lambda s: s.get("link_peers", 0) >= 1)
    playing = threading.Event()
    done = threading.Event()

    def pianist() -> None:  # a chord every half second while the test says so
        pitch = 60
        while not done.is_set():
            if playing.is_set():
                client.send(mido.Message("note_on", note=pitch, velocity=90))
                time.sleep(0.25)
                client.send(mido.Message("note_off", note=pitch))
                pitch = 60 + (pitch - 59) % 12
            time.sleep(0.25)

    player = threading.Thread(target=pianist, daemon=True)
    player.start()
    try:
        for run in range(2):
            set_playing(peer, True)
            wait_for(daemon, lambda s: s["running"] == 1, timeout=2.0)
            started = time.perf_counter()
            playing.set()
            wait_for(daemon, lambda s: len(client.band("note_on", since=started)) >= 4, timeout=8.0, every=0.1)
            playing.clear()
            set_playing(peer, False)
            stopped = time.perf_counter()
            status = wait_for(daemon, lambda s: s["running"] == 0, timeout=0.5)
            time.sleep(0.5)
            late = client.band("note_on", since=stopped + 0.05)  # a note already in the JACK period may pass
            assert late == [], f"run {run}: the band played on after the peer stopped: {late[:5]}"
            assert unpaired_notes(client.received) == [], f"run {run}: hung notes after the peer stopped"
            assert status["clock_source"] == "link"
    finally:
        done.set()
        player.join()
    assert daemon.stop() == 0
    client.wait_ended()
    assert unpaired_notes(client.received) == []
