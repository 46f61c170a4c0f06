"""The bar: vaejam's unit of music, and MIDI files <-> bars.

One bar is 4/4, 32 steps (8 per beat) x 128 pitches, per instrument; a song is an array
(n_bars, 5, 32, 128) of velocity/127 in [0, 1], instruments in `INSTRUMENTS` order. Time is
counted in MIDI ticks, so tempo changes inside a file never shift the grid.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pretty_midi

INSTRUMENTS: tuple[str, ...] = ("piano", "guitar", "bass", "strings", "drums")
BAND: tuple[str, ...] = INSTRUMENTS[1:]  # what the band plays; the pianist plays the piano
STEPS_PER_BEAT = 8
BEATS_PER_BAR = 4
STEPS_PER_BAR = STEPS_PER_BEAT * BEATS_PER_BAR  # 32
N_PITCHES = 128
# The pitches the band plays: MIDI 16-111, the blocks of 16 pitches around the piano's 88 keys
# (A0 = 21 to C8 = 108). Every instrument's register lies inside (General MIDI drums 27-87), the
# MMA and human corpora have 0.013 % of their band cells outside, and the shipped model played none
# there in 949,481 cells of held-out songs (BENCHMARKS.md); so the decoders' outer blocks (0-15,
# 112-127) are not computed, a quarter of each decoder's work (models.fused).
BAND_PITCHES = range(16, 112)
# General MIDI programs (0-based) the band plays back on; drums go on channel 10.
OUTPUT_PROGRAMS: dict[str, int] = {"piano": 0, "guitar": 25, "bass": 33, "strings": 48, "drums": 0}


class BarFormatError(ValueError):
    """A MIDI file that cannot be read as 4/4 bars; the message names the file."""


class MidiReadError(BarFormatError):
    """Truncated or otherwise unreadable MIDI data."""


class MeterError(BarFormatError):
    """A time signature other than 4/4."""


class NoPianoError(BarFormatError):
    """No piano part to follow."""


class EmptySongError(BarFormatError):
    """A file with no notes."""


def instrument_for_program(program: int, is_drum: bool) -> str | None:
    """LPD-5 family of a General MIDI program (0-based), or None for programs LPD-5 drops."""
    if not 0 <= program <= 127:
        raise ValueError(f"program {program} is outside 0-127")
    if is_drum:
        return "drums"
    if program < 8:
        return "piano"
    if 24 <= program < 32:
        return "guitar"
    if 32 <= program < 40:
        return "bass"
    if program < 96 or 104 <= program < 112:
        return "strings"
    return None  # 96-103 synth effects, 112-127 percussive and sound effects


class Note(NamedTuple):
    start: int  # step, from the start of the roll
    end: int  # step, exclusive
    pitch: int
    velocity: int  # 1-127


@dataclass(frozen=True)
class Song:
    """A MIDI file as bars, plus what is needed to put generated bars back on its time grid."""

    name: str
    bars: np.ndarray  # (n_bars, 5, 32, 128) float32, velocity/127
    midi: pretty_midi.PrettyMIDI  # the parsed file: tempo map and the original tracks
    piano_tracks: tuple[int, ...] = ()  # indices into midi.instruments of the part read as piano

    @property
    def tempo_bpm(self) -> float:
        return float(self.midi.get_tempo_changes()[1][0]) if len(self.midi.get_tempo_changes()[1]) else 120.0


def load_midi(path: str | os.PathLike) -> pretty_midi.PrettyMIDI:
    """Parse a MIDI file and check it is 4/4 throughout; errors name the file."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such MIDI file")
    try:
        midi = pretty_midi.PrettyMIDI(name)
    except Exception as err:  # mido/pretty_midi raise many types for bad bytes
        raise MidiReadError(f"{name}: not a readable MIDI file ({err})") from err
    for sig in midi.time_signature_changes:
        if (sig.numerator, sig.denominator) != (4, 4):
            raise MeterError(
                f"{name}: meter {sig.numerator}/{sig.denominator} at {sig.time:.2f} s; "
                "vaejam plays 4/4 only"
            )
    return midi


def describe_tracks(midi: pretty_midi.PrettyMIDI) -> str:
    """One line per track: index, name, program and LPD-5 family, for error messages."""
    lines = []
    for index, inst in enumerate(midi.instruments):
        family = instrument_for_program(inst.program, inst.is_drum) or "dropped"
        kind = "drums" if inst.is_drum else f"program {inst.program}"
        lines.append(f"  {index}: {inst.name or '(unnamed)'!r} ({kind}, {family}, {len(inst.notes)} notes)")
    return "\n".join(lines) or "  (no tracks)"


def _time_to_step(midi: pretty_midi.PrettyMIDI, seconds: float) -> float:
    return midi.time_to_tick(seconds) * STEPS_PER_BEAT / midi.resolution


def step_to_time(midi: pretty_midi.PrettyMIDI, step: float) -> float:
    """Seconds at a step of the file's own tempo map."""
    return float(midi.tick_to_time(int(round(step * midi.resolution / STEPS_PER_BEAT))))


def _note_steps(midi: pretty_midi.PrettyMIDI, note: pretty_midi.Note) -> tuple[int, int]:
    start = int(round(_time_to_step(midi, note.start)))
    end = int(round(_time_to_step(midi, note.end)))
    return start, max(end, start + 1)  # drum hits and grace notes keep one step


def _write_notes(roll: np.ndarray, notes: Iterable[tuple[int, int, int, int]]) -> None:
    """Write (start, end, pitch, velocity) into a (T, 128) roll, max velocity where notes overlap.

    A held step just before a new onset of the same pitch is cleared, so repeated notes stay
    two notes (the LPD convention of a one-step gap).
    """
    onsets = []
    for start, end, pitch, velocity in notes:
        value = velocity / 127.0
        roll[start:end, pitch] = np.maximum(roll[start:end, pitch], value)
        onsets.append((start, pitch))
    for start, pitch in onsets:
        if start >= 2 and roll[start - 1, pitch] > 0 and roll[start - 2, pitch] > 0:
            roll[start - 1, pitch] = 0.0


AUTO_TRACK = "auto"  # piano_track value: GM pianos, else the most chordal guitar/strings track
AUTO_MIN_NOTE_SHARE = 0.1  # an auto candidate needs this share of the busiest candidate's notes


def track_polyphony(midi: pretty_midi.PrettyMIDI, inst: pretty_midi.Instrument) -> float:
    """Mean number of pitches sounding at once over the steps where the track sounds; 0 without notes."""
    if not inst.notes:
        return 0.0
    spans = [(_note_steps(midi, n), n.pitch) for n in inst.notes]
    roll = np.zeros((max(end for (_, end), _ in spans), N_PITCHES), bool)  # (T, 128) sounding cells
    for (start, end), pitch in spans:
        roll[start:end, pitch] = True
    per_step = roll.sum(axis=1)
    return float(per_step[per_step > 0].mean())


def _auto_piano_tracks(midi: pretty_midi.PrettyMIDI) -> list[pretty_midi.Instrument]:
    """GM piano tracks with notes if any; else the one most chordal guitar or strings track.

    Most chordal: highest track_polyphony, ties by note count, then the earlier track. Drums, bass
    and programs LPD-5 drops never lead; nor does a track with under AUTO_MIN_NOTE_SHARE of the
    busiest candidate's notes (a few stray chords are not a part to follow).
    """
    pianos = [i for i in midi.instruments if instrument_for_program(i.program, i.is_drum) == "piano" and i.notes]
    if pianos:
        return pianos
    candidates = [i for i in midi.instruments
                  if i.notes and instrument_for_program(i.program, i.is_drum) in ("guitar", "strings")]
    if not candidates:
        return []
    busiest = max(len(i.notes) for i in candidates)
    candidates = [i for i in candidates if len(i.notes) >= AUTO_MIN_NOTE_SHARE * busiest]
    return [max(candidates, key=lambda i: (track_polyphony(midi, i), len(i.notes)))]  # max keeps the first of ties


def _select_tracks(
    midi: pretty_midi.PrettyMIDI, instrument: str, track: str | int | None
) -> list[pretty_midi.Instrument]:
    if isinstance(track, str) and track.strip().lower() == AUTO_TRACK and instrument == "piano":
        return _auto_piano_tracks(midi)
    if track is None:
        return [i for i in midi.instruments if instrument_for_program(i.program, i.is_drum) == instrument]
    if isinstance(track, int) or (isinstance(track, str) and track.isdigit()):
        index = int(track)
        if not 0 <= index < len(midi.instruments):
            raise NoPianoError(f"track index {index} is out of range")
        return [midi.instruments[index]]
    return [i for i in midi.instruments if i.name.strip().lower() == track.strip().lower()]


def midi_to_song(
    path: str | os.PathLike, piano_track: str | int | None = None, require_piano: bool = True
) -> Song:
    """Read a 4/4 MIDI file as bars of all five instruments.

    piano_track picks the piano part by track name or index; by default every piano-program
    track (GM 0-7) is merged. "auto" takes the GM pianos too, or, in a song without one, the most
    chordal guitar or strings track (`_auto_piano_tracks`). Other tracks merge by LPD-5 family; a
    track read as piano is left out of the family it would otherwise merge into.
    """
    name = os.fspath(path)
    midi = load_midi(name)
    all_notes = [n for inst in midi.instruments for n in inst.notes]
    if not all_notes:
        raise EmptySongError(f"{name}: the file has no notes")
    piano_tracks = _select_tracks(midi, "piano", piano_track)
    if require_piano and not any(t.notes for t in piano_tracks):
        wanted = ("a piano part (GM programs 1-8)" if piano_track is None
                  else "a piano or chordal guitar/strings track (auto)"
                  if str(piano_track).strip().lower() == AUTO_TRACK else f"track {piano_track!r}")
        raise NoPianoError(
            f"{name}: no notes in {wanted}; pick one with --piano-track NAME|INDEX|auto. Tracks:\n"
            + describe_tracks(midi)
        )
    end_step = max(_note_steps(midi, n)[1] for n in all_notes)
    n_bars = max(1, math.ceil(end_step / STEPS_PER_BAR))
    rolls = np.zeros((len(INSTRUMENTS), n_bars * STEPS_PER_BAR, N_PITCHES), np.float32)
    for inst in midi.instruments:
        family = "piano" if inst in piano_tracks else instrument_for_program(inst.program, inst.is_drum)
        if family is None or (family == "piano" and inst not in piano_tracks):
            continue  # dropped program, or a piano track the user did not pick
        notes = [(*_note_steps(midi, n), n.pitch, n.velocity) for n in inst.notes]
        _write_notes(rolls[INSTRUMENTS.index(family)], notes)
    bars = rolls.reshape(len(INSTRUMENTS), n_bars, STEPS_PER_BAR, N_PITCHES).transpose(1, 0, 2, 3)
    piano_indices = tuple(i for i, t in enumerate(midi.instruments) if any(t is p for p in piano_tracks))
    return Song(name=name, bars=np.ascontiguousarray(bars), midi=midi, piano_tracks=piano_indices)


def roll_to_notes(roll: np.ndarray, threshold: float = 0.0) -> list[Note]:
    """Merge held steps of a (T, 128) roll into notes; a note's velocity is its first step's."""
    if roll.ndim != 2 or roll.shape[1] != N_PITCHES:
        raise ValueError(f"expected a (T, {N_PITCHES}) roll, got shape {roll.shape}")
    on = roll > threshold
    padded = np.zeros((roll.shape[0] + 2, N_PITCHES), bool)
    padded[1:-1] = on
    change = np.diff(padded.astype(np.int8), axis=0)  # +1 at onsets, -1 one past each end
    notes = []
    for pitch in range(N_PITCHES):
        starts = np.flatnonzero(change[:, pitch] == 1)
        ends = np.flatnonzero(change[:, pitch] == -1)
        for start, end in zip(starts, ends):
            velocity = int(np.clip(round(float(roll[start, pitch]) * 127), 1, 127))
            notes.append(Note(int(start), int(end), pitch, velocity))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def bars_to_instrument(
    bars: np.ndarray, instrument: str, midi: pretty_midi.PrettyMIDI, first_bar: int = 0,
    program: int | None = None,
) -> pretty_midi.Instrument:
    """One instrument's (n_bars, 32, 128) bars as a pretty_midi track on midi's tempo map."""
    roll = bars.reshape(-1, N_PITCHES)
    is_drum = instrument == "drums"
    track = pretty_midi.Instrument(
        program=OUTPUT_PROGRAMS[instrument] if program is None else program,
        is_drum=is_drum, name=instrument,
    )
    offset = first_bar * STEPS_PER_BAR
    for note in roll_to_notes(roll):
        track.notes.append(pretty_midi.Note(
            velocity=note.velocity, pitch=note.pitch,
            start=step_to_time(midi, offset + note.start), end=step_to_time(midi, offset + note.end),
        ))
    return track


def tempo_midi(bpm: float) -> pretty_midi.PrettyMIDI:
    """An empty file at a constant tempo, 4/4, to write bars into."""
    if not (math.isfinite(bpm) and 20.0 <= bpm <= 400.0):
        raise ValueError(f"tempo {bpm} BPM is outside 20-400")
    midi = pretty_midi.PrettyMIDI(initial_tempo=float(bpm))
    midi.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    return midi


def song_to_midi(
    bars: np.ndarray, bpm: float = 120.0, instruments: Sequence[str] = INSTRUMENTS
) -> pretty_midi.PrettyMIDI:
    """A (n_bars, 5, 32, 128) song as a multi-track file at a constant tempo."""
    if bars.ndim != 4 or bars.shape[1:] != (len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES):
        raise ValueError(f"expected (n_bars, 5, 32, 128) bars, got shape {bars.shape}")
    midi = tempo_midi(bpm)
    for instrument in instruments:
        midi.instruments.append(bars_to_instrument(bars[:, INSTRUMENTS.index(instrument)], instrument, midi))
    return midi


def to_uint8(bars: np.ndarray) -> np.ndarray:
    """Bars as MIDI velocities, 20x smaller than float32, for corpora on disk."""
    return np.clip(np.rint(bars * 127), 0, 127).astype(np.uint8)


def from_uint8(bars: np.ndarray) -> np.ndarray:
    return bars.astype(np.float32) / 127.0


def roll_notes(roll: np.ndarray) -> tuple[Note, ...]:
    """models.bars.roll_to_notes without its per-pitch Python loop (10 ms -> well under 1 ms a bar,
    which matters inside the lookahead window); the same notes in the same order (tested)."""
    return rolls_notes(roll[None])[0]


def rolls_notes(rolls: np.ndarray) -> list[tuple[Note, ...]]:
    """roll_notes of each (T, P) roll of an (n, T, P) stack, in one pass: a bar's parts at once cost
    about what one part did."""
    n, steps, pitches = rolls.shape
    on = np.zeros((n, steps + 2, pitches), np.int8)  # padded with a silent step either side
    on[:, 1:-1] = rolls > 0
    change = np.diff(on, axis=1)  # (n, T + 1, P): 1 where a note starts, -1 where one ends
    # flat indices (3-D np.nonzero is ~10x slower here): starts come row, then step, then pitch
    rows, starts, pitch = np.unravel_index(np.flatnonzero(change == 1), change.shape)
    end_rows, ends, end_pitch = np.unravel_index(np.flatnonzero(change == -1), change.shape)
    paired = np.empty_like(ends)  # the k-th start of a (row, pitch) ends at its k-th end
    paired[np.lexsort((starts, pitch, rows))] = ends[np.lexsort((ends, end_pitch, end_rows))]
    velocities = np.clip(np.rint(rolls[rows, starts, pitch] * 127), 1, 127).astype(int)
    notes = list(map(Note, starts.tolist(), paired.tolist(), pitch.tolist(), velocities.tolist()))
    bounds = np.searchsorted(rows, np.arange(n + 1)).tolist()
    return [tuple(notes[bounds[i]:bounds[i + 1]]) for i in range(n)]
