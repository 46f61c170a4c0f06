"""The OSC note output (bridge.osc_out): the message bytes, a real UDP receiver, and the daemon's send
function sending each scheduled note as MIDI and then as OSC at the same step."""
from __future__ import annotations

import socket
import time
from typing import Iterator

import mido
import pytest
from pythonosc.osc_message import OscMessage

from bridge.daemon import _LateSend
from bridge.osc_out import OscNoteOut, StepTracking, note_message, parse_target
from bridge.scheduler import DEFAULT_CHANNELS, NoteScheduler
from models.bars import Note


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3.0)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> tuple[str, list]:
    message = OscMessage(sock.recv(65536))
    return message.address, list(message.params)


def test_note_message_bytes() -> None:
    assert note_message("bass", 40, 100, 3, 8) == (
        b"/vaejam/out/bass\x00\x00\x00\x00,iiii\x00\x00\x00"
        b"\x00\x00\x00(\x00\x00\x00d\x00\x00\x00\x03\x00\x00\x00\x08")


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9002", ("127.0.0.1", 9002)),
                                            ("localhost:1", ("localhost", 1)), ("[::1]:9002", ("::1", 9002))])
def test_targets_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["9002", "host:", ":9002", "host:0", "host:70000", "host:x"])
def test_bad_targets_say_how(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target(text)


def test_an_unknown_host_is_an_os_error() -> None:
    with pytest.raises(OSError, match="cannot resolve"):
        OscNoteOut("no-such-host.invalid", 9002)


def test_notes_arrive_over_udp_and_other_messages_are_not_sent(receiver: socket.socket) -> None:
    out = OscNoteOut(*receiver.getsockname(), position=lambda: 3 * 32 + 8)
    out.send("guitar", mido.Message("control_change", control=123))
    out.send("guitar", mido.Message("note_on", note=60, velocity=90))
    out.send("guitar", mido.Message("note_off", note=60, velocity=64))  # a note-off is velocity 0
    assert receive(receiver) == ("/vaejam/out/guitar", [60, 90, 3, 8])
    assert receive(receiver) == ("/vaejam/out/guitar", [60, 0, 3, 8])
    assert out.counters() == {"sent": 2, "errors": 0}
    out.close()
    out.close()
    out.send("guitar", mido.Message("note_on", note=61, velocity=90))  # after close: nothing, no error


def test_the_daemon_send_function_sends_midi_then_osc_at_the_scheduled_step(receiver: socket.socket) -> None:
    """The path `vaejam run --osc-out` builds: NoteScheduler -> _LateSend -> MIDI port, then OSC."""
    midi_sent: list[tuple[float, str, mido.Message]] = []

    class FakeMidi:
        def send(self, instrument: str, msg: mido.Message) -> None:
            midi_sent.append((time.perf_counter(), instrument, msg))

    out = OscNoteOut(*receiver.getsockname())
    send = _LateSend(out)
    send.midi = FakeMidi()  # type: ignore[assignment]
    scheduler = StepTracking(NoteScheduler(send, DEFAULT_CHANNELS))
    out.position = lambda: scheduler.step
    scheduler.schedule_bar(64, "bass", [Note(4, 6, 36, 100)])
    scheduler.schedule_bar(64, "drums", [Note(4, 5, 42, 80)])
    delays = []
    for step in range(64, 72):
        scheduler.on_step(step)
        for sent_at, _, _ in midi_sent[len(delays):]:
            receive_and_time = receive(receiver), time.perf_counter() - sent_at
            delays.append(receive_and_time)
    got = [message for message, _ in delays]
    assert got == [("/vaejam/out/bass", [36, 100, 2, 4]), ("/vaejam/out/drums", [42, 80, 2, 4]),
                   ("/vaejam/out/drums", [42, 0, 2, 5]), ("/vaejam/out/bass", [36, 0, 2, 6])]
    assert [(inst, m.type, m.note) for _, inst, m in midi_sent] == [
        ("bass", "note_on", 36), ("drums", "note_on", 42), ("drums", "note_off", 42), ("bass", "note_off", 36)]
    assert max(delay for _, delay in delays) < 0.05  # same call as the MIDI note: well under a step
    scheduler.release()  # StepTracking hands everything else to the scheduler
    assert scheduler.counters["note_on"] == 2


def test_osc_send_errors_are_counted_not_raised() -> None:
    out = OscNoteOut("127.0.0.1", 9)
    out._socket.close()  # a dead socket: every send fails
    out.send("bass", mido.Message("note_on", note=36, velocity=100))
    assert out.counters() == {"sent": 0, "errors": 1}
