"""LPD-5 (the Lakh Pianoroll Dataset, five-track version) songs as vaejam bars.

An LPD-5 file is a pypianoroll `.npz`: tracks Drums, Piano, Guitar, Bass, Strings as (T, 128)
piano rolls (bool in LPD-5 cleansed, or uint8 velocities) at `resolution` steps per beat (24), with
a downbeat array. It is read with pypianoroll itself (it also reads the older `beat_resolution`
files) and brought to vaejam's grid with the rules `models.bars.midi_to_song` applies to MIDI: a
note's start and end are rounded to the nearest of the 8 steps per beat, a note keeps at least one
step, and a held step just before a new onset of the same pitch is cleared (so two notes stay two
notes). The first downbeat starts a bar; bars must be 4 beats apart (4/4, as for MIDI).
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pypianoroll

from models.bars import (
    INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, STEPS_PER_BEAT, BarFormatError, EmptySongError, MeterError,
    NoPianoError, _write_notes, instrument_for_program, roll_notes, to_uint8,
)
from training.corpus import CorpusSong

# LPD-5 stores binarized rolls; their notes get the velocity pypianoroll writes binary tracks with.
BINARY_VELOCITY = 64


class LpdReadError(BarFormatError):
    """A file that is not a readable pypianoroll npz."""


def read_lpd_file(path: str | os.PathLike) -> CorpusSong:
    """One LPD-5 `.npz` as a song of uint8 bars; raises BarFormatError (a ValueError) naming the file."""
    name = os.fspath(path)
    if Path(name).stat().st_size == 0:
        raise LpdReadError(f"{name}: empty file (0 bytes)")
    if not zipfile.is_zipfile(name):  # np.load would take it for a pickle and say so
        raise LpdReadError(f"{name}: not an npz (zip) file")
    try:
        multitrack = pypianoroll.load(name)
    except Exception as err:  # zip, json and pypianoroll's own errors all mean "not an LPD file"
        raise LpdReadError(f"{name}: not a readable pypianoroll npz ({type(err).__name__}: {err})") from err
    return CorpusSong(name=name, bars=to_uint8(multitrack_to_bars(multitrack, name)))


def multitrack_to_bars(multitrack, name: str) -> np.ndarray:
    """A pypianoroll Multitrack as (n_bars, 5, 32, 128) float32 velocity/127 bars."""
    resolution = int(multitrack.resolution)
    if resolution < 1:
        raise LpdReadError(f"{name}: resolution {resolution} steps per beat")
    shift = downbeat_shift(multitrack.downbeat, resolution, name)
    notes = {instrument: [] for instrument in INSTRUMENTS}
    for track in multitrack.tracks:
        instrument = track_instrument(track)
        if instrument is not None:
            notes[instrument].extend(track_notes(np.asarray(track.pianoroll), resolution, shift))
    if not any(notes.values()):
        raise EmptySongError(f"{name}: the file has no notes")
    if not notes["piano"]:
        raise NoPianoError(f"{name}: no notes in the Piano track")
    end = max(note[1] for part in notes.values() for note in part)
    n_bars = max(1, math.ceil(end / STEPS_PER_BAR))
    rolls = np.zeros((len(INSTRUMENTS), n_bars * STEPS_PER_BAR, N_PITCHES), np.float32)
    for i, instrument in enumerate(INSTRUMENTS):
        _write_notes(rolls[i], notes[instrument])  # the MIDI reader's writer: same overlaps and gaps
    return np.ascontiguousarray(rolls.reshape(len(INSTRUMENTS), n_bars, STEPS_PER_BAR, N_PITCHES).transpose(1, 0, 2, 3))


def track_instrument(track) -> str | None:
    """LPD-5's track names first (Drums, Piano, ...); otherwise the track's GM program family."""
    named = (track.name or "").strip().lower()
    if named in INSTRUMENTS:
        return named
    return instrument_for_program(int(track.program), bool(track.is_drum))


def track_notes(roll: np.ndarray, resolution: int, shift: int) -> list[tuple[int, int, int, int]]:
    """(start, end, pitch, velocity) on vaejam's grid from a (T, 128) roll at `resolution` steps per
    beat; `shift` fine steps of silence go first, so the first downbeat starts a bar."""
    if roll.ndim != 2 or roll.shape[1] != N_PITCHES or not roll.size:
        return []
    # pypianoroll separates repeated notes by a one-step gap, so runs of non-zero cells are notes.
    scaled = roll > 0 if roll.dtype == bool else np.clip(roll, 0, 127) / 127.0
    velocity_scale = BINARY_VELOCITY / 127.0 if roll.dtype == bool else 1.0
    found = roll_notes(np.asarray(scaled, np.float32) * velocity_scale)
    if not found:
        return []
    fine = np.array([(n.start, n.end) for n in found], np.float64) + shift
    coarse = np.rint(fine * STEPS_PER_BEAT / resolution).astype(np.int64)  # round half to even, as MIDI
    coarse[:, 1] = np.maximum(coarse[:, 1], coarse[:, 0] + 1)  # a short note keeps one step
    return [(int(s), int(e), n.pitch, n.velocity) for (s, e), n in zip(coarse, found)]


def downbeat_shift(downbeat: np.ndarray | None, resolution: int, name: str) -> int:
    """Fine steps to put before the song so its first downbeat starts a bar; MeterError unless the
    downbeats are one 4/4 bar apart. Without downbeats the song starts on a bar, as MIDI does."""
    if downbeat is None:
        return 0
    beats = np.flatnonzero(np.asarray(downbeat))
    if not beats.size:
        return 0
    bar = 4 * resolution
    gaps = np.diff(beats)
    if gaps.size and np.any(gaps != bar):
        odd = int(gaps[gaps != bar][0])
        raise MeterError(f"{name}: downbeats {odd / resolution:g} beats apart at step {int(beats[1:][gaps != bar][0])}; "
                         "vaejam plays 4/4 only")
    return int((bar - beats[0] % bar) % bar)
