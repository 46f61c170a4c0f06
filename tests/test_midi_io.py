"""MIDI I/O logic without a MIDI stack: API choice, port-name matching, in-memory ports, bad input."""
from __future__ import annotations

import logging

import mido
import pytest
from hypothesis import given, settings, strategies as st

from bridge.midi_io import (
    MemoryInput, MemoryOutput, MidiPortError, apis_to_try, channel_map, match_port_name,
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
