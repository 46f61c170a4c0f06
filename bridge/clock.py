"""Time for the live band: follow the DAW's MIDI clock, or run our own.

Both clocks drive a `ClockListener` with absolute tick positions (24 per quarter note, so one step
of a bar is 3 ticks and one bar is 96). The listener sees, per run of the transport:
`on_start(tick, t)`, then `on_tick` for every tick in order with none skipped, then `on_stop`.

MidiClockFollower choices (the MIDI spec leaves them open):
- `on_start` is sent together with the first clock after Start/Continue (just before its
  `on_tick`, with that clock's arrival time), not on the Start byte itself: the downbeat is the
  clock, and a Start that no clock follows produces nothing at all.
- Clock without Start/Continue is used for the tempo estimate only; no ticks are sent, because the
  song position is unknown and a band on a guessed grid is worse than silence. The DAW's next
  Start or Continue brings the band in.
- No clock for `timeout` seconds (0.5 s) while running counts as the clock source vanishing:
  `check_timeout` sends `on_stop`, and the follower waits for Start/Continue again.
- A Song Position Pointer while running (a loop or locate) is a relocation: `on_stop` at the old
  position, then `on_start` at the new one with the next clock, so ticks within a run never jump.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from typing import Callable, Protocol

import mido

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 24  # MIDI clock resolution
TICKS_PER_STEP = 3  # 8 steps per beat
TICKS_PER_BAR = 96  # 4/4
TICKS_PER_SPP_UNIT = 6  # a Song Position Pointer counts 16th notes
MIN_BPM = 20.0
MAX_BPM = 400.0
DEFAULT_TIMEOUT_S = 0.5
JITTER_DECAY = 0.995  # per clock: the jitter estimate halves in ~6 beats of steady clock

Clock = Callable[[], float]


class ClockListener(Protocol):
    def on_start(self, tick: int, t: float) -> None: ...
    def on_tick(self, tick: int, t: float) -> None: ...
    def on_stop(self, tick: int, t: float) -> None: ...


class CountedLog:
    """Counts events by kind and logs the first of each kind, then at most one line per interval.

    A bad value arriving 100 times a second must not flood the log, but must not vanish either.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, now: Clock = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval_s
        self._now = now
        self._lock = threading.Lock()  # guards counts and _last_logged
        self.counts: dict[str, int] = {}  # kind -> events so far
        self._last_logged: dict[str, tuple[float, int]] = {}  # kind -> (when, count then)

    def event(self, kind: str, message: str, level: int = logging.WARNING, exc_info: bool = False) -> None:
        with self._lock:
            count = self.counts.get(kind, 0) + 1
            self.counts[kind] = count
            when, logged_count = self._last_logged.get(kind, (-math.inf, 0))
            now = self._now()
            if now - when < self._interval:
                return
            self._last_logged[kind] = (now, count)
        suffix = f" ({count - logged_count - 1} more since the last report)" if count - logged_count > 1 else ""
        self._logger.log(level, "%s%s", message, suffix, exc_info=exc_info)


def check_bpm(bpm: object) -> float:
    """A tempo as float; TypeError for a non-number, ValueError outside MIN_BPM-MAX_BPM or not finite."""
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float)):
        raise TypeError(f"bpm must be a number, got {type(bpm).__name__}")
    if not (math.isfinite(bpm) and MIN_BPM <= bpm <= MAX_BPM):
        raise ValueError(f"bpm={bpm} is outside {MIN_BPM:g}-{MAX_BPM:g}")
    return float(bpm)


class TempoEstimator:
    """Tempo from clock arrival times: the lower envelope of the last `window` clocks, clamped.

    A clock can arrive late (JACK hands MIDI over once per period, 21 ms at 1024 frames; a stalled
    process gets a burst of clocks at once; a flood of notes queues clocks behind it) but never
    early, and clocks arrive in order. So the tempo is the slope of the lower convex hull of
    (clock number, arrival time) where it passes the window's middle: the line of the clocks that
    came with the least delay, which late ones cannot pull. (A least-squares fit let a burst after a
    stall read a steady 180 BPM as 646 BPM.) The window is two beats, and a tempo jump is followed
    within one: when the newest `recent // 2` clocks leave the envelope of the ones before them
    (the newest one early, or every one of them late, as a burst after a stall never is: its last
    clock comes on time) by over `jump` of `recent` clocks and by over twice the arrival jitter
    seen, the window restarts from them. The estimate is clamped to MIN_BPM-MAX_BPM: an exact
    400 BPM clock read 400.2 through jitter, which check_bpm then refused.
    """

    def __init__(self, window: int = 48, recent: int = 24, jump: float = 0.03,
                 gap_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._times: deque[float] = deque(maxlen=window + 1)  # arrival times; owner's lock
        self._recent = recent
        self._jump = jump
        self._gap = gap_s
        self._jitter = 0.0  # decaying max of one-clock prediction errors, seconds; owner's lock
        self.interval: float | None = None  # seconds per clock, latest estimate (within the clamp)

    def add(self, t: float) -> None:
        if self._times and not 0.0 <= t - self._times[-1] <= self._gap:
            self._times.clear()  # a pause or a clock going backwards: old intervals say nothing
        self._track_jitter(t)
        self._times.append(t)
        times = list(self._times)
        fit, _ = _envelope(times)
        if len(times) > self._recent and fit > 0 and self._jumped(times, fit):
            # Keep the newest half only: they are the ones most surely at the new tempo.
            times = times[-1 - self._recent // 2:]
            self._times.clear()
            self._times.extend(times)
            fit, _ = _envelope(times)
        if fit > 0:
            self.interval = min(max(fit, _interval_of(MAX_BPM)), _interval_of(MIN_BPM))

    def _jumped(self, times: list[float], fit: float) -> bool:
        """The newest clocks left the line of the ones before them: the newest came early (no delay
        explains that: faster), or each of them came late (a burst after a stall ends on time: slower)."""
        limit = max(self._jump * fit * self._recent, 2 * self._jitter)
        newest = len(times) - self._recent // 2
        _, line = _envelope(times[:newest])
        early = line(len(times) - 1) - times[-1]
        late = min(times[i] - line(i) for i in range(newest, len(times)))
        return early > limit or late > limit

    def _track_jitter(self, t: float) -> None:
        if self._times and self.interval is not None:
            # A real jump adds one interval's change per clock here, while it adds up over `recent`
            # clocks in the jump test: so jumps still show, and period-sized misses do not.
            miss = abs(t - self._times[-1] - self.interval)
            self._jitter = max(miss, self._jitter * JITTER_DECAY)

    @property
    def bpm(self) -> float | None:
        if self.interval is None:
            return None
        return min(max(60.0 / (TICKS_PER_BEAT * self.interval), MIN_BPM), MAX_BPM)  # float rounding too


def _interval_of(bpm: float) -> float:
    return 60.0 / (TICKS_PER_BEAT * bpm)


def _envelope(times: list[float]) -> tuple[float, Callable[[int], float]]:
    """Seconds per clock and the line (clock number -> time) of the lower convex hull of
    (i, times[i]) where it passes the middle i: of the lines below every arrival, the one closest to
    them on average (the least-delay line). (0.0, a flat line) for fewer than two clocks."""
    hull: list[tuple[int, float]] = []
    for i, t in enumerate(times):
        while len(hull) >= 2 and _on_or_above(hull[-2], hull[-1], (i, t)):
            hull.pop()
        hull.append((i, t))
    middle = (len(times) - 1) / 2
    for (i0, t0), (i1, t1) in zip(hull, hull[1:]):
        if i0 <= middle <= i1:
            slope = (t1 - t0) / (i1 - i0)
            return slope, lambda i: t0 + slope * (i - i0)
    return 0.0, lambda i: times[0] if times else 0.0


def _on_or_above(a: tuple[int, float], b: tuple[int, float], c: tuple[int, float]) -> bool:
    """Point b lies on or above the line from a to c (a, b, c in clock order)."""
    return (b[1] - a[1]) * (c[0] - a[0]) >= (c[1] - a[1]) * (b[0] - a[0])


class MidiClockFollower:
    """Follows an external MIDI clock; feed it every message from the clock's port with its arrival time.

    feed() runs on the MIDI callback thread and check_timeout() on another, so both take one lock
    and deliver listener calls in order under it. The public attributes are plain values, readable
    from any thread (and from inside listener calls) without the lock. Because listener calls run
    under the lock, do not call feed()/check_timeout() while holding a lock the listener takes.
    """

    source = "midi"

    def __init__(self, listener: ClockListener, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout={timeout!r} must be a positive number of seconds")
        self._listener = listener
        self._timeout = timeout
        self._lock = threading.RLock()  # guards the transport state below and listener-call order
        self._tempo = TempoEstimator(gap_s=timeout)  # guarded by _lock
        self._armed = False  # Start/Continue seen, no Stop since; guarded by _lock
        self._next_tick = 0  # position of the next clock once armed; guarded by _lock
        self._last_clock_t: float | None = None  # arrival of the last emitted tick (or of arming); _lock
        self._errors = CountedLog(log)
        self.running = False  # ticks are being delivered (on_start sent, on_stop not yet)
        self.tick: int | None = None  # last tick delivered to on_tick
        self.bpm: float | None = None  # latest tempo estimate, also from clocks while stopped

    def feed(self, msg: mido.Message, t: float) -> None:
        handler = self._HANDLERS.get(msg.type)
        if handler is not None:
            with self._lock:
                handler(self, msg, t)

    def check_timeout(self, t: float) -> None:
        with self._lock:
            if self.running and self._last_clock_t is not None and t - self._last_clock_t > self._timeout:
                self._errors.event("timeout", f"MIDI clock stopped arriving at tick {self.tick}: stopping")
                self._stop(t)
                self._armed = False

    def _on_clock(self, msg: mido.Message, t: float) -> None:
        self._tempo.add(t)
        self.bpm = self._tempo.bpm
        if not self._armed:
            return  # clock without Start: tempo only (see module doc)
        tick = self._next_tick
        self._next_tick += 1
        self._last_clock_t = t
        if not self.running:
            self.running = True
            self._call("on_start", tick, t)
        self.tick = tick
        self._call("on_tick", tick, t)

    def _on_start(self, msg: mido.Message, t: float) -> None:
        self._stop(t)
        self._arm(0, t)

    def _on_continue(self, msg: mido.Message, t: float) -> None:
        if not self.running:  # a Continue while running changes nothing
            self._arm(self._next_tick, t)

    def _on_stop(self, msg: mido.Message, t: float) -> None:
        self._stop(t)
        self._armed = False

    def _on_songpos(self, msg: mido.Message, t: float) -> None:
        position = msg.pos * TICKS_PER_SPP_UNIT
        if self.running:  # a locate while playing: end this run, the next clock starts one there
            self._stop(t)
        self._next_tick = position

    def _arm(self, tick: int, t: float) -> None:
        self._armed = True
        self._next_tick = tick
        self._last_clock_t = t

    def _stop(self, t: float) -> None:
        if self.running:
            self.running = False
            self._call("on_stop", self.tick if self.tick is not None else self._next_tick, t)

    def _call(self, name: str, tick: int, t: float) -> None:
        # The listener runs on the MIDI thread: its bugs are logged, never raised into rtmidi.
        try:
            getattr(self._listener, name)(tick, t)
        except Exception as err:  # noqa: BLE001 - any listener error must not stop the clock
            self._errors.event(f"listener:{name}", f"clock listener {name} failed: {err!r}", logging.ERROR, True)

    _HANDLERS: dict[str, Callable[["MidiClockFollower", mido.Message, float], None]] = {
        "clock": _on_clock, "start": _on_start, "continue": _on_continue,
        "stop": _on_stop, "songpos": _on_songpos,
    }


class InternalClock(threading.Thread):
    """Our own clock: a thread ticking on absolute deadlines, tick k of a run at anchor + k * period.

    Deadlines come from the anchor, never from the previous wake-up, so sleep overshoot does not
    accumulate. A tempo change re-anchors at the last tick, so the position never jumps. A tick that
    is late (the thread was starved) is still delivered, at once: listeners may rely on every tick.
    Listener calls carry the tick's deadline as `t` (the time it should have happened).
    `now` and `sleep` are injectable so tests drive a fake clock; `service(now)` is one loop
    iteration, for tests that need no thread at all.
    """

    source = "internal"
    MAX_SLEEP_S = 0.01  # sleep in slices so stop() and tempo changes are seen within 10 ms

    def __init__(self, listener: ClockListener, bpm: float = 120.0, now: Clock = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, realtime: bool = False) -> None:
        super().__init__(name="vaejam-internal-clock", daemon=True)
        self._listener = listener
        self._realtime = realtime  # ask the OS for a real-time (or at least higher) priority in run()
        self.priority = "normal"  # what run() got: "normal", "SCHED_FIFO" or "nice -10"
        self._now = now
        self._sleep = sleep
        self._halt = threading.Event()  # set by stop(): the thread ends
        self._wake = threading.Event()  # set when the transport starts, to end an idle wait early
        self._lock = threading.Lock()  # guards the transport state below (not held during listener calls)
        self._period = self._period_of(check_bpm(bpm))  # seconds per tick; _lock
        self._pending: list[tuple[str, int, float]] = []  # start/stop events to deliver in order; _lock
        self._anchor_tick = 0  # the tick whose deadline is _anchor_t; _lock
        self._anchor_t = 0.0  # _lock
        self._next_tick = 0  # _lock
        self._errors = CountedLog(log)
        self.bpm = float(bpm)
        self.running = False  # transport running: ticks are due
        self.tick: int | None = None  # last tick delivered

    @staticmethod
    def _period_of(bpm: float) -> float:
        return 60.0 / (TICKS_PER_BEAT * bpm)

    def set_bpm(self, bpm: float) -> None:
        bpm = check_bpm(bpm)
        with self._lock:
            if self.running and self._next_tick > self._anchor_tick:
                # Re-anchor at the last tick sent, so the next one is one new period after it.
                last = self._next_tick - 1
                self._anchor_tick, self._anchor_t = last, self._deadline(last)
            self._period = self._period_of(bpm)
            self.bpm = bpm

    def start_transport(self, tick: int = 0) -> None:
        if isinstance(tick, bool) or not isinstance(tick, int):
            raise TypeError(f"tick must be an int, got {type(tick).__name__}")
        if tick < 0:
            raise ValueError(f"tick={tick} is negative")
        now = self._now()
        with self._lock:
            if self.running:
                self._pending.append(("on_stop", self._last_tick(), now))
            self._anchor_tick, self._anchor_t, self._next_tick = tick, now, tick
            self._pending.append(("on_start", tick, now))
            self.running = True
        self._wake.set()

    def stop_transport(self) -> None:
        with self._lock:
            if self.running:
                self.running = False
                self._pending.append(("on_stop", self._last_tick(), self._now()))
        self._wake.set()

    def stop(self, block: bool = True) -> None:
        """End the thread (sending on_stop if the transport runs); safe to call twice."""
        self._halt.set()
        self._wake.set()
        if block and self.is_alive() and threading.current_thread() is not self:
            self.join()

    def run(self) -> None:
        if self._realtime:
            self.priority = _raise_thread_priority()
            log.debug("internal clock thread priority: %s", self.priority)
        while not self._halt.is_set():
            delay = self.service(self._now())
            if delay is None:
                self._wake.wait(0.1)  # idle: nothing due until the transport starts
                self._wake.clear()
            elif delay > 0:
                self._sleep(min(delay, self.MAX_SLEEP_S))
        self.stop_transport()
        self._deliver_pending()

    def service(self, now: float) -> float | None:
        """Deliver pending start/stop events and every tick due by `now`; seconds until the next tick."""
        self._deliver_pending()
        while True:
            with self._lock:
                if not self.running or self._pending:
                    due = None
                else:
                    tick = self._next_tick
                    deadline = self._deadline(tick)
                    if deadline > now:
                        return deadline - now
                    self._next_tick += 1
                    due = (tick, deadline)
            if due is None:
                self._deliver_pending()
                with self._lock:
                    if not self.running:
                        return None
                continue
            self.tick = due[0]
            self._call("on_tick", *due)

    def _deliver_pending(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
        for name, tick, t in events:
            self._call(name, tick, t)

    def _deadline(self, tick: int) -> float:
        return self._anchor_t + (tick - self._anchor_tick) * self._period

    def _last_tick(self) -> int:
        return self._next_tick - 1 if self._next_tick > self._anchor_tick else self._anchor_tick

    def _call(self, name: str, tick: int, t: float) -> None:
        try:
            getattr(self._listener, name)(tick, t)
        except Exception as err:  # noqa: BLE001 - a listener bug must not kill the clock thread
            self._errors.event(f"listener:{name}", f"clock listener {name} failed: {err!r}", logging.ERROR, True)


REALTIME_PRIORITY = 10  # the clocks: low among real-time priorities, above every normal thread, below audio (70+)
# The daemon's threads that hold the GIL for milliseconds (inference worker, OSC server): real-time too,
# below the clocks. A clock thread needs the GIL to tick; when a normal-priority thread holding it is
# preempted by another process, the clock waits until that thread runs again (measured: beats 5-30 ms
# late under `stress -c 2`). Above every normal thread, such a holder is never preempted from outside,
# so the clock waits at most about one GIL switch interval (1 ms in the daemon).
HELPER_PRIORITY = 5


def _raise_thread_priority(priority: int = REALTIME_PRIORITY) -> str:
    """Best effort, for the calling thread: SCHED_FIFO at `priority`, else nice -`priority` (Linux),
    else nothing.

    On a loaded machine a normal thread can wake several ms late; the clock thread only sleeps and
    ticks, so a real-time priority costs others nothing. Without the right (CAP_SYS_NICE, rtprio
    limit) it quietly stays normal. SCHED_RESET_ON_FORK: threads and processes this one starts (a
    thread torch starts, a subprocess) begin at normal priority instead of inheriting it unasked.
    """
    if hasattr(os, "sched_setscheduler"):
        try:
            policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
            os.sched_setscheduler(0, policy, os.sched_param(priority))  # 0: this thread
            return "SCHED_FIFO"
        except OSError:
            pass
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -priority)  # a thread id on Linux
            return f"nice -{priority}"
        except OSError:
            pass
    return "normal"
