"""Training corpora on disk: songs of bars in one compressed npz per split.

A corpus split is `DIR/bars-{train,valid}.npz` holding
  bars         uint8 (n_bars, 5, 32, 128)  MIDI velocities (`models.bars.to_uint8`)
  song_starts  int64 (n_songs + 1,)        song i is bars[song_starts[i]:song_starts[i + 1]]
  names        str   (n_songs,)            where each song came from
Songs are kept as runs of bars so training pairs (bar t -> bar t + 1) never cross songs.
The npz is written with fixed zip timestamps, so the same songs give the same bytes.
A folder with a `shards.json` is a sharded corpus instead (`training.shards`, for corpora larger
than memory): `load_corpus` reads both, and a sharded split's bars are a memory-mapped `BarStore`.
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from tqdm import tqdm

from models.bars import (
    INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, from_uint8, midi_to_song, to_uint8,
)
from training.shards import BarStore, is_sharded, load_sharded

SPLITS: tuple[str, ...] = ("train", "valid")
BAR_SHAPE: tuple[int, ...] = (len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES)  # (5, 32, 128)
MIDI_SUFFIXES: tuple[str, ...] = (".mid", ".midi")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # zip's epoch: a constant, so equal corpora are equal bytes


class CorpusSong(NamedTuple):
    name: str
    bars: np.ndarray  # (n_bars, 5, 32, 128) uint8 velocities


@dataclass(frozen=True)
class Corpus:
    """One split of a corpus: all songs' bars back to back."""

    bars: np.ndarray | BarStore  # (n, 5, 32, 128) uint8; a BarStore reads shards from disk
    song_starts: np.ndarray  # (n_songs + 1,) int64 offsets into bars; last = n
    names: list[str]

    def __post_init__(self) -> None:
        _check_arrays(self.bars, self.song_starts, len(self.names), "Corpus")

    def __len__(self) -> int:
        return int(self.bars.shape[0])

    @property
    def n_songs(self) -> int:
        return len(self.names)

    def song(self, index: int) -> np.ndarray:
        """Song `index` as (n_bars, 5, 32, 128) uint8."""
        return self.bars[self.song_starts[index]:self.song_starts[index + 1]]

    def pairs(self) -> np.ndarray:
        """(n_pairs, 2) int64 indices (t, t + 1) of consecutive bars inside one song."""
        t = np.arange(len(self) - 1, dtype=np.int64)
        # A pair is valid unless bar t + 1 starts a new song.
        starts_next = np.zeros(len(self) + 1, bool)
        starts_next[self.song_starts] = True
        t = t[~starts_next[t + 1]]
        return np.stack([t, t + 1], axis=1) if t.size else np.zeros((0, 2), np.int64)

    def float_bars(self, idx: np.ndarray | int | slice) -> np.ndarray:
        """Bars at idx as float32 velocity/127, the model's input format."""
        return from_uint8(self.bars[idx])

    def first_songs(self, n_songs: int) -> "Corpus":
        """The first n_songs songs; a store is cut, not read."""
        end = int(self.song_starts[n_songs])
        bars = self.bars.head(end) if isinstance(self.bars, BarStore) else self.bars[:end]
        return Corpus(bars, self.song_starts[: n_songs + 1], self.names[:n_songs])


def join_corpora(parts: list[Corpus]) -> Corpus:
    """Splits of several corpora back to back; songs stay whole, so pairs never cross songs.
    In-memory arrays are concatenated as before; a sharded part makes the result a BarStore."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(c) for c in parts[:-1]])
    starts = np.concatenate([c.song_starts[:-1] + o for c, o in zip(parts, offsets)] + [[sum(len(c) for c in parts)]])
    if any(isinstance(c.bars, BarStore) for c in parts):
        bars: np.ndarray | BarStore = BarStore.join([c.bars for c in parts])
    else:
        bars = np.concatenate([c.bars for c in parts])
    return Corpus(bars, starts.astype(np.int64), [name for c in parts for name in c.names])


def _check_arrays(bars: np.ndarray, starts: np.ndarray, n_names: int, where: str) -> None:
    """Raise ValueError (naming `where`) unless the three arrays describe one split."""
    if bars.dtype != np.uint8 or bars.ndim != 4 or bars.shape[1:] != BAR_SHAPE:
        raise ValueError(f"{where}: bars must be uint8 (n, 5, 32, 128), got {bars.dtype} {bars.shape}")
    if starts.dtype != np.int64 or starts.ndim != 1 or starts.shape[0] != n_names + 1:
        raise ValueError(
            f"{where}: song_starts must be int64 ({n_names + 1},) for {n_names} songs, "
            f"got {starts.dtype} {starts.shape}"
        )
    if starts[0] != 0 or starts[-1] != bars.shape[0] or np.any(np.diff(starts) < 1):
        raise ValueError(f"{where}: song_starts must rise from 0 to {bars.shape[0]}, one bar or more per song")


def as_uint8_bars(bars: np.ndarray, name: str) -> np.ndarray:
    """A song's bars as uint8 velocities; float bars are velocity/127 as models.bars makes them."""
    if bars.ndim != 4 or bars.shape[1:] != BAR_SHAPE or bars.shape[0] < 1:
        raise ValueError(f"{name}: expected (n_bars >= 1, 5, 32, 128) bars, got shape {bars.shape}")
    if bars.dtype == np.uint8:
        return bars
    if not np.issubdtype(bars.dtype, np.floating):
        raise ValueError(f"{name}: bars must be uint8 or float velocity/127, got {bars.dtype}")
    return to_uint8(bars)


def write_corpus(path: str | os.PathLike, songs: Iterable[tuple[str, np.ndarray]]) -> Corpus:
    """Write songs [(name, bars)] as one compressed npz split; returns what was written."""
    names, parts = [], []
    for name, bars in songs:
        names.append(str(name))
        parts.append(as_uint8_bars(bars, str(name)))
    if not parts:
        raise ValueError(f"{os.fspath(path)}: no songs to write")
    lengths = np.array([p.shape[0] for p in parts], np.int64)
    corpus = Corpus(
        bars=np.concatenate(parts), song_starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        names=names,
    )
    arrays = {"bars": corpus.bars, "song_starts": corpus.song_starts, "names": np.array(names, dtype=str)}
    _write_npz(Path(path), arrays)
    return corpus


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with constant zip timestamps so bytes depend on data only."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)  # readers never see half a file


def split_path(directory: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(directory) / f"bars-{split}.npz"


def load_corpus(directory: str | os.PathLike, split: str) -> Corpus:
    """Read DIR/bars-{split}.npz, or a sharded corpus's split; errors name the folder or file."""
    path = split_path(directory, split)
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"{os.fspath(directory)}: no such corpus folder (make one with `vaejam data synth`)")
    if is_sharded(directory):
        return Corpus(*load_sharded(directory, split))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:  # ValueError: not an npz at all
        raise ValueError(f"{path}: not a readable corpus file ({err})") from err
    missing = {"bars", "song_starts", "names"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    bars, starts, names = arrays["bars"], arrays["song_starts"], [str(n) for n in arrays["names"]]
    _check_arrays(bars, starts, len(names), str(path))
    return Corpus(bars=bars, song_starts=starts, names=names)


def find_midi_files(directory: str | os.PathLike) -> list[Path]:
    """MIDI files under directory, recursively, in a stable (sorted) order."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{os.fspath(directory)}: no such MIDI folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)


def read_midi_file(path: Path) -> CorpusSong:
    """One MIDI file as a song; raises BarFormatError (a ValueError) naming the file."""
    if path.stat().st_size == 0:  # pretty_midi's own message for this is blank
        raise ValueError(f"{path}: empty file (0 bytes)")
    song = midi_to_song(path)
    return CorpusSong(name=str(path), bars=to_uint8(song.bars))


def skip_reason(err: Exception, path: str | os.PathLike) -> str:
    """The first line of an error, without the file name that models.bars puts in front."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    prefix = f"{os.fspath(path)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def read_midi_dir(
    directory: str | os.PathLike, progress: bool = False
) -> tuple[list[CorpusSong], list[tuple[str, str]]]:
    """Every readable 4/4 MIDI file with a piano part under directory, and (path, reason) for the rest."""
    songs: list[CorpusSong] = []
    skipped: list[tuple[str, str]] = []
    for path in tqdm(find_midi_files(directory), desc="midi files", unit="file", disable=not progress):
        try:
            songs.append(read_midi_file(path))
        except (ValueError, OSError) as err:  # BarFormatError is a ValueError
            skipped.append((str(path), skip_reason(err, path)))
    return songs, skipped


def nonempty_bar_rates(bars: np.ndarray) -> dict[str, float]:
    """Share of bars in which each instrument plays at least one step: a corpus health check."""
    if bars.ndim != 4 or bars.shape[1:] != BAR_SHAPE or bars.shape[0] == 0:
        raise ValueError(f"expected (n >= 1, 5, 32, 128) bars, got shape {bars.shape}")
    played = (bars > 0).any(axis=(2, 3))  # (n, 5)
    return {name: float(played[:, i].mean()) for i, name in enumerate(INSTRUMENTS)}
