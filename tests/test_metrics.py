"""Objective metrics on hand-made bars with answers worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bars import INSTRUMENTS, roll_to_notes
from training.metrics import (
    TD_PAIRS,
    drum_pattern_rate,
    empty_bar_rate,
    format_metrics_table,
    pitch_class_histogram_entropy,
    qualified_note_rate,
    reconstruction_f1,
    shuffled_bars,
    song_metrics,
    tonal_distance,
    transpose_metrics,
    used_pitch_classes,
)

C_MAJOR = (60, 64, 67)  # C4 E4 G4
A_MINOR = (57, 60, 64)
F_SHARP_MAJOR = (66, 70, 73)


def held(pitches: tuple[int, ...], n_bars: int = 1, velocity: float = 0.8) -> np.ndarray:
    """(n_bars, 32, 128) with the pitches held through every bar."""
    bars = np.zeros((n_bars, 32, 128), np.float32)
    bars[:, :, list(pitches)] = velocity
    return bars


def hits(steps: list[int], pitch: int = 36, n_bars: int = 1) -> np.ndarray:
    """One-step hits at the given steps of every bar."""
    bars = np.zeros((n_bars, 32, 128), np.float32)
    bars[:, steps, pitch] = 1.0
    return bars


# --- tonal distance ---------------------------------------------------------------------------

def test_td_same_triad_is_zero_in_any_voicing() -> None:
    assert tonal_distance(held(C_MAJOR), held(C_MAJOR)) == 0.0
    open_voicing = held((48, 55, 76))  # C3 G3 E5: same pitch classes
    assert tonal_distance(held(C_MAJOR), open_voicing) == pytest.approx(0.0, abs=1e-12)


def test_td_orders_chords_by_harmonic_closeness() -> None:
    far = tonal_distance(held(C_MAJOR), held(F_SHARP_MAJOR))
    near = tonal_distance(held(C_MAJOR), held(A_MINOR))
    assert far > 1.5
    assert near < far
    assert tonal_distance(held(F_SHARP_MAJOR), held(C_MAJOR)) == pytest.approx(far)


def test_td_single_notes_match_hand_computed_centroids() -> None:
    # C: (0, 1, 0, 1, 0, .5). G (pc 7): fifths angle 49pi/6 -> (.5, .866); minor thirds 21pi/2 -> (1, 0);
    # major thirds 14pi/3 -> .5 * (.866, -.5). Distance = sqrt(.25 + .018 + 1 + 1 + .1875 + .5625).
    assert tonal_distance(held((60,)), held((67,))) == pytest.approx(1.73722, abs=1e-4)
    # the tritone sits opposite on the fifths and minor-third circles and level on major thirds
    assert tonal_distance(held((60,)), held((66,))) == pytest.approx(2 * math.sqrt(2))


def test_td_chroma_is_pitch_mod_12_not_adjacent_semitones() -> None:
    assert tonal_distance(held((60,)), held((72,))) == pytest.approx(0.0, abs=1e-12)  # octave
    # MuseGAN's reshape puts neighbouring semitones in one bin, which would make this 0
    assert tonal_distance(held((60,)), held((61,))) > 2.0


def test_td_counts_only_beats_where_both_play() -> None:
    a = held((60,))
    b = np.zeros_like(a)
    b[0, 0:8, 67] = 1.0  # G only in beat 1; beats 2-4 of b are silent and ignored
    assert tonal_distance(a, b) == pytest.approx(tonal_distance(held((60,)), held((67,))))
    assert math.isnan(tonal_distance(a, np.zeros_like(a)))


def test_td_weights_chroma_by_held_cells_per_beat() -> None:
    a = np.zeros((1, 32, 128), np.float32)
    a[0, 0:8, 60] = 1.0  # C held the whole beat
    a[0, 0:1, 66] = 1.0  # F# for one step: 1/9 of the beat's chroma
    mostly_c = tonal_distance(a, held((60,)))
    assert 0.0 < mostly_c < tonal_distance(held((60, 66)), held((60,)))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(0, 115), min_size=1, max_size=4),
    st.lists(st.integers(0, 115), min_size=1, max_size=4),
    st.integers(1, 12),
)
def test_td_is_transposition_invariant(pa: list[int], pb: list[int], shift: int) -> None:
    # transposing both tracks rotates every circle by the same angle: distances stay
    before = tonal_distance(held(tuple(pa)), held(tuple(pb)))
    after = tonal_distance(held(tuple(p + shift for p in pa)), held(tuple(p + shift for p in pb)))
    assert after == pytest.approx(before, abs=1e-9)


# --- per-bar metrics --------------------------------------------------------------------------

def test_upc_counts_pitch_classes_not_pitches() -> None:
    assert used_pitch_classes(held(C_MAJOR)) == 3.0
    assert used_pitch_classes(held((48, 60))) == 1.0  # C3 and C4 are one pitch class
    assert used_pitch_classes(held((60, 61))) == 2.0


def test_upc_averages_non_empty_bars_only() -> None:
    bars = np.concatenate([held(C_MAJOR), np.zeros((1, 32, 128), np.float32), held((60,))])
    assert used_pitch_classes(bars) == 2.0  # (3 + 1) / 2, the empty bar left out
    assert math.isnan(used_pitch_classes(np.zeros((2, 32, 128), np.float32)))


def test_eb_one_empty_bar_of_three() -> None:
    bars = held(C_MAJOR, n_bars=3)
    bars[1] = 0.0
    assert empty_bar_rate(bars) == pytest.approx(1 / 3)
    assert empty_bar_rate(bars * 0.1, threshold=0.2) == 1.0  # quiet decoder output is silence


def test_dp_four_on_the_floor_and_offbeat_32nds() -> None:
    kick_and_hats = hits([0, 8, 16, 24]) + hits(list(range(0, 32, 4)), pitch=42)
    assert drum_pattern_rate(kick_and_hats) == 1.0
    assert drum_pattern_rate(hits(list(range(1, 32, 2)))) == 0.0
    assert drum_pattern_rate(hits([0, 2, 4, 6])) == 0.5  # 16ths between the 8ths miss the grid
    assert math.isnan(drum_pattern_rate(np.zeros((1, 32, 128), np.float32)))


def test_dp_counts_onsets_not_held_cells() -> None:
    roll = hits([0, 8, 16, 24], n_bars=2)
    roll[:, 1:4, 36] = 1.0  # the first kick rings for 4 steps: still one on-grid onset
    assert drum_pattern_rate(roll) == 1.0


def test_qn_counts_notes_of_at_least_a_16th() -> None:
    bars = np.zeros((1, 32, 128), np.float32)
    bars[0, 0, 60] = 1.0  # 1 step: a 32nd, not qualified
    bars[0, 4:6, 62] = 1.0  # 2 steps: a 16th
    bars[0, 8:16, 64] = 1.0  # a beat
    assert qualified_note_rate(bars) == pytest.approx(2 / 3)
    assert math.isnan(qualified_note_rate(np.zeros((1, 32, 128), np.float32)))


def test_qn_note_tied_over_the_bar_line_is_one_note() -> None:
    bars = np.zeros((2, 32, 128), np.float32)
    bars[0, 31, 60] = 1.0
    bars[1, 0, 60] = 1.0  # 1 step in each bar, 2 steps as played
    assert qualified_note_rate(bars) == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_qn_agrees_with_roll_to_notes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bars = (rng.random((3, 32, 128)) < 0.3).astype(np.float32)
    lengths = [n.end - n.start for n in roll_to_notes(bars.reshape(-1, 128))]
    assert qualified_note_rate(bars) == pytest.approx(np.mean(np.array(lengths) >= 2))


def test_pitch_class_entropy() -> None:
    assert pitch_class_histogram_entropy(held((60, 72))) == 0.0  # one pitch class
    assert pitch_class_histogram_entropy(held(C_MAJOR)) == pytest.approx(math.log2(3))
    every_class = np.zeros((1, 32, 128), np.float32)
    every_class[0, np.arange(12) * 2, 60 + np.arange(12)] = 1.0
    assert pitch_class_histogram_entropy(every_class) == pytest.approx(math.log2(12))


def test_reconstruction_f1_known_overlap() -> None:
    target = np.zeros((1, 32, 128), np.float32)
    target[0, 0:4, 60] = 0.7  # 4 cells
    predicted = np.zeros_like(target)
    predicted[0, 2:5, 60] = 0.9  # 3 cells, 2 of them right
    predicted[0, 10, 70] = 0.1  # below the threshold: not a prediction
    precision, recall, f1 = reconstruction_f1(target, predicted, threshold=0.2)
    assert (precision, recall) == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    assert f1 == pytest.approx(4 / 7)
    assert reconstruction_f1(target, predicted)[0] == pytest.approx(2 / 4)  # threshold 0 counts it
    assert reconstruction_f1(np.zeros_like(target), np.zeros_like(target)) == (1.0, 1.0, 1.0)
    assert reconstruction_f1(target, np.zeros_like(target))[2] == 0.0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: empty_bar_rate(np.zeros((32, 128))), "bars"),
        (lambda: drum_pattern_rate(np.zeros((1, 16, 128))), "drum_bars"),
        (lambda: tonal_distance(held((60,)), held((60,), n_bars=2)), "bars_b"),
        (lambda: reconstruction_f1(np.zeros((1, 32, 128)), np.zeros((2, 32, 128))), "predicted_bars"),
        (lambda: song_metrics(np.zeros((1, 4, 32, 128))), "bars"),
    ],
)
def test_wrong_shapes_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


# --- songs ------------------------------------------------------------------------------------

PROGRESSION = ((60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62))  # I vi IV V in C


def i_vi_iv_v_song(n_bars: int = 16) -> np.ndarray:
    """Every part follows the chord of the bar: piano triads, guitar up an octave, bass roots,
    strings the third and fifth, drums rock beat."""
    song = np.zeros((n_bars, 5, 32, 128), np.float32)
    for bar in range(n_bars):
        root, third, fifth = PROGRESSION[bar % 4]
        song[bar, 0, :, [root, third, fifth]] = 0.7
        for beat in range(4):
            song[bar, 1, beat * 8:beat * 8 + 6, [root + 12, third + 12, fifth + 12]] = 0.6
        for step in range(0, 32, 4):
            song[bar, 2, step:step + 3, root - 24] = 0.8
        song[bar, 3, :, [third + 12, fifth + 12]] = 0.5
        song[bar, 4, [0, 16], 36] = 1.0
        song[bar, 4, [8, 24], 38] = 1.0
        song[bar, 4, 0:32:4, 42] = 0.6
    return song


def test_song_metrics_keys_and_values_on_a_full_song() -> None:
    metrics = song_metrics(i_vi_iv_v_song())
    expected = {f"EB/{name}" for name in INSTRUMENTS} | {"DP/drums"}
    expected |= {f"{m}/{name}" for m in ("UPC", "QN", "PCE") for name in ("piano", "guitar", "bass", "strings")}
    expected |= {f"TD/{a}-{b}" for a, b in TD_PAIRS}
    assert set(metrics) == expected
    assert {"TD/bass-guitar", "TD/piano-guitar"} <= set(metrics)
    assert not any(math.isnan(v) for v in metrics.values())
    assert metrics["EB/guitar"] == 0.0
    assert metrics["UPC/piano"] == 3.0 and metrics["UPC/bass"] == 1.0
    assert metrics["DP/drums"] == 1.0 and metrics["QN/bass"] == 1.0
    assert metrics["TD/piano-guitar"] == pytest.approx(0.0, abs=1e-12)  # same triads an octave up


def test_shuffled_bars_permutes_each_band_part_and_keeps_the_piano() -> None:
    song = i_vi_iv_v_song()
    shuffled = shuffled_bars(song, np.random.default_rng(0))
    assert np.array_equal(shuffled[:, 0], song[:, 0])
    for i in range(1, 5):
        assert sorted(map(bytes, shuffled[:, i])) == sorted(map(bytes, song[:, i]))  # same bars
    assert not np.array_equal(shuffled[:, 1:], song[:, 1:])
    again = shuffled_bars(song, np.random.default_rng(0))
    assert np.array_equal(shuffled, again)


@pytest.mark.parametrize("seed", range(3))
def test_shuffled_bars_raise_tonal_distance_on_a_harmonic_song(seed: int) -> None:
    song = i_vi_iv_v_song()
    shuffled = shuffled_bars(song, np.random.default_rng(seed))
    real, baseline = song_metrics(song), song_metrics(shuffled)
    for a, b in TD_PAIRS:
        key = f"TD/{a}-{b}"
        assert baseline[key] > real[key], key
    # shuffling moves bars, not their contents
    assert baseline["UPC/guitar"] == real["UPC/guitar"] and baseline["EB/bass"] == real["EB/bass"]


def test_format_metrics_table() -> None:
    systems = {
        "training data": {"EB/guitar": 0.25, "TD/piano-guitar": 1.0},
        "vaejam": {"EB/guitar": 0.5, "TD/piano-guitar": math.nan},
        "shuffled bars": {"TD/piano-guitar": 1.25},
    }
    table = format_metrics_table(transpose_metrics(systems))
    assert table.splitlines() == [
        "| metric | training data | vaejam | shuffled bars |",
        "|---|---:|---:|---:|",
        "| EB/guitar | 0.250 | 0.500 |  |",
        "| TD/piano-guitar | 1.000 | n/a | 1.250 |",
    ]
