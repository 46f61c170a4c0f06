"""models.limits: the note ceiling per bar and instrument."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.session import roll_notes
from models.engine import BandEngine
from models.limits import MAX_NOTES_PER_BAR, cap_notes, cap_notes_in_place
from models.networks import BandModel
from tests.conftest import TINY


def test_a_part_under_the_limit_is_untouched() -> None:
    part = np.zeros((32, 128), np.float32)
    part[0:4, 60] = 0.5
    capped, dropped = cap_notes(part, np.ones_like(part), limit=1)
    assert dropped == 0 and np.array_equal(capped, part)


def test_the_least_sure_notes_go_whole() -> None:
    part = np.zeros((32, 128), np.float32)
    confidence = np.zeros_like(part)
    part[0:4, 60], confidence[0:4, 60] = 0.5, 0.9  # sure, long
    part[0:2, 62], confidence[0:2, 62] = 0.5, 0.3  # least sure: dropped
    part[4:8, 60], confidence[4:8, 60] = 0.7, 0.1  # same pitch: a second note (0.5 -> 0.7 is no onset)
    part[5:9, 64], confidence[5:9, 64] = 0.6, 0.8
    part[10:12, 60], confidence[10:12, 60] = 0.4, 0.5
    capped, dropped = cap_notes(part, confidence, limit=3)
    assert dropped == 1
    assert [(n.start, n.end, n.pitch) for n in roll_notes(capped)] == [(0, 8, 60), (5, 9, 64), (10, 12, 60)]
    assert not capped[:, 62].any() and np.array_equal(part[:, [60, 64]], capped[:, [60, 64]])


def test_every_cell_on_is_capped_to_the_ceiling_in_place() -> None:
    # A decoder firing every cell sent ~770 note-ons a bar per instrument.
    rng = np.random.default_rng(0)
    band = (rng.random((5, 32, 128)) > 0.5).astype(np.float32)
    confidence = rng.random((5, 32, 128)).astype(np.float32)
    total = 0
    for i in range(5):
        total += cap_notes_in_place(band[i], confidence[i])
        assert len(roll_notes(band[i])) == MAX_NOTES_PER_BAR
    assert total > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        cap_notes(np.zeros((32, 128)), np.zeros((32, 127)))
    with pytest.raises(ValueError, match="negative"):
        cap_notes(np.zeros((32, 128)), np.zeros((32, 128)), limit=-1)


def test_the_engine_caps_a_decoder_that_fires_every_cell() -> None:
    torch.manual_seed(0)
    engine = BandEngine(BandModel(TINY))
    decoded = np.full((5, 32, 128), 0.99, np.float32)
    decoded[:, 2::3] = 0.0  # a new two-step note every third step at every pitch: ~1,000 a part
    out = engine._binarise(decoded)
    for i in range(5):
        assert len(roll_notes(out[i])) <= MAX_NOTES_PER_BAR
    assert engine.capped_notes > 0
