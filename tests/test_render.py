"""`vaejam render` and `vaejam style` end to end, on real files."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from bridge.cli import main
from models.bars import INSTRUMENTS, midi_to_song, tempo_midi


def render(song, out, model, *extra):
    return main(["render", song, "-o", str(out), "--model", model, *extra])


def test_render_writes_five_tracks_and_a_plot(song_file, tiny_model_dir, tmp_path, capsys):
    out, plot = tmp_path / "out.mid", tmp_path / "roll.png"
    assert render(song_file, out, tiny_model_dir, "--plot", str(plot)) == 0
    midi = pretty_midi.PrettyMIDI(str(out))
    programs = sorted((t.is_drum, t.program, t.name) for t in midi.instruments)
    assert programs == [(False, 0, "piano"), (False, 25, "guitar"), (False, 33, "bass"), (False, 48, "strings"),
                        (True, 0, "drums")]
    original = pretty_midi.PrettyMIDI(song_file)
    piano = next(t for t in midi.instruments if t.name == "piano")
    assert [(n.pitch, n.start) for n in piano.notes] == [(n.pitch, n.start) for n in original.instruments[0].notes]
    bars = midi_to_song(out).bars
    assert not bars[0, 1:].any()  # the band answers one bar late
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bars with notes" in capsys.readouterr().out


def test_render_is_reproducible_and_follows_seed_and_noise(song_file, tiny_model_dir, tmp_path):
    paths = {}
    for name, extra in {"a": ["--seed", "3"], "b": ["--seed", "3"], "c": ["--seed", "4"],
                        "d": ["--seed", "3", "--noise-sd", "0"]}.items():
        paths[name] = tmp_path / f"{name}.mid"
        assert render(song_file, paths[name], tiny_model_dir, *extra) == 0
    bars = {k: midi_to_song(p).bars for k, p in paths.items()}
    np.testing.assert_array_equal(bars["a"], bars["b"])
    assert not np.array_equal(bars["a"], bars["c"])
    assert not np.array_equal(bars["a"], bars["d"])


def test_render_with_a_style_bank(song_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setenv("VAEJAM_DATA_DIR", str(tmp_path / "data"))
    assert main(["style", "add", "groove", song_file, "--model", str(model)]) == 0
    assert len(list((tmp_path / "data" / "styles").glob("*/groove.safetensors"))) == 1
    assert main(["style", "list", "--model", str(model)]) == 0
    assert "groove:" in capsys.readouterr().out
    assert render(song_file, tmp_path / "s.mid", str(model), "--style", "groove", "--alpha", "0.7") == 0
    assert render(song_file, tmp_path / "s.mid", str(model), "--style", "nope") == 2
    assert "known banks: groove" in capsys.readouterr().err


def test_render_mute(song_file, tiny_model_dir, tmp_path):
    out = tmp_path / "m.mid"
    assert render(song_file, out, tiny_model_dir, "--mute", "drums,bass") == 0
    names = {t.name for t in pretty_midi.PrettyMIDI(str(out)).instruments if t.notes}
    assert "drums" not in names and "bass" not in names and "guitar" in names


@pytest.mark.parametrize("case,message", [
    ("nopiano", "no notes in a piano part"),
    ("waltz", "meter 3/4"),
    ("missing", "no such MIDI file"),
])
def test_render_bad_input_is_one_clear_line(case, message, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / f"{case}.mid"
    if case != "missing":
        midi = tempo_midi(120)
        if case == "waltz":
            midi.time_signature_changes = [pretty_midi.TimeSignature(3, 4, 0)]
        track = pretty_midi.Instrument(0 if case == "waltz" else 40, name="Violin")
        track.notes.append(pretty_midi.Note(90, 60, 0, 1))
        midi.instruments.append(track)
        midi.write(str(path))
    assert render(str(path), tmp_path / "o.mid", tiny_model_dir) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.mid").exists()


def test_render_missing_model(song_file, tmp_path, capsys):
    assert render(song_file, tmp_path / "o.mid", str(tmp_path / "nomodel")) == 2
    assert "no model here" in capsys.readouterr().err


def test_instruments_constant_order():
    assert INSTRUMENTS == ("piano", "guitar", "bass", "strings", "drums")


# ---- files: checked before any work, never clobbered ----------------------------------------------
def test_render_refuses_to_overwrite_its_input(song_file, tiny_model_dir, tmp_path, capsys):
    import shutil
    song = tmp_path / "song.mid"
    shutil.copy(song_file, song)
    before = song.read_bytes()
    assert render(str(song), tmp_path / "." / "song.mid", tiny_model_dir) == 2
    assert "input file" in capsys.readouterr().err
    assert song.read_bytes() == before


def test_a_bad_plot_path_is_refused_before_the_mid_is_written(song_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.mid"
    assert render(song_file, out, tiny_model_dir, "--plot", str(tmp_path / "nodir" / "x.png")) == 2
    err = capsys.readouterr().err
    assert "nodir" in err and "does not exist" in err and "Traceback" not in err
    assert not out.exists()


def test_a_folder_as_plot_is_refused_by_its_own_name(song_file, tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "adir"
    folder.mkdir()
    assert render(song_file, tmp_path / "out.mid", tiny_model_dir, "--plot", str(folder)) == 2
    err = capsys.readouterr().err
    assert f"--plot {folder}: is a folder" in err
    assert not (tmp_path / "out.mid").exists() and not (tmp_path / "adir.png").exists()


@pytest.mark.parametrize("case,message", [("folder", "is a folder, not a MIDI file"),
                                          ("empty", "the file is empty (0 bytes)")])
def test_a_folder_or_empty_file_as_input_says_so(case, message, tiny_model_dir, tmp_path, capsys):
    song = tmp_path / "in.mid"
    song.mkdir() if case == "folder" else song.write_bytes(b"")
    assert render(str(song), tmp_path / "o.mid", tiny_model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and not err.endswith("()") and "no such" not in err


def test_render_writes_no_partial_file_when_writing_fails(song_file, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out.mid"
    out.write_bytes(b"an older render")

    def fail_midway(self, filename):
        with open(filename, "wb") as half:
            half.write(b"MThd")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pretty_midi.PrettyMIDI, "write", fail_midway)
    assert render(song_file, out, tiny_model_dir) == 2
    assert out.read_bytes() == b"an older render"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mid"]


def test_render_device_cuda_without_cuda_is_one_line(song_file, tiny_model_dir, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    assert render(song_file, tmp_path / "o.mid", tiny_model_dir, "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "install a CUDA build of torch" in err and "--device cpu" in err
