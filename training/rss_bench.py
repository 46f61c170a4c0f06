"""Peak memory of `vaejam train` on sharded corpora of N and 10 N songs (issue 9's streaming target).

    python -m training.rss_bench --songs 1000,10000 --work /tmp/rss

writes a synthetic fixture in LPD-5's layout (pypianoroll .npz files under Million-Song-style
track-id folders, 24 steps per beat, binarized Drums/Piano/Guitar/Bass/Strings tracks and
downbeats) for the largest N, converts the first N files for each N with `vaejam data lpd`, then
trains a tiny model (one epoch per stage, whole corpus) in a child process per N and prints the
child's peak resident memory (ru_maxrss, from wait4) and each ratio to the smallest N.
The test suite runs the same functions at a smaller scale (tests/test_streaming.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from models.bars import to_uint8

RES = 24  # LPD-5's steps per beat
LPD_TRACKS = (("Drums", 0, True), ("Piano", 0, False), ("Guitar", 24, False), ("Bass", 32, False),
              ("Strings", 48, False))
# I-vi-IV-V roots, one chord a bar, transposed per song
ROOTS = (0, 9, 5, 7)


def synthetic_multitrack(index: int, n_bars: int):
    """A song in LPD-5's layout: chords on piano and strings, arpeggio guitar, bass roots, a beat."""
    import pypianoroll

    rng = np.random.default_rng(index)
    bar, key = 4 * RES, int(rng.integers(0, 12))
    rolls = np.zeros((len(LPD_TRACKS), n_bars * bar, 128), bool)  # (track, T, 128)
    for b in range(n_bars):
        root, t0 = 48 + key + ROOTS[b % 4], b * bar
        chord = (root, root + 4 - (b % 4 == 1), root + 7)
        for p in chord:
            rolls[1, t0 : t0 + 2 * RES - 1, p + 12] = True  # piano: two half-note chords, one-step gap
            rolls[1, t0 + 2 * RES : t0 + bar - 1, p + 12] = True
            rolls[4, t0 : t0 + bar - 1, p] = True  # strings hold the chord
        for beat in range(4):
            start = t0 + beat * RES + int(rng.integers(0, 3))  # a little timing noise, as people play
            rolls[2, start : start + RES // 2, chord[beat % 3] + 24] = True
            rolls[0, t0 + beat * RES : t0 + beat * RES + 2, 36 if beat % 2 == 0 else 38] = True
        rolls[3, t0 : t0 + bar - 1, root - 12] = True
    tracks = [pypianoroll.BinaryTrack(name=name, program=program, is_drum=drum, pianoroll=roll)
              for (name, program, drum), roll in zip(LPD_TRACKS, rolls)]
    downbeat = np.zeros(n_bars * bar, bool)
    downbeat[::bar] = True
    return pypianoroll.Multitrack(name=f"song{index}", resolution=RES, tracks=tracks, downbeat=downbeat)


def fixture_path(root: Path, index: int) -> Path:
    """LPD's nesting: a letter folder, then a track-id folder (TR + 16 characters) per song."""
    track_id = f"TR{index:016X}"
    return root / track_id[4] / track_id / f"{index:08x}.npz"


def write_lpd_fixture(root: Path, n_songs: int, n_bars: int) -> None:
    """Songs 0 .. n_songs - 1 (files already there are kept: the fixture only grows)."""
    for index in range(n_songs):
        path = fixture_path(root, index)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic_multitrack(index, n_bars).save(path)


def write_synthetic_shards(out: Path, n_songs: int, n_bars: int, distinct: int = 20,
                           valid_fraction: float = 0.1) -> None:
    """A sharded corpus of n_songs synthetic LPD-5 songs without the .npz round trip (for tests):
    `distinct` songs made and read by `training.lpd.multitrack_to_bars`, repeated."""
    from training.lpd import multitrack_to_bars
    from training.shards import ShardWriter, prepare_shard_dir, write_index

    songs = [to_uint8(multitrack_to_bars(synthetic_multitrack(i, n_bars), f"song{i}")) for i in range(distinct)]
    prepare_shard_dir(out)
    n_valid = max(1, round(valid_fraction * n_songs))
    writers = {"train": ShardWriter(out, "train", 4096), "valid": ShardWriter(out, "valid", 4096)}
    for index in range(n_songs):
        writers["valid" if index < n_valid else "train"].add(f"song{index}", songs[index % distinct])
    write_index(out, {split: w.close() for split, w in writers.items()}, {"source": "synthetic"})


def vaejam(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


def convert(fixture: Path, out: Path, n_songs: int, jobs: int = 2) -> None:
    subprocess.run(vaejam("data", "lpd", "--src", str(fixture), "--out", str(out), "--limit", str(n_songs),
                          "--jobs", str(jobs)), check=True, capture_output=True)


def peak_rss_mb(command: Sequence[str]) -> tuple[float, float]:
    """(peak resident MB of the child, seconds); raises if it fails. wait4 gives that one child's
    rusage, so nothing else this process started counts."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {child.returncode}: {stderr.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss is in KiB on Linux


def train_command(corpus: Path, out: Path, batch_size: int = 64) -> list[str]:
    """A tiny model, one epoch per stage over the whole corpus, one thread."""
    return vaejam("train", "--data", str(corpus), "--out", str(out), "--vae-epochs", "1", "--nn-epochs", "1",
                  "--channels", "8,16,32", "--latent", "8", "--batch-size", str(batch_size),
                  "--device", "cpu", "--threads", "1")


def measure(work: Path, sizes: Sequence[int], n_bars: int, jobs: int = 2) -> list[dict]:
    """Fixture, conversion and a training child for each size; one row per size."""
    fixture = work / "lpd"
    write_lpd_fixture(fixture, max(sizes), n_bars)
    rows = []
    for n_songs in sizes:
        corpus, model = work / f"shards-{n_songs}", work / f"model-{n_songs}"
        convert(fixture, corpus, n_songs, jobs)
        subprocess.run(["rm", "-rf", str(model)], check=True)
        rss, seconds = peak_rss_mb(train_command(corpus, model))
        index = json.loads((corpus / "shards.json").read_text())
        rows.append({"songs": n_songs, "bars": sum(index["bars"].values()), "peak_rss_mb": round(rss, 1),
                     "train_seconds": round(seconds, 1)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default="1000,10000", help="comma-separated corpus sizes")
    parser.add_argument("--bars", type=int, default=8, help="bars per song")
    parser.add_argument("--work", type=Path, required=True, help="folder for the fixture, shards and models")
    parser.add_argument("--jobs", type=int, default=2, help="converter processes")
    args = parser.parse_args(argv)
    rows = measure(args.work, [int(n) for n in args.songs.split(",")], args.bars, args.jobs)
    for row in rows:
        row["ratio"] = round(row["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
