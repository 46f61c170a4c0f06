"""The OSC control server: the address table's addresses over UDP, bad input counted, never raised.

One python-osc Dispatcher maps each `OSC_TABLE` address to a handler; a default handler counts
unknown addresses. A BlockingOSCUDPServer handles datagrams one at a time, in arrival order, on
its own thread; handlers only convert values and hand them to the `ControlTarget`, which stages
them for the next bar, so the thread never waits on the band.

What python-osc would do that we do not: swallow parse errors silently (we count "malformed"),
sleep on the server thread until a bundle's time tag (we dispatch at once: controls apply from
the next bar anyway), and print a traceback when a handler raises (we count and log once).
Every datagram is checked against its own type tags before python-osc parses it (`packet_problem`):
python-osc read a 1-byte float argument as 32.0, and logged a warning per unknown type tag or odd
bundle element (746 lines), where we count "malformed" and log at most once per interval.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from typing import Callable, Protocol

from pythonosc import osc_bundle_builder, osc_message_builder, osc_packet
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridge.clock import HELPER_PRIORITY, CountedLog, _raise_thread_priority
from bridge.osc_table import OSC_TABLE, PREFIX, STATUS_PREFIX, OscAddress, Value

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # controls are not for the whole network unless the user says so
DEFAULT_PORT = 9000
COUNTER_KINDS = (
    "ok",  # applied (clamped ones included)
    "clamped",  # a number outside the table's range, clamped to it
    "unknown_address",
    "bad_type",  # wrong OSC type or argument count
    "not_finite",  # NaN or inf
    "bad_pattern",  # an address pattern too complex to match safely
    "malformed",  # a datagram that does not parse as OSC
    "rejected",  # the target refused the value (ValueError/TypeError), e.g. an unknown style
    "target_error",  # the target raised anything else: a bug, logged with its traceback
    "status",  # status replies sent
    "reply_error",  # a status reply that could not be sent
)
PATTERN_CHARS = re.compile(r"[*?\[\]{}]")
MAX_PATTERN_LENGTH = 128
MAX_PATTERN_WILDCARDS = 4  # python-osc turns patterns into regexes: many stars backtrack for ages
Address = tuple[str, int]


class ControlTarget(Protocol):
    def set_control(self, name: str, value: Value) -> None: ...
    def action(self, name: str, args: tuple) -> None: ...
    def status(self) -> dict[str, object]: ...


class _Dispatcher(Dispatcher):
    """A Dispatcher that counts what it cannot parse and never sleeps for time tags."""

    def __init__(self, on_malformed: Callable[[bytes, Exception], None],
                 on_bad_pattern: Callable[[str], None]) -> None:
        super().__init__()
        self._on_malformed = on_malformed
        self._on_bad_pattern = on_bad_pattern

    def call_handlers_for_packet(self, data: bytes, client_address: Address) -> list:
        problem = packet_problem(data)
        if problem is not None:
            self._on_malformed(data, ValueError(problem))
            return []
        try:
            messages = [timed.message for timed in osc_packet.OscPacket(data).messages]
        except Exception as err:  # noqa: BLE001 - python-osc raises ParseError and, on odd bytes, others
            self._on_malformed(data, err)
            return []
        for message in messages:
            address = message.address
            if PATTERN_CHARS.search(address) and not _safe_pattern(address):
                self._on_bad_pattern(address)
                continue
            for handler in self.handlers_for_address(address):
                handler.invoke(client_address, message)
        return []  # replies are sent by the handlers themselves (status is a bundle)


ARGUMENT_SIZES = {"i": 4, "f": 4, "c": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8,
                  "T": 0, "F": 0, "N": 0, "I": 0, "[": 0, "]": 0}  # type tag -> bytes; s, S, b vary
BUNDLE_HEAD = b"#bundle\x00"
MAX_BUNDLE_DEPTH = 8


def packet_problem(data: bytes, depth: int = 0) -> str | None:
    """Why a datagram is not exactly one well-formed OSC message or bundle; None when it is.
    Every argument its type tags announce must be there in full, and nothing may follow."""
    if data.startswith(BUNDLE_HEAD):
        return _bundle_problem(data, depth)
    if not data.startswith(b"/"):
        return "neither a message nor a bundle"
    address_end = _string_end(data, 0)
    if address_end is None:
        return "unterminated address"
    if address_end == len(data):
        return None  # no type tags at all: an old-style message without arguments
    tags_end = _string_end(data, address_end)
    if tags_end is None or data[address_end:address_end + 1] != b",":
        return "bad type tags"
    index = tags_end
    for tag in data[address_end + 1:tags_end].rstrip(b"\x00").decode("ascii", "replace"):
        if tag in ARGUMENT_SIZES:
            index += ARGUMENT_SIZES[tag]
        elif tag in "sS":
            index = _string_end(data, index) or len(data) + 1
        elif tag == "b" and index + 4 <= len(data):
            index += 4 + -(-int.from_bytes(data[index:index + 4], "big") // 4) * 4
        elif tag != "b":
            return f"unknown type tag {tag!r}"
        else:
            index = len(data) + 1
        if index > len(data):
            return f"argument {tag!r} cut short"
    return None if index == len(data) else f"{len(data) - index} bytes after the last argument"


def _bundle_problem(data: bytes, depth: int) -> str | None:
    if depth >= MAX_BUNDLE_DEPTH:
        return "bundles nested too deeply"
    index = len(BUNDLE_HEAD) + 8  # the time tag
    if index > len(data):
        return "bundle cut short"
    while index < len(data):
        size = int.from_bytes(data[index:index + 4], "big")
        element = data[index + 4:index + 4 + size]
        if index + 4 + size > len(data) or size % 4:
            return "bundle element cut short"
        problem = packet_problem(element, depth + 1)
        if problem is not None:
            return problem
        index += 4 + size
    return None


def _string_end(data: bytes, start: int) -> int | None:
    """The index after an OSC string (NUL-terminated, padded to 4 bytes) at start; None if cut short."""
    nul = data.find(b"\x00", start)
    if nul < 0:
        return None
    end = start + (nul - start) // 4 * 4 + 4
    return end if end <= len(data) else None


def _safe_pattern(address: str) -> bool:
    return len(address) <= MAX_PATTERN_LENGTH and len(PATTERN_CHARS.findall(address)) <= 2 * MAX_PATTERN_WILDCARDS


class _Server(BlockingOSCUDPServer):
    """Counts datagrams python-osc would drop silently, and handler errors it would print."""

    def __init__(self, address: Address, dispatcher: Dispatcher, owner: "OscServer") -> None:
        self._owner = owner
        super().__init__(address, dispatcher)

    def verify_request(self, request, client_address) -> bool:  # type: ignore[no-untyped-def]
        valid = super().verify_request(request, client_address)
        if not valid:
            self._owner._count("malformed", f"dropped a datagram from {client_address} that is not OSC")
        return valid

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self._owner._count("target_error", f"OSC handler failed on a datagram from {client_address}",
                           logging.ERROR, exc_info=True)


class OscServer:
    """vaejam's OSC server on its own thread; `address` is the bound (host, port)."""

    def __init__(self, target: ControlTarget, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 realtime: bool = False) -> None:
        if not isinstance(host, str):
            raise TypeError(f"host must be a string, got {type(host).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, got {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        self._target = target
        self._realtime = realtime  # serve at HELPER_PRIORITY (bridge.clock): a status reply holds the GIL for ms
        self.priority = "normal"  # what the serving thread got
        self._lock = threading.Lock()  # guards _counters and _thread
        self._counters = dict.fromkeys(COUNTER_KINDS, 0)  # kind -> count; _lock
        self._thread: threading.Thread | None = None  # the serving thread once started; _lock
        self._log = CountedLog(log)
        self._dispatcher = self._build_dispatcher()
        try:
            self._server = _Server((host, port), self._dispatcher, self)
        except OSError as err:
            raise OSError(err.errno, f"cannot listen for OSC on udp {host}:{port}: {err.strerror or err}") from err
        host_bound, port_bound = self._server.server_address[:2]
        self.address: Address = (str(host_bound), int(port_bound))

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the OSC server was already started")
            self._thread = threading.Thread(target=self._serve,
                                            name=f"vaejam-osc-{self.address[1]}", daemon=True)
            self._thread.start()
        log.info("OSC control on udp %s:%d", *self.address)

    def stop(self, block: bool = True) -> None:
        """Stop serving and close the socket; safe to call twice, and before start()."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            self._server.server_close()
            return
        closer = threading.Thread(target=self._shutdown, name="vaejam-osc-stop", daemon=True)
        closer.start()
        if block:
            closer.join()

    def __enter__(self) -> "OscServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        if self._realtime:
            self.priority = _raise_thread_priority(HELPER_PRIORITY)
        self._server.serve_forever(poll_interval=0.1)

    def _shutdown(self) -> None:
        self._server.shutdown()  # waits for serve_forever to return
        self._server.server_close()

    # --- dispatch -----------------------------------------------------------------------------

    def _build_dispatcher(self) -> Dispatcher:
        dispatcher = _Dispatcher(self._on_malformed, self._on_bad_pattern)
        for row in OSC_TABLE:
            dispatcher.map(row.address, self._handler(row), needs_reply_address=True)
        dispatcher.set_default_handler(self._on_unknown, needs_reply_address=True)
        return dispatcher

    def _handler(self, row: OscAddress) -> Callable[..., None]:
        def handle(client: Address, address: str, *args: object) -> None:
            self._handle(row, client, args)
        return handle

    def _handle(self, row: OscAddress, client: Address, args: tuple[object, ...]) -> None:
        try:
            values, clamped = row.coerce(args)
        except TypeError as err:
            self._count("bad_type", f"OSC {err} (from {client[0]})")
            return
        except ValueError as err:
            self._count("not_finite", f"OSC {err} (from {client[0]})")
            return
        if clamped:
            self._count("clamped", f"OSC {row.address} {_short(args)} clamped to {row.range_text}", logging.INFO)
        if row.name == "status":
            self._reply_status(client, values)
            return
        self._apply(row, values)

    def _apply(self, row: OscAddress, values: tuple[Value, ...]) -> None:
        try:
            if row.kind == "control":
                self._target.set_control(row.name, values[0])
            else:
                self._target.action(row.name, values)
        except (TypeError, ValueError) as err:
            self._count("rejected", f"OSC {row.address} {_short(values)} rejected: {err}")
            return
        except Exception as err:  # noqa: BLE001 - a target bug must not stop the OSC thread
            self._count("target_error", f"OSC {row.address} failed: {err!r}", logging.ERROR, exc_info=True)
            return
        self._count("ok")

    def _on_unknown(self, client: Address, address: str, *args: object) -> None:
        self._count("unknown_address", f"OSC: unknown address {_short(address)} from {client[0]}")

    def _on_malformed(self, data: bytes, err: Exception) -> None:
        self._count("malformed", f"OSC: dropped a malformed datagram ({len(data)} bytes): {_short(err)}")

    def _on_bad_pattern(self, address: str) -> None:
        self._count("bad_pattern", f"OSC: address pattern too complex to match: {_short(address)}")

    # --- status -------------------------------------------------------------------------------

    def _reply_status(self, client: Address, values: tuple[Value, ...]) -> None:
        destination = (client[0], int(values[0])) if values else client
        try:
            status = dict(self._target.status())
        except Exception as err:  # noqa: BLE001 - still answer, so the sender sees the failure
            self._count("target_error", f"status() failed: {err!r}", logging.ERROR, exc_info=True)
            status = {"error": repr(err)}
        status.update({f"osc/{kind}": count for kind, count in self.counters.items()})
        try:
            self._server.socket.sendto(status_bundle(status), destination)
        except OSError as err:
            self._count("reply_error", f"OSC status reply to {destination[0]}:{destination[1]} failed: {err}")
            return
        self._count("status")

    def _count(self, kind: str, message: str | None = None, level: int = logging.WARNING,
               exc_info: bool = False) -> None:
        with self._lock:
            self._counters[kind] = self._counters.get(kind, 0) + 1
        if message is not None:
            self._log.event(kind, message, level, exc_info)


def status_bundle(status: dict[str, object]) -> bytes:
    """One OSC bundle of /vaejam/status/<key> value messages; nested dicts become key/sub-key."""
    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    for key, value in _flatten(status):
        msg = osc_message_builder.OscMessageBuilder(STATUS_PREFIX + _address_part(key))
        msg.add_arg(*_osc_arg(value))
        bundle.add_content(msg.build())  # type: ignore[arg-type]
    return bundle.build().dgram


def _flatten(status: dict[str, object], prefix: str = "") -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    for key, value in status.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}/"))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _osc_arg(value: object) -> tuple[int | float | str, str]:
    """An OSC argument and its type tag; what OSC cannot carry plainly goes as a string."""
    if isinstance(value, bool):
        return int(value), "i"
    if isinstance(value, int) and -2**31 <= value < 2**31:
        return value, "i"
    if isinstance(value, float) and math.isfinite(value):
        return value, "f"
    if value is None:
        return "", "s"
    return str(value), "s"


_ADDRESS_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./]")


def _address_part(key: str) -> str:
    """A status key as an address part: OSC forbids spaces, '#', ',', '*', '?', brackets and braces."""
    return _ADDRESS_UNSAFE.sub("_", str(key)).strip("/") or "_"


def _short(value: object, limit: int = 80) -> str:
    """A repr cut short: addresses and arguments come from the network and can be huge."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["ControlTarget", "OscServer", "status_bundle", "DEFAULT_HOST", "DEFAULT_PORT", "COUNTER_KINDS", "PREFIX"]
