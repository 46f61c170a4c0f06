"""`vaejam eval`: how good is a model, in numbers a musician and an ML engineer both read.

- reconstruction F1 per instrument on held-out bars (VAE quality, threshold 0.2);
- objective metrics (MuseGAN's EB/UPC/QN/DP/TD, see training.metrics) of the band that
  `BandEngine.step` plays over held-out piano parts, next to the real parts, the real parts one
  bar late (what a band that answers one bar late without predicting would play) and a
  shuffled-bars baseline;
- variation: how much two seeds and two noise_sd settings change the band;
- engine time per bar.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.bars import INSTRUMENTS
from models.checkpoint import load_band_model
from models.controls import Controls
from models.engine import BandEngine
from models.files import atomic_write_text, check_output_file
from models.networks import BandModel
from models.render import play_bars
from training.corpus import Corpus, load_corpus
from training.metrics import (
    format_metrics_table, reconstruction_f1, shuffled_bars, song_metrics, transpose_metrics,
)

F1_THRESHOLD = 0.2


@torch.inference_mode()
def reconstruction_scores(model: BandModel, corpus: Corpus, batch: int = 256) -> dict[str, dict[str, float]]:
    """Cell F1 of decode(encode_mean(bar)) vs the bar, per instrument, over every held-out bar,
    at the article's threshold 0.2 and at the model's calibrated threshold."""
    scores: dict[str, dict[str, float]] = {"0.2": {}, "calibrated": {}}
    device = next(model.parameters()).device
    for i, name in enumerate(INSTRUMENTS):
        targets, recons = [], []
        for start in range(0, len(corpus), batch):
            bars = torch.from_numpy(corpus.float_bars(slice(start, start + batch))[:, i : i + 1]).to(device)
            vae = model.vaes[name]
            recons.append(vae.decode(vae.encode(bars)[0]).cpu().numpy())
            targets.append(bars.cpu().numpy())
        target, recon = np.concatenate(targets), np.concatenate(recons)
        scores["0.2"][name] = reconstruction_f1(target, recon, F1_THRESHOLD)[2]
        scores["calibrated"][name] = reconstruction_f1(target, recon, float(model.thresholds[i]))[2]
    return scores


def play_song(engine: BandEngine, bars: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The band over a song's piano part, as live: bar t+1 from piano bar t (bar 0 is silent)."""
    engine.reset()
    return play_bars(engine, bars)


def evaluate(model: BandModel, corpus: Corpus, songs: int, seed: int = 0) -> dict:
    played, unlocked, real, shuffled, late, times, differences = [], [], [], [], [], [], {}
    rng = np.random.default_rng(seed)
    picked = range(min(songs, corpus.n_songs))
    variants = {"seed 0": Controls(seed=0), "seed 1": Controls(seed=1), "key lock off": Controls(harmony=0),
                "key lock only": Controls(harmony=1),
                "noise 0.3": Controls(noise_sd=0.3), "noise 1.0": Controls(noise_sd=1.0)}
    for index in tqdm(picked, desc="evaluate", unit="song"):
        bars = corpus.float_bars(slice(corpus.song_starts[index], corpus.song_starts[index + 1]))
        outs = {}
        for name, controls in variants.items():
            outs[name], step_ms = play_song(BandEngine(model, controls=controls), bars)
            times += step_ms
        played.append(outs["seed 0"])
        unlocked.append(outs["key lock off"])
        real.append(bars)
        shuffled.append(shuffled_bars(bars, rng))
        late.append(one_bar_late(bars))
        for a, b in (("seed 0", "seed 1"), ("noise 0.3", "noise 1.0")):
            differences.setdefault(f"{a} vs {b}", []).append(cell_difference(outs[a], outs[b]))
    systems = {"held-out data": mean_metrics(real), "vaejam": mean_metrics(played),
               "vaejam, raw model (harmony 0)": mean_metrics(unlocked),
               "real parts one bar late": mean_metrics(late), "shuffled bars": mean_metrics(shuffled)}
    return {
        "songs": len(picked),
        "reconstruction_f1": reconstruction_scores(model, corpus),
        "metrics": transpose_metrics(systems),
        "variation": {k: float(np.mean(v)) for k, v in differences.items()},
        "step_ms": {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))},
    }


def one_bar_late(bars: np.ndarray) -> np.ndarray:
    """The real band parts shifted one bar later: the best a band that answers one bar late
    without predicting could do, the fair bar for TD against the piano."""
    late = np.zeros_like(bars)
    late[:, 0] = bars[:, 0]
    late[1:, 1:] = bars[:-1, 1:]
    return late


def cell_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the band's active cells (in either) that differ between two renders."""
    on_a, on_b = a[:, 1:] > 0, b[:, 1:] > 0
    union = (on_a | on_b).sum()
    return float((on_a ^ on_b).sum() / union) if union else 0.0


def mean_metrics(songs: list[np.ndarray]) -> dict[str, float]:
    rows = [song_metrics(bars) for bars in songs]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def report_markdown(result: dict, model_dir: str, data: str, split: str) -> str:
    f1 = "; ".join(f"at threshold {t}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items())
                   for t, row in result["reconstruction_f1"].items())
    variation = "; ".join(f"{k}: {v:.2f}" for k, v in result["variation"].items())
    return "\n".join([
        f"# vaejam evaluation: model `{model_dir}`, corpus `{data}` ({split}, {result['songs']} songs)",
        "",
        f"Reconstruction F1 of held-out bars, {f1}",
        "",
        f"Variation (fraction of active band cells that differ): {variation}",
        "",
        f"Engine time per bar: p50 {result['step_ms']['p50']:.2f} ms, p99 {result['step_ms']['p99']:.2f} ms",
        "",
        format_metrics_table(result["metrics"]),
        "",
    ])


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="reconstruction F1, objective metrics and variation of a model")
    parser.add_argument("--data", required=True, help="corpus directory")
    parser.add_argument("--split", default="valid", choices=("train", "valid"), help="which part of the corpus")
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--songs", type=int, default=20, help="songs to play the band over")
    parser.add_argument("--out", default=None, help="write the Markdown report here (and a .json beside it)")
    parser.set_defaults(func=_eval_command)


def _eval_command(args: argparse.Namespace) -> int:
    if args.songs < 1:
        raise ValueError("--songs must be >= 1")
    if args.out:  # before minutes of work, not after
        check_output_file(args.out, "--out", (".md",))
    model = load_band_model(args.model)
    corpus = load_corpus(args.data, args.split)
    started = time.perf_counter()
    result = evaluate(model, corpus, args.songs)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = report_markdown(result, args.model or "default", args.data, args.split)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(result, indent=1))
    return 0
