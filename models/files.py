"""The files a command reads and writes: checked before any work, written whole or not at all.

Every writer (render's .mid and .png, eval's report, style banks) goes through `atomic_write`: the
bytes go to a hidden temporary file in the same folder, which is renamed over the final name only
once it is complete, so an interrupted or failed write never leaves a truncated file behind.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Iterable

MIDI_SUFFIXES = (".mid", ".midi")


def check_input_file(path: str | os.PathLike, what: str = "MIDI file") -> Path:
    """A readable, non-empty regular file; ValueError/FileNotFoundError that names it otherwise."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{file}: is a folder, not a {what}")
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such {what}")
    if file.stat().st_size == 0:
        raise ValueError(f"{file}: the file is empty (0 bytes), not a {what}")
    return file


def check_output_file(path: str | os.PathLike, option: str, suffixes: Iterable[str],
                      inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """A file name we may write: the right suffix, in a folder that exists, not a folder itself,
    and not one of the inputs. Called before any work, so a bad name costs nothing."""
    file = Path(path)
    suffixes = tuple(suffixes)
    if file.is_dir():
        raise ValueError(f"{option} {file}: is a folder; give a file name, e.g. {file / ('out' + suffixes[0])}")
    if file.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {file}: give a {' or '.join(suffixes)} file name")
    folder = file.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {file}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {file}: the folder {folder} is not writable")
    for source in inputs:
        if _same_file(file, Path(source)):
            raise ValueError(f"{option} {file}: that is an input file; writing it would overwrite it")
    return file


def check_distinct(paths: dict[str, str | os.PathLike | None]) -> None:
    """No two outputs (option -> path) name the same file: the second would overwrite the first."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"{option} {path}: the same file as {seen[key]}")
        seen[key] = option


def _same_file(a: Path, b: Path) -> bool:
    # samefile sees through links and relative names; it needs both files to exist
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) on a temporary file beside `path` (same suffix, so writers that pick a
    format by extension still work), flush it to disk, then rename it to `path`."""
    final = Path(path)
    tmp = final.with_name(f".{final.stem}.{secrets.token_hex(4)}.tmp{final.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())  # the rename must not land before the data does
        os.replace(tmp, final)
    except BaseException:  # Ctrl-C too: leave nothing half-written behind
        tmp.unlink(missing_ok=True)
        raise
    return final


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
