"""How well the band follows the piano's harmony, per `harmony` setting, beside the references.

    python3 -m training.harmony_eval --data CORPUS [--songs 12] [--bars 64]

Prints one Markdown table (guitar/bass/strings in each cell): TD per beat and per bar, chord-tone
rate, pitch classes per bar, copy rate and polyphony (training.metrics.harmony_report), for the
held-out songs' real parts, their bars shuffled, and the band at harmony 0 (raw model), 1 (key
lock) and 2 (chord follow), each rendered as live (models.render.play_bars).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from models.checkpoint import load_band_model
from models.controls import Controls
from models.engine import BandEngine
from models.render import play_bars
from training.corpus import load_corpus
from training.metrics import harmony_report, mean_harmony_report, shuffled_bars

PARTS = ("guitar", "bass", "strings")


def harmony_table(data: str, songs: int, max_bars: int, model_dir: str | None = None) -> str:
    torch.set_num_threads(1)
    corpus = load_corpus(data, "valid")
    model = load_band_model(model_dir)
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {}
    for index in range(min(songs, corpus.n_songs)):
        first = corpus.song_starts[index]
        bars = corpus.float_bars(slice(first, min(corpus.song_starts[index + 1], first + max_bars)))
        rows.setdefault("real parts", []).append(harmony_report(bars))
        rows.setdefault("shuffled bars", []).append(harmony_report(shuffled_bars(bars, rng)))
        for harmony, name in ((0, "raw model (harmony 0)"), (1, "key lock (harmony 1)"), (2, "chord follow (harmony 2)")):
            out, _ = play_bars(BandEngine(model, controls=Controls(harmony=harmony)), bars)
            rows.setdefault(name, []).append(harmony_report(out))
    lines = []
    for name, reports in rows.items():
        mean = mean_harmony_report(reports)
        metrics = list(mean[PARTS[0]])
        if not lines:
            lines += ["| system | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        cells = ["/".join(f"{mean[part][metric]:.2f}" for part in PARTS) for metric in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="corpus directory (its valid split is used)")
    parser.add_argument("--songs", type=int, default=12, help="held-out songs (default: 12)")
    parser.add_argument("--bars", type=int, default=64, help="first bars of each song (default: 64)")
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    args = parser.parse_args()
    print(harmony_table(args.data, args.songs, args.bars, args.model))


if __name__ == "__main__":
    main()
