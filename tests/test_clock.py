"""MidiClockFollower and InternalClock: fake listener, fake time; two short real-time jitter tests."""
from __future__ import annotations

import random
import threading
import time

import mido
import pytest
from hypothesis import given, settings, strategies as st

from bridge.clock import (
    TICKS_PER_BAR, InternalClock, MidiClockFollower, TempoEstimator, check_bpm,
)


class Recorder:
    """A ClockListener that records every call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float]] = []

    def on_start(self, tick: int, t: float) -> None:
        self.events.append(("start", tick, t))

    def on_tick(self, tick: int, t: float) -> None:
        self.events.append(("tick", tick, t))

    def on_stop(self, tick: int, t: float) -> None:
        self.events.append(("stop", tick, t))

    def ticks(self) -> list[int]:
        return [tick for kind, tick, _ in self.events if kind == "tick"]

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


def msg(kind: str, **kw: int) -> mido.Message:
    return mido.Message(kind, **kw)


def interval(bpm: float) -> float:
    return 60.0 / (24 * bpm)


def feed_clocks(follower: MidiClockFollower, n: int, t: float, bpm: float, jitter: float = 0.0,
                rng: random.Random | None = None) -> float:
    """n clocks at bpm from t; returns the time of the next clock."""
    for _ in range(n):
        noise = rng.uniform(-jitter, jitter) if rng else 0.0
        follower.feed(msg("clock"), t + noise)
        t += interval(bpm)
    return t


# --- MidiClockFollower: transport -------------------------------------------------------------

def test_start_then_clock_starts_at_tick_zero_with_the_first_clock() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 1.0)
    assert rec.events == [] and not f.running  # on_start comes with the downbeat clock
    feed_clocks(f, 3, 1.01, 120)
    assert rec.events[0] == ("start", 0, 1.01)
    assert rec.ticks() == [0, 1, 2]
    assert f.running and f.tick == 2


def test_clock_without_start_gives_tempo_but_no_ticks() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    feed_clocks(f, 30, 0.0, 100)
    assert rec.events == [] and not f.running and f.tick is None
    assert f.bpm == pytest.approx(100, rel=1e-6)


def test_start_without_clock_sends_nothing_and_times_out_quietly() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    f.check_timeout(5.0)
    f.feed(msg("stop"), 6.0)
    assert rec.events == [] and not f.running and f.bpm is None


def test_stop_then_continue_resumes_at_the_next_tick() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    t = feed_clocks(f, 10, 0.0, 120)
    f.feed(msg("stop"), t)
    f.feed(msg("continue"), t + 1)
    feed_clocks(f, 2, t + 1.01, 120)
    assert rec.kinds() == ["start"] + ["tick"] * 10 + ["stop", "start", "tick", "tick"]
    assert rec.events[11][:2] == ("stop", 9)
    assert rec.events[12][:2] == ("start", 10)
    assert rec.ticks()[-2:] == [10, 11]


def test_song_position_then_continue_starts_at_sixteenths_times_six() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("songpos", pos=16), 0.0)  # bar 1 = 16 sixteenths
    f.feed(msg("continue"), 0.0)
    feed_clocks(f, 2, 0.01, 120)
    assert rec.events[0][:2] == ("start", TICKS_PER_BAR)
    assert rec.ticks() == [96, 97]


def test_start_ignores_an_earlier_song_position() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("songpos", pos=40), 0.0)
    f.feed(msg("start"), 0.0)
    feed_clocks(f, 1, 0.01, 120)
    assert rec.ticks() == [0]


def test_song_position_while_running_is_a_relocation() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    t = feed_clocks(f, 5, 0.0, 120)
    f.feed(msg("songpos", pos=32), t)
    feed_clocks(f, 2, t, 120)
    assert rec.kinds() == ["start"] + ["tick"] * 5 + ["stop", "start", "tick", "tick"]
    assert rec.ticks() == [0, 1, 2, 3, 4, 192, 193]


def test_start_while_running_restarts_from_zero() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    t = feed_clocks(f, 50, 0.0, 120)
    f.feed(msg("start"), t)
    feed_clocks(f, 1, t, 120)
    assert rec.kinds()[-3:] == ["stop", "start", "tick"]
    assert rec.ticks()[-1] == 0


def test_clock_stopping_mid_bar_times_out_to_stop_and_waits_for_continue() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec, timeout=0.5)
    f.feed(msg("start"), 0.0)
    t = feed_clocks(f, 40, 0.0, 120)
    last = t - interval(120)
    f.check_timeout(last + 0.4)
    assert f.running
    f.check_timeout(last + 0.6)
    assert not f.running and rec.events[-1][:2] == ("stop", 39)
    feed_clocks(f, 3, last + 1.0, 120)  # clock comes back without Continue: position unknown
    assert rec.ticks()[-1] == 39
    f.feed(msg("continue"), last + 2.0)
    feed_clocks(f, 1, last + 2.0, 120)
    assert rec.ticks()[-1] == 40


def test_continue_while_running_changes_nothing_and_stray_messages_are_ignored() -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    t = feed_clocks(f, 3, 0.0, 120)
    for stray in (msg("continue"), msg("note_on", note=60), msg("sysex", data=[1, 2]), msg("reset")):
        f.feed(stray, t)
    feed_clocks(f, 1, t, 120)
    assert rec.ticks() == [0, 1, 2, 3]


def test_a_failing_listener_is_logged_and_the_follower_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def on_tick(self, tick: int, t: float) -> None:
            super().on_tick(tick, t)
            raise RuntimeError("listener bug")

    rec = Broken()
    f = MidiClockFollower(rec)
    f.feed(msg("start"), 0.0)
    feed_clocks(f, 100, 0.0, 120)
    assert rec.ticks() == list(range(100))
    errors = [r for r in caplog.records if "listener on_tick failed" in r.getMessage()]
    assert len(errors) == 1  # rate-limited: one line, not a hundred


# --- tempo estimate ---------------------------------------------------------------------------

@pytest.mark.parametrize("bpm", [40.0, 120.0, 200.0, 300.0])
def test_tempo_estimate_is_exact_on_a_steady_clock(bpm: float) -> None:
    f = MidiClockFollower(Recorder())
    feed_clocks(f, 30, 10.0, bpm)
    assert f.bpm == pytest.approx(bpm, rel=1e-9)


def test_tempo_estimate_averages_out_jack_period_jitter() -> None:
    # Arrivals quantised to a 5.33 ms JACK period (256 frames at 48 kHz).
    period = 256 / 48000
    est = TempoEstimator()
    for k in range(200):
        t = k * interval(120)
        est.add((t // period + 1) * period)
    assert est.bpm == pytest.approx(120, rel=0.02)


@pytest.mark.parametrize("bpm", [90.0, 120.0, 200.0, 300.0])
def test_tempo_estimate_stays_close_with_periods_longer_than_a_clock(bpm: float) -> None:
    # jackd's default 1024 frames at 48 kHz: MIDI arrives every 21.3 ms, in bursts, at any tempo.
    period = 1024 / 48000
    est = TempoEstimator()
    worst = 0.0
    for k in range(600):
        est.add(((k * interval(bpm)) // period + 1) * period)
        if k >= 48:
            assert est.bpm is not None
            worst = max(worst, abs(est.bpm - bpm) / bpm)
    assert worst < 0.05  # without the jitter-aware jump test this reached 27 %


def test_tempo_jump_is_followed_within_one_beat_with_long_periods() -> None:
    period = 1024 / 48000
    est = TempoEstimator()
    t = 0.0
    for k in range(96 + 24):
        t += interval(120 if k < 96 else 150)
        est.add((t // period + 1) * period)
    assert est.bpm == pytest.approx(150, rel=0.05)


@pytest.mark.parametrize("before, after", [(120.0, 150.0), (150.0, 100.0), (90.0, 200.0), (200.0, 180.0)])
def test_tempo_jump_is_followed_within_one_beat(before: float, after: float) -> None:
    rng = random.Random(1)
    f = MidiClockFollower(Recorder())
    t = feed_clocks(f, 96, 0.0, before, jitter=0.0003, rng=rng)
    feed_clocks(f, 24, t, after, jitter=0.0003, rng=rng)
    assert f.bpm == pytest.approx(after, rel=0.02)


def test_tempo_window_restarts_after_a_pause() -> None:
    f = MidiClockFollower(Recorder())
    t = feed_clocks(f, 30, 0.0, 120)
    feed_clocks(f, 3, t + 2.0, 60)
    assert f.bpm == pytest.approx(60, rel=1e-9)


def arrivals(bpm: float, n: int, period: float = 0.0, stalls: tuple[tuple[float, float], ...] = (),
             delays: dict[int, float] | None = None) -> list[float]:
    """Arrival times of n clocks sent at bpm: held to the end of a JACK period (a period's worth at
    once), to the end of a (start, length) stall, and late by delays[k]; in order, as MIDI is."""
    times, last = [], 0.0
    for k in range(n):
        sent = k * interval(bpm)
        t = (sent // period + 1) * period if period else sent
        for start, length in stalls:
            if start <= sent < start + length:
                t = max(t, start + length)
        last = max(last, t + (delays or {}).get(k, 0.0))
        times.append(last)
    return times


def worst_error(times: list[float], bpm: float, skip: int = 48) -> float:
    est, worst = TempoEstimator(), 0.0
    for k, t in enumerate(times):
        est.add(t)
        if k >= skip:
            assert est.bpm is not None
            worst = max(worst, abs(est.bpm - bpm) / bpm)
    return worst


@pytest.mark.parametrize("bpm", [90.0, 180.0, 300.0])
def test_tempo_estimate_ignores_bursts_after_stalls(bpm: float) -> None:
    # Every 100 clocks the process stalls 120 ms, then the clocks sent meanwhile arrive at once;
    # the least-squares fit read 180 BPM as 646 BPM here.
    stalls = tuple((k * 100 * interval(bpm), 0.12) for k in range(1, 6))
    assert worst_error(arrivals(bpm, 600, 256 / 48000, stalls), bpm) < 0.05
    assert worst_error(arrivals(bpm, 600, 1024 / 48000, stalls), bpm) < 0.05


@pytest.mark.parametrize("bpm", [120.0, 180.0, 400.0])
def test_tempo_estimate_ignores_clocks_queued_behind_a_note_flood(bpm: float) -> None:
    rng = random.Random(7)
    delays = {k: rng.uniform(0.0, 0.03) for k in range(600) if rng.random() < 0.1}
    assert worst_error(arrivals(bpm, 600, 0.0, delays=delays), bpm) < 0.03


@pytest.mark.parametrize("bpm", [20.0, 400.0])
def test_tempo_estimate_at_the_range_ends_stays_in_range(bpm: float) -> None:
    rng = random.Random(3)
    est = TempoEstimator()
    for t in arrivals(bpm, 300, 256 / 48000 if bpm > 100 else 0.0):
        est.add(t + rng.uniform(-0.0002, 0.0002) * (bpm < 100))
        assert est.bpm is None or check_bpm(est.bpm) == est.bpm  # never outside 20-400
    assert est.bpm == pytest.approx(bpm, rel=0.01)


def test_tempo_estimate_never_leaves_the_range_on_wild_input() -> None:
    est = TempoEstimator()
    for k in range(200):
        est.add(k * 0.0001)  # 10 000 clocks a second
        assert est.bpm is None or 399.9 < est.bpm <= 400.0
    est = TempoEstimator(gap_s=10.0)
    for k in range(60):
        est.add(k * 2.0)  # one clock every 2 s
    assert est.bpm is not None and 20.0 <= est.bpm < 20.1


# --- InternalClock with a fake clock ----------------------------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_internal_clock_ticks_on_absolute_deadlines() -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=120, now=clock_time, sleep=clock_time.sleep)
    clock.start_transport()
    clock_time.now += 0.5 + 1e-9  # half a second later: ticks 0..24 are due (0.5 s / 20.83 ms = 24)
    assert clock.service(clock_time.now) == pytest.approx(interval(120) - 1e-9)
    assert rec.events[0] == ("start", 0, 100.0)
    assert rec.ticks() == list(range(25))
    ts = [t for kind, _, t in rec.events if kind == "tick"]
    assert ts == pytest.approx([100.0 + k * interval(120) for k in range(25)])


def test_internal_clock_tempo_change_reanchors_without_a_jump() -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=120, now=clock_time, sleep=clock_time.sleep)
    clock.start_transport(tick=96)
    clock_time.now += interval(120) * 10 + 1e-9
    clock.service(clock_time.now)  # ticks 96..106
    clock.set_bpm(60)
    clock_time.now += interval(60) * 2 + 1e-9
    clock.service(clock_time.now)
    ts = [t for kind, _, t in rec.events if kind == "tick"]
    assert rec.ticks() == list(range(96, 109))
    assert ts[-1] - ts[-2] == pytest.approx(interval(60))
    assert ts[-2] - ts[-3] == pytest.approx(interval(60))
    assert ts[-3] - ts[-4] == pytest.approx(interval(120))


def test_internal_clock_set_bpm_before_the_first_tick_keeps_the_anchor() -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=120, now=clock_time, sleep=clock_time.sleep)
    clock.start_transport()
    clock.set_bpm(240)
    clock.service(clock_time.now + interval(240) + 1e-9)
    assert [t for k, _, t in rec.events if k == "tick"] == pytest.approx([100.0, 100.0 + interval(240)])


def test_internal_clock_catches_up_late_ticks_in_order() -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=300, now=clock_time, sleep=clock_time.sleep)
    clock.start_transport()
    clock.service(clock_time.now)
    clock_time.now += 1.0  # the thread was starved for a second
    clock.service(clock_time.now)
    assert rec.ticks() == list(range(121))


def test_internal_clock_stop_and_restart_transport() -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=120, now=clock_time, sleep=clock_time.sleep)
    clock.start_transport()
    clock.service(clock_time.now + 0.1)
    clock.stop_transport()
    assert clock.service(clock_time.now + 10) is None
    clock.start_transport(tick=5)
    clock.service(clock_time.now)
    assert rec.kinds() == ["start"] + ["tick"] * 5 + ["stop", "start", "tick"]
    assert rec.events[6][:2] == ("stop", 4)
    assert rec.ticks()[-1] == 5


def test_internal_clock_rejects_bad_arguments() -> None:
    clock = InternalClock(Recorder())
    with pytest.raises(TypeError):
        clock.set_bpm("fast")  # type: ignore[arg-type]
    for bad in (float("nan"), float("inf"), 0.0, 19.9, 400.1):
        with pytest.raises(ValueError):
            clock.set_bpm(bad)
    with pytest.raises(ValueError):
        clock.start_transport(-1)
    with pytest.raises(TypeError):
        clock.start_transport(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        InternalClock(Recorder(), bpm=1000)
    assert check_bpm(120) == 120.0


def test_internal_clock_thread_with_fake_time_survives_listener_errors() -> None:
    clock_time = FakeTime()
    done = threading.Event()

    class Flaky(Recorder):
        def on_tick(self, tick: int, t: float) -> None:
            super().on_tick(tick, t)
            if tick == 500:
                done.set()
            if tick % 7 == 0:
                raise ValueError("bug")

    rec = Flaky()
    clock = InternalClock(rec, bpm=200, now=clock_time, sleep=clock_time.sleep)
    clock.start()
    clock.start_transport()
    assert done.wait(10)
    clock.stop()
    assert not clock.is_alive()
    ticks = rec.ticks()
    assert ticks == list(range(len(ticks))) and len(ticks) > 500
    assert rec.kinds()[-1] == "stop"  # stopping the thread stops the transport first
    clock.stop()  # twice is fine


# --- InternalClock in real time ---------------------------------------------------------------

def _real_time_errors(bpm: float, n: int, realtime: bool = True) -> list[float]:
    stamps: list[float] = []
    done = threading.Event()

    class Stamp(Recorder):
        def on_tick(self, tick: int, t: float) -> None:
            stamps.append(time.perf_counter() - t)  # lateness against the tick's own deadline
            if len(stamps) >= n:
                done.set()

    clock = InternalClock(Stamp(), bpm=bpm, realtime=realtime)
    clock.start()
    clock.start_transport()
    try:
        assert done.wait(n * interval(bpm) + 5)
    finally:
        clock.stop()
    assert clock.priority in (("SCHED_FIFO", "nice -10", "normal") if realtime else ("normal",))
    return stamps


def test_internal_clock_real_time_jitter_at_300_bpm() -> None:
    # The clock's precision, not the machine's load, is under test: on a shared CI box a burst of
    # other work can delay any thread, so the best of three runs counts.
    p99s = []
    for _ in range(3):
        errors = sorted(_real_time_errors(300, 200))
        assert errors[0] >= 0  # never early
        p99s.append(errors[int(0.99 * len(errors))])
        if p99s[-1] < 0.003:
            break
    assert min(p99s) < 0.003, f"p99 lateness {[round(p * 1000, 2) for p in p99s]} ms"


def test_internal_clock_does_not_drift_in_real_time() -> None:
    start = time.perf_counter()
    stamps: list[float] = []
    done = threading.Event()

    class Stamp(Recorder):
        def on_tick(self, tick: int, t: float) -> None:
            stamps.append(t)
            if tick == 96:
                done.set()

    clock = InternalClock(Stamp(), bpm=400)
    clock.start()
    clock.start_transport()
    assert done.wait(5)
    wall = time.perf_counter() - start
    clock.stop()
    # Deadlines are exact multiples of the period from the first, whatever the sleep error.
    assert stamps[96] - stamps[0] == pytest.approx(96 * interval(400), abs=1e-9)
    assert wall < 96 * interval(400) + 0.1


# --- properties over random message streams ---------------------------------------------------

def check_run_structure(events: list[tuple[str, int, float]]) -> None:
    """start, then contiguous ticks from its tick, then stop; never a tick outside a run."""
    running, expected = False, 0
    for kind, tick, _ in events:
        if kind == "start":
            assert not running
            running, expected = True, tick
        elif kind == "tick":
            assert running and tick == expected
            expected += 1
        else:
            assert running
            running = False


transport = st.sampled_from(["clock"] * 6 + ["start", "stop", "continue", "songpos", "note_on", "timeout"])


@settings(max_examples=150, deadline=None)
@given(stream=st.lists(st.tuples(transport, st.integers(0, 16383), st.floats(0.0, 0.8)), max_size=80))
def test_any_midi_stream_keeps_runs_well_formed(stream: list[tuple[str, int, float]]) -> None:
    rec = Recorder()
    f = MidiClockFollower(rec)
    t = 0.0
    for kind, value, gap in stream:
        t += gap
        if kind == "timeout":
            f.check_timeout(t)
        elif kind == "songpos":
            f.feed(msg("songpos", pos=value), t)
        elif kind == "note_on":
            f.feed(msg("note_on", note=value % 128), t)
        else:
            f.feed(msg(kind), t)
        assert f.running == (bool(rec.events) and rec.events[-1][0] != "stop")
    check_run_structure(rec.events)
    assert f.bpm is None or f.bpm > 0


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["start", "stop", "bpm", "wait"]), st.floats(0.0, 1.0)), max_size=40))
def test_any_internal_clock_use_keeps_runs_well_formed(ops: list[tuple[str, float]]) -> None:
    clock_time = FakeTime()
    rec = Recorder()
    clock = InternalClock(rec, bpm=120, now=clock_time, sleep=clock_time.sleep)
    for op, x in ops:
        if op == "start":
            clock.start_transport(int(x * 200))
        elif op == "stop":
            clock.stop_transport()
        elif op == "bpm":
            clock.set_bpm(20 + x * 380)
        else:
            clock_time.now += x
        clock.service(clock_time.now)
    check_run_structure(rec.events)
    ts = [t for kind, _, t in rec.events if kind == "tick"]
    assert all(t <= clock_time.now for t in ts)  # no tick before its deadline


def test_a_raised_thread_runs_below_the_clocks_and_its_children_start_normal() -> None:
    """The daemon's helper threads (inference worker, OSC server) run real-time below the clocks, and
    what they start (threads, processes) begins at normal priority instead of inheriting it."""
    import os
    import subprocess
    import sys

    from bridge.clock import HELPER_PRIORITY, REALTIME_PRIORITY, _raise_thread_priority

    got: dict[str, object] = {}

    def helper() -> None:
        got["priority"] = _raise_thread_priority(HELPER_PRIORITY)
        got["policy"] = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        got["level"] = os.sched_getparam(0).sched_priority
        child = threading.Thread(target=lambda: got.update(thread=os.sched_getscheduler(0)))
        child.start()
        child.join()
        got["process"] = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    if got["priority"] != "SCHED_FIFO":
        pytest.skip(f"no real-time priority for this user here (got {got['priority']})")
    assert got["policy"] == os.SCHED_FIFO and got["level"] == HELPER_PRIORITY < REALTIME_PRIORITY
    assert got["thread"] == os.SCHED_OTHER and got["process"] == str(os.SCHED_OTHER)
