"""The article's CNN pair: MelodyCNN (piano bar t -> piano bar t+1) and a conditional HarmonyCNN
(the next piano bar + an instrument's bar t -> that instrument's bar t+1), as a bar engine.

Each is the article's shape, 3 conv, 3 dense, 3 deconv layers over the 32 x 128 roll, cells on/off
(velocity comes from the pianist, as for every system), plus one addition: a 1 x 1 conv skip from
the input rolls to the output logits. The convs end at 1 x 1, and without the skip the trained
HarmonyCNN predicted a part's next bar worse than copying its last bar does (validation cell F1
0.10-0.26 against 0.30-0.79), and playing, fed its own bars, it fell silent or flooded. One HarmonyCNN serves all four
band parts, told which one by a one-hot instrument code that joins its dense layers: harmony with
the piano (which pitches fit) is the same knowledge for every part, so one network learns it from
four times the pairs at a quarter of the parameters, while the code lets register and rhythm
differ per part; it is also one batched call per bar instead of four.

Noise: the article's CNN has none (it reports near-identical outputs for different starts). So that
seeds can differ at all, Gaussian noise of sd `noise_sd` is added where VAE-NN adds it, on the code
of the played piano bar: MelodyCNN's bottleneck, in units of each code unit's spread over the
training bars (`code_scale`), so noise_sd 1 moves every unit by one typical training deviation as
it moves VAE-NN's unit-prior latent by one. The HarmonyCNN is deterministic given its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from models.bars import BAND, N_PITCHES, STEPS_PER_BAR
from models.baselines.common import on_off
from models.baselines.configs import config_from_dict
from models.controls import Controls
from models.engine import BarEngine

ARCH = "cnn"
NOISE = ("sd of Gaussian noise on MelodyCNN's bottleneck code of the played bar, in units of each code "
         "unit's spread over the training bars (the article's CNN pair has none)")  # for reports
LIMITS = {"channels": (1, 1024), "hidden": (1, 4096)}  # sane sizes, checked before allocation
# The article's VAE geometry (SEED_NOTES): kernel = stride, so the convs are cheap on a CPU and
# 32 x 128 -> 8 x 32 -> 2 x 8 -> 1 x 1; the deconvs mirror them.
KERNELS = ((4, 4), (4, 4), (2, 8))
CARRY_LOGIT = 4.0  # the skip's start: logit 0 where the last roll sounded, -4 elsewhere


@dataclass(frozen=True)
class Config:
    arch: str = ARCH
    channels: tuple[int, int, int] = (16, 32, 128)  # conv widths (deconvs mirror them)
    hidden: int = 256  # dense width; MelodyCNN's bottleneck is where the noise goes

    def to_dict(self) -> dict:
        return {"arch": self.arch, "channels": list(self.channels), "hidden": self.hidden}

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        return config_from_dict(cls, values, LIMITS)


class RollCNN(nn.Module):
    """(B, C, 32, 128) rolls -> (B, 32, 128) logits of the next bar: 3 conv, 3 dense, 3 deconv.
    `condition` extra inputs (the instrument code) join the second dense layer."""

    def __init__(self, inputs: int, channels: tuple[int, int, int], hidden: int, condition: int = 0) -> None:
        super().__init__()
        c1, c2, c3 = channels
        k1, k2, k3 = KERNELS
        self.convs = nn.Sequential(nn.Conv2d(inputs, c1, k1, k1), nn.ReLU(), nn.Conv2d(c1, c2, k2, k2), nn.ReLU(),
                                   nn.Conv2d(c2, c3, k3, k3), nn.ReLU())
        self.dense1 = nn.Linear(c3, hidden)  # the convs end at 1 x 1
        self.dense2 = nn.Linear(hidden + condition, hidden)
        self.dense3 = nn.Linear(hidden, c3)
        self.deconvs = nn.Sequential(nn.ConvTranspose2d(c3, c2, k3, k3), nn.ReLU(), nn.ConvTranspose2d(c2, c1, k2, k2),
                                     nn.ReLU(), nn.ConvTranspose2d(c1, 1, k1, k1))
        # input rolls -> output cell by cell (one map per condition value: per part), added to the
        # deconvs' logits: without it the 1 x 1 bottleneck cannot even carry a part's last bar over
        self.skip = nn.Conv2d(inputs, max(1, condition), kernel_size=1)
        self._start_as_a_copy()
        # (hidden,) spread of each bottleneck unit over training bars: the unit of the noise
        self.register_buffer("code_scale", torch.ones(hidden))

    @torch.no_grad()
    def _start_as_a_copy(self) -> None:
        """Untrained, the net repeats its last input roll (the part's or the piano's last bar; p 0.5
        where it sounded, 0.02 elsewhere) and learns the change from there, as VAE-NN's MelodyNN
        starts from the last latent: the deconv path's last layer starts at zero."""
        self.skip.weight.zero_()
        self.skip.weight[:, -1] = CARRY_LOGIT
        self.skip.bias.fill_(-CARRY_LOGIT)
        last = self.deconvs[-1]
        last.weight.zero_()
        last.bias.zero_()

    def encode(self, rolls: torch.Tensor) -> torch.Tensor:
        """(B, C, 32, 128) -> (B, hidden) bottleneck code."""
        return torch.relu(self.dense1(self.convs(rolls).flatten(1)))

    def decode(self, code: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(B, hidden) code (+ (B, condition)) -> (B, 32, 128) logits of the deconv path."""
        if condition is not None:
            code = torch.cat([code, condition], dim=1)
        hidden = torch.relu(self.dense3(torch.relu(self.dense2(code))))
        return self.deconvs(hidden[:, :, None, None]).squeeze(1)

    def carried(self, rolls: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 32, 128) logits of the skip path: each cell from the same cell of the inputs."""
        maps = self.skip(rolls)  # (B, max(1, condition), 32, 128)
        return maps[:, 0] if condition is None else (maps * condition[:, :, None, None]).sum(1)

    def forward(self, rolls: torch.Tensor, condition: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        code = self.encode(rolls)
        if noise is not None:  # (B, hidden) standard normal times noise_sd
            code = code + noise * self.code_scale
        return self.decode(code, condition) + self.carried(rolls, condition)


class HarmonyCNN(RollCNN):
    """The conditional HarmonyCNN: [next piano bar, a part's bar t] + the part's one-hot code ->
    logits of the part's bar t+1."""

    def __init__(self, channels: tuple[int, int, int], hidden: int) -> None:
        super().__init__(2, channels, hidden, condition=len(BAND))

    def next_band(self, next_piano: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """(B, 32, 128) on/off piano bar t+1 and (B, 4, 32, 128) on/off band bar t ->
        (B, 4, 32, 128) logits of the band's bar t+1, the four parts in one batch."""
        batch, parts = previous.shape[:2]
        pianos = next_piano.unsqueeze(1).expand(-1, parts, -1, -1)
        rolls = torch.stack([pianos, previous], dim=2).flatten(0, 1)  # (B * 4, 2, 32, 128)
        codes = torch.eye(parts, device=previous.device).repeat(batch, 1)  # (B * 4, 4) which part
        return self(rolls, codes).view(batch, parts, STEPS_PER_BAR, N_PITCHES)


class Network(nn.Module):
    """MelodyCNN and the conditional HarmonyCNN."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.melody = RollCNN(1, config.channels, config.hidden)
        self.harmony = HarmonyCNN(config.channels, config.hidden)

    def next_piano(self, piano: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 32, 128) on/off piano bar t -> (B, 32, 128) logits of piano bar t+1."""
        return self.melody(piano.unsqueeze(1), noise=noise)


class Engine(BarEngine):
    """The CNN pair behind `step`: MelodyCNN's next piano (noise on its code), binarised as the
    engine plays it, then the HarmonyCNN per part from it and the part's last bar."""

    def __init__(self, network: Network, thresholds: list[float], device: str | torch.device = "cpu",
                 controls: Controls | None = None, decode_piano: bool = True) -> None:
        self.network = network.to(device).eval()
        super().__init__(thresholds, None, device, controls, decode_piano)

    def _reset_stream(self) -> None:
        # (4, 32, 128) on/off: what each part played last; silence before the band has played
        self.previous = torch.zeros(len(BAND), STEPS_PER_BAR, N_PITCHES, device=self.device)
        self.piano_probs = np.zeros((1, STEPS_PER_BAR, N_PITCHES), np.float32)

    def _stream_state(self) -> object:
        return self.previous.clone(), self.piano_probs.copy()

    def _restore_stream_state(self, state: object) -> None:
        self.previous, self.piano_probs = state  # type: ignore[misc]

    def _decode_predicted_piano(self) -> np.ndarray:
        return self.piano_probs.copy()

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        net, hidden = self.network, self.network.config.hidden
        noise = torch.randn((1, hidden), generator=self.generator, device=self.device) * self.controls.noise_sd
        piano = torch.sigmoid(net.next_piano(on_off(piano_bar.to(self.device)).unsqueeze(0), noise))  # (1, 32, 128)
        self.piano_probs = piano.cpu().numpy()
        # the HarmonyCNN hears the predicted piano as the engine would play it (thresholds, retries)
        heard = torch.from_numpy(self._binarise_rows(self.piano_probs, np.array([0])) > 0).float().to(self.device)
        band = torch.sigmoid(net.harmony.next_band(heard, self.previous.unsqueeze(0)))[0]  # (4, 32, 128)
        thresholds = torch.as_tensor(self._thresholds[1:], dtype=band.dtype, device=self.device)
        self.previous = (band > thresholds[:, None, None]).float()
        out = torch.cat([piano, band]).cpu().numpy()  # (5, 32, 128)
        return out[first:]
