"""`vaejam data lpd` and `vaejam data lakh`: big song trees converted once into a sharded corpus.

lpd:  LPD-5 `.npz` files (pypianoroll layout, `training.lpd`), in any nesting of folders.
lakh: Lakh-style MIDI trees (`.mid`/`.midi` anywhere below), read like `vaejam data midi` does
      (`training.corpus.read_midi_file`: 4/4 only, a GM piano part required).
Files are read in a sorted order by `--jobs` processes and written in that order straight into
`training.shards` shards, so memory holds a few songs, not the corpus. The split is by song and
depends only on the seed and the list of files: in LPD's tree (.../TRxxxxxxxxxxxxxxxx/*.npz) every
file under one Million Song Dataset track id is one song, elsewhere every file is its own song.
Unreadable or unusable files are skipped, counted and named (with the reason) in the index and the log.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from training.corpus import MIDI_SUFFIXES, SPLITS, read_midi_file, skip_reason
from training.shards import ShardWriter, prepare_shard_dir, write_index
from training.synth import split_files

log = logging.getLogger(__name__)

SHARD_BARS = 4096  # ~84 MB a shard: few files for the OS, small enough to copy around
MSD_TRACK = re.compile(r"TR[A-Z0-9]{16}")  # a Million Song Dataset track id: LPD's song folders


@dataclass(frozen=True)
class Source:
    """A kind of song tree: which files to take and how to read one."""

    suffixes: tuple[str, ...]
    read: Callable[[Path], Any]  # path -> CorpusSong; ValueError/OSError for a file to skip
    describe: str
    module: str  # imported before the reader processes start, so they inherit it (pypianoroll: 4 s)


def _read_lpd(path: Path) -> Any:
    from training.lpd import read_lpd_file  # pypianoroll is imported only where it is used

    return read_lpd_file(path)


SOURCES: dict[str, Source] = {
    "lpd": Source((".npz",), _read_lpd, "LPD-5 .npz files", "training.lpd"),
    "lakh": Source(MIDI_SUFFIXES, read_midi_file, "MIDI files", "training.corpus"),
}


def find_files(src: Path, source: Source) -> list[Path]:
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: no such folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in source.suffixes)
    if not files:
        raise ValueError(f"--src {src}: no {source.describe} ({'/'.join(source.suffixes)}) below this folder")
    return files


def song_key(relative: Path) -> str:
    """What makes two files one song for the split: LPD's track-id folder, else the file itself."""
    return relative.parent.name if MSD_TRACK.fullmatch(relative.parent.name) else relative.as_posix()


def assign_splits(relatives: Sequence[Path], seed: int, valid_fraction: float) -> list[str]:
    """Split per song (`song_key`), deterministic in the seed and the file list."""
    keys = sorted({song_key(r) for r in relatives})
    split_of = dict(zip(keys, split_files(len(keys), seed, valid_fraction)))
    return [split_of[song_key(r)] for r in relatives]


def _read_one(job: tuple[str, str]) -> tuple[np.ndarray | None, str | None]:
    """In a worker: (uint8 bars, None), or (None, why the file is skipped)."""
    kind, path = job
    try:
        return SOURCES[kind].read(Path(path)).bars, None
    except (ValueError, OSError) as err:  # BarFormatError is a ValueError; each names the file
        return None, skip_reason(err, path)


def ordered_map(pool: Executor | None, fn: Callable, jobs: Sequence, window: int) -> Iterator:
    """fn over jobs in order, at most `window` results waiting: memory stays a few songs."""
    if pool is None:
        yield from map(fn, jobs)
        return
    pending: deque[Future] = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def convert_tree(kind: str, src: Path, out: Path, seed: int = 0, valid_fraction: float = 0.1,
                 shard_bars: int = SHARD_BARS, jobs: int = 2, limit: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Convert every usable file under src into a sharded corpus in out; returns the index's summary."""
    source = SOURCES[kind]
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    files = find_files(src, source)[:limit]
    relatives = [f.relative_to(src) for f in files]
    splits = assign_splits(relatives, seed, valid_fraction)
    prepare_shard_dir(out)
    writers = {split: ShardWriter(out, split, shard_bars) for split in SPLITS}
    skipped: list[dict[str, str]] = []
    importlib.import_module(source.module)
    pool = ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        with logging_redirect_tqdm():
            results = ordered_map(pool, _read_one, [(kind, str(f)) for f in files], 4 * jobs)
            for relative, split, (bars, reason) in tqdm(zip(relatives, splits, results), total=len(files),
                                                        desc=f"{kind} files", unit="file", disable=not progress):
                if bars is None:
                    log.warning("skip %s: %s", relative, reason)
                    skipped.append({"file": relative.as_posix(), "reason": reason})
                else:
                    writers[split].add(relative.as_posix(), bars)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    entries = {split: writer.close() for split, writer in writers.items()}
    if not any(e["names"] for e in entries.values()):
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"--src {src}: no usable {source.describe} ({len(files)} found, all skipped: {reasons} ...)")
    about = {
        "command": (f"vaejam data {kind} --src {src} --seed {seed} --valid-fraction {valid_fraction} "
                    f"--shard-bars {shard_bars}" + (f" --limit {limit}" if limit else "")),
        "source": kind, "seed": seed, "valid_fraction": valid_fraction,
        "files": len(files), "songs": {s: len(e["names"]) for s, e in entries.items()},
        "bars": {s: e["n_bars"] for s, e in entries.items()}, "skipped": skipped,
    }
    write_index(out, {s: e for s, e in entries.items() if e["names"]}, about)
    return {k: v for k, v in about.items() if k != "skipped"} | {"skipped": len(skipped)}


# ---------------------------------------------------------------- CLI
def _cmd_convert(args: argparse.Namespace) -> int:
    summary = convert_tree(args.data_command, args.src, args.out, args.seed, args.valid_fraction,
                           args.shard_bars, args.jobs, args.limit)
    print(f"{args.out}: {summary['songs']} songs, {summary['bars']} bars, "
          f"{summary['skipped']} of {summary['files']} files skipped (named in {args.out}/shards.json)")
    return 0


def add_shard_parsers(sources: argparse._SubParsersAction) -> None:
    """Add `vaejam data lpd` and `vaejam data lakh` to the `data` subcommands."""
    helps = {"lpd": "convert LPD-5 .npz files (pypianoroll layout, any nesting) into a sharded corpus",
             "lakh": "convert a Lakh-style tree of MIDI files (any nesting) into a sharded corpus"}
    for kind, text in helps.items():
        parser = sources.add_parser(kind, help=text)
        parser.add_argument("--src", type=Path, required=True, help="folder searched recursively")
        parser.add_argument("--out", type=Path, required=True, help="corpus folder to write (shards + shards.json)")
        parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of songs held out for validation")
        parser.add_argument("--seed", type=int, default=0, help="picks the validation songs")
        parser.add_argument("--shard-bars", type=int, default=SHARD_BARS, help="bars per shard file (20 KB a bar)")
        parser.add_argument("--jobs", type=int, default=2, help="reader processes")
        parser.add_argument("--limit", type=int, default=None, help="read only the first N files (sorted by path)")
        parser.set_defaults(func=_cmd_convert)
