"""LinkClock on a fake Link session and fake time; the session with Link as its third clock source.

The fake timeline is a line (beat, host time, tempo) as Link's is; a tempo change re-anchors it at
the present beat, so the beat stays continuous. Real Link peers are in tests/live/test_live_link.py.
"""
from __future__ import annotations

import math

import mido
import numpy as np
import pytest

from bridge.link_clock import QUANTUM, LinkClock, LinkPeer, LinkUnavailable
from bridge.scheduler import DEFAULT_CHANNELS, NoteScheduler
from bridge.session import LiveSession, SessionOptions
from models.bars import N_PITCHES, STEPS_PER_BAR

MS = 1e-3


class FakeTime:
    def __init__(self, t: float = 10.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeState:
    def __init__(self, segments: list[tuple[float, float, float]], playing: bool, play_us: float) -> None:
        self._segments = list(segments)  # (host us, beat, bpm), in time order
        self._playing, self._play_us = playing, play_us

    def tempo(self) -> float:
        return self._segments[-1][2]

    def beat_at(self, time_us: float) -> float:
        us, beat, bpm = self._segments[-1]  # Link's timeline is one line: the latest (tempo, beat, time)
        return beat + (time_us - us) / 1e6 * bpm / 60.0

    def time_at(self, beat: float) -> float:
        us, b0, bpm = self._segments[-1]
        return us + (beat - b0) * 60.0 / bpm * 1e6

    def playing(self) -> bool:
        return self._playing

    def play_time(self) -> float:
        return self._play_us


class FakeLink:
    """A Link session (LinkSession protocol) on fake time: peers, tempo, phase, start/stop by hand."""

    def __init__(self, now: FakeTime, bpm: float = 120.0, beat: float = 0.0) -> None:
        self._now = now
        self.segments = [(now.t * 1e6, beat, bpm)]
        self.n_peers = 0
        self.is_playing, self.play_us = False, 0.0
        self.proposed: list[float] = []
        self.closed = False

    def now_us(self) -> float:
        return self._now.t * 1e6

    def peers(self) -> int:
        return self.n_peers

    def capture(self) -> FakeState:
        return FakeState(self.segments, self.is_playing, self.play_us)

    def propose_tempo(self, bpm: float) -> None:
        self.proposed.append(bpm)
        self.set_tempo(bpm)

    def close(self) -> None:
        self.closed = True

    # what other peers do
    def set_tempo(self, bpm: float) -> None:
        us = self.now_us()
        self.segments.append((us, self.capture().beat_at(us), bpm))

    def jump(self, beats: float) -> None:
        us = self.now_us()
        self.segments.append((us, self.capture().beat_at(us) + beats, self.segments[-1][2]))

    def set_playing(self, playing: bool) -> None:
        self.is_playing, self.play_us = playing, self.now_us()


class Listener:
    def __init__(self, now: FakeTime) -> None:
        self.now = now
        self.events: list[tuple[str, int, float, float]] = []  # (kind, tick, t, delivered at)

    def on_start(self, tick: int, t: float) -> None:
        self.events.append(("start", tick, t, self.now.t))

    def on_tick(self, tick: int, t: float) -> None:
        self.events.append(("tick", tick, t, self.now.t))

    def on_stop(self, tick: int, t: float) -> None:
        self.events.append(("stop", tick, t, self.now.t))

    def ticks(self) -> list[tuple[int, float, float]]:
        return [(tick, t, at) for kind, tick, t, at in self.events if kind == "tick"]

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events if e[0] != "tick"]


def rig(bpm: float = 120.0, beat: float = 0.0):
    now = FakeTime()
    link = FakeLink(now, bpm, beat)
    listener = Listener(now)
    clock = LinkClock(listener, link, now=now)
    return now, link, listener, clock


def run(now: FakeTime, clock: LinkClock, seconds: float, step: float = 0.25 * MS, act=None) -> None:
    """Drive service() the way the thread does, waking every `step` (finer than any deadline error asserted)."""
    end = now.t + seconds
    while now.t < end:
        if act is not None:
            act(now.t)
        clock.service(now.t)
        now.t += step


def test_free_run_ticks_on_the_beat_grid_from_the_bar_in_progress() -> None:
    now, link, listener, clock = rig(120.0, beat=1.3)  # mid-bar: bar 0 is the downbeat at beat 0
    clock.start_transport()
    run(now, clock, 2.0)
    ticks = listener.ticks()
    state = link.capture()
    assert listener.kinds() == ["start"] and listener.events[0][1] == ticks[0][0]
    assert ticks[0][0] == math.floor(1.3 * 24) + 1  # tick 0 = beat 0, a Link bar downbeat
    assert [k for k, _, _ in ticks] == list(range(ticks[0][0], ticks[-1][0] + 1))  # none skipped
    for tick, t, at in ticks:
        assert t == pytest.approx(state.time_at(tick / 24) / 1e6, abs=1e-9)  # t = host time of the beat
        assert 0 <= at - t < 0.3 * MS  # delivered on its deadline
    assert any(tick % 96 == 0 and state.beat_at(t * 1e6) % QUANTUM == pytest.approx(0, abs=1e-9)
               for tick, t, _ in ticks)  # a vaejam downbeat is a Link bar downbeat
    assert clock.bpm == 120.0 and clock.running


def test_a_peers_tempo_change_is_followed_at_once_without_a_jump() -> None:
    now, link, listener, clock = rig(120.0)
    clock.start_transport()
    change_at = now.t + 1.01
    run(now, clock, 2.0, act=lambda t: link.set_tempo(150.0) if abs(t - change_at) < 0.1 * MS else None)
    ticks = listener.ticks()
    assert [k for k, _, _ in ticks] == list(range(ticks[0][0], ticks[-1][0] + 1))
    gaps = np.diff([t for _, t, _ in ticks])
    before = [g for (k, t, _), g in zip(ticks[1:], gaps) if t < change_at]
    after = [g for (k, t, _), g in zip(ticks[1:], gaps) if t > change_at + 0.05]
    assert np.allclose(before, 60 / (24 * 120)) and np.allclose(after, 60 / (24 * 150))
    assert all(0 <= at - t < 0.3 * MS for _, t, at in ticks)
    assert clock.bpm == 150.0


def test_latency_sends_each_tick_early_with_its_beat_time() -> None:
    now, link, listener, clock = rig(100.0)
    clock.set_latency_ms(20.0)
    clock.start_transport()
    run(now, clock, 1.0)
    state = link.capture()
    for tick, t, at in listener.ticks():
        assert t == pytest.approx(state.time_at(tick / 24) / 1e6, abs=1e-9)
        assert 19.7 * MS < t - at <= 20 * MS + 1e-9  # due 20 ms before the beat, served within a wake-up
    with pytest.raises(ValueError):
        clock.set_latency_ms(-1.0)


def test_start_stop_from_a_peer_starts_bar_0_on_a_downbeat_and_stops() -> None:
    now, link, listener, clock = rig(120.0)
    link.n_peers = 1
    clock.start_transport()
    run(now, clock, 0.6)  # free run until a peer plays
    run(now, clock, 3.0, act=lambda t: link.set_playing(True) if not link.is_playing else None)
    starts = [e for e in listener.events if e[0] == "start"]
    assert listener.kinds()[:3] == ["start", "stop", "start"]
    start_beat = link.capture().beat_at(link.play_us)
    tick0, t0 = starts[1][1], starts[1][2]
    assert tick0 == 0
    assert link.capture().beat_at(t0 * 1e6) == pytest.approx(math.ceil(start_beat / 4) * 4, abs=1e-9)
    stop_at = now.t
    run(now, clock, 1.0, act=lambda t: link.set_playing(False) if link.is_playing else None)
    assert listener.kinds()[-1] == "stop" and not clock.running
    assert not [1 for kind, _, t, at in listener.events if kind == "tick" and at > stop_at + 0.001]
    run(now, clock, 1.0)  # the session follows start/stop now: no free run again
    assert listener.kinds()[-1] == "stop"


def test_a_timeline_jump_relocates_instead_of_bursting() -> None:
    now, link, listener, clock = rig(120.0)
    clock.start_transport()
    run(now, clock, 0.5)
    link.jump(1.5)  # joining a session snapped the phase forward
    run(now, clock, 0.5)
    ticks = listener.ticks()
    assert listener.kinds() == ["start", "stop", "start"] and clock.relocations == 1
    assert max(at for _, _, at in ticks) - min(at for _, _, at in ticks) < 1.01  # no burst of 36 ticks at once
    per_time: dict[float, int] = {}
    for _, _, at in ticks:
        per_time[round(at, 6)] = per_time.get(round(at, 6), 0) + 1
    assert max(per_time.values()) == 1
    state = link.capture()
    assert all(t == pytest.approx(state.time_at(k / 24) / 1e6, abs=1e-9) for k, t, _ in ticks[-10:])


def test_a_relocation_says_whether_the_timeline_moved_or_the_clock_thread_was_late(caplog) -> None:
    said = []
    for starve in (False, True):
        now, link, listener, clock = rig(120.0)
        clock.start_transport()
        run(now, clock, 0.5)
        caplog.clear()
        with caplog.at_level("INFO", logger="bridge.link_clock"):
            if starve:
                now.t += 0.3  # the thread starves (a GIL held elsewhere): 300 ms without a look, 14.4 ticks late
            else:
                link.jump(1.5)  # the timeline moved: the next deadline lies 750 ms earlier; a look 0.25 ms ago
            run(now, clock, 0.01)
        said += [r.getMessage() for r in caplog.records if "relocating" in r.getMessage()]
        assert clock.relocations == 1
    moved, starved = said
    # moved: the next deadline came 729 ms before the last tick's (a tick is 20.8 ms), the thread was on time
    assert "+36.0 ticks off" in moved and "deadline -729.2 ms after the last tick's; 0.2 ms since" in moved
    # starved: the deadlines are a tick apart as they should be, the thread looked 300 ms late
    assert "+14.4 ticks off" in starved and "deadline 20.8 ms after the last tick's; 300.3 ms since" in starved


def test_a_status_showing_a_joined_sessions_tempo_counts_the_joins_relocation() -> None:
    """Tempo and timeline of a joined session arrive together; the relocation they cause is counted
    before the new tempo is published, so a status reader never sees one without the other."""
    now, link, listener, clock = rig(100.0)
    clock.start_transport()
    run(now, clock, 0.5)
    seen = []
    listener.on_stop = lambda tick, t: seen.append((clock.bpm, clock.relocations))  # type: ignore[method-assign]
    us = link.now_us()
    link.segments.append((us, link.capture().beat_at(us) + 1.5, 180.0))  # the session joined: its tempo and phase
    run(now, clock, 0.5)
    assert seen == [(100.0, 1)] and clock.bpm == 180.0


def test_set_bpm_proposes_a_checked_tempo_to_the_session_and_stop_leaves_it() -> None:
    now, link, listener, clock = rig(120.0)
    clock.set_bpm(98.5)
    assert link.proposed == [98.5] and link.capture().tempo() == 98.5
    with pytest.raises(ValueError):
        clock.set_bpm(1000.0)
    clock.stop()
    assert link.closed


def test_link_peer_without_the_binding_names_the_extra(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_link(name, *args, **kwargs):
        if name == "link":
            raise ImportError("no module named link")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_link)
    with pytest.raises(LinkUnavailable, match=r"pip install -e '\.\[link\]'"):
        LinkPeer(120.0)


# ---- the session with Link as a clock source ------------------------------------------------------

class OneNoteEngine:
    styles: dict = {}

    def set_controls(self, controls) -> None:
        self.controls = controls

    def reset(self, seed=None) -> None:
        pass

    def step(self, piano_bar: np.ndarray, decode_piano: bool | None = None) -> np.ndarray:
        out = np.zeros((5, STEPS_PER_BAR, N_PITCHES), np.float32)
        out[1:, 0:4, 60] = 0.6  # every part plays one note on step 0 of the bar
        return out

    def predicted_piano(self) -> np.ndarray:
        return np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)


def session_rig(mode: str):
    now = FakeTime(100.0)
    link = FakeLink(now, 90.0)
    sent: list[tuple[float, mido.Message]] = []
    scheduler = NoteScheduler(lambda inst, msg: sent.append((now.t, msg)), DEFAULT_CHANNELS)
    session = LiveSession(OneNoteEngine(), scheduler, SessionOptions(bpm=120.0), clock=now,
                          start_threads=False, link=link, clock_mode=mode)
    session.set_control("harmony", 0)
    return now, link, session, sent


def test_auto_takes_link_once_a_peer_is_there_and_status_shows_it() -> None:
    now, link, session, _ = session_rig("auto")
    session.start()
    session.internal.service(now.t)
    run(now, session.link, 0.3)
    assert session.status()["clock_source"] == "internal" and session.status()["link_peers"] == 0
    link.n_peers = 1
    run(now, session.link, 0.3)
    status = session.status()
    assert (status["clock_source"], status["link_peers"], status["tempo"], status["running"]) == ("link", 1, 90.0, 1)
    assert not session.internal.running  # the internal transport was stopped


def test_link_mode_plays_band_downbeats_on_link_downbeats_and_releases_on_stop() -> None:
    now, link, session, sent = session_rig("link")
    session.start()
    link.n_peers = 1

    def pianist(t: float) -> None:  # a key down and up in each of the first bars (quantised into the bar)
        if not session.status()["running"]:
            return
        if int(t * 1000) % 1000 == 100:
            session.note_on(64, 90, t)
        elif int(t * 1000) % 1000 == 300:
            session.note_off(64, t)

    def play(t: float) -> None:
        pianist(t)
        session.worker.drain()

    run(now, session.link, 0.4, act=lambda t: link.set_playing(True) if not link.is_playing else None)
    run(now, session.link, 8.0, act=play)
    ons = [(t, m) for t, m in sent if m.type == "note_on" and m.velocity > 0]
    assert ons, "the band played nothing"
    state = link.capture()
    for t, _ in ons:  # every band note here is on step 0 of a bar: a Link bar downbeat
        phase = state.beat_at(t * 1e6) % QUANTUM
        assert min(phase, QUANTUM - phase) * 60 / 90.0 < 0.3 * MS
    session.set_control("tempo", 100.0)
    assert link.proposed == [100.0]
    session.set_control("latency_ms", 12.5)
    assert session.link.latency_s == pytest.approx(0.0125) and session.status()["latency_ms"] == 12.5
    run(now, session.link, 0.5, act=lambda t: link.set_playing(False) if link.is_playing else None)
    assert session.status()["running"] == 0
    sounding: dict[tuple[int, int], int] = {}
    for _, m in sent:
        if m.type in ("note_on", "note_off"):
            key = (m.channel, m.note)
            sounding[key] = sounding.get(key, 0) + (1 if m.type == "note_on" and m.velocity else -1)
    assert all(n <= 0 for n in sounding.values()), "a note hangs after the peer stopped"


def test_internal_clock_latency_sends_early() -> None:
    now = FakeTime(100.0)
    session = LiveSession(OneNoteEngine(), NoteScheduler(lambda *a: None, DEFAULT_CHANNELS), SessionOptions(bpm=120.0),
                          clock=now, start_threads=False, clock_mode="internal")
    session.set_control("latency_ms", 30.0)
    session.start()  # the grid starts now; each tick is sent 30 ms before the time it stands for
    tick_s = 60 / (24 * 120)
    for tick in (0, 1, 2):
        now.t = 100.0 + tick * tick_s - 0.0001
        session.internal.service(session.internal._now())  # what the thread does, at real time now.t
        assert session.status()["tick"] == max(tick - 1, 0)
        now.t += 0.0001
        session.internal.service(session.internal._now())
        assert session.status()["tick"] == tick
        assert session._last_t == pytest.approx(now.t + 0.030)  # t = the beat time, 30 ms after sending


def test_bad_clock_mode_and_link_mode_without_link_are_refused() -> None:
    with pytest.raises(ValueError, match="clock_mode"):
        LiveSession(OneNoteEngine(), NoteScheduler(lambda *a: None, DEFAULT_CHANNELS), start_threads=False,
                    clock_mode="ptp")
    with pytest.raises(ValueError, match="Link"):
        LiveSession(OneNoteEngine(), NoteScheduler(lambda *a: None, DEFAULT_CHANNELS), start_threads=False,
                    clock_mode="link")
