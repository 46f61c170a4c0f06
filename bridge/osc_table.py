"""The OSC address table: every address vaejam answers, as data.

The OSC server's dispatcher, the README's OSC section (`python -m bridge.osc_table`) and the Max for
Live devices are generated from `OSC_TABLE`, so an address, its types and its range are written
once. Engine controls take their ranges, defaults and docs from `models.controls.CONTROL_SPECS`.

Argument policy (the same for every address, so a Max patch or TouchOSC layout can be sloppy):
numbers convert between int and float (a float for an int rounds to the nearest), OSC True/False
count as 1/0 for ints; numbers outside the range are clamped; NaN/inf, strings for numbers,
numbers for strings, blobs and a wrong argument count are rejected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from bridge.clock import MAX_BPM, MIN_BPM
from models.bars import BAND
from models.controls import CONTROL_SPECS

PREFIX = "/vaejam"
OSC_TYPES = {float: "f", int: "i", str: "s"}
Value = float | int | str


@dataclass(frozen=True)
class OscAddress:
    address: str
    types: str  # OSC type tags of the arguments: "f", "i", "s", "ii", "" ...
    name: str  # what the target is told: a control name ("density/bass") or an action ("panic")
    kind: Literal["control", "action"]
    minimum: float | None  # for every numeric argument; None for strings and no arguments
    maximum: float | None
    default: Value | None  # controls only
    doc: str
    optional: int = 0  # how many trailing arguments may be left out

    def coerce(self, args: Sequence[object]) -> tuple[tuple[Value, ...], bool]:
        """Arguments converted to the table's types and clamped: (values, whether any was clamped).

        TypeError for a wrong count or type, ValueError for NaN/inf; the message names the address.
        """
        if not len(self.types) - self.optional <= len(args) <= len(self.types):
            wanted = f"{len(self.types)} argument(s) ({self.types})" if self.types else "no arguments"
            raise TypeError(f"{self.address} takes {wanted}, got {len(args)}")
        values: list[Value] = []
        clamped = False
        for tag, arg in zip(self.types, args, strict=False):  # optional trailing arguments may be absent
            value, was_clamped = self._coerce_one(tag, arg)
            values.append(value)
            clamped = clamped or was_clamped
        return tuple(values), clamped

    def _coerce_one(self, tag: str, arg: object) -> tuple[Value, bool]:
        if tag == "s":
            if not isinstance(arg, str):
                raise TypeError(f"{self.address} takes a string, got {type(arg).__name__}")
            return arg, False
        if not isinstance(arg, (int, float)):  # bool is an int: OSC T/F
            raise TypeError(f"{self.address} takes a number, got {type(arg).__name__}")
        if tag == "f" and isinstance(arg, bool):
            raise TypeError(f"{self.address} takes a number, got {type(arg).__name__}")
        if not math.isfinite(arg):
            raise ValueError(f"{self.address} takes a finite number, got {arg}")
        assert self.minimum is not None and self.maximum is not None
        value = min(max(arg, self.minimum), self.maximum)
        clamped = value != arg
        return (int(round(value)) if tag == "i" else float(value)), clamped

    @property
    def signature(self) -> str:
        """Types for people: "ii", or "[i]" for an optional argument."""
        required = len(self.types) - self.optional
        return self.types[:required] + (f"[{self.types[required:]}]" if self.optional else "")

    @property
    def range_text(self) -> str:
        if self.minimum is None or self.maximum is None:
            return ""
        return f"{_number(self.minimum)} - {_number(self.maximum)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _control(name: str, doc_prefix: str = "") -> OscAddress:
    base = name.split("/", 1)[0]
    spec = CONTROL_SPECS[base]
    return OscAddress(
        address=f"{PREFIX}/{name}", types=OSC_TYPES[spec.kind], name=name, kind="control",
        minimum=spec.minimum, maximum=spec.maximum, default=spec.default, doc=doc_prefix + spec.doc,
    )


def _engine_controls() -> list[OscAddress]:
    rows: list[OscAddress] = []
    for name, spec in CONTROL_SPECS.items():
        if spec.per_instrument:
            rows.extend(_control(f"{name}/{instrument}", f"{instrument.capitalize()}: ") for instrument in BAND)
        else:
            rows.append(_control(name))
    return rows


_DAEMON_CONTROLS = (
    OscAddress(f"{PREFIX}/tempo", "f", "tempo", "control", MIN_BPM, MAX_BPM, 120.0,
               "Tempo in BPM of the internal clock; while Ableton Link leads, proposed to the Link session "
               "(ignored while following the DAW's MIDI clock)"),
    OscAddress(f"{PREFIX}/latency_ms", "f", "latency_ms", "control", 0.0, 50.0, 0.0,
               "Output latency compensation: the internal and Ableton Link clocks send the band this many ms "
               "before the beat (a DAW's MIDI clock cannot be run early: use its own clock sync delay)"),
    OscAddress(f"{PREFIX}/autopilot", "i", "autopilot", "control", 0, 64, 4,
               "Bars the band keeps playing on its own predicted piano after the pianist stops; 0 = off"),
    OscAddress(f"{PREFIX}/record", "i", "record", "control", 0, 1, 0,
               "1 starts a new take (multi-track .mid in the record folder), 0 ends it"),
)

_ACTIONS = (
    OscAddress(f"{PREFIX}/play", "", "play", "action", None, None, None,
               "Start the internal clock's transport from bar 0"),
    OscAddress(f"{PREFIX}/stop", "", "stop", "action", None, None, None,
               "Stop the internal clock's transport; the band's notes are released"),
    OscAddress(f"{PREFIX}/panic", "", "panic", "action", None, None, None,
               "Release every sounding note, then All Notes Off and All Sound Off on every channel"),
    OscAddress(f"{PREFIX}/note", "ii", "note", "action", 0, 127, None,
               "A piano note as played: pitch, velocity (0 = note off); for setups without MIDI ports"),
    OscAddress(f"{PREFIX}/learn", "s", "learn", "action", None, None, None,
               "Bind the next MIDI CC that moves on the input port to this control (e.g. noise_sd); "
               "saved in the user's config folder, listed in status as cc/<control>; \"\" cancels"),
    OscAddress(f"{PREFIX}/status", "i", "status", "action", 1, 65535, None,
               "Replies with one bundle of /vaejam/status/<key> value messages (bar, tempo, clock, "
               "controls, late_bars, last_inference_ms and its p50/p99 over the last 512 bars, counters) to the sender, or to the sender's host "
               "on the given port", optional=1),
)

OSC_TABLE: tuple[OscAddress, ...] = (*_engine_controls(), *_DAEMON_CONTROLS, *_ACTIONS)
BY_ADDRESS: dict[str, OscAddress] = {row.address: row for row in OSC_TABLE}
STATUS_PREFIX = f"{PREFIX}/status/"


def markdown_table(table: Sequence[OscAddress] = OSC_TABLE) -> str:
    """The README's OSC section table, one row per address."""
    lines = [
        "| Address | Arguments | Range | Default | What it does |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        default = "" if row.default is None else (repr(row.default) if row.default == "" else f"{row.default}")
        doc = row.doc.replace("|", "\\|")
        lines.append(f"| `{row.address}` | {row.signature or '-'} | {row.range_text} | {default} | {doc} |")
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- osc-table:start -->", "<!-- osc-table:end -->"


def with_table(readme: str) -> str:
    """The README text with the generated table between its markers."""
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "\n" + markdown_table() + readme[end:]


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--readme"]:  # python -m bridge.osc_table --readme README.md
        path = sys.argv[2]
        with open(path, encoding="utf-8") as handle:
            text = with_table(handle.read())
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        print(markdown_table(), end="")
