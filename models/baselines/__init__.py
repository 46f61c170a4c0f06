"""The article's baselines as bar engines: the same `step(piano_bar)` as VAE-NN (models.engine).

Each baseline is one module here, named by its `arch` (what `vaejam train --arch NAME` trains and
what a model folder's config.json records), holding
  ARCH     its name
  Config   a frozen dataclass with to_dict() / from_dict(dict) (from_dict raises ValueError on bad
           or oversized values: a model folder is not trusted before it is checked)
  Network  nn.Module built from a Config alone (so a folder's shapes are checked on torch's meta
           device before any weight is read)
  Engine   a models.engine.BarEngine subclass: Engine(network, thresholds, device, controls,
           decode_piano); it brings `_decode_next` and its memory of earlier bars, the shared base
           does thresholds, density, mutes, velocities, key lock
and its trainer is training/baselines/<arch>.py. Checkpoints: models.baselines.checkpoint.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# arch -> module; what the article compared VAE-NN with (issue 9)
BASELINES: dict[str, str] = {
    "cnn": "models.baselines.cnn",  # MelodyCNN + conditional HarmonyCNN
    "gru": "models.baselines.gru",  # multi-instrument GRU over the 5 x 128 roll
    "piano_gru": "models.baselines.piano_gru",  # piano-only GRU next-note model, band from its piano
    "dcgan": "models.baselines.dcgan",  # DCGAN over bars, conditioned on the piano bar
    "transformer": "models.baselines.transformer",  # event-token transformer (miditok)
}


def baseline_module(arch: str) -> ModuleType:
    """The module of baseline `arch`; ValueError naming the known ones."""
    if arch not in BASELINES:
        raise ValueError(f"unknown baseline {arch!r}; known: {', '.join(BASELINES)}")
    return importlib.import_module(BASELINES[arch])
