"""`vaejam train --arch piano_gru`: the piano GRU next-note model and the HarmonyCNN that voices
its prediction (models.baselines.piano_gru), in two stages on the same corpora.

1. The GRU: next-step prediction of the piano's 128 cells over runs of bars (as training.baselines.gru).
2. The HarmonyCNN: [true piano t+1, part t] -> part t+1 on consecutive-bar pairs, exactly as the CNN
   pair's (training.baselines.cnn), so `piano_gru` and `cnn` differ only in the melody model.
Thresholds: calibrated by playing training songs through the engine
(training.baselines.common.calibrate_by_playing).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from models.baselines import piano_gru
from training.baselines import BaselineTrainConfig
from training.baselines.common import Splits, calibrate_by_playing, config_of, fit, load_splits, on_off_bars, save
from training.baselines.gru import fit_rnn

PIANO = slice(0, 1)

EPOCHS = 6  # default of `vaejam train --arch piano_gru`: as the GRU's, for both stages


def harmony_loss(network: piano_gru.Network, splits: Splits, corpus_pairs: np.ndarray, valid: bool = False):
    """The batch loss over pairs: mean BCE of the band's next bar given the true next piano bar."""
    corpus = splits.valid if valid else splits.train

    def loss(index: np.ndarray, training: bool) -> torch.Tensor:
        now = on_off_bars(corpus, corpus_pairs[index, 0], splits.device)  # (B, 5, 32, 128)
        nxt = on_off_bars(corpus, corpus_pairs[index, 1], splits.device)
        return F.binary_cross_entropy_with_logits(network.harmony.next_band(nxt[:, 0], now[:, 1:]), nxt[:, 1:])

    return loss


def train(cfg: BaselineTrainConfig) -> dict:
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)
    config = config_of(piano_gru, cfg)
    network = piano_gru.Network(config).to(splits.device)
    rnn = fit_rnn(network.rnn, splits, PIANO, cfg, "piano_gru: GRU")
    train_pairs, valid_pairs = splits.train.pairs(), splits.valid.pairs()
    harmony = fit(network.harmony, harmony_loss(network, splits, train_pairs), len(train_pairs), len(valid_pairs),
                  cfg, "piano_gru: HarmonyCNN", valid_loss=harmony_loss(network, splits, valid_pairs, valid=True))
    engine = piano_gru.Engine(network, [0.5] * 5, splits.device)
    thresholds = calibrate_by_playing(engine, splits.train, cfg.seed)
    return save(network, config, thresholds, cfg, splits, {"rnn": rnn, "harmony": harmony}, started)
