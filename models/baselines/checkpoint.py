"""Baseline model folders: the same files and checks as VAE-NN's (models.checkpoint).

config.json holds {"format", "format_version", "config": Config.to_dict() with "arch",
"thresholds": five floats (per instrument, calibrated by training), "metadata"}; weights are
safetensors, float16 by default. Nothing is allocated before the config's sizes and the header's
shapes are checked, and non-finite weights are refused, as for VAE-NN.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.bars import INSTRUMENTS
from models.baselines import baseline_module
from models.checkpoint import (
    CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, CheckpointError, _atomic_write, _short,
    check_finite, check_state, fingerprint, read_header_shapes, read_model_config,
)


def save_baseline(network: torch.nn.Module, config, thresholds: list[float], directory: str | os.PathLike,
                  half: bool = True, metadata: dict | None = None) -> Path:
    """Write a baseline's weights and config (config: its module's Config)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in network.state_dict().items()}
    document = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
        "thresholds": [float(t) for t in thresholds], "fingerprint": fingerprint(state),
        "metadata": metadata or {},
    }
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    _atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(document, indent=2) + "\n"))
    return out


def check_thresholds(values: object, directory: str | os.PathLike) -> list[float]:
    """Five finite thresholds in (0, 1), one per instrument."""
    if (not isinstance(values, list) or len(values) != len(INSTRUMENTS)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1
                       for v in values)):
        raise CheckpointError(f"{directory}: bad thresholds {_short(values)} "
                              f"(want {len(INSTRUMENTS)} numbers between 0 and 1)")
    return [float(v) for v in values]


def load_baseline_network(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """(module, network in eval mode, config, thresholds) of a baseline folder."""
    document = read_model_config(directory)
    values = document.get("config")
    if not isinstance(values, dict):
        raise CheckpointError(f"{directory}: bad model config (not a JSON object)")
    try:
        module = baseline_module(str(values.get("arch")))
        config = module.Config.from_dict(values)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: bad model config ({_short(err)})") from err
    thresholds = check_thresholds(document.get("thresholds"), directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    with torch.device("meta"):  # shapes only, no memory: checked against the header first
        expected = module.Network(config).state_dict()
    check_state(expected, read_header_shapes(weights), weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: corrupt weights ({err})") from err
    check_state(expected, state, weights)
    check_finite(state, weights)
    network = module.Network(config)
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return module, network.to(device).eval(), config, thresholds
