"""Shared fixtures: small real files and a small real model, made once per session."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.bars import INSTRUMENTS, song_to_midi
from models.checkpoint import save_band_model
from models.networks import BandConfig, BandModel

# One intra-op thread: the suite shares 2 cores with JACK and daemon subprocesses, and torch's
# spinning worker threads slow everything down when cores are busy.
torch.set_num_threads(1)

TINY = BandConfig(latent=8, channels=(8, 16, 32), hidden=32)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` skip, saying why, where torch has no GPU (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

# I-vi-IV-V in C, one chord a bar: (root, third, fifth) as MIDI pitches in octave 4
PROGRESSION = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]


def band_song(n_bars: int = 8) -> np.ndarray:
    """A hand-made five-part song following PROGRESSION, (n_bars, 5, 32, 128) float32."""
    bars = np.zeros((n_bars, len(INSTRUMENTS), 32, 128), np.float32)
    for t in range(n_bars):
        chord = PROGRESSION[t % 4]
        for pitch in chord:
            bars[t, 0, 0:15, pitch] = 0.7  # piano: two half-note chords
            bars[t, 0, 16:31, pitch] = 0.55
            bars[t, 3, :, pitch - 12] = 0.4  # strings hold the chord
        for beat in range(4):
            bars[t, 1, beat * 8 : beat * 8 + 6, chord[beat % 3] + 12] = 0.6  # guitar arpeggio
        bars[t, 2, 0:14, chord[0] - 24] = 0.8  # bass: root on 1 and 3
        bars[t, 2, 16:30, chord[0] - 24] = 0.8
        bars[t, 4, ::8, 36] = 0.9  # drums: kick on beats, snare on 2 and 4, hats on 8ths
        bars[t, 4, 8::16, 38] = 0.8
        bars[t, 4, ::4, 42] = 0.5
    return bars


@pytest.fixture(scope="session")
def song_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("songs") / "band.mid"
    song_to_midi(band_song(8), bpm=100).write(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A real (untrained, seeded) model on disk in the shipped format.

    Its decoders are scaled so that bars straddle the density thresholds and depend on the
    latent, as a trained model's do, instead of every cell sitting near sigmoid(0) = 0.5.
    """
    path = tmp_path_factory.mktemp("model")
    save_band_model(seeded_model(), path)
    return str(path)


def seeded_model(config: BandConfig = TINY) -> BandModel:
    """An untrained model, seed 0, whose decoders are scaled so that bars straddle the density
    thresholds and depend on the latent (tiny_model_dir's, and the CUDA tests' in memory)."""
    torch.manual_seed(0)
    model = BandModel(config)
    with torch.no_grad():
        for vae in model.vaes.values():
            vae.decoder[-1].bias.fill_(-1.5)
            vae.decoder[-1].weight.mul_(40)
            vae.decoder[2].weight.mul_(4)
    return model
