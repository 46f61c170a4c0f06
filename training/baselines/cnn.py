"""`vaejam train --arch cnn`: MelodyCNN and the conditional HarmonyCNN (models.baselines.cnn).

Both learn from consecutive-bar pairs (t, t+1) inside songs, with binary cross-entropy on the
next bar's cells: MelodyCNN piano t -> piano t+1; the HarmonyCNN [piano t+1, part t] -> part t+1
for the four band parts at once, from the true next piano bar (teacher forcing, as the article
trains it). Then the code scale of the noise, and thresholds calibrated by playing training songs
(training.baselines.common.calibrate_by_playing).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from models.baselines import cnn
from training.baselines import BaselineTrainConfig
from training.baselines.common import Splits, calibrate_by_playing, config_of, fit, load_splits, on_off_bars, save

EPOCHS = 12  # default of `vaejam train --arch cnn`: validation loss is flat from epoch 10 on MMA + human songs


def pair_loss(network: cnn.Network, splits: Splits, corpus_pairs: np.ndarray, valid: bool = False):
    """The batch loss over pairs: mean BCE of the next piano bar plus mean BCE of the band's."""
    corpus = splits.valid if valid else splits.train

    def loss(index: np.ndarray, training: bool) -> torch.Tensor:
        now = on_off_bars(corpus, corpus_pairs[index, 0], splits.device)  # (B, 5, 32, 128)
        nxt = on_off_bars(corpus, corpus_pairs[index, 1], splits.device)
        melody = F.binary_cross_entropy_with_logits(network.next_piano(now[:, 0]), nxt[:, 0])
        band = F.binary_cross_entropy_with_logits(network.harmony.next_band(nxt[:, 0], now[:, 1:]), nxt[:, 1:])
        return melody + band

    return loss


@torch.inference_mode()
def set_code_scale(network: cnn.Network, splits: Splits, batch: int = 256) -> None:
    """MelodyCNN's per-unit spread of the bottleneck over the training bars: noise_sd's unit."""
    codes = [network.melody.encode(on_off_bars(splits.train, np.arange(i, min(i + batch, len(splits.train))),
                                               splits.device)[:, :1])
             for i in range(0, len(splits.train), batch)]
    network.melody.code_scale.copy_(torch.cat(codes).std(0, unbiased=False))


def train(cfg: BaselineTrainConfig) -> dict:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    config = config_of(cnn, cfg)
    network = cnn.Network(config).to(splits.device)
    train_pairs, valid_pairs = splits.train.pairs(), splits.valid.pairs()
    result = fit(network, pair_loss(network, splits, train_pairs), len(train_pairs), len(valid_pairs), cfg,
                 "cnn", valid_loss=pair_loss(network, splits, valid_pairs, valid=True))
    set_code_scale(network, splits)
    thresholds = calibrate_by_playing(cnn.Engine(network, [0.5] * 5, splits.device), splits.train, cfg.seed)
    return save(network, config, thresholds, cfg, splits, {"melody+harmony": result}, started)
