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


def test_render_with_a_style_bank(song_file, tiny_model_dir, tmp_path, capsys):
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert main(["style", "add", "groove", song_file, "--model", str(model)]) == 0
    assert (model / "styles" / "groove.safetensors").is_file()
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
