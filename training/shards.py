"""Sharded corpora: bars in uncompressed .npy shards, read through memory maps, for corpora
larger than memory (LPD-5, Lakh MIDI trees; `vaejam data lpd|lakh` writes them).

A sharded corpus folder holds
  shards.json             the index (written last, so a folder without it is not a corpus):
                          per split its shard files and its songs (names, song_starts)
  {split}-{k:05d}.npy     uint8 (n_k, 5, 32, 128) velocities; a song never spans two shards
`load_sharded` gives a `training.corpus.Corpus` whose `bars` is a `BarStore`: indexed like the
in-memory array, but each read gathers the bars shard by shard from the maps, and every
RELEASE_BYTES read the touched pages are handed back to the kernel (madvise DONTNEED). The bars
then live in the page cache, which the kernel can drop, not in the process, so a training run's
resident memory does not grow with the corpus.
"""
from __future__ import annotations

import io
import json
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.bars import INSTRUMENTS

FORMAT = "vaejam-shards/1"
INDEX_FILE = "shards.json"
BAR_SHAPE: tuple[int, int, int] = (len(INSTRUMENTS), 32, 128)
BAR_BYTES = int(np.prod(BAR_SHAPE))  # 20480: one bar of uint8 velocities
# Pages a read may leave mapped before they are handed back: bounds the resident memory a
# store adds, whatever the corpus size. A fault maps up to 64 KiB around the page it needs
# (the kernel's fault-around), so each row read is counted as that much more.
RELEASE_BYTES = 16 << 20
FAULT_AROUND_BYTES = 64 << 10
HEADER_BYTES = 128  # a v1 .npy header for shapes below 10^14 rows, after numpy's padding


# ------------------------------------------------------------------ reading
class MappedArray:
    """A .npy file as a read-only array on a memory map; `release()` unmaps its touched pages
    (they stay in the page cache). Errors name the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
            except ValueError as err:
                raise ValueError(f"{self.path}: not a .npy file ({err})") from err
            offset = f.tell()
            expected = offset + int(np.prod(shape)) * dtype.itemsize
            if fortran or os.fstat(f.fileno()).st_size != expected or not np.prod(shape):
                raise ValueError(f"{self.path}: truncated or not a C-order array "
                                 f"({os.fstat(f.fileno()).st_size} bytes, header says {expected})")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the map keeps its own fd
        self.array = np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)
        self.row_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    def release(self) -> None:
        """Give the touched pages back: resident memory falls, the data stays on disk and in cache."""
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):  # not on Windows
            self._map.madvise(mmap.MADV_DONTNEED)


@dataclass
class PageReleaser:
    """Counts bytes read from maps since the last release; past the budget, releases them all.
    Shared by a store and the stores cut from it, so the budget holds for all of them together."""

    budget: int = RELEASE_BYTES
    pending: int = 0
    touched: dict[int, MappedArray] = field(default_factory=dict)

    def read(self, source: MappedArray, rows: int) -> None:
        self.pending += rows * (source.row_bytes + FAULT_AROUND_BYTES)
        self.touched[id(source)] = source
        if self.pending > self.budget:
            for mapped in self.touched.values():
                mapped.release()
            self.pending, self.touched = 0, {}


@dataclass(frozen=True)
class _Part:
    array: np.ndarray  # (n_k, 5, 32, 128) uint8: in memory, or a view into `mapped`
    mapped: MappedArray | None = None


class BarStore:
    """Several parts (in-memory arrays, memory-mapped shards) read as one (n, 5, 32, 128) uint8
    array: ints, slices, index arrays and (index, ...) tuples give numpy arrays, as numpy would."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, parts: Sequence[np.ndarray | MappedArray | _Part],
                 releaser: PageReleaser | None = None) -> None:
        self._parts = [p if isinstance(p, _Part) else _Part(p.array, p) if isinstance(p, MappedArray)
                       else _Part(p) for p in parts]
        self._parts = [p for p in self._parts if len(p.array)]
        self._ends = np.cumsum([len(p.array) for p in self._parts], dtype=np.int64)
        self._releaser = releaser or PageReleaser()
        self.shape = (int(self._ends[-1]) if len(self._ends) else 0, *BAR_SHAPE)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # (rows, instrument, ...): gather the rows, then index the rest
            rows = self[key[0]]
            return rows[key[1:]] if np.ndim(key[0]) == 0 else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            index = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= index < len(self):
                raise IndexError(f"bar {key} is out of range for {len(self)} bars")
            return self.gather(np.array([index]))[0]
        if isinstance(key, slice):
            return self.gather(np.arange(*key.indices(len(self)), dtype=np.int64))
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self.gather(np.where(index < 0, index + len(self), index).astype(np.int64))

    def gather(self, index: np.ndarray) -> np.ndarray:
        """Bars at `index` (1-D ints), read part by part (one fancy-index per shard)."""
        if index.ndim != 1:
            raise IndexError(f"a BarStore takes 1-D indices, got shape {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"bar index out of range for {len(self)} bars")
        out = np.empty((len(index), *BAR_SHAPE), np.uint8)
        which = np.searchsorted(self._ends, index, side="right")  # the part of each wanted bar
        for p in np.unique(which):
            mask = which == p
            start = self._ends[p] - len(self._parts[p].array)
            out[mask] = self._parts[p].array[index[mask] - start]
            if self._parts[p].mapped is not None:
                self._releaser.read(self._parts[p].mapped, int(mask.sum()))
        return out

    def head(self, n: int) -> "BarStore":
        """The first n bars as a store over the same parts (nothing is read)."""
        parts, left = [], n
        for part in self._parts:
            if left <= 0:
                break
            parts.append(_Part(part.array[:left], part.mapped))
            left -= len(part.array)
        return BarStore(parts, self._releaser)

    @staticmethod
    def join(stores: Sequence["np.ndarray | BarStore"]) -> "BarStore":
        """Several arrays or stores back to back; no bars are copied."""
        parts: list[_Part] = []
        for store in stores:
            parts.extend(store._parts if isinstance(store, BarStore) else [_Part(store)])
        return BarStore(parts)


def is_sharded(directory: str | os.PathLike) -> bool:
    return (Path(directory) / INDEX_FILE).is_file()


def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable shard index ({err})") from err
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} index (format {index.get('format') if isinstance(index, dict) else None!r})")
    return index


def load_sharded(directory: str | os.PathLike, split: str) -> tuple[BarStore, np.ndarray, list[str]]:
    """(bars, song_starts, names) of one split of a sharded corpus; errors name the file."""
    root = Path(directory)
    entry = read_index(root).get("splits", {}).get(split)
    if not entry or not entry.get("names"):
        raise FileNotFoundError(f"{root / INDEX_FILE}: no songs in split {split!r}")
    shards = [MappedArray(root / shard["file"]) for shard in entry["shards"]]
    for shard, meta in zip(shards, entry["shards"]):
        if shard.array.dtype != np.uint8 or shard.array.shape != (meta["n_bars"], *BAR_SHAPE):
            raise ValueError(f"{shard.path}: holds {shard.array.dtype} {shard.array.shape}, "
                             f"the index says uint8 ({meta['n_bars']}, 5, 32, 128)")
    return BarStore(shards), np.asarray(entry["song_starts"], np.int64), [str(n) for n in entry["names"]]


# ------------------------------------------------------------------ writing
def _npy_header(n_bars: int) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (n_bars, *BAR_SHAPE)})
    header = buffer.getvalue()
    if len(header) != HEADER_BYTES:  # only past 10^14 bars
        raise ValueError(f"a shard of {n_bars} bars needs a {len(header)}-byte header")
    return header


class ShardWriter:
    """Appends the songs of one split to `{split}-{k:05d}.npy` shards straight to disk (one song in
    memory at a time); a shard is closed at the first song boundary past `shard_bars` bars."""

    def __init__(self, out: Path, split: str, shard_bars: int) -> None:
        if shard_bars < 1:
            raise ValueError(f"shard size must be at least 1 bar, got {shard_bars}")
        self.out, self.split, self.shard_bars = out, split, shard_bars
        self.shards: list[dict[str, Any]] = []
        self.names: list[str] = []
        self.song_starts: list[int] = [0]
        self._file: io.BufferedWriter | None = None
        self._bars_in_shard = 0

    def add(self, name: str, bars: np.ndarray) -> None:
        if bars.dtype != np.uint8 or bars.shape[1:] != BAR_SHAPE or len(bars) < 1:
            raise ValueError(f"{name}: expected uint8 (n >= 1, 5, 32, 128) bars, got {bars.dtype} {bars.shape}")
        if self._file is None:
            self._file = open(self._path(len(self.shards), tmp=True), "wb")
            self._file.write(_npy_header(0))  # placeholder of the final header's size
        self._file.write(np.ascontiguousarray(bars).tobytes())
        self._bars_in_shard += len(bars)
        self.names.append(name)
        self.song_starts.append(self.song_starts[-1] + len(bars))
        if self._bars_in_shard >= self.shard_bars:
            self._close_shard()

    def close(self) -> dict[str, Any]:
        """Finish the last shard; the split's entry for the index."""
        if self._file is not None:
            self._close_shard()
        return {"shards": self.shards, "names": self.names, "song_starts": self.song_starts,
                "n_bars": self.song_starts[-1]}

    def _path(self, k: int, tmp: bool = False) -> Path:
        return self.out / f"{self.split}-{k:05d}.npy{'.tmp' if tmp else ''}"

    def _close_shard(self) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.write(_npy_header(self._bars_in_shard))
        self._file.close()
        k = len(self.shards)
        os.replace(self._path(k, tmp=True), self._path(k))
        self.shards.append({"file": self._path(k).name, "n_bars": self._bars_in_shard})
        self._file, self._bars_in_shard = None, 0


def write_index(out: Path, splits: dict[str, dict[str, Any]], about: dict[str, Any]) -> None:
    """shards.json, atomically: the folder becomes a corpus only once every shard is in place."""
    index = {"format": FORMAT, "instruments": list(INSTRUMENTS), "bar_shape": list(BAR_SHAPE),
             **about, "splits": splits}
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / INDEX_FILE)


def prepare_shard_dir(out: Path) -> None:
    """An empty folder, or an earlier sharded corpus (its shards are removed); nothing else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_sharded(out):
        raise ValueError(f"--out {out}: folder is not empty and holds no sharded corpus; pick a new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # first, so a half-rewritten folder is never read
    for old in list(out.glob("*.npy")) + list(out.glob("*.npy.tmp")):
        old.unlink()
