"""Training the article's baselines (models.baselines): `vaejam train --arch NAME`.

Each baseline's trainer is training/baselines/<arch>.py with `train(cfg: BaselineTrainConfig) ->
dict` (the report it prints), writing the model folder with models.baselines.checkpoint. The
corpus, batching and threshold calibration below are shared, so every system learns from the same
bars and plays at the same note density as the data.
"""
from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from models.bars import INSTRUMENTS
from models.baselines import BASELINES

CALIBRATION_BARS = 1500  # bars whose predicted cells set the thresholds


@dataclass(frozen=True)
class BaselineTrainConfig:
    arch: str
    data: str  # corpus directory, or several joined by commas
    out: str  # model folder to write
    device: str = "auto"
    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    max_bars: int | None = None
    resume: bool = False
    model: dict = field(default_factory=dict)  # overrides of the arch's Config (tests: a tiny size)


def train_baseline(args: argparse.Namespace) -> int:
    """`vaejam train --arch NAME` for a baseline: its module's trainer, the report printed."""
    trainer = importlib.import_module(f"training.baselines.{args.arch}")
    epochs = args.epochs if args.epochs is not None else default_epochs(args.arch)
    if epochs < 1:
        raise ValueError("--epochs must be >= 1")
    cfg = BaselineTrainConfig(arch=args.arch, data=args.data, out=args.out, device=args.device, seed=args.seed,
                              epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                              max_bars=args.max_bars, resume=args.resume)
    report = trainer.train(cfg)
    print(json.dumps(report, indent=1))
    return 0


def default_epochs(arch: str) -> int:
    """A trainer's own EPOCHS (sized to train on a CPU in minutes), else BaselineTrainConfig's."""
    return int(getattr(importlib.import_module(f"training.baselines.{arch}"), "EPOCHS", BaselineTrainConfig.epochs))


@torch.inference_mode()
def calibrate_thresholds(predicted: torch.Tensor, real: np.ndarray) -> list[float]:
    """Per instrument, the threshold at which the predicted cells (B, 5, 32, 128) in [0, 1] are as
    many as the real next bars' active cells (B, 5, 32, 128) uint8: what the engine plays at
    density 0.5, the rule VAE-NN's training uses (training.train.calibrate_thresholds)."""
    thresholds = []
    for i in range(len(INSTRUMENTS)):
        cells = predicted[:, i].flatten().float()
        active = int((real[:, i] > 0).sum())
        value = float(cells.kthvalue(max(1, cells.numel() - active)).values) if active else 0.95
        thresholds.append(min(0.95, max(0.005, value)))
    return thresholds


