"""Hardware knobs without Live: MIDI control changes on the input port bound to the table's controls.

`vaejam run --cc noise_sd=21` binds CC 21 (any channel) to /vaejam/noise_sd; `/vaejam/learn noise_sd`
binds the next CC that moves. A CC value 0-127 scales to the control's table range: floats linearly,
ints rounded, 0/1 toggles on at 64. Bindings are saved in `cc.json` in the user's config folder
(platformdirs, or $VAEJAM_CONFIG_DIR), so the knobs stay mapped across runs.

Pure logic: no ports, no session; the session's MIDI handler calls `CcMap.handle` and applies what it
returns, so tests drive it with plain numbers.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Mapping

from bridge.osc_table import BY_ADDRESS, OSC_TABLE, PREFIX, OscAddress, Value

log = logging.getLogger(__name__)

CONFIG_ENV = "VAEJAM_CONFIG_DIR"
CONFIG_FILE = "cc.json"
CONFIG_VERSION = 1
SUSTAIN_CC = 64  # the session's pedal: never a knob
MAX_CC = 119  # 120-127 are channel mode messages (All Notes Off, ...)
TOGGLE_ON = 64  # a 0/1 control is on from this CC value up


def config_dir() -> Path:
    """$VAEJAM_CONFIG_DIR, else the platform's user config folder for vaejam."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("vaejam"))


def knob_row(control: str) -> OscAddress:
    """The table row a knob may drive: a numeric control; ValueError naming the choices otherwise."""
    row = BY_ADDRESS.get(f"{PREFIX}/{control}")
    if row is None or row.kind != "control" or row.types not in ("f", "i"):
        raise ValueError(f"{control!r} is not a numeric control; use one of {', '.join(knob_names())}")
    return row


def knob_names() -> list[str]:
    return [row.name for row in OSC_TABLE if row.kind == "control" and row.types in ("f", "i")]


def check_cc(cc: object) -> int:
    if isinstance(cc, bool) or not isinstance(cc, int):
        raise TypeError(f"CC number must be an int, got {type(cc).__name__}")
    if cc == SUSTAIN_CC:
        raise ValueError("CC 64 is the sustain pedal; pick another CC")
    if not 0 <= cc <= MAX_CC:
        raise ValueError(f"CC {cc} is outside 0-{MAX_CC}")
    return cc


def parse_binding(text: str) -> tuple[str, int]:
    """'noise_sd=21' -> ('noise_sd', 21); ValueError saying what is wrong."""
    name, sep, number = text.partition("=")
    if not sep or not number.strip().isdigit():
        raise ValueError(f"--cc {text}: use CONTROL=CC, e.g. noise_sd=21")
    name = name.strip()
    knob_row(name)
    return name, check_cc(int(number))


def scale(row: OscAddress, value: int) -> Value:
    """A CC value 0-127 in the row's range: toggles on at 64, ints rounded, floats linear."""
    assert row.minimum is not None and row.maximum is not None
    value = min(max(int(value), 0), 127)
    if row.types == "i" and (row.minimum, row.maximum) == (0, 1):
        return int(value >= TOGGLE_ON)
    x = row.minimum + (row.maximum - row.minimum) * value / 127
    return int(round(x)) if row.types == "i" else float(x)


class CcMap:
    """CC number -> control, with learning; thread-safe (the MIDI thread handles, OSC learns)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path  # where bindings are saved; None: not saved
        self._lock = threading.Lock()  # guards _by_cc and _learning
        self._by_cc: dict[int, str] = {}  # CC number -> control name; _lock
        self._learning: str | None = None  # control waiting for the next CC; _lock

    @classmethod
    def from_config(cls, folder: Path | None = None) -> "CcMap":
        """Bindings from cc.json in the config folder; a missing file is no bindings, a broken one is
        logged and ignored (it is rewritten at the next change)."""
        cc_map = cls((folder or config_dir()) / CONFIG_FILE)
        assert cc_map.path is not None
        try:
            data = json.loads(cc_map.path.read_text(encoding="utf-8"))
            bindings = data["cc"]
            if not isinstance(bindings, dict):
                raise TypeError("'cc' is not an object")
            for control, cc in bindings.items():
                cc_map._bind(control, cc)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("ignoring the CC bindings in %s: %s", cc_map.path, err)
        return cc_map

    def bind(self, control: str, cc: int, save: bool = True) -> None:
        """Bind a CC to a control (each CC drives one control, each control has one CC)."""
        self._bind(control, cc)
        if save:
            self.save()

    def _bind(self, control: str, cc: object) -> None:
        knob_row(control)
        number = check_cc(cc)
        with self._lock:
            for old in [k for k, name in self._by_cc.items() if name == control]:
                del self._by_cc[old]
            self._by_cc[number] = control

    def learn(self, control: str) -> None:
        """The next CC that moves is bound to `control`; "" cancels."""
        if control:
            knob_row(control)
        with self._lock:
            self._learning = control or None

    def handle(self, cc: int, value: int) -> tuple[str, Value] | None:
        """A control change from the input port: (control, scaled value) to apply, or None when the CC
        is not bound. While learning, this CC is bound first (and saved)."""
        with self._lock:
            learning, self._learning = self._learning, None
        if learning is not None:
            try:
                self.bind(learning, cc)
                log.info("CC %d now drives %s", cc, learning)
            except ValueError as err:  # the pedal or a mode message: keep waiting for a knob
                log.info("learn %s: %s", learning, err)
                with self._lock:
                    self._learning = self._learning or learning
                return None
            except OSError as err:  # bound for this run; the file could not be written
                log.warning("%s", err)
        with self._lock:
            control = self._by_cc.get(cc)
        if control is None:
            return None
        return control, scale(knob_row(control), value)

    def bindings(self) -> dict[str, int]:
        """Control -> CC number."""
        with self._lock:
            return {name: cc for cc, name in sorted(self._by_cc.items())}

    def status(self) -> dict[str, object]:
        """For /vaejam/status: cc/<control> = CC number, and the control being learned ("" when none)."""
        with self._lock:
            learning = self._learning or ""
        return {**{f"cc/{name}": cc for name, cc in self.bindings().items()}, "cc_learning": learning}

    def save(self) -> None:
        """Write cc.json atomically (a crash never leaves half a file); OSError names the file."""
        if self.path is None:
            return
        text = json.dumps({"version": CONFIG_VERSION, "cc": self.bindings()}, indent=2) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".cc-", suffix=".json", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
        except OSError as err:
            raise OSError(err.errno, f"cannot save CC bindings to {self.path}: {err.strerror or err}") from err


def apply_bindings(cc_map: CcMap, bindings: Mapping[str, int]) -> None:
    """Command-line bindings (--cc), saved so the knobs stay mapped next time."""
    for control, cc in bindings.items():
        cc_map.bind(control, cc, save=False)
    if bindings:
        cc_map.save()
