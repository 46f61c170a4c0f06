"""The article's multi-instrument RNN: a GRU over the flattened 5 x 128 roll, one step at a time
(32 steps per bar), predicting the next step of all five instruments from every step before it.

As a bar engine it answers bar t+1 from bars <= t: the played piano bar t and the band's own bar
t (what it generated last) are fed in teacher-forced, which moves the kept state to the end of bar
t; from a copy of that state it then generates the 32 steps of bar t+1 for all five parts, piano
included (it cannot know what the pianist will play), each step fed back. The next call feeds the
real piano of bar t+1 from the kept state, so a wrong guess about the piano never sticks.

`noise_sd` is the sampling temperature (models.baselines.common): a cell of the generated bar is
on with probability sigmoid((logit - logit(threshold)) / noise_sd), thresholds calibrated by
training so the band plays the data's note density; noise_sd 0 generates greedily.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.baselines.common import decision_values, on_off, step_positions
from models.baselines.configs import config_from_dict
from models.controls import Controls
from models.engine import BarEngine

ARCH = "gru"
NOISE = "the sampling temperature of every generated cell around its calibrated threshold (0: greedy)"
LIMITS = {"hidden": (1, 4096), "layers": (1, 4)}


@dataclass(frozen=True)
class Config:
    arch: str = ARCH
    hidden: int = 256
    layers: int = 1

    def to_dict(self) -> dict:
        return {"arch": self.arch, "hidden": self.hidden, "layers": self.layers}

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        return config_from_dict(cls, values, LIMITS)


class StepGRU(nn.Module):
    """Frames of `parts` x 128 on/off cells, plus the step's position in the bar -> logits of the
    next frame. Shared by the multi-instrument GRU (5 parts) and the piano GRU (1 part)."""

    def __init__(self, parts: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.parts = parts
        self.gru = nn.GRU(parts * N_PITCHES + STEPS_PER_BAR, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, parts * N_PITCHES)

    def forward(self, frames: torch.Tensor, first_step: int = 0, state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, parts * 128) frames starting at bar step `first_step` -> ((B, S, parts * 128)
        logits of each following frame, state)."""
        steps = frames.shape[1]
        where = step_positions(frames.device)[(torch.arange(steps, device=frames.device) + first_step) % STEPS_PER_BAR]
        inputs = torch.cat([frames, where.expand(frames.shape[0], -1, -1)], dim=2)
        hidden, state = self.gru(inputs, state)
        return self.out(hidden), state


def bar_frames(bars: torch.Tensor) -> torch.Tensor:
    """(B, parts, 32, 128) bars -> (B, 32, parts * 128) on/off frames, one per step."""
    return on_off(bars).permute(0, 2, 1, 3).flatten(2)


def frames_bar(frames: torch.Tensor, parts: int) -> torch.Tensor:
    """(B, 32, parts * 128) -> (B, parts, 32, 128)."""
    return frames.view(frames.shape[0], STEPS_PER_BAR, parts, N_PITCHES).permute(0, 2, 1, 3)


def generate_bar(net: StepGRU, state: torch.Tensor, logits: torch.Tensor, thresholds: torch.Tensor,
                 temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next 32 steps from `state` (after the bar just fed) and `logits` (B, parts * 128) of its
    first step; thresholds (parts,). Returns (B, parts, 32, 128) decision values and the generated
    on/off frames (B, 32, parts * 128) fed back along the way. The state passed in is not changed."""
    cut = thresholds.repeat_interleave(N_PITCHES)  # (parts * 128,)
    values, frames = [], []
    for step in range(STEPS_PER_BAR):
        value = decision_values(logits, temperature, generator)  # (B, parts * 128)
        frame = (value > cut).float()
        values.append(value)
        frames.append(frame)
        if step + 1 < STEPS_PER_BAR:
            out, state = net(frame.unsqueeze(1), step, state)
            logits = out[:, 0]
    frames_t = torch.stack(frames, dim=1)
    return frames_bar(torch.stack(values, dim=1), net.parts), frames_t


class Network(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.rnn = StepGRU(len(INSTRUMENTS), config.hidden, config.layers)


class Engine(BarEngine):
    """The multi-instrument GRU behind `step` (see the module's docstring)."""

    def __init__(self, network: Network, thresholds: list[float], device: str | torch.device = "cpu",
                 controls: Controls | None = None, decode_piano: bool = True) -> None:
        self.network = network.to(device).eval()
        super().__init__(thresholds, None, device, controls, decode_piano)

    def _reset_stream(self) -> None:
        self.state: torch.Tensor | None = None  # the GRU's state after the last bar fed; None: zeros
        # (4, 32, 128) on/off: the band's bar as generated last; the count-in bar is silent
        self.band = torch.zeros(len(INSTRUMENTS) - 1, STEPS_PER_BAR, N_PITCHES, device=self.device)
        self.piano_values = np.zeros((1, STEPS_PER_BAR, N_PITCHES), np.float32)

    def _stream_state(self) -> object:
        return self.state, self.band.clone(), self.piano_values.copy()

    def _restore_stream_state(self, state: object) -> None:
        self.state, self.band, self.piano_values = state  # type: ignore[misc]

    def _decode_predicted_piano(self) -> np.ndarray:
        return self.piano_values.copy()

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        rnn = self.network.rnn
        played = torch.cat([piano_bar.to(self.device).unsqueeze(0), self.band])  # (5, 32, 128): bar t as heard
        logits, self.state = rnn(bar_frames(played.unsqueeze(0)), 0, self.state)
        thresholds = torch.as_tensor(self._thresholds, dtype=logits.dtype, device=self.device)
        values, frames = generate_bar(rnn, self.state, logits[:, -1], thresholds, self.controls.noise_sd,
                                      self.generator)
        self.band = frames_bar(frames, len(INSTRUMENTS))[0, 1:]
        out = values[0].cpu().numpy()  # (5, 32, 128)
        self.piano_values = out[:1].copy()
        return out[first:]
