"""TakeRecorder: file layout, tempo map, never overwriting, incremental = correct, and kill -9."""
from __future__ import annotations

import datetime as dt
import errno
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mido
import pretty_midi
import pytest
from hypothesis import given, settings, strategies as st

import bridge.recorder as recorder_module
from bridge.recorder import LAG_STEPS, TakeRecorder
from models.bars import INSTRUMENTS, OUTPUT_PROGRAMS, Note

REPO = Path(__file__).resolve().parents[1]
FIXED_NOW = dt.datetime(2026, 11, 25, 13, 5, 9)


def recorder(tmp_path: Path) -> TakeRecorder:
    return TakeRecorder(tmp_path / "takes", now=lambda: FIXED_NOW)


def notes_of(path: Path, instrument: str, step_s: float) -> list[tuple[int, int, int, int]]:
    """(start, end, pitch, velocity) in steps of a constant-tempo take, read with pretty_midi."""
    midi = pretty_midi.PrettyMIDI(str(path))
    tracks = [t for t in midi.instruments if t.name == instrument]  # pretty_midi drops empty tracks
    notes = [n for t in tracks for n in t.notes]
    return sorted((round(n.start / step_s), round(n.end / step_s), n.pitch, n.velocity) for n in notes)


STEP_120 = 60 / 120 / 8  # seconds per step at 120 BPM


def test_start_writes_a_readable_empty_take_at_once(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    path = rec.start(120)
    assert path == tmp_path / "takes" / "take-20261125-130509.mid" and rec.recording
    mid = mido.MidiFile(path)
    assert mid.type == 1 and len(mid.tracks) == 1 + len(INSTRUMENTS)
    assert [t.name for t in mid.tracks[1:]] == list(INSTRUMENTS)
    tempo = [m for m in mid.tracks[0] if m.type == "set_tempo"]
    assert [round(mido.tempo2bpm(m.tempo), 3) for m in tempo] == [120]
    sig = [m for m in mid.tracks[0] if m.type == "time_signature"][0]
    assert (sig.numerator, sig.denominator) == (4, 4)
    programs = {t.name: [(m.channel, m.program) for m in t if m.type == "program_change"] for t in mid.tracks[1:]}
    assert programs == {"piano": [(0, OUTPUT_PROGRAMS["piano"])], "guitar": [(1, OUTPUT_PROGRAMS["guitar"])],
                        "bass": [(2, OUTPUT_PROGRAMS["bass"])], "strings": [(3, OUTPUT_PROGRAMS["strings"])],
                        "drums": []}
    assert rec.stop() == path and not rec.recording and rec.stop() is None


def test_a_take_is_never_overwritten(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    first = rec.start(120)
    rec.add_notes("bass", [Note(0, 4, 40, 100)], 0)
    rec.stop()
    before = first.read_bytes()
    second = rec.start(100)
    rec.stop()
    third = rec.start(90)
    assert [first.name, second.name, third.name] == [
        "take-20261125-130509.mid", "take-20261125-130509-2.mid", "take-20261125-130509-3.mid"]
    assert first.read_bytes() == before
    rec.stop()


def test_start_while_recording_changes_nothing(tmp_path: Path) -> None:
    # 500 /vaejam/record 1 packets made 278 take files.
    rec = recorder(tmp_path)
    first = rec.start(120)
    rec.add_notes("bass", [Note(0, 4, 40, 100)], 0)
    for _ in range(50):
        assert rec.start(100) == first
    rec.stop()
    assert [p.name for p in (tmp_path / "takes").iterdir()] == [first.name]
    assert notes_of(first, "bass", STEP_120) == [(0, 4, 40, 100)]  # still at the first take's tempo


def test_notes_land_on_their_tracks_and_channels(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    path = rec.start(120)
    rec.add_notes("piano", [Note(0, 8, 60, 90), Note(8, 8, 62, 80)], 0)  # zero length keeps one step
    rec.add_notes("guitar", [Note(0, 32, 64, 100)], 32)
    rec.add_notes("drums", [Note(s, s + 1, 36, 110) for s in range(0, 32, 8)], 32)
    rec.flush()
    assert notes_of(path, "piano", STEP_120) == [(0, 8, 60, 90), (8, 9, 62, 80)]
    assert notes_of(path, "guitar", STEP_120) == [(32, 64, 64, 100)]
    assert notes_of(path, "drums", STEP_120) == [(s, s + 1, 36, 110) for s in range(32, 64, 8)]
    mid = mido.MidiFile(path)
    channels = {t.name: {m.channel for m in t if m.type in ("note_on", "note_off")} for t in mid.tracks[1:]}
    assert channels == {"piano": {0}, "guitar": {1}, "bass": set(), "strings": set(), "drums": {9}}
    assert pretty_midi.PrettyMIDI(str(path)).instruments[-1].is_drum


def test_tempo_map_puts_later_bars_at_the_new_tempo(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    path = rec.start(120)
    rec.add_notes("bass", [Note(0, 1, 40, 100)], 64)
    rec.set_tempo(32, 60)
    rec.set_tempo(96, 240)
    rec.set_tempo(96, 200)  # a later call for the same step replaces it
    rec.stop()
    midi = pretty_midi.PrettyMIDI(str(path))
    times, bpms = midi.get_tempo_changes()
    assert list(times) == pytest.approx([0.0, 2.0, 10.0])  # bar 1 at 120, bars 1-2 at 60
    assert list(bpms) == pytest.approx([120, 60, 200], rel=1e-4)
    bass = next(t for t in midi.instruments if t.name == "bass")
    assert bass.notes[0].start == pytest.approx(2.0 + 4.0)  # bar 2 = 2 s at 120 + 4 s at 60


def test_same_pitch_overlaps_become_consecutive_notes(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    path = rec.start(120)
    rec.add_notes("strings", [Note(0, 40, 67, 80)], 0)  # held into the next bar
    rec.add_notes("strings", [Note(0, 8, 67, 70)], 32)
    rec.add_notes("strings", [Note(16, 20, 60, 70), Note(16, 24, 60, 90)], 32)  # same onset: one note,
    rec.stop()  # the longer and the louder, in whatever order they came (so a flush never changes it)
    assert notes_of(path, "strings", STEP_120) == [(0, 32, 67, 80), (32, 40, 67, 70), (48, 56, 60, 90)]
    ons = [m for m in mido.MidiFile(path).tracks[4] if m.type == "note_on"]
    assert len(ons) == 3


def test_piano_notes_arriving_by_note_off_and_very_late_ones(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    path = rec.start(120)
    long_note = Note(0, 20 * 32, 48, 60)  # held for 20 bars: older than the cheap horizon when it ends
    expected = [tuple(long_note)]
    for bar in range(20):
        note = Note(bar * 32 + 4, bar * 32 + 6, 72, 100)
        rec.add_notes("piano", [note], 0)
        expected.append(tuple(note))
        rec.flush()
    rec.add_notes("piano", [long_note], 0)
    assert 20 * 32 > LAG_STEPS
    rec.flush()
    assert notes_of(path, "piano", STEP_120) == sorted(expected)


def test_not_recording_is_a_no_op_and_bad_input_raises(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.add_notes("bass", [Note(0, 1, 40, 100)], 0)
    rec.set_tempo(0, 100)
    rec.flush()
    assert rec.stop() is None and list((tmp_path / "takes").iterdir()) == []
    rec.start(120)
    with pytest.raises(ValueError):
        rec.add_notes("kazoo", [], 0)
    with pytest.raises(ValueError):
        rec.add_notes("bass", [Note(0, 1, 128, 100)], 0)
    with pytest.raises(ValueError):
        rec.add_notes("bass", [Note(0, 1, 40, 0)], 0)
    with pytest.raises(ValueError):
        rec.add_notes("bass", [Note(0, 1, 40, 100)], -1)
    with pytest.raises(TypeError):
        rec.add_notes("bass", [Note(0, 1, 40, 100)], 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rec.set_tempo(0, "fast")  # type: ignore[arg-type]
    rec.stop()


def test_a_tempo_out_of_range_is_clamped_and_counted_never_raised(tmp_path: Path) -> None:
    # A tempo-estimate spike (645.8 BPM) raised ValueError on the worker and lost the bar's tempo.
    rec = recorder(tmp_path)
    path = rec.start(1000.0)
    rec.set_tempo(32, 645.8)
    rec.set_tempo(64, 0.0)
    rec.set_tempo(96, float("nan"))  # ignored: the tempo before it goes on
    rec.set_tempo(128, 400.2)
    rec.stop()
    tempos = [(m.time, round(mido.tempo2bpm(m.tempo), 3)) for m in mido.MidiFile(path).tracks[0]
              if m.type == "set_tempo"]
    assert tempos == [(0, 400), (32 * 60, 400), (32 * 60, 20), (32 * 60, 20), (32 * 60, 400)]
    assert rec.clamped_tempos == 5
    with pytest.raises(TypeError):
        rec.start("120")  # type: ignore[arg-type]


def test_takes_folder_that_cannot_be_made_raises_oserror_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="file"):
        TakeRecorder(blocker / "takes")


class DiskFull:
    """Stands in for recorder._write_all: while `full`, writes part of the data, then ENOSPC."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, fd: int, data: bytes) -> None:
        if self.full:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.write(fd, data)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_keeps_the_take_complete_says_so_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    disk = DiskFull()
    monkeypatch.setattr(recorder_module, "_write_all", disk)
    rec = recorder(tmp_path)
    path = rec.start(120)
    rec.add_notes("bass", [Note(0, 4, 40, 100)], 0)
    rec.flush()
    disk.full = True
    for bar in range(1, 4):  # three bars while the disk is full: no exception, one log line
        rec.add_notes("bass", [Note(0, 4, 41, 100)], bar * 32)
        rec.flush()
    assert "No space" in rec.error and rec.failed_writes == 3 and rec.recording
    assert len([r for r in caplog.records if "cannot write take" in r.getMessage()]) == 1
    assert files_in(tmp_path / "takes") == [path.name]  # no .tmp left behind
    assert notes_of(path, "bass", STEP_120) == [(0, 4, 40, 100)]  # the last complete write
    disk.full = False  # space returns: the next flush writes every bar kept in memory
    rec.flush()
    assert rec.error == "" and rec.stop() == path
    assert notes_of(path, "bass", STEP_120) == [(0, 4, 40, 100)] + [(b * 32, b * 32 + 4, 41, 100) for b in (1, 2, 3)]


def test_a_take_started_on_a_full_disk_leaves_no_empty_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The next take after a full disk was a 0-byte .mid that no MIDI reader opens.
    disk = DiskFull()
    monkeypatch.setattr(recorder_module, "_write_all", disk)
    disk.full = True
    rec = recorder(tmp_path)
    assert rec.start(120) is None and rec.recording and "No space" in rec.error
    rec.add_notes("piano", [Note(0, 8, 60, 90)], 0)
    rec.flush()
    assert files_in(tmp_path / "takes") == []
    disk.full = False
    rec.flush()
    path = rec.stop()
    assert path is not None and files_in(tmp_path / "takes") == [path.name]
    assert notes_of(path, "piano", STEP_120) == [(0, 8, 60, 90)]


def test_a_read_only_folder_is_reported_not_raised(tmp_path: Path) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user writing (root)")
        rec = recorder(tmp_path)
        assert rec.start(120) is None and rec.recording
        assert "Permission denied" in rec.error and str(folder) in rec.error
        rec.flush()
        assert rec.stop() is None and rec.failed_writes == 2 and files_in(folder) == []
    finally:
        folder.chmod(0o755)


def test_a_planted_symlink_is_never_written_through(tmp_path: Path) -> None:
    folder = tmp_path / "takes"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    name = "take-20261125-130509.mid"
    (folder / name).symlink_to(victim)  # the take's own name
    for n in ("", "-2", "-3"):  # and the temporary names the recorder used to use
        (folder / f".take-20261125-130509{n}.mid.tmp").symlink_to(victim)
    rec = recorder(tmp_path)
    path = rec.start(120)
    rec.add_notes("bass", [Note(0, 4, 40, 100)], 0)
    rec.stop()
    assert victim.read_text() == "precious"
    assert path == folder / "take-20261125-130509-2.mid" and notes_of(path, "bass", STEP_120) == [(0, 4, 40, 100)]
    assert (folder / name).is_symlink() and (folder / ".take-20261125-130509-2.mid.tmp").is_symlink()


note_lists = st.lists(
    st.tuples(st.integers(0, 31), st.integers(1, 70), st.integers(36, 39), st.integers(1, 127)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(bars=st.lists(note_lists, min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_incremental_flushes_write_the_same_notes_as_one_final_write(
        tmp_path_factory: pytest.TempPathFactory, bars: list[list[tuple[int, int, int, int]]], seed: int) -> None:
    """Flushing every bar (old events encoded once) gives the same file as writing once at the end."""
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("takes")
    every_bar = TakeRecorder(folder / "a", now=lambda: FIXED_NOW)
    at_end = TakeRecorder(folder / "b", now=lambda: FIXED_NOW)
    paths = [every_bar.start(120), at_end.start(120)]
    for index, bar in enumerate(bars):
        notes = [Note(s, s + length, p, v) for s, length, p, v in bar]
        offset = max(0, index - rng.choice([0, 0, 0, 1, 5])) * 32  # now and then a late bar
        for rec in (every_bar, at_end):
            rec.add_notes("bass", notes, offset)
        every_bar.flush()
    every_bar.stop()
    at_end.stop()
    a, b = (notes_of(p, "bass", STEP_120) for p in paths)
    assert a == b
    for t in mido.MidiFile(paths[0]).tracks[1:]:  # never two note-ons of a pitch without an off between
        on: set[int] = set()
        for m in t:
            if m.type == "note_on":
                assert m.note not in on
                on.add(m.note)
            elif m.type == "note_off":
                assert m.note in on
                on.remove(m.note)
        assert not on


def test_flush_stays_cheap_on_a_long_take(tmp_path: Path) -> None:
    rec = recorder(tmp_path)
    rec.start(200)
    rng = random.Random(0)
    times = []
    for bar in range(200):  # 4 minutes at 200 BPM, ~60 notes a bar
        for instrument in INSTRUMENTS:
            notes = [Note(s, s + rng.randint(1, 8), rng.randint(40, 80), 100) for s in range(0, 32, 2)]
            rec.add_notes(instrument, notes[: rng.randint(8, 16)], bar * 32)
        start = time.perf_counter()
        rec.flush()
        times.append(time.perf_counter() - start)
    early, late = sorted(times[10:60])[25], sorted(times[-50:])[25]
    assert late < max(5 * early, 0.01)  # the cost per bar does not grow with the take
    path = rec.stop()
    assert path is not None and len(mido.MidiFile(path).tracks) == 6


KILLED_WRITER = textwrap.dedent("""
    import sys
    from bridge.recorder import TakeRecorder
    from models.bars import Note
    rec = TakeRecorder(sys.argv[1])
    print(rec.start(120), flush=True)
    bar = 0
    while True:
        rec.add_notes("piano", [Note(0, 8, 60 + bar % 12, 100)], bar * 32)
        rec.add_notes("bass", [Note(0, 32, 36, 90)], bar * 32)
        rec.add_notes("drums", [Note(s, s + 1, 36, 100) for s in range(0, 32, 8)], bar * 32)
        rec.flush()
        print(bar, flush=True)
        bar += 1
""")


def test_a_killed_process_leaves_a_readable_take_with_every_flushed_bar(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout is not None
        path = Path(proc.stdout.readline().strip())
        flushed = -1
        while flushed < 40:
            flushed = int(proc.stdout.readline())
    finally:
        proc.kill()  # SIGKILL: no cleanup, no final flush
        proc.wait()
    mid = mido.MidiFile(path)  # a complete file, whatever the writer was doing
    assert len(mid.tracks) == 6
    piano = notes_of(path, "piano", STEP_120)
    bass = notes_of(path, "bass", STEP_120)
    drums = notes_of(path, "drums", STEP_120)
    assert len(piano) > flushed and len(bass) > flushed and len(drums) > 4 * flushed
    for bar in range(flushed + 1):
        assert (bar * 32, bar * 32 + 8, 60 + bar % 12, 100) in piano
        assert (bar * 32, bar * 32 + 32, 36, 90) in bass
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == [path.name]
