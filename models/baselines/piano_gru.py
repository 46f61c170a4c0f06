"""The article's GRU next-note model: a GRU over the piano's 128 cells, one step at a time, and
the band that follows its prediction.

The article's GRU generates piano only; it has no band of its own. To stand behind the same
`step` as the other systems, its predicted piano bar is voiced by the CNN pair's conditional
HarmonyCNN (models.baselines.cnn: next piano bar + a part's last bar -> the part's next bar),
trained in the same run on the same pairs. So this system is "the CNN pair with a GRU in place
of MelodyCNN": against `cnn` it isolates what the melody model changes, and the band is a learned
model's output at harmony 0 rather than a rule's (the shared key lock / chord follow still apply at
harmony 1 / 2, as for every system).

Bar t+1 from bars <= t, as the multi-instrument GRU (models.baselines.gru): the played piano bar t
is fed teacher-forced from the kept state, then 32 piano steps are generated from a copy. noise_sd
is the piano's sampling temperature (models.baselines.common); the HarmonyCNN is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from models.bars import BAND, N_PITCHES, STEPS_PER_BAR
from models.baselines.cnn import HarmonyCNN
from models.baselines.configs import config_from_dict
from models.baselines.gru import StepGRU, bar_frames, generate_bar
from models.controls import Controls
from models.engine import BarEngine

ARCH = "piano_gru"
NOISE = "the sampling temperature of the generated piano's cells (0: greedy); the HarmonyCNN is deterministic"
LIMITS = {"hidden": (1, 4096), "layers": (1, 4), "channels": (1, 1024), "harmony_hidden": (1, 4096)}


@dataclass(frozen=True)
class Config:
    arch: str = ARCH
    hidden: int = 256  # the GRU
    layers: int = 1
    channels: tuple[int, int, int] = (16, 32, 128)  # the HarmonyCNN, as models.baselines.cnn's
    harmony_hidden: int = 256

    def to_dict(self) -> dict:
        return {"arch": self.arch, "hidden": self.hidden, "layers": self.layers, "channels": list(self.channels),
                "harmony_hidden": self.harmony_hidden}

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        return config_from_dict(cls, values, LIMITS)


class Network(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.rnn = StepGRU(1, config.hidden, config.layers)
        self.harmony = HarmonyCNN(config.channels, config.harmony_hidden)


class Engine(BarEngine):
    """The piano GRU and the HarmonyCNN behind `step` (see the module's docstring)."""

    def __init__(self, network: Network, thresholds: list[float], device: str | torch.device = "cpu",
                 controls: Controls | None = None, decode_piano: bool = True) -> None:
        self.network = network.to(device).eval()
        super().__init__(thresholds, None, device, controls, decode_piano)

    def _reset_stream(self) -> None:
        self.state: torch.Tensor | None = None  # the GRU's state after the last played bar
        self.previous = torch.zeros(len(BAND), STEPS_PER_BAR, N_PITCHES, device=self.device)  # band bar t, on/off
        self.piano_values = np.zeros((1, STEPS_PER_BAR, N_PITCHES), np.float32)

    def _stream_state(self) -> object:
        return self.state, self.previous.clone(), self.piano_values.copy()

    def _restore_stream_state(self, state: object) -> None:
        self.state, self.previous, self.piano_values = state  # type: ignore[misc]

    def _decode_predicted_piano(self) -> np.ndarray:
        return self.piano_values.copy()

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        net = self.network
        logits, self.state = net.rnn(bar_frames(piano_bar.to(self.device)[None, None]), 0, self.state)
        thresholds = torch.as_tensor(self._thresholds, dtype=logits.dtype, device=self.device)
        values, frames = generate_bar(net.rnn, self.state, logits[:, -1], thresholds[:1], self.controls.noise_sd,
                                      self.generator)  # (1, 1, 32, 128), (1, 32, 128)
        band = torch.sigmoid(net.harmony.next_band(frames, self.previous.unsqueeze(0)))[0]  # (4, 32, 128)
        self.previous = (band > thresholds[1:, None, None]).float()
        self.piano_values = values[0].cpu().numpy()
        return torch.cat([values[0], band]).cpu().numpy()[first:]
