"""Model files: safetensors weights + a JSON config with a format version. Never unpickles.

A model directory holds `config.json` and `model.safetensors`; style banks live in `styles/`
beside them. Loading rebuilds the networks from the stored config and checks every tensor's
name and shape before any weight is used.

A model folder is not trusted before it is checked: the config's sizes must lie within LIMITS and
the safetensors header's shapes must match a model built on torch's "meta" device (no memory)
before any real allocation (channels [2048, 2048, 2048] once allocated 5.5 GB for 15 s before
"shape mismatch"); every weight must be finite (NaN weights made a silent band that said
"ready"). Every such problem is one CheckpointError line, never a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.networks import BandConfig, BandModel

FORMAT = "vaejam-band"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; more is not a config
LIMITS = {"channels": (1, 1024), "hidden": (1, 4096)}  # sane sizes: 4x the article's widest
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class CheckpointError(ValueError):
    """A model directory that is missing, corrupt or does not match its config."""


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Short hash of the weights; style banks record it, since latents only fit their own VAEs."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_band_model(model: BandModel, directory: str | os.PathLike, half: bool = True,
                    metadata: dict | None = None) -> Path:
    """Write weights (float16 by default: half the size, no audible difference) and config."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
        "dtype": str(dtype).removeprefix("torch."), "fingerprint": fingerprint(state),
        "metadata": metadata or {},
    }
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    _atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def read_model_config(directory: str | os.PathLike) -> dict:
    """The validated config.json of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no model here (missing {CONFIG_FILE})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too big for a model config")
    try:
        config = json.loads(path.read_text())
    except RecursionError as err:  # deeply nested JSON
        raise CheckpointError(f"{path}: corrupt config (nested too deeply)") from err
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: corrupt config ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaejam model config")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {config.get('format_version')}, this vaejam reads {FORMAT_VERSION}"
        )
    return config


def load_band_model(directory: str | os.PathLike | None = None, device: str = "cpu") -> BandModel:
    """Rebuild a BandModel from its directory (None: the shipped default), in eval mode."""
    directory = DEFAULT_MODEL_DIR if directory is None else Path(directory)
    config = read_model_config(directory)
    band_config = check_band_config(config.get("config"), directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    with torch.device("meta"):  # shapes only, no memory: checked against the header first
        expected = BandModel(band_config).state_dict()
    check_state(expected, read_header_shapes(weights), weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: corrupt weights ({err})") from err
    check_state(expected, state, weights)
    check_finite(state, weights)
    model = BandModel(band_config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.fingerprint = config.get("fingerprint", "")  # type: ignore[assignment]
    model.source = str(directory)  # type: ignore[assignment]
    return model.to(device).eval()


def check_band_config(values: object, directory: str | os.PathLike) -> BandConfig:
    """The stored model config as a BandConfig, its sizes within LIMITS (checked before anything
    is allocated)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{directory}: bad model config (not a JSON object)")
    sizes = {"channels": values.get("channels", [1]), "hidden": [values.get("hidden", 1)]}
    for name, items in sizes.items():
        low, high = LIMITS[name]
        if not isinstance(items, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in items):
            raise CheckpointError(f"{directory}: bad model config ({name}={_short(items)}: "
                                  f"each must be a whole number {low}-{high})")
    try:
        return BandConfig.from_dict(values)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: bad model config ({_short(err)})") from err


def read_header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors header alone (no tensor is read)."""
    try:
        with safe_open(str(weights), "pt") as file:
            slices = {name: file.get_slice(name) for name in file.keys()}
            dtypes = {name: s.get_dtype() for name, s in slices.items()}
            shapes = {name: tuple(s.get_shape()) for name, s in slices.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{weights}: corrupt weights ({_short(err)})") from err
    odd = sorted(name for name, dtype in dtypes.items() if dtype not in FLOAT_DTYPES)
    if odd:
        raise CheckpointError(f"{weights}: {odd[0]} is {dtypes[odd[0]]}, not a float tensor")
    return shapes


def check_finite(state: dict[str, torch.Tensor], where: Path) -> None:
    """No NaN or inf in any weight: they make a band that says "ready" and plays nothing."""
    for name in sorted(state):
        if not bool(torch.isfinite(state[name]).all()):
            raise CheckpointError(f"{where}: {name} holds NaN or inf values")


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_state(expected: dict[str, torch.Tensor], found: Mapping[str, torch.Tensor | tuple[int, ...]],
                where: Path) -> None:
    """Every expected tensor present with its exact shape, nothing extra (`found`: name -> tensor or shape)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where}: weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    for name, tensor in expected.items():
        shape = tuple(getattr(found[name], "shape", found[name]))
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{where}: {name} has shape {shape}, "
                                  f"config says {tuple(tensor.shape)}")
