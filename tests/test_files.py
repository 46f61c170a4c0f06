"""models.files: outputs checked before any work and written whole or not at all."""
from __future__ import annotations

import pytest

from models.files import atomic_write, atomic_write_text, check_distinct, check_input_file, check_output_file


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    assert atomic_write_text(path, "new") == path
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "band.mid"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"MTh")
        raise error
    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["band.mid"]


def test_the_temporary_file_keeps_the_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "roll.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path and seen[0].name.startswith(".")


def test_check_output_file(tmp_path):
    source = tmp_path / "song.mid"
    source.write_bytes(b"MThd")
    assert check_output_file(tmp_path / "out.mid", "--out", (".mid",), [source]) == tmp_path / "out.mid"
    with pytest.raises(ValueError, match="input file"):
        check_output_file(tmp_path / "." / "song.mid", "--out", (".mid",), [source])
    with pytest.raises(ValueError, match="does not exist"):
        check_output_file(tmp_path / "nodir" / "x.png", "--plot", (".png",))
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path, "--plot", (".png",))
    with pytest.raises(ValueError, match=r"give a \.png file name"):
        check_output_file(tmp_path / "x.jpg", "--plot", (".png",))


def test_check_distinct_outputs(tmp_path):
    check_distinct({"--out": tmp_path / "a.mid", "--plot": None})
    with pytest.raises(ValueError, match="same file as --out"):
        check_distinct({"--out": tmp_path / "a.png", "--plot": tmp_path / "." / "a.png"})


def test_check_input_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such MIDI file"):
        check_input_file(tmp_path / "missing.mid")
    with pytest.raises(ValueError, match="is a folder"):
        check_input_file(tmp_path)
    (tmp_path / "empty.mid").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
        check_input_file(tmp_path / "empty.mid")
