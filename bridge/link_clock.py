"""Ableton Link as a clock source: ticks on Link's shared timeline (tempo, beat phase, start/stop).

`LinkClock` drives a `ClockListener` (bridge.clock) like the MIDI clock follower and the internal clock:
`on_start(tick, t)`, every tick in order, `on_stop`. Tick k of a run is beat `origin + k / 24` of
the Link timeline, where `origin` is a bar downbeat (phase 0 with quantum 4), so vaejam's bar 0 (and
every bar after it) starts on a Link bar downbeat. Each tick is delivered on an absolute deadline,
the host time of its beat, recomputed from the timeline on every wake-up: a tempo change by any peer
moves the next deadlines at once (within MAX_SLEEP_S), and the position never jumps. The `t` a
listener gets is that deadline (perf_counter seconds); the tick itself is delivered `latency_s`
earlier (output latency compensation), so what the band sends is heard on the beat.

Transport (Link's start/stop sync is optional for every peer, and "not playing" looks the same as
"no peer uses start/stop sync"):
- Until some peer is seen playing, the clock runs freely from `start_transport()`, from the bar in
  progress (bar numbers count Link bars from the downbeat at or before that moment).
- Once the session is seen playing, it follows the session: a start begins a new run at tick 0 on
  the first Link bar downbeat at or after the start time; a stop ends the run (`on_stop`).
- vaejam never starts or stops the session's transport itself; `set_bpm` proposes a tempo to the
  session (every peer follows it, as Link intends).
- A jump of the timeline by more than RELOCATE_TICKS (joining a session snaps the phase; a thread
  starved that long) is a relocation: `on_stop`, then `on_start` at the new position, never a burst.

Link's host clock (micros) is CLOCK_MONOTONIC_RAW on Linux, not perf_counter's clock: `HostMap`
relates the two and is re-measured every second. Tests pass a fake `LinkSession` and fake time.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Callable, Protocol

from bridge.clock import TICKS_PER_BEAT, ClockListener, CountedLog, _raise_thread_priority, check_bpm

log = logging.getLogger(__name__)

QUANTUM = 4.0  # beats per Link bar: vaejam plays 4/4
BEATS_PER_TICK = 1.0 / TICKS_PER_BEAT
RELOCATE_TICKS = 12  # half a beat: a timeline jump larger than this relocates the run
START_EPS_BEATS = 1e-6  # a start this close after a downbeat starts on it
LINK_MISSING = ("Ableton Link needs the LinkPython-extern package: pip install -e '.[link]' "
                "(or pip install LinkPython-extern)")
Clock = Callable[[], float]


class LinkUnavailable(OSError):
    """The Link binding is not installed (or Link cannot start)."""


class LinkState(Protocol):
    """A snapshot of the session state (Link's SessionState with quantum 4)."""

    def tempo(self) -> float: ...
    def beat_at(self, time_us: float) -> float: ...
    def time_at(self, beat: float) -> float: ...  # host microseconds
    def playing(self) -> bool: ...
    def play_time(self) -> float: ...  # host microseconds of the last start/stop


class LinkSession(Protocol):
    """What LinkClock needs of a Link peer: `LinkPeer` wraps LinkPython-extern, tests pass a fake."""

    def now_us(self) -> float: ...
    def peers(self) -> int: ...
    def capture(self) -> LinkState: ...
    def propose_tempo(self, bpm: float) -> None: ...
    def close(self) -> None: ...


class _PeerState:
    def __init__(self, state) -> None:
        self._s = state

    def tempo(self) -> float:
        return self._s.tempo()

    def beat_at(self, time_us: float) -> float:
        return self._s.beatAtTime(int(time_us), QUANTUM)

    def time_at(self, beat: float) -> float:
        return self._s.timeAtBeat(beat, QUANTUM)

    def playing(self) -> bool:
        return self._s.isPlaying()

    def play_time(self) -> float:
        return self._s.timeForIsPlaying()


class LinkPeer:
    """A real Link peer (LinkPython-extern), enabled, start/stop sync on; close() leaves the session."""

    def __init__(self, bpm: float) -> None:
        try:
            import link
        except ImportError as err:
            raise LinkUnavailable(LINK_MISSING) from err
        self._link = link.Link(check_bpm(bpm))
        self._link.startStopSyncEnabled = True  # follow peers' start/stop (we never change it ourselves)
        self._link.enabled = True
        self._clock = self._link.clock()
        self._closed = False

    def now_us(self) -> float:
        return self._clock.micros()

    def peers(self) -> int:
        return self._link.numPeers()

    def capture(self) -> LinkState:
        return _PeerState(self._link.captureAppSessionState())

    def propose_tempo(self, bpm: float) -> None:
        state = self._link.captureAppSessionState()
        state.setTempo(check_bpm(bpm), self._clock.micros())
        self._link.commitAppSessionState(state)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._link.enabled = False  # says goodbye, so peers drop us at once


class HostMap:
    """perf_counter seconds <-> Link host microseconds: offset from the tightest of a few paired reads."""

    REFRESH_S = 1.0

    def __init__(self, now: Clock, now_us: Callable[[], float]) -> None:
        self._now, self._now_us = now, now_us
        self._offset = 0.0  # perf seconds minus Link seconds; written by the clock thread only
        self._measured_at = -math.inf
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if not force and self._now() - self._measured_at < self.REFRESH_S:
            return
        best = math.inf
        for _ in range(5):
            before = self._now()
            us = self._now_us()
            after = self._now()
            if after - before < best:
                best, self._offset = after - before, (before + after) / 2 - us / 1e6
        self._measured_at = self._now()

    def to_host(self, us: float) -> float:
        return us / 1e6 + self._offset

    def to_link(self, t: float) -> float:
        return (t - self._offset) * 1e6


class LinkClock(threading.Thread):
    """Follows a Link session and ticks its listener on the session's beat grid (see the module doc)."""

    source = "link"
    MAX_SLEEP_S = 0.005  # wake at least this often: a peer's tempo change moves the next deadline
    BEATS_KEPT = 64  # recent beat deliveries kept for status (`beats`)

    def __init__(self, listener: ClockListener, session: LinkSession, now: Clock = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, realtime: bool = False) -> None:
        super().__init__(name="vaejam-link-clock", daemon=True)
        self._listener = listener
        self._session = session
        self._now = now
        self._sleep = sleep
        self._realtime = realtime
        self.priority = "normal"
        self._map = HostMap(now, session.now_us)  # used on the clock thread (or by service's caller)
        self._halt = threading.Event()  # set by stop()
        self._lock = threading.Lock()  # guards the transport state below (not held in listener calls)
        self._free = False  # start_transport() asked to run while no peer uses start/stop; _lock
        self._sync_seen = False  # the session was seen playing: follow its start/stop from now on; _lock
        self._was_playing: bool | None = None  # session's isPlaying at the last look; _lock
        self._origin = 0.0  # Link beat of tick 0 of the run (a bar downbeat); _lock
        self._next_tick = 0  # _lock
        self._start_due = False  # on_start goes out with the next tick; _lock
        self._last_look: float | None = None  # `now` of the previous service(): tells a stall from a jump
        self._last_deadline: float | None = None  # host time of the last tick delivered
        self._errors = CountedLog(log)
        self.latency_s = 0.0  # ticks go out this much before their beat (output latency compensation)
        self.running = False  # a run is in progress (ticks due)
        self.tick: int | None = None  # last tick delivered
        self.bpm: float | None = None  # the session's tempo at the last look
        self.peers = 0  # other peers in the Link session at the last look
        self.relocations = 0
        self.beats: deque[tuple[int, int]] = deque(maxlen=self.BEATS_KEPT)  # (tick, Link us when sent)

    # ---- control (any thread) ----------------------------------------------------------------
    def start_transport(self) -> None:
        """Run freely on the timeline until peers' start/stop says otherwise."""
        with self._lock:
            self._free = True

    def stop_transport(self) -> None:
        with self._lock:
            self._free = False

    def set_bpm(self, bpm: float) -> None:
        """Propose a tempo to the Link session (all peers follow it)."""
        self._session.propose_tempo(check_bpm(bpm))

    def set_latency_ms(self, ms: float) -> None:
        if not (math.isfinite(ms) and ms >= 0):
            raise ValueError(f"latency_ms={ms} must be a number >= 0")
        self.latency_s = ms / 1000.0

    def stop(self, block: bool = True) -> None:
        """End the thread (on_stop if running) and leave the Link session; safe to call twice."""
        self._halt.set()
        if block and self.is_alive() and threading.current_thread() is not self:
            self.join()
        if not self.is_alive():
            self._session.close()

    # ---- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        if self._realtime:
            self.priority = _raise_thread_priority()
        while not self._halt.is_set():
            now = self._now()
            try:
                delay = self.service(now)
            except Exception as err:  # noqa: BLE001 - a Link hiccup must not end the clock thread
                self._errors.event(type(err).__name__, f"Link clock failed: {err!r}", logging.ERROR, True)
                delay = 0.1
            # the delay counts from `now`: what service() itself took is already gone (absolute deadline)
            self._sleep(max(0.0, min(delay, self.MAX_SLEEP_S) - (self._now() - now)))
        with self._lock:
            self._free = False
            stop = self._end()
        self._deliver(stop)

    def service(self, now: float) -> float:
        """Look at the session, deliver start/stop and every tick due by `now`; seconds to the next."""
        since_look = now - self._last_look if self._last_look is not None else 0.0
        self._last_look = now
        self._map.refresh()
        state = self._session.capture()
        bpm = state.tempo()
        self.peers = self._session.peers()  # now: the session's auto switch to Link looks at it per tick
        try:
            return self._serve_due(state, now, bpm, since_look)
        finally:  # the tempo after this look's work: a status showing a new session's tempo shows what it did too
            self.bpm = bpm

    def _serve_due(self, state: LinkState, now: float, bpm: float, since_look: float) -> float:
        with self._lock:
            events = self._follow_transport(state, now)
        self._deliver(events)
        while True:
            with self._lock:
                if not self.running:
                    return self.MAX_SLEEP_S
                deadline = self._map.to_host(state.time_at(self._origin + self._next_tick * BEATS_PER_TICK))
                due = deadline - self.latency_s
                ticks_late = (now - due) * TICKS_PER_BEAT * bpm / 60.0
                # ahead by over a half beat once ticks flow: the timeline jumped back (a fresh run may
                # wait up to a bar for its downbeat, so not then)
                if ticks_late > RELOCATE_TICKS or (ticks_late < -RELOCATE_TICKS - 1 and not self._start_due):
                    events = self._relocate(state, now, ticks_late, since_look, deadline)
                elif ticks_late < 0:
                    return due - now
                else:
                    events = self._tick_events(self._next_tick, deadline)
                    self._next_tick += 1
                    self._last_deadline = deadline
            self._deliver(events)

    # ---- transport (under _lock) -------------------------------------------------------------
    def _follow_transport(self, state: LinkState, now: float) -> list[tuple[str, int, float]]:
        events: list[tuple[str, int, float]] = []
        playing = state.playing()
        if playing != self._was_playing:
            self._was_playing = playing
            if playing:
                self._sync_seen = True
                start_beat = state.beat_at(state.play_time())
                origin = math.ceil((start_beat - START_EPS_BEATS) / QUANTUM) * QUANTUM
                events += self._end()
                self._begin(origin, self._position(state, now, origin))
            elif self._sync_seen:
                events += self._end()
        want = self._was_playing if self._sync_seen else self._free
        if want and not self.running:
            beat = state.beat_at(self._map.to_link(now + self.latency_s))
            origin = math.floor(beat / QUANTUM) * QUANTUM
            self._begin(origin, self._position(state, now, origin))
        elif not want and self.running:
            events += self._end()
        return events

    def _position(self, state: LinkState, now: float, origin: float) -> int:
        """The first tick of a run from `origin` not yet due at `now` (0 when the origin is ahead)."""
        beat = state.beat_at(self._map.to_link(now + self.latency_s))
        return max(0, math.floor((beat - origin) * TICKS_PER_BEAT) + 1)

    def _begin(self, origin: float, tick: int) -> None:
        self._origin, self._next_tick = origin, tick
        self._last_deadline = None
        self.running, self._start_due = True, True

    def _end(self) -> list[tuple[str, int, float]]:
        if not self.running:
            return []
        self.running = False
        if self._start_due:  # on_start never went out: nothing to stop
            self._start_due = False
            return []
        return [("on_stop", self.tick if self.tick is not None else self._next_tick, self._now())]

    def _relocate(self, state: LinkState, now: float, ticks_late: float, since_look: float,
                  deadline: float) -> list[tuple[str, int, float]]:
        self.relocations += 1
        moved = (f"{(deadline - self._last_deadline) * 1000:.1f} ms after the last tick's"
                 if self._last_deadline is not None else "no tick before it")
        self._errors.event("relocate", f"Link clock {ticks_late:+.1f} ticks off at tick {self._next_tick} "
                           f"(deadline {moved}; {since_look * 1000:.1f} ms since the clock's last look): relocating",
                           logging.INFO)
        events = self._end()
        self._begin(self._origin, self._position(state, now, self._origin))
        return events

    def _tick_events(self, tick: int, t: float) -> list[tuple[str, int, float]]:
        events = []
        if self._start_due:
            self._start_due = False
            events.append(("on_start", tick, t))
        events.append(("on_tick", tick, t))
        return events

    # ---- listener calls (no lock held) -------------------------------------------------------
    def _deliver(self, events: list[tuple[str, int, float]]) -> None:
        for name, tick, t in events:
            if name == "on_tick":
                self.tick = tick
                if tick % TICKS_PER_BEAT == 0:
                    self.beats.append((tick, int(self._session.now_us())))  # when it really went out
            try:
                getattr(self._listener, name)(tick, t)
            except Exception as err:  # noqa: BLE001 - a listener bug must not kill the clock thread
                self._errors.event(f"listener:{name}", f"clock listener {name} failed: {err!r}", logging.ERROR, True)

    def status(self) -> dict[str, object]:
        """For /vaejam/status: peers, the session tempo, and the last beats sent ("tick:link_us ...")."""
        return {"link_peers": self.peers, "link_running": int(self.running), "link_relocations": self.relocations,
                "link_beats": " ".join(f"{tick}:{us}" for tick, us in list(self.beats)[-16:])}


__all__ = ["LinkClock", "LinkPeer", "LinkSession", "LinkState", "LinkUnavailable", "HostMap", "LINK_MISSING",
           "QUANTUM"]
