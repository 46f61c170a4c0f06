"""NoteScheduler with an in-memory output: order, note-off bookkeeping, release/panic, threads."""
from __future__ import annotations

import random
import threading

import mido
import pytest
from hypothesis import given, settings, strategies as st

from bridge.scheduler import DEFAULT_CHANNELS, NoteScheduler, scale_velocity
from models.bars import Note


class Out:
    """The output layer: records (instrument, message)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, mido.Message]] = []
        self.fail = False

    def __call__(self, instrument: str, msg: mido.Message) -> None:
        if self.fail:
            raise OSError("port 'vaejam out' is gone")
        self.sent.append((instrument, msg))

    def brief(self) -> list[tuple[str, str, int, int]]:
        return [(i, m.type, m.channel, getattr(m, "note", getattr(m, "control", -1))) for i, m in self.sent]


def hanging(out: Out) -> set[tuple[int, int]]:
    """(channel, pitch) with more note-ons than note-offs in what was sent."""
    on: dict[tuple[int, int], int] = {}
    for _, m in out.sent:
        if m.type == "note_on" and m.velocity > 0:
            on[(m.channel, m.note)] = on.get((m.channel, m.note), 0) + 1
            assert on[(m.channel, m.note)] == 1, "second note-on without a note-off"
        elif m.type == "note_off" or (m.type == "note_on" and m.velocity == 0):
            on[(m.channel, m.note)] = on.get((m.channel, m.note), 0) - 1
            assert on[(m.channel, m.note)] == 0, "note-off for a note not sounding"
    return {k for k, v in on.items() if v}


def test_notes_go_out_on_their_steps_on_the_instrument_channel() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(32, "bass", [Note(0, 4, 40, 100), Note(8, 32, 43, 90)])
    s.on_step(31)
    assert out.sent == []
    s.on_step(32)
    assert out.brief() == [("bass", "note_on", 2, 40)]
    assert s.sounding() == {("bass", 40)}
    for step in range(33, 65):
        s.on_step(step)
    assert out.brief() == [("bass", "note_on", 2, 40), ("bass", "note_off", 2, 40),
                           ("bass", "note_on", 2, 43), ("bass", "note_off", 2, 43)]
    assert [m.time for _, m in out.sent] == [0, 0, 0, 0]
    assert s.sounding() == set() and s.counters == {"note_on": 2, "note_off": 2}


def test_note_offs_go_before_note_ons_at_the_same_step() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "guitar", [Note(0, 8, 60, 100), Note(8, 16, 64, 100)])
    s.schedule_bar(0, "drums", [Note(8, 9, 36, 100)])
    for step in range(9):
        s.on_step(step)
    assert out.brief()[1:] == [("guitar", "note_off", 1, 60), ("guitar", "note_on", 1, 64), ("drums", "note_on", 9, 36)]


def test_a_repeated_pitch_still_sounding_gets_its_note_off_first() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "strings", [Note(0, 40, 67, 80)])  # held over into the next bar
    s.schedule_bar(32, "strings", [Note(0, 8, 67, 70)])
    for step in range(41):
        s.on_step(step)
    assert out.brief() == [("strings", "note_on", 3, 67), ("strings", "note_off", 3, 67),
                           ("strings", "note_on", 3, 67), ("strings", "note_off", 3, 67)]
    assert s.counters["retriggered"] == 1
    assert hanging(out) == set()


def test_late_steps_are_caught_up_once_and_expired_notes_dropped() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "guitar", [Note(0, 2, 60, 100), Note(4, 20, 62, 100), Note(6, 8, 64, 100)])
    s.on_step(10)  # the clock thread stalled from step 0 to 10
    assert out.brief() == [("guitar", "note_on", 1, 62)]
    assert s.counters["late"] == 2
    s.on_step(10)
    s.on_step(5)  # an older step again: nothing is replayed
    assert len(out.sent) == 1


def test_empty_notes_are_dropped_and_counted() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "bass", [Note(4, 4, 40, 100), Note(5, 3, 41, 100), Note(0, 1, 42, 100)])
    assert s.pending() == 1 and s.counters["dropped_empty"] == 2


@pytest.mark.parametrize("velocity, scale, expected", [
    (100, 1.0, 100), (100, 2.0, 127), (100, 0.0, 1), (1, 0.4, 1), (64, 0.5, 32), (127, 1.01, 127),
])
def test_velocity_scale_clamps_to_1_127(velocity: int, scale: float, expected: int) -> None:
    assert scale_velocity(velocity, scale) == expected
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "guitar", [Note(0, 1, 60, velocity)], velocity_scale=scale)
    s.on_step(0)
    assert out.sent[0][1].velocity == expected


def test_bad_arguments_raise_before_anything_is_queued() -> None:
    s = NoteScheduler(Out())
    with pytest.raises(ValueError, match="unknown instrument"):
        s.schedule_bar(0, "kazoo", [Note(0, 1, 60, 100)])
    with pytest.raises(TypeError):
        s.schedule_bar(0, "bass", [Note(0, 1, 60, 100)], velocity_scale="loud")  # type: ignore[arg-type]
    for scale in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError):
            s.schedule_bar(0, "bass", [Note(0, 1, 60, 100)], velocity_scale=scale)
    for bad in (Note(0, 1, 128, 100), Note(0, 1, 60, 0), Note(-1, 1, 60, 100), Note(32, 33, 60, 100)):
        with pytest.raises(ValueError):
            s.schedule_bar(0, "bass", [Note(0, 1, 50, 100), bad])
    assert s.pending() == 0
    with pytest.raises(ValueError):
        s.release("kazoo")
    with pytest.raises(ValueError):
        NoteScheduler(Out(), {"bass": 16})
    with pytest.raises(TypeError):
        NoteScheduler(Out(), {"bass": 2.0})  # type: ignore[dict-item]


def test_release_one_instrument_ends_its_notes_and_drops_its_queue() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "bass", [Note(0, 32, 40, 100), Note(16, 20, 41, 100)])
    s.schedule_bar(0, "guitar", [Note(0, 32, 60, 100), Note(16, 20, 61, 100)])
    s.on_step(0)
    s.release("bass")
    assert s.sounding() == {("guitar", 60)}
    assert out.brief()[-1] == ("bass", "note_off", 2, 40)
    for step in range(1, 40):
        s.on_step(step)
    assert ("bass", "note_on", 2, 41) not in out.brief()
    assert ("guitar", "note_on", 1, 61) in out.brief()
    assert hanging(out) == set()


def test_panic_releases_everything_then_sends_cc_123_and_120_per_channel() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "drums", [Note(0, 1, 36, 100)])
    s.schedule_bar(0, "strings", [Note(0, 32, 60, 100), Note(20, 32, 62, 100)])
    s.on_step(0)
    out.sent.clear()
    s.panic()
    brief = out.brief()
    assert sorted(brief[:2]) == [("drums", "note_off", 9, 36), ("strings", "note_off", 3, 60)]
    ccs = {(i, ch, cc) for i, kind, ch, cc in brief[2:] if kind == "control_change"}
    assert ccs == {(i, ch, cc) for i, ch in DEFAULT_CHANNELS.items() for cc in (120, 123)}
    assert s.sounding() == set() and s.pending() == 0


def test_a_failing_port_never_raises_and_note_offs_are_retried() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "bass", [Note(0, 4, 40, 100), Note(8, 12, 41, 100)])
    s.on_step(0)
    out.fail = True
    s.on_step(4)  # note-off fails: the note stays known as sounding
    s.on_step(8)  # note-on fails: not remembered as sounding
    s.panic()
    assert s.sounding() == {("bass", 40)} and s.counters["send_error"] >= 3
    out.fail = False
    s.on_step(9)
    assert s.sounding() == set() and hanging(out) == set()


def test_a_retrigger_whose_note_off_fails_does_not_send_a_second_note_on() -> None:
    out = Out()
    s = NoteScheduler(out)
    s.schedule_bar(0, "bass", [Note(0, 40, 40, 100)])
    s.schedule_bar(32, "bass", [Note(0, 4, 40, 100)])
    s.on_step(0)
    out.fail = True
    s.on_step(32)
    out.fail = False
    s.release()
    assert hanging(out) == set()


def test_threads_scheduling_stepping_and_panicking_leave_no_hung_note() -> None:
    out = Out()
    s = NoteScheduler(out)
    stop = threading.Event()

    def stepper() -> None:
        step = 0
        while not stop.is_set():
            s.on_step(step)
            step += 1

    def producer(seed: int) -> None:
        rng = random.Random(seed)
        for bar in range(300):
            notes = [Note(st, min(st + rng.randint(1, 40), 40), rng.randint(30, 40), 100)
                     for st in sorted(rng.sample(range(32), 4))]
            s.schedule_bar(bar * 32, rng.choice(["bass", "guitar", "drums"]), notes)
            if bar % 50 == 0:
                s.panic()

    threads = [threading.Thread(target=stepper)] + [threading.Thread(target=producer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    s.release()
    assert s.sounding() == set() and hanging(out) == set()


notes_strategy = st.lists(
    st.builds(Note, st.integers(0, 31), st.integers(0, 48), st.integers(36, 40), st.integers(1, 127)),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(bars=st.lists(st.tuples(st.sampled_from(["bass", "drums"]), notes_strategy), max_size=6),
       stride=st.integers(1, 5))
def test_any_schedule_pairs_every_note_on_with_one_note_off(
        bars: list[tuple[str, list[Note]]], stride: int) -> None:
    out = Out()
    s = NoteScheduler(out)
    for i, (instrument, notes) in enumerate(bars):
        s.schedule_bar(i * 32, instrument, notes)
    for step in range(0, 32 * len(bars) + 64, stride):
        s.on_step(step)
        hanging(out)  # raises on a double note-on or a stray note-off
    assert s.sounding() == set() and hanging(out) == set()


def test_all_notes_off_names_each_channel_in_use_once() -> None:
    """What the daemon sends again as its JACK outputs close (a release that survives an xrun)."""
    scheduler = NoteScheduler(lambda instrument, msg: None, {"guitar": 1, "bass": 2, "piano": 1, "drums": 9})
    assert [(m.channel, m.control, m.value) for m in scheduler.all_notes_off()] == [(1, 123, 0), (2, 123, 0), (9, 123, 0)]
