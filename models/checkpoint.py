"""Model files: safetensors weights + a JSON config with a format version. Never unpickles.

A model directory holds `config.json` and `model.safetensors`; style banks live in `styles/`
beside them. Loading rebuilds the networks from the stored config and checks every tensor's
name and shape before any weight is used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.networks import BandConfig, BandModel

FORMAT = "vaejam-band"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"


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
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
    try:
        model = BandModel(BandConfig.from_dict(config["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: bad model config ({err})") from err
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: corrupt weights ({err})") from err
    check_state(model.state_dict(), state, weights)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.fingerprint = config.get("fingerprint", "")  # type: ignore[assignment]
    model.source = str(directory)  # type: ignore[assignment]
    return model.to(device).eval()


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: Path) -> None:
    """Every expected tensor present with its exact shape, nothing extra."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where}: weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(found[name].shape)}, "
                                  f"config says {tuple(tensor.shape)}")
