"""Human-composed training data: General MIDI game soundtracks shipped as Debian packages.

`vaejam data human` reads the music of the packages in `SOURCES` (install them with apt-get):
  freedoom               Doom-engine music as MIDI lumps inside freedoom1.wad / freedoom2.wad
  planetblupi-music-midi Planet Blupi's soundtrack, music000-009.mid
  freedink-data          Dink Smallwood's (FreeDink) Sound/*.mid
Each 4/4 song becomes bars with `midi_to_song(piano_track="auto")`: its General MIDI pianos, or in
a song without one its most chordal guitar/strings track, is the part the band listens to. Songs that
cannot be used are skipped with a one-line reason (meter, no candidate track, too short, ...).
Songs are split train/valid by song, per source, so each source is on both sides; the split depends
only on the seed and the list of usable songs.

The output folder holds the corpus (bars-{train,valid}.npz, read by `training.corpus.load_corpus`),
the MIDI of every song used (midi/{train,valid}/), manifest.json, and SOURCES.md listing every song
with its package, path and licence.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from models.bars import (
    INSTRUMENTS, EmptySongError, MeterError, MidiReadError, NoPianoError, Song, describe_tracks, midi_to_song,
    to_uint8,
)
from training.corpus import skip_reason
from training.synth import prepare_out_dir, split_files, write_manifest, write_splits

log = logging.getLogger(__name__)

MIN_BARS = 4  # shorter songs (jingles, stingers) give too few bar-to-bar pairs to learn from
MIDI_MAGIC = b"MThd"
MUS_MAGIC = b"MUS\x1a"  # Doom's own music format; vaejam does not convert it

# Per-file licences of freedink-data's MIDI files, from /usr/share/doc/freedink-data/copyright
# (the original data pack) and README-REPLACEMENTS.txt (the free replacements).
FREEDINK_LICENCES: dict[str, str] = {
    **dict.fromkeys(("1003.mid", "2.mid", "dance.mid", "insper.mid", "lively.mid", "love.mid"),
                    "zlib-style (Seth A. Robinson, Dink Smallwood data pack)"),
    **dict.fromkeys(("7.mid", "12.mid", "18.mid"), "GPL-3+ (Joshua O'Leary, 2011)"),
    "13.mid": "public domain (Pachelbel's Canon, MIDI by Ofir Mo)",
    **dict.fromkeys(("104.mid", "105.mid"), "GPL-3+ | Art Libre | CC-BY-SA (Sylvain Beucler, 2008)"),
}


class SkipSong(ValueError):
    """A song that cannot be used; the message is the one-line reason."""


@dataclass(frozen=True)
class RawSong:
    """One song as its package ships it, before reading it as bars."""

    source: str  # key of SOURCES
    package: str  # Debian package
    file: str  # where the package installs it
    licence: str  # "" where the package's notes do not name one
    data: bytes
    lump: str = ""  # the lump's name, for music inside a WAD

    @property
    def path(self) -> str:
        return f"{self.file}:{self.lump}" if self.lump else self.file

    @property
    def stem(self) -> str:
        """A file-name-safe name unique within the source, e.g. freedoom1-D_E1M1."""
        name = Path(self.file).stem + (f"-{self.lump}" if self.lump else "")
        return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def wad_music(path: Path) -> list[tuple[str, bytes]]:
    """(lump name, bytes) of every music lump (D_*) of a Doom WAD, in directory order."""
    import omg  # omgifol: only this source needs it

    try:
        wad = omg.WAD(str(path))
    except (OSError, ValueError, AssertionError) as err:  # omgifol asserts on a bad header
        raise OSError(f"{path}: not a readable WAD file ({err})") from err
    return [(name, bytes(lump.data)) for name, lump in wad.music.items()]


def _freedoom(root: Path, source: "Source") -> list[RawSong]:
    songs = []
    for wad in sorted(root.glob("freedoom*.wad")):
        songs += [RawSong(source.name, source.package, str(wad), source.licence, data, lump=name)
                  for name, data in wad_music(wad)]
    return songs


def _midi_files(root: Path, source: "Source") -> list[RawSong]:
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".mid", ".midi"))
    return [RawSong(source.name, source.package, str(p), source.licence_of(p.name), p.read_bytes())
            for p in files]


@dataclass(frozen=True)
class Source:
    """A Debian package of human-composed music, and where it keeps it."""

    name: str  # --sources key
    package: str
    root: Path  # installed folder holding the music
    licence: str  # licence of every song, unless `licences` names the file
    find: Callable[[Path, "Source"], list[RawSong]]
    licences: Mapping[str, str] | None = None  # per-file licences; a file missing from it is skipped

    def licence_of(self, file_name: str) -> str:
        if self.licences is None:
            return self.licence
        return self.licences.get(file_name, "")


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("freedoom", "freedoom", Path("/usr/share/games/doom"),
           "BSD-3-Clause-style (freedoom-license, Contributors to the Freedoom project)", _freedoom),
    Source("blupi", "planetblupi-music-midi", Path("/usr/share/planetblupi/music"),
           "GPL-3+ (Daniel Roux, EPSITEC SA & Denis Dumoulin, 1997)", _midi_files),
    Source("freedink", "freedink-data", Path("/usr/share/games/dink/dink/Sound"),
           "per file, from the package's copyright notes", _midi_files, FREEDINK_LICENCES),
)}


def parse_sources(text: str) -> list[str]:
    """'freedoom,blupi' -> ['freedoom', 'blupi']; unknown or repeated names are a ValueError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--sources {text!r}: give a comma-separated subset of {','.join(SOURCES)}")
    return names


def find_songs(names: Sequence[str], roots: Mapping[str, Path] | None = None) -> list[RawSong]:
    """Every song of the named sources; roots overrides a source's installed folder (tests)."""
    parse_sources(",".join(names))  # unknown or repeated names
    songs = []
    for name in names:
        source = SOURCES[name]
        root = Path((roots or {}).get(name, source.root))
        if not root.is_dir():
            raise FileNotFoundError(f"{name}: {root} not found; install it with `apt-get install {source.package}`")
        songs += source.find(root, source)
    return songs


def read_song(raw: RawSong, workdir: Path) -> Song:
    """The song as bars, or SkipSong with the reason it cannot be used."""
    if not raw.licence:
        raise SkipSong("licence unknown (not listed in the package's copyright notes)")
    if raw.data[:4] == MUS_MAGIC:
        raise SkipSong("MUS lump (Doom's own format), not MIDI; not converted")
    if raw.data[:4] != MIDI_MAGIC:
        raise SkipSong("not MIDI data (no MThd header)")
    path = workdir / f"{raw.source}-{raw.stem}.mid"
    path.write_bytes(raw.data)
    try:
        with warnings.catch_warnings():  # pretty_midi warns about meta events on non-zero tracks
            warnings.simplefilter("ignore", RuntimeWarning)
            song = midi_to_song(path, piano_track="auto")
    except NoPianoError as err:
        raise SkipSong("no candidate track: no piano, guitar or strings notes to follow") from err
    except (MeterError, EmptySongError, MidiReadError) as err:  # "meter 3/4 at 0.00 s; ...", ...
        raise SkipSong(skip_reason(err, path)) from err
    if len(song.bars) < MIN_BARS:
        raise SkipSong(f"too short: {len(song.bars)} bars (< {MIN_BARS})")
    return song


def _followed(song: Song) -> str:
    """The track(s) read as the piano, as 'index name (program N)'."""
    lines = describe_tracks(song.midi).splitlines()
    return "; ".join(lines[i].strip() for i in song.piano_tracks)


def split_by_song(sources: Sequence[str], seed: int, valid_fraction: float) -> list[str]:
    """'train'/'valid' for each song, given each song's source in a stable order: a per-source split."""
    splits = [""] * len(sources)
    for index, name in enumerate(SOURCES):
        members = [i for i, s in enumerate(sources) if s == name]
        for i, split in zip(members, split_files(len(members), seed + index, valid_fraction)):
            splits[i] = split
    return splits


def human_corpus(
    out: Path, sources: Sequence[str] = tuple(SOURCES), valid_fraction: float = 0.3, seed: int = 1,
    roots: Mapping[str, Path] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Write the corpus of the named sources into out; returns the manifest."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    raws = find_songs(sources, roots)
    good: list[tuple[RawSong, Song]] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}  # sha1 of the bytes -> first path: Freedoom reuses some tracks
    with tempfile.TemporaryDirectory() as tmp, logging_redirect_tqdm():
        for raw in tqdm(raws, desc="songs", unit="song", disable=not progress):
            digest = hashlib.sha1(raw.data).hexdigest()
            try:
                if digest in seen:
                    raise SkipSong(f"duplicate of {seen[digest]}")
                seen[digest] = raw.path
                good.append((raw, read_song(raw, Path(tmp))))
            except SkipSong as err:
                log.warning("skip %s: %s", raw.path, err)
                skipped.append({**_describe(raw), "reason": str(err)})
    if not good:
        raise ValueError(f"sources {','.join(sources)}: no usable songs ({len(raws)} found, all skipped)")
    prepare_out_dir(out)
    splits = split_by_song([raw.source for raw, _ in good], seed, valid_fraction)
    songs, metas = [], []
    for (raw, song), split in zip(good, splits):
        file = f"midi/{split}/{raw.source}-{raw.stem}.mid"
        (out / file).write_bytes(raw.data)
        songs.append((split, file, to_uint8(song.bars)))
        metas.append({**_describe(raw), "file": file, "split": split, "n_bars": int(len(song.bars)),
                      "piano_from": _followed(song)})
    manifest = {
        "command": (f"vaejam data human --sources {','.join(sources)} --valid-fraction {valid_fraction} "
                    f"--seed {seed}"),
        "seed": seed, "valid_fraction": valid_fraction, "sources": list(sources),
        "packages": {name: _package_version(SOURCES[name].package) for name in sources},
        "bars_per_split": write_splits(out, songs), "instruments": list(INSTRUMENTS),
        "songs": metas, "skipped": skipped,
    }
    write_manifest(out, manifest)
    (out / "SOURCES.md").write_text(sources_markdown(manifest))
    return manifest


def _describe(raw: RawSong) -> dict[str, str]:
    return {"source": raw.source, "package": raw.package, "path": raw.path, "licence": raw.licence}


def _package_version(package: str) -> str:
    """The installed Debian version, or "" where dpkg does not know the package (tests, other systems)."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def sources_markdown(manifest: Mapping[str, Any]) -> str:
    """SOURCES.md: every song, used or skipped, with its package, path and licence."""
    lines = [
        "# Sources of this corpus", "",
        f"Made by `{manifest['command']}`. Bars per split: {manifest['bars_per_split']}.", "",
        "| package | version | songs used | bars |", "|---|---|---:|---:|",
    ]
    for name in manifest["sources"]:
        used = [s for s in manifest["songs"] if s["source"] == name]
        lines.append(f"| {SOURCES[name].package} | {manifest['packages'][name] or '?'} | {len(used)} | "
                     f"{sum(s['n_bars'] for s in used)} |")
    lines += ["", "## Songs used", "", "| split | package | path | licence | bars | piano part read from |",
              "|---|---|---|---|---:|---|"]
    lines += [_row(s["split"], s["package"], f"`{s['path']}`", s["licence"], s["n_bars"], s["piano_from"])
              for s in manifest["songs"]]
    lines += ["", "## Songs skipped", "", "| package | path | licence | reason |", "|---|---|---|---|"]
    lines += [_row(s["package"], f"`{s['path']}`", s["licence"] or "unknown", s["reason"])
              for s in manifest["skipped"]]
    return "\n".join(lines) + "\n"


def _row(*cells: object) -> str:
    """A Markdown table row; a | inside a cell ("GPL-3+ | CC-BY-SA") is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


# ---------------------------------------------------------------- CLI

def add_human_parser(sources: argparse._SubParsersAction) -> None:
    """Add `vaejam data human` to the `data` subcommands."""
    human = sources.add_parser("human", help="human-composed game music from Debian packages (apt-get install "
                                             + " ".join(s.package for s in SOURCES.values()) + ")")
    human.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    human.add_argument("--sources", type=_sources_arg, default=list(SOURCES),
                       help=f"comma-separated subset of {','.join(SOURCES)} (default: all)")
    human.add_argument("--valid-fraction", type=float, default=0.3,
                       help="share of each source's songs held out for validation (default 0.3)")
    human.add_argument("--seed", type=int, default=1, help="picks the validation songs (default 1)")
    human.set_defaults(func=_cmd_human)


def _sources_arg(text: str) -> list[str]:
    try:
        return parse_sources(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's message, not a ValueError's
        raise argparse.ArgumentTypeError(str(err)) from err


def _cmd_human(args: argparse.Namespace) -> int:
    manifest = human_corpus(args.out, args.sources, args.valid_fraction, args.seed)
    print(f"{args.out}: {len(manifest['songs'])} songs, {len(manifest['skipped'])} skipped, "
          f"bars per split {manifest['bars_per_split']}")
    return 0
