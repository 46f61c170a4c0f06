"""The band's controls: their ranges, defaults and meaning, in one table.

The engine validates against it, and the OSC address table (bridge.osc_table), the Max devices and
the docs read their ranges from it, so a range is written once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from models.bars import BAND


@dataclass(frozen=True)
class ControlSpec:
    kind: type  # float, int or str
    minimum: float | None
    maximum: float | None
    default: float | int | str | None
    doc: str
    per_instrument: bool = False  # one value per band instrument: name/<instrument>


CONTROL_SPECS: dict[str, ControlSpec] = {
    "noise_sd": ControlSpec(float, 0.0, 3.0, 0.7,
        "How adventurous the band is: sd of the Gaussian noise on the piano latent (0.5-1.0 sounds best)"),
    "alpha": ControlSpec(float, 0.0, 1.0, 0.5,
        "Style blend: z' = alpha*s + (1-alpha)*z, s drawn from the style song's bars (used when a style is set)"),
    "style": ControlSpec(str, None, None, "",
        "Style bank name (vaejam style add NAME REF.mid); empty for none"),
    "seed": ControlSpec(int, 0, 2**31 - 1, 0, "Random seed; setting it restarts the band's random stream"),
    "harmony": ControlSpec(int, 0, 2, 2,
        "How the band follows the piano's harmony: 0 = the raw model; 1 = key lock (out-of-key notes move a "
        "semitone); 2 = chord follow: at each beat, guitar/bass/strings move to the chord the piano has played "
        "so far (bass to the root on the beat, chords voiced)"),
    "mute": ControlSpec(int, 0, 1, 0, "1 silences the instrument (its sounding notes are released)", True),
    "density": ControlSpec(float, 0.0, 1.0, 0.5,
        "More or fewer notes: lowers or raises the binarisation threshold of the decoded bar", True),
    "velocity": ControlSpec(float, 0.0, 2.0, 1.0,
        "Loudness relative to the played piano's dynamics", True),
}


def density_threshold(density: float, base: float) -> float:
    """Binarisation threshold for a density in [0, 1]: 0.5 keeps the model's calibrated base,
    1.0 divides it by 4 (more notes), 0.0 multiplies it by 4 (fewer)."""
    return min(0.95, max(0.005, base * 4.0 ** (1.0 - 2.0 * density)))


def check_value(name: str, value: object) -> float | int | str:
    """A control value converted to its kind; ValueError/TypeError naming the control if bad."""
    base = name.split("/", 1)[0]
    spec = CONTROL_SPECS.get(base)
    if spec is None or spec.per_instrument != ("/" in name):
        raise ValueError(f"unknown control {name!r}")
    if spec.per_instrument and name.split("/", 1)[1] not in BAND:
        raise ValueError(f"unknown instrument in {name!r}; use one of {', '.join(BAND)}")
    if spec.kind is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} takes a string, got {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} takes a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if spec.kind is int and float(value) != int(value):
        raise ValueError(f"{name} takes an integer, got {value}")
    if not spec.minimum <= value <= spec.maximum:  # type: ignore[operator]
        raise ValueError(f"{name}={value} is outside {spec.minimum}-{spec.maximum}")
    return spec.kind(value)


def _per_instrument(base: str) -> dict[str, float]:
    return {instrument: CONTROL_SPECS[base].default for instrument in BAND}  # type: ignore[misc]


@dataclass(frozen=True)
class Controls:
    """One consistent setting of every control; frozen, so it can be handed between threads."""

    noise_sd: float = CONTROL_SPECS["noise_sd"].default  # type: ignore[assignment]
    alpha: float = CONTROL_SPECS["alpha"].default  # type: ignore[assignment]
    style: str = ""
    seed: int = 0
    harmony: int = 2
    mute: Mapping[str, int] = field(default_factory=lambda: _per_instrument("mute"))
    density: Mapping[str, float] = field(default_factory=lambda: _per_instrument("density"))
    velocity: Mapping[str, float] = field(default_factory=lambda: _per_instrument("velocity"))

    def updated(self, name: str, value: object) -> "Controls":
        """A copy with one control changed; name is e.g. 'noise_sd' or 'density/bass'."""
        checked = check_value(name, value)
        if "/" not in name:
            return replace(self, **{name: checked})
        base, instrument = name.split("/", 1)
        values = dict(getattr(self, base))
        values[instrument] = checked
        return replace(self, **{base: values})

    def get(self, name: str) -> float | int | str:
        if "/" not in name:
            return getattr(self, name)
        base, instrument = name.split("/", 1)
        return getattr(self, base)[instrument]

    def as_dict(self) -> dict[str, float | int | str]:
        """Flat name -> value, e.g. for the status reply."""
        flat: dict[str, float | int | str] = {}
        for name, spec in CONTROL_SPECS.items():
            names = [f"{name}/{i}" for i in BAND] if spec.per_instrument else [name]
            flat.update({n: self.get(n) for n in names})
        return flat
