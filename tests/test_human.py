"""training.human: songs from WADs and MIDI folders built here, and the installed packages when present."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from bridge.cli import main
from models.bars import tempo_midi
from training.corpus import load_corpus
from training.human import SOURCES, find_songs, human_corpus, parse_sources, wad_music

MUS_LUMP = b"MUS\x1a" + bytes(12)  # a MUS header: Doom's own music format


def midi_bytes(tmp: Path, programs: tuple[int, ...] = (29,), n_bars: int = 8, meter: tuple[int, int] = (4, 4),
               pitch: int = 60) -> bytes:
    """A song at 120 BPM (a bar is 2 s): one triad per bar on each program (drums for -1)."""
    midi = tempo_midi(120)
    midi.time_signature_changes = [pretty_midi.TimeSignature(*meter, 0.0)]
    for program in programs:
        inst = pretty_midi.Instrument(max(program, 0), is_drum=program < 0)
        for bar in range(n_bars):
            for offset in (0, 4, 7):
                inst.notes.append(pretty_midi.Note(90, pitch + offset, bar * 2.0, bar * 2.0 + 1.5))
        midi.instruments.append(inst)
    path = tmp / "song.mid"
    midi.write(str(path))
    return path.read_bytes()


def write_wad(path: Path, lumps: list[tuple[str, bytes]]) -> None:
    """A PWAD: 12-byte header (magic, lump count, directory offset), lumps, 16-byte directory entries."""
    body = b"".join(data for _, data in lumps)
    directory, offset = b"", 12
    for name, data in lumps:
        directory += struct.pack("<ii8s", offset, len(data), name.encode())
        offset += len(data)
    path.write_bytes(struct.pack("<4sii", b"PWAD", len(lumps), 12 + len(body)) + body + directory)


@pytest.fixture()
def roots(tmp_path: Path) -> dict[str, Path]:
    """Three small package folders: a WAD, a Planet Blupi-like folder and a FreeDink-like one."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    doom, blupi, dink = (tmp_path / name for name in ("doom", "blupi", "dink"))
    for folder in (doom, blupi, dink):
        folder.mkdir()
    chords = midi_bytes(scratch)
    write_wad(doom / "freedoom1.wad", [
        ("PLAYPAL", bytes(768)),  # not music
        ("D_E1M1", chords),  # guitar chords only: the guitar becomes the piano part
        ("D_E1M2", MUS_LUMP),
        ("D_E1M3", midi_bytes(scratch, meter=(3, 4))),
        ("D_E1M4", chords),  # a copy of D_E1M1
        ("D_E1M5", midi_bytes(scratch, n_bars=2)),
        ("D_E1M6", midi_bytes(scratch, programs=(0, 33, -1), pitch=62)),
    ])
    for index in range(5):
        (blupi / f"music{index:03d}.mid").write_bytes(midi_bytes(scratch, programs=(0, 33), pitch=50 + index))
    (blupi / "music005.mid").write_bytes(midi_bytes(scratch, programs=(33, -1)))  # bass and drums only
    (dink / "love.mid").write_bytes(midi_bytes(scratch, programs=(48,), pitch=55))
    (dink / "2.mid").write_bytes(midi_bytes(scratch, programs=(0,), pitch=57))
    (dink / "105.mid").write_bytes(midi_bytes(scratch, programs=(0,), pitch=58))  # "GPL-3+ | Art Libre | ..."
    (dink / "extra.mid").write_bytes(midi_bytes(scratch, programs=(0,), pitch=59))  # no licence known
    return {"freedoom": doom, "blupi": blupi, "freedink": dink}


def test_wad_music_reads_the_d_lumps_in_order(roots: dict[str, Path]) -> None:
    lumps = wad_music(roots["freedoom"] / "freedoom1.wad")
    assert [name for name, _ in lumps] == ["D_E1M1", "D_E1M2", "D_E1M3", "D_E1M4", "D_E1M5", "D_E1M6"]
    assert lumps[0][1][:4] == b"MThd" and lumps[1][1] == MUS_LUMP
    (roots["freedoom"] / "bad.wad").write_bytes(b"nope")
    with pytest.raises(OSError, match="bad.wad"):
        wad_music(roots["freedoom"] / "bad.wad")


def test_corpus_keeps_usable_songs_and_gives_one_reason_per_skip(roots: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    manifest = human_corpus(out, valid_fraction=0.3, seed=1, roots=roots, progress=False)
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "freedoom1.wad:D_E1M2": "MUS lump (Doom's own format), not MIDI; not converted",
        "freedoom1.wad:D_E1M3": "meter 3/4 at 0.00 s; vaejam plays 4/4 only",
        "freedoom1.wad:D_E1M4": f"duplicate of {roots['freedoom']}/freedoom1.wad:D_E1M1",
        "freedoom1.wad:D_E1M5": "too short: 2 bars (< 4)",
        "music005.mid": "no candidate track: no piano, guitar or strings notes to follow",
        "extra.mid": "licence unknown (not listed in the package's copyright notes)",
    }
    used = {s["path"].rsplit("/", 1)[-1]: s for s in manifest["songs"]}
    assert set(used) == {"freedoom1.wad:D_E1M1", "freedoom1.wad:D_E1M6", "love.mid", "2.mid", "105.mid"} | {
        f"music{i:03d}.mid" for i in range(5)}
    assert "Seth A. Robinson" in used["love.mid"]["licence"]
    assert "program 29, guitar" in used["freedoom1.wad:D_E1M1"]["piano_from"]
    assert json.loads((out / "manifest.json").read_text()) == manifest

    corpora = {split: load_corpus(out, split) for split in ("train", "valid")}
    names = {split: corpus.names for split, corpus in corpora.items()}
    assert sorted(names["train"] + names["valid"]) == sorted(s["file"] for s in used.values())  # each song once
    assert sum(len(c) for c in corpora.values()) == sum(s["n_bars"] for s in used.values())
    for split, corpus in corpora.items():
        for index, name in enumerate(corpus.names):
            assert name.startswith(f"midi/{split}/") and (out / name).is_file()
            song = corpus.song(index)
            assert song.shape == (8, 5, 32, 128) and song[:, 0].any()  # every song has its piano part
    guitar_song = corpora[used["freedoom1.wad:D_E1M1"]["split"]]
    bars = guitar_song.song(guitar_song.names.index(used["freedoom1.wad:D_E1M1"]["file"]))
    assert not bars[:, 1].any()  # the guitar was read as the piano, not kept as guitar


def test_split_is_by_song_per_source_and_set_by_the_seed(roots: dict[str, Path], tmp_path: Path) -> None:
    manifest = human_corpus(tmp_path / "a", valid_fraction=0.4, seed=3, roots=roots, progress=False)
    per_source = {name: [s["split"] for s in manifest["songs"] if s["source"] == name] for name in SOURCES}
    assert per_source["blupi"].count("valid") == 2 and len(per_source["blupi"]) == 5  # round(0.4 * 5)
    assert per_source["freedoom"].count("valid") == 1 and per_source["freedink"].count("valid") == 1
    again = human_corpus(tmp_path / "b", valid_fraction=0.4, seed=3, roots=roots, progress=False)
    for split in ("train", "valid"):
        assert (tmp_path / "a" / f"bars-{split}.npz").read_bytes() == (tmp_path / "b" / f"bars-{split}.npz").read_bytes()
    splits = {seed: [s["split"] for s in human_corpus(tmp_path / f"s{seed}", valid_fraction=0.4, seed=seed,
                                                      roots=roots, progress=False)["songs"]]
              for seed in range(4)}
    assert len({tuple(v) for v in splits.values()}) > 1  # another seed, another split


def test_sources_md_lists_every_song_with_package_path_and_licence(roots: dict[str, Path], tmp_path: Path) -> None:
    manifest = human_corpus(tmp_path / "c", roots=roots, progress=False)
    text = (tmp_path / "c" / "SOURCES.md").read_text()
    for song in manifest["songs"] + manifest["skipped"]:
        line = next(row for row in text.splitlines() if f"`{song['path']}`" in row)
        assert song["package"] in line and (song["licence"] or "unknown").replace("|", "\\|") in line
    assert "| freedink-data |" in text and "freedoom-license" in text and "Pachelbel" not in text
    assert "GPL-3+ \\| Art Libre \\| CC-BY-SA" in text  # 105.mid's choice of licences, escaped
    for table in text.split("\n\n"):
        rows = [row.replace("\\|", "") for row in table.splitlines() if row.startswith("|")]
        assert len({row.count("|") for row in rows}) <= 1, table  # every row has the header's columns


def test_a_missing_package_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install planetblupi-music-midi"):
        find_songs(["blupi"], {"blupi": tmp_path / "absent"})
    with pytest.raises(ValueError, match="--sources"):
        parse_sources("freedoom,doom2")
    assert parse_sources(" blupi,freedink ") == ["blupi", "freedink"]


def test_only_unusable_songs_is_an_error(roots: dict[str, Path], tmp_path: Path) -> None:
    (roots["blupi"] / "music000.mid").unlink()
    for index in range(1, 5):
        (roots["blupi"] / f"music{index:03d}.mid").write_bytes(MUS_LUMP)
    with pytest.raises(ValueError, match="no usable songs"):
        human_corpus(tmp_path / "d", sources=["blupi"], roots=roots, progress=False)
    assert not (tmp_path / "d").exists()  # nothing written


@pytest.mark.skipif(not SOURCES["freedink"].root.is_dir(), reason="needs freedink-data (apt-get install freedink-data)")
def test_cli_on_the_installed_freedink_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dink"
    assert main(["data", "human", "--out", str(out), "--sources", "freedink", "--seed", "1"]) == 0
    assert "songs" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["songs"]) + len(manifest["skipped"]) == 12  # the package's 12 .mid files
    assert all(s["licence"] for s in manifest["songs"])
    train = load_corpus(out, "train")
    assert train.bars.dtype == np.uint8 and train.n_songs >= 1
    assert main(["data", "human", "--out", str(out), "--valid-fraction", "1.5", "--sources", "freedink"]) == 2
