"""Key lock: keep the band's pitched parts in the key the pianist is playing in.

The networks predict the next bar from the last one through a 16-number latent, and a regression
to the mean blurs which key a bar is in (measured: tonal distance to the piano no better than
shuffled bars, see the issue notes). A musician expects the band to stay in key, so the engine
tracks the piano's key (Krumhansl-Kessler profiles over a decaying pitch-class histogram) and moves
each out-of-scale note of guitar, bass, strings (and the echoed piano) to the nearest scale
degree. Drums are left alone. The `harmony` control: 0 turns it off, so the raw model can be heard and measured; 1 is key lock
alone; 2 (the default) adds beat-level chord follow on top (models.chords).
"""
from __future__ import annotations

import functools

import numpy as np

from models.bars import BAND_PITCHES, N_PITCHES

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor plus the leading tone, so V is in key
PITCH_CLASS = np.arange(N_PITCHES) % 12


def _profiles() -> np.ndarray:
    """(24, 12): the major then the minor profile, rotated to each tonic."""
    return np.stack([np.roll(p, tonic) for p in (MAJOR_PROFILE, MINOR_PROFILE) for tonic in range(12)])


PROFILES = _profiles()
# centred and scaled to unit length once, so a key is one product a bar (Pearson correlation)
_UNIT_PROFILES = PROFILES - PROFILES.mean(axis=1, keepdims=True)
_UNIT_PROFILES /= np.linalg.norm(_UNIT_PROFILES, axis=1, keepdims=True)


class KeyTracker:
    """The key of the last few bars of piano; older bars count less (decay per bar)."""

    def __init__(self, decay: float = 0.75) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.histogram = np.zeros(12)  # weighted steps of each pitch class heard

    def reset(self) -> None:
        self.histogram[:] = 0.0

    def update(self, piano_bar: np.ndarray) -> None:
        """Add one played bar (32, 128)."""
        steps_per_pitch = (piano_bar > 0).sum(axis=0)  # (128,)
        bar_histogram = np.bincount(PITCH_CLASS, weights=steps_per_pitch, minlength=12)
        self.histogram = self.decay * self.histogram + bar_histogram

    def key(self) -> tuple[int, bool] | None:
        """(tonic pitch class, is_minor) of the best-matching profile; None before any note."""
        if not self.histogram.any():
            return None
        centred = self.histogram - self.histogram.mean()
        best = int(np.argmax(_UNIT_PROFILES @ centred))  # the same argmax as the correlation's
        return best % 12, best >= 12

    def scale_mask(self) -> np.ndarray | None:
        """(12,) bool: the pitch classes of the current key's scale."""
        key = self.key()
        if key is None:
            return None
        return _scale_of(*key).copy()


@functools.lru_cache(maxsize=24)
def _scale_of(tonic: int, minor: bool) -> np.ndarray:
    """(12,) bool: the pitch classes of a key's scale (made once per key; callers get a copy)."""
    mask = np.zeros(12, bool)
    mask[[(tonic + degree) % 12 for degree in (MINOR_SCALE if minor else MAJOR_SCALE)]] = True
    return mask


def snap_to_scale(bar: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Move every out-of-scale pitch of a (32, 128) bar a semitone down (or up) into the scale.

    Scales here never hold two adjacent missing semitones, so one step always lands in key; the
    lowest band pitch moves up, so nothing leaves BAND_PITCHES. Where two notes land on one pitch
    the louder step wins.
    """
    out = bar.copy()
    for pitch in np.flatnonzero((bar > 0).any(axis=0) & ~scale[PITCH_CLASS]):
        target = pitch - 1 if pitch > BAND_PITCHES.start and scale[(pitch - 1) % 12] else pitch + 1
        if BAND_PITCHES.start <= target < BAND_PITCHES.stop:
            out[:, target] = np.maximum(out[:, target], bar[:, pitch])
        out[:, pitch] = 0.0
    return out
