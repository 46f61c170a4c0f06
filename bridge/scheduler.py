"""The note scheduler: band notes out on the clock's step grid, and no note left hanging.

Every note-on sent is remembered until its note-off is sent, so stop, mute, panic, a model swap and
exit can release exactly what sounds. A pitch that is struck again while it still sounds gets its
note-off first (a synth would otherwise see two note-ons and one note-off, and hang).
"""
from __future__ import annotations

import heapq
import logging
import math
import threading
from typing import Callable, Mapping, NamedTuple, Sequence

import mido

from bridge.clock import CountedLog
from models.bars import N_PITCHES, STEPS_PER_BAR, Note

log = logging.getLogger(__name__)

# 0-based MIDI channels: guitar is MIDI channel 2, drums channel 10 (General MIDI).
DEFAULT_CHANNELS: dict[str, int] = {"piano": 0, "guitar": 1, "bass": 2, "strings": 3, "drums": 9}
CC_ALL_SOUND_OFF = 120
CC_ALL_NOTES_OFF = 123

Send = Callable[[str, mido.Message], None]


class _Pending(NamedTuple):
    start: int  # absolute step of the note-on
    seq: int  # scheduling order, so equal starts keep it (and the heap never compares the rest)
    instrument: str
    pitch: int
    velocity: int
    end: int  # absolute step of the note-off


class _Sounding(NamedTuple):
    channel: int
    end: int  # absolute step its note-off is due


def scale_velocity(velocity: int, scale: float) -> int:
    """A note's velocity times scale, clamped to 1..127 (0 would be a note-off)."""
    return int(min(127, max(1, round(velocity * scale))))


class NoteScheduler:
    """Holds the band's upcoming notes and sends them, note-offs first, as the steps come.

    Thread-safe: the clock thread calls on_step, the inference worker schedule_bar, OSC panic/mute
    call release; one lock orders all of them, and messages are sent under it so a panic can never
    interleave with half a step.
    """

    def __init__(self, send: Send, channels: Mapping[str, int] = DEFAULT_CHANNELS) -> None:
        for instrument, channel in channels.items():
            if isinstance(channel, bool) or not isinstance(channel, int):
                raise TypeError(f"channel for {instrument} must be an int, got {type(channel).__name__}")
            if not 0 <= channel <= 15:
                raise ValueError(f"channel for {instrument} is {channel}; use 0-15 (MIDI channels 1-16)")
        self._send = send
        self._channels = dict(channels)
        self._lock = threading.RLock()  # guards _pending, _sounding, _seq and _counters
        self._pending: list[_Pending] = []  # heap of note-ons not yet sent; _lock
        self._sounding: dict[tuple[str, int], _Sounding] = {}  # (instrument, pitch) sent on, not yet off; _lock
        self._seq = 0  # _lock
        self._counters: dict[str, int] = {}  # note_on, note_off, dropped_empty, late, retriggered, send_error; _lock
        self._errors = CountedLog(log)

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def sounding(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._sounding)

    def pending(self) -> int:
        """How many note-ons wait to be sent."""
        with self._lock:
            return len(self._pending)

    def schedule_bar(self, bar_start_step: int, instrument: str, notes: Sequence[Note],
                     velocity_scale: float = 1.0) -> None:
        """Queue one bar of an instrument; note steps are within the bar (end may be 32 or later)."""
        self._channel(instrument)  # validates the instrument before anything changes
        if isinstance(velocity_scale, bool) or not isinstance(velocity_scale, (int, float)):
            raise TypeError(f"velocity_scale must be a number, got {type(velocity_scale).__name__}")
        if not (math.isfinite(velocity_scale) and velocity_scale >= 0):
            raise ValueError(f"velocity_scale={velocity_scale} must be finite and >= 0")
        for note in notes:
            _check_note(note)
        with self._lock:
            for note in notes:
                if note.end <= note.start:
                    self._count("dropped_empty")
                    continue
                self._seq += 1
                heapq.heappush(self._pending, _Pending(
                    bar_start_step + note.start, self._seq, instrument, note.pitch,
                    scale_velocity(note.velocity, velocity_scale), bar_start_step + note.end,
                ))

    def on_step(self, step: int) -> None:
        """Send what is due at an absolute step: note-offs first, then note-ons.

        Everything due at or before `step` goes now, so a late call catches up; what was sent is
        gone from the queue, so nothing plays twice. A note whose end has passed too is dropped
        (counted as late) rather than sent as a blip.
        """
        with self._lock:
            for key in sorted((k for k, s in self._sounding.items() if s.end <= step),
                              key=lambda k: (self._sounding[k].end, k)):
                self._note_off(key)
            while self._pending and self._pending[0].start <= step:
                note = heapq.heappop(self._pending)
                if note.end <= step:
                    self._count("late")
                    continue
                self._note_on(note)

    def release(self, instrument: str | None = None) -> None:
        """Note-off for everything sounding (of one instrument) and drop its queued notes."""
        if instrument is not None:
            self._channel(instrument)
        with self._lock:
            for key in sorted(k for k in self._sounding if instrument in (None, k[0])):
                self._note_off(key)
            if instrument is None:
                self._pending.clear()
            else:
                self._pending = [p for p in self._pending if p.instrument != instrument]
                heapq.heapify(self._pending)

    def all_notes_off(self) -> list[mido.Message]:
        """All Notes Off on every channel we use, once each (what the daemon repeats as it exits)."""
        return [mido.Message("control_change", channel=channel, control=CC_ALL_NOTES_OFF, value=0)
                for channel in sorted(set(self._channels.values()))]

    def panic(self) -> None:
        """release(), then All Notes Off and All Sound Off on every channel we use (for hung notes
        that are not ours to know, e.g. from before a crash)."""
        with self._lock:
            self.release()
            for instrument, channel in self._channels.items():
                for control in (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF):
                    msg = mido.Message("control_change", channel=channel, control=control, value=0)
                    self._try_send(instrument, msg)

    def _note_on(self, note: _Pending) -> None:
        key = (note.instrument, note.pitch)
        if key in self._sounding:  # struck again while sounding: end the old one first
            self._count("retriggered")
            self._note_off(key)
            if key in self._sounding:
                return  # its note-off could not be sent: a second note-on would hang the synth
        channel = self._channels[note.instrument]
        msg = mido.Message("note_on", channel=channel, note=note.pitch, velocity=note.velocity)
        if self._try_send(note.instrument, msg):
            self._sounding[key] = _Sounding(channel, note.end)
            self._count("note_on")

    def _note_off(self, key: tuple[str, int]) -> None:
        channel = self._sounding[key].channel
        # Forgotten only once sent: a failed note-off is retried at the next step, release or panic.
        if self._try_send(key[0], mido.Message("note_off", channel=channel, note=key[1], velocity=0)):
            del self._sounding[key]
            self._count("note_off")

    def _try_send(self, instrument: str, msg: mido.Message) -> bool:
        try:
            self._send(instrument, msg)
            return True
        except Exception as err:  # noqa: BLE001 - a closed port must not stop the clock thread
            self._count("send_error")
            self._errors.event("send", f"sending {msg.type} to {instrument} failed: {err!r}")
            return False

    def _channel(self, instrument: str) -> int:
        try:
            return self._channels[instrument]
        except KeyError:
            raise ValueError(f"unknown instrument {instrument!r}; known: {', '.join(self._channels)}") from None

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1


def _check_note(note: Note) -> None:
    if not 0 <= note.pitch < N_PITCHES:
        raise ValueError(f"note pitch {note.pitch} is outside 0-{N_PITCHES - 1}")
    if not 1 <= note.velocity <= 127:
        raise ValueError(f"note velocity {note.velocity} is outside 1-127")
    if not 0 <= note.start < STEPS_PER_BAR:
        raise ValueError(f"note start {note.start} is outside the bar (0-{STEPS_PER_BAR - 1})")
