"""Objective metrics on hand-made bars with answers worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bars import INSTRUMENTS, roll_to_notes
from training.metrics import (
    DRUM_METRICS,
    HARMONY_METRICS,
    band_report,
    note_difference,
    TD_PAIRS,
    chord_tone_rate,
    copy_rate,
    harmony_report,
    mean_harmony_report,
    pitch_classes_per_bar,
    polyphony,
    tonal_distance_per_bar,
    tonal_distance_per_beat,
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


# --- harmony against the piano ------------------------------------------------------------------

def notes(*spans: tuple[int, int, int, int], n_bars: int = 1) -> np.ndarray:
    """(n_bars, 32, 128) from (bar, start step, end step, pitch) spans; an end past 32 runs on."""
    roll = np.zeros((n_bars * 32, 128), np.float32)
    for bar, start, end, pitch in spans:
        roll[bar * 32 + start:bar * 32 + end, pitch] = 0.8
    return roll.reshape(n_bars, 32, 128)


@pytest.mark.parametrize("seed", range(4))
def test_td_per_beat_is_tonal_distance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = (rng.random((3, 32, 128)) > 0.97).astype(np.float32), (rng.random((3, 32, 128)) > 0.97).astype(np.float32)
    assert tonal_distance_per_beat(a, b) == pytest.approx(tonal_distance(a, b), abs=1e-12)


def test_td_per_bar_sums_chroma_over_the_bar() -> None:
    arpeggio = notes((0, 0, 8, 48), (0, 8, 16, 52), (0, 16, 24, 55))  # C E G, a beat each, then a rest
    piano = held(C_MAJOR)
    assert tonal_distance_per_bar(piano, arpeggio) == pytest.approx(0.0, abs=1e-12)  # same chroma over the bar
    single = [tonal_distance(held((p,)), piano) for p in C_MAJOR]  # what each sounding beat scores
    assert tonal_distance_per_beat(piano, arpeggio) == pytest.approx(np.mean(single))
    assert tonal_distance_per_beat(piano, arpeggio) > 0.5


def test_td_per_bar_counts_only_bars_where_both_sound() -> None:
    piano = held(C_MAJOR, n_bars=2)
    part = notes((0, 0, 32, 66), n_bars=2)  # F# in bar 0 only
    assert tonal_distance_per_bar(piano, part) == pytest.approx(tonal_distance(held(C_MAJOR), held((66,))))
    assert math.isnan(tonal_distance_per_bar(notes((0, 0, 4, 60), n_bars=2), notes((1, 0, 4, 60), n_bars=2)))


def test_chord_tone_rate_counts_onsets_against_the_bars_piano_classes() -> None:
    piano = np.concatenate([held(C_MAJOR), held(A_MINOR)])  # C E G, then A C E
    part = notes(
        (0, 0, 4, 36), (0, 8, 12, 62), (0, 16, 20, 76), (0, 24, 28, 43),  # C2 D E5 G2: 3 of 4 chord tones
        (1, 0, 4, 45), (1, 8, 12, 47),  # A2 B2: 1 of 2
        n_bars=2,
    )
    assert chord_tone_rate(part, piano) == pytest.approx(4 / 6)
    assert math.isnan(chord_tone_rate(np.zeros_like(part), piano))


def test_chord_tone_rate_a_tied_note_counts_once_in_the_bar_it_starts() -> None:
    piano = np.concatenate([held((60,)), held((67,))])  # C, then G
    tied = notes((0, 24, 40, 55), n_bars=2)  # G3 from bar 0 into bar 1: one onset, in bar 0
    assert chord_tone_rate(tied, piano) == 0.0
    restruck = notes((0, 24, 31, 55), (1, 0, 8, 55), n_bars=2)  # two notes: the second is a chord tone
    assert chord_tone_rate(restruck, piano) == pytest.approx(0.5)


def test_pitch_classes_per_bar_counts_classes_in_non_empty_bars() -> None:
    part = notes((0, 0, 8, 60), (0, 8, 16, 72), (0, 16, 24, 64), (2, 0, 8, 62), n_bars=3)  # C C E | - | D
    assert pitch_classes_per_bar(part) == pytest.approx(1.5)
    assert math.isnan(pitch_classes_per_bar(np.zeros((2, 32, 128))))


def test_copy_rate_is_the_share_of_cells_the_piano_also_sounds() -> None:
    piano = notes((0, 0, 32, 60))
    part = notes((0, 0, 16, 60), (0, 0, 16, 64))  # 16 of 32 cells on the piano's C4
    assert copy_rate(part, piano) == pytest.approx(0.5)
    assert copy_rate(notes((0, 0, 16, 72)), piano) == 0.0  # an octave up is not a copy
    assert copy_rate(piano, piano) == 1.0
    quiet = piano * 0.3 / 0.8  # velocity 0.3: under the threshold, the piano does not sound
    assert copy_rate(part, quiet, threshold=0.5) == 0.0
    assert math.isnan(copy_rate(np.zeros_like(piano), piano))


def test_polyphony_is_the_mean_over_sounding_steps() -> None:
    part = notes((0, 0, 8, 60), (0, 0, 8, 64), (0, 0, 8, 67), (0, 8, 16, 72), n_bars=2)  # 3 then 1, then silence
    assert polyphony(part) == pytest.approx(2.0)
    assert polyphony(held(C_MAJOR, n_bars=3)) == 3.0
    assert math.isnan(polyphony(np.zeros((1, 32, 128))))


def test_harmony_report_on_a_song_that_follows_its_piano() -> None:
    song = i_vi_iv_v_song()
    report = harmony_report(song)
    assert set(report) == {"guitar", "bass", "strings"}
    assert all(tuple(values) == HARMONY_METRICS for values in report.values())
    guitar, bass, strings = report["guitar"], report["bass"], report["strings"]
    assert guitar["tonal_distance_per_beat"] == pytest.approx(0.0, abs=1e-12)  # triads an octave up
    assert guitar["tonal_distance_per_bar"] == pytest.approx(0.0, abs=1e-12)
    assert guitar["chord_tone_rate"] == bass["chord_tone_rate"] == strings["chord_tone_rate"] == 1.0
    assert (guitar["pitch_classes_per_bar"], bass["pitch_classes_per_bar"], strings["pitch_classes_per_bar"]) == (3, 1, 2)
    assert (guitar["polyphony"], bass["polyphony"], strings["polyphony"]) == (3, 1, 2)
    assert guitar["copy_rate"] == 0.0 and bass["copy_rate"] == 0.0
    echo = song.copy()
    echo[:, 1] = echo[:, 0]  # a guitar that doubles the piano
    assert harmony_report(echo)["guitar"]["copy_rate"] == 1.0
    silent = song.copy()
    silent[:, 3] = 0
    assert all(math.isnan(v) for v in harmony_report(silent)["strings"].values())


def test_mean_harmony_report_weighs_songs_equally_and_skips_nan() -> None:
    song = i_vi_iv_v_song(4)
    silent = song.copy()
    silent[:, 3] = 0
    busy = song.copy()
    busy[:, 3, :, 80] = 0.5  # the strings add a G#: one more class, one more pitch at once
    mean = mean_harmony_report([harmony_report(song), harmony_report(busy), harmony_report(silent)])
    assert mean["strings"]["pitch_classes_per_bar"] == pytest.approx((2 + 3) / 2)  # the silent song left out
    assert mean["strings"]["polyphony"] == pytest.approx((2 + 3) / 2)
    assert mean["guitar"]["polyphony"] == 3.0
    assert all(math.isnan(v) for v in mean_harmony_report([harmony_report(silent)])["strings"].values())
    with pytest.raises(ValueError, match="^reports:"):
        mean_harmony_report([])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: copy_rate(held((60,)), held((60,), n_bars=2)), "piano_bars"),
        (lambda: chord_tone_rate(np.zeros((32, 128)), held((60,))), "part_bars"),
        (lambda: polyphony(np.zeros((1, 16, 128))), "part_bars"),
        (lambda: tonal_distance_per_bar(held((60,)), held((60,), n_bars=2)), "bars_b"),
        (lambda: harmony_report(np.zeros((1, 4, 32, 128))), "bars"),
    ],
)
def test_harmony_metrics_wrong_shapes_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


def test_band_report_adds_empty_bars_and_the_drums_to_harmony_report() -> None:
    song = i_vi_iv_v_song(4)
    song[1, 3] = 0.0  # the strings rest in one bar of four
    report = band_report(song)
    assert set(report) == {"guitar", "bass", "strings", "drums"}
    assert tuple(report["drums"]) == DRUM_METRICS
    harmony = harmony_report(song)
    for part in ("guitar", "bass", "strings"):
        assert {k: v for k, v in report[part].items() if k != "empty_bars"} == harmony[part]
    assert (report["guitar"]["empty_bars"], report["strings"]["empty_bars"]) == (0.0, 0.25)
    assert report["drums"] == {"empty_bars": 0.0, "drum_pattern": 1.0}  # every hit on the 8th grid
    song[:, 4] = 0.0
    assert band_report(song)["drums"]["empty_bars"] == 1.0
    assert math.isnan(band_report(song)["drums"]["drum_pattern"])


def test_note_difference_is_the_share_of_band_notes_in_one_render_only() -> None:
    song = i_vi_iv_v_song(1)  # band notes: guitar 12, bass 8, strings 2, drums 12
    assert note_difference(song, song.copy()) == 0.0
    other = song.copy()
    other[:, 0] = 0.0  # the piano is not the band's
    assert note_difference(song, other) == 0.0
    root = PROGRESSION[0][0] - 24
    other[0, 2, 0:3, root] = 0.0
    other[0, 2, 0:3, root + 2] = 0.8  # one bass note moved: 1 gone, 1 new, 35 in either
    assert note_difference(song, other) == pytest.approx(2 / 35)
    assert note_difference(other, song) == pytest.approx(2 / 35)
    silent = np.zeros_like(song)
    assert note_difference(song, silent) == 1.0
    assert note_difference(silent, silent) == 0.0
    with pytest.raises(ValueError, match="^bars_b:"):
        note_difference(song, i_vi_iv_v_song(2))
