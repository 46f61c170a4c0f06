"""What the baselines' trainers share: the corpora, batches of items, the epoch loop that keeps the
best validation epoch, and the model folder with its training cost in the metadata.

Every trainer reads the same corpora as VAE-NN (training.train.load_corpora: train split to learn,
valid split to choose the epoch), so the systems in `vaejam eval --baselines` learned from the same
bars. The metadata's report ("seconds", "parameters") is what the comparison report prints as
training cost.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from models.baselines.checkpoint import save_baseline
from models.controls import Controls
from models.engine import BarEngine
from models.networks import count_parameters
from training.baselines import BaselineTrainConfig
from training.corpus import Corpus
from training.train import batches, first_bars, load_corpora, pick_device

log = logging.getLogger(__name__)

# (indices of one batch of items, training?) -> (loss to minimise, batch size it averaged over)
BatchLoss = Callable[[np.ndarray, bool], torch.Tensor]


@dataclass
class Splits:
    train: Corpus
    valid: Corpus
    device: torch.device


def load_splits(cfg: BaselineTrainConfig) -> Splits:
    """The train and valid corpora of cfg.data (several joined), capped by cfg.max_bars as
    VAE-NN's training caps them; the device to train on."""
    train, valid = load_corpora(cfg.data, "train"), load_corpora(cfg.data, "valid")
    if cfg.max_bars:
        train, valid = first_bars(train, cfg.max_bars), first_bars(valid, max(cfg.max_bars // 4, 8))
    return Splits(train, valid, pick_device(cfg.device))


def pairs(corpus: Corpus) -> np.ndarray:
    """(P, 2) indices (t, t + 1) of consecutive bars inside one song."""
    return corpus.pairs()


def windows(corpus: Corpus, length: int, offset: int = 0) -> np.ndarray:
    """(W, 2) [first bar, bars] of runs of up to `length` bars tiling every song, cut at `offset`
    (0 to length - 1) plus multiples of `length` (so a song's first run is shorter when offset > 0):
    an epoch sees each bar once, and a new offset each epoch moves the cuts."""
    runs = []
    for start, end in zip(corpus.song_starts[:-1].tolist(), corpus.song_starts[1:].tolist()):
        cuts = list(range(start + offset, end, length))
        bounds = ([start] if not cuts or cuts[0] != start else []) + cuts + [end]
        runs += [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.array(runs, np.int64).reshape(-1, 2)


def on_off_bars(corpus: Corpus, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """Bars at `index` as on/off float (len(index), 5, 32, 128) on the device."""
    return torch.from_numpy(corpus.bars[index] > 0).to(device).float()


@dataclass
class Fit:
    history: list = field(default_factory=list)  # {"epoch", "train", "valid", "seconds"} per epoch
    best_epoch: int = 0
    best_valid: float = float("inf")


def fit(module: torch.nn.Module, loss: BatchLoss, n_train: int, n_valid: int, cfg: BaselineTrainConfig,
        desc: str, valid_loss: BatchLoss | None = None) -> Fit:
    """Adam over `module` for cfg.epochs epochs of `n_train` items in shuffled batches; after each,
    the mean validation loss over `n_valid` items (valid_loss, default `loss` untrained). Ends on
    the best validation epoch's weights: small nets on small corpora overfit after a few epochs."""
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    result, best_state, started = Fit(), None, time.perf_counter()
    progress = tqdm(range(cfg.epochs), desc=desc, unit="epoch")
    for epoch in progress:
        torch.manual_seed(cfg.seed * 1000 + epoch)
        train = run_epoch(module, loss, n_train, cfg.batch_size, np.random.default_rng([cfg.seed, epoch]), opt)
        valid = run_epoch(module, valid_loss or loss, n_valid, cfg.batch_size, None, None)
        result.history.append({"epoch": epoch + 1, "train": train, "valid": valid,
                               "seconds": round(time.perf_counter() - started, 1)})
        progress.set_postfix(train=f"{train:.4f}", valid=f"{valid:.4f}")
        log.info("%s epoch %d/%d: train %.4f valid %.4f", desc, epoch + 1, cfg.epochs, train, valid)
        if valid < result.best_valid:
            result.best_epoch, result.best_valid = epoch + 1, valid
            best_state = copy.deepcopy(module.state_dict())
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return result


def run_epoch(module: torch.nn.Module, loss: BatchLoss, n: int, batch_size: int, rng: np.random.Generator | None,
              opt: torch.optim.Optimizer | None) -> float:
    """Mean loss over n items, each batch weighed by its size; trains when opt is given."""
    module.train(opt is not None)
    total = 0.0
    for index in batches(n, batch_size, rng):
        with torch.set_grad_enabled(opt is not None):
            value = loss(index, opt is not None)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        total += value.item() * len(index)
    return total / max(1, n)


def save(network: torch.nn.Module, config, thresholds: list[float], cfg: BaselineTrainConfig, splits: Splits,
         fits: dict[str, Fit], started: float) -> dict:
    """Write the model folder; returns the report kept in its metadata (training cost included)."""
    report = {
        "arch": config.arch, "seconds": round(time.perf_counter() - started, 1),
        "parameters": count_parameters(network), "device": str(splits.device),
        "torch_threads": torch.get_num_threads(),
        "train_bars": len(splits.train), "train_songs": splits.train.n_songs, "valid_bars": len(splits.valid),
        "stages": {name: {"best_epoch": f.best_epoch, "valid_loss": round(f.best_valid, 5), "epochs": len(f.history)}
                   for name, f in fits.items()},
        "thresholds": [round(t, 4) for t in thresholds],
    }
    history = {name: f.history for name, f in fits.items()}
    save_baseline(network, config, thresholds, cfg.out,
                  metadata={"train": asdict(cfg), "report": report, "history": history})
    return report


CALIBRATION_SONGS = 12  # training songs the engine plays while its thresholds are bisected
CALIBRATION_SONG_BARS = 17  # the first bars of each: 16 answers
CALIBRATION_ROUNDS = 8  # bisection rounds on logit(threshold): 1/30 of its range
LOGIT_RANGE = (math.log(0.005 / 0.995), math.log(0.95 / 0.05))  # the thresholds' clamp, as VAE-NN's


def calibrate_by_playing(engine: BarEngine, corpus: Corpus, seed: int) -> list[float]:
    """Per instrument, the threshold at which the engine, playing training songs as live (harmony 0,
    default noise_sd and density, its own bars fed back), plays as many cells as the real next
    bars have: bisection on logit(threshold), the same songs and seed every round. Playing matters:
    a network that hears its own last bar can drift into silence that a bar-by-bar calibration on
    real previous bars never sees (the CNN's HarmonyCNN did)."""
    songs = calibration_songs(corpus, seed)
    target = sum((bars[1:] > 0).sum(axis=(0, 2, 3)) for bars in songs)  # (5,) real active cells
    low, high = np.full(len(target), LOGIT_RANGE[0]), np.full(len(target), LOGIT_RANGE[1])
    for _ in range(CALIBRATION_ROUNDS):
        middle = (low + high) / 2
        too_many = played_cells(engine, songs, 1 / (1 + np.exp(-middle)), seed) > target
        low, high = np.where(too_many, middle, low), np.where(too_many, high, middle)
    return [float(t) for t in 1 / (1 + np.exp(-(low + high) / 2))]


def calibration_songs(corpus: Corpus, seed: int) -> list[np.ndarray]:
    """Up to CALIBRATION_SONGS training songs drawn with the run's seed, their first bars, float."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(corpus.n_songs, min(CALIBRATION_SONGS, corpus.n_songs), replace=False))
    starts, ends = corpus.song_starts[picked], corpus.song_starts[picked + 1]
    return [corpus.float_bars(slice(int(a), int(min(b, a + CALIBRATION_SONG_BARS)))) for a, b in zip(starts, ends)]


def played_cells(engine: BarEngine, songs: list[np.ndarray], thresholds: np.ndarray, seed: int) -> np.ndarray:
    """(5,) active cells the engine plays over the songs' bars 1.. at these thresholds: the
    predicted piano and the band, after the shared post-processing."""
    engine.base_thresholds = [float(t) for t in thresholds]
    engine.set_controls(Controls(harmony=0, seed=seed))  # recomputes the per-setting thresholds
    counts = np.zeros(len(thresholds), np.int64)
    for bars in songs:
        engine.reset()
        for t in range(len(bars) - 1):
            counts += (engine.step(bars[t, 0]) > 0).sum(axis=(1, 2))
    return counts


def config_of(module, cfg: BaselineTrainConfig):
    """The arch's Config with cfg.model's overrides (a tiny size for tests), checked as a folder's."""
    return module.Config.from_dict({**module.Config().to_dict(), **cfg.model})
