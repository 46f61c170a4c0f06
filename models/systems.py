"""Every system behind the bar-engine interface, chosen by the `arch` a model folder records.

VAE-NN (arch "context" or "article": models.engine.BandEngine with its style banks) and the
article's baselines (models.baselines) load through `load_engine`, so `vaejam run`, `render`,
`eval` and `bench` take any of them with `--model DIR`.
"""
from __future__ import annotations

import os

import torch

from models.baselines import BASELINES
from models.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, read_model_config
from models.controls import Controls
from models.engine import BarEngine


def model_arch(directory: str | os.PathLike | None) -> str:
    """The arch a model folder records (None: the shipped model)."""
    document = read_model_config(DEFAULT_MODEL_DIR if directory is None else directory)
    values = document.get("config")
    if not isinstance(values, dict) or not isinstance(values.get("arch", "article"), str):
        raise CheckpointError(f"{directory}: bad model config (no arch)")
    return values.get("arch", "article")


def is_baseline(directory: str | os.PathLike | None) -> bool:
    return model_arch(directory) in BASELINES


def load_engine(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                controls: Controls | None = None, decode_piano: bool = True, **band_options) -> BarEngine:
    """The bar engine of a model folder (None: the shipped VAE-NN). band_options (weights=...)
    apply to VAE-NN only. CheckpointError for a missing, corrupt or unknown model."""
    if is_baseline(directory):
        from models.baselines.checkpoint import load_baseline_network

        module, network, _, thresholds = load_baseline_network(directory, device)
        return module.Engine(network, thresholds, device, controls, decode_piano)
    from models.checkpoint import load_band_model
    from models.engine import BandEngine
    from models.style import load_style_banks

    model = load_band_model(directory, device=str(device))
    styles = load_style_banks(directory, model)
    return BandEngine(model, styles, device, controls, decode_piano=decode_piano, **band_options)
