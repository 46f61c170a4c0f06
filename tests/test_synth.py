"""training.synth: MMA-rendered corpora, with the real `mma` and real files."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.bars import INSTRUMENTS, midi_to_song
from training.corpus import load_corpus, nonempty_bar_rates
from training.synth import (
    PROGRESSIONS, Groove, SynthError, assign_parts, bar_chords, chord_name, grooves_in_file, mma_library,
    plan_corpus, render_song, run_mma, scan_grooves, split_styles, synth_corpus,
)

pytestmark = pytest.mark.skipif(shutil.which("mma") is None, reason="needs MMA (apt install mma)")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """4 songs x 8 bars, one of them held out."""
    out = tmp_path_factory.mktemp("tiny")
    return out, synth_corpus(out, n_songs=4, seed=1, n_bars=8, valid_fraction=0.25, jobs=2, progress=False)


def test_tiny_corpus_has_the_layout(tiny: tuple[Path, dict]) -> None:
    out, manifest = tiny
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 1 and "--seed 1" in manifest["command"]
    songs = manifest["songs"]
    assert [s["split"] for s in songs].count("valid") == 1 and len(songs) == 4
    for index, song in enumerate(songs):
        assert song["file"].startswith(f"midi/{song['split']}/{index:04d}-") and song["file"].endswith(".mid")
        assert {"groove", "key", "progression", "tempo", "n_bars"} <= set(song)
        assert 70 <= song["tempo"] <= 180 and song["n_bars"] == 8
        assert midi_to_song(out / song["file"]).bars.shape[1:] == (5, 32, 128)
    for split in ("train", "valid"):
        corpus = load_corpus(out, split)
        assert len(corpus) == 8 * sum(s["split"] == split for s in songs)
        assert corpus.names == [s["file"] for s in songs if s["split"] == split]


def test_every_song_plays_all_five_families(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    for split in ("train", "valid"):
        corpus = load_corpus(out, split)
        for index in range(corpus.n_songs):
            rates = nonempty_bar_rates(corpus.song(index))
            assert rates["piano"] >= 0.75, (corpus.names[index], rates)  # the model's input
            for family in INSTRUMENTS[1:]:
                assert rates[family] >= 0.5, (corpus.names[index], family, rates)


def test_split_is_by_groove_style(tiny: tuple[Path, dict]) -> None:
    _, manifest = tiny
    by_split = {split: {s["style"] for s in manifest["songs"] if s["split"] == split} for split in ("train", "valid")}
    assert by_split["train"] and by_split["valid"] and not by_split["train"] & by_split["valid"]
    # Same rule on many songs, without rendering: no groove and no style in both splits.
    plans = plan_corpus(scan_grooves(), n_songs=300, seed=5, n_bars=4, valid_fraction=0.15)
    assert sum(p.split == "valid" for p in plans) == 45
    styles = {split: {g.style for p in plans if p.split == split for g in p.candidates} for split in ("train", "valid")}
    assert styles["valid"] and not styles["train"] & styles["valid"]
    pools = split_styles(scan_grooves(), seed=5, valid_fraction=0.15)
    assert len({g.style for g in pools["valid"]}) == round(0.15 * len({g.style for g in scan_grooves()}))


def test_same_seed_same_bytes_any_jobs_other_seed_differs(tmp_path: Path) -> None:
    synth_corpus(tmp_path / "a", n_songs=2, seed=3, n_bars=4, jobs=1, progress=False)
    synth_corpus(tmp_path / "b", n_songs=2, seed=3, n_bars=4, jobs=2, progress=False)
    synth_corpus(tmp_path / "c", n_songs=2, seed=4, n_bars=4, jobs=2, progress=False)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert "bars-train.npz" in a and a == b
    assert a["bars-train.npz"] != c["bars-train.npz"] and a["manifest.json"] != c["manifest.json"]


def test_plan_is_a_function_of_the_seed() -> None:
    grooves = scan_grooves()
    assert plan_corpus(grooves, 20, seed=9) == plan_corpus(grooves, 20, seed=9)
    assert plan_corpus(grooves, 20, seed=9) != plan_corpus(grooves, 20, seed=10)
    tonics = {p.tonic for p in plan_corpus(grooves, 200, seed=2)}
    assert tonics == set(range(12))


def test_failing_groove_is_skipped_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_corpus(scan_grooves(), 1, seed=1, n_bars=2, valid_fraction=0.0)[0]
    broken = Groove("stdlib", "no-such-style", "Nothing")
    (tmp_path / "midi" / "train").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="training.synth"):
        song = render_song(plan.__class__(**{**plan.__dict__, "candidates": (broken, *plan.candidates)}), tmp_path)
    assert song.meta["groove"] == plan.candidates[0].name and song.bars.shape == (2, 5, 32, 128)
    assert len(caplog.records) == 1 and "no-such-style" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()
    with pytest.raises(SynthError, match="none of 2 grooves"):  # bounded: gives up, never loops
        render_song(plan.__class__(**{**plan.__dict__, "candidates": (broken, broken)}), tmp_path)


def test_every_progression_chord_is_known_to_mma() -> None:
    names = sorted({bar_chords(bar, tonic) for p in PROGRESSIONS for bar in p.bars for tonic in range(12)})
    script = "Groove stdlib/50srock:50sRock\n" + "".join(f"{i + 1} {line}\n" for i, line in enumerate(names))
    run_mma(script, None)  # raises SynthError on the first chord MMA does not know
    assert chord_name("bVII7", 0) == "Bb7" and chord_name("#IVdim7", 0) == "F#dim7"
    assert chord_name("IIm7b5", 9) == "Bm7b5" and bar_chords("IM7 VIm7", 7) == "GM7 / Em7 /"
    with pytest.raises(ValueError, match="roman"):
        chord_name("H7", 0)


def test_library_scan_keeps_whole_song_4_4_grooves() -> None:
    grooves = scan_grooves()
    names = {g.name.lower() for g in grooves}
    assert "bossanova" in names and "swing" in names
    assert "waltz" not in names and "bossanovaend" not in names and "bossanovaintro" not in names
    meters = dict(grooves_in_file(mma_library() / "stdlib" / "ballad68.mma"))
    assert set(meters.values()) == {"6/8"}  # Time 4 with Timesig 6 8: MIDI would say 6/8


def test_voices_cover_all_five_families() -> None:
    # bossanova: the guitar comps (Chord voiced JazzGuitar), the Bass keeps the bass line.
    parts = assign_parts({"BASS": 26, "CHORD": 26, "DRUM-KICK": None})
    assert parts.families == {"BASS": "bass", "CHORD": "guitar", "DRUM-KICK": "drums"}
    assert parts.added == ("piano", "strings")
    # two piano-voiced chord tracks: the main one stays piano, the other goes to guitar
    parts = assign_parts({"CHORD": 0, "CHORD-HI": 1, "WALK": 32, "CHORD-SUS": 48, "DRUM": None})
    assert parts.families["CHORD"] == "piano" and parts.families["CHORD-HI"] == "guitar"
    assert parts.added == ()
    # drums only: everything else is added
    assert assign_parts({"DRUM-KICK": None}).added == ("piano", "guitar", "bass", "strings")


def test_cli_runs_synth_and_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bridge.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--songs", "2", "--seed", "1", "--bars", "2",
                 "--jobs", "1"]) == 0
    assert (tmp_path / "c" / "bars-train.npz").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--songs", "0", "--seed", "1"]) == 2
    assert "--songs" in capsys.readouterr().err
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "thesis.tex").write_text("precious")
    assert main(["data", "synth", "--out", str(tmp_path / "e"), "--songs", "1", "--seed", "1"]) == 2
    assert (tmp_path / "e" / "thesis.tex").read_text() == "precious"
    assert np.load(tmp_path / "c" / "bars-train.npz")["bars"].shape[1:] == (5, 32, 128)


def test_every_added_part_variant_renders_and_plays(tmp_path: Path) -> None:
    """vaejam's own parts, each variant: MMA accepts them and every family plays in every bar."""
    from training.synth import ADDED_TRACKS, Parts, _render

    plan = plan_corpus(scan_grooves(), 1, seed=1, n_bars=4, valid_fraction=0.0)[0]
    groove = Groove("stdlib", "50srock", "50sRock")
    for variant in range(max(len(v) for v in ADDED_TRACKS.values())):
        variants = tuple((f, min(variant, len(v) - 1)) for f, v in ADDED_TRACKS.items())
        song_plan = plan.__class__(**{**plan.__dict__, "variants": variants})
        script_parts = Parts(families={}, added=INSTRUMENTS)
        bars = _render(song_plan, groove, script_parts, tmp_path / f"v{variant}.mid", 60.0)
        rates = nonempty_bar_rates(bars)
        assert all(rate == 1.0 for rate in rates.values()), (variant, rates)
