"""training.corpus: npz corpora on disk, bar pairs inside songs, and user MIDI folders."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.corpus import (
    BAR_SHAPE, Corpus, load_corpus, nonempty_bar_rates, read_midi_dir, write_corpus,
)
from training.synth import midi_corpus


def _song(n_bars: int, value: int) -> np.ndarray:
    bars = np.zeros((n_bars, *BAR_SHAPE), np.uint8)
    bars[:, 0, 0, 60] = value  # piano middle C on each downbeat, value tags the song
    bars[:, 0, 1, 60] = np.arange(n_bars) + 1  # and the bar number, to check the order
    return bars


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    songs = [("a", _song(3, 10)), ("b", _song(1, 20)), ("c", _song(2, 30))]
    write_corpus(tmp_path / "bars-train.npz", songs)
    corpus = load_corpus(tmp_path, "train")
    assert corpus.names == ["a", "b", "c"]
    assert corpus.song_starts.tolist() == [0, 3, 4, 6]
    assert corpus.bars.dtype == np.uint8 and corpus.bars.shape == (6, *BAR_SHAPE)
    np.testing.assert_array_equal(corpus.song(2), songs[2][1])
    assert corpus.float_bars(0).dtype == np.float32
    assert corpus.float_bars(slice(0, 2))[1, 0, 0, 60] == pytest.approx(10 / 127)


def test_float_bars_are_stored_as_velocities(tmp_path: Path) -> None:
    bars = np.zeros((2, *BAR_SHAPE), np.float32)
    bars[1, 4, 0, 36] = 100 / 127
    corpus = write_corpus(tmp_path / "bars-valid.npz", [("f", bars)])
    assert corpus.bars[1, 4, 0, 36] == 100
    assert load_corpus(tmp_path, "valid").bars[1, 4, 0, 36] == 100


def test_same_songs_give_same_bytes(tmp_path: Path) -> None:
    songs = [("a", _song(4, 5)), ("b", _song(2, 6))]
    write_corpus(tmp_path / "one.npz", songs)
    write_corpus(tmp_path / "two.npz", songs)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    # Two writes a second apart would still differ if the zip kept the clock's time.
    with zipfile.ZipFile(tmp_path / "one.npz") as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_pairs_stay_inside_songs() -> None:
    bars = np.concatenate([_song(3, 1), _song(1, 2), _song(2, 3)])
    corpus = Corpus(bars=bars, song_starts=np.array([0, 3, 4, 6], np.int64), names=["a", "b", "c"])
    # 0-1, 1-2 in a; none in the one-bar b; 4-5 in c. Never 2-3 or 3-4.
    assert corpus.pairs().tolist() == [[0, 1], [1, 2], [4, 5]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_pairs_never_cross_songs(lengths: list[int]) -> None:
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    song_of = np.repeat(np.arange(len(lengths)), lengths)
    corpus = Corpus(np.zeros((starts[-1], *BAR_SHAPE), np.uint8), starts, [str(i) for i in range(len(lengths))])
    pairs = corpus.pairs()
    assert pairs.dtype == np.int64 and pairs.shape == (sum(lengths) - len(lengths), 2)
    assert np.all(pairs[:, 1] == pairs[:, 0] + 1)
    assert np.all(song_of[pairs[:, 0]] == song_of[pairs[:, 1]])


def test_missing_folder_and_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_corpus(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="bars-valid.npz"):
        load_corpus(tmp_path, "valid")
    with pytest.raises(ValueError, match="split"):
        load_corpus(tmp_path, "test")


def test_wrong_shapes_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bars-train.npz"
    np.savez_compressed(path, bars=np.zeros((3, 4, 32, 128), np.uint8),
                        song_starts=np.array([0, 3], np.int64), names=np.array(["x"]))
    with pytest.raises(ValueError, match=r"bars-train\.npz.*\(n, 5, 32, 128\)"):
        load_corpus(tmp_path, "train")
    np.savez_compressed(path, bars=np.zeros((3, *BAR_SHAPE), np.uint8),
                        song_starts=np.array([0, 2], np.int64), names=np.array(["x"]))
    with pytest.raises(ValueError, match=r"bars-train\.npz.*song_starts"):
        load_corpus(tmp_path, "train")
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bars-train\.npz"):
        load_corpus(tmp_path, "train")


def test_write_rejects_bad_songs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no songs"):
        write_corpus(tmp_path / "x.npz", [])
    with pytest.raises(ValueError, match="bad-song"):
        write_corpus(tmp_path / "x.npz", [("bad-song", np.zeros((2, 5, 32, 64), np.uint8))])


def test_nonempty_bar_rates() -> None:
    bars = np.zeros((4, *BAR_SHAPE), np.uint8)
    bars[:3, 0, 5, 60] = 90  # piano in 3 of 4 bars
    bars[0, 4, 0, 36] = 100  # drums in 1
    rates = nonempty_bar_rates(bars)
    assert rates == {"piano": 0.75, "guitar": 0.0, "bass": 0.0, "strings": 0.0, "drums": 0.25}


# ---------------------------------------------------------------- user MIDI folders

def _write_midi(path: Path, numerator: int = 4, piano: bool = True) -> None:
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0.0))
    inst = pretty_midi.Instrument(program=0 if piano else 33, name="keys")
    for beat in range(8):  # two 4/4 bars of quarter notes at 120 BPM
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=60 + beat, start=beat * 0.5, end=beat * 0.5 + 0.4))
    midi.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))


def _midi_folder(root: Path) -> Path:
    """One good file (in a subfolder: the search is recursive), a truncated, a 3/4 and an empty one."""
    _write_midi(root / "sub" / "good.mid")
    data = (root / "sub" / "good.mid").read_bytes()
    (root / "truncated.mid").write_bytes(data[: len(data) // 2])
    _write_midi(root / "waltz.mid", numerator=3)
    (root / "empty.mid").write_bytes(b"")
    (root / "notes.txt").write_text("not a MIDI file, not even looked at")
    return root


def test_midi_dir_keeps_good_file_and_names_three_reasons(tmp_path: Path) -> None:
    songs, skipped = read_midi_dir(_midi_folder(tmp_path / "in"))
    assert [Path(s.name).name for s in songs] == ["good.mid"]
    assert songs[0].bars.shape == (2, *BAR_SHAPE) and songs[0].bars[:, 0].any(axis=(1, 2)).all()
    reasons = {Path(path).name: reason for path, reason in skipped}
    assert sorted(reasons) == ["empty.mid", "truncated.mid", "waltz.mid"]
    assert reasons["waltz.mid"] == "meter 3/4 at 0.00 s; vaejam plays 4/4 only"
    assert all("\n" not in r and r for r in reasons.values())
    assert reasons["empty.mid"] == "empty file (0 bytes)"
    assert "not a readable MIDI file" in reasons["truncated.mid"]


def test_midi_corpus_writes_layout_and_logs_one_line_per_skip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _midi_folder(tmp_path / "in")
    _write_midi(source / "good2.mid")
    _write_midi(source / "no-piano.mid", piano=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="training.synth"):
        manifest = midi_corpus(source, out, seed=0, valid_fraction=0.5, progress=False)
    skips = [r.getMessage() for r in caplog.records]
    assert len(skips) == 4 and all(m.startswith("skip ") and "\n" not in m for m in skips)
    assert "skip waltz.mid: meter 3/4 at 0.00 s; vaejam plays 4/4 only" in skips
    assert sorted(s["split"] for s in manifest["songs"]) == ["train", "valid"]  # split by file
    for song in manifest["songs"]:
        assert (out / song["file"]).is_file() and song["file"].startswith(f"midi/{song['split']}/")
    assert len(load_corpus(out, "train")) == 2 and len(load_corpus(out, "valid")) == 2


def test_midi_corpus_with_nothing_usable_says_so(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.mid").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable MIDI files"):
        midi_corpus(tmp_path / "in", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        midi_corpus(tmp_path / "missing", tmp_path / "out", progress=False)
