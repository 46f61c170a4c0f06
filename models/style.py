"""Style banks: a reference song's bars, encoded per instrument, to pull the band towards it.

At each step the engine draws one latent s per instrument from the bank and plays
z' = alpha * s + (1 - alpha) * z (Tham & Kim 2021), for every instrument, not only the piano.
Banks are saved as `<model dir>/styles/<name>.safetensors` and only fit the model that made them.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from models.bars import INSTRUMENTS, midi_to_song
from models.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, load_band_model
from models.networks import BandModel

STYLE_DIR = "styles"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


@torch.inference_mode()
def encode_style(model: BandModel, name: str, reference: str | os.PathLike) -> StyleBank:
    """Encode every non-empty bar of the reference song, per instrument."""
    song = midi_to_song(reference, require_piano=False)
    device = next(model.parameters()).device
    bars = torch.from_numpy(song.bars).to(device)  # (n, 5, 32, 128)
    means = model.encode_means(bars)  # (n, 5, K)
    latents = {}
    for i, instrument in enumerate(INSTRUMENTS):
        played = bars[:, i].flatten(1).amax(1) > 0
        latents[instrument] = means[played, i].cpu().contiguous()
    if not any(len(v) for v in latents.values()):
        raise ValueError(f"{reference}: no notes of any instrument to take a style from")
    return StyleBank(check_style_name(name), latents, getattr(model, "fingerprint", ""), os.fspath(reference))


def save_style(bank: StyleBank, model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir) / STYLE_DIR / f"{bank.name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v for k, v in bank.latents.items() if len(v)}
    meta = {"fingerprint": bank.fingerprint, "source": os.path.basename(bank.source)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_style_banks(model_dir: str | os.PathLike | None, model: BandModel | None = None) -> dict[str, StyleBank]:
    """Every bank saved beside a model; banks made by another model are refused by name."""
    directory = Path(model_dir or DEFAULT_MODEL_DIR) / STYLE_DIR
    banks: dict[str, StyleBank] = {}
    for path in sorted(directory.glob("*.safetensors")):
        banks[path.stem] = load_style(path, model)
    return banks


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
    sub = parser.add_subparsers(dest="style_command", required=True)
    add = sub.add_parser("add", help="encode a reference song as a named style bank")
    add.add_argument("name")
    add.add_argument("reference", help="a 4/4 MIDI file")
    add.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    add.set_defaults(func=_add_command)
    listing = sub.add_parser("list", help="list the style banks of a model")
    listing.add_argument("--model", default=None)
    listing.set_defaults(func=_list_command)


def _add_command(args: argparse.Namespace) -> int:
    model = load_band_model(args.model)
    bank = encode_style(model, args.name, args.reference)
    path = save_style(bank, args.model or DEFAULT_MODEL_DIR)
    counts = ", ".join(f"{i} {len(v)}" for i, v in bank.latents.items())
    print(f"style {bank.name!r}: {counts} bars -> {path}")
    return 0


def _list_command(args: argparse.Namespace) -> int:
    model = load_band_model(args.model)
    for name, bank in load_style_banks(args.model, model).items():
        counts = ", ".join(f"{i} {len(v)}" for i, v in bank.latents.items())
        print(f"{name}: {counts} bars (from {bank.source})")
    return 0


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

