"""Key lock: the key tracker finds the key; snapping moves only out-of-key notes."""
from __future__ import annotations

import numpy as np
import pytest

from models.harmony import KeyTracker, snap_to_scale


def chord_bar(*pitches: int) -> np.ndarray:
    bar = np.zeros((32, 128), np.float32)
    bar[:, list(pitches)] = 0.6
    return bar


@pytest.mark.parametrize("chords,key", [
    ([(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)], (0, False)),  # C F G C: C major
    ([(57, 60, 64), (62, 65, 69), (64, 68, 71), (57, 60, 64)], (9, True)),  # Am Dm E Am: A minor
    ([(66, 70, 73), (71, 75, 78), (73, 77, 80), (66, 70, 73)], (6, False)),  # F# B C# F#
])
def test_key_of_a_progression(chords, key):
    tracker = KeyTracker()
    assert tracker.key() is None and tracker.scale_mask() is None
    for chord in chords:
        tracker.update(chord_bar(*chord))
    assert tracker.key() == key


def test_decay_follows_a_modulation():
    tracker = KeyTracker(decay=0.5)
    for _ in range(4):
        tracker.update(chord_bar(60, 64, 67))  # C
    for _ in range(6):
        for chord in ((62, 66, 69), (67, 71, 74), (69, 73, 76), (62, 66, 69)):  # D G A D
            tracker.update(chord_bar(*chord))
    assert tracker.key() == (2, False)


def test_snap_moves_only_out_of_key_notes():
    c_major = np.zeros(12, bool)
    c_major[[0, 2, 4, 5, 7, 9, 11]] = True
    bar = chord_bar(60, 63, 67)  # C Eb G in C major: Eb -> D
    bar[0:4, 66] = 0.9  # F# -> F
    out = snap_to_scale(bar, c_major)
    assert set(np.flatnonzero(out.any(0))) == {60, 62, 65, 67}
    np.testing.assert_array_equal(out[:, 60], bar[:, 60])
    assert out[0, 65] == pytest.approx(0.9) and out[10, 65] == 0.0
    assert snap_to_scale(chord_bar(60, 64, 67), c_major).tolist() == chord_bar(60, 64, 67).tolist()


def test_bad_decay():
    with pytest.raises(ValueError):
        KeyTracker(decay=1.0)
