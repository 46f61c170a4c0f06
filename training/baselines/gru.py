"""`vaejam train --arch gru`: the multi-instrument GRU (models.baselines.gru).

It learns next-step prediction over runs of WINDOW_BARS bars tiling each song (every step's
5 x 128 cells from all steps before, binary cross-entropy, padded steps masked), from a zero state
at each run's start as the engine starts a song. Thresholds are then calibrated by playing training
songs through the engine (training.baselines.common.calibrate_by_playing).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.baselines import gru
from models.baselines.gru import StepGRU
from training.baselines import BaselineTrainConfig
from training.baselines.common import Splits, calibrate_by_playing, config_of, fit, load_splits, save, windows
from training.corpus import Corpus

WINDOW_BARS = 8  # bars per training sequence (256 steps)
EPOCHS = 6  # default of `vaejam train --arch gru`: an epoch is ~260k GRU steps on MMA + Freedoom


def window_frames(corpus: Corpus, runs: np.ndarray, parts: slice, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs [first bar, bars] -> ((B, WINDOW_BARS * 32, P * 128) on/off frames, (B, steps) mask of
    real steps); shorter runs are padded with silence at the end."""
    steps = WINDOW_BARS * STEPS_PER_BAR
    width = len(range(*parts.indices(len(INSTRUMENTS)))) * N_PITCHES
    frames, mask = torch.zeros(len(runs), steps, width), torch.zeros(len(runs), steps)
    for row, (first, n) in enumerate(runs):
        bars = torch.from_numpy(corpus.bars[first:first + n, parts] > 0).float()  # (n, P, 32, 128)
        frames[row, :n * STEPS_PER_BAR] = bars.permute(0, 2, 1, 3).reshape(n * STEPS_PER_BAR, width)
        mask[row, :n * STEPS_PER_BAR] = 1.0
    return frames.to(device), mask.to(device)


def sequence_loss(rnn: StepGRU, corpus: Corpus, runs: np.ndarray, parts: slice, device: torch.device):
    """The batch loss over runs: BCE of every next frame's cells, averaged over real steps."""

    def loss(index: np.ndarray, training: bool) -> torch.Tensor:
        frames, mask = window_frames(corpus, runs[index], parts, device)
        logits, _ = rnn(frames[:, :-1])
        cells = F.binary_cross_entropy_with_logits(logits, frames[:, 1:], reduction="none").mean(2)
        return (cells * mask[:, 1:]).sum() / mask[:, 1:].sum().clamp_min(1.0)

    return loss


def fit_rnn(rnn: StepGRU, splits: Splits, parts: slice, cfg: BaselineTrainConfig, desc: str):
    train_runs, valid_runs = windows(splits.train, WINDOW_BARS), windows(splits.valid, WINDOW_BARS)
    train_loss = sequence_loss(rnn, splits.train, train_runs, parts, splits.device)
    valid_loss = sequence_loss(rnn, splits.valid, valid_runs, parts, splits.device)
    return fit(rnn, train_loss, len(train_runs), len(valid_runs), cfg, desc, valid_loss=valid_loss)


def train(cfg: BaselineTrainConfig) -> dict:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    config = config_of(gru, cfg)
    network = gru.Network(config).to(splits.device)
    result = fit_rnn(network.rnn, splits, slice(None), cfg, "gru")
    thresholds = calibrate_by_playing(gru.Engine(network, [0.5] * 5, splits.device), splits.train, cfg.seed)
    return save(network, config, thresholds, cfg, splits, {"rnn": result}, started)
