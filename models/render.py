"""`vaejam render`: a MIDI file's piano part through the bar engine, bar by bar, as live would.
--model takes any system's folder (VAE-NN or a baseline: models.systems).

The band answers one bar late, exactly as in a jam: bar t+1 of the band comes from bar t of the
piano, so the band is silent in the first bar.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
from tqdm import tqdm

from models.bars import (
    BAND, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, Song, bars_to_instrument, midi_to_song, rolls_notes,
)
from models.chords import HARMONY_CHORDS, ChordFollower, fit_bar, notes_roll
from models.controls import Controls
from models.engine import BandEngine, BarEngine
from models.files import MIDI_SUFFIXES, atomic_write, check_distinct, check_input_file, check_output_file
from models.systems import load_engine, model_arch

@dataclass
class RenderResult:
    song: Song
    band: np.ndarray  # (n_bars, 5, 32, 128): the played piano in row 0, the band's bars in 1-4
    step_ms: list[float]  # engine time per bar


def play_bars(engine: BarEngine, bars: np.ndarray, progress: bool = False) -> tuple[np.ndarray, list[float]]:
    """The band over a song's piano part (n, 5, 32, 128), one bar at a time as live: bar t+1 of
    the band from piano bar t. Returns the played piano plus the band's bars, and ms per step."""
    band = np.zeros_like(bars)
    band[:, 0] = bars[:, 0]
    step_ms = []
    follower = ChordFollower()
    for t in tqdm(range(len(bars) - 1), desc="render", unit="bar", disable=not progress):
        out = engine.step(bars[t, 0])
        step_ms.append(engine.last_step_ms)
        if engine.controls.harmony == HARMONY_CHORDS:
            # beat by beat, each beat hearing only the piano before it, as the live session does
            parts = dict(zip(BAND, rolls_notes(out[1:])))
            fitted = fit_bar(follower, parts, bars[t, 0], bars[t + 1, 0], (t + 1) * STEPS_PER_BAR)
            out[1:] = np.stack([notes_roll(fitted[name]) for name in BAND])
        band[t + 1, 1:] = out[1:]
    return band, step_ms


def render_song(engine: BarEngine, song: Song, progress: bool = False) -> RenderResult:
    """Feed the song's piano bars through the engine one at a time."""
    return RenderResult(song, *play_bars(engine, song.bars, progress))


def write_render(result: RenderResult, path: str | os.PathLike) -> pretty_midi.PrettyMIDI:
    """The original piano track(s) plus the four generated parts, on the file's own tempo map."""
    original = result.song.midi
    out = copy.deepcopy(original)
    out.instruments = [copy.deepcopy(original.instruments[i]) for i in result.song.piano_tracks]
    for instrument in BAND:
        out.instruments.append(bars_to_instrument(result.band[:, INSTRUMENTS.index(instrument)], instrument, original))
    atomic_write(path, lambda tmp: out.write(os.fspath(tmp)))
    return out


def plot_bars(bars: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """A piano-roll picture: one panel per instrument, bars marked, velocity as brightness."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bars = bars.shape[0]
    fig, axes = plt.subplots(len(INSTRUMENTS), 1, figsize=(min(24, 4 + n_bars * 0.5), 11), sharex=True)
    for ax, (i, name) in zip(axes, enumerate(INSTRUMENTS)):
        roll = bars[:, i].reshape(-1, N_PITCHES).T  # (128, T)
        rows = np.flatnonzero(roll.any(1))
        low, high = (max(0, rows.min() - 2), min(N_PITCHES, rows.max() + 3)) if rows.size else (36, 84)
        ax.imshow(roll[low:high], aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                  extent=(0, n_bars, low, high), interpolation="nearest")
        for bar in range(1, n_bars):
            ax.axvline(bar, color="white", lw=0.4, alpha=0.4)
        ax.set_ylabel(f"{name}\npitch")
    axes[-1].set_xlabel("bar")
    axes[0].set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="play a MIDI file's piano part to the band, offline")
    parser.add_argument("song", help="a 4/4 MIDI file with a piano part")
    parser.add_argument("-o", "--out", required=True, help="MIDI file to write (never the input file)")
    parser.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--noise-sd", type=float, default=Controls.noise_sd,
                        help="how adventurous the band is: sd of the noise on the piano latent")
    parser.add_argument("--alpha", type=float, default=Controls.alpha,
                        help="style blend 0-1: how far the band is pulled towards --style")
    parser.add_argument("--style", default="", help="a style bank name (vaejam style list) or a MIDI file")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same band")
    parser.add_argument("--piano-track", default=None,
                        help="piano track name or index, or 'auto': GM pianos, else the most chordal "
                             "guitar/strings track (default: GM pianos)")
    parser.add_argument("--density", type=float, default=0.5, help="0-1, for every band instrument")
    parser.add_argument("--mute", default="", help="comma-separated instruments to leave silent")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees a GPU), cpu, or cuda[:N] with a CUDA build of torch")
    parser.add_argument("--plot", default=None, help="PNG piano-roll picture of all five tracks")
    parser.set_defaults(func=_render_command)


def controls_from_args(args: argparse.Namespace) -> Controls:
    controls = Controls().updated("noise_sd", args.noise_sd).updated("alpha", args.alpha)
    controls = controls.updated("seed", args.seed)
    muted = [m.strip() for m in args.mute.split(",") if m.strip()]
    for instrument in BAND:
        controls = controls.updated(f"density/{instrument}", args.density)
    for instrument in muted:
        controls = controls.updated(f"mute/{instrument}", 1)
    return controls


def _render_command(args: argparse.Namespace) -> int:
    from bridge.cli import check_device

    _check_paths(args)
    engine = load_engine(args.model, check_device(args.device))  # VAE-NN or a baseline, by the folder's arch
    controls = controls_from_args(args)
    if args.style:
        if not isinstance(engine, BandEngine):
            raise ValueError(f"--style: {args.model} is a baseline ({model_arch(args.model)}), which has no styles")
        engine.styles, style_name = _resolve_style(engine.model, engine.styles, args.style)
        controls = controls.updated("style", style_name)
    song = midi_to_song(args.song, piano_track=_track_arg(args.piano_track))
    engine.set_controls(controls)
    engine.reset()
    started = time.perf_counter()
    result = render_song(engine, song, progress=True)
    seconds = time.perf_counter() - started
    write_render(result, args.out)
    summary = ", ".join(
        f"{name} {int((result.band[1:, i].reshape(len(result.band) - 1, -1) > 0).any(1).sum())}"
        for i, name in enumerate(INSTRUMENTS) if name != "piano")
    per_bar = np.median(result.step_ms) if result.step_ms else 0.0
    print(f"{args.out}: {len(song.bars)} bars; bars with notes: {summary}; "
          f"{seconds:.2f} s ({per_bar:.2f} ms per bar median)")
    if args.plot:
        plot_bars(result.band, args.plot, title=f"{Path(args.song).name} -> vaejam (noise_sd {controls.noise_sd})")
        print(f"{args.plot}: piano roll of all five tracks")
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    """Every file named, checked before any work: no .mid is written and then the plot refused."""
    check_input_file(args.song)
    check_output_file(args.out, "--out", MIDI_SUFFIXES, inputs=[args.song])
    if args.plot:
        check_output_file(args.plot, "--plot", (".png",), inputs=[args.song])
    check_distinct({"--out": args.out, "--plot": args.plot})


def _track_arg(value: str | None) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


def _resolve_style(model, styles: dict, style: str) -> tuple[dict, str]:
    """A style name from the bank, or a MIDI file encoded on the fly."""
    if style in styles:
        return styles, style
    if Path(style).suffix.lower() in MIDI_SUFFIXES:
        from models.style import encode_style
        check_input_file(style)
        bank = encode_style(model, "reference", style)
        return {**styles, bank.name: bank}, bank.name
    known = ", ".join(sorted(styles)) or "none yet (vaejam style add NAME REF.mid)"
    raise ValueError(f"--style {style!r}: not a style bank or a .mid file; known banks: {known}")

