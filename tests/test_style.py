"""`vaejam style`: user banks in the user's data folder, shipped ones read only, no silent mistakes."""
from __future__ import annotations

import shutil

import pretty_midi
import pytest

from bridge.cli import main
from models.bars import tempo_midi
from models.checkpoint import load_band_model
from models.style import encode_style, save_style, user_data_dir


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEJAM_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def model(tmp_path, tiny_model_dir):
    """A copy of the tiny model, so shipped banks can be put beside it."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


def piano_only(path) -> str:
    midi = tempo_midi(120)
    track = pretty_midi.Instrument(0, name="Piano")
    track.notes += [pretty_midi.Note(80, 60 + i % 5, i * 0.5, i * 0.5 + 0.4) for i in range(16)]
    midi.instruments.append(track)
    midi.write(str(path))
    return str(path)


def test_the_data_dir_follows_the_env_var(data_dir):
    assert user_data_dir() == data_dir


def test_style_add_writes_to_the_user_folder_not_beside_the_model(data_dir, model, song_file, capsys):
    assert main(["style", "add", "groove", song_file, "--model", str(model)]) == 0
    saved = list(data_dir.glob("styles/*/groove.safetensors"))
    assert len(saved) == 1 and str(saved[0]) in capsys.readouterr().out
    assert not (model / "styles").exists()


def test_a_style_without_band_parts_is_refused(data_dir, model, tmp_path, capsys):
    reference = piano_only(tmp_path / "solo.mid")
    assert main(["style", "add", "solo", reference, "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "no guitar, bass, strings, drums notes" in err and "'Piano'" in err
    assert not data_dir.exists() or not list(data_dir.rglob("*.safetensors"))


def test_reusing_a_name_needs_force(data_dir, model, song_file, capsys):
    args = ["style", "add", "groove", song_file, "--model", str(model)]
    assert main(args) == 0
    saved = next(data_dir.glob("styles/*/groove.safetensors"))
    before = saved.stat().st_mtime_ns
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'groove' exists" in err and "--force" in err
    assert saved.stat().st_mtime_ns == before
    assert main([*args, "--force"]) == 0


def test_list_shows_shipped_and_user_styles_with_their_place(data_dir, model, song_file, capsys):
    save_style(encode_style(load_band_model(model), "factory", song_file), model)
    assert main(["style", "add", "mine", song_file, "--model", str(model)]) == 0
    capsys.readouterr()
    assert main(["style", "list", "--model", str(model)]) == 0
    lines = capsys.readouterr().out.splitlines()
    factory = next(line for line in lines if line.startswith("factory:"))
    mine = next(line for line in lines if line.startswith("mine:"))
    assert "shipped, read-only" in factory and str(model / "styles") in factory
    assert "yours" in mine and str(data_dir) in mine
    # the shipped name is taken too: replacing it (with a user bank that hides it) needs --force
    assert main(["style", "add", "factory", song_file, "--model", str(model)]) == 2
    assert "shipped" in capsys.readouterr().err


def test_a_model_finds_only_its_own_user_styles(data_dir, model, tmp_path, song_file, capsys):
    from models.checkpoint import save_band_model
    from models.networks import BandModel
    from tests.conftest import TINY

    assert main(["style", "add", "groove", song_file, "--model", str(model)]) == 0
    other = tmp_path / "other"
    save_band_model(BandModel(TINY), other)
    capsys.readouterr()
    assert main(["style", "list", "--model", str(other)]) == 0  # no "made by another model" error
    assert "groove" not in capsys.readouterr().out
