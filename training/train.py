"""`vaejam train`: the three stages of VAE-NN training, with validation, checkpoints and resume.

1. one VAE per instrument on single bars; 2. MelodyNN on consecutive piano latents;
3. a ConditionalNN per band instrument on [next piano latent, previous latent] -> next latent.
Latents are the VAEs' means, as the article trains them. Every epoch ends with a validation pass
and a checkpoint (safetensors + JSON) in OUT/train_state/, so `--resume` picks up at the next epoch.
Under torchrun the VAE stage is data-parallel (DistributedDataParallel, `training.distributed`):
each rank reads and computes its part of every batch, rank 0 alone reads and writes OUT, and the
MLP stages (seconds) then run on rank 0 alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.bars import BAND, INSTRUMENTS
from models.checkpoint import check_state, save_band_model
from models.baselines import BASELINES
from models.networks import BandConfig, BandModel, count_parameters, piano_features
from training import distributed
from training.corpus import Corpus, join_corpora, load_corpus
from training.distributed import Dist, RankPart
from training.latents import IN_MEMORY_BYTES, LatentStore

log = logging.getLogger(__name__)
STAGES = ("vae", "melody", "conditional")
STATE_DIR = "train_state"
F1_THRESHOLD = 0.2  # the article's binarisation threshold


@dataclass
class TrainConfig:
    data: str
    out: str
    device: str = "cpu"
    seed: int = 0
    vae_epochs: int = 12
    nn_epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    max_bars: int | None = None  # cap on training bars, for quick runs and tests
    latents_in_memory_mb: int = IN_MEMORY_BYTES >> 20  # bigger latent stores go to a scratch file
    model: dict = field(default_factory=lambda: BandConfig().to_dict())


@dataclass
class TrainState:
    stage: str = "vae"
    epoch: int = 0  # epochs finished in this stage
    history: list = field(default_factory=list)  # one dict per finished epoch
    best: dict = field(default_factory=dict)  # stage -> [validation loss, epoch] of its best epoch
    seconds: float = 0.0  # training time so far, across resumes
    melody_choice: dict = field(default_factory=dict)  # validation MSEs of MelodyNN and baselines, the source kept


def first_bars(corpus: Corpus, n_bars: int) -> Corpus:
    """The whole songs that fit in the first n_bars bars (at least one song)."""
    n_songs = max(1, int(np.searchsorted(corpus.song_starts, n_bars, side="right")) - 1)
    return corpus.first_songs(min(n_songs, corpus.n_songs))


def load_corpora(data: str, split: str) -> Corpus:
    """One corpus or several joined ("mma,human"): songs stay whole, so pairs never cross songs.
    npz corpora are read into memory, sharded ones (`vaejam data lpd|lakh`) stay on disk."""
    return join_corpora([load_corpus(directory.strip(), split) for directory in data.split(",") if directory.strip()])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from bridge.cli import no_cuda_message
        raise ValueError(no_cuda_message(f"--device {name}"))
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def to_tensor(bars_u8: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 velocities (B, 5, 32, 128) -> float velocity/127 on the device."""
    return torch.from_numpy(bars_u8).to(device).float().div_(127.0)


# ---------------------------------------------------------------- stage 1: VAEs
class VaeStage(nn.Module):
    """Stage 1's batch loss over the five VAEs as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, vaes: nn.ModuleDict) -> None:
        super().__init__()
        self.vaes = vaes

    def forward(self, bars: torch.Tensor, noise: list[torch.Tensor], part: RankPart) -> tuple[torch.Tensor, torch.Tensor]:
        """bars (b, 5, 32, 128): this rank's part of the batch; noise: its (b, K) draw per VAE.
        Returns the loss to back-propagate and the per-VAE sums of bar losses (5,), detached."""
        sums = torch.stack([self.vaes[name].bar_losses(bars[:, i : i + 1], noise[i], part.batch_mean)[0].sum()
                            for i, name in enumerate(INSTRUMENTS)]) * part.weight
        return sums.sum() * part.loss_scale(), sums.detach()


def vae_epoch(model: BandModel, corpus: Corpus, opt: torch.optim.Optimizer | None,
              cfg: TrainConfig, rng: np.random.Generator | None, device: torch.device,
              desc: str, ranks: Dist = Dist(), step: nn.Module | None = None) -> dict[str, float]:
    """One pass over the bars; trains when opt is given, else validates (adds F1 per instrument).
    Each rank reads and computes its part of every batch (`step`: VaeStage, DDP-wrapped under
    torchrun); the sums are added over the ranks, so every rank returns the same metrics."""
    training = opt is not None
    model.train(training)
    step = step or VaeStage(model.vaes)
    sums = torch.zeros(len(INSTRUMENTS), dtype=torch.float64)
    counts = torch.zeros(len(INSTRUMENTS), 3, len(F1_GRID), dtype=torch.float64)
    progress = tqdm(batches(len(corpus.bars), cfg.batch_size, rng), desc=desc, leave=False, unit="batch",
                    disable=not ranks.main)
    for index in progress:
        part = ranks.part(len(index))
        bars = to_tensor(corpus.bars[np.sort(index)[part.rows]], device)  # (b, 5, 32, 128): this rank's part
        # the whole batch's noise, drawn alike on every rank and sliced: what one process draws
        noise = [torch.randn(len(index), model.config.latent, device=device)[part.rows] for _ in INSTRUMENTS]
        with torch.set_grad_enabled(training):
            loss, per_vae = step(bars, noise, part)
        if training:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                counts += part.weight * torch.stack([torch.from_numpy(f1_counts(bars[:, i : i + 1], vae.decode(
                    vae.encode(bars[:, i : i + 1])[0]))) for i, vae in enumerate(model.vaes.values())]).double()
        sums += per_vae.double().cpu()
        progress.set_postfix(loss=f"{per_vae.sum().item() / (part.hi - part.lo):.1f}")
    sums, counts = ranks.all_reduce(sums), ranks.all_reduce(counts)
    result = {f"loss/{name}": float(sums[i]) / len(corpus.bars) for i, name in enumerate(INSTRUMENTS)}
    if not training:
        result.update({f"f1/{name}": f1_from_counts(counts[i].numpy()) for i, name in enumerate(INSTRUMENTS)})
        result.update({f"f1best/{name}": best_f1(counts[i].numpy()) for i, name in enumerate(INSTRUMENTS)})
    return result


F1_GRID = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6])


def f1_counts(target: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """(3, thresholds): true positives, predicted and actual active cells at each threshold."""
    actual = (target > 0).flatten()
    predicted = recon.flatten().unsqueeze(0) > F1_GRID.to(recon.device).unsqueeze(1)  # (T, cells)
    tp = (predicted & actual).sum(1).cpu().numpy()
    return np.stack([tp, predicted.sum(1).cpu().numpy(), np.full(len(F1_GRID), actual.sum().item())])


def f1_from_counts(counts: np.ndarray) -> float:
    """F1 at the article's 0.2; see best_f1 for the best threshold."""
    return _f1(counts[:, int((F1_GRID == F1_THRESHOLD).nonzero())])


def best_f1(counts: np.ndarray) -> float:
    return max(_f1(counts[:, i]) for i in range(counts.shape[1]))


def _f1(counts: np.ndarray) -> float:
    tp, predicted, actual = counts
    if predicted + actual == 0:
        return 1.0  # nothing to play and nothing played: a perfect (empty) reconstruction
    return float(2 * tp / (predicted + actual))


# ------------------------------------------------------- stages 2 and 3: the MLPs
@dataclass
class MlpBatch:
    """The latent means and piano features of the bars one batch reads; rows index into them."""

    latents: torch.Tensor  # (U, 5, K)
    features: torch.Tensor  # (U, 24) piano chroma features (arch "context")


@dataclass
class MlpData:
    """What the MLP stages read: every bar's latent means and piano features (a LatentStore, in
    bounded memory), and the consecutive pairs (t, t + 1) inside one song. A batch's rows of bar
    indices [oldest .. current bar of the piano history, next bar] are made when it is read."""

    store: LatentStore
    pair_starts: np.ndarray  # (P,) bar t of each pair
    song_starts: np.ndarray  # (n_songs + 1,)
    context: int  # piano bars of history per row

    def __len__(self) -> int:
        return len(self.pair_starts)

    def rows(self, index: np.ndarray) -> np.ndarray:
        return rows_for(self.pair_starts[index], self.song_starts, self.context)

    def batch(self, index: np.ndarray) -> tuple[MlpBatch, torch.Tensor]:
        """Pairs `index`: the bars they read, and their rows as indices into those bars."""
        rows = self.rows(index)
        bars, local = np.unique(rows, return_inverse=True)  # each bar read once, in disk order
        latents, features = self.store.take(bars)
        return MlpBatch(latents, features), torch.from_numpy(local.reshape(rows.shape)).to(self.store.device)


@torch.inference_mode()
def mlp_data(model: BandModel, corpus: Corpus, cfg: TrainConfig, device: torch.device) -> MlpData:
    """Encode every bar once (latent means and piano features) for the MLP stages."""
    model.eval()
    store = LatentStore(len(corpus), len(INSTRUMENTS), model.config.latent, device, cfg.latents_in_memory_mb << 20)
    for index in batches(len(corpus.bars), 512, None):
        bars = to_tensor(corpus.bars[index], device)  # (B, 5, 32, 128)
        store.append(model.encode_means(bars), piano_features(bars[:, 0]))
    context = model.config.context if model.config.arch == "context" else 1
    return MlpData(store.finish(), corpus.pairs()[:, 0], corpus.song_starts, context)


def history_rows(corpus: Corpus, context: int) -> np.ndarray:
    """(P, context + 1) rows of every pair of the corpus (see rows_for)."""
    return rows_for(corpus.pairs()[:, 0], corpus.song_starts, context)


def rows_for(pair_starts: np.ndarray, song_starts: np.ndarray, context: int) -> np.ndarray:
    """(P, context + 1): for each consecutive pair (t, t+1) of a song, the bars t-context+1 .. t,
    padded at the song's start with its first bar (as the engine fills its history), then t+1."""
    song_first = song_starts[np.searchsorted(song_starts, pair_starts, side="right") - 1]
    back = np.arange(context - 1, -1, -1)  # oldest first
    history = np.maximum(pair_starts[:, None] - back[None, :], song_first[:, None])
    return np.concatenate([history, pair_starts[:, None] + 1], axis=1)


def melody_inputs(model: BandModel, data: MlpBatch, rows: torch.Tensor, noise_sd: float = 0.0) -> torch.Tensor:
    """MelodyNN's input for rows: the current latent (article) or the history and features, with
    optional noise on the current latent (as the engine adds noise_sd)."""
    now = rows[:, -2]
    current = data.latents[now, 0]
    if noise_sd:
        current = current + noise_sd * torch.randn_like(current)
    if model.config.arch == "article":
        return current
    history = data.latents[rows[:, :-2], 0].flatten(1)  # (B, (context - 1) * K)
    return torch.cat([history, current, data.features[now]], dim=1)


def predicted_next_piano(model: BandModel, data: MlpBatch, rows: torch.Tensor) -> torch.Tensor:
    """What the engine will feed the ConditionalNNs: the next piano latent as predicted from a
    noisy current latent (arch "context"), by the source training chose."""
    with torch.no_grad():
        model.melody.eval()
        noisy = melody_inputs(model, data, rows, CALIBRATION_NOISE_SD)
        source = model.config.melody_source
        if source == "current":
            return noisy[:, (model.config.context - 1) * model.config.latent:model.config.context * model.config.latent]
        if source == "mean":
            return model.initial_latents[0].expand(len(rows), -1) + CALIBRATION_NOISE_SD * torch.randn(
                len(rows), model.config.latent, device=rows.device)
        return model.melody(noisy)


def mlp_loss(model: BandModel, stage: str, data: MlpBatch, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """MSE to the next bar's latent means; per instrument for the conditional stage.
    Article: ConditionalNNs learn from the true next piano latent, as the paper trains them;
    "context": from MelodyNN's prediction (what they get when playing) and the piano features."""
    now, nxt = rows[:, -2], rows[:, -1]
    target = data.latents[nxt]  # (B, 5, K)
    if stage == "melody":
        loss = F.mse_loss(model.melody(melody_inputs(model, data, rows)), target[:, 0])
        return loss, {"loss/melody": loss.item()}
    if model.config.arch == "article":
        next_piano, features = target[:, 0], None
    else:
        next_piano, features = predicted_next_piano(model, data, rows), data.features[now]
    parts = {}
    for i, name in enumerate(BAND, start=1):
        parts[name] = F.mse_loss(model.conditionals[name](next_piano, data.latents[now, i], features), target[:, i])
    total = torch.stack(list(parts.values())).sum()
    return total, {f"loss/{k}": v.item() for k, v in parts.items()}


def mlp_epoch(model: BandModel, stage: str, data: MlpData, opt: torch.optim.Optimizer | None,
              cfg: TrainConfig, rng: np.random.Generator | None) -> dict:
    training = opt is not None
    model.train(training)
    sums: dict[str, float] = {}
    for index in batches(len(data), cfg.batch_size, rng):
        batch, rows = data.batch(index)
        with torch.set_grad_enabled(training):
            loss, parts = mlp_loss(model, stage, batch, rows)
        if training:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(index)
    return {k: v / max(1, len(data)) for k, v in sums.items()}


@torch.inference_mode()
def melody_baselines(model: BandModel, data: MlpData, train_mean: torch.Tensor) -> dict[str, float]:
    """Validation MSE of MelodyNN against its two baselines: the current latent, the mean latent."""
    model.eval()
    sums = dict.fromkeys(("network", "current", "mean"), 0.0)
    for index in batches(len(data), 4096, None):
        batch, rows = data.batch(index)
        target = batch.latents[rows[:, -1], 0]
        guesses = {"network": model.melody(melody_inputs(model, batch, rows)),
                   "current": batch.latents[rows[:, -2], 0], "mean": train_mean.expand_as(target)}
        for name, guess in guesses.items():
            sums[name] += F.mse_loss(guess, target, reduction="sum").item()
    return {name: total / max(1, len(data) * model.config.latent) for name, total in sums.items()}


def choose_melody_source(model: BandModel, scores: dict[str, float]) -> str:
    """Arch "context": MelodyNN must beat both baselines on validation, else the engine uses the
    better baseline. The article's path stays exactly the article's."""
    if model.config.arch == "article":
        return "network"
    return min(scores, key=scores.get)


def stage_parameters(model: BandModel, stage: str) -> list[torch.nn.Parameter]:
    module = {"vae": model.vaes, "melody": model.melody, "conditional": model.conditionals}[stage]
    return list(module.parameters())


# ------------------------------------------------------ stage 4: calibration
CALIBRATION_PAIRS = 1500
CALIBRATION_NOISE_SD = 0.7  # the default noise_sd, so density 0.5 is calibrated where people play


@torch.inference_mode()
def calibrate_thresholds(model: BandModel, corpus: Corpus, cfg: TrainConfig, device: torch.device,
                         data: MlpData | None = None) -> torch.Tensor:
    """Per instrument, the threshold at which the band's predicted bars have as many active
    cells as the real next bars: what the engine plays at density 0.5. data: the corpus's
    encoded bars, when the caller has them already."""
    model.eval()
    if data is None:
        data = mlp_data(model, corpus, cfg, device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    chosen = np.arange(len(data))
    if len(data) > CALIBRATION_PAIRS:
        chosen = np.sort(rng.choice(len(data), CALIBRATION_PAIRS, replace=False))
    batch, rows_t = data.batch(chosen)
    next_bars = corpus.bars[data.rows(chosen)[:, -1]]  # (P, 5, 32, 128) uint8: what the band should match
    now = batch.latents[rows_t[:, -2]]  # (P, 5, K)
    next_piano = predicted_next_piano(model, batch, rows_t)
    features = batch.features[rows_t[:, -2]] if model.config.arch == "context" else None
    predicted = [next_piano] + [model.conditionals[n](next_piano, now[:, i], features) for i, n in enumerate(BAND, 1)]
    predicted_t = torch.stack(predicted, dim=1)  # (P, 5, K)
    thresholds = torch.empty(len(INSTRUMENTS))
    for i in range(len(INSTRUMENTS)):
        decoded = torch.cat([model.vaes[INSTRUMENTS[i]].decode(predicted_t[j : j + 256, i])
                             for j in range(0, len(chosen), 256)]).flatten()
        active = int((next_bars[:, i] > 0).sum())
        thresholds[i] = float(decoded.kthvalue(max(1, decoded.numel() - active)).values) if active else 0.95
    return thresholds.clamp(0.005, 0.95)


# ------------------------------------------------------------ checkpoints, resume
def save_state(out: Path, model: BandModel, opt: torch.optim.Optimizer, cfg: TrainConfig, state: TrainState) -> None:
    """Weights, optimizer moments and progress. The tensors go to files named after the epoch count
    and state.json, naming them, is renamed into place last: a run killed at any moment resumes
    from one consistent checkpoint, the last one state.json names."""
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    moments = {f"{pid}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
               for pid, entry in opt_state["state"].items() for key, value in entry.items()}
    files = {name: f"{name}-{len(state.history):05d}.safetensors" for name in ("weights", "optimizer")}
    for name, tensors in (("weights", weights), ("optimizer", moments)):
        save_file(tensors, str(folder / files[name]))
    meta = {"train": asdict(cfg), "state": asdict(state), "param_groups": opt_state["param_groups"], "files": files}
    (folder / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(folder / "state.json.tmp", folder / "state.json")
    for old in list(folder.glob("weights-*.safetensors")) + list(folder.glob("optimizer-*.safetensors")):
        if old.name not in files.values():
            old.unlink()


def load_state(out: Path, model: BandModel) -> tuple[TrainState, dict, dict]:
    """Restore the weights; return the progress, optimizer moments and param groups."""
    folder = out / STATE_DIR
    meta = json.loads((folder / "state.json").read_text())
    files = meta.get("files", {"weights": "weights.safetensors", "optimizer": "optimizer.safetensors"})  # older runs
    weights = load_file(str(folder / files["weights"]))
    check_state(model.state_dict(), weights, folder / files["weights"])
    model.load_state_dict(weights)
    return TrainState(**meta["state"]), load_file(str(folder / files["optimizer"])), meta


def restore_optimizer(opt: torch.optim.Optimizer, moments: dict, param_groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in moments.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


# ------------------------------------------------------------------- the driver
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) all stages; write the model to cfg.out; return the final report (rank 0;
    the other ranks of a torchrun return {} once the data-parallel VAE stage is done)."""
    ranks, device = distributed.start(pick_device(cfg.device))
    try:
        return _train(ranks.broadcast_object(cfg), ranks, device)  # rank 0's settings everywhere
    finally:
        distributed.stop(ranks)


def _train(cfg: TrainConfig, ranks: Dist, device: torch.device) -> dict:
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model = BandModel(BandConfig.from_dict(cfg.model)).to(device)
    state, moments, meta = TrainState(), None, None
    if ranks.main and (out / STATE_DIR / "state.json").exists():  # only rank 0 reads OUT
        state, moments, meta = load_state(out, model)
        log.info("resuming at stage %s, epoch %d", state.stage, state.epoch)
    state, moments, meta = ranks.broadcast_object((state, moments, meta))
    ranks.broadcast_tensors(list(model.state_dict().values()))
    train_set, valid_set = load_corpora(cfg.data, "train"), load_corpora(cfg.data, "valid")
    if cfg.max_bars:
        train_set = first_bars(train_set, cfg.max_bars)
        valid_set = first_bars(valid_set, max(cfg.max_bars // 4, 8))
    log.info("%d train bars, %d valid bars, %d parameters, device %s, %d process(es)",
             len(train_set.bars), len(valid_set.bars), count_parameters(model), device, ranks.world)
    started = time.perf_counter() - state.seconds
    data: dict[str, MlpData] = {}  # every bar encoded, once the VAEs are final
    if state.melody_choice:  # resumed after the melody stage: the engine's source was chosen then
        model.config = replace(model.config, melody_source=state.melody_choice["source"])
    for stage in STAGES[STAGES.index(state.stage):]:
        if stage != "vae" and ranks.world > 1:  # the MLP stages take seconds: rank 0 runs them alone
            distributed.stop(ranks)
            if not ranks.main:
                return {}
            ranks = Dist()
        if stage != "vae" and not data:
            data = {s: mlp_data(model, c, cfg, device) for s, c in (("train", train_set), ("valid", valid_set))}
            model.initial_latents.copy_(data["train"].store.mean)  # the "mean latent" baseline too
        run_stage(model, stage, train_set, valid_set, cfg, state, out, device, moments, meta, started, data, ranks)
        moments = meta = None  # only the stage we resumed into has saved moments
        if stage == "melody":
            scores = melody_baselines(model, data["valid"], model.initial_latents[0])
            source = choose_melody_source(model, scores)
            model.config = replace(model.config, melody_source=source)
            state.melody_choice = {"validation_mse": scores, "source": source}
            log.info("next piano latent, validation MSE: %s -> the engine uses %s", _fmt(scores), source)
    model.thresholds.copy_(calibrate_thresholds(model, train_set, cfg, device, data["train"]))
    log.info("calibrated thresholds: %s", dict(zip(INSTRUMENTS, model.thresholds.tolist())))
    report = final_report(state, time.perf_counter() - started)
    report["melody_choice"] = state.melody_choice
    report["thresholds"] = dict(zip(INSTRUMENTS, [round(t, 4) for t in model.thresholds.tolist()]))
    save_band_model(model, out, metadata={"train": asdict(cfg), "report": report})
    (out / "training_log.json").write_text(json.dumps({"report": report, "history": state.history}, indent=1))
    plot_history(state.history, out / "training.png")
    return report


def run_stage(model: BandModel, stage: str, train_set: Corpus, valid_set: Corpus, cfg: TrainConfig,
              state: TrainState, out: Path, device: torch.device, moments, meta, started: float,
              data: dict[str, MlpData], ranks: Dist = Dist()) -> None:
    opt = torch.optim.Adam(stage_parameters(model, stage), lr=cfg.lr)
    if state.stage == stage and moments is not None:
        restore_optimizer(opt, moments, meta["param_groups"])
    if state.stage != stage:
        state.stage, state.epoch = stage, 0
    epochs = cfg.vae_epochs if stage == "vae" else cfg.nn_epochs
    step = VaeStage(model.vaes)
    trained = (DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
               if ranks.world > 1 else step)  # gradients averaged over the ranks after each backward
    progress = tqdm(range(state.epoch, epochs), desc=f"{stage}", unit="epoch", initial=state.epoch, total=epochs,
                    disable=not ranks.main)
    for epoch in progress:
        rng = np.random.default_rng([cfg.seed, STAGES.index(stage), epoch])  # resumable shuffles
        torch.manual_seed(cfg.seed * 1000 + STAGES.index(stage) * 100 + epoch)
        began = time.perf_counter()
        if stage == "vae":
            train_m = vae_epoch(model, train_set, opt, cfg, rng, device, f"vae {epoch + 1}/{epochs}", ranks, trained)
            bars_per_s = len(train_set) / (time.perf_counter() - began)
            valid_m = vae_epoch(model, valid_set, None, cfg, None, device, "validate", ranks, step)
        else:
            train_m = mlp_epoch(model, stage, data["train"], opt, cfg, rng)
            bars_per_s = len(data["train"]) / (time.perf_counter() - began)
            valid_m = mlp_epoch(model, stage, data["valid"], None, cfg, None)
        state.epoch = epoch + 1
        state.seconds = time.perf_counter() - started
        state.history.append({"stage": stage, "epoch": epoch + 1, "seconds": round(state.seconds, 1),
                              "train": train_m, "valid": valid_m, "train_bars_per_s": round(bars_per_s, 1)})
        progress.set_postfix(train=f"{sum(v for k, v in train_m.items() if k.startswith('loss')):.3f}",
                             valid=f"{sum(v for k, v in valid_m.items() if k.startswith('loss')):.3f}")
        log.info("%s epoch %d/%d  valid %s", stage, epoch + 1, epochs, _fmt(valid_m))
        keep_if_best(out, model, stage, state, valid_m, write=ranks.main)
        if ranks.main:
            save_state(out, model, opt, cfg, state)
    restore_best(out, model, stage, state, ranks)


def stage_prefix(stage: str) -> str:
    return {"vae": "vaes.", "melody": "melody.", "conditional": "conditionals."}[stage]


def selection_score(stage: str, valid: dict) -> float:
    """Lower is better. The VAEs are chosen by mean validation F1 (their loss moves with the
    pixel variance, which is re-set every batch); the MLPs by validation loss."""
    if stage == "vae":
        return -float(np.mean([v for k, v in valid.items() if k.startswith("f1best/")]))
    return sum(v for k, v in valid.items() if k.startswith("loss"))


def keep_if_best(out: Path, model: BandModel, stage: str, state: TrainState, valid: dict, write: bool = True) -> None:
    """Save the stage's weights when validation improves: the MLPs overfit after a few epochs.
    Every rank keeps the score (the metrics are the same on all); only rank 0 `write`s."""
    loss = selection_score(stage, valid)
    if stage in state.best and loss >= state.best[stage][0]:
        return
    state.best[stage] = [loss, state.epoch]
    if not write:
        return
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    prefix = stage_prefix(stage)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)}
    save_file(weights, str(folder / f"best-{stage}.safetensors.tmp"))
    os.replace(folder / f"best-{stage}.safetensors.tmp", folder / f"best-{stage}.safetensors")


def restore_best(out: Path, model: BandModel, stage: str, state: TrainState, ranks: Dist = Dist()) -> None:
    """End a stage on its best validation epoch, not its last: rank 0 reads it, the others get it."""
    if stage not in state.best:
        return
    if ranks.main:
        weights = load_file(str(out / STATE_DIR / f"best-{stage}.safetensors"))
        model.load_state_dict(weights, strict=False)
        log.info("%s: keeping epoch %d (validation score %.4g)", stage, state.best[stage][1], state.best[stage][0])
    ranks.broadcast_tensors([t for k, t in model.state_dict().items() if k.startswith(stage_prefix(stage))])


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def final_report(state: TrainState, seconds: float) -> dict:
    kept = {}
    for entry in state.history:  # the validation of each stage's kept (best) epoch
        if entry["epoch"] == state.best.get(entry["stage"], [None, entry["epoch"]])[1]:
            kept[entry["stage"]] = {"epoch": entry["epoch"], **entry["valid"]}
    return {"seconds": round(seconds, 1), "valid": kept}


def plot_history(history: list[dict], path: Path) -> None:
    """Training curves, one panel per stage: train vs validation loss per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STAGES), figsize=(13, 3.6))
    for ax, stage in zip(axes, STAGES):
        rows = [h for h in history if h["stage"] == stage]
        for split, style in (("train", "-"), ("valid", "--")):
            ys = [sum(v for k, v in h[split].items() if k.startswith("loss")) for h in rows]
            ax.plot([h["epoch"] for h in rows], ys, style, label=split)
        ax.set_title(f"{stage} loss (sum over networks)")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train VAEs, MelodyNN and ConditionalNNs on a corpus")
    parser.add_argument("--data", required=True,
                        help="corpus directory (vaejam data synth|midi|human); several, comma-separated, are joined")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, or cuda[:N] with a CUDA build of torch")
    parser.add_argument("--seed", type=int, default=0, help="seed for initial weights and batch order")
    parser.add_argument("--vae-epochs", type=int, default=TrainConfig.vae_epochs, help="epochs of stage 1 (the VAEs)")
    parser.add_argument("--nn-epochs", type=int, default=TrainConfig.nn_epochs,
                        help="epochs of stages 2 and 3 (MelodyNN, ConditionalNNs)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="bars per batch")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="Adam learning rate")
    parser.add_argument("--latent", type=int, default=16, choices=(8, 16, 32, 64), help="latent size of each VAE")
    parser.add_argument("--channels", default="64,128,256", help="VAE conv widths")
    parser.add_argument("--likelihood", default="gaussian", choices=("gaussian", "bernoulli"),
                        help="VAE pixel likelihood")
    parser.add_argument("--arch", default="context", choices=("context", "article") + tuple(BASELINES),
                        help="context: MelodyNN sees the last --context piano bars and the piano's chroma, "
                             "ConditionalNNs learn from its predictions; article: the paper's exact path; "
                             "the others are the article's baselines (models.baselines)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of a baseline --arch (default: the arch's EPOCHS, else 20)")
    parser.add_argument("--context", type=int, default=4, help="piano bars MelodyNN sees (arch context)")
    parser.add_argument("--max-bars", type=int, default=None, help="use at most this many training bars")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 is fastest on a busy machine")
    parser.set_defaults(func=_train_command)


def _train_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reads and writes OUT
    if main_rank and (out / STATE_DIR / "state.json").exists() and not args.resume:
        raise ValueError(f"{out} holds a training run; add --resume to continue it or pick a new --out")
    if main_rank and args.resume and not (out / STATE_DIR / "state.json").exists():
        raise ValueError(f"--resume: {out} holds no training state")
    if min(args.vae_epochs, args.nn_epochs, args.batch_size) < 1 or not math.isfinite(args.lr) or args.lr <= 0:
        raise ValueError("epochs and batch size must be >= 1 and --lr > 0")
    if args.threads < 0:
        raise ValueError("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arch in BASELINES:
        from training.baselines import train_baseline
        return train_baseline(args)
    channels = tuple(int(c) for c in args.channels.split(","))
    model = BandConfig(latent=args.latent, channels=channels, likelihood=args.likelihood, arch=args.arch,
                       context=args.context).to_dict()
    if args.resume and main_rank:  # the other ranks get rank 0's config in train()
        model = json.loads((out / STATE_DIR / "state.json").read_text())["train"]["model"]
    cfg = TrainConfig(data=args.data, out=args.out, device=args.device, seed=args.seed,
                      vae_epochs=args.vae_epochs, nn_epochs=args.nn_epochs, batch_size=args.batch_size,
                      lr=args.lr, max_bars=args.max_bars, model=model)
    report = train(cfg)
    if report:  # rank 0's (the only one under torchrun)
        print(json.dumps(report, indent=1))
    return 0
