"""BandEngine: determinism, controls, style per instrument, dynamics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.bars import BAND, BAND_PITCHES, INSTRUMENTS
from models.checkpoint import load_band_model
from models.controls import Controls
from models.engine import BandEngine
from models.style import encode_style
from tests.conftest import band_song


@pytest.fixture()
def engine(tiny_model_dir) -> BandEngine:
    return BandEngine(load_band_model(tiny_model_dir))


def run(engine: BandEngine, bars: int = 4) -> np.ndarray:
    piano = band_song(bars)[:, 0]
    return np.stack([engine.step(bar) for bar in piano])


def test_shape_and_values(engine):
    out = engine.step(band_song(1)[0, 0])
    assert out.shape == (5, 32, 128) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="piano bar"):
        engine.step(np.zeros((16, 128), np.float32))


def test_same_seed_same_output(tiny_model_dir):
    a = run(BandEngine(load_band_model(tiny_model_dir), controls=Controls(seed=5)))
    b = run(BandEngine(load_band_model(tiny_model_dir), controls=Controls(seed=5)))
    np.testing.assert_array_equal(a, b)


def test_reset_replays_the_stream(engine):
    first = run(engine)
    engine.reset()
    np.testing.assert_array_equal(run(engine), first)


def test_seed_and_noise_change_the_output(tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    base = run(BandEngine(model, controls=Controls(seed=1)))
    other_seed = run(BandEngine(model, controls=Controls(seed=2)))
    no_noise = run(BandEngine(model, controls=Controls(seed=1, noise_sd=0.0)))
    no_noise_other_seed = run(BandEngine(model, controls=Controls(seed=2, noise_sd=0.0)))
    assert not np.array_equal(base, other_seed)
    assert not np.array_equal(base, no_noise)
    np.testing.assert_array_equal(no_noise, no_noise_other_seed)  # without noise the seed is moot


def test_mute_silences_only_that_instrument(engine):
    engine.set_controls(Controls().updated("mute/bass", 1))
    out = run(engine)
    assert not out[:, INSTRUMENTS.index("bass")].any()


def test_density_adds_notes(tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    counts = []
    for density in (0.0, 0.5, 1.0):
        controls = Controls()
        for instrument in BAND:
            controls = controls.updated(f"density/{instrument}", density)
        counts.append(int((run(BandEngine(model, controls=controls))[:, 1:] > 0).sum()))
    assert counts[0] <= counts[1] <= counts[2] and counts[0] < counts[2]


def test_velocity_follows_the_piano(engine):
    loud = band_song(1)[0, 0] * 0 + (band_song(1)[0, 0] > 0) * (120 / 127)
    soft = (band_song(1)[0, 0] > 0) * (40 / 127)
    engine.reset()
    v_loud = engine.step(loud.astype(np.float32))[1:]
    engine.reset()
    v_soft = engine.step(soft.astype(np.float32))[1:]
    assert v_loud[v_loud > 0].mean() > 2 * v_soft[v_soft > 0].mean()
    engine.reset()
    engine.set_controls(Controls().updated("velocity/drums", 0.5))
    v_half = engine.step(loud.astype(np.float32))
    drums = INSTRUMENTS.index("drums")
    np.testing.assert_allclose(v_half[drums][v_half[drums] > 0].mean(),
                               v_loud[drums - 1][v_loud[drums - 1] > 0].mean() * 0.5, rtol=0.05)


def test_style_reaches_every_instrument(tiny_model_dir, song_file):
    model = load_band_model(tiny_model_dir)
    bank = encode_style(model, "ref", song_file)
    controls = Controls(style="ref", alpha=1.0)
    engine = BandEngine(model, {"ref": bank}, controls=controls)
    engine.step(band_song(1)[0, 0])
    # with alpha = 1 every instrument's latent is a bar of the reference, not only the piano's
    for i, instrument in enumerate(INSTRUMENTS):
        distances = torch.cdist(engine.previous[i : i + 1], bank.latents[instrument])
        assert distances.min() < 1e-5, instrument


def test_unknown_style_is_refused(engine):
    with pytest.raises(ValueError, match="unknown style 'nope'"):
        engine.set_controls(Controls(style="nope"))


def test_warmup_does_not_change_the_stream(tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    warm = BandEngine(model)
    warm.warmup()
    np.testing.assert_array_equal(run(warm), run(BandEngine(model)))


def test_drop_blips_keeps_held_notes_only():
    from models.engine import drop_blips
    on = np.zeros((32, 128), bool)
    on[0, 60] = True  # a 32nd blip
    on[4:8, 62] = True  # a held note
    on[31, 64] = True  # a blip at the bar's end
    kept = drop_blips(on)
    assert kept[4:8, 62].all() and kept.sum() == 4


def test_an_empty_bar_is_retried_before_the_instrument_rests(engine):
    base = engine.base_thresholds[INSTRUMENTS.index("bass")]
    decoded = np.zeros((5, 32, 128), np.float32)
    bass = INSTRUMENTS.index("bass")
    decoded[bass, 0:4, 40] = base * 0.6  # below the threshold, above a quarter of it
    decoded[INSTRUMENTS.index("guitar"), 0:4, 60] = base * 0.1  # too faint even at 4x density
    out = engine._binarise(decoded)
    assert out[bass, 0:4, 40].all()
    assert not out[INSTRUMENTS.index("guitar")].any()


def test_the_band_without_the_predicted_piano_is_the_same_band(tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    full, lean = BandEngine(model, controls=Controls(seed=3)), BandEngine(model, controls=Controls(seed=3), decode_piano=False)
    for bar in band_song(4)[:, 0]:
        want = full.step(bar)
        got = lean.step(bar)
        np.testing.assert_array_equal(got[1:], want[1:])
        assert not got[0].any()
        np.testing.assert_array_equal(lean.predicted_piano(), want[0])  # decoded on demand, as autopilot needs
        np.testing.assert_array_equal(full.predicted_piano(), want[0])


@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_fused_engine_plays_what_the_modules_play(tiny_model_dir, weights):
    """float32: the same cells as the nn modules; int8: at most 1 % of the cells differ."""
    if weights == "int8" and not hasattr(torch, "_weight_int8pack_mm"):
        pytest.skip("this torch has no int8-weight matmul")
    model = load_band_model(tiny_model_dir)
    want = run(BandEngine(model, weights="modules", controls=Controls(seed=2)), 6)
    got = run(BandEngine(model, weights=weights, controls=Controls(seed=2)), 6)
    differ = np.mean((got > 0) != (want > 0))
    assert differ == 0 if weights == "float32" else differ < 0.01
    if weights == "float32":
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_snapping_all_parts_at_once_equals_snap_to_scale():
    from models.engine import snap_parts_to_scale
    from models.harmony import KeyTracker, snap_to_scale

    rng = np.random.default_rng(0)
    parts = (rng.random((4, 32, 128)) > 0.9) * rng.random((4, 32, 128)).astype(np.float32)
    parts[..., :BAND_PITCHES.start] = parts[..., BAND_PITCHES.stop:] = 0.0  # as the engine's parts are
    for tonic in range(12):
        for minor in (False, True):
            tracker = KeyTracker()
            tracker.key = lambda tonic=tonic, minor=minor: (tonic, minor)  # type: ignore[method-assign]
            scale = tracker.scale_mask()
            want = np.stack([snap_to_scale(p, scale) for p in parts])
            np.testing.assert_array_equal(snap_parts_to_scale(parts.copy(), scale), want)
            assert not want[..., :BAND_PITCHES.start].any() and not want[..., BAND_PITCHES.stop:].any()


def test_the_band_hears_and_plays_only_band_pitches(tiny_model_dir):
    """Notes below 16 or above 111 (outside BAND_PITCHES) are not heard: a bar of only those is a
    silent bar; and no system's part has a cell there, even where its decoder fires everywhere."""
    from models.engine import BarEngine

    model = load_band_model(tiny_model_dir)
    outside = np.zeros((32, 128), np.float32)
    outside[:, [0, 12, 15, 112, 127]] = 0.8
    with_outside = BandEngine(model, controls=Controls(seed=3)).step(outside)
    silent = BandEngine(model, controls=Controls(seed=3)).step(np.zeros((32, 128), np.float32))
    np.testing.assert_array_equal(with_outside, silent)

    class FiresEverywhere(BarEngine):
        def _decode_next(self, piano_bar, first=0):
            return np.full((len(INSTRUMENTS) - first, 32, 128), 0.9, np.float32)

    out = FiresEverywhere([0.2] * len(INSTRUMENTS)).step(band_song(1)[0, 0])
    assert out[..., BAND_PITCHES.start:BAND_PITCHES.stop].any()
    assert not out[..., :BAND_PITCHES.start].any() and not out[..., BAND_PITCHES.stop:].any()
