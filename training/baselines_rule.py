"""Bands with no network, for `vaejam eval` to set the model's numbers against.

- `one_bar_late`: the song's own band parts, each bar played one bar later. The best a band that
  answers one bar late without predicting could do.
- `rule_alone`: "the causal rule alone": those late parts, then fitted beat by beat to the chord
  the piano has played so far (`models.chords.fit_bar`, what harmony 2 does to the network's
  notes). Rhythm, register and voicing come from the real parts of bar t, the pitches from the
  piano heard before each beat of bar t+1; nothing in it knows bar t+1 beyond that. It shows
  what the chord-follow rule scores without the networks.
"""
from __future__ import annotations

import time

import numpy as np

from models.bars import BAND, STEPS_PER_BAR, rolls_notes
from models.chords import ChordFollower, fit_bar, notes_roll


def one_bar_late(bars: np.ndarray) -> np.ndarray:
    """The real band parts (n, 5, 32, 128) shifted one bar later, the piano kept; bar 0's band is
    silent, as the live band's is."""
    late = np.zeros_like(bars)
    late[:, 0] = bars[:, 0]
    late[1:, 1:] = bars[:-1, 1:]
    return late


def rule_alone(bars: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """`one_bar_late(bars)` with every band bar t+1 fitted per beat by `fit_bar` against piano bars
    t and t+1, as models.render.play_bars fits the engine's output at harmony 2. Returns the song
    and the ms each bar's fit took."""
    out = one_bar_late(bars)
    follower = ChordFollower()
    fit_ms = []
    for t in range(len(bars) - 1):
        started = time.perf_counter()
        parts = dict(zip(BAND, rolls_notes(out[t + 1, 1:])))
        fitted = fit_bar(follower, parts, bars[t, 0], bars[t + 1, 0], (t + 1) * STEPS_PER_BAR)
        out[t + 1, 1:] = np.stack([notes_roll(fitted[name]) for name in BAND])
        fit_ms.append((time.perf_counter() - started) * 1000)
    return out, fit_ms
