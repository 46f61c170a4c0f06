"""Objective metrics for bars (MuseGAN, Dong et al. 2018), pure numpy.

Every metric takes one instrument's bars, (n_bars, 32, 128) velocity/127, and counts a cell as
active when its value is above `threshold` (0.0: any velocity; pass the generation threshold for raw
decoder output). Notes are runs of held cells per pitch on the bars laid end to end, as
`models.bars.roll_to_notes` and playback see them, so a note tied over a bar line is one note.

Deliberate differences from the MuseGAN code and pypianoroll (their numbers are not directly
comparable with ours):
- chroma is pitch mod 12; their reshape sums blocks of adjacent semitones instead;
- QN counts notes of at least 2 steps (a 16th): on our 8-steps-per-beat grid one step is a 32nd, so
  "at least a 32nd" would always be 1.0; 2 steps is a quarter beat, the same musical length as
  their code's threshold on 12 steps per beat;
- DP counts onsets (not held cells) on the 8th-note grid (steps divisible by 4), with no partial
  credit for near misses; MuseGAN used 16ths with 0.1 credit for near misses, so its published 88.6 %
  is not comparable (grid_steps=2 gives a 16th-grid DP on our rolls);
- UPC averages over non-empty bars only (theirs counts empty bars as 0, mixing EB into UPC);
- TD weighs a beat's chroma by active-cell counts, not summed velocities.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, STEPS_PER_BEAT

PITCHED: tuple[str, ...] = ("piano", "guitar", "bass", "strings")
DP_GRID_STEPS = 4  # an 8th note at 8 steps per beat
QN_MIN_STEPS = 2  # a 16th note at 8 steps per beat
# TD pairs, named as in MuseGAN's table for the band and piano-first against the pianist.
TD_PAIRS: tuple[tuple[str, str], ...] = (
    ("bass", "guitar"), ("bass", "strings"), ("guitar", "strings"),
    ("piano", "guitar"), ("piano", "bass"), ("piano", "strings"),
)

# Published LPD training-data values (MuseGAN, Rock), as fractions; computed with their chroma
# reshape and 48-steps-per-bar grid, so a reference for scale, not a target to match.
MUSEGAN_TRAINING_DATA: dict[str, float] = {
    "EB/bass": 0.0806, "EB/drums": 0.0806, "EB/guitar": 0.194, "EB/piano": 0.248, "EB/strings": 0.101,
    "UPC/bass": 1.71, "UPC/guitar": 3.08, "UPC/piano": 3.28, "UPC/strings": 3.38,
    "QN/bass": 0.900, "QN/guitar": 0.819, "QN/piano": 0.884, "QN/strings": 0.896, "DP/drums": 0.886,
    "TD/bass-guitar": 1.57, "TD/bass-strings": 1.58, "TD/guitar-strings": 1.10,
    "TD/piano-bass": 1.51, "TD/piano-guitar": 1.02, "TD/piano-strings": 1.04,
}
MUSEGAN_SHUFFLED_TD: dict[str, float] = {
    "TD/bass-guitar": 1.59, "TD/bass-strings": 1.59, "TD/guitar-strings": 1.14,
    "TD/piano-bass": 1.56, "TD/piano-guitar": 1.12, "TD/piano-strings": 1.13,
}


def _tonal_matrix(r1: float = 1.0, r2: float = 1.0, r3: float = 0.5) -> np.ndarray:
    """(6, 12) projection of pitch classes onto circles of fifths, minor and major thirds (Harte)."""
    steps = np.arange(12)
    rows = []
    for radius, angle in ((r1, 7 * np.pi / 6), (r2, 3 * np.pi / 2), (r3, 2 * np.pi / 3)):
        rows += [radius * np.sin(steps * angle), radius * np.cos(steps * angle)]
    return np.stack(rows)


TONAL_MATRIX = _tonal_matrix()


def _check_bars(bars: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(bars)
    if arr.ndim != 3 or arr.shape[1:] != (STEPS_PER_BAR, N_PITCHES):
        raise ValueError(
            f"{name}: expected one instrument's bars (n_bars, {STEPS_PER_BAR}, {N_PITCHES}), "
            f"got shape {arr.shape}"
        )
    return arr


def _check_song(bars: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(bars)
    if arr.ndim != 4 or arr.shape[1:] != (len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES):
        raise ValueError(f"{name}: expected a song (n_bars, 5, 32, 128), got shape {arr.shape}")
    return arr


def _chroma(counts: np.ndarray) -> np.ndarray:
    """(..., 128) -> (..., 12), summing each pitch class over octaves (pitch mod 12)."""
    padded = np.zeros(counts.shape[:-1] + (132,), counts.dtype)  # 11 whole octaves
    padded[..., :N_PITCHES] = counts
    return padded.reshape(counts.shape[:-1] + (11, 12)).sum(axis=-2)


def _roll(active: np.ndarray) -> np.ndarray:
    """(n, 32, 128) -> (n*32, 128): bars end to end, so notes may run over bar lines."""
    return active.reshape(-1, N_PITCHES)


def _note_lengths(roll: np.ndarray) -> np.ndarray:
    """Length in steps of every note of a (T, 128) bool roll, as roll_to_notes splits them."""
    padded = np.zeros((N_PITCHES, roll.shape[0] + 2), np.int8)
    padded[:, 1:-1] = roll.T  # pitch-major with zero borders: no run crosses from one pitch to the next
    change = np.diff(padded, axis=1).ravel()
    return np.flatnonzero(change == -1) - np.flatnonzero(change == 1)


def _onsets(roll: np.ndarray) -> np.ndarray:
    """(T, 128) bool: cells where a note starts (active, and not held from the step before)."""
    onsets = roll.copy()
    onsets[1:] &= ~roll[:-1]
    return onsets


def empty_bar_rate(bars: np.ndarray, threshold: float = 0.0) -> float:
    """EB: fraction of bars with no active cell; NaN for no bars."""
    active = _check_bars(bars, "bars") > threshold
    if len(active) == 0:
        return math.nan
    return float(1.0 - active.any(axis=(1, 2)).mean())


def used_pitch_classes(bars: np.ndarray, threshold: float = 0.0) -> float:
    """UPC: mean number of distinct pitch classes per non-empty bar; NaN if every bar is empty."""
    active = _check_bars(bars, "bars") > threshold
    per_bar = np.count_nonzero(_chroma(active.any(axis=1)), axis=-1)  # (n,)
    played = per_bar[per_bar > 0]
    return float(played.mean()) if len(played) else math.nan


def qualified_note_rate(bars: np.ndarray, threshold: float = 0.0, min_steps: int = QN_MIN_STEPS) -> float:
    """QN: fraction of notes at least `min_steps` long (2 = a 16th); NaN if there are no notes.

    MuseGAN asks for "at least a 32nd", but our whole grid is 32nds, which would make QN always
    1.0; 2 steps keeps it telling fragmented output (single-step blips) from held notes.
    """
    lengths = _note_lengths(_roll(_check_bars(bars, "bars") > threshold))
    return float(np.mean(lengths >= min_steps)) if len(lengths) else math.nan


def drum_pattern_rate(drum_bars: np.ndarray, threshold: float = 0.0, grid_steps: int = DP_GRID_STEPS) -> float:
    """DP: fraction of drum onsets on the 8th-note grid (steps divisible by 4); NaN for no onsets.

    The 8th grid follows SEED_NOTES: at coarse resolutions a 16th grid holds every step, making DP
    trivially 1.0. On our 32nd grid, grid_steps=2 gives MuseGAN's 16th-note version.
    """
    onsets = _onsets(_roll(_check_bars(drum_bars, "drum_bars") > threshold))
    total = np.count_nonzero(onsets)
    # bars are 32 steps, a multiple of the grid, so the roll's step index mod 4 is the bar's
    return float(np.count_nonzero(onsets[::grid_steps]) / total) if total else math.nan


def pitch_class_histogram_entropy(bars: np.ndarray, threshold: float = 0.0) -> float:
    """PCE: Shannon entropy (bits, 0 to log2(12)) of the pitch classes of all note onsets; NaN if none.

    Each note counts once, however long (as muspy's pitch_class_entropy).
    """
    onsets = _onsets(_roll(_check_bars(bars, "bars") > threshold))
    histogram = _chroma(onsets.sum(axis=0)).astype(np.float64)  # (12,)
    total = histogram.sum()
    if total == 0:
        return math.nan
    p = histogram[histogram > 0] / total
    return float(-(p * np.log2(p)).sum() + 0.0)  # + 0.0 turns -0.0 into 0.0


def _beat_centroids(bars: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per beat: (n*4, 6) tonal centroids and (n*4,) whether the beat has any note."""
    counts = (bars > threshold).reshape(-1, STEPS_PER_BEAT, N_PITCHES).sum(axis=1)  # (n*4, 128)
    chroma = _chroma(counts).astype(np.float64)  # (n*4, 12) active cells per pitch class
    total = chroma.sum(axis=1)
    played = total > 0
    chroma[played] /= total[played, None]  # L1 = 1; silent beats stay zero and are masked out
    return chroma @ TONAL_MATRIX.T, played


def tonal_distance(bars_a: np.ndarray, bars_b: np.ndarray, threshold: float = 0.0) -> float:
    """TD (Harte et al. 2006): mean Euclidean distance between two tracks' per-beat tonal centroids.

    Only beats where both tracks have notes count; NaN if there are none. 0 for the same harmony
    in any voicing; larger the further apart the chords sit on the circles of fifths and thirds.
    """
    a = _check_bars(bars_a, "bars_a")
    b = _check_bars(bars_b, "bars_b")
    if a.shape != b.shape:
        raise ValueError(f"bars_b: shape {b.shape} does not match bars_a's {a.shape}")
    centroid_a, played_a = _beat_centroids(a, threshold)
    centroid_b, played_b = _beat_centroids(b, threshold)
    both = played_a & played_b
    if not both.any():
        return math.nan
    return float(np.linalg.norm(centroid_a[both] - centroid_b[both], axis=1).mean())


def _window_centroids(bars: np.ndarray, threshold: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window of `steps` steps: (n*32/steps, 6) tonal centroids and whether the window has a note.

    The method of _beat_centroids (active cells per pitch class, L1-normalised) on any window size.
    """
    counts = (bars > threshold).reshape(-1, steps, N_PITCHES).sum(axis=1)  # (windows, 128)
    chroma = _chroma(counts).astype(np.float64)  # (windows, 12)
    total = chroma.sum(axis=1)
    played = total > 0
    chroma[played] /= total[played, None]
    return chroma @ TONAL_MATRIX.T, played


def _windowed_tonal_distance(bars_a: np.ndarray, bars_b: np.ndarray, threshold: float, steps: int) -> float:
    a = _check_bars(bars_a, "bars_a")
    b = _check_bars(bars_b, "bars_b")
    if a.shape != b.shape:
        raise ValueError(f"bars_b: shape {b.shape} does not match bars_a's {a.shape}")
    centroid_a, played_a = _window_centroids(a, threshold, steps)
    centroid_b, played_b = _window_centroids(b, threshold, steps)
    both = played_a & played_b
    if not both.any():
        return math.nan
    return float(np.linalg.norm(centroid_a[both] - centroid_b[both], axis=1).mean())


def tonal_distance_per_beat(bars_a: np.ndarray, bars_b: np.ndarray, threshold: float = 0.0) -> float:
    """TD per beat (chroma of each beat), averaged over beats where both tracks sound: `tonal_distance`."""
    return _windowed_tonal_distance(bars_a, bars_b, threshold, STEPS_PER_BEAT)


def tonal_distance_per_bar(bars_a: np.ndarray, bars_b: np.ndarray, threshold: float = 0.0) -> float:
    """TD with each bar's chroma summed over the whole bar, averaged over bars where both sound; NaN if none.

    Kinder than per beat to a part that plays the bar's chord tones one after another (a walking
    bass, an arpeggio), which per beat reads as one pitch class against the piano's triad.
    """
    return _windowed_tonal_distance(bars_a, bars_b, threshold, STEPS_PER_BAR)


def _check_pair(part_bars: np.ndarray, piano_bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    part = _check_bars(part_bars, "part_bars")
    piano = _check_bars(piano_bars, "piano_bars")
    if part.shape != piano.shape:
        raise ValueError(f"piano_bars: shape {piano.shape} does not match part_bars' {part.shape}")
    return part, piano


def chord_tone_rate(part_bars: np.ndarray, piano_bars: np.ndarray, threshold: float = 0.0) -> float:
    """Share of the part's note onsets whose pitch class the piano sounds somewhere in the same bar.

    Onsets as the other metrics see notes (bars end to end, a tied note starts once); NaN if none.
    """
    part, piano = _check_pair(part_bars, piano_bars)
    onsets = _onsets(_roll(part > threshold)).reshape(part.shape)  # (n, 32, 128)
    piano_classes = _chroma((piano > threshold).any(axis=1)) > 0  # (n, 12) classes the piano sounds
    bar, _, pitch = np.nonzero(onsets)
    if len(bar) == 0:
        return math.nan
    return float(piano_classes[bar, pitch % 12].mean())


def pitch_classes_per_bar(part_bars: np.ndarray, threshold: float = 0.0) -> float:
    """Mean number of distinct pitch classes in the part's non-empty bars; NaN if all are empty (= UPC)."""
    return used_pitch_classes(_check_bars(part_bars, "part_bars"), threshold)


def copy_rate(part_bars: np.ndarray, piano_bars: np.ndarray, threshold: float = 0.0) -> float:
    """Share of the part's sounding cells (bar, step, pitch) that the piano sounds too; NaN if none.

    1.0 is a part that only doubles the piano: what a band that echoes its input scores.
    """
    part, piano = _check_pair(part_bars, piano_bars)
    sounding = part > threshold
    total = np.count_nonzero(sounding)
    return float(np.count_nonzero(sounding & (piano > threshold)) / total) if total else math.nan


def polyphony(part_bars: np.ndarray, threshold: float = 0.0) -> float:
    """Mean number of pitches sounding at once over the steps where the part sounds; NaN if silent."""
    per_step = np.count_nonzero(_check_bars(part_bars, "part_bars") > threshold, axis=-1).ravel()
    played = per_step[per_step > 0]
    return float(played.mean()) if len(played) else math.nan


HARMONY_PARTS: tuple[str, ...] = ("guitar", "bass", "strings")  # the band parts measured against the piano
HARMONY_METRICS: tuple[str, ...] = (
    "tonal_distance_per_beat", "tonal_distance_per_bar", "chord_tone_rate", "pitch_classes_per_bar",
    "copy_rate", "polyphony",
)


def harmony_report(bars: np.ndarray, threshold: float = 0.0) -> dict[str, dict[str, float]]:
    """{guitar|bass|strings: {metric: value}} of one (n_bars, 5, 32, 128) song against its piano.

    Metric names are HARMONY_METRICS; NaN where a part (or the piano) has nothing to measure.
    """
    song = _check_song(bars, "bars")
    piano = song[:, INSTRUMENTS.index("piano")]
    report = {}
    for name in HARMONY_PARTS:
        part = song[:, INSTRUMENTS.index(name)]
        report[name] = {
            "tonal_distance_per_beat": tonal_distance_per_beat(piano, part, threshold),
            "tonal_distance_per_bar": tonal_distance_per_bar(piano, part, threshold),
            "chord_tone_rate": chord_tone_rate(part, piano, threshold),
            "pitch_classes_per_bar": pitch_classes_per_bar(part, threshold),
            "copy_rate": copy_rate(part, piano, threshold),
            "polyphony": polyphony(part, threshold),
        }
    return report


def mean_harmony_report(reports: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Average harmony_report over songs, each song weighing the same; a song's NaN is left out.

    NaN where no song has a value. Raises ValueError for no reports.
    """
    if not reports:
        raise ValueError("reports: no songs to average")
    out: dict[str, dict[str, float]] = {}
    for part in reports[0]:
        out[part] = {}
        for metric in reports[0][part]:
            values = np.array([r[part][metric] for r in reports], np.float64)
            values = values[~np.isnan(values)]
            out[part][metric] = float(values.mean()) if len(values) else math.nan
    return out


def reconstruction_f1(
    target_bars: np.ndarray, predicted_bars: np.ndarray, threshold: float = 0.0
) -> tuple[float, float, float]:
    """(precision, recall, F1) of active cells: target active above 0, prediction above `threshold`.

    Any shape ending in (32, 128). With nothing predicted precision is 1 (no false alarms), with
    nothing to find recall is 1 (nothing missed): both empty scores (1, 1, 1), one empty F1 0.
    """
    target = np.asarray(target_bars)
    predicted = np.asarray(predicted_bars)
    if target.ndim < 2 or target.shape[-2:] != (STEPS_PER_BAR, N_PITCHES):
        raise ValueError(f"target_bars: expected shape (..., 32, 128), got {target.shape}")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted_bars: shape {predicted.shape} does not match target_bars' {target.shape}")
    true_on, pred_on = target > 0.0, predicted > threshold
    hits = np.count_nonzero(true_on & pred_on)
    n_pred, n_true = np.count_nonzero(pred_on), np.count_nonzero(true_on)
    precision = hits / n_pred if n_pred else 1.0
    recall = hits / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def song_metrics(bars: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """All metrics of one (n_bars, 5, 32, 128) song: EB for every instrument, UPC/QN/PCE for the
    pitched ones, DP for drums, TD for `TD_PAIRS`. NaN where an instrument has nothing to measure.

    Bars of several songs laid end to end pool them (notes may then run from one song into the next).
    """
    song = _check_song(bars, "bars")
    part = {name: song[:, i] for i, name in enumerate(INSTRUMENTS)}
    out = {f"EB/{name}": empty_bar_rate(part[name], threshold) for name in INSTRUMENTS}
    for name in PITCHED:
        out[f"UPC/{name}"] = used_pitch_classes(part[name], threshold)
        out[f"QN/{name}"] = qualified_note_rate(part[name], threshold)
        out[f"PCE/{name}"] = pitch_class_histogram_entropy(part[name], threshold)
    out["DP/drums"] = drum_pattern_rate(part["drums"], threshold)
    for a, b in TD_PAIRS:
        out[f"TD/{a}-{b}"] = tonal_distance(part[a], part[b], threshold)
    return out


def shuffled_bars(bars: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """TD baseline: a copy with each band instrument's bars permuted independently; piano kept.

    Every bar stays a real bar of the song, but harmony no longer lines up with the piano or with
    the other instruments, so TD against it shows what "unrelated" scores on this song.
    """
    song = _check_song(bars, "bars")
    out = song.copy()
    for i in range(1, len(INSTRUMENTS)):  # 0 is the piano the band follows
        out[:, i] = song[rng.permutation(len(song)), i]
    return out


def transpose_metrics(systems: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """{system: {metric: value}} (song_metrics per system) -> {metric: {system: value}} for the table."""
    rows: dict[str, dict[str, float]] = {}
    for system, metrics in systems.items():
        for metric, value in metrics.items():
            rows.setdefault(metric, {})[system] = value
    return rows


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per metric, one column per system ({metric: {system: value}}).

    Columns appear in first-seen order; a system without a metric leaves the cell blank and NaN
    reads "n/a". Use transpose_metrics on {system: song_metrics(...)} to build `rows`.
    """
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    lines = [
        "| metric | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for metric, values in rows.items():
        lines.append(f"| {metric} | " + " | ".join(_cell(values.get(c)) for c in columns) + " |")
    return "\n".join(lines)


DRUM_METRICS: tuple[str, ...] = ("empty_bars", "drum_pattern")


def band_report(bars: np.ndarray, threshold: float = 0.0) -> dict[str, dict[str, float]]:
    """harmony_report plus each part's empty-bar rate, and {drums: {empty_bars, drum_pattern}} (DP).

    One (n_bars, 5, 32, 128) song against its piano; average songs with mean_harmony_report.
    """
    song = _check_song(bars, "bars")
    report = harmony_report(song, threshold)
    for name in HARMONY_PARTS:
        report[name]["empty_bars"] = empty_bar_rate(song[:, INSTRUMENTS.index(name)], threshold)
    drums = song[:, INSTRUMENTS.index("drums")]
    report["drums"] = {"empty_bars": empty_bar_rate(drums, threshold),
                       "drum_pattern": drum_pattern_rate(drums, threshold)}
    return report


def note_difference(bars_a: np.ndarray, bars_b: np.ndarray, threshold: float = 0.0) -> float:
    """Share of the band's notes, in either of two renders of one song, that the other lacks.

    A note is (instrument, onset step, pitch) of guitar, bass, strings or drums, onsets as the
    other metrics see them (bars end to end); 0 for the same notes, 1 for none in common, 0 when
    neither render has a note.
    """
    a = _check_song(bars_a, "bars_a")
    b = _check_song(bars_b, "bars_b")
    if a.shape != b.shape:
        raise ValueError(f"bars_b: shape {b.shape} does not match bars_a's {a.shape}")
    changed = union = 0
    for i in range(1, len(INSTRUMENTS)):  # 0 is the piano the band follows
        on_a = _onsets(_roll(a[:, i] > threshold))
        on_b = _onsets(_roll(b[:, i] > threshold))
        changed += np.count_nonzero(on_a ^ on_b)
        union += np.count_nonzero(on_a | on_b)
    return float(changed / union) if union else 0.0


__all__ = [
    "DRUM_METRICS", "band_report", "note_difference",
    "HARMONY_METRICS", "HARMONY_PARTS", "chord_tone_rate", "copy_rate", "harmony_report",
    "mean_harmony_report", "pitch_classes_per_bar", "polyphony", "tonal_distance_per_bar",
    "tonal_distance_per_beat",
    "MUSEGAN_SHUFFLED_TD", "MUSEGAN_TRAINING_DATA", "PITCHED", "TD_PAIRS", "TONAL_MATRIX",
    "drum_pattern_rate", "empty_bar_rate", "format_metrics_table", "pitch_class_histogram_entropy",
    "qualified_note_rate", "reconstruction_f1", "shuffled_bars", "song_metrics", "tonal_distance",
    "transpose_metrics", "used_pitch_classes",
]
