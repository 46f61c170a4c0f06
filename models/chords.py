"""Chord follow: the band's pitched notes fitted, beat by beat, to the harmony the piano has played.

The networks give bar t+1's rhythm, register, voicing and contour one bar ahead; what chord the
pianist plays in bar t+1 they cannot know. So at the start of each beat, before any note of that
beat is sent, the beat's guitar, bass, strings (and echoed piano) notes are fitted to the pitch
classes the piano has sounded so far (causal: only steps before the beat), moving the fewest notes
the shortest way:

- a note whose pitch class the piano plays stays; another moves to the nearest chord tone, ties
  toward the instrument's last note (smooth voice leading), else down;
- bass: a note on the beat takes the root (the lowest chord tone the piano sounded last), the
  others the nearest chord tone, kept in the bass register (measured on human songs: root + fifth
  alone scored TD per bar 0.98 against the piano, root on the beat + chord tones 0.90, real 0.81);
- guitar and strings: an onset holding fewer than three chord tones gets the missing ones just
  above its lowest note (the data voices chords; the networks' blurred decoder thins them).

A note is re-pitched before its note-on and never while it sounds: the follower remembers which
pitches still sound, so a moved note never lands on a sounding one (that would re-trigger it).
The live session (bridge.session) and the offline render (models.render.play_bars) both call
`ChordFollower.fit_beat` with `heard_context`, so what is heard live is what render measures.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from models.bars import BAND_PITCHES, N_PITCHES, STEPS_PER_BAR, Note

STEPS_PER_BEAT = 8
BEATS_PER_BAR = STEPS_PER_BAR // STEPS_PER_BEAT
RECENCY = (1.0, 0.5, 0.25, 0.25)  # weight of the last beat heard, the one before, ... (4 beats back)
CHORD_SHARE = 0.4  # a pitch class is a chord tone when it weighs this share of the heaviest
MAX_CHORD_TONES = 4
VOICED = frozenset({"guitar", "strings"})  # parts that get chords completed to three tones
VOICE_TONES = 3
BASS_RANGE = (28, 55)  # E1 .. G3
PITCHED = frozenset({"piano", "guitar", "bass", "strings"})
PITCH_CLASS = np.arange(N_PITCHES) % 12

HARMONY_RAW, HARMONY_KEY, HARMONY_CHORDS = 0, 1, 2


class Harmony:
    """What the piano has sounded before a beat: chroma weights, chord tones and the root."""

    def __init__(self, context: np.ndarray) -> None:
        """context: (T, 128) piano roll of the steps heard, oldest first, ending just before the beat."""
        on = context[-len(RECENCY) * STEPS_PER_BEAT:] > 0  # (<=32, 128): the last four beats
        beats = [on[max(0, len(on) - (k + 1) * STEPS_PER_BEAT):len(on) - k * STEPS_PER_BEAT]
                 for k in range(len(RECENCY))]
        weights = np.zeros(len(on))  # per step, the recency weight of its beat
        for k, weight in enumerate(RECENCY):
            weights[max(0, len(on) - (k + 1) * STEPS_PER_BEAT):len(on) - k * STEPS_PER_BEAT] = weight
        per_pitch = weights @ on  # (128,) weighted steps each pitch sounded
        chroma = np.bincount(PITCH_CLASS, weights=per_pitch, minlength=12)
        self.chroma = chroma
        self.tones: frozenset[int] = frozenset()
        self.by_weight: tuple[int, ...] = ()  # the chord tones, heaviest first (voicing order)
        self.root: int | None = None
        if chroma.max() > 0:
            order = np.argsort(-chroma, kind="stable")[:MAX_CHORD_TONES]
            self.by_weight = tuple(int(pc) for pc in order if chroma[pc] >= CHORD_SHARE * chroma.max())
            self.tones = frozenset(self.by_weight)
            self.root = _lowest_class(beats, self.tones)

    def __bool__(self) -> bool:
        return bool(self.tones)


def _lowest_class(beats: list[np.ndarray], tones: frozenset[int]) -> int | None:
    """Pitch class of the lowest chord tone sounding in the most recent beat that has one."""
    for steps in beats:
        pitches = np.flatnonzero(steps.any(axis=0)) if steps.size else np.array([], int)
        for pitch in pitches:  # lowest first
            if pitch % 12 in tones:
                return int(pitch % 12)
    return None


def heard_context(previous_bar: np.ndarray, current_bar: np.ndarray, beat: int) -> np.ndarray:
    """The piano heard before beat `beat` of the current bar: the previous bar, then the current
    bar's steps before the beat. Steps at or after the beat are not heard yet, whatever the
    lookahead; (32 + 8 * beat, 128)."""
    return np.concatenate([previous_bar, current_bar[:beat * STEPS_PER_BEAT]])


def _nearest(pitch: int, classes: frozenset[int] | set[int], toward: int | None,
             busy: set[int], low: int = BAND_PITCHES.start, high: int = BAND_PITCHES.stop - 1) -> int | None:
    """The nearest pitch in [low, high] of one of `classes` that is not sounding; ties toward
    `toward` (the voice's last pitch), else down. None when none is within an octave."""
    up_wins = toward is not None and toward > pitch
    best, best_key = None, (13, 2)
    for pc in classes:  # per class, its pitches within an octave either side (3, not 25 checks)
        below = pitch - (pitch - pc) % 12  # the class's pitch at or below `pitch`
        for candidate in (below - 12, below, below + 12):
            distance = abs(candidate - pitch)
            if distance > 12 or not low <= candidate <= high or candidate in busy:
                continue
            key = (distance, 0 if distance == 0 or (candidate > pitch) == up_wins else 1)
            if key < best_key:
                best, best_key = candidate, key
        if best_key[0] == 0:
            break
    return best


class ChordFollower:
    """One stream's chord follow: the pitches still sounding and each part's last pitch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sounding: dict[str, dict[int, int]] = {}  # instrument -> pitch -> end (absolute step)
        self._last: dict[str, int] = {}  # instrument -> last pitch played (voice leading)

    def fit_beat(self, instrument: str, notes: Sequence[Note], harmony: Harmony, beat_start: int) -> list[Note]:
        """The notes of one beat (steps within their bar) fitted to `harmony`; `beat_start` is the
        beat's first step on any count that only grows (live: the clock's absolute steps). Notes of
        unpitched parts, and all notes when nothing was heard, come back unchanged."""
        if instrument not in PITCHED or not harmony:
            return list(notes)
        sounding = self._sounding.setdefault(instrument, {})
        fitted: list[Note] = []
        for note in sorted(notes, key=lambda n: (n.start, n.pitch)):
            now = beat_start + note.start % STEPS_PER_BEAT
            for pitch in [p for p, end in sounding.items() if end <= now]:
                del sounding[pitch]
            moved = self._move(instrument, note, harmony, set(sounding), note.start % STEPS_PER_BEAT == 0)
            if moved is None:
                continue
            fitted.append(moved)
            sounding[moved.pitch] = now + (moved.end - moved.start)
            self._last[instrument] = moved.pitch
        if instrument in VOICED:
            fitted = self._voice(instrument, fitted, harmony, beat_start)
        return sorted(fitted, key=lambda n: (n.start, n.pitch))

    def _move(self, instrument: str, note: Note, harmony: Harmony, busy: set[int], on_beat: bool) -> Note | None:
        toward = self._last.get(instrument)
        if instrument == "bass":
            root = harmony.root if harmony.root is not None else min(harmony.tones)
            classes = {root} if on_beat else set(harmony.tones)
            pitch = _nearest(note.pitch, classes, toward, busy, *BASS_RANGE)
            if pitch is None:  # outside the register: the root nearest the register's middle
                pitch = _nearest(sum(BASS_RANGE) // 2, classes, None, busy, *BASS_RANGE)
        else:
            pitch = _nearest(note.pitch, harmony.tones, toward, busy)
        return None if pitch is None else note._replace(pitch=pitch)

    def _voice(self, instrument: str, notes: list[Note], harmony: Harmony, beat_start: int) -> list[Note]:
        """Complete each onset to VOICE_TONES chord tones, stacked just above its lowest note."""
        sounding = self._sounding[instrument]
        out = list(notes)
        for start in sorted({n.start for n in notes}):
            group = [n for n in notes if n.start == start]
            have = {n.pitch % 12 for n in group}
            missing = [pc for pc in harmony.by_weight if pc not in have][:max(0, VOICE_TONES - len(have))]
            low = min(n.pitch for n in group)
            template = min(group, key=lambda n: n.pitch)
            now = beat_start + start % STEPS_PER_BEAT
            for pc in missing:
                pitch = _nearest(low + 1, {int(pc)}, low + 12, set(sounding) | {n.pitch for n in out},
                                 low + 1, min(BAND_PITCHES.stop - 1, low + 12))
                if pitch is None:
                    continue
                out.append(template._replace(pitch=pitch))
                sounding[pitch] = now + (template.end - template.start)
        return out


def beat_notes(notes: Sequence[Note], beat: int) -> list[Note]:
    """The notes of a bar that start in beat `beat`."""
    return [n for n in notes if beat * STEPS_PER_BEAT <= n.start < (beat + 1) * STEPS_PER_BEAT]


def notes_roll(notes: Sequence[Note]) -> np.ndarray:
    """(32, 128) roll of a bar's notes, velocity/127 (notes end at the bar's end at the latest)."""
    roll = np.zeros((STEPS_PER_BAR, N_PITCHES), np.float32)
    for note in notes:
        roll[note.start:min(note.end, STEPS_PER_BAR), note.pitch] = note.velocity / 127.0
    return roll


def fit_bar(follower: ChordFollower, parts: dict[str, Sequence[Note]], previous_piano: np.ndarray,
            current_piano: np.ndarray, bar_start: int) -> dict[str, list[Note]]:
    """A whole bar as the live session fits it, beat by beat (render and tests): beat b hears the
    previous bar and the current bar's steps before b."""
    fitted: dict[str, list[Note]] = {name: [] for name in parts}
    for beat in range(BEATS_PER_BAR):
        harmony = Harmony(heard_context(previous_piano, current_piano, beat))
        for name, notes in parts.items():
            fitted[name] += follower.fit_beat(name, beat_notes(notes, beat), harmony,
                                              bar_start + beat * STEPS_PER_BEAT)
    return fitted
