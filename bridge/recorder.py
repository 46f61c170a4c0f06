"""Takes: the piano as played and every band part, as one multi-track .mid, safe against a kill.

Each flush rewrites the whole take atomically (a temporary file, then os.replace), so whatever kills
the process, the take on disk is a complete file that loses at most what came after the last
flush (the bar in progress). The first write gives the take its name with a hard link (O_EXCL
where links are not supported), so no take is overwritten and no empty take is ever left. The
temporary file is made by tempfile (a random name, O_EXCL | O_NOFOLLOW), so a symlink planted in
the folder is never written through.

A write that fails (disk full, read-only folder) never raises: the take keeps recording in memory,
the file on disk stays the last complete one, `error` says why in a line (logged once, and once
when writing works again) and the next flush tries again.

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
import errno
import functools
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Mapping

import mido

from bridge.clock import MAX_BPM, MIN_BPM
from bridge.scheduler import DEFAULT_CHANNELS
from models.bars import INSTRUMENTS, N_PITCHES, OUTPUT_PROGRAMS, STEPS_PER_BEAT, STEPS_PER_BAR, Note

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 480
TICKS_PER_STEP = TICKS_PER_BEAT // STEPS_PER_BEAT  # 60
LAG_STEPS = 4 * STEPS_PER_BAR  # notes up to 4 bars older than a track's newest may still arrive cheaply
DRUM_CHANNEL = 9
NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)  # e.g. FAT on a USB stick
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

    start() while recording changes nothing (a repeated /vaejam/record 1 is not a new take).
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
        self._lock = threading.Lock()  # guards the take below: state, path, tracks, tempo map, errors
        self._active = False  # a take is being recorded (in memory, if not yet on disk); _lock
        self._stamp = ""  # the take's start time, for its name; _lock
        self.path: Path | None = None  # the take on disk, None until its first write succeeds; _lock
        self._tracks: dict[str, _NoteTrack] = {}  # _lock
        self._tempos: list[tuple[int, float]] = []  # (tick, bpm), in tick order; _lock
        self.error = ""  # why the last write failed, "" when it worked; _lock
        self.failed_writes = 0  # writes that failed, over this recorder's life; _lock
        self.clamped_tempos = 0  # tempos outside MIN_BPM-MAX_BPM (or NaN) clamped or ignored; _lock

    @property
    def recording(self) -> bool:
        return self._active

    def start(self, bpm: float) -> Path | None:
        """Begin a take; its path, or None while it cannot be written (see `error`)."""
        with self._lock:
            if self._active:
                return self.path
            self._tempos = [(0, self._clamp_bpm(bpm, 120.0))]
            self._active, self.path = True, None
            self._stamp = self._now().strftime("%Y%m%d-%H%M%S")
            self._tracks = {name: self._new_track(name) for name in INSTRUMENTS}
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
            if not self._active:
                return
            track = self._tracks[instrument]
            for note in notes:
                start = (offset_step + note.start) * TICKS_PER_STEP
                end = (offset_step + max(note.end, note.start + 1)) * TICKS_PER_STEP
                track.add(start, end, note.pitch, note.velocity)

    def set_tempo(self, step: int, bpm: float) -> None:
        """A tempo from `step` on; one outside MIN_BPM-MAX_BPM is clamped, NaN ignored (counted):
        a tempo estimate's spike must not cost the take its bar."""
        _check_step(step, "step")
        with self._lock:
            if not self._active:
                return
            tick = step * TICKS_PER_STEP
            kept = [(t, b) for t, b in self._tempos if t < tick]
            previous = kept[-1][1] if kept else self._tempos[0][1]
            self._tempos = kept + [(tick, self._clamp_bpm(bpm, previous))]

    def flush(self) -> None:
        """Rewrite the whole take atomically; old events are encoded once, so this stays cheap."""
        with self._lock:
            if not self._active:
                return
            for track in self._tracks.values():
                track.commit()
            self._write()

    def stop(self) -> Path | None:
        """Write the take a last time and end it; the finished take's path (None if none reached
        the disk)."""
        self.flush()
        with self._lock:
            path, self.path, self._active = self.path, None, False
            self._tracks = {}
            error = self.error
        if path is not None:
            log.info("take saved: %s%s", path, f" (its last bars are missing: {error})" if error else "")
        elif error:
            log.error("take lost: %s", error)
        return path

    def _new_track(self, name: str) -> _NoteTrack:
        channel = self._channels[name]
        program = None if channel == DRUM_CHANNEL else OUTPUT_PROGRAMS[name]
        return _NoteTrack(name, channel, program)

    def _clamp_bpm(self, bpm: float, fallback: float) -> float:
        if isinstance(bpm, bool) or not isinstance(bpm, (int, float)):
            raise TypeError(f"bpm must be a number, got {type(bpm).__name__}")
        if MIN_BPM <= bpm <= MAX_BPM:
            return float(bpm)
        self.clamped_tempos += 1
        return fallback if math.isnan(bpm) else min(max(float(bpm), MIN_BPM), MAX_BPM)

    def _names(self) -> Iterable[Path]:
        for n in range(1, 10_000):
            yield self.directory / (f"take-{self._stamp}.mid" if n == 1 else f"take-{self._stamp}-{n}.mid")

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
        """Write the whole take; a failure is kept in `error`, never raised (see the module doc)."""
        tracks = [self._tempo_chunk()] + [self._tracks[name].chunk() for name in INSTRUMENTS]
        header = _chunk(b"MThd", (1).to_bytes(2, "big") + len(tracks).to_bytes(2, "big")
                        + TICKS_PER_BEAT.to_bytes(2, "big"))
        try:
            tmp = self._write_temporary(header + b"".join(tracks))
            try:
                if self.path is None:
                    self.path = self._publish_new(tmp)
                else:
                    os.replace(tmp, self.path)  # replaces a planted symlink itself, not its target
            finally:
                if tmp.exists():
                    tmp.unlink()
        except OSError as err:
            self._failed(f"cannot write take {self.path or self.directory}: {err.strerror or err}")
            return
        if self.error:
            log.info("take %s written again after: %s", self.path, self.error)
            self.error = ""

    def _write_temporary(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix=".take-", suffix=".tmp", dir=self.directory)
        tmp = Path(name)
        try:
            os.fchmod(fd, 0o644)  # a take is for other programs to read (mkstemp makes 0600)
            _write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
        except OSError:
            os.close(fd)
            tmp.unlink()
            raise
        os.close(fd)
        return tmp

    def _publish_new(self, tmp: Path) -> Path:
        """Give the complete temporary file the first free take name: a link never replaces a file."""
        for path in self._names():
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
            except OSError as err:
                if err.errno not in NO_LINKS:
                    raise
            try:  # no hard links here: reserve the name, then replace the empty file at once
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644))
            except FileExistsError:
                continue
            try:
                os.replace(tmp, path)
            except OSError:
                path.unlink()  # the empty file just reserved: never leave a take no reader opens
                raise
            return path
        raise OSError(errno.EEXIST, f"no free take name for {self._stamp}")

    def _failed(self, message: str) -> None:
        self.failed_writes += 1
        if message != self.error:  # one line when writing starts failing, not one per bar
            log.error("%s; recording goes on and the next bar's write tries again", message)
        self.error = message


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
