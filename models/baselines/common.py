"""Pieces the article's baselines share: on/off rolls, the step position, and the sampling rule.

Sampling rule (the GRUs): a cell's decision value is sigmoid(logit + T * e) with e drawn from the
standard logistic distribution and T = the `noise_sd` control; the cell plays when that value is
above the instrument's threshold theta (the calibrated one, moved by density). That is Bernoulli
sampling at temperature T around the threshold: P(on) = sigmoid((logit - logit(theta)) / T), and
T = 0 is greedy (deterministic). The value itself is what `_decode_next` returns, so the shared
post-processing (models.engine.BarEngine) keeps exactly the cells the network was fed back.
"""
from __future__ import annotations

import torch

from models.bars import STEPS_PER_BAR


def on_off(bars: torch.Tensor) -> torch.Tensor:
    """Velocities (any shape) -> 1.0 where a cell sounds: the baselines read rolls without velocity,
    since the band's velocities follow the pianist anyway (models.engine)."""
    return (bars > 0).float()


def step_positions(device: torch.device | str = "cpu") -> torch.Tensor:
    """(32, 32) one-hot of the step within the bar: a GRU reads where in the bar it is, so a
    downbeat is not a guess from note lengths."""
    return torch.eye(STEPS_PER_BAR, device=device)


def logistic_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard logistic samples: log(u) - log(1 - u), u uniform in (0, 1)."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-6, 1 - 1e-6)
    return u.log() - (-u).log1p()


def decision_values(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """sigmoid(logits + T * logistic noise): above a threshold theta with probability
    sigmoid((logit - logit(theta)) / T); T = 0 or no generator: sigmoid(logits), greedy."""
    if temperature <= 0 or generator is None:
        return torch.sigmoid(logits)
    return torch.sigmoid(logits + temperature * logistic_noise(tuple(logits.shape), generator, logits.device))
