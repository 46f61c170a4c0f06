"""The VAE-NN networks of Tham & Kim (2021): a VAE per instrument, MelodyNN, ConditionalNNs.

Pure torch modules, no I/O. Shapes: a batch of bars of one instrument is (B, 1, 32, 128),
time x pitch; a latent is (B, K).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.bars import BAND, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR


@dataclass(frozen=True)
class BandConfig:
    latent: int = 16  # K; the article tried 8/16/32/64 and used 16
    channels: tuple[int, int, int] = (64, 128, 256)  # VAE conv widths, article's values
    hidden: int = 128  # MelodyNN / ConditionalNN width
    dropout: float = 0.2  # MelodyNN only, as in the article
    # Pixel likelihood of the VAEs: "gaussian" (velocity/127, learned scalar variance: the
    # article's code copies) or "bernoulli" (note on/off; velocity then follows the pianist).
    likelihood: str = "gaussian"
    # "article": MelodyNN sees the last piano latent, ConditionalNNs [next piano, previous] (the
    # paper). "context": MelodyNN sees the last `context` piano latents and the piano's chroma and
    # predicts a change from the last latent; ConditionalNNs also get the chroma, so harmony does
    # not have to pass through a 16-number latent (issue 6).
    arch: str = "article"
    context: int = 4  # piano bars MelodyNN sees ("context" only)
    # What the engine uses as the next piano latent: "network" (MelodyNN), or, when training found
    # MelodyNN no better on validation, "current" (the last latent) or "mean" (the mean latent)
    melody_source: str = "network"

    def __post_init__(self) -> None:
        if self.latent not in (8, 16, 32, 64):
            raise ValueError(f"latent must be 8, 16, 32 or 64, got {self.latent}")
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be three positive widths, got {self.channels}")
        if self.likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"likelihood must be gaussian or bernoulli, got {self.likelihood!r}")
        if self.hidden < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"bad hidden={self.hidden} or dropout={self.dropout}")
        if self.arch not in ("article", "context"):
            raise ValueError(f"arch must be article or context, got {self.arch!r}")
        if not 1 <= self.context <= 16:
            raise ValueError(f"context must be 1-16 bars, got {self.context}")
        if self.melody_source not in ("network", "current", "mean"):
            raise ValueError(f"melody_source must be network, current or mean, got {self.melody_source!r}")

    @property
    def melody_inputs(self) -> int:
        return self.latent if self.arch == "article" else self.context * self.latent + N_FEATURES

    @property
    def conditional_inputs(self) -> int:
        return 2 * self.latent if self.arch == "article" else 2 * self.latent + N_FEATURES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BandConfig":
        keys = ("latent", "channels", "hidden", "dropout", "likelihood", "arch", "context", "melody_source")
        known = {k: values[k] for k in keys if k in values}
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


class InstrumentVAE(nn.Module):
    """Conv VAE over one instrument's bar; Gaussian likelihood with a learned scalar variance."""

    def __init__(self, config: BandConfig) -> None:
        super().__init__()
        c1, c2, c3 = config.channels
        self.likelihood = config.likelihood
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=4), nn.ReLU(),  # (B, c1, 8, 32)
            nn.Conv2d(c1, c2, 4, stride=4), nn.ReLU(),  # (B, c2, 2, 8)
            nn.Conv2d(c2, c3, (2, 8), stride=(2, 8)), nn.ReLU(),  # (B, c3, 1, 1)
            nn.Flatten(),
        )
        self.to_posterior = nn.Linear(c3, config.latent + 1)  # K means + one shared log-sigma
        self.from_latent = nn.Linear(config.latent, c3)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Unflatten(1, (c3, 1, 1)),
            nn.ConvTranspose2d(c3, c2, (2, 8), stride=(2, 8)), nn.ReLU(),  # (B, c2, 2, 8)
            nn.ConvTranspose2d(c2, c1, 4, stride=4), nn.ReLU(),  # (B, c1, 8, 32)
            nn.ConvTranspose2d(c1, 1, 4, stride=4),  # (B, 1, 32, 128)
        )
        # log sd of the pixel likelihood, set to its optimum each training batch (see loss)
        self.log_sigma_x = nn.Parameter(torch.tensor(math.log(0.3)), requires_grad=False)

    def encode(self, bars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 32, 128) -> means (B, K), log-sigma (B, 1)."""
        out = self.to_posterior(self.encoder(bars))
        return out[:, :-1], out[:, -1:].clamp(-8.0, 4.0)

    def decode_logits(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(latent))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, K) -> bar means in [0, 1], (B, 1, 32, 128)."""
        return torch.sigmoid(self.decode_logits(latent))

    def forward(self, bars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative ELBO per bar, mean over the batch; also the reconstruction."""
        losses, recon = self.bar_losses(bars)
        return losses.mean(), recon

    def bar_losses(self, bars: torch.Tensor, noise: torch.Tensor | None = None,
                   batch_mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative ELBO of each bar (B,) and the reconstruction (B, 1, 32, 128).

        noise: the reparameterisation's (B, K) standard normal draw (drawn here when None).
        batch_mean: how the batch's per-bar squared errors are averaged for the pixel variance.
        A distributed run passes both, so that every rank's part of a batch sees the noise and the
        variance one process would have used for the whole batch (training/distributed.py).
        """
        mean, log_sigma = self.encode(bars)
        noise = torch.randn_like(mean) if noise is None else noise
        logits = self.decode_logits(mean + torch.exp(log_sigma) * noise)
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, (bars > 0).float(), reduction="none").flatten(1).sum(1)
            return nll + self.kl(mean, log_sigma), torch.sigmoid(logits)
        recon = torch.sigmoid(logits)
        return self.gaussian_losses(bars, recon, mean, log_sigma, batch_mean), recon

    @staticmethod
    def kl(mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per bar; beta = 1."""
        return 0.5 * (mean.pow(2) + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(1)

    def gaussian_losses(self, bars: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor,
                        log_sigma: torch.Tensor,
                        batch_mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean) -> torch.Tensor:
        """Negative ELBO per bar, beta = 1, with the pixel variance at its optimum for this batch.

        The learned scalar variance is set in closed form to the batch's mean squared error
        (the "optimal sigma" of sigma-VAE, Rybkin et al. 2021) instead of by gradient steps: on
        sparse piano rolls a gradient-learned sigma lags far behind, and the decoder settles on
        silence before the reconstruction term outweighs the KL.
        """
        n_cells = bars[0].numel()
        sq_err = (bars - recon).pow(2).flatten(1).sum(1)
        if self.training:
            with torch.no_grad():
                self.log_sigma_x.copy_(0.5 * torch.log(batch_mean(sq_err.detach()) / n_cells).clamp(min=-12.0))
        nll = 0.5 * sq_err * torch.exp(-2 * self.log_sigma_x) + n_cells * self.log_sigma_x
        return nll + self.kl(mean, log_sigma)


N_FEATURES = 24  # the piano's chroma over its last bar (12) and its last beat (12)
STEPS_PER_BEAT = STEPS_PER_BAR // 4


def piano_features(bars: torch.Tensor) -> torch.Tensor:
    """(B, 32, 128) piano bars -> (B, 24): pitch-class weight over the bar and over its last beat,
    each scaled to a maximum of 1 (0 for silence). What the pianist's harmony is, explicitly."""
    pitch_class = torch.arange(N_PITCHES, device=bars.device) % 12
    to_chroma = torch.zeros(N_PITCHES, 12, device=bars.device, dtype=bars.dtype)
    to_chroma[torch.arange(N_PITCHES, device=bars.device), pitch_class] = 1.0
    on = (bars > 0).to(bars.dtype)
    parts = [on.sum(1) @ to_chroma, on[:, -STEPS_PER_BEAT:].sum(1) @ to_chroma]  # (B, 12) each
    return torch.cat([p / p.amax(1, keepdim=True).clamp(min=1.0) for p in parts], dim=1)


_PITCH_TO_CHROMA = np.eye(12, dtype=np.float32)[np.arange(N_PITCHES) % 12]  # (128, 12)


def piano_features_numpy(bar: np.ndarray) -> np.ndarray:
    """piano_features of one (32, 128) bar in numpy -> (24,) float32: what the engine packs beside the
    played bar on the host (a few microseconds, against ~12 small torch ops on the device)."""
    on = bar > 0
    parts = np.stack([on.sum(0), on[-STEPS_PER_BEAT:].sum(0)]).astype(np.float32) @ _PITCH_TO_CHROMA  # (2, 12)
    return (parts / np.maximum(parts.max(1, keepdims=True), 1.0)).reshape(-1)


class MelodyNN(nn.Module):
    """Piano latent of bar t -> piano latent of bar t+1 (article); with arch "context", the last
    `context` latents and the chroma features -> a change from the last latent (so an untrained
    net starts at the "current latent" baseline instead of below it)."""

    def __init__(self, config: BandConfig) -> None:
        super().__init__()
        k, h = config.latent, config.hidden
        self.residual = config.arch == "context"
        self.latest = slice((config.context - 1) * k, config.context * k)  # the last latent in the input
        self.net = nn.Sequential(
            nn.Linear(config.melody_inputs, h), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """article: (B, K); context: (B, context * K + 24) = [oldest .. latest latent, features]."""
        out = self.net(inputs)
        return out + inputs[..., self.latest] if self.residual else out


class ConditionalNN(nn.Module):
    """[next piano latent, the instrument's previous latent (, piano features)] -> its next latent."""

    def __init__(self, config: BandConfig) -> None:
        super().__init__()
        k, h = config.latent, config.hidden
        self.net = nn.Sequential(nn.Linear(config.conditional_inputs, h), nn.ReLU(), nn.Linear(h, k))

    def forward(self, next_piano: torch.Tensor, previous: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        parts = [next_piano, previous] + ([features] if features is not None else [])
        return self.net(torch.cat(parts, dim=-1))


class BandModel(nn.Module):
    """All the networks of one band, so one checkpoint holds a consistent set."""

    def __init__(self, config: BandConfig) -> None:
        super().__init__()
        self.config = config
        self.vaes = nn.ModuleDict({name: InstrumentVAE(config) for name in INSTRUMENTS})
        self.melody = MelodyNN(config)
        self.conditionals = nn.ModuleDict({name: ConditionalNN(config) for name in BAND})
        # Binarisation threshold per instrument at density 0.5, calibrated after training so the
        # band plays as many notes as the data has (a Gaussian decoder blurs sparse parts, so
        # one fixed 0.2 silences bass and guitar); the article's 0.2 until then.
        self.register_buffer("thresholds", torch.full((len(INSTRUMENTS),), 0.2))
        # Each instrument's "previous latent" before the band has played a bar: the mean latent
        # of the training bars (set at calibration), a typical bar rather than the prior's zero.
        self.register_buffer("initial_latents", torch.zeros(len(INSTRUMENTS), config.latent))

    def encode_means(self, bars: torch.Tensor) -> torch.Tensor:
        """(B, 5, 32, 128) -> latent means (B, 5, K), one VAE per instrument."""
        means = [self.vaes[name].encode(bars[:, i : i + 1])[0] for i, name in enumerate(INSTRUMENTS)]
        return torch.stack(means, dim=1)

    def decode_all(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 5, K) -> (B, 5, 32, 128)."""
        bars = [self.vaes[name].decode(latents[:, i]) for i, name in enumerate(INSTRUMENTS)]
        return torch.cat(bars, dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


BAR_SHAPE = (STEPS_PER_BAR, N_PITCHES)
