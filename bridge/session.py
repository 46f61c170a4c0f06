"""The live session: piano notes in, the band's next bar out, on the clock's grid.

LiveSession is the ClockListener of both clocks (through a gate per source) and the OSC ControlTarget.
Per bar: piano notes are quantised into the bar in progress; at the lookahead step the bar is handed to
the InferenceWorker (which owns the engine and the recorder, so neither is touched by two threads); at
the next downbeat the generated bar is scheduled if it is ready, else the bar is counted late and
nothing new plays (the grid never shifts, so lateness never becomes drift).

Clock source (status `clock_source`, `running`, `tempo`): the internal clock runs from start-up at
--bpm, so the band answers a pianist with no DAW clock. The first Start/Continue of an external MIDI
clock takes over (`clock_source` becomes "midi", the internal transport stops, sounding notes are
released). When the DAW stops, the source stays "midi" with `running` 0 and the band is silent until
the DAW starts again; /vaejam/play hands the band back to the internal clock.

Bars are numbered by a serial counter that only grows (a transport restart or locate starts a new
serial bar), so piano notes and takes stay ordered when the DAW jumps around; the scheduler is given
the clock's absolute steps.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import mido
import numpy as np

from bridge.clock import (
    HELPER_PRIORITY, TICKS_PER_BAR, TICKS_PER_STEP, CountedLog, InternalClock, MidiClockFollower, TICKS_PER_BEAT,
    _raise_thread_priority,
)
from bridge.link_clock import LinkClock, LinkSession
from models.bars import BAND, N_PITCHES, STEPS_PER_BAR, Note, roll_notes, rolls_notes  # noqa: F401 - roll_notes re-exported
from models.chords import HARMONY_CHORDS, STEPS_PER_BEAT, ChordFollower, Harmony, beat_notes, heard_context
from models.controls import Controls

log = logging.getLogger(__name__)
INFERENCE_WINDOW = 512  # bars of inference time that status summarises (p50, p99)

Clock = Callable[[], float]
CLOCK_MESSAGES = frozenset({"clock", "start", "continue", "stop", "songpos"})
SUSTAIN_CC = 64
DEFAULT_TAKES_DIR = "takes"  # /vaejam/record 1 without --record DIR
# --clock: which sources may drive the band. auto: MIDI clock once it starts, else Link once a peer is
# there, else internal; midi: MIDI clock once it starts, else internal (no Link); link, internal: only that.
CLOCK_MODES = ("auto", "midi", "link", "internal")
TAKE_TEMPO_CHANGE = 0.01  # relative tempo change that writes a new tempo into the take


class Engine(Protocol):
    """What the session needs of models.engine.BandEngine."""

    styles: Mapping[str, Any]

    def step(self, piano_bar: np.ndarray, decode_piano: bool | None = None) -> np.ndarray: ...
    def predicted_piano(self) -> np.ndarray: ...
    def set_controls(self, controls: Controls) -> None: ...
    def reset(self, seed: int | None = None) -> None: ...


class Scheduler(Protocol):
    """What the session needs of bridge.scheduler.NoteScheduler."""

    def schedule_bar(self, bar_start_step: int, instrument: str, notes: Sequence[Note],
                     velocity_scale: float = 1.0) -> None: ...
    def on_step(self, step: int) -> None: ...
    def release(self, instrument: str | None = None) -> None: ...
    def panic(self) -> None: ...


class Recorder(Protocol):
    """What the session needs of bridge.recorder.TakeRecorder."""

    recording: bool

    def start(self, bpm: float) -> Path: ...
    def add_notes(self, instrument: str, notes: Sequence[Note], offset_step: int) -> None: ...
    def set_tempo(self, step: int, bpm: float) -> None: ...
    def flush(self) -> None: ...
    def stop(self) -> Path | None: ...


@dataclass(frozen=True)
class InferJob:
    serial: int  # the bar the result is for
    piano: np.ndarray | None  # (32, 128) played bar; None: autopilot, feed the engine its own piano
    controls: Controls  # the whole setting for this bar (staged controls at the lookahead step)


@dataclass(frozen=True)
class BarResult:
    serial: int
    parts: Mapping[str, tuple[Note, ...]]  # instrument -> notes in steps of the bar ("piano" = predicted, echo only)
    controls: Controls
    inference_ms: float


@dataclass
class PianoNote:
    start: int  # serial step (serial bar * 32 + step in bar)
    end: int  # serial step, exclusive
    pitch: int
    velocity: int


_SENTINEL = object()


class InferenceWorker(threading.Thread):
    """Runs the engine (and the recorder's file writes) off the MIDI and clock threads, in order.

    Jobs are InferJobs or plain callables (recorder tasks); a sentinel ends the thread. Once stop()
    is called, queued inference is skipped but queued recorder tasks still run, so the take is final.
    """

    def __init__(self, engine: Engine, on_result: Callable[[BarResult], None], clock: Clock = time.perf_counter,
                 realtime: bool = False, echo_piano: bool = False) -> None:
        super().__init__(name="vaejam-inference", daemon=True)
        self.engine = engine  # used only on this thread once started
        self._on_result = on_result
        self._clock = clock
        self._realtime = realtime  # run at HELPER_PRIORITY: never preempted by other processes holding the GIL
        self.priority = "normal"  # what run() got
        self._jobs: queue.Queue[object] = queue.Queue()
        self._halt = threading.Event()  # set by stop(): skip further inference
        # the predicted piano is decoded with each bar only when it is played (echo); autopilot asks the
        # engine for it on the rare bar that needs it (a fifth of the decoder's work, issue 11)
        self._echo_piano = echo_piano
        self._stepped = False  # the engine has made a bar since start, so it has a predicted piano; this thread only
        self.errors = CountedLog(log)

    def submit(self, job: InferJob | Callable[[], None]) -> None:
        self._jobs.put(job)

    def run(self) -> None:
        if self._realtime:
            self.priority = _raise_thread_priority(HELPER_PRIORITY)
        while True:
            job = self._jobs.get()
            if job is _SENTINEL:
                return
            self._process(job)

    def warm(self, timeout: float = 30.0) -> None:
        """Run the engine's warm-up on this thread and wait for it: the first step on a new thread
        pays torch's per-thread set-up (measured 65 ms against 5 ms), which would make bar 1 late."""
        done = threading.Event()

        def warm() -> None:
            try:
                warmup = getattr(self.engine, "warmup", None)
                if warmup is not None:
                    warmup()
            finally:
                done.set()

        self.submit(warm)
        if not self.is_alive():
            self.drain()
        done.wait(timeout)

    def drain(self) -> int:
        """Run the queued jobs on the calling thread (when the thread was not started); how many ran."""
        if self.is_alive():
            raise RuntimeError("drain() is for a worker whose thread is not running")
        done = 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return done
            if job is not _SENTINEL:
                self._process(job)
                done += 1

    def _process(self, job: object) -> None:
        try:
            if isinstance(job, InferJob):
                if not self._halt.is_set():
                    self._on_result(self.infer(job))
            else:
                job()  # type: ignore[operator]
        except Exception as err:  # noqa: BLE001 - one bad bar must not end the band
            self.errors.event(type(err).__name__, f"inference worker job failed: {err!r}", logging.ERROR, True)

    def infer(self, job: InferJob) -> BarResult:
        started = self._clock()
        if job.controls != getattr(self.engine, "controls", None):
            self.engine.set_controls(job.controls)
        piano = job.piano
        if piano is None:  # autopilot: the band follows its own idea of the piano
            piano = (self.engine.predicted_piano() if self._stepped
                     else np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32))
        out = self.engine.step(piano, decode_piano=self._echo_piano)  # (5, 32, 128): predicted piano, then the band
        self._stepped = True
        # Notes are made here, not on the clock thread.
        notes = rolls_notes(out if self._echo_piano else out[1:])  # every part it plays, in one pass
        parts = dict(zip(BAND, notes[-len(BAND):]))
        if self._echo_piano:
            parts["piano"] = notes[0]
        return BarResult(job.serial, parts, job.controls, (self._clock() - started) * 1000)

    def stop(self, block: bool = True) -> None:
        """Skip queued inference, finish queued recorder tasks, end the thread; safe twice."""
        self._halt.set()
        self._jobs.put(_SENTINEL)
        if block and self.is_alive() and threading.current_thread() is not self:
            self.join()


class _SourceGate:
    """The ClockListener one clock source sees; the session decides whether that source is in charge."""

    def __init__(self, session: "LiveSession", source: str) -> None:
        self._session = session
        self._source = source

    def on_start(self, tick: int, t: float) -> None:
        self._session._clock_event(self._source, "start", tick, t)

    def on_tick(self, tick: int, t: float) -> None:
        self._session._clock_event(self._source, "tick", tick, t)

    def on_stop(self, tick: int, t: float) -> None:
        self._session._clock_event(self._source, "stop", tick, t)


@dataclass
class SessionOptions:
    lookahead_steps: int = 1  # hand the bar to inference this many steps before the downbeat
    autopilot: int = 4  # bars the band follows its own piano after the pianist stops; 0 = off
    echo_piano: bool = False  # also play the predicted piano
    bpm: float = 120.0  # internal clock tempo
    record_dir: str | None = None  # --record DIR: record from the start
    make_recorder: Callable[[str], Recorder] | None = None  # directory -> recorder; None: TakeRecorder
    realtime_threads: bool = False  # ask the OS for real-time priorities: clocks above the worker (bridge.clock)

    def __post_init__(self) -> None:
        if isinstance(self.lookahead_steps, bool) or not 1 <= self.lookahead_steps < STEPS_PER_BAR:
            raise ValueError(f"lookahead_steps={self.lookahead_steps} must be 1-{STEPS_PER_BAR - 1}")
        if self.autopilot < 0:
            raise ValueError(f"autopilot={self.autopilot} must be >= 0")


@dataclass
class _Counters:
    notes_in: int = 0
    notes_while_stopped: int = 0
    stray_note_offs: int = 0
    bars_played: int = 0  # bars with piano notes handed to the engine
    autopilot_bars: int = 0
    rest_bars: int = 0
    bars_generated: int = 0
    bars_scheduled: int = 0
    late_bars: int = 0
    panics: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class LiveSession:
    """ClockListener (through per-source gates) + ControlTarget; see the module doc for the flow."""

    def __init__(self, engine: Engine, scheduler: Scheduler, options: SessionOptions | None = None,
                 clock: Clock = time.perf_counter, start_threads: bool = True,
                 link: "LinkSession | None" = None, clock_mode: str = "auto") -> None:
        if clock_mode not in CLOCK_MODES:
            raise ValueError(f"clock_mode={clock_mode!r} must be one of {', '.join(CLOCK_MODES)}")
        if clock_mode == "link" and link is None:
            raise ValueError("clock_mode='link' needs a Link session (link=)")
        self.options = options or SessionOptions()
        self._clock = clock
        self.scheduler = scheduler
        self._lock = threading.RLock()  # guards every attribute below marked "_lock"
        self.worker = InferenceWorker(engine, self._on_result, clock, realtime=self.options.realtime_threads,
                                      echo_piano=self.options.echo_piano)
        self.follower = MidiClockFollower(_SourceGate(self, "midi"))
        self._latency_s = 0.0  # output latency compensation: every clock ticks this much early
        self.internal = InternalClock(_SourceGate(self, "internal"), self.options.bpm,
                                      now=lambda: clock() + self._latency_s, realtime=self.options.realtime_threads)
        self._clock_mode = clock_mode  # which sources may drive the band (CLOCK_MODES); fixed
        self.link = (LinkClock(_SourceGate(self, "link"), link, now=clock, realtime=self.options.realtime_threads)
                     if link is not None else None)  # Ableton Link (bridge.link_clock), when asked for
        self._styles = set(getattr(engine, "styles", {}) or {})  # names the engine accepts; _lock
        self._source = "link" if clock_mode == "link" else "internal"  # which clock drives the band; _lock
        self._running = False  # transport of the active source running; _lock
        self._serial = -1  # serial number of the bar in progress; _lock
        self._bar_abs = 0  # absolute clock bar of the bar in progress; _lock
        self._last_tick = 0  # last tick of the active source and its time; _lock
        self._last_t = 0.0  # _lock
        self._downbeat_t = 0.0  # time of the last downbeat's tick; _lock
        self._handover_t = 0.0  # time of the last hand-over to the worker; _lock
        self._open: dict[int, tuple[int, int]] = {}  # pitch -> (serial start step, velocity); _lock
        self._closed: list[PianoNote] = []  # piano notes of recent bars; _lock
        self._sustain = False  # sustain pedal down; _lock
        self._sustained: set[int] = set()  # pitches released while the pedal was down; _lock
        self._heard_piano = False  # the pianist has played since the last rest; _lock
        self._staged = Controls()  # controls for the next generated bar; _lock
        self._autopilot = self.options.autopilot  # _lock
        self._autopilot_left = 0  # _lock
        self._expected: int | None = None  # serial bar an inference is running for; _lock
        self._ready: BarResult | None = None  # the newest finished result; _lock
        self._playing: tuple[BarResult, int] | None = None  # the bar being played, its first step; _lock
        self._follower = ChordFollower()  # beat-level chord follow of the band's notes; _lock
        self._last_inference_ms = 0.0  # _lock
        self._inference_ms: deque[float] = deque(maxlen=INFERENCE_WINDOW)  # the worker's recent bars; worker thread
        self._inference_percentiles = (0.0, 0.0)  # their p50, p99 ms: replaced whole by the worker, read by status
        self._counters = _Counters()  # _lock
        self._take_origin: int | None = None  # serial step where the take started; _lock
        self._take_has_notes = False  # a note went into the take: its start stays put; _lock
        self._take_path: Path | None = None  # _lock
        self._take_bpm = 0.0  # tempo last written to the take; _lock
        self._recorder: Recorder | None = None  # used on the worker thread only; set there
        self.extra_status: Callable[[], Mapping[str, object]] | None = None  # e.g. MIDI port counters
        self._errors = CountedLog(log)
        if start_threads:
            self.worker.start()
            self.internal.start()
            if self.link is not None:
                self.link.start()

    # ---- lifetime ----------------------------------------------------------------------------
    def start(self) -> None:
        """Warm the worker, then start the internal clock's transport so the band answers even before
        a DAW clock comes."""
        self.worker.warm()
        if self.options.record_dir is not None:
            self._start_take(self.options.record_dir)
        if self.link is not None:
            self.link.start_transport()  # runs on Link's timeline; drives the band when in charge
        if self._clock_mode != "link":  # midi and auto too: the band answers before the DAW starts
            self.internal.start_transport(0)

    def close(self) -> None:
        """Stop clocks, release every note (note-offs + CC 123), finalise the take, end the worker."""
        self.internal.stop(block=True)
        if self.link is not None:
            self.link.stop(block=True)  # also leaves the Link session
        with self._lock:
            self._running = False
            self._expected, self._ready, self._playing = None, None, None
            self._close_open_notes()
        self.scheduler.panic()
        self._stop_take()
        self.worker.stop(block=True)

    # ---- MIDI in -----------------------------------------------------------------------------
    def on_midi(self, msg: mido.Message, t: float) -> None:
        """Handler of the `vaejam in` port: clock messages to the follower, piano notes to the bar."""
        if msg.type in CLOCK_MESSAGES:
            self.follower.feed(msg, t)
        elif msg.type == "note_on" and msg.velocity > 0:
            self.note_on(msg.note, msg.velocity, t)
        elif msg.type in ("note_off", "note_on"):  # a velocity-0 note-on is a note-off
            self.note_off(msg.note, t)
        elif msg.type == "control_change" and msg.control == SUSTAIN_CC:
            self._pedal(msg.value >= 64, t)
        elif (msg.type == "control_change" and getattr(self, "cc_map", None) is not None  # set by the daemon
              and (moved := self.cc_map.handle(msg.control, msg.value)) is not None):
            self.set_control(*moved)  # a knob bound by --cc or /vaejam/learn (bridge.cc_map), scaled to the range
        else:
            with self._lock:
                key = f"ignored_{msg.type}"
                self._counters.extra[key] = self._counters.extra.get(key, 0) + 1

    def note_on(self, pitch: int, velocity: int, t: float) -> None:
        with self._lock:
            if not self._running:
                self._counters.notes_while_stopped += 1
                return
            step = self._quantise(t)
            if pitch in self._open:  # a repeated key without a note-off: end the old note here
                self._close_note(pitch, step)
            self._sustained.discard(pitch)
            self._open[pitch] = (step, velocity)
            self._counters.notes_in += 1

    def note_off(self, pitch: int, t: float) -> None:
        with self._lock:
            if pitch not in self._open:
                self._counters.stray_note_offs += 1
                return
            if self._sustain:
                self._sustained.add(pitch)  # the pedal holds it; ends when the pedal is released
                return
            self._close_note(pitch, self._quantise(t))

    def _pedal(self, down: bool, t: float) -> None:
        with self._lock:
            self._sustain = down
            if not down and self._running:
                step = self._quantise(t)
                for pitch in sorted(self._sustained):
                    if pitch in self._open:
                        self._close_note(pitch, step)
                self._sustained.clear()

    def _quantise(self, t: float) -> int:
        """Serial step of time t: position from the last tick + tempo, rounded to the nearest step.

        A note just before a downbeat that rounds onto it lands on step 0 of the next bar. The
        extrapolation is capped at one step, so a clock that stalls cannot push notes into the future.
        """
        tick_s = 60.0 / (TICKS_PER_BEAT * self._tempo())
        # t may precede the last tick a little (stamped on arrival, then the clock thread won the lock)
        ahead = min(max((t - self._last_t) / tick_s, -float(TICKS_PER_STEP)), float(TICKS_PER_STEP))
        abs_step = int(math.floor((self._last_tick + ahead) / TICKS_PER_STEP + 0.5))
        return self._serial * STEPS_PER_BAR + abs_step - self._bar_abs * STEPS_PER_BAR

    def _close_note(self, pitch: int, step: int) -> None:
        start, velocity = self._open.pop(pitch)
        note = PianoNote(start, max(step, start + 1), pitch, velocity)
        self._closed.append(note)
        self._record_piano(note)

    def _close_open_notes(self) -> None:
        """End every held piano note at the current position (transport stop/relocate, shutdown)."""
        step = (self._serial * STEPS_PER_BAR + self._last_tick // TICKS_PER_STEP
                - self._bar_abs * STEPS_PER_BAR + 1)
        for pitch in list(self._open):
            self._close_note(pitch, step)
        self._sustained.clear()

    def piano_bar(self, serial: int) -> np.ndarray:
        """The piano as heard so far in a serial bar, (32, 128) velocity/127; held notes fill to the bar end."""
        with self._lock:
            roll = np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)
            first, end = serial * STEPS_PER_BAR, (serial + 1) * STEPS_PER_BAR
            held = [PianoNote(s, end, p, v) for p, (s, v) in self._open.items()]
            for note in sorted(self._closed + held, key=lambda n: n.start):
                lo, hi = max(note.start, first), min(note.end, end)
                if lo >= hi:
                    continue
                if note.start >= first + 1 and roll[note.start - first - 1, note.pitch] > 0:
                    roll[note.start - first - 1, note.pitch] = 0.0  # keep a repeated note two notes
                roll[lo - first:hi - first, note.pitch] = note.velocity / 127.0
            return roll

    # ---- clock -------------------------------------------------------------------------------
    def _clock_event(self, source: str, kind: str, tick: int, t: float) -> None:
        with self._lock:
            if source != self._source:
                if source == "midi" and kind == "start" and self._clock_mode in ("auto", "midi"):
                    self._switch_to_midi()
                elif (source == "link" and kind != "stop" and self._clock_mode == "auto"
                      and self._source == "internal" and self.link is not None and self.link.peers > 0):
                    self._switch_to_link(tick, t)  # auto: a Link peer appeared before any MIDI clock
                    if kind == "start":
                        return
                else:
                    return  # the other clock is in charge
            if kind == "start":
                self._on_start(tick, t)
            elif kind == "tick":
                self._on_tick(tick, t)
            else:
                self._on_stop(tick, t)

    def _switch_to_midi(self) -> None:
        log.info("external MIDI clock started: following it (internal clock stopped)")
        self._source = "midi"
        self.internal.stop_transport()  # its on_stop arrives later and is gated out
        self._on_stop(self._last_tick, self._last_t)

    def _switch_to_link(self, tick: int, t: float) -> None:
        log.info("Ableton Link peer found: following the Link session (internal clock stopped)")
        self.internal.stop_transport()  # its on_stop arrives later and is gated out
        self._on_stop(self._last_tick, self._last_t)
        self._source = "link"
        self._on_start(tick, t)

    def _on_start(self, tick: int, t: float) -> None:
        if self._running:
            self._on_stop(self._last_tick, t)
        self._running = True
        self._serial += 1
        self._bar_abs = tick // TICKS_PER_BAR
        self._slide_empty_take()
        self._last_tick, self._last_t = tick, t
        self._expected, self._ready, self._playing = None, None, None
        self._follower.reset()  # a new run counts steps anew

    def _on_tick(self, tick: int, t: float) -> None:
        if not self._running:
            return
        self._last_tick, self._last_t = tick, t
        if tick % TICKS_PER_STEP:
            return
        step = tick // TICKS_PER_STEP
        bar_abs, in_bar = divmod(step, STEPS_PER_BAR)
        if bar_abs != self._bar_abs:
            self._downbeat(bar_abs, step)
        elif in_bar % STEPS_PER_BEAT == 0:
            self._play_beat(in_bar // STEPS_PER_BEAT)
        if in_bar == STEPS_PER_BAR - self.options.lookahead_steps:
            self._hand_over()
        self.scheduler.on_step(step)

    def _on_stop(self, tick: int, t: float) -> None:
        if not self._running:
            return
        self._last_tick = max(self._last_tick, tick)
        self._close_open_notes()
        self._running = False
        self._expected, self._ready, self._playing = None, None, None
        self.scheduler.panic()
        self._counters.panics += 1

    def _downbeat(self, bar_abs: int, step: int) -> None:
        """A new bar: play the generated bar if it is ready, else count it late."""
        self._serial += 1
        self._downbeat_t = self._last_t
        self._slide_empty_take()
        self._bar_abs = bar_abs
        oldest = (self._serial - 2) * STEPS_PER_BAR
        self._closed = [n for n in self._closed if n.end > oldest]
        self._playing = None
        if self._expected == self._serial:
            ready = self._ready
            if ready is not None and ready.serial == self._serial:
                self._play(ready, step)
            else:
                self._counters.late_bars += 1
                self._errors.event("late", f"bar {self._serial} was not ready at its downbeat: playing nothing new "
                                   f"(handed over {(self._last_t - self._handover_t) * 1000:.1f} ms before)")
        self._expected, self._ready = None, None
        self._flush_take()

    def _play(self, result: BarResult, bar_start_step: int) -> None:
        """A generated bar starts: its notes go to the scheduler beat by beat (_play_beat)."""
        self._playing = (result, bar_start_step)
        self._counters.bars_scheduled += 1
        self._play_beat(0)

    def _play_beat(self, beat: int) -> None:
        """At a beat's first step, before the scheduler sends it: the beat's notes, fitted to the
        chords the piano has played so far when the bar's harmony setting asks for it
        (models.chords; the offline render calls the same code)."""
        if self._playing is None:
            return
        result, bar_start_step = self._playing
        mute = self._staged.mute  # the latest mute, so a mute after the lookahead still silences
        played = [name for name in BAND if not mute[name]]
        if self.options.echo_piano:
            played.append("piano")
        harmony = None
        if result.controls.harmony == HARMONY_CHORDS:
            harmony = Harmony(heard_context(self.piano_bar(self._serial - 1), self.piano_bar(self._serial), beat))
        fitted: dict[str, list[Note]] = {}
        for name in played:
            notes = beat_notes(result.parts[name], beat)
            if harmony is not None:
                notes = self._follower.fit_beat(name, notes, harmony, bar_start_step + beat * STEPS_PER_BEAT)
            fitted[name] = notes
            # The engine applied the velocity control already (scale 1.0 here, or it would count twice).
            self.scheduler.schedule_bar(bar_start_step, name, notes, 1.0)
        self._record_parts(fitted)

    def _hand_over(self) -> None:
        """The lookahead step: snapshot the bar in progress and start generating the next one."""
        roll = self.piano_bar(self._serial)
        if roll.any():
            self._heard_piano = True
            self._autopilot_left = self._autopilot
            self._counters.bars_played += 1
            piano: np.ndarray | None = roll
        elif self._heard_piano and self._autopilot_left > 0:
            self._autopilot_left -= 1
            self._counters.autopilot_bars += 1
            piano = None
        else:
            self._heard_piano = False  # rest until the pianist plays again
            self._counters.rest_bars += 1
            return
        self._expected = self._serial + 1
        self._handover_t = self._last_t
        self.worker.submit(InferJob(self._serial + 1, piano, self._staged))

    def _on_result(self, result: BarResult) -> None:
        """Worker thread: keep the newest result; the downbeat decides whether it is in time."""
        # Percentiles once a bar here, not per status request: numpy's percentile is ~0.1 ms of
        # bytecode, and Python work on the OSC thread while a status is polled every few ms made the
        # clock thread wait for the GIL (measured: beat ticks over 2 ms late against none without it)
        self._inference_ms.append(result.inference_ms)
        self._inference_percentiles = tuple(round(v, 3) for v in np.percentile(self._inference_ms, [50, 99]).tolist())
        with self._lock:
            self._last_inference_ms = result.inference_ms
            self._counters.bars_generated += 1
            if result.serial == self._expected:
                self._ready = result
            elif result.serial == self._serial and self._running:
                late_ms = (self._clock() - self._downbeat_t) * 1000
                self._errors.event("late_result", f"bar {result.serial} was ready {late_ms:.1f} ms after its "
                                   f"downbeat (inference {result.inference_ms:.1f} ms)")

    def _tempo(self) -> float:
        bpm = {"midi": self.follower.bpm, "link": self.link and self.link.bpm}.get(self._source, self.internal.bpm)
        return bpm if bpm else self.internal.bpm

    # ---- recording (file work on the worker thread) ------------------------------------------
    def _start_take(self, directory: str) -> None:
        with self._lock:
            if self._take_origin is not None:
                return
            self._take_origin = max(self._serial, 0) * STEPS_PER_BAR
            self._take_has_notes = False
            self._take_bpm = self._tempo()
            bpm = self._take_bpm
        make = self.options.make_recorder or _take_recorder

        def start() -> None:
            if self._recorder is not None and self._recorder.recording:
                return  # a start while recording is no new take
            self._recorder = make(directory)
            with self._lock:
                self._take_path = None  # until the new take reaches the disk
            path = self._recorder.start(bpm)
            self._note_take_write(path)
            if path is not None:
                log.info("recording take %s", path)

        self.worker.submit(start)

    def _note_take_write(self, path: Path | None) -> None:
        """Worker thread, after each take write: the take's path and whether writing fails
        (TakeRecorder keeps a write error in `error` instead of raising, and retries next bar)."""
        error = getattr(self._recorder, "error", "")
        with self._lock:
            self._take_path = path or self._take_path
            if error:
                self._counters.extra["record_errors"] = self._counters.extra.get("record_errors", 0) + 1

    def _stop_take(self) -> None:
        with self._lock:
            if self._take_origin is None:
                return
            now = self._serial * STEPS_PER_BAR + self._last_tick // TICKS_PER_STEP - self._bar_abs * STEPS_PER_BAR + 1
            for pitch, (start, velocity) in self._open.items():  # held notes end in the take, not at the keys
                self._record_piano(PianoNote(start, max(now, start + 1), pitch, velocity))
            self._take_origin = None

        def stop() -> None:
            if self._recorder is not None:
                path = self._recorder.stop()
                self._note_take_write(path)
                self._recorder = None
                log.info("take finalised: %s", path)

        self.worker.submit(stop)

    def _slide_empty_take(self) -> None:
        """A take begins with its first note, not minutes of internal-clock bars before the DAW starts:
        while nothing is recorded (and no key is held), its start moves to the bar in progress."""
        if self._take_origin is None or self._take_has_notes or self._open:
            return
        self._take_origin = self._serial * STEPS_PER_BAR
        bpm = self._tempo()
        if bpm != self._take_bpm:
            self._take_bpm = bpm
            self.worker.submit(lambda: self._recorder and self._recorder.set_tempo(0, bpm))

    def _record_piano(self, note: PianoNote) -> None:
        origin = self._take_origin
        if origin is None or note.end <= origin:
            return
        self._take_has_notes = True
        shifted = Note(max(note.start - origin, 0), note.end - origin, note.pitch, note.velocity)
        self.worker.submit(lambda: self._recorder and self._recorder.add_notes("piano", [shifted], 0))

    def _record_parts(self, parts: Mapping[str, Sequence[Note]]) -> None:
        origin = self._take_origin
        if origin is None:
            return
        offset = self._serial * STEPS_PER_BAR - origin
        for name, part in parts.items():
            if name != "piano":  # the take's piano is the one played, not the predicted one
                notes = list(part)
                self._take_has_notes = self._take_has_notes or bool(notes)
                self.worker.submit(lambda n=name, ns=notes: self._recorder and self._recorder.add_notes(n, ns, offset))

    def _flush_take(self) -> None:
        if self._take_origin is None:
            return
        bpm = self._tempo()
        # 1 %: JACK's period jitter moves the MIDI clock's tempo estimate by ~0.5 %, which must not
        # write a tempo change into the take every bar
        if abs(bpm - self._take_bpm) > TAKE_TEMPO_CHANGE * self._take_bpm:
            self._take_bpm = bpm
            step = self._serial * STEPS_PER_BAR - self._take_origin
            self.worker.submit(lambda: self._recorder and self._recorder.set_tempo(step, bpm))

        def flush() -> None:
            if self._recorder is not None:
                self._recorder.flush()
                self._note_take_write(getattr(self._recorder, "path", None))

        self.worker.submit(flush)

    # ---- ControlTarget -----------------------------------------------------------------------
    def set_control(self, name: str, value: float | int | str) -> None:
        """A validated OSC value; band controls are staged for the next generated bar."""
        if name == "tempo":
            self.internal.set_bpm(float(value))
            if self._source == "link" and self.link is not None:
                self.link.set_bpm(float(value))  # proposed to the Link session: every peer follows
            elif self._source == "midi":
                log.info("tempo %.1f set for the internal clock; the DAW's MIDI clock decides now", value)
        elif name == "latency_ms":  # ticks of the internal and Link clocks go out this much early
            self._latency_s = float(value) / 1000.0
            if self.link is not None:
                self.link.set_latency_ms(float(value))
        elif name == "autopilot":
            with self._lock:
                self._autopilot = int(value)
                self._autopilot_left = min(self._autopilot_left, self._autopilot)
        elif name == "record":
            if int(value):
                self._start_take(self.options.record_dir or DEFAULT_TAKES_DIR)
            else:
                self._stop_take()
        else:
            self._set_band_control(name, value)

    def _set_band_control(self, name: str, value: float | int | str) -> None:
        if name == "style" and value and value not in self._styles:
            known = ", ".join(sorted(self._styles)) or "none"
            raise ValueError(f"unknown style {value!r}; known: {known}")
        with self._lock:
            self._staged = self._staged.updated(name, value)
        if name.startswith("mute/") and int(value):
            self.scheduler.release(name.split("/", 1)[1])  # mute silences at once, not at the bar

    def action(self, name: str, args: tuple = ()) -> None:
        if name == "play":
            with self._lock:
                if self._source != "internal":
                    log.info("play: switching to the internal clock")
                    self._on_stop(self._last_tick, self._clock())
                    self._source = "internal"
            self.internal.start_transport(0)
        elif name == "stop":
            with self._lock:
                self._on_stop(self._last_tick, self._clock())
            if self._source == "internal":
                self.internal.stop_transport()
        elif name == "panic":
            self.panic()
        elif name == "status":
            pass  # the OSC server replies with status() itself
        elif name == "learn":  # the next CC that moves on the input port drives this control
            cc_map = getattr(self, "cc_map", None)
            if cc_map is None:
                raise ValueError("learn: this session has no CC map (vaejam run makes one)")
            cc_map.learn(str(args[0]))
        elif name == "note":
            pitch, velocity = int(args[0]), int(args[1])
            if velocity > 0:
                self.note_on(pitch, velocity, self._clock())
            else:
                self.note_off(pitch, self._clock())
        else:
            raise ValueError(f"unknown action {name!r}")

    def panic(self) -> None:
        """Every sounding note off (note-offs + CC 123) now; the band goes on from the next bar."""
        with self._lock:
            self._counters.panics += 1
            self._playing = None  # the rest of this bar's beats stay silent
            self.scheduler.panic()

    def swap_engine(self, engine: Engine) -> None:
        """A new model: release everything now; the worker takes the engine before its next bar."""
        self.panic()
        with self._lock:
            self._styles = set(getattr(engine, "styles", {}) or {})

        def swap() -> None:
            self.worker.engine = engine

        self.worker.submit(swap)

    def status(self) -> dict[str, object]:
        with self._lock:
            c = self._counters
            status: dict[str, object] = {
                "bar": max(self._serial, 0), "position_bar": self._bar_abs,
                "tick": self._last_tick, "tempo": round(self._tempo(), 2), "clock_source": self._source,
                "running": int(self._running), "late_bars": c.late_bars,
                "last_inference_ms": round(self._last_inference_ms, 3),
                "autopilot": self._autopilot, "autopilot_left": self._autopilot_left,
                "recording": int(self._take_origin is not None),
                "take": str(self._take_path or ""),
                # why the take is not being written (full disk, read-only folder); "" when it is
                "record_error": getattr(self._recorder, "error", "") if self._take_origin is not None else "",
                "record_errors": c.extra.get("record_errors", 0),
                "clock_mode": self._clock_mode, "latency_ms": round(self._latency_s * 1000, 3),
                "link_peers": self.link.peers if self.link is not None else 0,
            }
            status.update(self._staged.as_dict())
            status.update({k: v for k, v in vars(c).items() if k not in ("extra", "late_bars")})
            status.update(c.extra)
        # the worker's job per bar as it runs here, between idle waits (`vaejam bench` reads it)
        status.update(zip(("inference_ms_p50", "inference_ms_p99"), self._inference_percentiles))
        status.update(self.worker.errors.counts)
        status["capped_notes"] = int(getattr(self.worker.engine, "capped_notes", 0))  # models.limits ceiling
        if self.link is not None:
            status.update(self.link.status())
        if self.extra_status is not None:
            status.update(self.extra_status())
        cc_map = getattr(self, "cc_map", None)  # knob bindings: cc/<control> = CC number, cc_learning
        if cc_map is not None:
            status.update(cc_map.status())
        return status


def _take_recorder(directory: str) -> Recorder:
    from bridge.recorder import TakeRecorder  # imported when a take starts: the rest runs without it

    return TakeRecorder(directory)
