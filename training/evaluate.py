"""`vaejam eval`: the musical report of a model, in numbers a musician and an ML engineer both read.

    vaejam eval --data DIR [--songs N] [--bars B] [--out REPORT.md]

Over the first B bars of N held-out songs, each band below plays the song's piano part; the
report (Markdown, plus REPORT.json and PNG plots beside it) holds:
- per band part (guitar, bass, strings): TD to the piano per beat and per bar, chord-tone rate,
  pitch classes per bar, empty bars, polyphony, copy rate; drums: empty bars and DP
  (training.metrics.band_report), for every system in `SYSTEMS`;
- variation: the share of band notes (and cells) that change between seeds 0 and 1, and the cells
  that change against noise_sd 0 as noise_sd grows (`NOISE_LEVELS`), with a plot;
- piano-roll pictures of the first song under each system;
- engine time per bar, and the chord fit's;
- reconstruction F1 per instrument on every held-out bar (VAE quality), and the MuseGAN metrics.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from models.bars import INSTRUMENTS
from models.controls import Controls
from models.engine import BandEngine, BarEngine
from models.files import atomic_write, atomic_write_text, check_output_file
from models.networks import BandModel
from models.render import play_bars, plot_bars
from models.systems import load_engine
from training.baselines_rule import one_bar_late, rule_alone
from training.corpus import Corpus, load_corpus
from training.metrics import (
    DRUM_METRICS, HARMONY_PARTS, band_report, format_metrics_table, mean_harmony_report,
    note_difference, reconstruction_f1, shuffled_bars, song_metrics, transpose_metrics,
)

__all__ = ["SYSTEMS", "evaluate", "one_bar_late", "cell_difference", "report_markdown"]

F1_THRESHOLD = 0.2
NOISE_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0)  # noise_sd of the variation curve, against the first
VARIATION_HARMONY = (2, 0)  # harmony settings whose variation is measured: the default, the raw model
PICTURE_BARS = 16  # bars of the example song drawn per system: enough to read, small enough to see


class System(NamedTuple):
    key: str  # JSON key and picture file name
    label: str  # row name in the tables
    about: str  # what it is, for the report


SYSTEMS: tuple[System, ...] = (
    System("real", "real parts", "the song's own guitar, bass, strings and drums"),
    System("late", "real parts one bar late",
           "the real parts, each bar played one bar later: the best a band answering one bar late "
           "without predicting could do"),
    System("shuffled", "shuffled bars",
           "each real band part's bars in a random order (seed 0), the piano kept: what unrelated scores"),
    System("rule", "causal rule alone",
           "no network: the real parts one bar late, then fitted beat by beat to the chord the piano "
           "has played so far (models.chords.fit_bar, the rule harmony 2 applies to the networks' "
           "notes); rhythm and register from bar t, pitches from the piano heard before each beat"),
    System("harmony0", "article's path (harmony 0)",
           "the raw VAE-NN model as the article describes it: piano VAE, noise, MelodyNN, "
           "ConditionalNNs, decoders, binarised (engine defaults: noise_sd 0.7, seed 0)"),
    System("harmony1", "key lock (harmony 1)",
           "the raw model with out-of-key notes moved a semitone into the piano's key"),
    System("harmony2", "chord follow (harmony 2, default)",
           "key lock, then each beat fitted to the chord the piano has played so far, as live"),
)
HARMONY_OF = {"harmony0": 0, "harmony1": 1, "harmony2": 2}  # system key -> the `harmony` control
PART_METRICS = (  # band_report's metrics of guitar, bass and strings, in column order
    "tonal_distance_per_beat", "tonal_distance_per_bar", "chord_tone_rate", "pitch_classes_per_bar",
    "empty_bars", "polyphony", "copy_rate",
)
METRIC_NAMES = {  # column headers
    "tonal_distance_per_beat": "TD per beat", "tonal_distance_per_bar": "TD per bar",
    "chord_tone_rate": "chord-tone rate", "pitch_classes_per_bar": "pitch classes / bar",
    "empty_bars": "empty bars", "polyphony": "polyphony", "copy_rate": "copy rate",
    "drum_pattern": "DP (8th grid)",
}


@dataclass
class Evaluation:
    result: dict  # everything the report shows, JSON-ready
    example: str  # name of the song drawn in the pictures
    example_bars: dict[str, np.ndarray]  # system key -> that song under the system (n, 5, 32, 128)


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


def play_song(engine: BarEngine, bars: np.ndarray, controls: Controls) -> tuple[np.ndarray, list[float]]:
    """The band over a song's piano part under `controls`, as live, from a fresh start."""
    engine.set_controls(controls)
    engine.reset()
    return play_bars(engine, bars)


class SongRun(NamedTuple):
    systems: dict[str, np.ndarray]  # system key -> (n, 5, 32, 128)
    variation: dict  # see song_variation
    step_ms: list[float]  # engine time of every bar rendered
    fit_ms: list[float]  # the rule's chord fit per bar


def run_song(engine: BarEngine, bars: np.ndarray, rng: np.random.Generator) -> SongRun:
    """Every system in SYSTEMS over one song, and the variation renders."""
    step_ms: list[float] = []

    def render(**controls) -> np.ndarray:
        out, ms = play_song(engine, bars, Controls(**controls))
        step_ms.extend(ms)
        return out

    rule, fit_ms = rule_alone(bars)
    systems = {"real": bars, "late": one_bar_late(bars), "shuffled": shuffled_bars(bars, rng), "rule": rule}
    systems.update({key: render(harmony=h) for key, h in HARMONY_OF.items()})
    variation = song_variation(systems, render)
    return SongRun(systems, variation, step_ms, fit_ms)


def song_variation(systems: dict[str, np.ndarray], render) -> dict:
    """{"seeds": {harmony: {"notes", "cells"}}, "noise": {harmony: [cells per NOISE_LEVELS]}}:
    seed 0 against seed 1 at the default noise_sd, and each noise_sd against the first (seed 0)."""
    seeds, noise = {}, {}
    for harmony in VARIATION_HARMONY:
        first, second = systems[f"harmony{harmony}"], render(harmony=harmony, seed=1)
        seeds[str(harmony)] = {"notes": note_difference(first, second), "cells": cell_difference(first, second)}
        curve = [render(harmony=harmony, noise_sd=level) for level in NOISE_LEVELS]
        noise[str(harmony)] = [cell_difference(curve[0], out) for out in curve]
    return {"seeds": seeds, "noise": noise}


def evaluate(model: BandModel | BarEngine, corpus: Corpus, songs: int, max_bars: int = 64, seed: int = 0) -> Evaluation:
    """The musical report's numbers over the first `max_bars` bars of the first `songs` songs.
    `model`: VAE-NN's model, or any system's engine (a baseline has no reconstruction F1)."""
    if songs < 1 or max_bars < 2:
        raise ValueError(f"songs must be >= 1 and max_bars >= 2, got {songs} and {max_bars}")
    engine = model if isinstance(model, BarEngine) else BandEngine(model)
    rng = np.random.default_rng(seed)
    reports: dict[str, list] = {s.key: [] for s in SYSTEMS}
    musegan: dict[str, list] = {s.key: [] for s in SYSTEMS}
    variations, step_ms, fit_ms, example, example_start = [], [], [], {}, 0
    picked = range(min(songs, corpus.n_songs))
    for index in tqdm(picked, desc="evaluate", unit="song"):
        first = int(corpus.song_starts[index])
        bars = corpus.float_bars(slice(first, min(int(corpus.song_starts[index + 1]), first + max_bars)))
        run = run_song(engine, bars, rng)
        for key, song in run.systems.items():
            reports[key].append(band_report(song[1:]))  # bar 0 is the live band's silent count-in
            musegan[key].append(song_metrics(song[1:]))
        variations.append(run.variation)
        step_ms += run.step_ms
        fit_ms += run.fit_ms
        if not example:
            example_start = picture_start(bars)
            example = {key: song[example_start:example_start + PICTURE_BARS] for key, song in run.systems.items()}
    result = {
        "songs": len(picked), "max_bars": max_bars,
        "systems": {s.key: {"label": s.label, "about": s.about} for s in SYSTEMS},
        "parts": {key: mean_harmony_report(r) for key, r in reports.items()},
        "variation": mean_variation(variations),
        "step_ms": percentiles(step_ms), "fit_ms": percentiles(fit_ms),
        "reconstruction_f1": reconstruction_scores(engine.model, corpus) if isinstance(engine, BandEngine) else {},
        "metrics": transpose_metrics({s.label: mean_metrics(musegan[s.key]) for s in SYSTEMS}),
        "example": {"song": corpus.names[0], "first_bar": example_start},
    }
    return Evaluation(result, corpus.names[0], example)


def picture_start(bars: np.ndarray) -> int:
    """The bar the pictures start at: one before the piano's first note, so the band's answer shows."""
    played = np.flatnonzero(bars[:, 0].any(axis=(1, 2)))
    return max(0, int(played[0]) - 1) if len(played) else 0


def mean_variation(songs: list[dict]) -> dict:
    """Song-by-song variation averaged over songs, each song weighing the same."""
    first = songs[0]
    seeds = {h: {k: float(np.mean([s["seeds"][h][k] for s in songs])) for k in v} for h, v in first["seeds"].items()}
    noise = {h: [float(x) for x in np.mean([s["noise"][h] for s in songs], axis=0)] for h in first["noise"]}
    return {"seeds": seeds, "noise": noise, "noise_levels": list(NOISE_LEVELS)}


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "bars": len(ms)}


def json_ready(value):
    """The result with NaN (nothing to measure) as null, so the .json is strict JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def cell_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the band's active cells (in either) that differ between two renders."""
    on_a, on_b = a[:, 1:] > 0, b[:, 1:] > 0
    union = (on_a | on_b).sum()
    return float((on_a ^ on_b).sum() / union) if union else 0.0


def mean_metrics(songs: list[dict[str, float]]) -> dict[str, float]:
    """song_metrics averaged over songs; NaN-only metrics stay NaN without a warning."""
    out = {}
    for k in songs[0]:
        values = np.array([s[k] for s in songs], np.float64)
        values = values[~np.isnan(values)]
        out[k] = float(values.mean()) if len(values) else float("nan")
    return out


# ---- the report: tables, plots and pictures ----

def _number(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN is the only value unequal to itself


def parts_table(parts: dict[str, dict], instrument: str) -> str:
    """One instrument's Markdown table: a row per system, a column per metric."""
    metrics = DRUM_METRICS if instrument == "drums" else PART_METRICS
    lines = ["| system | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for system in SYSTEMS:
        row = parts[system.key][instrument]
        lines.append(f"| {system.label} | " + " | ".join(_number(row[m]) for m in metrics) + " |")
    return "\n".join(lines)



def variation_table(variation: dict) -> str:
    levels = variation["noise_levels"]
    lines = ["| harmony | notes changed, seed 0 vs 1 | cells changed, seed 0 vs 1 | "
             + " | ".join(f"cells vs noise_sd 0 at {level:g}" for level in levels) + " |",
             "|---|---:|---:|" + "---:|" * len(levels)]
    for harmony, seeds in variation["seeds"].items():
        curve = " | ".join(_number(x) for x in variation["noise"][harmony])
        lines.append(f"| {harmony} | {_number(seeds['notes'])} | {_number(seeds['cells'])} | {curve} |")
    return "\n".join(lines)


def plot_variation(variation: dict, path: str | Path) -> None:
    """Cells changed against noise_sd 0 (seed 0) as noise_sd grows, one line per harmony setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for harmony, curve in variation["noise"].items():
        ax.plot(variation["noise_levels"], curve, "o-", label=f"harmony {harmony}")
    ax.set_xlabel("noise_sd")
    ax.set_ylabel("share of band cells changed\nagainst noise_sd 0")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def picture_names(report: Path) -> dict[str, str]:
    """system key -> the file name of its piano-roll picture, beside the report; plus "variation"."""
    names = {s.key: f"{report.stem}-{s.key}.png" for s in SYSTEMS}
    names["variation"] = f"{report.stem}-variation.png"
    return names


def write_pictures(evaluation: Evaluation, report: Path) -> dict[str, str]:
    names = picture_names(report)
    first = evaluation.result["example"]["first_bar"]
    for system in SYSTEMS:
        bars = evaluation.example_bars[system.key]
        plot_bars(bars, report.with_name(names[system.key]),
                  title=f"{evaluation.example}, song bars {first}-{first + len(bars) - 1}: {system.label}")
    plot_variation(evaluation.result["variation"], report.with_name(names["variation"]))
    return names


def report_markdown(result: dict, model_dir: str, data: str, split: str,
                    pictures: dict[str, str] | None = None) -> str:
    """The whole report; `pictures` (picture_names) links the PNGs written beside it."""
    lines = [
        f"# vaejam evaluation: model `{model_dir}`, corpus `{data}`",
        "",
        f"{split} split, {result['songs']} songs, the first {result['max_bars']} bars of each; "
        f"every number is a mean over songs, each song weighing the same.",
        "",
        "## The systems",
        "",
        *[f"- **{s.label}**: {s.about}." for s in SYSTEMS],
        "",
        *_parts_section(result),
        *_variation_section(result, pictures),
        *_pictures_section(result, pictures),
        "## Time per bar",
        "",
        f"Engine step (engine.step, every bar rendered): p50 {result['step_ms']['p50']:.2f} ms, "
        f"p99 {result['step_ms']['p99']:.2f} ms over {result['step_ms']['bars']} bars. Chord fit of one bar "
        f"(fit_bar, timed in the causal rule): p50 {result['fit_ms']['p50']:.2f} ms, "
        f"p99 {result['fit_ms']['p99']:.2f} ms.",
        "",
        *_f1_section(result),
        "## MuseGAN metrics",
        "",
        "EB empty bars, UPC pitch classes per bar, QN notes of 2+ steps, PCE pitch-class entropy, "
        "DP drum onsets on the 8th grid, TD per beat (training.metrics), same bars as above.",
        "",
        format_metrics_table(result["metrics"]),
        "",
    ]
    if "seconds" in result:
        lines += [f"Evaluated in {result['seconds']} s.", ""]
    return "\n".join(lines)


def _parts_section(result: dict) -> list[str]:
    lines = [
        "## Harmony and texture, per instrument",
        "",
        "Bars 1 onwards of each song (bar 0 is the live band's silent count-in). TD: tonal distance "
        "to the piano (lower is closer in harmony), per beat and with each bar's notes pooled; "
        "chord-tone rate: share of note onsets whose pitch class the piano sounds in the same bar; "
        "pitch classes / bar and polyphony (pitches at once) over bars and steps that sound; "
        "copy rate: share of sounding cells the piano sounds too (1 = doubling the piano); "
        "DP: drum onsets on the 8th-note grid. n/a: nothing to measure.",
        "",
    ]
    for instrument in (*HARMONY_PARTS, "drums"):
        lines += [f"### {instrument}", "", parts_table(result["parts"], instrument), ""]
    return lines


def _variation_section(result: dict, pictures: dict[str, str] | None) -> list[str]:
    lines = [
        "## Variation",
        "",
        "Notes changed: share of the band's notes (instrument, onset, pitch) in either render that the "
        "other lacks; cells changed: the same over active cells (training.evaluate.cell_difference). "
        "Seeds 0 and 1 at the default noise_sd 0.7; the noise columns compare seed 0 at each noise_sd "
        "with seed 0 at noise_sd 0.",
        "",
        variation_table(result["variation"]),
        "",
    ]
    if pictures:
        lines += [f"![variation against noise_sd]({pictures['variation']})", ""]
    return lines


def _pictures_section(result: dict, pictures: dict[str, str] | None) -> list[str]:
    if not pictures:
        return []
    lines = ["## Piano rolls", "",
             f"`{result['example']['song']}`, {PICTURE_BARS} bars (or fewer) from bar "
             f"{result['example']['first_bar']} (the bar before the piano's first note), under each system, "
             "all five parts:", ""]
    lines += [f"- [{s.label}]({pictures[s.key]})" for s in SYSTEMS]
    return lines + [""]


def _f1_section(result: dict) -> list[str]:
    if not result["reconstruction_f1"]:  # a baseline: no VAE to reconstruct with
        return []
    lines = ["## Reconstruction F1", "",
             "Cell F1 of decode(encode_mean(bar)) against the bar, every bar of the split:", "",
             "| threshold | " + " | ".join(INSTRUMENTS) + " |", "|---|" + "---:|" * len(INSTRUMENTS)]
    for threshold, row in result["reconstruction_f1"].items():
        lines.append(f"| {threshold} | " + " | ".join(f"{row[name]:.3f}" for name in INSTRUMENTS) + " |")
    return lines + [""]


# ---- the command ----

def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="the musical report: harmony, variation, pictures, F1 of a model")
    parser.add_argument("--data", required=True, help="corpus directory")
    parser.add_argument("--split", default="valid", choices=("train", "valid"), help="which part of the corpus")
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--songs", type=int, default=20, help="songs to play the band over")
    parser.add_argument("--bars", type=int, default=64, help="first bars of each song to play (at least 2)")
    parser.add_argument("--out", default=None,
                        help="write the Markdown report here, with a .json and PNG plots beside it; with "
                             "--baselines a folder (REPORT_DIR/report.md) or a .md file")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees a GPU), cpu, or cuda[:N] with a CUDA build of torch")
    parser.add_argument("--baselines", default=None, metavar="all|NAME,NAME",
                        help="instead: one report comparing real data, shuffled bars, VAE-NN (--model) and "
                             "these baselines (training.compare)")
    parser.add_argument("--baseline-models", default=None, metavar="DIR",
                        help="with --baselines: trained baselines as DIR/<arch>/ (default: REPORT_DIR/models); "
                             "missing cnn and gru folders are trained there first")
    parser.add_argument("--train-data", default=None, metavar="DIR",
                        help="with --baselines: corpus to train missing baselines on (default: --data's train split)")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="with --baselines: epochs for baselines trained by eval (default: each arch's)")
    parser.set_defaults(func=_eval_command)


def _eval_command(args: argparse.Namespace) -> int:
    if args.songs < 1:
        raise ValueError("--songs must be >= 1")
    if args.bars < 2:
        raise ValueError("--bars must be >= 2: the band answers one bar late")
    if args.baselines is not None:
        from training.compare import compare_command
        return compare_command(args)
    if args.out:  # before minutes of work, not after
        check_output_file(args.out, "--out", (".md",))
    from bridge.daemon import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)  # time per bar as live: one intra-op thread, as the daemon runs
    from bridge.cli import check_device

    model = load_engine(args.model, check_device(args.device))  # VAE-NN or a baseline, by the folder's arch
    corpus = load_corpus(args.data, args.split)
    started = time.perf_counter()
    evaluation = evaluate(model, corpus, args.songs, args.bars)
    pictures = write_pictures(evaluation, Path(args.out)) if args.out else None
    evaluation.result["seconds"] = round(time.perf_counter() - started, 1)
    text = report_markdown(evaluation.result, args.model or "default", args.data, args.split, pictures)
    print(text)
    if args.out:
        json_text = json.dumps(json_ready(evaluation.result), indent=1, allow_nan=False)
        atomic_write_text(Path(args.out).with_suffix(".json"), json_text)
        atomic_write_text(args.out, text)
    return 0
