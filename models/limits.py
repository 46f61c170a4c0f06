"""Musical ceilings on what the decoder may send: pure functions, no state.

A decoder that fires every cell sent ~770 note-ons a bar per instrument, a wall of MIDI no synth
or player wants. A bar keeps at most MAX_NOTES_PER_BAR note-ons per instrument (three per 32nd
step: far beyond any real part), the ones the decoder was most sure of.
"""
from __future__ import annotations

import numpy as np

MAX_NOTES_PER_BAR = 96


def note_onsets(part: np.ndarray) -> np.ndarray:
    """(T, P) bool: the cells where a note starts (on, and off the step before), as roll_notes reads a part."""
    on = part > 0
    before = np.zeros_like(on)
    before[1:] = on[:-1]
    return on & ~before


def cap_notes(part: np.ndarray, confidence: np.ndarray,
              limit: int = MAX_NOTES_PER_BAR) -> tuple[np.ndarray, int]:
    """A (T, P) part with at most `limit` notes, keeping those with the highest `confidence` at
    their onset (ties: the earlier, then the lower pitch); and how many notes were dropped.
    A dropped note loses all its cells, so no note is cut short or left without its start."""
    if part.shape != confidence.shape:
        raise ValueError(f"part {part.shape} and confidence {confidence.shape} differ in shape")
    if limit < 0:
        raise ValueError(f"limit={limit} is negative")
    onsets = note_onsets(part)
    steps, pitches = np.nonzero(onsets)  # step-major: earlier first
    dropped = len(steps) - limit
    if dropped <= 0:
        return part, 0
    order = np.argsort(-confidence[steps, pitches], kind="stable")[limit:]  # the least sure notes
    runs = np.cumsum(onsets, axis=0)  # (T, P): a cell's note is (its pitch, the run number there)
    drop = np.zeros((part.shape[0] + 1, part.shape[1]), bool)  # (run number, pitch) -> dropped
    drop[runs[steps[order], pitches[order]], pitches[order]] = True
    capped = part.copy()
    capped[(part > 0) & drop[runs, np.arange(part.shape[1])]] = 0
    return capped, int(dropped)


def cap_notes_in_place(part: np.ndarray, confidence: np.ndarray, limit: int = MAX_NOTES_PER_BAR) -> int:
    """cap_notes on a part that is a view into a band's bars; how many notes were dropped."""
    capped, dropped = cap_notes(part, confidence, limit)
    if dropped:
        part[...] = capped
    return dropped
