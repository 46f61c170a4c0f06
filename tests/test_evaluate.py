"""`vaejam eval`: the causal rule baseline, the report's numbers, and the files the command writes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bridge.cli import main
from models.bars import INSTRUMENTS
from models.checkpoint import load_band_model
from tests.conftest import band_song
from training.baselines_rule import one_bar_late, rule_alone
from training.corpus import load_corpus, split_path, write_corpus
from training.evaluate import (
    NOISE_LEVELS, PART_METRICS, SYSTEMS, VARIATION_HARMONY, cell_difference, evaluate, picture_names,
    picture_start,
)
from training.metrics import (
    DRUM_METRICS, HARMONY_METRICS, band_report, chord_tone_rate, tonal_distance_per_bar,
)

PIANO, BASS, DRUMS = (INSTRUMENTS.index(name) for name in ("piano", "bass", "drums"))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    """Two valid songs of 8 bars in two keys (and a train split, as load_corpus expects one beside)."""
    root = tmp_path_factory.mktemp("corpus")
    for split in ("train", "valid"):
        songs = [(f"{split}{k}", np.rint(np.roll(band_song(8), k, axis=-1) * 127).astype(np.uint8)) for k in (0, 2)]
        write_corpus(split_path(root, split), songs)
    return str(root)


def test_one_bar_late_keeps_the_piano_and_delays_the_band() -> None:
    bars = band_song(4)
    late = one_bar_late(bars)
    np.testing.assert_array_equal(late[:, PIANO], bars[:, PIANO])
    np.testing.assert_array_equal(late[1:, 1:], bars[:-1, 1:])
    assert not late[0, 1:].any()


def test_the_causal_rule_fits_late_parts_to_the_piano_and_keeps_their_rhythm() -> None:
    bars = band_song(8)  # one chord a bar: one bar late, every band part plays the last bar's chord
    late = one_bar_late(bars)
    rule, fit_ms = rule_alone(bars)
    assert len(fit_ms) == len(bars) - 1 and min(fit_ms) >= 0
    assert not rule[0, 1:].any()  # nothing is played before the piano has been heard
    np.testing.assert_array_equal(rule[:, PIANO], bars[:, PIANO])
    np.testing.assert_allclose(rule[:, DRUMS], late[:, DRUMS], atol=0.5 / 127)  # drums are not pitched
    onsets = lambda song: (song[:, BASS] > 0).any(axis=-1)  # (n, 32): the steps that sound
    np.testing.assert_array_equal(onsets(rule), onsets(late))
    piano = bars[1:, PIANO]
    for part in ("guitar", "bass"):  # notes on beats 2-4 hear the new chord and move to it
        i = INSTRUMENTS.index(part)
        assert chord_tone_rate(rule[1:, i], piano) > chord_tone_rate(late[1:, i], piano), part
        assert tonal_distance_per_bar(piano, rule[1:, i]) < tonal_distance_per_bar(piano, late[1:, i]), part
    # the strings' chord starts on beat 1, before any of the new bar is heard: causally, it stays
    strings = INSTRUMENTS.index("strings")
    assert tonal_distance_per_bar(piano, rule[1:, strings]) == pytest.approx(
        tonal_distance_per_bar(piano, late[1:, strings]))


def test_cell_difference() -> None:
    a = band_song(2)
    b = a.copy()
    assert cell_difference(a, b) == 0.0
    b[:, 0] = 0.0  # the piano is not the band
    assert cell_difference(a, b) == 0.0
    b[:, 1:] = 0.0
    assert cell_difference(a, b) == 1.0
    assert cell_difference(b, b) == 0.0


@pytest.fixture(scope="module")
def evaluation(corpus_dir, tiny_model_dir):
    return evaluate(load_band_model(tiny_model_dir), load_corpus(corpus_dir, "valid"), songs=2, max_bars=6)


def test_evaluate_measures_every_system_part_and_metric(evaluation, corpus_dir) -> None:
    result = evaluation.result
    assert result["songs"] == 2 and result["max_bars"] == 6
    parts = result["parts"]
    assert list(parts) == [s.key for s in SYSTEMS]
    assert set(PART_METRICS) == set(HARMONY_METRICS) | {"empty_bars"}  # every metric has a column
    for report in parts.values():
        assert set(report) == {"guitar", "bass", "strings", "drums"}
        assert set(report["drums"]) == set(DRUM_METRICS)
        assert all(set(report[p]) == set(PART_METRICS) for p in ("guitar", "bass", "strings"))
    # the real row is the two songs' own band_report over bars 1-5, averaged song by song
    corpus = load_corpus(corpus_dir, "valid")
    songs = [band_report(corpus.float_bars(slice(s, s + 6))[1:]) for s in corpus.song_starts[:2]]
    expected = np.mean([r["bass"]["tonal_distance_per_beat"] for r in songs])
    assert parts["real"]["bass"]["tonal_distance_per_beat"] == pytest.approx(expected)
    assert parts["real"]["drums"]["empty_bars"] == 0.0
    assert parts["late"]["bass"]["copy_rate"] == parts["real"]["bass"]["copy_rate"]  # never on the piano


def test_evaluate_reports_variation_times_and_pictures(evaluation) -> None:
    result = evaluation.result
    variation = result["variation"]
    assert variation["noise_levels"] == list(NOISE_LEVELS)
    for harmony in map(str, VARIATION_HARMONY):
        curve = variation["noise"][harmony]
        assert len(curve) == len(NOISE_LEVELS) and curve[0] == 0.0  # noise_sd 0 against itself
        assert all(0.0 <= x <= 1.0 for x in curve) and max(curve) > 0.0  # noise changes the band
        assert 0.0 < variation["seeds"][harmony]["notes"] <= 1.0
    # renders per song: harmony 0, 1, 2, then per varied harmony seed 1 and each noise level
    renders = 3 + len(VARIATION_HARMONY) * (1 + len(NOISE_LEVELS))
    assert result["step_ms"]["bars"] == 2 * renders * 5
    assert result["fit_ms"]["bars"] == 2 * 5
    assert 0 < result["step_ms"]["p50"] <= result["step_ms"]["p99"]
    assert set(result["reconstruction_f1"]) == {"0.2", "calibrated"}
    assert evaluation.example == result["example"]["song"] == "valid0"
    assert result["example"]["first_bar"] == 0
    assert set(evaluation.example_bars) == {s.key for s in SYSTEMS}
    assert all(bars.shape == (6, 5, 32, 128) for bars in evaluation.example_bars.values())


def test_pictures_start_the_bar_before_the_piano_comes_in() -> None:
    bars = band_song(8)
    assert picture_start(bars) == 0
    bars[:3, PIANO] = 0.0
    assert picture_start(bars) == 2
    bars[:, PIANO] = 0.0
    assert picture_start(bars) == 0


def test_evaluate_refuses_too_few_bars(corpus_dir, tiny_model_dir) -> None:
    with pytest.raises(ValueError, match="max_bars"):
        evaluate(load_band_model(tiny_model_dir), load_corpus(corpus_dir, "valid"), songs=1, max_bars=1)


def _strict(constant: str):
    raise AssertionError(f"{constant} in the report's JSON")


def test_the_eval_command_writes_the_report_json_and_pictures(corpus_dir, tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "report.md"
    args = ["eval", "--data", corpus_dir, "--model", tiny_model_dir, "--songs", "1", "--bars", "4", "--out", str(out)]
    assert main(args) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out  # printed too
    for system in SYSTEMS:
        assert f"| {system.label} |" in text
    for heading in ("### guitar", "### bass", "### strings", "### drums", "## Variation",
                    "## Piano rolls", "## Time per bar", "## Reconstruction F1", "## MuseGAN metrics"):
        assert heading in text
    linked = set(re.findall(r"\]\(([^)]+\.png)\)", text))
    assert linked == set(picture_names(out).values())
    for name in linked:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.with_suffix(".json").read_text(), parse_constant=_strict)
    assert result["max_bars"] == 4 and result["songs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*linked, "report.md", "report.json"])


@pytest.mark.parametrize("option, value, message", [
    ("--bars", "1", "--bars must be >= 2"),
    ("--songs", "0", "--songs must be >= 1"),
    ("--out", "report.txt", "give a .md file name"),
])
def test_the_eval_command_refuses_bad_options_before_any_work(option, value, message, corpus_dir, tmp_path,
                                                               capsys) -> None:
    values = {"--bars": "4", "--songs": "1", "--out": str(tmp_path / "r.md")}
    values[option] = str(tmp_path / value) if option == "--out" else value
    args = ["eval", "--data", corpus_dir, "--model", str(tmp_path / "no-model")]
    for name, v in values.items():
        args += [name, v]
    assert main(args) == 2  # refused before the (missing) model is even looked for
    err = capsys.readouterr().err
    assert message in err and "no-model" not in err
    assert list(tmp_path.iterdir()) == []
