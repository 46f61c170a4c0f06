"""`vaejam m4l build`: the three Max for Live devices, generated from `bridge.osc_table.OSC_TABLE`.

The patches are built with py2max (the optional `m4l` extra: `pip install -e '.[m4l]'`), which
checks every patch cord against the object's inlets and outlets and writes the `.amxd` container.
One rule per row shape decides the object (max_for_live/DESIGN.md): a float control is a
`live.dial`, a 0/1 int a `live.toggle`, another int a `live.numbox`, an action without arguments a
`live.text` button. Every object's id, cord and rectangle comes from the table order alone, and the
file time is fixed, so an unchanged table rebuilds byte-identical and a new row is a readable diff.

Reading a device back (`read_device`, `live_parameters`, `sent_addresses`) needs no py2max: the
tests of the committed devices run without the extra.
"""
from __future__ import annotations

import argparse
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bridge.osc_table import OSC_TABLE, PREFIX, OscAddress
from models.bars import BAND

DEFAULT_OUT = Path(__file__).resolve().parent / "devices"
DEVICE_FILES = {"control": "vaejam Control.amxd", "piano": "vaejam Piano.amxd", "band": "vaejam Band.amxd"}
DEVICE_HEIGHT = 169  # Live's device view, in presentation mode
LIVE_INT_MAX = 255  # Live's integer parameters are 0-255; wider int rows get 0-255 on the device
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9000  # the daemon's OSC input (bridge.daemon.DEFAULT_OSC_PORT)
REPLY_PORT = 9001  # where vaejam Control hears /vaejam/status replies
BAND_PORT = 9002  # where vaejam Band hears `vaejam run --osc-out 127.0.0.1:9002`
STATUS_POLL_MS = 500
NOT_RUNNING_MS = 1500  # no status reply for this long: "daemon not running"
TRANSPORT_POLL_MS = 20  # vaejam Piano polls Live's transport (plugsync~) this often
OUT_PREFIX = f"{PREFIX}/out"  # the daemon's note output family (bridge.osc_out)
NOT_RUNNING_TEXT = "vaejam not running: start it with vaejam run"
CONNECTED_TEXT = "connected to vaejam"
STATUS_KEYS = (("running", "running"), ("bar", "bar"), ("tempo", "tempo"), ("clock_source", "clock"),
               ("late_bars", "late bars"), ("last_inference_ms", "inference ms"))
FILE_TIME = 0  # seconds since 1970 written into the container: fixed, so builds are reproducible
APP_VERSION = {"major": 8, "minor": 5, "revision": 5, "architecture": "x64", "modernui": 1}
DEVICE_TYPE = "midi_effect"

# Live recalls saved values by a parameter's long name: once released, a long name never changes.
# A build that would drop one fails; a new control adds its name here (tests check both ways).
RELEASED_LONG_NAMES: frozenset[str] = frozenset({
    "vaejam noise_sd", "vaejam alpha", "vaejam seed", "vaejam harmony", "vaejam latency_ms",
    *(f"vaejam {base}/{instrument}" for base in ("mute", "density", "velocity") for instrument in BAND),
    "vaejam tempo", "vaejam autopilot", "vaejam record", "vaejam play", "vaejam stop", "vaejam panic",
    "vaejam style", "vaejam host", "vaejam port", "vaejam reply port",
    "vaejam piano host", "vaejam piano port", "vaejam band instrument", "vaejam band port",
})

# parameter_type and parameter_visibility values of Live parameters
FLOAT, INT, ENUM, BLOB = 0, 1, 2, 3
AUTOMATED, STORED_ONLY = 0, 1


class BuildError(Exception):
    """The table cannot be turned into devices (a released long name would vanish, a panel overflows)."""


# ---- reading a device (no py2max needed) ---------------------------------------------------------

def read_device(data: bytes) -> tuple[str, dict[str, Any]]:
    """(device type tag, patcher JSON) of an .amxd; ValueError naming what is wrong.

    Layout (as py2max writes it and Max exports it): `ampf` + LE u32 4 + type + `ptch` + LE u32
    (bytes after this field) + `mx@c` + BE u32 16 + BE u32 0 + BE u32 (16 + JSON + NUL) + JSON + NUL
    + a `dlst` dependency chunk.
    """
    if len(data) < 36 or data[:4] != b"ampf" or struct.unpack("<I", data[4:8])[0] != 4:
        raise ValueError("not an .amxd file (no ampf header of version 4)")
    kind = data[8:12].decode("ascii", "replace")
    if data[12:16] != b"ptch" or struct.unpack("<I", data[16:20])[0] != len(data) - 20:
        raise ValueError("ptch chunk size does not match the file size")
    if data[20:24] != b"mx@c":
        raise ValueError("no mx@c block in the ptch chunk")
    json_size = struct.unpack(">I", data[32:36])[0] - 16  # JSON and its NUL
    block = data[36:36 + json_size]
    if len(block) != json_size or not block.endswith(b"\x00"):
        raise ValueError("patcher JSON cut short or not NUL-terminated")
    if data[36 + json_size:36 + json_size + 4] != b"dlst":
        raise ValueError("no dlst chunk after the patcher JSON")
    return kind, json.loads(block[:-1].decode("utf-8"))


def boxes(patcher: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["box"] for entry in patcher["patcher"]["boxes"]]


def live_parameters(patcher: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Long name -> the box of every Live parameter in a device."""
    found: dict[str, dict[str, Any]] = {}
    for box in boxes(patcher):
        valueof = box.get("saved_attribute_attributes", {}).get("valueof")
        if valueof is not None:
            name = valueof["parameter_longname"]
            if name in found:
                raise ValueError(f"long name {name!r} is used twice")
            found[name] = box
    return found


def sent_addresses(patcher: dict[str, Any]) -> set[str]:
    """Every OSC address the device sends: `prepend /vaejam/...` and `/vaejam/...` message boxes."""
    addresses = set()
    for box in boxes(patcher):
        text = box.get("text", "")
        words = text.split()
        if box["maxclass"] == "newobj" and words[:1] == ["prepend"] and words[1:2] and words[1].startswith(PREFIX):
            addresses.add(words[1])
        elif box["maxclass"] == "message" and words[:1] and words[0].startswith(PREFIX):
            addresses.add(words[0])
    return addresses


# ---- building ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """Where a control sits on the panel: column and row of the control grid."""
    column: int
    row: int


CELL_W, CELL_H = 56, 52  # one control in the grid
GRID_ROWS = 3
GRID_TOP = 4
PANEL_LEFT = 4


def short_name(row: OscAddress) -> str:
    """The name under a dial: 'Noise SD', 'Dens Bass' (Live shows about 9 characters)."""
    def title(word: str) -> str:
        return word.upper() if len(word) <= 2 else word.capitalize()
    if "/" in row.name:
        base, instrument = row.name.split("/", 1)
        return f"{base[:4].capitalize()} {instrument[:4].capitalize()}"
    return " ".join(title(word) for word in row.name.split("_"))


def control_layout(rows: tuple[OscAddress, ...]) -> dict[str, Cell]:
    """Grid cells by row name: per-instrument rows in one column per instrument (a row per control),
    the others three to a column before them, actions in a column after them."""
    cells: dict[str, Cell] = {}
    plain = [r for r in rows if r.kind == "control" and "/" not in r.name]
    per_instrument = [r for r in rows if r.kind == "control" and "/" in r.name]
    actions = [r for r in rows if r.kind == "action"]
    for index, row in enumerate(plain):
        cells[row.name] = Cell(index // GRID_ROWS, index % GRID_ROWS)
    first = -(-len(plain) // GRID_ROWS)
    bases = list(dict.fromkeys(r.name.split("/")[0] for r in per_instrument))
    instruments = list(dict.fromkeys(r.name.split("/")[1] for r in per_instrument))
    for row in per_instrument:
        base, instrument = row.name.split("/")
        cells[row.name] = Cell(first + instruments.index(instrument), bases.index(base))
    after = first + len(instruments)
    for index, row in enumerate(actions):
        cells[row.name] = Cell(after + index // GRID_ROWS, index % GRID_ROWS)
    return cells


def panel_rows() -> tuple[OscAddress, ...]:
    """The table rows that get a control on vaejam Control: every control, and actions that take no
    arguments (note, status and learn are wired inside the devices or are for other tools)."""
    return tuple(row for row in OSC_TABLE if row.kind == "control" or (row.kind == "action" and not row.types))


class _Device:
    """A py2max Patcher with the habits every vaejam device shares: explicit ids and positions,
    Live parameters, one udpsend with settable host and port."""

    def __init__(self, title: str, width: int) -> None:
        from py2max import Patcher

        self.patcher = Patcher(title=title, layout="grid", validate_attrs=False, on_invalid="raise",
                               device_type=DEVICE_TYPE, openinpresentation=1)
        self.patcher.appversion = dict(APP_VERSION)
        self.patcher.devicewidth = float(width)
        self.patcher.rect = [0.0, 0.0, 1200.0, 900.0]
        self._count = 0
        self._parameters: dict[str, list[Any]] = {}  # id -> [long name, short name, 0], Max's list

    def obj(self, spec: str, x: float, y: float, *, width: float = 0, height: float = 22,
            present: tuple[int, int, int, int] | None = None, **attrs: Any):
        """A box at (x, y) in the patching view; `present` puts it on the panel."""
        self._count += 1
        kind = spec.split()[0]
        ports = _PORTS.get(kind)
        extra: dict[str, Any] = {}
        if ports is not None:
            extra = {"maxclass": kind, "numinlets": ports[0], "numoutlets": ports[1], "outlettype": ports[2]}
        if present is not None:
            attrs.update(presentation=1, presentation_rect=list(present))
        from py2max.core.common import Rect

        rect = Rect(float(x), float(y), float(width or max(40, 7 * len(spec) + 12)), float(height))
        label = attrs.pop("text", None)  # a UI object's own text attribute (add_textbox's first argument is the spec)
        box = self.patcher.add_textbox(spec, id=f"obj-{self._count}", patching_rect=rect, **extra, **attrs)
        if label is not None:
            box._kwds["text"] = label
        return box

    def line(self, source, destination, outlet: int = 0, inlet: int = 0) -> None:
        self.patcher.add_line(source, destination, inlet=inlet, outlet=outlet)

    def parameter(self, box, long_name: str, short: str, kind: int, *, visibility: int = AUTOMATED,
                  minimum: float | None = None, maximum: float | None = None, initial: Any = None,
                  enum: list[str] | None = None, unitstyle: int | None = None) -> None:
        """Make a box a Live parameter: parameter_enable 1, Automated and Stored unless told."""
        valueof: dict[str, Any] = {"parameter_longname": long_name, "parameter_shortname": short,
                                   "parameter_type": kind, "parameter_visibility": visibility}
        if minimum is not None:
            valueof.update(parameter_mmin=minimum, parameter_mmax=maximum)
        if enum is not None:
            valueof["parameter_enum"] = enum
        if unitstyle is not None:
            valueof["parameter_unitstyle"] = unitstyle
        if initial is not None:
            valueof.update(parameter_initial=[initial], parameter_initial_enable=1)
        box._kwds["parameter_enable"] = 1
        box._kwds["saved_attribute_attributes"] = {"valueof": valueof}
        self._parameters[box.id] = [long_name, short, 0]

    def settings(self, x: int, y: int, host_name: str, port_name: str, x_patch: float, y_patch: float):
        """Host and port of the daemon, saved with the set; returns the udpsend they drive."""
        self.obj("comment vaejam at", x_patch, y_patch, width=90, present=(x, y, 60, 16))
        host = self.obj("textedit", x_patch, y_patch + 30, width=100, varname=host_name.replace(" ", "_"),
                        text=DEFAULT_HOST, lines=1, present=(x, y + 16, 80, 18))
        store = self.obj(f"pattr {host_name.replace(' ', '_')} @bindto {host_name.replace(' ', '_')}",
                         x_patch + 120, y_patch + 30)
        self.parameter(store, f"vaejam {host_name.removeprefix('vaejam ')}".replace("_", " "), "Host", BLOB,
                       visibility=STORED_ONLY)
        port = self.obj("live.numbox", x_patch, y_patch + 60, width=50, present=(x + 82, y + 16, 44, 18))
        self.parameter(port, f"vaejam {port_name}", "Port", FLOAT, visibility=STORED_ONLY,
                       minimum=1.0, maximum=65535.0, initial=float(DEFAULT_PORT), unitstyle=0)
        texts = self.obj("route text", x_patch, y_patch + 90)
        host_msg = self.obj("prepend host", x_patch, y_patch + 120)
        port_msg = self.obj("prepend port", x_patch + 120, y_patch + 120)
        send = self.obj(f"udpsend {DEFAULT_HOST} {DEFAULT_PORT}", x_patch, y_patch + 180, width=150)
        self.line(host, texts)
        self.line(texts, host_msg)
        self.line(host_msg, send)
        self.line(port, port_msg)
        self.line(port_msg, send)
        return send, host, port

    def to_dict(self) -> dict[str, Any]:
        self.patcher.parameters = {**self._parameters, "parameterbanks": {}, "inherited_shortname": 1}
        data = self.patcher.to_dict()
        from py2max.m4l import ensure_amxd_project_block, unix_to_max_time

        ensure_amxd_project_block(data, device_type=DEVICE_TYPE, mtime=unix_to_max_time(FILE_TIME))
        return data


# object -> (inlets, outlets, outlet types) where py2max's reference has none or another class
_PORTS: dict[str, tuple[int, int, list[str]]] = {
    "live.toggle": (1, 1, ["int"]),
    "live.dial": (1, 2, ["", "float"]),
    "live.numbox": (1, 2, ["", "float"]),
    "live.text": (1, 2, ["", ""]),
    "textbutton": (1, 3, ["", "", "int"]),
    "live.menu": (1, 3, ["", "", "float"]),
    "textedit": (1, 4, ["", "int", "", ""]),
    "comment": (1, 0, []),
}


def _control_object(device: _Device, row: OscAddress, x: float, y: float, cell: Cell, left: int):
    """The live.* object of one table row, placed in its grid cell; (object, label or None)."""
    px, py = left + cell.column * CELL_W, GRID_TOP + cell.row * CELL_H
    short = short_name(row)
    long_name = f"vaejam {row.name}"
    if row.kind == "action":
        box = device.obj("live.text", x, y, width=44, present=(px + 2, py + 14, 50, 20), text=row.name.capitalize(),
                         texton=row.name.capitalize(), mode=0)
        device.parameter(box, long_name, short, ENUM, enum=["off", "on"])
        return box, None
    if row.types == "f":
        box = device.obj("live.dial", x, y, width=44, height=48, present=(px + 4, py, 48, 48), showname=1)
        device.parameter(box, long_name, short, FLOAT, minimum=float(row.minimum), maximum=float(row.maximum),
                         initial=float(row.default), unitstyle=1)
        return box, None
    if row.types == "s":
        return None, None  # strings: textedit + pattr, built by the caller
    label = device.obj(f"comment {short}", x + 60, y, present=(px + 2, py + 2, 54, 16))
    if row.minimum == 0 and row.maximum == 1:
        box = device.obj("live.toggle", x, y, width=20, height=20, present=(px + 4, py + 20, 20, 20))
        device.parameter(box, long_name, short, ENUM, enum=["off", "on"], initial=int(row.default))
        return box, label
    box = device.obj("live.numbox", x, y, width=44, present=(px + 4, py + 20, 44, 18))
    maximum = min(float(row.maximum), LIVE_INT_MAX)
    device.parameter(box, long_name, short, INT, minimum=float(row.minimum), maximum=maximum,
                     initial=int(min(row.default, maximum)), unitstyle=0)
    return box, label


STATUS_W = 172  # the settings and status column at the panel's left


def build_control() -> dict[str, Any]:
    rows = panel_rows()
    cells = control_layout(rows)
    columns = max(cell.column for cell in cells.values()) + 1
    left = PANEL_LEFT + STATUS_W
    device = _Device("vaejam Control", left + columns * CELL_W + 4)
    send, _, _ = device.settings(PANEL_LEFT, 4, "host", "port", 20, 20)
    on_load = device.obj("live.thisdevice", 20, 260)
    sync = device.obj("textbutton", 200, 260, width=44, text="Sync", present=(PANEL_LEFT + 132, 20, 36, 18))
    after_load = device.obj("delay 200", 20, 290)  # once every live.* has output its recalled value
    resend = device.obj("t b", 200, 290)
    device.line(on_load, after_load)
    device.line(after_load, resend)
    device.line(sync, resend)
    for index, row in enumerate(rows):
        x, y = 400 + (index % 6) * 130, 20 + (index // 6) * 120
        if row.types == "s":
            _string_control(device, row, cells[row.name], left, x, y, send, resend)
            continue
        box, _ = _control_object(device, row, x, y, cells[row.name], left)
        if row.kind == "action":
            pressed = device.obj("route bang 1", x, y + 30)
            message = device.obj(f"message {row.address}", x, y + 60)
            device.line(box, pressed)
            device.line(pressed, message, outlet=0)
            device.line(pressed, message, outlet=1)
            device.line(message, send)
            continue
        _send_value(device, box, row, x, y, send, resend)
    _status_strip(device, on_load, send, 20, 400)
    return device.to_dict()


def _string_control(device: _Device, row: OscAddress, cell: Cell, left: int, x: float, y: float, send, resend) -> None:
    """A string control (style): a text field saved with the set through a pattr (Live has no
    string parameters)."""
    px, py = left + cell.column * CELL_W, GRID_TOP + cell.row * CELL_H
    device.obj(f"comment {short_name(row)}", x + 60, y, present=(px + 2, py + 2, 54, 16))
    name = row.name.replace("/", "_")
    edit = device.obj("textedit", x, y, width=80, varname=name, lines=1, text="", present=(px + 2, py + 20, 52, 18))
    store = device.obj(f"pattr {name}_store @bindto {name}", x, y + 90)
    device.parameter(store, f"vaejam {row.name}", short_name(row), BLOB, visibility=STORED_ONLY)
    texts = device.obj("route text", x, y + 30)
    device.line(edit, texts)
    _send_value(device, texts, row, x, y + 30, send, resend)


def _send_value(device: _Device, source, row: OscAddress, x: float, y: float, send, resend) -> None:
    """source -> [zl reg] -> [prepend <address>] -> udpsend; a bang from `resend` (after load, Sync)
    sends the last value again (a bang to live.toggle would flip it, so the value is kept aside)."""
    keep = device.obj("zl reg", x, y + 30)
    prepend = device.obj(f"prepend {row.address}", x, y + 60)
    device.line(source, keep)
    device.line(resend, keep)
    device.line(keep, prepend)
    device.line(prepend, send)


def _status_strip(device: _Device, on_load, send, x: float, y: float) -> None:
    """Polls /vaejam/status <reply port> and shows the reply; says so plainly when nothing answers."""
    reply = device.obj("live.numbox", x, y, width=50, present=(PANEL_LEFT + 82, 40, 44, 18))
    device.parameter(reply, "vaejam reply port", "Reply", FLOAT, visibility=STORED_ONLY,
                     minimum=1.0, maximum=65535.0, initial=float(REPLY_PORT), unitstyle=0)
    device.obj("comment reply port", x + 60, y, present=(PANEL_LEFT, 40, 80, 18))
    metro = device.obj(f"metro {STATUS_POLL_MS}", x, y + 30)
    port_int = device.obj("i", x, y + 60)
    ask = device.obj("prepend /vaejam/status", x, y + 90)
    listen = device.obj("prepend port", x + 120, y + 30)
    receive = device.obj(f"udpreceive {REPLY_PORT}", x, y + 120, width=110)
    device.line(on_load, metro)
    device.line(reply, port_int, inlet=1)
    device.line(reply, listen)
    device.line(metro, port_int)
    device.line(port_int, ask)
    device.line(ask, send)
    device.line(listen, receive)
    addresses = " ".join(f"{PREFIX}/status/{key}" for key, _ in STATUS_KEYS)
    route = device.obj(f"route {addresses}", x, y + 150, width=400)
    device.line(receive, route)
    top = 62
    for index, (key, label) in enumerate(STATUS_KEYS):
        show = device.obj(f"prepend set {label.replace(' ', '_')}", x + index * 120, y + 180)
        text = device.obj(f"comment {label} -", x + index * 120, y + 210,
                          present=(PANEL_LEFT + (index % 2) * 84, top + 32 + (index // 2) * 18, 84, 18))
        device.line(route, show, outlet=index)
        device.line(show, text)
    # connected or not: each reply restarts a timer; when it runs out nothing has answered
    state = device.obj(f"comment {NOT_RUNNING_TEXT}", x, y + 300, present=(PANEL_LEFT, top, 166, 30))
    heard = device.obj("t b b", x, y + 240)
    timer = device.obj(f"delay {NOT_RUNNING_MS}", x + 100, y + 270)
    connected = device.obj(f"message set {CONNECTED_TEXT}", x, y + 270)
    missing = device.obj(f"message set {NOT_RUNNING_TEXT}", x + 100, y + 300)
    device.line(route, heard, outlet=[k for k, _ in STATUS_KEYS].index("bar"))
    device.line(heard, timer, outlet=1)
    device.line(heard, connected, outlet=0)
    device.line(on_load, timer)
    device.line(timer, missing)
    device.line(connected, state)
    device.line(missing, state)


def build_piano() -> dict[str, Any]:
    """Played notes out as /vaejam/note (MIDI passes through); Live's transport and tempo out as
    /vaejam/play, /vaejam/stop and /vaejam/tempo, so the daemon's internal clock follows Live."""
    device = _Device("vaejam Piano", 300)
    send, _, _ = device.settings(PANEL_LEFT, 4, "piano host", "piano port", 20, 20)
    device.obj("comment notes -> /vaejam/note; Live transport -> play/stop/tempo", 400, 20,
               present=(PANEL_LEFT, 44, 290, 18))
    midi_in = device.obj("midiin", 20, 260)
    midi_out = device.obj("midiout", 20, 330)
    parse = device.obj("midiparse", 120, 290, width=100)
    note = device.obj("prepend /vaejam/note", 120, 330)
    device.line(midi_in, midi_out)
    device.line(midi_in, parse)
    device.line(parse, note)
    device.line(note, send)
    last = device.obj("prepend set last_note", 300, 330)
    shown = device.obj("comment last_note -", 300, 360, present=(PANEL_LEFT, 64, 140, 18))
    device.line(parse, last)
    device.line(last, shown)
    on_load = device.obj("live.thisdevice", 400, 260)
    poll = device.obj(f"metro {TRANSPORT_POLL_MS}", 400, 290)
    sync = device.obj("plugsync~", 400, 320, width=120)
    device.line(on_load, poll)
    device.line(poll, sync)
    state = device.obj("change", 400, 360)
    play_stop = device.obj("sel 1 0", 400, 390)
    play = device.obj(f"message {PREFIX}/play", 400, 420)
    stop = device.obj(f"message {PREFIX}/stop", 480, 420)
    device.line(sync, state, outlet=0)
    device.line(state, play_stop)
    device.line(play_stop, play, outlet=0)
    device.line(play_stop, stop, outlet=1)
    device.line(play, send)
    device.line(stop, send)
    tempo_change = device.obj("change 0.", 560, 360)
    tempo = device.obj(f"prepend {PREFIX}/tempo", 560, 390)
    device.line(sync, tempo_change, outlet=5)
    device.line(tempo_change, tempo)
    device.line(tempo, send)
    for index, (source, label) in enumerate(((state, "playing"), (tempo_change, "tempo"))):
        show = device.obj(f"prepend set Live_{label}", 700 + index * 120, 390)
        text = device.obj(f"comment Live_{label} -", 700 + index * 120, 420,
                          present=(PANEL_LEFT + index * 100, 84, 100, 18))
        device.line(source, show)
        device.line(show, text)
    return device.to_dict()


def build_band() -> dict[str, Any]:
    """Notes of one band instrument from `vaejam run --osc-out`, played as MIDI on this track."""
    device = _Device("vaejam Band", 220)
    menu = device.obj("live.menu", 20, 20, width=100, present=(PANEL_LEFT, 20, 100, 18))
    device.parameter(menu, "vaejam band instrument", "Instrument", ENUM, enum=list(BAND), initial=0)
    device.obj("comment instrument", 140, 20, present=(PANEL_LEFT, 2, 100, 16))
    port = device.obj("live.numbox", 20, 60, width=50, present=(PANEL_LEFT + 104, 20, 50, 18))
    device.parameter(port, "vaejam band port", "Port", FLOAT, visibility=STORED_ONLY,
                     minimum=1.0, maximum=65535.0, initial=float(BAND_PORT), unitstyle=0)
    device.obj("comment OSC in port", 140, 60, present=(PANEL_LEFT + 104, 2, 80, 16))
    device.obj(f"comment vaejam run --osc-out 127.0.0.1:{BAND_PORT}", 400, 20,
               present=(PANEL_LEFT, 44, 212, 18))
    listen = device.obj("prepend port", 20, 100)
    receive = device.obj(f"udpreceive {BAND_PORT}", 20, 130, width=110)
    device.line(port, listen)
    device.line(listen, receive)
    route = device.obj("route " + " ".join(f"{OUT_PREFIX}/{name}" for name in BAND), 20, 170, width=500)
    device.line(receive, route)
    pick = device.obj("+ 1", 160, 100)
    gate = device.obj(f"switch {len(BAND)} 1", 20, 210, width=120)
    device.line(menu, pick)
    device.line(pick, gate)
    for index in range(len(BAND)):
        device.line(route, gate, outlet=index, inlet=index + 1)
    pitch_velocity = device.obj("zl slice 2", 20, 240)  # pitch velocity | bar step
    midi = device.obj("midiformat", 20, 270, width=100)
    midi_out = device.obj("midiout", 20, 330)
    midi_in = device.obj("midiin", 200, 270)
    device.line(gate, pitch_velocity)
    device.line(pitch_velocity, midi)
    device.line(midi, midi_out)
    device.line(midi_in, midi_out)  # the track's own MIDI passes through
    last = device.obj("prepend set last_note", 200, 240)
    shown = device.obj("comment last_note -", 200, 300, present=(PANEL_LEFT, 64, 212, 18))
    device.line(gate, last)
    device.line(last, shown)
    return device.to_dict()


BUILDERS = {"control": build_control, "piano": build_piano, "band": build_band}


def device_bytes(patcher: dict[str, Any]) -> bytes:
    """The .amxd container of a patcher (py2max's writer, fixed file time)."""
    from py2max.m4l import pack_amxd, unix_to_max_time

    return pack_amxd(json.dumps(patcher, indent=4), device_type=DEVICE_TYPE, patcher_filename="patcher.maxpat",
                     mtime=unix_to_max_time(FILE_TIME))


def check(patcher: dict[str, Any], name: str) -> None:
    """BuildError when a panel overflows Live's device height."""
    for box in boxes(patcher):
        rect = box.get("presentation_rect")
        if rect is not None and rect[1] + rect[3] > DEVICE_HEIGHT:
            raise BuildError(f"{name}: {box['maxclass']} {box['id']} ends at y={rect[1] + rect[3]}, "
                             f"below Live's {DEVICE_HEIGHT} px")


def build_all() -> dict[str, bytes]:
    """File name -> .amxd bytes of every device; BuildError when a released long name would vanish."""
    built: dict[str, bytes] = {}
    names: set[str] = set()
    for key, builder in BUILDERS.items():
        patcher = builder()
        check(patcher, DEVICE_FILES[key])
        names.update(live_parameters(patcher))
        built[DEVICE_FILES[key]] = device_bytes(patcher)
    missing = RELEASED_LONG_NAMES - names
    if missing:
        raise BuildError(f"released Live parameter long names would vanish (saved sets lose their values): "
                         f"{', '.join(sorted(missing))}")
    return built


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in build_all().items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


def iter_devices(folder: Path = DEFAULT_OUT) -> Iterator[tuple[str, bytes]]:
    for name in DEVICE_FILES.values():
        yield name, (folder / name).read_bytes()


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("m4l", help="Max for Live devices (build them from the OSC table)",
                              description="Max for Live devices generated from the OSC address table.")
    sub = p.add_subparsers(dest="m4l_command", metavar="COMMAND", required=True)
    b = sub.add_parser("build", help="write vaejam Control/Piano/Band.amxd (needs the m4l extra)",
                       description="Generate the three .amxd devices from bridge/osc_table.py.")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .amxd files (default: max_for_live/devices)")
    b.add_argument("--panels", type=Path, metavar="DIR", help="also draw each panel as a PNG into DIR")
    b.set_defaults(func=build_command)


def build_command(args: argparse.Namespace) -> int:
    try:
        import py2max  # noqa: F401
    except ModuleNotFoundError as err:
        from bridge.cli import UsageError

        raise UsageError("vaejam m4l build needs py2max: pip install -e '.[m4l]'") from err
    import logging

    logging.getLogger("py2max").setLevel(logging.WARNING)  # its reference database says hello at INFO
    try:
        paths = write_all(args.out)
    except BuildError as err:
        from bridge.cli import UsageError

        raise UsageError(str(err)) from err
    for path in paths:
        print(f"wrote {path}")
    if args.panels is not None:
        from max_for_live.pictures import draw_all

        for path in draw_all(args.out, args.panels):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    from bridge.cli import main

    sys.exit(main(["m4l", "build", *sys.argv[1:]]))
