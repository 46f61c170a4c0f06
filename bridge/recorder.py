"""Takes: the piano as played and every band part, as one multi-track .mid, safe against a kill.

Each flush rewrites the whole take atomically (a temporary file, then os.replace), so whatever kills
the process, the take on disk is a complete file that loses at most what came after the last
flush (the bar in progress). A take's name is reserved with O_EXCL, so no take is overwritten.

Rewriting a long take every bar must stay cheap: each track keeps the bytes of its old events
(before a horizon LAG_STEPS behind its newest note) encoded once, and re-encodes only the recent
tail. A note that arrives older than the horizon (held for more than LAG_STEPS) makes that track
re-encode from scratch once: correct, just slower.

Layout (SMF type 1, 480 ticks per beat = 60 per step): track 0 is the tempo map (4/4); then one
track per instrument in INSTRUMENTS order, named after it, on its channel (piano 1, guitar 2,
bass 3, strings 4, drums 10) with its General MIDI program from models.bars.OUTPUT_PROGRAMS.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping

import mido

from bridge.clock import check_bpm
from bridge.scheduler import DEFAULT_CHANNELS
from models.bars import INSTRUMENTS, N_PITCHES, OUTPUT_PROGRAMS, STEPS_PER_BEAT, STEPS_PER_BAR, Note

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 480
TICKS_PER_STEP = TICKS_PER_BEAT // STEPS_PER_BEAT  # 60
LAG_STEPS = 4 * STEPS_PER_BAR  # notes up to 4 bars older than a track's newest may still arrive cheaply
DRUM_CHANNEL = 9
_END_OF_TRACK = b"\x00" + bytes(mido.MetaMessage("end_of_track").bytes())  # with its delta time


def _vlq(value: int) -> bytes:
    """A MIDI file variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


@functools.lru_cache(maxsize=4096)
def _raw_message(kind: str, channel: int, pitch: int, velocity: int) -> bytes:
    """A note message's bytes; cached, as the recent bars are re-encoded at every flush."""
    return bytes(mido.Message(kind, channel=channel, note=pitch, velocity=velocity).bytes())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return kind + len(data).to_bytes(4, "big") + data


class _NoteTrack:
    """One instrument's track: encoded old events plus the notes still open to change.

    Notes are [start, end, pitch, velocity, on_written] in ticks. Two notes of one pitch never
    overlap in the file (readers pair note-offs differently): the earlier one is cut at the later
    one's start, as a synth would hear it.
    """

    def __init__(self, name: str, channel: int, program: int | None) -> None:
        self._channel = channel
        head = [mido.MetaMessage("track_name", name=name)]
        if program is not None:
            head.append(mido.Message("program_change", channel=channel, program=program))
        self._head = b"".join(b"\x00" + bytes(m.bytes()) for m in head)
        self._all: list[tuple[int, int, int, int]] = []  # every note added, to re-encode from scratch
        self._reset()

    def _reset(self) -> None:
        self._written = bytearray(self._head)  # encoded events before the horizon
        self._written_tick = 0  # tick of the last encoded event (deltas continue from it)
        self._open: list[list[int]] = []  # notes whose note-off is not encoded yet
        self._horizon = 0  # no note may start before this tick without a re-encode
        self._newest = 0  # latest note start seen

    def add(self, start: int, end: int, pitch: int, velocity: int) -> None:
        self._all.append((start, end, pitch, velocity))
        if start < self._horizon:  # older than what is already encoded: start over
            self._reset()
            for note in sorted(self._all):
                self._open_note(*note)
        else:
            self._open_note(start, end, pitch, velocity)

    def _open_note(self, start: int, end: int, pitch: int, velocity: int) -> None:
        self._open.append([start, end, pitch, velocity, 0])
        self._newest = max(self._newest, start)

    def commit(self) -> None:
        """Encode, once and for all, events before the horizon."""
        horizon = max(self._horizon, self._newest - LAG_STEPS * TICKS_PER_STEP)
        events = self._events(before=horizon)
        self._written += self._encode(events, self._written_tick)
        if events:
            self._written_tick = events[-1][0]
        self._open = [n for n in self._open if n[1] >= horizon]
        self._horizon = horizon

    def chunk(self) -> bytes:
        tail = self._events(before=None)
        return _chunk(b"MTrk", bytes(self._written) + self._encode(tail, self._written_tick) + _END_OF_TRACK)

    def _events(self, before: int | None) -> list[tuple[int, int, int, bytes]]:
        """(tick, off-before-on, pitch, raw) of open notes' unwritten events before a tick (None: all).
        Marks note-ons as written when `before` is given."""
        self._resolve_overlaps()
        events = []
        for note in self._open:
            start, end, pitch, velocity, on_written = note
            if not on_written and (before is None or start < before):
                events.append((start, 1, pitch, self._raw("note_on", pitch, velocity)))
                if before is not None:
                    note[4] = 1
            if before is None or end < before:
                events.append((end, 0, pitch, self._raw("note_off", pitch, 0)))
        events.sort(key=lambda e: e[:3])
        return events

    def _resolve_overlaps(self) -> None:
        self._open.sort(key=lambda n: (n[2], n[0], -n[4]))  # by pitch, start; a written note-on first
        kept: list[list[int]] = []
        for note in self._open:
            prev = kept[-1] if kept and kept[-1][2] == note[2] else None
            if prev is not None and prev[1] > note[0]:
                if prev[0] == note[0]:  # same onset: one note, the longer and (unless already
                    prev[1] = max(prev[1], note[1])  # written) the louder, whatever order they came in
                    if not prev[4]:
                        prev[3] = max(prev[3], note[3])
                    continue
                prev[1] = note[0]
            kept.append(note)
        self._open = kept

    def _raw(self, kind: str, pitch: int, velocity: int) -> bytes:
        return _raw_message(kind, self._channel, pitch, velocity)

    @staticmethod
    def _encode(events: list[tuple[int, int, int, bytes]], last_tick: int) -> bytes:
        out = bytearray()
        for tick, _, _, raw in events:
            out += _vlq(tick - last_tick) + raw
            last_tick = tick
        return bytes(out)


class TakeRecorder:
    """Records takes into a directory; thread-safe (one lock), and a no-op while not recording.

    start() while recording finalises the current take and begins a new one.
    """

    def __init__(self, directory: str | os.PathLike, channels: Mapping[str, int] = DEFAULT_CHANNELS,
                 fsync: bool = False, now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot create the takes folder {self.directory}: {err.strerror}") from err
        missing = [i for i in INSTRUMENTS if i not in channels]
        if missing:
            raise ValueError(f"no channel for {', '.join(missing)}")
        self._channels = dict(channels)
        self._fsync = fsync  # os.replace alone survives a killed process; fsync also a power cut
        self._now = now
        self._lock = threading.Lock()  # guards the take below: path, tracks, tempo map
        self.path: Path | None = None  # the take being written; _lock
        self._tracks: dict[str, _NoteTrack] = {}  # _lock
        self._tempos: list[tuple[int, float]] = []  # (tick, bpm), in tick order; _lock

    @property
    def recording(self) -> bool:
        return self.path is not None

    def start(self, bpm: float) -> Path:
        bpm = check_bpm(bpm)
        self.stop()
        with self._lock:
            self.path = self._reserve_name()
            self._tracks = {name: self._new_track(name) for name in INSTRUMENTS}
            self._tempos = [(0, bpm)]
            self._write()
            return self.path

    def add_notes(self, instrument: str, notes: Iterable[Note], offset_step: int) -> None:
        """Notes with steps relative to offset_step (steps since the take began); a zero-length
        note keeps one step, as the played piano's grace notes should."""
        if instrument not in INSTRUMENTS:
            raise ValueError(f"unknown instrument {instrument!r}; use one of {', '.join(INSTRUMENTS)}")
        _check_step(offset_step, "offset_step")
        notes = list(notes)
        for note in notes:
            _check_note(note, offset_step)
        with self._lock:
            if self.path is None:
                return
            track = self._tracks[instrument]
            for note in notes:
                start = (offset_step + note.start) * TICKS_PER_STEP
                end = (offset_step + max(note.end, note.start + 1)) * TICKS_PER_STEP
                track.add(start, end, note.pitch, note.velocity)

    def set_tempo(self, step: int, bpm: float) -> None:
        _check_step(step, "step")
        bpm = check_bpm(bpm)
        with self._lock:
            if self.path is None:
                return
            tick = step * TICKS_PER_STEP
            self._tempos = [(t, b) for t, b in self._tempos if t < tick] + [(tick, bpm)]

    def flush(self) -> None:
        """Rewrite the whole take atomically; old events are encoded once, so this stays cheap."""
        with self._lock:
            if self.path is None:
                return
            for track in self._tracks.values():
                track.commit()
            self._write()

    def stop(self) -> Path | None:
        """Write the take a last time and end it; the finished take's path (None if none)."""
        self.flush()
        with self._lock:
            path, self.path = self.path, None
            self._tracks = {}
        if path is not None:
            log.info("take saved: %s", path)
        return path

    def _new_track(self, name: str) -> _NoteTrack:
        channel = self._channels[name]
        program = None if channel == DRUM_CHANNEL else OUTPUT_PROGRAMS[name]
        return _NoteTrack(name, channel, program)

    def _reserve_name(self) -> Path:
        stamp = self._now().strftime("%Y%m%d-%H%M%S")
        for n in range(1, 10_000):
            path = self.directory / (f"take-{stamp}.mid" if n == 1 else f"take-{stamp}-{n}.mid")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return path
            except FileExistsError:
                continue
            except OSError as err:
                raise OSError(err.errno, f"cannot create take {path}: {err.strerror}") from err
        raise OSError(f"no free take name for {stamp} in {self.directory}")

    def _tempo_chunk(self) -> bytes:
        events = [mido.MetaMessage("track_name", name="vaejam take"),
                  mido.MetaMessage("time_signature", numerator=4, denominator=4)]
        data = bytearray(b"".join(b"\x00" + bytes(m.bytes()) for m in events))
        last = 0
        for tick, bpm in self._tempos:
            data += _vlq(tick - last) + bytes(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)).bytes())
            last = tick
        return _chunk(b"MTrk", bytes(data) + _END_OF_TRACK)

    def _write(self) -> None:
        assert self.path is not None
        tracks = [self._tempo_chunk()] + [self._tracks[name].chunk() for name in INSTRUMENTS]
        header = _chunk(b"MThd", (1).to_bytes(2, "big") + len(tracks).to_bytes(2, "big")
                        + TICKS_PER_BEAT.to_bytes(2, "big"))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "wb") as file:
                file.write(header)
                for chunk in tracks:
                    file.write(chunk)
                if self._fsync:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            raise OSError(err.errno, f"cannot write take {self.path}: {err.strerror}") from err


def _check_step(step: int, name: str) -> None:
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"{name} must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"{name}={step} is negative")


def _check_note(note: Note, offset_step: int) -> None:
    if not 0 <= note.pitch < N_PITCHES:
        raise ValueError(f"note pitch {note.pitch} is outside 0-{N_PITCHES - 1}")
    if not 1 <= note.velocity <= 127:
        raise ValueError(f"note velocity {note.velocity} is outside 1-127")
    if offset_step + note.start < 0:
        raise ValueError(f"note starts before the take (step {offset_step + note.start})")
