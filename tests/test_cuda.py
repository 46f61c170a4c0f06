"""The CUDA path (issue 11): BandEngine on a GPU, each bar's network work replayed as one CUDA graph.

Tests marked `cuda` skip where torch has no GPU (CI, the project's own machines) and run on a lent
one through `training/device_run.sh`. The tolerance between devices: decoder probabilities within
1e-4 of the CPU's (float32 on both; the stream feeds each bar's latents into the next, so rounding
differences carry over bars), and at most 1 cell in 1,000 played differently (a probability that
close to its threshold can land on either side).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.checkpoint import load_band_model
from models.controls import Controls
from models.engine import BandEngine
from models.networks import BandModel
from models.style import StyleBank
from tests.conftest import TINY, seeded_model

PROBABILITY_ATOL = 1e-4
CELLS_DIFFERENT_AT_MOST = 1e-3


def piano_bars(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [((rng.random((STEPS_PER_BAR, N_PITCHES)) > 0.97) * rng.uniform(0.4, 0.9)).astype(np.float32)
            for _ in range(n)]


def style_bank(model: BandModel, bars: int = 6) -> StyleBank:
    rng = torch.Generator().manual_seed(1)
    latents = {name: torch.randn(bars, model.config.latent, generator=rng) for name in INSTRUMENTS}
    latents["strings"] = torch.zeros(0, model.config.latent)  # a part the reference song lacks: unmixed
    return StyleBank("ref", latents, "test", "ref.mid")


def test_a_cuda_graph_needs_a_cuda_device(tiny_model_dir) -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        BandEngine(load_band_model(tiny_model_dir), cuda_graph=True)


def test_the_random_stream_is_drawn_on_the_host(tiny_model_dir) -> None:
    """So a seed can give the same band on every device."""
    assert BandEngine(load_band_model(tiny_model_dir)).generator.device.type == "cpu"


def engines(model: BandModel, **options) -> tuple[BandEngine, BandEngine]:
    """The same model and controls on the CPU (float32 weights) and on CUDA."""
    styles = {"ref": style_bank(model)}
    cpu = BandEngine(copy.deepcopy(model), styles, "cpu", weights="float32", **options)
    gpu = BandEngine(copy.deepcopy(model), styles, "cuda", **options)
    return cpu, gpu


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["article", "context"])
@pytest.mark.parametrize("style", ["", "ref"])
def test_a_seed_gives_the_same_band_on_cpu_and_cuda(arch: str, style: str) -> None:
    controls = Controls(seed=5, noise_sd=0.8, style=style, alpha=0.5)
    cpu, gpu = engines(seeded_model(replace(TINY, arch=arch)), controls=controls)
    assert gpu.cuda_graph and not cpu.cuda_graph
    for bar in piano_bars(24):
        expected = cpu._decode_next(torch.from_numpy(bar))
        got = gpu._decode_next(torch.from_numpy(bar))
        np.testing.assert_allclose(got, expected, atol=PROBABILITY_ATOL, rtol=0)
    cpu, gpu = engines(seeded_model(replace(TINY, arch=arch)), controls=controls)
    played = [(cpu.step(bar), gpu.step(bar)) for bar in piano_bars(24, seed=1)]
    different = np.mean([np.mean((a > 0) != (b > 0)) for a, b in played])
    assert different <= CELLS_DIFFERENT_AT_MOST, different


@pytest.mark.cuda
def test_the_graph_replays_what_the_same_code_computes_kernel_by_kernel() -> None:
    """Graph against eager on the same GPU, through what changes between bars: the predicted piano
    skipped and asked for, a style switched on, a reset, a warmup in between, a new seed."""
    model = seeded_model(replace(TINY, arch="context"))
    styles = {"ref": style_bank(model)}
    graphed = BandEngine(copy.deepcopy(model), styles, "cuda", cuda_graph=True, controls=Controls(seed=2))
    eager = BandEngine(copy.deepcopy(model), styles, "cuda", cuda_graph=False, controls=Controls(seed=2))
    for i, bar in enumerate(piano_bars(40, seed=2)):
        for engine in (graphed, eager):
            if i == 10:
                engine.set_controls(Controls(seed=2, style="ref", alpha=0.7))
            if i == 20:
                engine.reset()
                engine.warmup()
            if i == 30:
                engine.set_controls(Controls(seed=9))
        decode_piano = i % 3 != 0
        a, b = graphed.step(bar, decode_piano=decode_piano), eager.step(bar, decode_piano=decode_piano)
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"bar {i}")
        if not decode_piano:
            np.testing.assert_allclose(graphed.predicted_piano(), eager.predicted_piano(), atol=1e-6)
    assert {key[1] for key in graphed._graphs} == {False, True}  # both captured: plain and styled


@pytest.mark.cuda
def test_the_shipped_model_on_cuda_matches_the_cpu(tmp_path) -> None:
    from models.checkpoint import DEFAULT_MODEL_DIR

    model = load_band_model(DEFAULT_MODEL_DIR)
    cpu, gpu = (BandEngine(copy.deepcopy(model), device=d, weights="float32", controls=Controls(seed=4))
                for d in ("cpu", "cuda"))
    for bar in piano_bars(16, seed=3):
        np.testing.assert_allclose(gpu._decode_next(torch.from_numpy(bar)), cpu._decode_next(torch.from_numpy(bar)),
                                   atol=PROBABILITY_ATOL, rtol=0)
