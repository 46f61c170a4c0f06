"""Two real Ableton Link peers on this machine: the daemon (`vaejam run --clock link`) and a test peer.

Timing is read on the host clock both peers share (Link's micros, CLOCK_MONOTONIC_RAW on Linux): the
daemon reports when each beat tick really went out (status `link_beats`, "tick:micros ..."), and the
test peer says where that moment lies on its own Link timeline. JACK is not in that path on purpose:
its dummy driver moves MIDI once per 5.3 ms period, coarser than the 2 ms asked of Link.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import mido
import numpy as np
import pytest

from bridge import bench_link
from bridge.bench_link import QUANTUM, beat_errors_ms, collect_beats, open_peer, parse_link_beats, propose_tempo

from .player import unpaired_notes
from .stall_witness import StallWitness

pytest.importorskip("link", reason="Ableton Link binding not installed: pip install -e '.[link]'")
pytestmark = [pytest.mark.jack, pytest.mark.slow]


DISCOVERY_S = 10.0  # Link peers on one host find each other in well under a second (measured: ~0.2 s)


@functools.cache
def link_reaches_peers() -> bool:
    """Link finds peers by UDP multicast on the host's interfaces: on a machine whose network does not
    carry it (a container without multicast), no two Link apps ever meet, vaejam's or not. Two bare
    peers of the binding show it, once per test run; where they meet, every test here judges vaejam."""
    with bench_link.link_session_lock():
        first, second = open_peer(120.0), open_peer(120.0)
        deadline = time.monotonic() + DISCOVERY_S
        while first.numPeers() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        met = first.numPeers() > 0
        first.enabled = second.enabled = False
    return met


def relocations_said(daemon, peer) -> str:
    """The daemon's own words on its relocations (how far off, and whether its clock thread was late or
    the timeline moved), and the test peer's peer count: a third Link app merging sessions shows there."""
    said = [line.strip() for line in daemon.stderr if "relocating" in line]
    return f"{said}; the test peer sees {peer.numPeers()} peers"


@pytest.fixture
def peer():
    """The test's Link peer (another app in the session), start/stop sync on; enabled before the daemon
    starts, so the daemon joins its session and adopts its tempo (bench_link.open_peer says why). Held
    with this machine's Link turn (another run's peers would join the session); requested before
    start_daemon, so the daemon is gone before the turn passes."""
    if not link_reaches_peers():
        pytest.skip(f"two Link peers on this machine did not find each other in {DISCOVERY_S:g} s "
                    "(no UDP multicast on its network): Ableton Link cannot work here")
    with bench_link.link_session_lock():
        peer = open_peer(180.0)
        yield peer
        peer.enabled = False


def set_playing(peer, playing: bool) -> int:
    """The peer starts (asking for beat 0 at the next bar, as Live does) or stops; the host micros of it."""
    state = peer.captureAppSessionState()
    now = peer.clock().micros()
    if playing:
        state.setIsPlayingAndRequestBeatAtTime(True, now, 0.0, QUANTUM)
    else:
        state.setIsPlaying(False, now)
    peer.commitAppSessionState(state)
    return now


def wait_for(daemon, check, timeout: float = 10.0, peer=None) -> dict:
    """Poll the daemon's status until `check` holds: this waits for an event; timing bounds are checked
    on the host clock (beat ticks), not on how fast a status reply comes back."""
    try:
        return bench_link.wait_for(daemon.status, check, timeout, "daemon status")
    except TimeoutError as err:
        # Link peers find each other on the whole network: another program's older session (a daemon
        # of another test run) takes the test peer in, with its tempo
        seen = (f"; the test peer plays at {peer.captureAppSessionState().tempo():g} BPM with "
                f"{peer.numPeers()} peers" if peer is not None else "")
        raise AssertionError(f"{err}{seen}; daemon said {''.join(daemon.stderr)[-2000:]}") from None


def assert_threads_above_normal(daemon) -> None:
    """The daemon's threads that hold the GIL for milliseconds run real-time where the OS allows it:
    the two clocks at REALTIME_PRIORITY, the inference worker and the OSC server below them. Such a
    thread at normal priority, preempted while holding the GIL, made beats 5-30 ms late under load."""
    from bridge.clock import HELPER_PRIORITY, REALTIME_PRIORITY

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # may this user have it at all?
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        return  # no real-time priorities here: the daemon runs at normal priority (DESIGN.md)
    levels = []
    for task in Path(f"/proc/{daemon.proc.pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        if int(fields[38]) == os.SCHED_FIFO:  # stat fields 40 (rt_priority) and 41 (policy), after the name
            levels.append(int(fields[37]))
    # (a real-time jackd's client threads run at its level - 5: 65 for the tests' jackd (jackd_args), not counted)
    assert levels.count(HELPER_PRIORITY) == 2 and levels.count(REALTIME_PRIORITY) >= 2, levels


def collect_at_least(daemon, n: int, since_us: float, timeout: float = 120.0) -> dict[int, int]:
    """Beat ticks from status until `n` of them were sent at or after `since_us` (at 140 BPM and up,
    100 beats take 43 s at most: the timeout is for a band that stopped ticking)."""
    beats: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while sum(us >= since_us for us in beats.values()) < n:
        last = collect_beats(daemon.status, 2.0, beats)
        assert time.monotonic() < deadline, f"{n} beats not in {timeout:g} s; last status {last}"
    return beats


def on_peer_grid(peer, beats: dict[int, int], since_us: float, downbeats: bool = False) -> list[tuple[int, float]]:
    """(sent us, ms off the peer's beat of the same phase) of each beat tick sent at or after since_us;
    bar downbeats only if asked."""
    every, bars = beat_errors_ms(peer.captureAppSessionState(), beats, since_us=since_us)
    sent = [(tick, us) for tick, us in sorted(beats.items()) if us >= since_us]
    if downbeats:
        return list(zip([us for tick, us in sent if tick % 96 == 0], bars.tolist()))
    return list(zip([us for _, us in sent], every.tolist()))


def assert_on_grid(errors: list[tuple[int, float]], witness: StallWitness, what: str, limit_ms: float = 2.0) -> None:
    """p99 |error| <= limit_ms, issue 10's target: of N beats, N // 100 may lie beyond it. A beat late
    while the machine itself stalled (the StallWitness saw a CPU taken away at that moment) is the
    machine's, not vaejam's, and is only reported; a daemon off the grid is off on every beat."""
    ms = np.abs([e for _, e in errors])
    late = [(us, e) for us, e in errors if abs(e) > limit_ms]
    ours = [(us, round(e, 3)) for us, e in late if not witness.explains(us, e)]
    print(f"{what}: {len(ms)} beats, |error| p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, "
          f"max {ms.max():.3f} ms; {len(late) - len(ours)} beyond {limit_ms} ms during a stall of the machine")
    assert len(ours) <= len(ms) // 100, f"{what}: {len(ours)} of {len(ms)} beyond {limit_ms} ms: {ours}"


def test_daemon_adopts_the_peers_tempo_phase_and_tempo_changes(peer, start_daemon) -> None:
    daemon = start_daemon("--clock", "link", "--bpm", "100")  # its own tempo, 100, is nobody else's
    # The daemon joins the peer's session while it loads its model, so its first status can come before
    # the first Link tick after its ready line (the tick that carries on_start): wait for the band to run
    # in the peer's session, not for the join alone.
    status = wait_for(daemon, bench_link.joined(180.0), peer=peer)
    assert status["clock_source"] == "link" and status["link_running"] == 1
    assert_threads_above_normal(daemon)
    joined_us = peer.clock().micros()  # beats kept from before the join were on the daemon's own timeline
    pianist = bench_link.Pianist(daemon.client, 180.0)  # the band plays: inference runs beside the clock
    with StallWitness() as witness:
        beats = collect_at_least(daemon, 100, joined_us)
    downbeats = on_peer_grid(peer, beats, joined_us, downbeats=True)
    assert len(downbeats) >= 25
    print()
    assert_on_grid(on_peer_grid(peer, beats, joined_us), witness, "Link 180 BPM")
    assert_on_grid(downbeats, witness, "bar downbeats against the peer's phase 0")

    relocations = daemon.status()["link_relocations"]
    changed_us = propose_tempo(peer, 140.0)  # a tempo change on the peer
    one_beat_us = 60e6 / 140
    wait_for(daemon, lambda s: abs(float(s["tempo"]) - 140.0) < 0.01)
    # followed within one beat: the beat ticks from one beat after the change on lie on the new grid,
    # the first of them included (a daemon still at 180 BPM would be ~95 ms off by then, and more after)
    with StallWitness() as witness:
        after = collect_at_least(daemon, 24, changed_us + one_beat_us)
    first_us = min(us for us in after.values() if us >= changed_us + one_beat_us)
    assert first_us - (changed_us + one_beat_us) <= one_beat_us, "beats right after the change are missing"
    assert_on_grid(on_peer_grid(peer, after, changed_us + one_beat_us), witness,
                   "tempo 180 -> 140, beats from one beat after the change")
    pianist.stop()
    status = daemon.status()
    assert status["link_relocations"] == relocations, \
        f"a tempo change must not relocate the band: {relocations_said(daemon, peer)}"
    assert status["bars_scheduled"] > 20, status  # the band played while it was measured
    assert daemon.stop() == 0


def test_start_stop_from_the_peer_starts_and_stops_the_band_with_no_hung_notes(peer, start_daemon, connect_client) -> None:
    daemon = start_daemon("--clock", "link", "--autopilot", "0")
    client = connect_client(daemon)
    wait_for(daemon, bench_link.joined(180.0), peer=peer)  # running freely in the peer's session: nobody plays yet
    bar_us = 4 * 60e6 / 180
    playing = threading.Event()
    done = threading.Event()

    def pianist() -> None:  # a note every half second while the test says so
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
    starts: list[tuple[int, float]] = []  # (sent us, ms from the peer's downbeat) of each run's bar 0
    witness = StallWitness()
    try:
        for run in range(2):
            started_us = set_playing(peer, True)
            wait_for(daemon, lambda s: s["running"] == 1 and s["link_running"] == 1)
            started = time.perf_counter()
            playing.set()
            beats: dict[int, int] = {}
            wait_for(daemon, lambda s: beats.update(parse_link_beats(s["link_beats"])) or len(
                client.band("note_on", since=started)) >= 4)
            # bar 0 of the run is the first Link bar downbeat at or after the peer's start
            first_us = min(us for tick, us in beats.items() if tick == 0 and us >= started_us)
            _, downbeat = beat_errors_ms(peer.captureAppSessionState(), {0: first_us})
            starts.append((first_us, float(downbeat[0])))
            # that downbeat, not another beat (a beat is 333 ms here; the timing is judged below)
            assert abs(downbeat[0]) < 60e3 / 180 / 4 and 0 <= first_us - started_us < bar_us + 2000, (started_us, beats)
            set_playing(peer, False)  # the pianist plays on: a band that did not stop would answer
            stopped = time.perf_counter()
            status = wait_for(daemon, lambda s: s["running"] == 0 and s["link_running"] == 0)
            print(f"\nrun {run}: stop seen in status after {(time.perf_counter() - stopped) * 1000:.0f} ms")
            time.sleep(bar_us / 1e6 + 0.2)  # over a bar: a running band plays every bar the pianist plays
            late = client.band("note_on", since=stopped + 0.05)  # a note already in the JACK period may pass
            print(f"run {run}: band note-ons after the stop: "
                  f"{[round((r.t - stopped) * 1000) for r in client.band('note_on', since=stopped)]} ms")
            assert late == [], f"run {run}: the band played on after the peer stopped: {late[:5]}"
            playing.clear()
            assert unpaired_notes(client.received) == [], f"run {run}: hung notes after the peer stopped"
            assert status["clock_source"] == "link"
    finally:
        done.set()
        player.join()
        witness.close()
    assert_on_grid(starts, witness, "bar 0 of each run against the peer's downbeat")
    assert daemon.stop() == 0
    client.wait_ended()
    assert unpaired_notes(client.received) == []


def test_auto_follows_a_peer_and_vaejam_tempo_proposes_to_the_session(peer, start_daemon) -> None:
    daemon = start_daemon("--clock", "auto", "--bpm", "120")
    status = wait_for(daemon, bench_link.joined(180.0), peer=peer)  # auto, no MIDI clock: Link once a peer is there
    assert status["clock_mode"] == "auto" and status["link_peers"] == 1
    daemon.osc("/vaejam/tempo", 150.0)
    # proposed to the session: the other app plays at 150 now too, and the band follows it
    bench_link.wait_for(lambda: {"tempo": peer.captureAppSessionState().tempo()},
                        lambda s: abs(s["tempo"] - 150.0) < 0.01, 10.0, "the peer taking the proposed tempo")
    proposed_us = peer.clock().micros()
    wait_for(daemon, lambda s: abs(float(s["tempo"]) - 150.0) < 0.01 and s["running"] == 1)
    with StallWitness() as witness:
        beats = collect_at_least(daemon, 8, proposed_us)
    assert_on_grid(on_peer_grid(peer, beats, proposed_us), witness, "beats after the proposed tempo")
    peer.enabled = False  # the other app leaves: status says so, and the band plays on at the session's tempo
    status = wait_for(daemon, lambda s: s["link_peers"] == 0)
    assert (status["clock_source"], status["running"], round(float(status["tempo"]), 2)) == ("link", 1, 150.0)
    assert daemon.stop() == 0


# The soak behind issue 10's search for a relocation on a tempo change (DESIGN.md, "Ableton Link
# clock"): 100 changes of the peer's tempo take 2.5 minutes, so it runs with VAEJAM_LINK_SOAK_TEST=1.
@pytest.mark.skipif(os.environ.get("VAEJAM_LINK_SOAK_TEST") != "1",
                    reason="2.5-minute soak of tempo changes; VAEJAM_LINK_SOAK_TEST=1 runs it")
def test_a_hundred_tempo_changes_never_relocate_the_playing_band(peer, start_daemon) -> None:
    daemon = start_daemon("--clock", "link", "--bpm", "100")
    wait_for(daemon, bench_link.joined(180.0), peer=peer)
    pianist = bench_link.Pianist(daemon.client, 180.0)
    relocations = daemon.status()["link_relocations"]  # the join's, if its snap relocated the run
    for change in range(100):
        bpm = 140.0 if change % 2 == 0 else 180.0
        propose_tempo(peer, bpm)
        wait_for(daemon, lambda s, bpm=bpm: abs(float(s["tempo"]) - bpm) < 0.01)
        time.sleep(1.5)  # a few beats at each tempo: the band plays across every change
    pianist.stop()
    status = daemon.status()
    assert status["link_relocations"] == relocations, relocations_said(daemon, peer)
    assert status["bars_scheduled"] > 50 and status["late_bars"] == 0, status
    assert daemon.stop() == 0
