"""The OSC table and server: table checks, byte-literal encode/decode, a real UDP server, a fuzz test."""
from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pythonosc import osc_message_builder, osc_packet

from bridge.osc_server import COUNTER_KINDS, OscServer, status_bundle
from bridge.osc_table import BY_ADDRESS, OSC_TABLE, markdown_table
from models.bars import BAND
from models.controls import CONTROL_SPECS, Controls


# --- the table --------------------------------------------------------------------------------

def test_table_has_every_engine_control_with_its_spec() -> None:
    names = {row.name: row for row in OSC_TABLE if row.kind == "control"}
    for name in Controls().as_dict():
        row = names[name]
        spec = CONTROL_SPECS[name.split("/")[0]]
        assert row.address == f"/vaejam/{name}"
        assert (row.minimum, row.maximum, row.default) == (spec.minimum, spec.maximum, spec.default)
        assert row.types == {float: "f", int: "i", str: "s"}[spec.kind]
        assert spec.doc in row.doc


def test_table_has_the_issue_addresses_and_no_duplicates() -> None:
    wanted = {
        "/vaejam/noise_sd": "f", "/vaejam/alpha": "f", "/vaejam/style": "s", "/vaejam/seed": "i",
        "/vaejam/tempo": "f", "/vaejam/autopilot": "i", "/vaejam/record": "i", "/vaejam/play": "",
        "/vaejam/stop": "", "/vaejam/panic": "", "/vaejam/note": "ii",
        **{f"/vaejam/{c}/{i}": ("i" if c == "mute" else "f") for c in ("mute", "density", "velocity") for i in BAND},
    }
    for address, types in wanted.items():
        assert BY_ADDRESS[address].types == types
    assert BY_ADDRESS["/vaejam/status"].signature == "[i]"
    assert (BY_ADDRESS["/vaejam/tempo"].minimum, BY_ADDRESS["/vaejam/tempo"].maximum) == (20, 400)
    assert (BY_ADDRESS["/vaejam/autopilot"].minimum, BY_ADDRESS["/vaejam/autopilot"].maximum) == (0, 64)
    assert len(BY_ADDRESS) == len(OSC_TABLE)
    for row in OSC_TABLE:
        assert row.kind in ("control", "action") and row.doc
        if row.kind == "control":
            assert row.default is not None and len(row.types) == 1


def test_markdown_table_has_one_row_per_address_and_the_module_prints_it() -> None:
    table = markdown_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(OSC_TABLE)
    assert "| `/vaejam/density/bass` | f | 0 - 1 | 0.5 |" in table
    assert "| `/vaejam/seed` | i | 0 - 2147483647 | 0 |" in table
    printed = subprocess.run([sys.executable, "-m", "bridge.osc_table"], capture_output=True, text=True, check=True)
    assert printed.stdout == table


@pytest.mark.parametrize("address, args, expected, clamped", [
    ("/vaejam/noise_sd", (0.5,), (0.5,), False),
    ("/vaejam/noise_sd", (1,), (1.0,), False),  # an int for a float
    ("/vaejam/noise_sd", (7.5,), (3.0,), True),
    ("/vaejam/noise_sd", (-1,), (0.0,), True),
    ("/vaejam/seed", (42.0,), (42,), False),  # a float for an int
    ("/vaejam/seed", (2.6,), (3,), False),
    ("/vaejam/seed", (2**40,), (2**31 - 1,), True),
    ("/vaejam/mute/bass", (True,), (1,), False),  # OSC T
    ("/vaejam/mute/bass", (5,), (1,), True),
    ("/vaejam/style", ("jazz",), ("jazz",), False),
    ("/vaejam/tempo", (1000.0,), (400.0,), True),
    ("/vaejam/note", (60, 200), (60, 127), True),
    ("/vaejam/status", (), (), False),
    ("/vaejam/status", (9001,), (9001,), False),
    ("/vaejam/play", (), (), False),
])
def test_coerce_converts_and_clamps(address: str, args: tuple, expected: tuple, clamped: bool) -> None:
    values, was_clamped = BY_ADDRESS[address].coerce(args)
    assert values == expected and was_clamped == clamped
    assert [type(v) for v in values] == [type(v) for v in expected]


@pytest.mark.parametrize("address, args, error", [
    ("/vaejam/noise_sd", ("loud",), TypeError),
    ("/vaejam/noise_sd", (True,), TypeError),
    ("/vaejam/noise_sd", (b"\x00",), TypeError),
    ("/vaejam/noise_sd", (None,), TypeError),
    ("/vaejam/noise_sd", (), TypeError),
    ("/vaejam/noise_sd", (0.5, 0.5), TypeError),
    ("/vaejam/style", (3,), TypeError),
    ("/vaejam/play", (1,), TypeError),
    ("/vaejam/note", (60,), TypeError),
    ("/vaejam/noise_sd", (float("nan"),), ValueError),
    ("/vaejam/seed", (float("inf"),), ValueError),
    ("/vaejam/tempo", (float("-inf"),), ValueError),
])
def test_coerce_rejects(address: str, args: tuple, error: type[Exception]) -> None:
    with pytest.raises(error, match=address):
        BY_ADDRESS[address].coerce(args)


# --- encode / decode from raw bytes -----------------------------------------------------------

IMMEDIATE = b"\x00\x00\x00\x00\x00\x00\x00\x01"

DECODE_CASES = [
    # (datagram, what the target is told)
    (b"/vaejam/noise_sd\x00\x00\x00\x00,f\x00\x00?\x00\x00\x00", ("set", "noise_sd", 0.5)),
    (b"/vaejam/noise_sd\x00\x00\x00\x00,i\x00\x00\x00\x00\x00\x02", ("set", "noise_sd", 2.0)),
    (b"/vaejam/seed\x00\x00\x00\x00,i\x00\x00\x00\x00\x00\x07", ("set", "seed", 7)),
    (b"/vaejam/style\x00\x00\x00,s\x00\x00rock\x00\x00\x00\x00", ("set", "style", "rock")),
    (b"/vaejam/mute/drums\x00\x00,T\x00\x00", ("set", "mute/drums", 1)),
    (b"/vaejam/density/bass\x00\x00\x00\x00,f\x00\x00>\x80\x00\x00", ("set", "density/bass", 0.25)),
    (b"/vaejam/tempo\x00\x00\x00,f\x00\x00CH\x00\x00", ("set", "tempo", 200.0)),
    (b"/vaejam/panic\x00\x00\x00,\x00\x00\x00", ("action", "panic", ())),
    (b"/vaejam/play\x00\x00\x00\x00", ("action", "play", ())),  # no type tag string at all (OSC 1.0 allows)
    (b"/vaejam/note\x00\x00\x00\x00,ii\x00\x00\x00\x00<\x00\x00\x00d", ("action", "note", (60, 100))),
    # A bundle with a time tag an hour ahead: dispatched at once, never slept on.
    (b"#bundle\x00" + struct.pack(">II", int(time.time()) + 2208988800 + 3600, 0)
     + struct.pack(">i", 24) + b"/vaejam/alpha\x00\x00\x00,f\x00\x00?@\x00\x00", ("set", "alpha", 0.75)),
]


def test_status_bundle_encodes_to_the_expected_bytes() -> None:
    data = status_bundle({"bar": 3, "clock": "midi", "tempo": 120.5, "late": True})
    messages = [
        b"/vaejam/status/bar\x00\x00,i\x00\x00\x00\x00\x00\x03",
        b"/vaejam/status/clock\x00\x00\x00\x00,s\x00\x00midi\x00\x00\x00\x00",
        b"/vaejam/status/tempo\x00\x00\x00\x00,f\x00\x00B\xf1\x00\x00",
        b"/vaejam/status/late\x00,i\x00\x00\x00\x00\x00\x01",
    ]
    assert data == b"#bundle\x00" + IMMEDIATE + b"".join(struct.pack(">i", len(m)) + m for m in messages)


def test_status_values_that_osc_cannot_carry_go_as_strings() -> None:
    data = status_bundle({"none": None, "nan": float("nan"), "big": 2**40, "list": [1, 2],
                          "nested": {"density/bass": 0.5}, "bad key #1": 1})
    decoded = {m.message.address: m.message.params for m in osc_packet.OscPacket(data).messages}
    assert decoded == {
        "/vaejam/status/none": [""], "/vaejam/status/nan": ["nan"], "/vaejam/status/big": [str(2**40)],
        "/vaejam/status/list": ["[1, 2]"], "/vaejam/status/nested/density/bass": [0.5],
        "/vaejam/status/bad_key__1": [1],
    }


# --- a real server ----------------------------------------------------------------------------

class FakeTarget:
    """A ControlTarget that records what it is told; style "unknown" is refused like LiveSession would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards calls: the server thread appends, the test reads
        self.calls: list[tuple] = []
        self.fail_status = False

    def set_control(self, name: str, value: object) -> None:
        if name == "style" and value == "unknown":
            raise ValueError("no style bank named 'unknown'")
        if name == "style" and value == "crash":
            raise RuntimeError("a bug in the session")
        with self.lock:
            self.calls.append(("set", name, value))

    def action(self, name: str, args: tuple) -> None:
        with self.lock:
            self.calls.append(("action", name, args))

    def status(self) -> dict[str, object]:
        if self.fail_status:
            raise RuntimeError("status broke")
        return {"bar": 12, "tempo": 123.5, "clock": "internal", "late_bars": 0, "inference_ms": None,
                "controls": {"noise_sd": 0.7, "mute/bass": 0}}

    def taken(self) -> list[tuple]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls


class Client:
    def __init__(self, server: OscServer) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server.address)

    def message(self, address: str, *args: object) -> None:
        builder = osc_message_builder.OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        self.send(builder.build().dgram)

    def status(self, sock: socket.socket | None = None, port: int | None = None) -> dict[str, object]:
        """Ask for status and wait for it; the server handles datagrams in order, so everything
        sent before has been handled when the reply comes."""
        self.message("/vaejam/status", *([] if port is None else [port]))
        data, _ = (sock or self.sock).recvfrom(65536)
        return {m.message.address[len("/vaejam/status/"):]: m.message.params[0]
                for m in osc_packet.OscPacket(data).messages}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def server(target: FakeTarget) -> Iterator[OscServer]:
    srv = OscServer(target, port=0)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OscServer) -> Iterator[Client]:
    c = Client(server)
    yield c
    c.close()


def test_server_binds_loopback_by_default_on_an_ephemeral_port(server: OscServer) -> None:
    assert server.address[0] == "127.0.0.1" and server.address[1] > 0


@pytest.mark.parametrize("datagram, call", DECODE_CASES)
def test_raw_datagrams_reach_the_target(datagram: bytes, call: tuple, client: Client, target: FakeTarget,
                                        server: OscServer) -> None:
    start = time.perf_counter()
    client.send(datagram)
    client.status()
    assert target.taken() == [call]
    assert server.counters["ok"] == 1
    assert time.perf_counter() - start < 1.0  # a future time tag is not slept on


def test_status_reply_has_target_status_and_counters(client: Client, server: OscServer) -> None:
    client.message("/vaejam/nope", 1)
    reply = client.status()
    assert reply["bar"] == 12 and reply["clock"] == "internal" and reply["inference_ms"] == ""
    assert reply["tempo"] == pytest.approx(123.5)
    assert reply["controls/noise_sd"] == pytest.approx(0.7) and reply["controls/mute/bass"] == 0
    assert reply["osc/unknown_address"] == 1
    assert {f"osc/{k}" for k in COUNTER_KINDS} <= set(reply)


def test_status_with_a_port_replies_to_that_port(client: Client) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(3.0)
    try:
        reply = client.status(sock=other, port=other.getsockname()[1])
        assert reply["bar"] == 12
    finally:
        other.close()


def test_status_still_answers_when_the_target_fails(client: Client, target: FakeTarget, server: OscServer) -> None:
    target.fail_status = True
    reply = client.status()
    assert "status broke" in str(reply["error"]) and server.counters["target_error"] == 1


def test_bad_input_is_counted_and_dropped(client: Client, target: FakeTarget, server: OscServer) -> None:
    client.message("/vaejam/noise_sd", "loud")  # wrong type
    client.message("/vaejam/noise_sd")  # no argument
    client.message("/vaejam/noise_sd", float("nan"))
    client.message("/vaejam/seed", float("inf"))
    client.message("/vaejam/unknown", 1.0)
    client.message("/other/app", 1.0)
    client.send(b"hello, not OSC")  # fails python-osc's first check
    client.send(b"/vaejam/seed\x00\x00\x00\x00,i\x00\x00\x00\x07")  # truncated int
    client.send(b"#bundle\x00\x00\x00")  # time tag cut short
    client.send(b"/vaejam/seed\x00\x00\x00\x00,i")  # unterminated type tags
    client.message("/vaejam/style", "unknown")  # refused by the target
    client.message("/vaejam/style", "crash")  # the target has a bug
    client.message("/vaejam/noise_sd", 9.0)  # clamped, then applied
    client.status()
    assert target.taken() == [("set", "noise_sd", 3.0)]
    counters = server.counters
    assert counters["bad_type"] == 2 and counters["not_finite"] == 2 and counters["unknown_address"] == 2
    assert counters["malformed"] == 4 and counters["rejected"] == 1 and counters["target_error"] == 1
    assert counters["clamped"] == 1 and counters["ok"] == 1


def test_each_kind_of_bad_input_is_logged_once(client: Client, server: OscServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.osc_server")
    for _ in range(30):
        client.message("/vaejam/noise_sd", "loud")
        client.message("/vaejam/nowhere")
        client.send(b"garbage")
    client.status()
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.osc_server"]
    assert sum("takes a number" in line for line in lines) == 1
    assert sum("unknown address" in line for line in lines) == 1
    assert sum("not OSC" in line for line in lines) == 1
    assert server.counters["bad_type"] == 30


@pytest.mark.parametrize("datagram", [
    b"/vaejam/tempo\x00\x00\x00,f\x00\x00B",  # a 1-byte float: python-osc read it as 32.0
    b"/vaejam/tempo\x00\x00\x00,f\x00\x00B\xf0\x00",  # 2 of its 4 bytes
    b"/vaejam/note\x00\x00\x00\x00,ii\x00\x00\x00\x00<",  # the second int missing
    b"/vaejam/style\x00\x00\x00,s\x00\x00funk",  # string without its NUL
    b"/vaejam/tempo\x00\x00\x00,f\x00\x00B\xf0\x00\x00\x00\x00\x00\x07",  # bytes after the last argument
    b"#bundle\x00" + bytes(8) + b"\x00\x00\x00\x18/vaejam/tempo\x00\x00\x00,f\x00\x00B",  # element size lies
])
def test_truncated_packets_are_dropped_not_guessed(datagram: bytes, client: Client, target: FakeTarget,
                                                    server: OscServer) -> None:
    client.send(datagram)
    client.status()
    assert target.taken() == [] and server.counters["malformed"] == 1 and server.counters["ok"] == 0


def test_python_osc_warnings_are_counted_not_logged_per_packet(client: Client, target: FakeTarget, server: OscServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # Unknown type tags and unknown bundle elements made python-osc log a warning each (746 lines).
    caplog.set_level(logging.INFO)
    odd_tag = b"/vaejam/tempo\x00\x00\x00,x\x00\x00"
    odd_element = b"#bundle\x00" + bytes(8) + b"\x00\x00\x00\x04abcd"
    for _ in range(40):
        client.send(odd_tag)
        client.send(odd_element)
    client.status()
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "Unhandled parameter type" in line or "Could not identify" in line]
    assert sum("malformed datagram" in line for line in lines) == 1
    assert server.counters["malformed"] == 80 and target.taken() == []


def test_address_patterns_match_table_addresses(client: Client, target: FakeTarget, server: OscServer) -> None:
    client.message("/vaejam/mute/*", 1)
    client.message("/vaejam/velocity/{bass,drums}", 0.5)
    client.message("/vaejam/" + "*a" * 40 + "b", 1.0)  # would backtrack for a long time in the regex
    client.status()
    assert sorted(target.taken()) == sorted(
        [("set", f"mute/{i}", 1) for i in BAND] + [("set", "velocity/bass", 0.5), ("set", "velocity/drums", 0.5)]
    )
    assert server.counters["bad_pattern"] == 1


def test_port_in_use_raises_oserror_naming_the_address(server: OscServer, target: FakeTarget) -> None:
    with pytest.raises(OSError, match=rf"127\.0\.0\.1:{server.address[1]}"):
        OscServer(target, port=server.address[1])
    with pytest.raises(ValueError):
        OscServer(target, port=70000)
    with pytest.raises(TypeError):
        OscServer(target, port="9000")  # type: ignore[arg-type]


def test_stop_is_safe_twice_and_before_start(target: FakeTarget) -> None:
    never_started = OscServer(target, port=0)
    never_started.stop()
    never_started.stop()
    with OscServer(target, port=0) as srv:
        Client(srv).status()
    srv.stop()


# --- fuzz -------------------------------------------------------------------------------------

osc_args = st.one_of(
    st.integers(-2**31, 2**31 - 1), st.floats(width=32), st.text(max_size=20), st.booleans(), st.none(),
    st.binary(max_size=16), st.integers(-2**63, 2**63 - 1),
)
addresses = st.one_of(st.sampled_from([row.address for row in OSC_TABLE]), st.text(max_size=30).map(lambda s: "/" + s))


def _typed_message(address: str, args: list[object]) -> bytes | None:
    builder = osc_message_builder.OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    try:
        return builder.build().dgram
    except Exception:  # noqa: BLE001 - the builder refuses some addresses; then there is nothing to send
        return None


def test_fuzzed_datagrams_and_messages_never_stop_the_server(target: FakeTarget) -> None:
    srv = OscServer(target, port=0)
    srv.start()
    client = Client(srv)
    datagrams = st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=64).map(lambda b: b"/vaejam/tempo\x00\x00\x00" + b),
        st.binary(max_size=64).map(lambda b: b"#bundle\x00" + b),
        st.builds(_typed_message, addresses, st.lists(osc_args, max_size=3)),
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(datagrams, min_size=1, max_size=5))
    def throw(batch: list[bytes | None]) -> None:
        for data in batch:
            if data is not None:
                client.send(data)
        assert client.status()["bar"] == 12

    try:
        throw()
        assert srv.counters["status"] >= 50  # hypothesis may run fewer than max_examples
    finally:
        client.close()
        srv.stop()


def test_learn_takes_a_control_name_and_reaches_the_target(client: Client, target: FakeTarget) -> None:
    assert BY_ADDRESS["/vaejam/learn"].kind == "action" and BY_ADDRESS["/vaejam/learn"].types == "s"
    client.message("/vaejam/learn", "noise_sd")
    client.message("/vaejam/learn", 3)  # a number is no control name
    client.status()
    assert target.taken() == [("action", "learn", ("noise_sd",))]
