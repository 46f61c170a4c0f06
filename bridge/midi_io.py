"""MIDI ports for the live band: virtual `vaejam in`/`vaejam out` (ALSA, JACK, CoreMIDI) or existing
ports opened by name (Windows/loopMIDI), with arrival timestamps and no exceptions into callbacks.

Follows mido's habits: one small base class with `_open/_send/_close` hooks, a context manager and a
`close()` that is safe to call twice; device trouble is an OSError naming the port. python-rtmidi is
used directly (not through mido's port) because mido drops malformed input silently and we count it;
it is imported lazily, so the logic here is testable with the in-memory ports and no MIDI stack.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import mido

from bridge.clock import CountedLog

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ServerProbe = Callable[[], "frozenset[str] | None"]  # JACK server's port names now; None: no server
# handler(msg, t): a parsed message and its perf_counter arrival time; runs on the MIDI thread
MessageHandler = Callable[[mido.Message, float], None]

# --midi-api choice -> rtmidi API constant name
API_NAMES: dict[str, str] = {
    "alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "winmm": "WINDOWS_MM",
}
API_CHOICES = ("auto", "alsa", "jack", "coremidi")
IN_PORT_NAME = "vaejam in"
OUT_PORT_NAME = "vaejam out"
RECONNECT_INTERVAL_S = 1.0


class MidiPortError(OSError):
    """A port that cannot be opened or used; the message names the port and the API."""


class PortListChanged(MidiPortError):
    """rtmidi opens and connects ports by their index in a list it reads again inside the call: a
    port that another client registered or removed in between makes the index invalid. Opening
    again reads a fresh list (MidiIO._open_live)."""


def _open_error(kind: str, name: str, api: str, err: Exception) -> MidiPortError:
    """The error for an rtmidi failure while opening a port: PortListChanged where rtmidi's index
    no longer named a port (tried again, MidiIO._open_live), else MidiPortError."""
    import rtmidi

    error = PortListChanged if isinstance(err, rtmidi.InvalidPortError) else MidiPortError
    return error(f"cannot open MIDI {kind} {name!r} on {api}: {err}")


def apis_to_try(choice: str, platform: str = sys.platform, has_alsa_seq: bool | None = None) -> list[str]:
    """rtmidi APIs to try in order for a --midi-api choice (auto: the platform's native one, then JACK)."""
    if choice not in API_CHOICES:
        raise ValueError(f"unknown MIDI API {choice!r}; use one of {', '.join(API_CHOICES)}")
    if choice != "auto":
        return [API_NAMES[choice]]
    if platform.startswith("linux"):
        if has_alsa_seq is None:
            has_alsa_seq = os.path.exists("/dev/snd/seq")
            if not has_alsa_seq:
                log.info("no ALSA sequencer (/dev/snd/seq): using JACK MIDI")
        # No sequencer device (containers, servers): ALSA would fail, go straight to JACK.
        return ["LINUX_ALSA", "UNIX_JACK"] if has_alsa_seq else ["UNIX_JACK"]
    if platform == "darwin":
        return ["MACOSX_CORE", "UNIX_JACK"]
    if platform.startswith("win"):
        return ["WINDOWS_MM"]
    return ["UNIX_JACK"]


def supports_virtual(api: str) -> bool:
    return api != "WINDOWS_MM"


def match_port_name(wanted: str, available: Sequence[str]) -> str | None:
    """The available port meaning `wanted`: exact, else the one containing it (rtmidi decorates names
    with client prefixes and numbers, e.g. 'loopMIDI Port 1 2' or 'RtMidiOut Client:piano')."""
    if wanted in available:
        return wanted
    lowered = wanted.lower()
    matches = [name for name in available if lowered in name.lower()]
    return matches[0] if len(matches) == 1 else None


class BasePort:
    """Open on construction, close() safe to call twice, usable as a context manager."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = True
        self._open()
        self.closed = False

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def is_live(self, timeout_s: float = 0.0) -> bool:
        """Whether messages really move through the port (JACK ports check: see MidiIO._open_live)."""
        return True

    def __enter__(self) -> "BasePort":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} ({state})>"


class BaseInput(BasePort):
    """Parses raw bytes, stamps arrival time, hands messages to the handler; never raises upward."""

    def __init__(self, name: str, handler: MessageHandler, clock: Clock = time.perf_counter) -> None:
        self._handler = handler
        self._clock = clock
        self.errors = CountedLog(log)  # counts malformed/sysex/handler errors; thread-safe
        super().__init__(name)

    def deliver(self, data: Sequence[int], t: float | None = None) -> None:
        """One raw MIDI message as it arrived; called on the MIDI thread (or by tests).

        A SysEx with status bytes inside is one that was never terminated: RtMidi's JACK parser
        appended every later event to it until one ended in F7 (the sysex guard's, see
        RtMidiInput). It is counted as `broken_sysex`, and the messages it swallowed are recovered
        from its bytes, all stamped with this arrival time."""
        if t is None:
            t = self._clock()  # first thing: arrival time before any parsing cost
        if data and data[0] == SYSEX_START:
            cut = next((i for i in range(1, len(data)) if data[i] >= 0x80), len(data))
            if not (cut == len(data) - 1 and data[cut] == SYSEX_END):
                self.errors.event("broken_sysex", f"{self.name}: dropped an unterminated sysex "
                                  f"{bytes(data[:cut])[:8].hex()}; {len(data) - cut} bytes after it recovered")
                for message in split_messages(data[cut:]):
                    if message != [ACTIVE_SENSING]:  # as ignore_types: active sensing is not for us
                        self.deliver(message, t)
                return
        elif list(data) == [SYSEX_END]:
            return  # the sysex guard's marker when no sysex was pending (or a stray end of sysex)
        self._deliver_one(data, t)

    def _deliver_one(self, data: Sequence[int], t: float) -> None:
        try:
            msg = mido.Message.from_bytes(list(data))
        except (ValueError, TypeError, IndexError) as err:
            self.errors.event("malformed", f"{self.name}: dropped malformed MIDI {bytes(data)[:8].hex()} ({err})")
            return
        if msg.type == "sysex":
            self.errors.event("sysex", f"{self.name}: ignoring sysex ({len(data)} bytes)", logging.INFO)
            return
        try:
            self._handler(msg, t)
        except Exception as err:  # noqa: BLE001 - a bug downstream must not kill the MIDI thread
            self.errors.event("handler", f"{self.name}: handler failed on {msg}: {err!r}", logging.ERROR, True)


SYSEX_START, SYSEX_END = 0xF0, 0xF7


def split_messages(data: Sequence[int]) -> list[list[int]]:
    """A MIDI byte stream cut at each status byte (a SysEx runs to its F7); data bytes without a
    status stay with the message before them (and make it malformed), as every JACK event had its own."""
    messages: list[list[int]] = []
    for byte in data:
        in_sysex = bool(messages) and messages[-1][0] == SYSEX_START and messages[-1][-1] != SYSEX_END
        if byte == SYSEX_END and in_sysex:
            messages[-1].append(byte)
        elif byte >= 0x80 or not messages:
            messages.append([byte])
        else:
            messages[-1].append(byte)
    return messages


class BaseOutput(BasePort):
    def send(self, msg: mido.Message) -> None:
        if self.closed:
            raise MidiPortError(f"{self.name}: port is closed")
        self._send(msg)

    def _send(self, msg: mido.Message) -> None:
        raise NotImplementedError


class MemoryInput(BaseInput):
    """An input fed by tests through deliver()."""

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass


class MemoryOutput(BaseOutput):
    """An output that keeps what was sent, with send times, for tests."""

    def __init__(self, name: str, clock: Clock = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # guards sent
        self.sent: list[tuple[float, mido.Message]] = []  # (time, msg); _lock
        super().__init__(name)

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _send(self, msg: mido.Message) -> None:
        with self._lock:
            self.sent.append((self._clock(), msg))


INPUT_POLL_S = 0.0005  # how often the input thread looks in RtMidi's queue: well under a JACK period
SYSEX_GUARD_S = 0.02  # JACK input silent this long: the guard sends F7, ending any sysex left open
SERVER_SILENT_S = 1.5  # JACK input deaf to its own guard this long: is the server still there?
LIVE_TIMEOUT_S = 1.0  # a new JACK port must hear its own loopback this soon (about 200 periods)
LIVE_ATTEMPTS = 3  # new JACK clients tried for a port whose process callback never runs
DRAIN_TIMEOUT_S = 2.0  # longest wait for a JACK output's last messages to be seen leaving it
ACTIVE_SENSING = 0xFE  # the drain marker; also tells hardware synths "connection gone, release voices"


def _rtmidi_api(api: str) -> int:
    import rtmidi  # lazily: only real ports need the library

    return getattr(rtmidi, f"API_{api}")


def batch_times(deltas: Sequence[float], now: float) -> list[float]:
    """Arrival times of a batch of queued messages, the last read at `now`: RtMidi gives each
    message's delta to the one before, so earlier ones are placed back from the newest."""
    times = [now] * len(deltas)
    for i in range(len(deltas) - 2, -1, -1):
        times[i] = times[i + 1] - max(0.0, deltas[i + 1])
    return times


class RtMidiInput(BaseInput):
    """A virtual input port (virtual=True) or an existing output port of another client, by name.

    No Python runs in the MIDI API's own thread (JACK's process callback is real-time): RtMidi
    queues what arrives, and a thread of ours reads the queue every INPUT_POLL_S. close() joins
    that thread first, so once it returns no message is delivered any more.

    On JACK a sysex guard (an output of ours connected to this port) sends a lone F7 whenever the
    port heard nothing for SYSEX_GUARD_S: RtMidi's JACK parser glues every event after an
    unterminated SysEx onto it until an event ends in F7, so without the guard one `F0 7D 01` would
    make the band deaf; with it the glued bytes arrive within a few periods and `deliver` recovers
    them. The guard's F7 is also a heartbeat: `heard_at` goes stale only when the server stopped
    moving MIDI (MidiIO's server watch).
    """

    def __init__(self, name: str, handler: MessageHandler, api: str, virtual: bool = True,
                 client_name: str = "vaejam", clock: Clock = time.perf_counter) -> None:
        self.api = api
        self._virtual = virtual
        self._client_name = client_name
        self._halt = threading.Event()  # set by close(): the poll thread ends
        self._poller: threading.Thread | None = None
        self._guard: object | None = None  # JACK only: an rtmidi MidiOut into our port; poll thread only
        self.jack_name: str | None = None  # JACK only: our port's full name ("vaejam:vaejam in")
        self.heard_at = clock()  # when the poll thread last read anything (the guard's F7 included)
        self.heard = threading.Event()  # set by the poll thread once it has read anything
        super().__init__(name, handler, clock)

    def _open(self) -> None:
        import rtmidi

        try:
            self._rt = rtmidi.MidiIn(_rtmidi_api(self.api), self._client_name, queue_size_limit=4096)
            # sysex and clock reach us (sysex to be counted, clock to be followed); active sensing not
            self._rt.ignore_types(sysex=False, timing=False, active_sense=True)
            if self.api == "UNIX_JACK":
                self._guard = rtmidi.MidiOut(_rtmidi_api(self.api), f"{self._client_name}-guard")
                before = set(self._guard.get_ports())  # type: ignore[attr-defined]
            if self._virtual:
                self._rt.open_virtual_port(self.name)
            else:
                self.name = _open_by_name(self._rt, self.name, self.api)
            if self._guard is not None:
                self._connect_guard(before)
        except (rtmidi.SystemError, rtmidi.RtMidiError, RuntimeError) as err:
            self._delete_rtmidi()
            raise _open_error("input", self.name, self.api, err) from err
        self.heard_at = self._clock()
        self._poller = threading.Thread(target=self._poll, name=f"vaejam-midi-in:{self.name}", daemon=True)
        self._poller.start()

    def _connect_guard(self, before: set[str]) -> None:
        """Connect the guard to our port; without our port's name, no guard (and no heartbeat)."""
        guard = self._guard
        own = self.name if self._virtual else "RtMidi input"  # python-rtmidi's name for a connecting port
        self.jack_name = _new_port(guard, before, self._client_name, own)
        ports = guard.get_ports()  # type: ignore[attr-defined]
        if self.jack_name not in ports:
            log.info("%s: own JACK port not found; an unterminated sysex would not be ended", self.name)
            guard.delete()  # type: ignore[attr-defined]
            self._guard = None
            return
        guard.open_port(ports.index(self.jack_name), "sysex guard")  # type: ignore[attr-defined]

    def _poll(self) -> None:
        guarded_at = self._clock()
        while not self._halt.is_set():
            batch = []
            while (event := self._rt.get_message()) is not None:
                batch.append(event)
            if not batch:
                now = self._clock()
                # a stalled server empties no ring buffer: slow down, so ours does not fill
                interval = SYSEX_GUARD_S if now - self.heard_at < SERVER_SILENT_S else SERVER_SILENT_S
                if self._guard is not None and now - max(self.heard_at, guarded_at) >= interval:
                    guarded_at = now
                    self._guard.send_message([SYSEX_END])  # type: ignore[attr-defined]
                time.sleep(INPUT_POLL_S)
                continue
            self.heard_at = now = self._clock()
            self.heard.set()
            times = batch_times([delta for _, delta in batch], now)
            for (data, _), t in zip(batch, times):
                if self._halt.is_set():
                    return
                self.deliver(data, t)

    def is_live(self, timeout_s: float = LIVE_TIMEOUT_S) -> bool:
        """Whether JACK runs our client: the port heard its own guard (True without a guard: on
        other APIs there is nothing to check, and nothing to fear). See MidiIO._open_live."""
        return self._guard is None or self.heard.wait(timeout_s)

    def silent_for(self, now: float) -> float | None:
        """Seconds since the port last heard anything; None without a guard (silence means nothing)."""
        return None if self._guard is None or self.closed else now - self.heard_at

    def _close(self) -> None:
        self._halt.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join()
        self._delete_rtmidi()

    def _delete_rtmidi(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.delete()  # type: ignore[attr-defined]
        rt = getattr(self, "_rt", None)  # absent when the MidiIn itself could not be made
        if rt is not None:
            rt.close_port()
            rt.delete()


class RtMidiOutput(BaseOutput):
    """A virtual output port, or a connection to an existing input port by name.

    On JACK, RtMidi hands messages to JACK's process thread through a ring buffer and may unregister
    the port before the buffer's last messages went out (its close waits at most one second for one
    process cycle, and that can be a cycle that had already read the buffer). So a JACK output has
    an echo: an input of ours connected to it from the start. To close, an Active Sensing marker is
    sent after the last message, then a second once the echo heard the first, and the port closes
    once the echo heard both: everything sent before has then reached every connected port. The echo's queue is emptied by
    `discard_echo()` (the daemon's housekeeping) so it never fills.
    """

    def __init__(self, name: str, api: str, virtual: bool = True, client_name: str = "vaejam",
                 clock: Clock = time.perf_counter) -> None:
        self.api = api
        self._virtual = virtual
        self._client_name = client_name
        self._clock = clock
        self._lock = threading.Lock()  # guards _rt.send_message: rtmidi ports are not thread-safe
        self._probe: object | None = None  # JACK only: an rtmidi MidiIn connected to our port; _lock
        self.jack_name: str | None = None  # JACK only: our port's full name ("client-01:vaejam out")
        self.drained: bool | None = None  # JACK only, after close: whether the marker was seen
        # JACK only: raw messages sent once more at close, in a later process cycle than everything
        # before them (the release: see _drain_jack); set by MidiIO.close
        self.final: tuple[Sequence[int], ...] = ()
        super().__init__(name)

    def _open(self) -> None:
        import rtmidi

        try:
            if self.api == "UNIX_JACK":
                self._probe = rtmidi.MidiIn(_rtmidi_api(self.api), f"{self._client_name}-echo", queue_size_limit=8192)
                before = set(self._probe.get_ports())  # type: ignore[attr-defined]
            self._rt = rtmidi.MidiOut(_rtmidi_api(self.api), self._client_name)
            if self._virtual:
                self._rt.open_virtual_port(self.name)
            else:
                self.name = _open_by_name(self._rt, self.name, self.api)
            if self._probe is not None:
                self.jack_name = _new_port(self._probe, before, self._client_name, self.name)
                self._connect_echo()
        except (rtmidi.SystemError, rtmidi.RtMidiError, RuntimeError) as err:
            for rt in (self._probe, getattr(self, "_rt", None)):
                if rt is not None:
                    rt.delete()  # type: ignore[attr-defined]
            self._probe = None
            raise _open_error("output", self.name, self.api, err) from err

    def _send(self, msg: mido.Message) -> None:
        with self._lock:
            self._rt.send_message(msg.bytes())

    def _close(self) -> None:
        with self._lock:
            if self._probe is not None:
                self.drained = self._drain_jack()
                if not self.drained:
                    log.warning("%s: could not confirm that the last MIDI messages left the port within "
                                "%.0f s (JACK server stalled?)", self.name, DRAIN_TIMEOUT_S)
                self._probe.delete()  # type: ignore[attr-defined]
                self._probe = None
            self._rt.close_port()
            self._rt.delete()

    def _connect_echo(self) -> None:
        """Listen to our own port (Active Sensing included); without our port's name, no echo."""
        probe = self._probe
        ports = probe.get_ports()  # type: ignore[attr-defined]
        if self.jack_name not in ports:
            log.info("%s: own JACK port not found; closing will not wait for the last messages", self.name)
            probe.delete()  # type: ignore[attr-defined]
            self._probe = None
            return
        probe.ignore_types(sysex=True, timing=True, active_sense=False)  # type: ignore[attr-defined]
        probe.open_port(ports.index(self.jack_name), "echo")  # type: ignore[attr-defined]

    def is_live(self, timeout_s: float = LIVE_TIMEOUT_S) -> bool:
        """Whether JACK runs our client: an Active Sensing marker sent now reaches our echo (True
        without an echo). Sent before any note, so a synth that hears it has nothing to release."""
        with self._lock:
            probe = self._probe
            if probe is None:
                return True
            self._rt.send_message([ACTIVE_SENSING])
            deadline = self._clock() + timeout_s
            while self._clock() < deadline:
                event = probe.get_message()  # type: ignore[attr-defined]
                if event is not None and event[0] == [ACTIVE_SENSING]:
                    return True
                if event is None:
                    time.sleep(0.001)
            return False

    def abandon(self) -> None:
        """Close without waiting for the last messages: the server is gone, nothing leaves any more."""
        with self._lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.delete()  # type: ignore[attr-defined]
        self.close()

    def discard_echo(self) -> None:
        """Empty the echo's queue (what it heard is only needed at close)."""
        with self._lock:
            if self._probe is not None and not self.closed:
                while self._probe.get_message() is not None:  # type: ignore[attr-defined]
                    pass

    def _drain_jack(self) -> bool:
        """True when the echo heard a marker sent after the last message, and then a second one.

        The first shows that the ring buffer was emptied into the port in some cycle N; the
        second, sent only then, comes out in a later cycle, so every reader has finished cycle N
        before the port goes (the echo may run before other readers within a cycle). One marker
        each: the echo has been connected since the port opened, and JACK keeps the order.
        `final` (the All Notes Off) goes out again with the second marker: on an xrun, JACK runs
        the next cycle before every client has finished, and a reader can then get a whole
        cycle's MIDI garbled or lost (seen under load: the release lost, the marker after it
        heard), so the release travels in two cycles."""
        probe = self._probe
        while probe.get_message() is not None:  # type: ignore[attr-defined]
            pass  # a full echo queue would drop the marker
        deadline = self._clock() + DRAIN_TIMEOUT_S
        for marker in range(2):
            if marker:
                for data in self.final:
                    self._rt.send_message(list(data))
            self._rt.send_message([ACTIVE_SENSING])
            while True:
                event = probe.get_message()  # type: ignore[attr-defined]
                if event is not None and event[0] == [ACTIVE_SENSING]:
                    break
                if self._clock() >= deadline:
                    return False
                if event is None:
                    time.sleep(0.001)
        return True


def _new_port(lister: object, before: set[str], client: str, port: str) -> str | None:
    """Our port among those that appeared since `before`: named `port`, of client `client` or the
    name JACK numbered for it (client-01, ...), so other clients opening ports meanwhile do not
    confuse it. None when that is still ambiguous (two of ours at once)."""
    pattern = re.compile(rf"^{re.escape(client)}(-\d+)?:{re.escape(port)}$")
    new = [name for name in lister.get_ports() if name not in before and pattern.match(name)]  # type: ignore[attr-defined]
    return new[0] if len(new) == 1 else None


def _open_by_name(rt: object, wanted: str, api: str) -> str:
    available = rt.get_ports()  # type: ignore[attr-defined]
    name = match_port_name(wanted, available)
    if name is None:
        listing = ", ".join(repr(n) for n in available) or "none"
        raise MidiPortError(f"no MIDI port named {wanted!r} on {api} (available: {listing})")
    rt.open_port(available.index(name))  # type: ignore[attr-defined]
    return name


class PortLister:
    """Lists other clients' ports through one long-lived rtmidi client per direction: polling every
    second with a new client each time would register a JACK client each time, and every
    registration reorders JACK's graph (a timing hiccup for everyone on the server)."""

    def __init__(self, api: str, client_name: str) -> None:
        self._api = api
        self._client_name = f"{client_name}-probe"
        self._lock = threading.Lock()  # guards _clients
        self._clients: dict[bool, object] = {}  # output? -> rtmidi MidiIn/MidiOut; _lock

    def names(self, output: bool) -> list[str]:
        """Output ports (which we read from) when output=True, else input ports."""
        import rtmidi

        with self._lock:
            client = self._clients.get(output)
            if client is None:
                kind = rtmidi.MidiIn if output else rtmidi.MidiOut
                client = self._clients[output] = kind(_rtmidi_api(self._api), self._client_name)
            return list(client.get_ports())  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.delete()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PortOptions:
    """What `vaejam run` asked for."""

    midi_api: str = "auto"
    in_port: str | None = None  # open this existing port instead of a virtual `vaejam in`
    out_port: str | None = None  # send to this existing port instead of a virtual `vaejam out`
    port_per_instrument: bool = False  # `vaejam guitar`, `vaejam bass`, ... instead of one out port
    client_name: str = "vaejam"  # the ALSA/JACK client name (JACK numbers repeats: vaejam-01, ...)


class MidiIO:
    """The daemon's ports: one input, outputs routed by instrument; reconnects named peers.

    `send(instrument, msg)` is the NoteScheduler's output function. Ports opened by name are watched
    (`poll_reconnect`, every RECONNECT_INTERVAL_S from the daemon's housekeeping thread): a peer that
    vanishes is closed on our side and reopened when its name is back.
    """

    def __init__(self, options: PortOptions, handler: MessageHandler, instruments: Iterable[str],
                 clock: Clock = time.perf_counter, server_probe: ServerProbe | None = None) -> None:
        self.options = options
        self._handler = handler
        self._clock = clock
        self._instruments = tuple(instruments)
        self._lock = threading.Lock()  # guards the port references below (swapped on reconnect)
        self.api = ""
        self.input: BaseInput | None = None  # _lock
        self.outputs: dict[str, BaseOutput] = {}  # port key -> port; _lock
        self._routes: dict[str, str] = {}  # instrument -> port key; fixed after open
        self.send_errors = CountedLog(log)
        self._input_closed_for_good = False  # close_input() was called: the watcher must not reopen it
        self._ports_lister: PortLister | None = None  # housekeeping thread only (poll_reconnect)
        self._server_probe = server_probe  # JACK: the server's port names (None: gone); default jack_watch
        self.server_ok = True  # False from a JACK server's death until our ports are back on it
        self.server_events = CountedLog(log)  # server_lost, server_back, server_stalled, ...
        self._open_all()

    def _open_all(self) -> None:
        errors = []
        for api in apis_to_try(self.options.midi_api):
            try:
                self._open_with(api)
                self.api = api
                return
            except MidiPortError as err:
                self.close()
                errors.append(str(err))
                log.info("MIDI API %s unavailable (%s)", api, err)
        raise MidiPortError("no MIDI API could open the ports: " + "; ".join(errors))

    def _open_with(self, api: str) -> None:
        opts = self.options
        if (opts.in_port is None or opts.out_port is None) and not supports_virtual(api):
            raise MidiPortError(f"{api} has no virtual ports: pass --in-port and --out-port (e.g. loopMIDI names)")
        self.input = self._open_input(api)
        for key, name, virtual in self._output_specs():
            self.outputs[key] = self._open_output(api, name, virtual)
        per_instrument = opts.port_per_instrument and opts.out_port is None
        self._routes = {i: i if per_instrument else "out" for i in self._instruments}

    def _output_specs(self) -> list[tuple[str, str, bool]]:
        """(key, port name, virtual?) of each output the options ask for."""
        opts = self.options
        if opts.out_port is not None:
            return [("out", opts.out_port, False)]
        if opts.port_per_instrument:
            return [(i, f"vaejam {i}", True) for i in self._instruments]
        return [("out", OUT_PORT_NAME, True)]

    def _open_input(self, api: str) -> BaseInput:
        client = self.options.client_name
        if self.options.in_port is None:
            return self._open_live(lambda: RtMidiInput(IN_PORT_NAME, self._handler, api, client_name=client,
                                                       clock=self._clock))
        return self._open_live(lambda: RtMidiInput(self.options.in_port, self._handler, api, virtual=False,
                                                   client_name=client, clock=self._clock))

    def _open_output(self, api: str, name: str, virtual: bool) -> BaseOutput:
        return self._open_live(lambda: RtMidiOutput(name, api, virtual=virtual, client_name=self.options.client_name))

    def _open_live(self, open_port: Callable[[], BasePort]) -> BasePort:
        """A port whose messages really move. A JACK client opened while other clients come and go
        on the server can come up with its process callback never called (jackd logs "client ...
        was not finished, state = Triggered" every cycle; 3 of 25 opens with a jack_lsp loop
        running beside, in libjack, whatever our order of calls): the port exists, is connected,
        and stays deaf or mute for good. Each JACK port proves itself through its own loopback
        (the input's guard, the output's echo) before use; a dead one is closed and its client
        opened anew. So is one whose open met a port list that changed under it (PortListChanged)."""
        for attempt in range(1, LIVE_ATTEMPTS + 1):
            try:
                port = open_port()
            except PortListChanged as err:
                failure = f"{err}: the port list changed while it opened"
                self.server_events.event("port_list_changed", f"{failure} (attempt {attempt} of {LIVE_ATTEMPTS})")
                continue
            if port.is_live(LIVE_TIMEOUT_S):
                return port
            failure = f"{port.name}: JACK never ran its client"
            self.server_events.event("dead_port", f"{failure} (attempt {attempt} of {LIVE_ATTEMPTS}); opening a new one")
            self._close_ports([port], abandon=True)
        raise MidiPortError(f"{failure}, {LIVE_ATTEMPTS} attempts")

    @property
    def input_name(self) -> str:
        with self._lock:
            return self.input.name if self.input is not None else self.options.in_port or ""

    @property
    def output_names(self) -> list[str]:
        with self._lock:
            return [port.name for port in self.outputs.values()]

    def close_input(self) -> None:
        """Stop hearing MIDI (shutdown: first, so no clock tick schedules notes after the panic)."""
        self._input_closed_for_good = True
        with self._lock:
            port, self.input = self.input, None
        if port is not None:
            port.close()

    def send(self, instrument: str, msg: mido.Message) -> None:
        """Route to the instrument's port; a vanished port drops the message (counted), never raises."""
        with self._lock:
            # instruments without a route of their own (e.g. panic CCs for the piano) use `vaejam out`
            port = self.outputs.get(self._routes.get(instrument, "out"))
        if port is None or port.closed:
            if instrument in self._routes:
                self.send_errors.event("no_port", f"no open MIDI output for {instrument}: dropping notes until it is back")
            return
        try:
            port.send(msg)
        except Exception as err:  # noqa: BLE001 - output trouble must not stop the scheduler
            self.send_errors.event("send", f"{port.name}: send failed ({err!r})")

    def poll_reconnect(self) -> None:
        """Reopen a port opened by name whose peer went away and came back; close one that vanished.
        Also empties the JACK outputs' echo queues."""
        if self.api == "UNIX_JACK" and not self._input_closed_for_good and not self._watch_server():
            return  # no server: nothing else to look at
        with self._lock:
            outputs = list(self.outputs.values())
        for port in outputs:
            if isinstance(port, RtMidiOutput):
                port.discard_echo()
        if self.options.in_port is not None and not self._input_closed_for_good:
            self._watch_input()
        if self.options.out_port is not None:
            self._watch_output()

    def _probe_server(self) -> frozenset[str] | None:
        if self._server_probe is not None:
            return self._server_probe()
        from bridge.jack_watch import server_ports

        return server_ports()

    def _watch_server(self) -> bool:
        """JACK: notice the server's death (our input stopped hearing its own sysex guard and the
        server no longer holds our port) and reopen every port once it is back; False while down."""
        if self.server_ok:
            with self._lock:
                port = self.input
            silent = port.silent_for(self._clock()) if isinstance(port, RtMidiInput) else None
            if silent is None or silent < SERVER_SILENT_S:
                return True
        try:
            ports = self._probe_server()
        except TimeoutError as err:
            self.server_events.event("server_stalled", f"JACK server not answering: {err}")
            return self.server_ok
        if self.server_ok:
            if ports is not None and port.jack_name in ports:
                self._reopen_deaf_input(port, silent)
                return True
            self._server_lost()
        return ports is not None and self._reopen_after_server()

    def _server_lost(self) -> None:
        """Close every port without draining (their server is gone), the lister too: libjack must
        hold no client of the dead server before one is opened on the next."""
        log.warning("JACK server went away: MIDI ports closed; they reopen when a server of that name is back")
        self.server_events.event("server_lost", "JACK server lost", logging.DEBUG)
        self.server_ok = False
        self._close_ports(self._take_ports(), abandon=True)
        self._close_lister()

    def _reopen_after_server(self) -> bool:
        """Every port under its old name; a named peer not back yet is left to the watchers."""
        opened: list[BasePort] = []
        try:
            new_input = None
            if not self._input_closed_for_good:
                try:
                    new_input = self._open_input(self.api)
                    opened.append(new_input)
                except MidiPortError:
                    if self.options.in_port is None:
                        raise
            outputs: dict[str, BaseOutput] = {}
            for key, name, virtual in self._output_specs():
                try:
                    outputs[key] = self._open_output(self.api, name, virtual)
                    opened.append(outputs[key])
                except MidiPortError:
                    if virtual:
                        raise
        except MidiPortError as err:
            self.server_events.event("reopen_failed", f"JACK server is back but the MIDI ports failed to open: {err}")
            self._close_ports(opened, abandon=True)
            return False
        with self._lock:
            self.input, self.outputs = new_input, outputs
        self.server_ok = True
        self.server_events.event("server_back", "JACK server back", logging.DEBUG)
        log.warning("JACK server is back: MIDI ports %s reopened", ", ".join(repr(p.name) for p in opened))
        return True

    def _reopen_deaf_input(self, port: RtMidiInput, silent: float) -> None:
        """The server holds our input but JACK stopped running its client (the input is deaf to its
        own guard): the input gets a new client; outputs stay, so no sounding note loses its note-off."""
        self.server_events.event("input_silent", f"{port.name}: deaf to its own sysex guard for {silent:.1f} s; "
                                                 "reopening it")
        with self._lock:
            if self.input is not port:
                return
            self.input = None
        self._close_ports([port])
        try:
            reopened = self._open_input(self.api)
        except MidiPortError as err:
            self.server_events.event("reopen_failed", f"{port.name}: could not reopen: {err}")
            return
        with self._lock:
            self.input = reopened

    def _take_ports(self) -> list[BasePort]:
        """Every open port, input first (so no message arrives while the rest close); the
        attributes are emptied, so no sender finds a port that is closing."""
        with self._lock:
            ports: list[BasePort] = ([self.input] if self.input is not None else []) + list(self.outputs.values())
            self.input, self.outputs = None, {}
        return ports

    def _close_ports(self, ports: list[BasePort], abandon: bool = False) -> None:
        for port in ports:
            try:
                if abandon and isinstance(port, RtMidiOutput):
                    port.abandon()
                else:
                    port.close()
            except Exception as err:  # noqa: BLE001 - closing the others matters more
                log.warning("closing %s failed: %r", port.name, err)

    def _close_lister(self) -> None:
        if self._ports_lister is not None:
            self._ports_lister.close()
            self._ports_lister = None

    def _lister(self) -> PortLister:
        if self._ports_lister is None:
            self._ports_lister = PortLister(self.api, self.options.client_name)
        return self._ports_lister

    def _watch_input(self) -> None:
        wanted = self.options.in_port
        present = match_port_name(wanted, self._lister().names(output=True)) is not None
        with self._lock:
            port = self.input
        if port is not None and not present:
            log.warning("MIDI input %r vanished; waiting for it to come back", wanted)
            port.close()
            with self._lock:
                self.input = None
        elif port is None and present:
            try:
                reopened = self._open_input(self.api)
            except MidiPortError as err:
                log.warning("MIDI input %r is back but failed to open: %s", wanted, err)
                return
            with self._lock:
                self.input = reopened
            log.info("MIDI input %r reconnected", wanted)

    def _watch_output(self) -> None:
        wanted = self.options.out_port
        present = match_port_name(wanted, self._lister().names(output=False)) is not None
        with self._lock:
            port = self.outputs.get("out")
        if port is not None and not present:
            log.warning("MIDI output %r vanished; waiting for it to come back", wanted)
            with self._lock:
                del self.outputs["out"]
            port.close()
        elif port is None and present:
            try:
                reopened = self._open_output(self.api, wanted, virtual=False)
            except MidiPortError as err:
                log.warning("MIDI output %r is back but failed to open: %s", wanted, err)
                return
            with self._lock:
                self.outputs["out"] = reopened
            log.info("MIDI output %r reconnected", wanted)
            # Notes sounding when it vanished had their note-offs dropped: All Notes Off (CC 123) on
            # every channel, as MidiIO does not know which ones the scheduler's --channels chose.
            for channel in range(16):
                try:
                    reopened.send(mido.Message("control_change", channel=channel, control=123, value=0))
                except Exception as err:  # noqa: BLE001 - output trouble must not stop the watcher
                    self.send_errors.event("send", f"{reopened.name}: All Notes Off failed ({err!r})")
                    break

    def counters(self) -> dict[str, int]:
        with self._lock:
            port = self.input
        counts = dict(port.errors.counts) if port is not None else {}
        counts.update({f"send_{k}": v for k, v in self.send_errors.counts.items()})
        counts.update(self.server_events.counts)
        return counts

    def close(self, final: Sequence[mido.Message] = ()) -> None:
        """Close every port (input first, so no callback runs during shutdown); safe twice.
        `final`: messages each JACK output sends once more as it closes (the daemon's All Notes
        Off), in a later JACK cycle than the rest (RtMidiOutput._drain_jack says why)."""
        ports = self._take_ports()
        for port in ports:
            if isinstance(port, RtMidiOutput):
                port.final = tuple(msg.bytes() for msg in final)
        self._close_ports(ports)
        self._close_lister()


def channel_map(text: str, defaults: Mapping[str, int]) -> dict[str, int]:
    """'guitar=2,bass=3,drums=10' (1-based MIDI channels, as users count) -> 0-based channels."""
    channels = dict(defaults)
    if not text.strip():
        return channels
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            raise ValueError(f"--channels: bad item {item!r}; use NAME=CHANNEL with NAME in {', '.join(defaults)}")
        try:
            channel = int(value)
        except ValueError as err:
            raise ValueError(f"--channels: {name} needs a channel number 1-16, got {value!r}") from err
        if not 1 <= channel <= 16:
            raise ValueError(f"--channels: {name}={channel} is outside 1-16")
        channels[name] = channel - 1
    return channels
