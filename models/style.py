"""Style banks: a reference song's bars, encoded per instrument, to pull the band towards it.

At each step the engine draws one latent s per instrument from the bank and plays
z' = alpha * s + (1 - alpha) * z (Tham & Kim 2021), for every instrument, not only the piano.
A bank only fits the model that made it, so banks live in two places, both keyed to a model:
- shipped: `<model dir>/styles/<name>.safetensors`, read only (a system install cannot write there);
- the user's: `<data dir>/styles/<model fingerprint>/<name>.safetensors`, where `vaejam style add`
  writes; the data dir is $VAEJAM_DATA_DIR or the platform's user data folder. A user bank of the
  same name hides a shipped one.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.bars import BAND, INSTRUMENTS, describe_tracks, midi_to_song
from models.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, load_band_model
from models.files import atomic_write, check_input_file
from models.networks import BandModel

STYLE_DIR = "styles"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DATA_DIR_ENV = "VAEJAM_DATA_DIR"  # overrides the user data folder (tests, portable setups)
SHIPPED, USER = "shipped, read-only", "yours"  # where a bank lives, as `style list` says it


@dataclass(frozen=True)
class StyleBank:
    name: str
    latents: dict[str, torch.Tensor]  # instrument -> (n_bars, K) means of its non-empty bars
    fingerprint: str  # of the model whose VAEs encoded it
    source: str  # the reference file


def check_style_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"style name {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
    return name


def user_data_dir() -> Path:
    """Where vaejam keeps the user's own files: $VAEJAM_DATA_DIR, else the platform's user data folder."""
    return Path(os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("vaejam"))


def user_style_dir(fingerprint: str) -> Path:
    # one folder per model: a bank's latents only fit the VAEs that encoded them
    return user_data_dir() / STYLE_DIR / (fingerprint or "unknown-model")


def shipped_style_dir(model_dir: str | os.PathLike | None) -> Path:
    return Path(model_dir or DEFAULT_MODEL_DIR) / STYLE_DIR


@torch.inference_mode()
def encode_style(model: BandModel, name: str, reference: str | os.PathLike) -> StyleBank:
    """Encode every non-empty bar of the reference song, per instrument; refuse a song with no
    band part, whose style would pull nothing the band plays."""
    check_style_name(name)
    song = midi_to_song(reference, require_piano=False)
    device = next(model.parameters()).device
    bars = torch.from_numpy(song.bars).to(device)  # (n, 5, 32, 128)
    means = model.encode_means(bars)  # (n, 5, K)
    latents = {}
    for i, instrument in enumerate(INSTRUMENTS):
        played = bars[:, i].flatten(1).amax(1) > 0
        latents[instrument] = means[played, i].cpu().contiguous()
    if not any(len(latents[b]) for b in BAND):
        raise ValueError(f"{reference}: no {', '.join(BAND)} notes, so no band style to take from it; "
                         f"give a song with at least one band part. Its tracks:\n{describe_tracks(song.midi)}")
    return StyleBank(name, latents, getattr(model, "fingerprint", ""), os.fspath(reference))


def missing_parts(bank: StyleBank) -> list[str]:
    """Band instruments the bank has no bars of (they play unstyled)."""
    return [b for b in BAND if len(bank.latents.get(b, ())) == 0]


def save_style(bank: StyleBank, model_dir: str | os.PathLike) -> Path:
    """Write a shipped bank beside a model (packaging, tests); users' banks go to save_user_style."""
    return _write_bank(bank, Path(model_dir) / STYLE_DIR)


def save_user_style(bank: StyleBank) -> Path:
    return _write_bank(bank, user_style_dir(bank.fingerprint))


def _write_bank(bank: StyleBank, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in bank.latents.items() if len(v)}
    meta = {"fingerprint": bank.fingerprint, "source": os.path.basename(bank.source)}
    return atomic_write(folder / f"{bank.name}.safetensors",
                        lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def style_files(model_dir: str | os.PathLike | None, model: BandModel | None = None) -> dict[str, tuple[Path, str]]:
    """name -> (file, SHIPPED or USER); the user's bank wins a name both have. Without a model
    the user's banks are unknown (they are filed by model fingerprint)."""
    folders = [(shipped_style_dir(model_dir), SHIPPED)]
    if model is not None:
        folders.append((user_style_dir(getattr(model, "fingerprint", "")), USER))
    found: dict[str, tuple[Path, str]] = {}
    for folder, where in folders:
        for path in sorted(folder.glob("*.safetensors")):
            if not path.name.startswith("."):  # a temporary file of a write in progress
                found[path.stem] = (path, where)
    return found


def load_style_banks(model_dir: str | os.PathLike | None, model: BandModel | None = None) -> dict[str, StyleBank]:
    """Every bank for a model, shipped and the user's; banks made by another model are refused by name."""
    return {name: load_style(path, model) for name, (path, _) in style_files(model_dir, model).items()}


def load_style(path: Path, model: BandModel | None = None) -> StyleBank:
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as reader:
            meta = reader.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt style bank ({err})") from err
    expected = getattr(model, "fingerprint", None)
    if expected and meta.get("fingerprint") != expected:
        raise CheckpointError(f"{path}: style bank was made by another model; run `vaejam style add` again")
    k = model.config.latent if model is not None else None
    for name, tensor in tensors.items():
        if name not in INSTRUMENTS or tensor.ndim != 2 or (k is not None and tensor.shape[1] != k):
            raise CheckpointError(f"{path}: bad tensor {name} {tuple(tensor.shape)}")
    latents = {i: tensors.get(i, torch.zeros(0, k or 16)).float() for i in INSTRUMENTS}
    return StyleBank(path.stem, latents, meta.get("fingerprint", ""), meta.get("source", ""))


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("style", help="manage style banks (reference songs)")
    sub = parser.add_subparsers(dest="style_command", metavar="{add,list}", required=True)
    add = sub.add_parser("add", help="encode a reference song as a named style bank (in your data folder)")
    add.add_argument("name", help="the style's name: letters, digits, '_', '-', '.'")
    add.add_argument("reference", help="a 4/4 MIDI file with at least one band part (guitar, bass, strings, drums)")
    add.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    add.add_argument("--force", action="store_true", help="replace your style of the same name")
    add.set_defaults(func=_add_command)
    listing = sub.add_parser("list", help="list the style banks of a model: shipped ones and yours")
    listing.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    listing.set_defaults(func=_list_command)


def _add_command(args: argparse.Namespace) -> int:
    check_style_name(args.name)
    check_input_file(args.reference)
    model = load_band_model(args.model)
    existing = style_files(args.model, model).get(args.name)
    if existing is not None and not args.force:
        path, where = existing
        raise ValueError(f"style {args.name!r} exists ({where}: {path}); add --force to replace it, or pick another name")
    bank = encode_style(model, args.name, args.reference)
    path = save_user_style(bank)
    print(f"style {bank.name!r}: {_counts(bank)} bars -> {path}")
    missing = missing_parts(bank)
    if missing:
        print(f"note: {args.reference} has no {', '.join(missing)} notes; those play unstyled")
    return 0


def _list_command(args: argparse.Namespace) -> int:
    model = load_band_model(args.model)
    files = style_files(args.model, model)
    if not files:
        print(f"no style banks yet; `vaejam style add NAME REF.mid` saves one in {user_style_dir(model.fingerprint)}")
    for name, (path, where) in files.items():
        bank = load_style(path, model)
        print(f"{name}: {_counts(bank)} bars (from {bank.source or '?'}); {where}: {path}")
    return 0


def _counts(bank: StyleBank) -> str:
    return ", ".join(f"{i} {len(v)}" for i, v in bank.latents.items())


def sample_style(bank: StyleBank, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
    """One latent per instrument drawn from the bank (None where the bank has no bars)."""
    drawn: dict[str, torch.Tensor | None] = {}
    for instrument, latents in bank.latents.items():
        if len(latents) == 0:
            drawn[instrument] = None
            continue
        index = int(torch.randint(len(latents), (1,), generator=generator))
        drawn[instrument] = latents[index]
    return drawn

