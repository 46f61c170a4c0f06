"""LPD-5 files (pypianoroll layout, made here in code) and Lakh-style MIDI trees -> sharded corpora."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pretty_midi
import pypianoroll
import pytest

from bridge.cli import main
from models.bars import INSTRUMENTS, MeterError, NoPianoError, song_to_midi
from tests.conftest import band_song
from training.corpus import load_corpus, read_midi_file
from training.lpd import BINARY_VELOCITY, LpdReadError, read_lpd_file

RES = 24  # LPD-5's steps per beat
BAR = 4 * RES
# LPD-5's track order and programs; vaejam's order is piano, guitar, bass, strings, drums
LPD = (("Drums", 0, True), ("Piano", 0, False), ("Guitar", 24, False), ("Bass", 32, False), ("Strings", 48, False))
# (track, fine start, fine end, pitch): onsets on, just after and just before a coarse step (3 fine steps)
NOTES = [
    ("Piano", 0, 22, 60), ("Piano", 24, 47, 60),  # a repeated note, LPD's one-step gap between
    ("Piano", 49, 50, 64),  # 1 fine step, starts 1/3 into coarse step 16: kept, one step long
    ("Piano", 53, 70, 67),  # starts 2/3 into step 17: rounds to step 18, as MIDI onsets do
    ("Guitar", 96, 110, 72), ("Bass", 0, 95, 36), ("Strings", 100, 190, 55),
    ("Drums", 0, 2, 36), ("Drums", 48, 50, 38), ("Drums", 150, 151, 42),
]


def multitrack(notes=NOTES, n_bars: int = 2, downbeat_every: int | None = BAR, first_downbeat: int = 0,
               binary: bool = True) -> pypianoroll.Multitrack:
    tracks = []
    for name, program, drum in LPD:
        roll = np.zeros((n_bars * BAR, 128), bool if binary else np.uint8)
        for track, start, end, pitch in notes:
            if track == name:
                roll[start:end, pitch] = True if binary else 30 + pitch
        kind = pypianoroll.BinaryTrack if binary else pypianoroll.StandardTrack
        tracks.append(kind(name=name, program=program, is_drum=drum, pianoroll=roll))
    downbeat = None
    if downbeat_every:
        downbeat = np.zeros(n_bars * BAR, bool)
        downbeat[first_downbeat::downbeat_every] = True
    return pypianoroll.Multitrack(name="fixture", resolution=RES, tracks=tracks, downbeat=downbeat)


def save(mt: pypianoroll.Multitrack, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pypianoroll.save(path, mt)
    return path


def as_midi(notes, path: Path, velocity: int = BINARY_VELOCITY) -> Path:
    """The same notes as a MIDI file at 120 BPM (a beat is 0.5 s), for models.bars' own reader."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    for name, program, drum in LPD:
        inst = pretty_midi.Instrument(program=program, is_drum=drum, name=name)
        for track, start, end, pitch in notes:
            if track == name:
                inst.notes.append(pretty_midi.Note(velocity, pitch, start / RES * 0.5, end / RES * 0.5))
        midi.instruments.append(inst)
    midi.write(str(path))
    return path


def test_reader_keeps_onsets_and_maps_tracks(tmp_path: Path) -> None:
    bars = read_lpd_file(save(multitrack(), tmp_path / "song.npz")).bars
    assert bars.dtype == np.uint8 and bars.shape == (2, 5, 32, 128)
    piano, guitar, bass, strings, drums = (bars[:, INSTRUMENTS.index(n)].reshape(-1, 128)
                                           for n in ("piano", "guitar", "bass", "strings", "drums"))
    # the repeated C: two notes (steps 0-6 and 8-15), the gap kept
    assert np.flatnonzero(piano[:, 60]).tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15]
    assert np.flatnonzero(piano[:, 64]).tolist() == [16]  # a note shorter than a step keeps one step
    assert np.flatnonzero(piano[:, 67])[0] == 18  # fine 53 = coarse 17.67 -> 18
    assert np.flatnonzero(guitar[:, 72]).tolist() == list(range(32, 37))  # Guitar -> vaejam's guitar
    assert np.flatnonzero(bass[:, 36]).tolist() == list(range(0, 32))
    assert np.flatnonzero(strings[:, 55])[0] == 33
    assert np.flatnonzero(drums[:, 36]).tolist() == [0] and np.flatnonzero(drums[:, 42]).tolist() == [50]
    assert set(np.unique(bars)) == {0, BINARY_VELOCITY}  # binarized rolls: pypianoroll's velocity


def test_reader_quantises_like_the_midi_reader(tmp_path: Path) -> None:
    """The same notes through LPD's 24-step grid and through a MIDI file give the same bars."""
    lpd = read_lpd_file(save(multitrack(), tmp_path / "song.npz")).bars
    midi = read_midi_file(as_midi(NOTES, tmp_path / "song.mid")).bars
    np.testing.assert_array_equal(lpd, midi)


def test_velocity_rolls_and_pickups(tmp_path: Path) -> None:
    velocities = read_lpd_file(save(multitrack(binary=False), tmp_path / "v.npz")).bars
    assert velocities[0, 0, 0, 60] == 90 and velocities[1, 1, 0, 72] == 102  # 30 + pitch, as stored
    # a two-beat pickup: the first downbeat (fine step 48) starts bar 1, so 16 silent steps go first
    pickup = read_lpd_file(save(multitrack(n_bars=3, first_downbeat=48), tmp_path / "p.npz")).bars
    plain = read_lpd_file(save(multitrack(), tmp_path / "s.npz")).bars
    rolls = [b.transpose(1, 0, 2, 3).reshape(5, -1, 128) for b in (pickup, plain)]  # (5, steps, 128)
    assert not rolls[0][:, :16].any()
    np.testing.assert_array_equal(rolls[0][:, 16 : 16 + rolls[1].shape[1]], rolls[1])


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match=r"w\.npz: downbeats 3 beats apart"):
        read_lpd_file(save(multitrack(downbeat_every=3 * RES), tmp_path / "w.npz"))
    with pytest.raises(NoPianoError, match="np.npz: no notes in the Piano track"):
        read_lpd_file(save(multitrack([n for n in NOTES if n[0] != "Piano"]), tmp_path / "np.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LpdReadError, match="junk.npz: not an npz"):
        read_lpd_file(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))  # an npz, but not pypianoroll's
    with pytest.raises(LpdReadError, match="other.npz: not a readable pypianoroll npz .*info.json"):
        read_lpd_file(tmp_path / "other.npz")


def lpd_tree(root: Path) -> None:
    """LPD's nesting: letter folders, one folder per Million Song Dataset track id."""
    for i, shift in enumerate((0, 2, 5, 7, 9)):
        notes = [(t, s, e, p + shift) for t, s, e, p in NOTES]
        save(multitrack(notes), root / "A" / f"TRAAA{i:013d}" / f"{i}a.npz")
    save(multitrack(), root / "A" / "TRAAA0000000000000" / "0b.npz")  # a second version of song 0
    save(multitrack(downbeat_every=3 * RES), root / "B" / "TRBBB0000000000001" / "waltz.npz")
    (root / "B" / "TRBBB0000000000002").mkdir(parents=True)
    (root / "B" / "TRBBB0000000000002" / "broken.npz").write_bytes(b"\x00" * 10)


def test_lpd_command_writes_deterministic_shards(tmp_path: Path, capsys) -> None:
    lpd_tree(tmp_path / "lpd")
    args = ["data", "lpd", "--src", str(tmp_path / "lpd"), "--valid-fraction", "0.4", "--shard-bars", "2",
            "--jobs", "2"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "2 of 8 files skipped" in capsys.readouterr().out
    index = json.loads((tmp_path / "a" / "shards.json").read_text())
    assert sorted(s["file"] for s in index["skipped"]) == ["B/TRBBB0000000000001/waltz.npz",
                                                          "B/TRBBB0000000000002/broken.npz"]
    assert [s["reason"] for s in index["skipped"]] == [
        "downbeats 3 beats apart at step 72; vaejam plays 4/4 only", "not an npz (zip) file"]
    train, valid = load_corpus(tmp_path / "a", "train"), load_corpus(tmp_path / "a", "valid")
    assert train.n_songs + valid.n_songs == 6 and train.n_songs and valid.n_songs
    versions = {n for n in train.names + valid.names if "TRAAA0000000000000" in n}
    assert len(versions) == 2 and (versions <= set(train.names) or versions <= set(valid.names))  # split by song
    assert len(index["splits"]["train"]["shards"]) > 1  # 2-bar shards, cut at song boundaries
    for corpus in (train, valid):
        for i, name in enumerate(corpus.names):
            np.testing.assert_array_equal(corpus.song(i), read_lpd_file(tmp_path / "lpd" / name).bars)
    assert main(args + ["--out", str(tmp_path / "b")]) == 0  # same input, same bytes
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    for path in (tmp_path / "a").iterdir():
        assert (tmp_path / "b" / path.name).read_bytes() == path.read_bytes(), path.name


def test_lakh_command_reads_a_midi_tree(tmp_path: Path) -> None:
    root = tmp_path / "lmd"
    for i, folder in enumerate(("0/a", "0/b/c", "f")):
        (root / folder).mkdir(parents=True)
        song_to_midi(np.roll(band_song(4 + i), i, axis=-1), bpm=100).write(str(root / folder / f"{i}.mid"))
    (root / "f" / "bad.mid").write_bytes(b"MThd\x00")
    assert main(["data", "lakh", "--src", str(root), "--out", str(tmp_path / "out"), "--valid-fraction", "0",
                 "--jobs", "1"]) == 0
    corpus = load_corpus(tmp_path / "out", "train")
    assert corpus.names == ["0/a/0.mid", "0/b/c/1.mid", "f/2.mid"]
    for i, name in enumerate(corpus.names):
        np.testing.assert_array_equal(corpus.song(i), read_midi_file(root / name).bars)
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert [s["file"] for s in index["skipped"]] == ["f/bad.mid"]
    with pytest.raises(FileNotFoundError, match="no songs in split 'valid'"):
        load_corpus(tmp_path / "out", "valid")


def test_convert_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["data", "lpd", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no LPD-5 .npz files" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.npz").write_bytes(b"nope")
    assert main(["data", "lpd", "--src", str(tmp_path / "bad"), "--out", str(tmp_path / "o"), "--jobs", "1"]) == 2
    assert "all skipped: x.npz: not an npz (zip) file" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["data", "lpd", "--src", str(tmp_path / "bad"), "--out", str(tmp_path / "full")]) == 2
    assert "holds no sharded corpus" in capsys.readouterr().err
