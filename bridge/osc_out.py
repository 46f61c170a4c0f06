"""`vaejam run --osc-out HOST:PORT`: the band's notes as OSC, for the vaejam Band Max for Live device.

Each note the scheduler sends as MIDI is sent at the same moment, right after it, as
`/vaejam/out/<instrument> pitch velocity bar step` (velocity 0 = note off; bar and step are the
clock's absolute bar and 32nd-step), one UDP datagram per note. The sender is called from the
scheduler's send function (bridge.daemon._LateSend), so OSC notes keep the MIDI path's timing and
the scheduler itself knows nothing of OSC. Sending never blocks or raises into the clock thread: a
full socket buffer or an unreachable host is counted (`osc_out/...` in /vaejam/status).
"""
from __future__ import annotations

import socket
import threading
from typing import Any, Callable

import mido
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.osc_table import PREFIX
from models.bars import STEPS_PER_BAR

OUT_PREFIX = f"{PREFIX}/out"


def parse_target(text: str) -> tuple[str, int]:
    """'127.0.0.1:9002' -> ('127.0.0.1', 9002); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--osc-out {text}: use HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9002")
    return host.strip("[]"), int(port)


def note_message(instrument: str, pitch: int, velocity: int, bar: int, step: int) -> bytes:
    """One OSC message: /vaejam/out/<instrument> i i i i."""
    builder = OscMessageBuilder(f"{OUT_PREFIX}/{instrument}")
    for value in (pitch, velocity, bar, step):
        builder.add_arg(int(value), "i")
    return builder.build().dgram


class StepTracking:
    """The scheduler as the session sees it, remembering the last step it was told (the notes'
    position); everything else is the wrapped scheduler's."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self.step = 0  # last absolute step given to on_step; written by the clock thread only

    def on_step(self, step: int) -> None:
        self.step = step
        self._scheduler.on_step(step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class OscNoteOut:
    """Sends band notes to one UDP address; `position()` gives the absolute step of a note."""

    def __init__(self, host: str, port: int, position: Callable[[], int] = lambda: 0) -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as err:
            raise OSError(err.errno, f"--osc-out {host}:{port}: cannot resolve {host!r} ({err.strerror})") from err
        family, _, _, _, address = infos[0]
        self.address = address
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.setblocking(False)  # never wait in the clock thread
        self.position = position  # absolute step of the note being sent; set before the clock starts
        self._lock = threading.Lock()  # guards _counters
        self._counters = {"sent": 0, "errors": 0}  # _lock
        self._closed = False

    def send(self, instrument: str, msg: mido.Message) -> None:
        """The OSC twin of a MIDI note the scheduler just sent; other messages are not sent."""
        if self._closed or msg.type not in ("note_on", "note_off"):
            return
        velocity = msg.velocity if msg.type == "note_on" else 0
        bar, step = divmod(self.position(), STEPS_PER_BAR)
        data = note_message(instrument, msg.note, velocity, bar, step)
        try:
            self._socket.sendto(data, self.address)
            kind = "sent"
        except OSError:  # full buffer, nobody listening (ICMP), network down: count, go on
            kind = "errors"
        with self._lock:
            self._counters[kind] += 1

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def close(self) -> None:
        """Safe to call twice."""
        self._closed = True
        self._socket.close()
