"""MIDI <-> bars: round trips, program merge, the time grid, and bad files."""
from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from models.bars import (
    EmptySongError, MeterError, MidiReadError, NoPianoError, Note, instrument_for_program,
    midi_to_song, roll_to_notes, song_to_midi, tempo_midi, track_polyphony,
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


# --- piano_track="auto" -----------------------------------------------------------------------
# At 120 BPM a step (a 32nd) is 1/16 s, so a note of 0.5 s fills one beat.

def track(program: int, chords: list[tuple[int, ...]], is_drum: bool = False, name: str = "") -> pretty_midi.Instrument:
    """One chord per beat from 0 s; () is a rest."""
    inst = pretty_midi.Instrument(program, is_drum=is_drum, name=name)
    for beat, chord in enumerate(chords):
        for pitch in chord:
            inst.notes.append(pretty_midi.Note(90, pitch, beat * 0.5, beat * 0.5 + 0.5))
    return inst


def write_tracks(path, *tracks: pretty_midi.Instrument):
    midi = tempo_midi(120)
    midi.instruments.extend(tracks)
    midi.write(str(path))
    return path


def pitches(bars: np.ndarray) -> set[int]:
    """Pitches sounding anywhere in one instrument's (n_bars, 32, 128) bars."""
    return set(np.flatnonzero(bars.any(axis=(0, 1))).tolist())


def test_track_polyphony_is_the_mean_over_sounding_steps():
    midi = tempo_midi(120)
    inst = track(48, [(60, 64, 67), (), (72,)])  # 8 steps of 3 pitches, a rest, 8 steps of 1
    assert track_polyphony(midi, inst) == pytest.approx(2.0)
    assert track_polyphony(midi, pretty_midi.Instrument(48)) == 0.0


def test_auto_takes_the_gm_pianos_when_there_are_any(tmp_path):
    path = write_tracks(tmp_path / "p.mid", track(26, [(60, 64, 67)] * 4), track(1, [(48,)] * 4))
    song = midi_to_song(path, piano_track="auto")
    assert song.piano_tracks == (1,)
    assert pitches(song.bars[:, 0]) == {48}
    assert pitches(song.bars[:, 1]) == {60, 64, 67}  # the chordal guitar stays in the band
    assert np.array_equal(song.bars, midi_to_song(path).bars)  # as the default


def test_auto_without_piano_takes_the_most_chordal_track_out_of_the_band(tmp_path):
    path = write_tracks(
        tmp_path / "nopiano.mid",
        track(48, [(72,), (74,), (76,), (77,)]),  # strings melody: one pitch at a time
        track(33, [(36, 43, 48)] * 4),  # chordal bass: never the part to follow
        track(0, [(36,), (42,)] * 2, is_drum=True),
        track(29, [(52, 55, 59)] * 4),  # overdriven guitar chords: the one to follow
        track(27, [(64,), (67,)] * 2),  # a second, single-note guitar stays guitar
    )
    with pytest.raises(NoPianoError):
        midi_to_song(path)
    song = midi_to_song(path, piano_track="auto")
    assert song.piano_tracks == (3,)
    assert pitches(song.bars[:, 0]) == {52, 55, 59}
    assert pitches(song.bars[:, 1]) == {64, 67}  # removed from guitar, the other guitar kept
    assert pitches(song.bars[:, 2]) == {36, 43, 48}
    assert pitches(song.bars[:, 3]) == {72, 74, 76, 77}
    assert pitches(song.bars[:, 4]) == {36, 42}
    assert midi_to_song(path, piano_track="AUTO").piano_tracks == (3,)  # case-insensitive


def test_auto_breaks_ties_by_note_count_and_ignores_stray_chords(tmp_path):
    tie = write_tracks(tmp_path / "tie.mid", track(48, [(60, 64)] * 2), track(49, [(62, 65)] * 4))
    assert midi_to_song(tie, piano_track="auto").piano_tracks == (1,)  # both 2 pitches, more notes
    same = write_tracks(tmp_path / "same.mid", track(48, [(60, 64)] * 4), track(49, [(62, 65)] * 4))
    assert midi_to_song(same, piano_track="auto").piano_tracks == (0,)  # full tie: the earlier track
    stray = write_tracks(tmp_path / "stray.mid", track(50, [(60, 64, 67, 71)]), track(25, [(60, 64)] * 24))
    assert midi_to_song(stray, piano_track="auto").piano_tracks == (1,)  # 4 of 48 notes is under 10 %


def test_auto_with_only_bass_and_drums_is_a_clear_error(tmp_path):
    path = write_tracks(tmp_path / "rhythm.mid", track(33, [(36, 43)] * 4), track(0, [(36,)] * 4, is_drum=True),
                        track(100, [(60, 64, 67)] * 4))  # synth effects are dropped, not followed
    with pytest.raises(NoPianoError, match=r"(?s)rhythm\.mid: no notes in a piano or chordal .*\(auto\).*program 33"):
        midi_to_song(path, piano_track="auto")
