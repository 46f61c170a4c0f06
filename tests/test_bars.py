"""MIDI <-> bars: round trips, program merge, the time grid, and bad files."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from models.bars import (
    EmptySongError, MeterError, MidiReadError, NoPianoError, Note, instrument_for_program,
    midi_to_song, roll_to_notes, song_to_midi, tempo_midi,
)
from tests.conftest import band_song


@pytest.mark.parametrize("program,is_drum,family", [
    (0, False, "piano"), (7, False, "piano"), (24, False, "guitar"), (31, False, "guitar"),
    (32, False, "bass"), (39, False, "bass"), (48, False, "strings"), (8, False, "strings"),
    (95, False, "strings"), (104, False, "strings"), (111, False, "strings"),
    (96, False, None), (103, False, None), (112, False, None), (127, False, None), (0, True, "drums"),
    (33, True, "drums"),
])
def test_program_merge_rules(program, is_drum, family):
    assert instrument_for_program(program, is_drum) == family


def test_program_out_of_range():
    with pytest.raises(ValueError):
        instrument_for_program(128, False)


def test_round_trip_keeps_notes_and_velocities(tmp_path):
    bars = band_song(4)
    path = tmp_path / "song.mid"
    song_to_midi(bars, bpm=97).write(str(path))
    song = midi_to_song(path)
    assert song.bars.shape == bars.shape
    for i in range(5):
        want = roll_to_notes(bars[:, i].reshape(-1, 128))
        got = roll_to_notes(song.bars[:, i].reshape(-1, 128))
        assert got == want, f"instrument {i}"
    assert abs(song.tempo_bpm - 97) < 1e-3  # MIDI stores whole microseconds per beat


def test_roll_to_notes_merges_held_steps_and_splits_at_gaps():
    roll = np.zeros((32, 128), np.float32)
    roll[0:8, 60] = 100 / 127
    roll[9:12, 60] = 50 / 127
    roll[31, 72] = 1.0
    assert roll_to_notes(roll) == [Note(0, 8, 60, 100), Note(9, 12, 60, 50), Note(31, 32, 72, 127)]


def test_repeated_notes_keep_a_gap(tmp_path):
    midi = tempo_midi(120)
    piano = pretty_midi.Instrument(0)
    beat = 0.5
    piano.notes = [pretty_midi.Note(90, 60, 0, beat), pretty_midi.Note(80, 60, beat, 2 * beat)]
    midi.instruments.append(piano)
    midi.write(str(tmp_path / "rep.mid"))
    notes = roll_to_notes(midi_to_song(tmp_path / "rep.mid").bars[0, 0])
    assert [(n.start, n.end, n.velocity) for n in notes] == [(0, 7, 90), (8, 16, 80)]


def test_tracks_merge_by_family_and_drop_fx(tmp_path):
    midi = tempo_midi(120)
    for program, pitch in ((26, 64), (29, 67), (100, 70)):  # two guitars, one synth effect
        track = pretty_midi.Instrument(program)
        track.notes.append(pretty_midi.Note(100, pitch, 0.0, 0.5))
        midi.instruments.append(track)
    piano = pretty_midi.Instrument(1)
    piano.notes.append(pretty_midi.Note(100, 48, 0.0, 0.5))
    midi.instruments.append(piano)
    midi.write(str(tmp_path / "m.mid"))
    bars = midi_to_song(tmp_path / "m.mid").bars
    assert set(np.flatnonzero(bars[0, 1].any(0))) == {64, 67}  # guitars merged
    assert not bars[0, 3].any()  # program 100 dropped, not strings


def test_tempo_changes_keep_the_bar_grid(tmp_path):
    # one note per bar at bar starts, with the tempo halving after bar 1
    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120)
    midi._tick_scales = [(0, 60 / (120 * 480)), (4 * 480, 60 / (60 * 480))]
    midi._update_tick_to_time(10 * 480 * 4)
    piano = pretty_midi.Instrument(0)
    for bar in range(3):
        start = midi.tick_to_time(bar * 4 * 480)
        piano.notes.append(pretty_midi.Note(100, 60, start, midi.tick_to_time(bar * 4 * 480 + 240)))
    midi.instruments.append(piano)
    midi.write(str(tmp_path / "t.mid"))
    song = midi_to_song(tmp_path / "t.mid")
    onsets = [n.start for n in roll_to_notes(song.bars[:, 0].reshape(-1, 128))]
    assert onsets == [0, 32, 64]


def test_three_four_is_a_clear_error(tmp_path):
    midi = tempo_midi(120)
    midi.time_signature_changes = [pretty_midi.TimeSignature(3, 4, 0.0)]
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(100, 60, 0, 1))
    midi.instruments.append(piano)
    path = tmp_path / "waltz.mid"
    midi.write(str(path))
    with pytest.raises(MeterError, match=r"waltz\.mid: meter 3/4"):
        midi_to_song(path)


def test_no_piano_lists_the_tracks(tmp_path):
    midi = tempo_midi(120)
    bass = pretty_midi.Instrument(33, name="Fretless")
    bass.notes.append(pretty_midi.Note(100, 40, 0, 1))
    midi.instruments.append(bass)
    path = tmp_path / "nopiano.mid"
    midi.write(str(path))
    with pytest.raises(NoPianoError, match=r"(?s)nopiano\.mid.*'Fretless' \(program 33, bass"):
        midi_to_song(path)
    assert midi_to_song(path, piano_track="fretless").bars[0, 0].any()  # picked by name
    assert midi_to_song(path, piano_track=0).bars[0, 0].any()  # or by index


def test_truncated_and_empty_files(tmp_path):
    good = tmp_path / "good.mid"
    song_to_midi(band_song(2), 120).write(str(good))
    truncated = tmp_path / "cut.mid"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(MidiReadError, match="cut.mid"):
        midi_to_song(truncated)
    empty = tmp_path / "empty.mid"
    tempo_midi(120).write(str(empty))
    with pytest.raises(EmptySongError, match="empty.mid"):
        midi_to_song(empty)
    garbage = tmp_path / "text.mid"
    garbage.write_text("not midi")
    with pytest.raises(MidiReadError):
        midi_to_song(garbage)
