"""MIDI I/O logic without a MIDI stack: API choice, port-name matching, in-memory ports, bad input."""
from __future__ import annotations

import logging

import mido
import pytest
from hypothesis import given, settings, strategies as st

from bridge.midi_io import (
    LIVE_ATTEMPTS, BasePort, MemoryInput, MemoryOutput, MidiIO, MidiPortError, PortOptions, apis_to_try,
    channel_map, match_port_name,
)
from bridge.scheduler import DEFAULT_CHANNELS


@pytest.mark.parametrize("choice, platform, seq, expected", [
    ("auto", "linux", True, ["LINUX_ALSA", "UNIX_JACK"]),
    ("auto", "linux", False, ["UNIX_JACK"]),  # no /dev/snd/seq: ALSA would fail, go to JACK
    ("auto", "darwin", None, ["MACOSX_CORE", "UNIX_JACK"]),
    ("auto", "win32", None, ["WINDOWS_MM"]),
    ("jack", "linux", True, ["UNIX_JACK"]),
    ("alsa", "linux", False, ["LINUX_ALSA"]),
    ("coremidi", "darwin", None, ["MACOSX_CORE"]),
])
def test_api_order(choice: str, platform: str, seq: bool | None, expected: list[str]) -> None:
    assert apis_to_try(choice, platform, seq) == expected


def test_unknown_api_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown MIDI API"):
        apis_to_try("directsound")


def test_port_names_match_exactly_or_by_unique_part() -> None:
    ports = ["loopMIDI Port 1 0", "loopMIDI Port 2 1", "RtMidiOut Client:piano"]
    assert match_port_name("loopMIDI Port 2 1", ports) == "loopMIDI Port 2 1"
    assert match_port_name("port 2", ports) == "loopMIDI Port 2 1"
    assert match_port_name("piano", ports) == "RtMidiOut Client:piano"
    assert match_port_name("loopMIDI", ports) is None  # ambiguous
    assert match_port_name("guitar", ports) is None


def test_input_stamps_parses_and_hands_over() -> None:
    got = []
    port = MemoryInput("in", lambda msg, t: got.append((msg, t)), clock=lambda: 42.0)
    port.deliver([0x90, 60, 100])
    port.deliver([0xF8], t=7.0)
    assert got == [(mido.Message("note_on", note=60, velocity=100), 42.0), (mido.Message("clock"), 7.0)]


def test_bad_input_and_handler_errors_are_counted_once_logged_never_raised(caplog) -> None:
    def broken(msg: mido.Message, t: float) -> None:
        raise RuntimeError("bug")

    port = MemoryInput("in", broken)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            port.deliver([0x90, 200])  # truncated, data byte > 127
            port.deliver([0xF0, 1, 2, 0xF7])
            port.deliver([0x90, 60, 1])
    assert port.errors.counts == {"malformed": 3, "sysex": 3, "handler": 3}
    assert sum("handler failed" in r.message for r in caplog.records) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=8))
def test_random_bytes_never_raise(data: list[int]) -> None:
    port = MemoryInput("in", lambda msg, t: None)
    port.deliver(data)


def test_output_keeps_messages_and_close_is_safe_twice() -> None:
    out = MemoryOutput("out", clock=lambda: 1.0)
    with out:
        out.send(mido.Message("note_on", note=1))
    out.close()
    assert out.closed and out.sent == [(1.0, mido.Message("note_on", note=1))]
    with pytest.raises(MidiPortError, match="closed"):
        out.send(mido.Message("note_on", note=1))


def test_channel_map_is_one_based_on_the_command_line() -> None:
    channels = channel_map("guitar=5, drums=10", DEFAULT_CHANNELS)
    assert channels["guitar"] == 4 and channels["drums"] == 9 and channels["bass"] == DEFAULT_CHANNELS["bass"]
    for bad in ("guitar", "guitar=0", "flute=3", "bass=x"):
        with pytest.raises(ValueError, match="--channels"):
            channel_map(bad, DEFAULT_CHANNELS)


def test_an_unterminated_sysex_is_counted_and_what_it_swallowed_is_recovered() -> None:
    """RtMidi's JACK parser glues every event after `F0 7D 01` (no F7) onto that sysex until one
    ends in F7 (issue 7 item 8): the clock and notes inside come out one by one, in order, with
    the arrival time of the whole; active sensing (ignored by the port) and the guard's F7 do not."""
    got = []
    port = MemoryInput("in", lambda msg, t: got.append((msg, t)))
    glued = [0xF0, 0x7D, 0x01, 0xF8, 0xFA, 0x90, 60, 100, 0xFE, 0xF8, 0x80, 60, 0, 0xF0, 0x01, 0xF7, 0xF7]
    port.deliver(glued, t=3.0)
    assert got == [(mido.Message("clock"), 3.0), (mido.Message("start"), 3.0),
                   (mido.Message("note_on", note=60, velocity=100), 3.0), (mido.Message("clock"), 3.0),
                   (mido.Message("note_off", note=60, velocity=0), 3.0)]
    assert port.errors.counts == {"broken_sysex": 1, "sysex": 1}


@pytest.mark.parametrize("data, counts, messages", [
    ([0xF7], {}, 0),  # the guard's marker with no sysex pending: silent
    ([0xF0, 0x7D, 0x01, 0xF7], {"sysex": 1}, 0),  # a whole sysex is not a broken one
    ([0xF0, 0x7D, 0x01], {"broken_sysex": 1}, 0),  # nothing after it to recover
    ([0xF0, 0x7D, 0xF8, 0xF0, 0x7E, 0x90, 60, 1, 0xF7], {"broken_sysex": 2}, 2),  # two broken in a row
    ([0xF0, 0x7D, 0xF8, 0x3C, 0xF7], {"broken_sysex": 1, "malformed": 1}, 0),  # a data byte glued to a clock
])
def test_sysex_recovery_table(data: list[int], counts: dict[str, int], messages: int) -> None:
    got = []
    port = MemoryInput("in", lambda msg, t: got.append(msg))
    port.deliver(data)
    assert port.errors.counts == counts and len(got) == messages


class _Port(BasePort):
    """A port that is live or not, as told."""

    def __init__(self, live: bool) -> None:
        self.live = live
        super().__init__("fake")

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def is_live(self, timeout_s: float = 0.0) -> bool:
        return self.live


class _NoPortsIO(MidiIO):
    def _open_all(self) -> None:  # the logic under test only
        pass


def test_a_port_whose_client_never_runs_is_replaced_then_refused() -> None:
    io = _NoPortsIO(PortOptions(), lambda msg, t: None, ["guitar"])
    made = [_Port(False), _Port(True)]
    port = io._open_live(lambda: made.pop(0))
    assert port.live and not port.closed
    assert io.server_events.counts == {"dead_port": 1}
    dead = [_Port(False) for _ in range(LIVE_ATTEMPTS)]
    opened = list(dead)
    with pytest.raises(MidiPortError, match="never ran its client"):
        io._open_live(lambda: dead.pop(0))
    assert all(p.closed for p in opened), "a dead port was left open"
    assert io.server_events.counts == {"dead_port": 1 + LIVE_ATTEMPTS}


def test_an_open_that_met_a_changing_port_list_is_tried_again_on_a_fresh_one() -> None:
    """rtmidi's index-based open can meet a port list that another client changed meanwhile
    (PortListChanged): the next attempt opens anew; after LIVE_ATTEMPTS such opens it is refused."""
    from bridge.midi_io import PortListChanged

    io = _NoPortsIO(PortOptions(), lambda msg, t: None, ["guitar"])
    outcomes: list = [PortListChanged("cannot open MIDI output 'vaejam bass': portNumber (9) is invalid"), _Port(True)]

    def open_port():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert io._open_live(open_port).live
    assert io.server_events.counts == {"port_list_changed": 1}
    outcomes[:] = [PortListChanged("index (3) is invalid") for _ in range(LIVE_ATTEMPTS)]
    with pytest.raises(MidiPortError, match="port list changed"):
        io._open_live(open_port)
    assert io.server_events.counts == {"port_list_changed": 1 + LIVE_ATTEMPTS}
