"""`vaejam eval --baselines all --data VAL --out REPORT_DIR`: every system side by side, one report.

Rows: the real parts, shuffled bars, VAE-NN (--model, default the shipped model) and each baseline
(models.baselines) found as BASELINE_MODELS/<arch>/. The CNN pair and the multi-instrument GRU are
always there: when their folders are missing they are trained first (on --train-data, else the
train split of --data) and the report says so; other missing baselines are listed as not trained,
with the command that trains them. Every system plays the same held-out songs' piano as live
(models.render.play_bars), from bar 1 on measured by training.metrics.band_report, at harmony 0 (the
raw networks: the headline, since the shared post-processing is then only thresholds and
velocities) and at harmony 2 (the default chord follow). Columns: harmony with the piano, texture,
variation between seeds 0 and 1, training cost (from each folder's metadata) and time per bar.
The report then states the article's claim about VAE-NN and the CNN pair and whether it holds here.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.baselines import BASELINES
from models.checkpoint import DEFAULT_MODEL_DIR, read_model_config
from models.controls import Controls
from models.engine import BandEngine, BarEngine
from models.files import atomic_write, atomic_write_text, check_output_file
from models.render import plot_bars
from models.systems import load_engine
from training.baselines import BaselineTrainConfig, default_epochs
from training.corpus import Corpus, load_corpus, split_path
from training.evaluate import (
    METRIC_NAMES, PART_METRICS, PICTURE_BARS, cell_difference, json_ready, percentiles, picture_start, play_song,
)
from training.metrics import (
    DRUM_METRICS, HARMONY_PARTS, band_report, mean_harmony_report, note_difference, shuffled_bars,
)
from training.train import load_corpora

AUTO_TRAIN = ("cnn", "gru")  # always in the report: trained by eval when their folder is missing
HARMONIES = (0, 2)  # raw networks (the headline), then the default chord follow
SEEDS = (0, 1)  # variation: seed 0 against seed 1 at the default noise_sd
CLAIM = ("VAE-NN gives more variation between seeds than the MelodyCNN + HarmonyCNN pair, at equal or "
         "better harmony with the piano (Tham & Kim 2021, who saw near-identical CNN outputs for different starts)")
Z95 = 1.96  # two-sided 95 % normal quantile for the paired song-by-song intervals


@dataclass
class System:
    key: str  # JSON key and picture name
    label: str  # table row
    about: str
    engine: BarEngine | None = None  # None: real, shuffled, or not trained
    training: dict = field(default_factory=dict)  # seconds, parameters, device, data, note
    command: str = ""  # how to train it, when it is not trained


# ---- which systems -----------------------------------------------------------------------------
def wanted_baselines(text: str) -> list[str]:
    """--baselines "all" or "a,b" -> arch names, AUTO_TRAIN first; ValueError on an unknown one."""
    names = list(BASELINES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown {', '.join(unknown)}; known: all, {', '.join(BASELINES)}")
    return list(AUTO_TRAIN) + [n for n in names if n not in AUTO_TRAIN]


def train_command(arch: str, data: str, folder: Path) -> str:
    return f"vaejam train --arch {arch} --data {data} --out {folder} --threads 1"


def folder_training(folder: Path | None) -> dict:
    """Training cost recorded in a model folder's metadata: seconds, parameters, device, data."""
    document = read_model_config(DEFAULT_MODEL_DIR if folder is None else folder)
    metadata = document.get("metadata") or {}
    report, train = metadata.get("report") or {}, metadata.get("train") or {}
    return {"seconds": report.get("seconds"), "parameters": report.get("parameters"),
            "device": report.get("device") or train.get("device"), "data": train.get("data"),
            "epochs": train.get("epochs") or [train.get("vae_epochs"), train.get("nn_epochs")]}


def vaenn_system(model: str | None) -> System:
    engine = load_engine(model)
    training = folder_training(None if model is None else Path(model))
    if isinstance(engine, BandEngine):
        training["parameters"] = sum(p.numel() for p in engine.model.parameters())
    return System("vaenn", f"VAE-NN ({model or 'shipped model'})",
                  "the article's system (models.engine.BandEngine): per-instrument VAEs, MelodyNN, ConditionalNNs. "
                  "noise_sd: sd of the Gaussian noise on the played piano bar's latent mean (unit prior)",
                  engine, training)


def baseline_system(arch: str, folder: Path, train_data: str | None, epochs: int | None) -> System:
    """A baseline's row: loaded from its folder, trained first if it is an AUTO_TRAIN one (epochs:
    None for the arch's default), else listed as not trained."""
    system = System(arch, arch, about_baseline(arch))
    note = ""
    if not (folder / "config.json").is_file():
        if arch not in AUTO_TRAIN or train_data is None:
            system.command = train_command(arch, train_data or "TRAIN_CORPUS", folder)
            return system
        epochs = epochs or default_epochs(arch)
        train_missing(arch, folder, train_data, epochs)
        note = f"trained by this eval ({epochs} epochs on {train_data})"
    system.engine = load_engine(folder)
    system.training = {**folder_training(folder), "note": note}
    return system


def about_baseline(arch: str) -> str:
    """The module docstring's first paragraph, plus its NOISE line (what noise_sd does) if it has one."""
    try:
        module = importlib.import_module(BASELINES[arch])
    except ImportError as err:  # a registered baseline whose module is not in this checkout
        return f"not available here ({err})"
    about = " ".join((module.__doc__ or arch).strip().split("\n\n")[0].split()).rstrip(".")
    noise = getattr(module, "NOISE", "")
    return f"{about}. noise_sd: {noise}" if noise else about


def train_missing(arch: str, folder: Path, data: str, epochs: int) -> None:
    print(f"{arch}: no model in {folder}; training it on {data} ({epochs} epochs)", flush=True)
    cfg = BaselineTrainConfig(arch=arch, data=data, out=str(folder), epochs=epochs)
    importlib.import_module(f"training.baselines.{arch}").train(cfg)


# ---- playing and measuring ---------------------------------------------------------------------
@dataclass
class Measured:
    """Per system key: per harmony, the songs' band_reports and variations; times; pictures."""
    reports: dict = field(default_factory=dict)  # key -> harmony -> [band_report per song]
    notes: dict = field(default_factory=dict)  # key -> harmony -> [notes changed per song]
    cells: dict = field(default_factory=dict)  # key -> harmony -> [cells changed per song]
    step_ms: dict = field(default_factory=dict)  # key -> [ms per step]
    pictures: dict = field(default_factory=dict)  # key -> (PICTURE_BARS, 5, 32, 128)

    def add(self, key: str, harmony: int, song: np.ndarray, other: np.ndarray) -> None:
        self.reports.setdefault(key, {}).setdefault(harmony, []).append(band_report(song[1:]))
        self.notes.setdefault(key, {}).setdefault(harmony, []).append(note_difference(song[1:], other[1:]))
        self.cells.setdefault(key, {}).setdefault(harmony, []).append(cell_difference(song[1:], other[1:]))


def song_bars(corpus: Corpus, index: int, max_bars: int) -> np.ndarray:
    first = int(corpus.song_starts[index])
    return corpus.float_bars(slice(first, min(int(corpus.song_starts[index + 1]), first + max_bars)))


def measure(systems: list[System], corpus: Corpus, songs: int, max_bars: int) -> tuple[Measured, int]:
    """Every system over the first `max_bars` bars of the first `songs` songs; returns the
    measures and the picture's first bar (of song 0)."""
    measured, first_bar = Measured(), 0
    for index in tqdm(range(min(songs, corpus.n_songs)), desc="compare", unit="song"):
        bars = song_bars(corpus, index, max_bars)
        if index == 0:
            first_bar = picture_start(bars)
        for system in systems:
            if system.engine is not None or system.key in ("real", "shuffled"):  # not trained: nothing to play
                measure_song(measured, system, bars, index, first_bar if index == 0 else None)
    return measured, first_bar


def measure_song(measured: Measured, system: System, bars: np.ndarray, index: int, picture_from: int | None) -> None:
    for harmony in HARMONIES:
        if system.engine is None:  # real or shuffled: the same at every harmony setting
            first, second = references(system.key, bars, index)
        else:
            first, second = (render(measured, system, bars, harmony, seed) for seed in SEEDS)
        measured.add(system.key, harmony, first, second)
        if picture_from is not None and harmony == 0:
            measured.pictures[system.key] = first[picture_from:picture_from + PICTURE_BARS]


def references(key: str, bars: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The real song twice (no variation), or its bars shuffled with seeds 0 and 1."""
    if key == "real":
        return bars, bars
    first, second = (shuffled_bars(bars, np.random.default_rng([seed, index])) for seed in SEEDS)
    return first, second


def render(measured: Measured, system: System, bars: np.ndarray, harmony: int, seed: int) -> np.ndarray:
    out, ms = play_song(system.engine, bars, Controls(harmony=harmony, seed=seed))
    measured.step_ms.setdefault(system.key, []).extend(ms)
    return out


# ---- summarising -------------------------------------------------------------------------------
def summarise(systems: list[System], measured: Measured) -> dict:
    """JSON-ready numbers per system: harmony report means per harmony setting, variation, costs."""
    rows = {}
    for system in systems:
        row: dict = {"label": system.label, "about": system.about, "training": system.training,
                     "trained": system.engine is not None or system.key in ("real", "shuffled")}
        if system.command:
            row["command"] = system.command
        if system.key in measured.reports:
            row["harmony"] = {str(h): mean_harmony_report(r) for h, r in measured.reports[system.key].items()}
            row["variation"] = {str(h): {"notes": float(np.mean(measured.notes[system.key][h])),
                                         "cells": float(np.mean(measured.cells[system.key][h]))}
                                for h in HARMONIES}
        if measured.step_ms.get(system.key):
            row["step_ms"] = percentiles(measured.step_ms[system.key])
        rows[system.key] = row
    return rows


def song_harmony(reports: list[dict], metric: str) -> np.ndarray:
    """Per song, `metric` averaged over guitar, bass and strings (NaN parts left out)."""
    values = np.array([[r[p][metric] for p in HARMONY_PARTS] for r in reports], np.float64)
    out = np.full(len(values), math.nan)
    played = ~np.isnan(values).all(axis=1)
    out[played] = np.nanmean(values[played], axis=1)
    return out


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over songs where both exist, with a 95 % interval (normal approximation)."""
    diff = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(diff) < 2:
        return {"mean": float(diff.mean()) if len(diff) else math.nan, "low": math.nan, "high": math.nan,
                "songs": int(len(diff))}
    half = Z95 * diff.std(ddof=1) / math.sqrt(len(diff))
    return {"mean": float(diff.mean()), "low": float(diff.mean() - half), "high": float(diff.mean() + half),
            "songs": int(len(diff))}


def claim_check(measured: Measured, harmony: int) -> dict | None:
    """VAE-NN minus the CNN pair, song by song: notes changed between seeds (more = more variation),
    TD per beat (lower = closer harmony) and chord-tone rate (higher = closer). The claim holds when
    VAE-NN's variation is higher (interval above 0) and neither harmony measure is worse beyond its
    interval (TD difference's interval reaches 0 or below, chord-tone difference's reaches 0 or above)."""
    if "cnn" not in measured.reports or "vaenn" not in measured.reports:
        return None
    vae, cnn = measured.reports["vaenn"][harmony], measured.reports["cnn"][harmony]
    result = {
        "notes_changed": paired(np.array(measured.notes["vaenn"][harmony]), np.array(measured.notes["cnn"][harmony])),
        "td_per_beat": paired(song_harmony(vae, "tonal_distance_per_beat"),
                              song_harmony(cnn, "tonal_distance_per_beat")),
        "chord_tone_rate": paired(song_harmony(vae, "chord_tone_rate"), song_harmony(cnn, "chord_tone_rate")),
    }
    more_variation = result["notes_changed"]["low"] > 0
    harmony_ok = not result["td_per_beat"]["low"] > 0 and not result["chord_tone_rate"]["high"] < 0
    result.update({"more_variation": bool(more_variation), "harmony_equal_or_better": bool(harmony_ok),
                   "holds": bool(more_variation and harmony_ok)})
    return result


# ---- the report --------------------------------------------------------------------------------
def _n(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _parts(harmony: dict, metric: str, parts=HARMONY_PARTS) -> str:
    return " / ".join(_n(harmony[p][metric]) for p in parts)


def _training_cell(training: dict) -> str:
    seconds, device = training.get("seconds"), training.get("device")
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s ({device})" if device else f"{seconds:.0f} s"


def headline_table(rows: dict, harmony: str) -> str:
    lines = ["| system | TD per beat g / b / s | chord-tone rate g / b / s | empty bars g / b / s / d | DP | "
             "notes changed, seed 0 vs 1 | cells changed | training | parameters | ms per bar p50 / p99 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in rows.items():
        if "harmony" not in row:
            lines.append(f"| {row['label']} | not trained: see below |" + " |" * 8)
            continue
        h, var = row["harmony"][harmony], row["variation"][harmony]
        empty = " / ".join(_n(h[p]["empty_bars"]) for p in (*HARMONY_PARTS, "drums"))
        params = row["training"].get("parameters")
        ms = row.get("step_ms")
        variation = ("—", "—") if key == "real" else (_n(var["notes"]), _n(var["cells"]))
        timing = f"{ms['p50']:.2f} / {ms['p99']:.2f}" if ms else "—"
        lines.append(
            f"| {row['label']} | {_parts(h, 'tonal_distance_per_beat')} | {_parts(h, 'chord_tone_rate')} | {empty} | "
            f"{_n(h['drums']['drum_pattern'])} | {variation[0]} | {variation[1]} | {_training_cell(row['training'])} | "
            f"{f'{params:,}' if params else 'n/a'} | {timing} |")
    return "\n".join(lines)


def parts_table(rows: dict, harmony: str, instrument: str) -> str:
    metrics = DRUM_METRICS if instrument == "drums" else PART_METRICS
    lines = ["| system | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for row in rows.values():
        if "harmony" in row:
            values = row["harmony"][harmony][instrument]
            lines.append(f"| {row['label']} | " + " | ".join(_n(values[m]) for m in metrics) + " |")
    return "\n".join(lines)


def claim_lines(claims: dict) -> list[str]:
    lines = ["## The article's claim", "", f"Claim: {CLAIM}.", "",
             "Tested song by song (VAE-NN minus the CNN pair, mean and 95 % interval over the songs): the claim "
             "holds when VAE-NN changes more notes between seeds (interval above 0) and is not worse in harmony "
             "beyond the interval on either measure (TD per beat, lower = closer; chord-tone rate, higher = "
             "closer; both averaged over guitar, bass and strings).", ""]
    for harmony, check in claims.items():
        name = "harmony 0 (raw networks)" if harmony == "0" else "harmony 2 (chord follow, the default)"
        if check is None:
            lines += [f"- {name}: not measured (no CNN pair or no VAE-NN row).", ""]
            continue
        verdict = "**holds**" if check["holds"] else "**does not hold**"
        why = []
        why.append("more variation" if check["more_variation"] else "not more variation")
        why.append("harmony equal or better" if check["harmony_equal_or_better"] else "worse harmony")
        lines += [f"- {name}: {verdict} here ({', '.join(why)}).",
                  *[f"  - {label}: {_n(check[k]['mean'], 3)} [{_n(check[k]['low'], 3)}, {_n(check[k]['high'], 3)}] "
                    f"over {check[k]['songs']} songs" for k, label in
                    (("notes_changed", "notes changed, VAE-NN minus CNN"),
                     ("td_per_beat", "TD per beat, VAE-NN minus CNN"),
                     ("chord_tone_rate", "chord-tone rate, VAE-NN minus CNN"))]]
    return lines + [""]


def systems_lines(rows: dict) -> list[str]:
    lines = ["## The systems", ""]
    for row in rows.values():
        training = row["training"]
        cost = ""
        if training.get("data"):
            note = f" ({training['note']})" if training.get("note") else ""
            cost = f" Trained on `{training['data']}`{note}."
        lines.append(f"- **{row['label']}**: {row['about']}.{cost}")
    corpora = {row["training"]["data"] for row in rows.values() if row["training"].get("data")}
    if len(corpora) > 1:
        lines += ["", f"The systems learned from different corpora ({', '.join(f'`{c}`' for c in sorted(corpora))}): "
                  "differences between their rows mix the method with the data; train them on one corpus "
                  "(`vaejam train --data`) for a like-for-like comparison."]
    missing = [row for row in rows.values() if "command" in row]
    if missing:
        lines += ["", "Not trained (no model folder); train with:", ""]
        lines += [f"    {row['command']}" for row in missing]
    return lines + [""]


def report_markdown(result: dict, pictures: dict[str, str] | None) -> str:
    rows = result["systems"]
    lines = [f"# vaejam: every system side by side on `{result['data']}`", "",
             f"{result['split']} split, {result['songs']} songs, the first {result['max_bars']} bars of each; bars 1 "
             "on measured (bar 0 is the live band's silent count-in); every number a mean over songs, each song "
             "weighing the same. Every system plays the same piano bars as live (one bar late, one torch thread), "
             f"noise_sd {Controls.noise_sd} (its meaning per system is under The systems), seeds 0 and 1.", "",
             *systems_lines(rows),
             "## Headline: the raw networks (harmony 0)", "",
             "Harmony 0: every system's cells after the same shared post-processing (calibrated thresholds, "
             "velocities from the pianist), no key lock or chord follow. g / b / s / d = guitar / bass / strings / "
             "drums. TD: tonal distance to the piano per beat (lower = closer harmony); chord-tone rate: share of "
             "note onsets whose pitch class the piano sounds in the bar; DP: drum onsets on the 8th grid; notes "
             "changed: share of band notes in either render (seed 0, seed 1) the other lacks; shuffled's variation "
             "is between two shuffles. Training: wall time and device from the folder's metadata (on a shared "
             "machine it moves with the load). ms per bar: engine.step over every bar rendered.", "",
             headline_table(rows, "0"), "",
             "## With the default chord follow (harmony 2)", "",
             headline_table(rows, "2"), "",
             *claim_lines(result["claim"])]
    if pictures:
        lines += ["## Plots and piano rolls", "", f"![variation against harmony]({pictures['scatter']})", "",
                  f"The same input, `{result['example']['song']}` from bar {result['example']['first_bar']}, "
                  f"{PICTURE_BARS} bars, under each system (harmony 0, seed 0):", ""]
        lines += [f"- [{rows[key]['label']}]({name})" for key, name in pictures.items() if key in rows]
        lines.append("")
    lines += ["## Per instrument, harmony 0", ""]
    for instrument in (*HARMONY_PARTS, "drums"):
        lines += [f"### {instrument}", "", parts_table(rows, "0", instrument), ""]
    lines += [f"Evaluated in {result['seconds']} s.", ""]
    return "\n".join(lines)


def plot_scatter(rows: dict, path: Path) -> None:
    """Variation between seeds against TD per beat: a colour per system, o = harmony 0, s = harmony 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.get_cmap("tab10")
    for index, (key, row) in enumerate(rows.items()):
        if "harmony" not in row or key == "real":
            continue
        points = [(mean_td(row["harmony"][h]), row["variation"][h]["notes"]) for h in ("0", "2")]
        ax.plot(*zip(*points), color=colours(index % 10), lw=0.8, alpha=0.5)
        for (td, notes), marker in zip(points, "os"):
            label = row["label"] if marker == "o" else None  # one legend entry per system
            ax.scatter(td, notes, marker=marker, color=colours(index % 10), label=label)
    if "harmony" in rows.get("real", {}):
        ax.axvline(mean_td(rows["real"]["harmony"]["0"]), ls="--", lw=0.8, color="grey", label="real parts' TD")
    ax.set_xlabel("TD per beat to the piano, mean of guitar, bass, strings (lower = closer)")
    ax.set_ylabel("notes changed, seed 0 vs 1")
    ax.set_title("o harmony 0 (raw), s harmony 2 (chord follow)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def mean_td(harmony: dict) -> float:
    values = [harmony[p]["tonal_distance_per_beat"] for p in HARMONY_PARTS]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def write_pictures(result: dict, measured: Measured, report: Path) -> dict[str, str]:
    names = {"scatter": f"{report.stem}-variation-harmony.png"}
    plot_scatter(result["systems"], report.with_name(names["scatter"]))
    for key, bars in measured.pictures.items():
        names[key] = f"{report.stem}-{key}.png"
        title = f"{result['example']['song']}: {result['systems'][key]['label']}"
        plot_bars(bars, report.with_name(names[key]), title=title)
    return names


# ---- the command -------------------------------------------------------------------------------
def report_path(out: str | None) -> Path | None:
    """--out: a .md file, or a folder (made if missing) holding report.md."""
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() != ".md":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "report.md"
    return check_output_file(path, "--out", (".md",))


def training_corpus(args: argparse.Namespace) -> str | None:
    """Where missing baselines learn: --train-data, else --data when it has a train split."""
    if args.train_data:
        load_corpora(args.train_data, "train")  # refuse a bad folder before minutes of work
        return args.train_data
    return args.data if split_path(args.data, "train").is_file() else None


def build_systems(args: argparse.Namespace, models_dir: Path) -> list[System]:
    train_data = training_corpus(args)
    missing = [a for a in AUTO_TRAIN if not (models_dir / a / "config.json").is_file()]
    if missing and train_data is None:
        raise ValueError(f"{', '.join(missing)} must be trained for the report and {args.data} has no train split: "
                         "pass --train-data DIR or --baseline-models DIR holding them")
    systems = [System("real", "real parts", "the song's own guitar, bass, strings and drums"),
               System("shuffled", "shuffled bars", "each real band part's bars in a random order, the piano kept: "
                      "what unrelated parts score"),
               vaenn_system(args.model)]
    systems += [baseline_system(arch, models_dir / arch, train_data, args.baseline_epochs)
                for arch in wanted_baselines(args.baselines)]
    return systems


def compare_command(args: argparse.Namespace) -> int:
    if args.baseline_epochs is not None and args.baseline_epochs < 1:
        raise ValueError("--baseline-epochs must be >= 1")
    wanted_baselines(args.baselines)  # a typo fails before any work
    report = report_path(args.out)
    from bridge.daemon import TORCH_THREADS

    torch.set_num_threads(TORCH_THREADS)  # time per bar as live: one intra-op thread
    models_dir = Path(args.baseline_models) if args.baseline_models else (
        report.parent / "models" if report else Path("baseline-models"))
    corpus = load_corpus(args.data, args.split)
    started = time.perf_counter()
    systems = build_systems(args, models_dir)
    measured, first_bar = measure(systems, corpus, args.songs, args.bars)
    result = {"data": args.data, "split": args.split, "songs": min(args.songs, corpus.n_songs), "max_bars": args.bars,
              "baseline_models": str(models_dir), "systems": summarise(systems, measured),
              "claim": {str(h): claim_check(measured, h) for h in HARMONIES},
              "example": {"song": corpus.names[0], "first_bar": first_bar}}
    pictures = write_pictures(result, measured, report) if report else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = report_markdown(result, pictures)
    print(text)
    if report:
        atomic_write_text(report.with_suffix(".json"), json.dumps(json_ready(result), indent=1, allow_nan=False))
        atomic_write_text(report, text)
    return 0
