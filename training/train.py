"""`vaejam train`: the three stages of VAE-NN training, with validation, checkpoints and resume.

1. one VAE per instrument on single bars; 2. MelodyNN on consecutive piano latents;
3. a ConditionalNN per band instrument on [next piano latent, previous latent] -> next latent.
Latents are the VAEs' means, as the article trains them. Every epoch ends with a validation pass
and a checkpoint (safetensors + JSON) in OUT/train_state/, so `--resume` picks up at the next epoch.
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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.bars import BAND, INSTRUMENTS
from models.checkpoint import check_state, save_band_model
from models.baselines import BASELINES
from models.networks import BandConfig, BandModel, count_parameters, piano_features
from training.corpus import Corpus, load_corpus

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
    n_songs = min(n_songs, corpus.n_songs)
    end = int(corpus.song_starts[n_songs])
    return Corpus(corpus.bars[:end], corpus.song_starts[: n_songs + 1], corpus.names[:n_songs])


def load_corpora(data: str, split: str) -> Corpus:
    """One corpus or several joined ("mma,human"): songs stay whole, so pairs never cross songs."""
    parts = [load_corpus(directory.strip(), split) for directory in data.split(",") if directory.strip()]
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(c.bars) for c in parts[:-1]])
    starts = np.concatenate([c.song_starts[:-1] + o for c, o in zip(parts, offsets)] + [[sum(len(c.bars) for c in parts)]])
    return Corpus(np.concatenate([c.bars for c in parts]), starts.astype(parts[0].song_starts.dtype),
                  [name for c in parts for name in c.names])


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
def vae_epoch(model: BandModel, corpus: Corpus, opt: torch.optim.Optimizer | None,
              cfg: TrainConfig, rng: np.random.Generator | None, device: torch.device,
              desc: str) -> dict[str, float]:
    """One pass over the bars; trains when opt is given, else validates (adds F1 per instrument)."""
    training = opt is not None
    model.train(training)
    sums = {name: 0.0 for name in INSTRUMENTS}
    counts = {name: np.zeros((3, len(F1_GRID))) for name in INSTRUMENTS}
    progress = tqdm(batches(len(corpus.bars), cfg.batch_size, rng), desc=desc, leave=False, unit="batch")
    for index in progress:
        bars = to_tensor(corpus.bars[np.sort(index)], device)  # (B, 5, 32, 128)
        with torch.set_grad_enabled(training):
            losses = []
            for i, name in enumerate(INSTRUMENTS):
                loss, recon = model.vaes[name](bars[:, i : i + 1])
                losses.append(loss)
                sums[name] += loss.item() * len(index)
                if not training:
                    counts[name] += f1_counts(bars[:, i : i + 1], model.vaes[name].decode(
                        model.vaes[name].encode(bars[:, i : i + 1])[0]))
            total = torch.stack(losses).sum()
        if training:
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        progress.set_postfix(loss=f"{total.item():.1f}")
    result = {f"loss/{k}": v / len(corpus.bars) for k, v in sums.items()}
    if not training:
        result.update({f"f1/{k}": f1_from_counts(c) for k, c in counts.items()})
        result.update({f"f1best/{k}": best_f1(c) for k, c in counts.items()})
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
@torch.inference_mode()
def encode_corpus(model: BandModel, corpus: Corpus, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Latent means of every bar, (n, 5, K), kept on the device for the MLP stages."""
    model.eval()
    means = [model.encode_means(to_tensor(corpus.bars[index], device))
             for index in batches(len(corpus.bars), 512, None)]
    return torch.cat(means)


@dataclass
class MlpData:
    """What the MLP stages read: every bar's latent means, the piano features, and rows of bar
    indices [oldest .. current bar of the piano history, next bar] inside one song."""

    latents: torch.Tensor  # (n, 5, K)
    features: torch.Tensor  # (n, 24) piano chroma features (arch "context")
    rows: np.ndarray  # (P, context + 1)


@torch.inference_mode()
def mlp_data(model: BandModel, corpus: Corpus, cfg: TrainConfig, device: torch.device,
             latents: torch.Tensor) -> MlpData:
    features = torch.cat([piano_features(to_tensor(corpus.bars[index], device)[:, 0])
                          for index in batches(len(corpus.bars), 512, None)])
    return MlpData(latents, features, history_rows(corpus, model.config.context if model.config.arch == "context" else 1))


def history_rows(corpus: Corpus, context: int) -> np.ndarray:
    """(P, context + 1): for each consecutive pair (t, t+1) of a song, the bars t-context+1 .. t,
    padded at the song's start with its first bar (as the engine fills its history), then t+1."""
    pairs = corpus.pairs()
    song_first = corpus.song_starts[np.searchsorted(corpus.song_starts, pairs[:, 0], side="right") - 1]
    back = np.arange(context - 1, -1, -1)  # oldest first
    history = np.maximum(pairs[:, :1] - back[None, :], song_first[:, None])
    return np.concatenate([history, pairs[:, 1:]], axis=1)


def melody_inputs(model: BandModel, data: MlpData, rows: torch.Tensor, noise_sd: float = 0.0) -> torch.Tensor:
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


def predicted_next_piano(model: BandModel, data: MlpData, rows: torch.Tensor) -> torch.Tensor:
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


def mlp_loss(model: BandModel, stage: str, data: MlpData, rows: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
    rows_t = torch.from_numpy(data.rows).to(data.latents.device)
    for index in batches(len(data.rows), cfg.batch_size, rng):
        with torch.set_grad_enabled(training):
            loss, parts = mlp_loss(model, stage, data, rows_t[torch.from_numpy(index).to(data.latents.device)])
        if training:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(index)
    return {k: v / max(1, len(data.rows)) for k, v in sums.items()}


@torch.inference_mode()
def melody_baselines(model: BandModel, data: MlpData, train_mean: torch.Tensor) -> dict[str, float]:
    """Validation MSE of MelodyNN against its two baselines: the current latent, the mean latent."""
    model.eval()
    rows = torch.from_numpy(data.rows).to(data.latents.device)
    target = data.latents[rows[:, -1], 0]
    return {
        "network": F.mse_loss(model.melody(melody_inputs(model, data, rows)), target).item(),
        "current": F.mse_loss(data.latents[rows[:, -2], 0], target).item(),
        "mean": F.mse_loss(train_mean.expand_as(target), target).item(),
    }


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
                         latents: torch.Tensor | None = None) -> torch.Tensor:
    """Per instrument, the threshold at which the band's predicted bars have as many active
    cells as the real next bars: what the engine plays at density 0.5. latents: the corpus's
    encoded means, when the caller has them already."""
    model.eval()
    if latents is None:
        latents = encode_corpus(model, corpus, cfg, device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = mlp_data(model, corpus, cfg, device, latents)
    rows = history_rows(corpus, model.config.context if model.config.arch == "context" else 1)
    if len(rows) > CALIBRATION_PAIRS:
        rows = rows[np.sort(rng.choice(len(rows), CALIBRATION_PAIRS, replace=False))]
    pairs = rows[:, -2:]
    rows_t = torch.from_numpy(rows).to(device)
    now = latents[rows_t[:, -2]]  # (P, 5, K)
    next_piano = predicted_next_piano(model, data, rows_t)
    features = data.features[rows_t[:, -2]] if model.config.arch == "context" else None
    predicted = [next_piano] + [model.conditionals[n](next_piano, now[:, i], features) for i, n in enumerate(BAND, 1)]
    predicted_t = torch.stack(predicted, dim=1)  # (P, 5, K)
    thresholds = torch.empty(len(INSTRUMENTS))
    for i in range(len(INSTRUMENTS)):
        decoded = torch.cat([model.vaes[INSTRUMENTS[i]].decode(predicted_t[j : j + 256, i])
                             for j in range(0, len(pairs), 256)]).flatten()
        active = int((corpus.bars[pairs[:, 1], i] > 0).sum())
        thresholds[i] = float(decoded.kthvalue(max(1, decoded.numel() - active)).values) if active else 0.95
    return thresholds.clamp(0.005, 0.95)


# ------------------------------------------------------------ checkpoints, resume
def save_state(out: Path, model: BandModel, opt: torch.optim.Optimizer, cfg: TrainConfig, state: TrainState) -> None:
    """Weights, optimizer moments and progress; written to temp files, then renamed."""
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    moments = {f"{pid}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
               for pid, entry in opt_state["state"].items() for key, value in entry.items()}
    for name, tensors in (("weights", weights), ("optimizer", moments)):
        save_file(tensors, str(folder / f"{name}.safetensors.tmp"))
        os.replace(folder / f"{name}.safetensors.tmp", folder / f"{name}.safetensors")
    meta = {"train": asdict(cfg), "state": asdict(state), "param_groups": opt_state["param_groups"]}
    (folder / "state.json.tmp").write_text(json.dumps(meta, indent=1))
    os.replace(folder / "state.json.tmp", folder / "state.json")


def load_state(out: Path, model: BandModel) -> tuple[TrainState, dict, dict]:
    """Restore the weights; return the progress, optimizer moments and param groups."""
    folder = out / STATE_DIR
    meta = json.loads((folder / "state.json").read_text())
    weights = load_file(str(folder / "weights.safetensors"))
    check_state(model.state_dict(), weights, folder / "weights.safetensors")
    model.load_state_dict(weights)
    return TrainState(**meta["state"]), load_file(str(folder / "optimizer.safetensors")), meta


def restore_optimizer(opt: torch.optim.Optimizer, moments: dict, param_groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in moments.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


# ------------------------------------------------------------------- the driver
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) all stages; write the model to cfg.out; return the final report."""
    out, device = Path(cfg.out), pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = BandModel(BandConfig.from_dict(cfg.model)).to(device)
    state, moments, meta = TrainState(), None, None
    if (out / STATE_DIR / "state.json").exists():
        state, moments, meta = load_state(out, model)
        log.info("resuming at stage %s, epoch %d", state.stage, state.epoch)
    train_set, valid_set = load_corpora(cfg.data, "train"), load_corpora(cfg.data, "valid")
    if cfg.max_bars:
        train_set = first_bars(train_set, cfg.max_bars)
        valid_set = first_bars(valid_set, max(cfg.max_bars // 4, 8))
    log.info("%d train bars, %d valid bars, %d parameters, device %s",
             len(train_set.bars), len(valid_set.bars), count_parameters(model), device)
    started = time.perf_counter() - state.seconds
    latents: dict[str, torch.Tensor] = {}  # latent means of every bar, once the VAEs are final
    data: dict[str, MlpData] = {}
    if state.melody_choice:  # resumed after the melody stage: the engine's source was chosen then
        model.config = replace(model.config, melody_source=state.melody_choice["source"])
    for stage in STAGES[STAGES.index(state.stage):]:
        if stage != "vae" and not latents:
            latents = {s: encode_corpus(model, c, cfg, device) for s, c in (("train", train_set), ("valid", valid_set))}
            model.initial_latents.copy_(latents["train"].mean(0))  # the "mean latent" baseline too
            data = {s: mlp_data(model, c, cfg, device, latents[s]) for s, c in (("train", train_set), ("valid", valid_set))}
        run_stage(model, stage, train_set, valid_set, cfg, state, out, device, moments, meta, started, data)
        moments = meta = None  # only the stage we resumed into has saved moments
        if stage == "melody":
            scores = melody_baselines(model, data["valid"], model.initial_latents[0])
            source = choose_melody_source(model, scores)
            model.config = replace(model.config, melody_source=source)
            state.melody_choice = {"validation_mse": scores, "source": source}
            log.info("next piano latent, validation MSE: %s -> the engine uses %s", _fmt(scores), source)
    model.thresholds.copy_(calibrate_thresholds(model, train_set, cfg, device, latents["train"]))
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
              data: dict[str, MlpData]) -> None:
    opt = torch.optim.Adam(stage_parameters(model, stage), lr=cfg.lr)
    if state.stage == stage and moments is not None:
        restore_optimizer(opt, moments, meta["param_groups"])
    if state.stage != stage:
        state.stage, state.epoch = stage, 0
    epochs = cfg.vae_epochs if stage == "vae" else cfg.nn_epochs
    progress = tqdm(range(state.epoch, epochs), desc=f"{stage}", unit="epoch", initial=state.epoch, total=epochs)
    for epoch in progress:
        rng = np.random.default_rng([cfg.seed, STAGES.index(stage), epoch])  # resumable shuffles
        torch.manual_seed(cfg.seed * 1000 + STAGES.index(stage) * 100 + epoch)
        if stage == "vae":
            train_m = vae_epoch(model, train_set, opt, cfg, rng, device, f"vae {epoch + 1}/{epochs}")
            valid_m = vae_epoch(model, valid_set, None, cfg, None, device, "validate")
        else:
            train_m = mlp_epoch(model, stage, data["train"], opt, cfg, rng)
            valid_m = mlp_epoch(model, stage, data["valid"], None, cfg, None)
        state.epoch = epoch + 1
        state.seconds = time.perf_counter() - started
        state.history.append({"stage": stage, "epoch": epoch + 1, "seconds": round(state.seconds, 1),
                              "train": train_m, "valid": valid_m})
        progress.set_postfix(train=f"{sum(v for k, v in train_m.items() if k.startswith('loss')):.3f}",
                             valid=f"{sum(v for k, v in valid_m.items() if k.startswith('loss')):.3f}")
        log.info("%s epoch %d/%d  valid %s", stage, epoch + 1, epochs, _fmt(valid_m))
        keep_if_best(out, model, stage, state, valid_m)
        save_state(out, model, opt, cfg, state)
    restore_best(out, model, stage, state)


def stage_prefix(stage: str) -> str:
    return {"vae": "vaes.", "melody": "melody.", "conditional": "conditionals."}[stage]


def selection_score(stage: str, valid: dict) -> float:
    """Lower is better. The VAEs are chosen by mean validation F1 (their loss moves with the
    pixel variance, which is re-set every batch); the MLPs by validation loss."""
    if stage == "vae":
        return -float(np.mean([v for k, v in valid.items() if k.startswith("f1best/")]))
    return sum(v for k, v in valid.items() if k.startswith("loss"))


def keep_if_best(out: Path, model: BandModel, stage: str, state: TrainState, valid: dict) -> None:
    """Save the stage's weights when validation improves: the MLPs overfit after a few epochs."""
    loss = selection_score(stage, valid)
    if stage in state.best and loss >= state.best[stage][0]:
        return
    folder = out / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    prefix = stage_prefix(stage)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)}
    save_file(weights, str(folder / f"best-{stage}.safetensors.tmp"))
    os.replace(folder / f"best-{stage}.safetensors.tmp", folder / f"best-{stage}.safetensors")
    state.best[stage] = [loss, state.epoch]


def restore_best(out: Path, model: BandModel, stage: str, state: TrainState) -> None:
    """End a stage on its best validation epoch, not its last."""
    if stage not in state.best:
        return
    weights = load_file(str(out / STATE_DIR / f"best-{stage}.safetensors"))
    model.load_state_dict(weights, strict=False)
    log.info("%s: keeping epoch %d (validation score %.4g)", stage, state.best[stage][1], state.best[stage][0])


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
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of a baseline --arch")
    parser.add_argument("--context", type=int, default=4, help="piano bars MelodyNN sees (arch context)")
    parser.add_argument("--max-bars", type=int, default=None, help="use at most this many training bars")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 is fastest on a busy machine")
    parser.set_defaults(func=_train_command)


def _train_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / STATE_DIR / "state.json").exists() and not args.resume:
        raise ValueError(f"{out} holds a training run; add --resume to continue it or pick a new --out")
    if args.resume and not (out / STATE_DIR / "state.json").exists():
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
    if args.resume:
        model = json.loads((out / STATE_DIR / "state.json").read_text())["train"]["model"]
    cfg = TrainConfig(data=args.data, out=args.out, device=args.device, seed=args.seed,
                      vae_epochs=args.vae_epochs, nn_epochs=args.nn_epochs, batch_size=args.batch_size,
                      lr=args.lr, max_bars=args.max_bars, model=model)
    report = train(cfg)
    print(json.dumps(report, indent=1))
    return 0
