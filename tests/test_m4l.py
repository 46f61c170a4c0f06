"""The committed Max for Live devices: container, Live parameters against the OSC table, the wiring
(followed cord by cord from each control to the address it sends), the panel size, and a fresh build
equal to what is committed (needs the m4l extra, py2max)."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.osc_server import OscServer
from bridge.osc_table import BY_ADDRESS, OSC_TABLE
from max_for_live import build
from max_for_live.build import (
    DEFAULT_OUT, DEVICE_FILES, DEVICE_HEIGHT, LIVE_INT_MAX, RELEASED_LONG_NAMES, boxes, live_parameters,
    read_device, sent_addresses,
)
from models.bars import BAND

DEVICES = {key: read_device((DEFAULT_OUT / name).read_bytes()) for key, name in DEVICE_FILES.items()}


def patcher(key: str) -> dict[str, Any]:
    return DEVICES[key][1]


def by_id(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {box["id"]: box for box in boxes(p)}


def cords(p: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    return [(*line["patchline"]["source"], *line["patchline"]["destination"]) for line in p["patcher"]["lines"]]


def downstream(p: dict[str, Any], start: str, hops: int = 3) -> list[dict[str, Any]]:
    """Boxes reached from `start` within a few cords, nearest first."""
    found, frontier, objects = [], [start], by_id(p)
    for _ in range(hops):
        frontier = [dst for src, _, dst, _ in cords(p) if src in frontier]
        found += [objects[i] for i in frontier]
    return found


def source_id(p: dict[str, Any], box: dict[str, Any]) -> str:
    """Where a parameter's value comes out: the box itself, or for a pattr the object it is bound to."""
    words = box.get("text", "").split()
    if words[:1] == ["pattr"] and "@bindto" in words:
        bound = words[words.index("@bindto") + 1]
        return next(b["id"] for b in boxes(p) if b.get("varname") == bound)
    return box["id"]


def table_rows_on_panel():
    return [row for row in OSC_TABLE if row.kind == "control"]


# ---- container and patch ------------------------------------------------------------------------

@pytest.mark.parametrize("key", DEVICE_FILES)
def test_container_header_chunks_and_json(key: str) -> None:
    data = (DEFAULT_OUT / DEVICE_FILES[key]).read_bytes()
    assert data[:4] == b"ampf" and data[4:8] == (4).to_bytes(4, "little") and data[8:12] == b"mmmm"
    assert data[12:16] == b"ptch" and int.from_bytes(data[16:20], "little") == len(data) - 20
    kind, p = read_device(data)
    assert kind == "mmmm" and p["patcher"]["openinpresentation"] == 1 and p["patcher"]["devicewidth"] > 0
    for broken in (data[:30], b"xxxx" + data[4:], data[:16] + (1).to_bytes(4, "little") + data[20:], data[:-200]):
        with pytest.raises(ValueError):
            read_device(broken)


@pytest.mark.parametrize("key", DEVICE_FILES)
def test_every_cord_joins_existing_ports(key: str) -> None:
    p = patcher(key)
    objects = by_id(p)
    assert len(objects) == len(boxes(p))
    for src, outlet, dst, inlet in cords(p):
        assert 0 <= outlet < objects[src]["numoutlets"] and 0 <= inlet < objects[dst]["numinlets"]


@pytest.mark.parametrize("key", DEVICE_FILES)
def test_panel_fits_lives_device_height(key: str) -> None:
    p = patcher(key)
    shown = [box for box in boxes(p) if box.get("presentation")]
    assert shown
    for box in shown:
        x, y, w, h = box["presentation_rect"]
        assert y >= 0 and y + h <= DEVICE_HEIGHT and x + w <= p["patcher"]["devicewidth"]


@pytest.mark.parametrize("key", DEVICE_FILES)
def test_every_live_object_is_a_mappable_parameter(key: str) -> None:
    p = patcher(key)
    params = live_parameters(p)  # raises on a long name used twice
    for box in boxes(p):
        if box["maxclass"].startswith("live.") and box["maxclass"] not in ("live.comment",):
            valueof = box["saved_attribute_attributes"]["valueof"]
            assert box["parameter_enable"] == 1 and valueof["parameter_longname"] in params
    for name, box in params.items():
        valueof = box["saved_attribute_attributes"]["valueof"]
        assert name.startswith("vaejam ") and name in RELEASED_LONG_NAMES
        assert valueof["parameter_visibility"] in (0, 1)  # 0 Automated and Stored, 1 Stored Only (settings)
        if valueof["parameter_type"] == 1:
            assert 0 <= valueof["parameter_mmin"] <= valueof["parameter_mmax"] <= LIVE_INT_MAX
        assert p["patcher"]["parameters"][box["id"]][0] == name


def test_released_long_names_are_all_still_built() -> None:
    built = set().union(*(live_parameters(patcher(key)) for key in DEVICE_FILES))
    assert built == RELEASED_LONG_NAMES


# ---- the table on the devices -------------------------------------------------------------------

def test_every_control_row_is_a_live_parameter_with_the_tables_range_and_default() -> None:
    params = live_parameters(patcher("control"))
    for row in table_rows_on_panel():
        box = params[f"vaejam {row.name}"]
        valueof = box["saved_attribute_attributes"]["valueof"]
        if row.types == "s":  # Live has no string parameters: a text field stored through pattr
            assert box["text"].startswith("pattr ") and valueof["parameter_type"] == 3
            assert valueof["parameter_visibility"] == 1
            continue
        assert box["parameter_enable"] == 1 and valueof["parameter_visibility"] == 0  # Automated and Stored
        if row.types == "f":
            assert box["maxclass"] == "live.dial" and valueof["parameter_type"] == 0
            assert (valueof["parameter_mmin"], valueof["parameter_mmax"]) == (row.minimum, row.maximum)
            assert valueof["parameter_initial"] == [row.default]
        elif (row.minimum, row.maximum) == (0, 1):
            assert box["maxclass"] == "live.toggle" and valueof["parameter_enum"] == ["off", "on"]
            assert valueof["parameter_initial"] == [row.default]
        else:
            assert box["maxclass"] == "live.numbox" and valueof["parameter_type"] == 1
            assert valueof["parameter_mmin"] == row.minimum
            # Live's int parameters stop at 255: seed keeps its full range over OSC only
            assert valueof["parameter_mmax"] == min(row.maximum, LIVE_INT_MAX)
            assert valueof["parameter_initial"] == [min(row.default, LIVE_INT_MAX)]
        assert valueof["parameter_initial_enable"] == 1


def test_each_control_is_wired_to_its_own_address_and_to_udpsend() -> None:
    p = patcher("control")
    params = live_parameters(p)
    for row in OSC_TABLE:
        if row.kind == "control" or (row.kind == "action" and not row.types):
            reached = downstream(p, source_id(p, params[f"vaejam {row.name}"]), hops=5)
            texts = [box.get("text", "") for box in reached]
            assert f"prepend {row.address}" in texts or row.address in texts, row.name
            assert any(t.startswith("udpsend ") for t in texts), row.name
    prepends = [box["text"] for box in boxes(p) if box.get("text", "").startswith("prepend /vaejam/")]
    assert len(prepends) == len(set(prepends))  # each address from exactly one place


@pytest.mark.parametrize("key", DEVICE_FILES)
def test_every_address_a_device_sends_is_one_the_daemon_answers(key: str) -> None:
    for address in sent_addresses(patcher(key)):
        assert address in BY_ADDRESS, address


def test_control_polls_status_and_shows_the_reply_and_a_plain_not_running_line() -> None:
    p = patcher("control")
    texts = [box.get("text", "") for box in boxes(p)]
    assert "prepend /vaejam/status" in texts and f"udpreceive {build.REPLY_PORT}" in texts
    route = next(t for t in texts if t.startswith("route /vaejam/status/"))
    for key in ("bar", "tempo", "clock_source", "late_bars", "last_inference_ms", "running"):
        assert f"/vaejam/status/{key}" in route.split()
    shown = [box for box in boxes(p) if box["maxclass"] == "comment" and box.get("presentation")]
    assert any(box["text"] == build.NOT_RUNNING_TEXT for box in shown)
    assert f"set {build.CONNECTED_TEXT}" in texts and f"set {build.NOT_RUNNING_TEXT}" in texts


def test_piano_forwards_notes_passes_midi_and_follows_lives_transport() -> None:
    p = patcher("piano")
    objects = {box.get("text", box["maxclass"]): box["id"] for box in boxes(p)}
    links = {(by_id(p)[s].get("text"), o, by_id(p)[d].get("text")) for s, o, d, _ in cords(p)}
    assert ("midiin", 0, "midiout") in links and ("midiin", 0, "midiparse") in links
    assert ("midiparse", 0, "prepend /vaejam/note") in links
    assert ("plugsync~", 0, "change") in links and ("plugsync~", 5, "change 0.") in links
    assert ("change 0.", 0, "prepend /vaejam/tempo") in links
    assert {"/vaejam/note", "/vaejam/tempo", "/vaejam/play", "/vaejam/stop"} <= sent_addresses(p)
    assert "live.thisdevice" in objects


def test_band_picks_an_instrument_and_plays_its_notes_as_midi() -> None:
    p = patcher("band")
    params = live_parameters(p)
    menu = params["vaejam band instrument"]["saved_attribute_attributes"]["valueof"]
    assert menu["parameter_enum"] == list(BAND)
    texts = [box.get("text", "") for box in boxes(p)]
    route = next(t for t in texts if t.startswith("route "))
    assert route.split()[1:] == [f"/vaejam/out/{name}" for name in BAND]
    assert f"udpreceive {build.BAND_PORT}" in texts
    reached = [box.get("text") for box in downstream(p, params["vaejam band instrument"]["id"], hops=6)]
    assert "midiformat" in reached and "midiout" in reached
    assert not sent_addresses(p)


# ---- replaying the patch's messages into a real OSC server ---------------------------------------

class Target:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards calls (server thread appends, test reads)
        self.calls: list[tuple] = []

    def set_control(self, name: str, value: object) -> None:
        with self.lock:
            self.calls.append((name, value))

    def action(self, name: str, args: tuple) -> None:
        with self.lock:
            self.calls.append((name, args))

    def status(self) -> dict[str, object]:
        return {}


@pytest.fixture
def server() -> Iterator[tuple[OscServer, Target]]:
    target = Target()
    srv = OscServer(target, port=0)
    srv.start()
    yield srv, target
    srv.stop()


def test_messages_read_from_the_patch_reach_each_control(server: tuple[OscServer, Target]) -> None:
    """What vaejam Control sends for each parameter at its default and at its maximum, read from the
    patch (address from the prepend the cords lead to, values from the parameter), into the server."""
    srv, target = server
    p = patcher("control")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    expected = []
    for name, box in live_parameters(p).items():
        address = next((b["text"].split()[1] for b in downstream(p, box["id"], hops=5)
                        if b.get("text", "").startswith("prepend /vaejam/")), None)
        message = next((b["text"] for b in downstream(p, box["id"], hops=3)
                        if b["maxclass"] == "message" and b["text"].startswith("/vaejam/")), None)
        valueof = box["saved_attribute_attributes"]["valueof"]
        if valueof["parameter_visibility"] != 0:
            continue  # the device's own settings (host, ports): not sent to the daemon as controls
        if message is not None:  # an action button
            sock.sendto(OscMessageBuilder(message).build().dgram, srv.address)
            expected.append((BY_ADDRESS[message].name, ()))
        elif address is not None and valueof["parameter_type"] in (0, 1, 2):
            row = BY_ADDRESS[address]
            values = [valueof["parameter_initial"][0]]
            values.append(valueof.get("parameter_mmax", len(valueof.get("parameter_enum", [0, 1])) - 1))
            for value in values:
                builder = OscMessageBuilder(address)
                builder.add_arg(value)  # Max sends dials as floats, toggles and number boxes as ints
                sock.sendto(builder.build().dgram, srv.address)
                expected.append((row.name, row.coerce([value])[0][0]))
    sock.close()
    deadline = time.monotonic() + 5
    while len(target.calls) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(target.calls) == len(expected)
    for (name, value), (want_name, want) in zip(target.calls, expected):
        assert name == want_name and value == (pytest.approx(want) if isinstance(want, float) else want)
    assert srv.counters["ok"] == len(expected) and srv.counters["clamped"] == 0
    names = {call[0] for call in target.calls}
    assert {row.name for row in OSC_TABLE if row.kind == "control" and row.types != "s"} <= names


# ---- a fresh build equals the committed devices ---------------------------------------------------

def test_a_fresh_build_equals_the_committed_devices(tmp_path: Path) -> None:
    pytest.importorskip("py2max")
    from bridge.cli import main

    assert main(["m4l", "build", "--out", str(tmp_path)]) == 0
    for name in DEVICE_FILES.values():
        assert (tmp_path / name).read_bytes() == (DEFAULT_OUT / name).read_bytes(), (
            f"{name} differs from a fresh build: run `vaejam m4l build` and commit max_for_live/devices")


def test_a_build_that_would_drop_a_released_long_name_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("py2max")
    monkeypatch.setattr(build, "RELEASED_LONG_NAMES", RELEASED_LONG_NAMES | {"vaejam gone"})
    with pytest.raises(build.BuildError, match="vaejam gone"):
        build.build_all()


def test_panel_pictures_are_drawn_from_the_patches(tmp_path: Path) -> None:
    from max_for_live.pictures import draw_all

    written = draw_all(DEFAULT_OUT, tmp_path)
    assert [p.name for p in written] == [name.replace(".amxd", ".png") for name in DEVICE_FILES.values()]
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert height == (DEVICE_HEIGHT + 16) * 2 and width > 200
    for name in DEVICE_FILES.values():  # the README's pictures are committed beside the devices
        assert (DEFAULT_OUT.parent / "panels" / name.replace(".amxd", ".png")).is_file()
