"""DCGAN baseline: the next bar's five parts drawn from noise and the piano bar just played.

The article tried a DCGAN over bars and reports mode collapse; this is that system as a bar engine.
Generator: an encoding of piano bar t (the VAE encoder's conv shape: stride = kernel, 32x128 ->
8x32 -> 2x8 -> 1x1) joined with noise z, then the mirrored transposed convs -> (5, 32, 128) cell
probabilities of bar t+1 (predicted piano + band). Discriminator (training only): (piano bar t,
bar t+1) as 6 channels -> real/fake logit. DCGAN recipe: batchnorm, ReLU in the generator, leaky
ReLU in the discriminator, no batchnorm on the discriminator's input layer.
At play, z ~ N(0, noise_sd^2): noise_sd 1 is the training distribution, lower values draw nearer
the generator's mode (the truncation trick), so the band's "adventurous" knob keeps its meaning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.baselines.configs import config_from_dict
from models.controls import Controls
from models.engine import BarEngine

ARCH = "dcgan"
NOISE = "sd of the generator's noise z (1 = its training distribution, lower = nearer its mode)"
LIMITS = {"noise": (1, 512), "channels": (1, 1024), "features": (1, 1024)}


@dataclass(frozen=True)
class Config:
    arch: str = ARCH
    noise: int = 32  # size of z
    channels: tuple[int, int, int] = (32, 64, 128)  # conv widths, as the VAEs' (64, 128, 256) halved
    features: int = 64  # size of the piano bar's encoding

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        return config_from_dict(cls, values, LIMITS)


def _down(c_in: int, channels: tuple[int, int, int], norm_first: bool, act: type[nn.Module]) -> nn.Sequential:
    """(B, c_in, 32, 128) -> (B, c3): the VAE encoder's three non-overlapping convs."""
    c1, c2, c3 = channels
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 4, stride=4), *([nn.BatchNorm2d(c1)] if norm_first else []), act(),  # (B, c1, 8, 32)
        nn.Conv2d(c1, c2, 4, stride=4), nn.BatchNorm2d(c2), act(),  # (B, c2, 2, 8)
        nn.Conv2d(c2, c3, (2, 8), stride=(2, 8)), nn.BatchNorm2d(c3), act(),  # (B, c3, 1, 1)
        nn.Flatten(),
    )


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)  # DCGAN's slope


class Network(nn.Module):
    """The generator: (piano bar t (B, 1, 32, 128), z (B, noise)) -> bar t+1 (B, 5, 32, 128) in [0, 1]."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.encoder = nn.Sequential(_down(1, config.channels, True, nn.ReLU),
                                     nn.Linear(c3, config.features), nn.ReLU())  # (B, features)
        self.project = nn.Sequential(nn.Linear(config.noise + config.features, c3), nn.BatchNorm1d(c3), nn.ReLU(),
                                     nn.Unflatten(1, (c3, 1, 1)))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, (2, 8), stride=(2, 8)), nn.BatchNorm2d(c2), nn.ReLU(),  # (B, c2, 2, 8)
            nn.ConvTranspose2d(c2, c1, 4, stride=4), nn.BatchNorm2d(c1), nn.ReLU(),  # (B, c1, 8, 32)
            nn.ConvTranspose2d(c1, len(INSTRUMENTS), 4, stride=4), nn.Sigmoid(),  # (B, 5, 32, 128)
        )

    def forward(self, piano: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(torch.cat([z, self.encoder(piano)], dim=1)))


class Discriminator(nn.Module):
    """(piano bar t (B, 1, 32, 128), bar t+1 (B, 5, 32, 128)) -> (B,) logit that the pair is real."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.body = _down(1 + len(INSTRUMENTS), config.channels, False, _LeakyReLU)
        self.head = nn.Linear(config.channels[2], 1)

    def forward(self, piano: torch.Tensor, bar: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([piano, bar], dim=1))).squeeze(1)


def sample_noise(n: int, config: Config, sd: float, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """(n, noise) z ~ N(0, sd^2), drawn from `generator` so a seed fixes the bars."""
    return torch.randn((n, config.noise), generator=generator, device=device) * sd


class Engine(BarEngine):
    """The generator behind `step`: each bar a fresh z; no memory but the last predicted piano."""

    def __init__(self, network: Network, thresholds: list[float], device: str | torch.device = "cpu",
                 controls: Controls | None = None, decode_piano: bool = True) -> None:
        self.network = network.to(device).eval()  # eval: batchnorm uses the running statistics
        super().__init__(thresholds, None, device, controls, decode_piano)

    def _reset_stream(self) -> None:
        self._last_piano = np.zeros((1, STEPS_PER_BAR, N_PITCHES), np.float32)  # (1, 32, 128)

    def _stream_state(self) -> object:
        return self._last_piano

    def _restore_stream_state(self, state: object) -> None:
        self._last_piano = state  # type: ignore[assignment]

    def _decode_predicted_piano(self) -> np.ndarray:
        return self._last_piano

    @torch.inference_mode()
    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        z = sample_noise(1, self.network.config, self.controls.noise_sd, self.generator, self.device)
        out = self.network(piano_bar.to(self.device)[None, None], z)[0].cpu().numpy()  # (5, 32, 128)
        self._last_piano = out[:1]
        return out[first:]
