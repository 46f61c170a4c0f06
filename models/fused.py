"""The inference path of a BandModel as a few batched matrix products, for one bar at a time.

Every convolution of the VAEs has stride == kernel, so its patches never overlap and each layer
is exactly a matrix product over patches. Batching the five decoders (and the four
ConditionalNNs) into `bmm`s turns ~40 small conv/linear calls into ~12 ops: a bar costs well
under a millisecond on a laptop CPU instead of ~4 ms through nn.Conv2d. Tests check it against
the modules to float precision.
"""
from __future__ import annotations

import torch

from models.bars import BAND, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.networks import BandModel

# (kernel h, kernel w) of the three encoder convs; the decoder mirrors them
KERNELS = ((4, 4), (4, 4), (2, 8))


def _patches(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """(C, H, W) -> (H/kh * W/kw, C*kh*kw), patch vectors in Conv2d weight order (c, a, b)."""
    c, h, w = x.shape
    x = x.reshape(c, h // kh, kh, w // kw, kw).permute(1, 3, 0, 2, 4)
    return x.reshape((h // kh) * (w // kw), c * kh * kw)


class FusedBand:
    """Frozen copies of a model's weights laid out for batched one-bar inference."""

    def __init__(self, model: BandModel) -> None:
        params = {k: v.detach().float() for k, v in model.state_dict().items()}
        self.channels = model.config.channels
        self.encoder = self._encoder_weights(params, "vaes.piano.")
        self.decoder = [torch.stack(ws) for ws in zip(*(self._decoder_weights(params, f"vaes.{n}.") for n in INSTRUMENTS))]
        m = "melody.net."
        self.melody = [(params[f"{m}{i}.weight"].T.contiguous(), params[f"{m}{i}.bias"]) for i in (0, 3, 5)]
        self.melody_latest = model.melody.latest if model.melody.residual else None  # arch "context"
        self.conditional = [
            (torch.stack([params[f"conditionals.{n}.net.{i}.weight"].T for n in BAND]),
             torch.stack([params[f"conditionals.{n}.net.{i}.bias"] for n in BAND]).unsqueeze(1))
            for i in (0, 2)
        ]

    @staticmethod
    def _encoder_weights(params: dict, prefix: str) -> list[torch.Tensor]:
        weights = []
        for layer in (0, 2, 4):
            w = params[f"{prefix}encoder.{layer}.weight"]  # (out, in, kh, kw)
            weights += [w.reshape(w.shape[0], -1).T.contiguous(), params[f"{prefix}encoder.{layer}.bias"]]
        weights += [params[f"{prefix}to_posterior.weight"].T.contiguous(), params[f"{prefix}to_posterior.bias"]]
        return weights

    @staticmethod
    def _decoder_weights(params: dict, prefix: str) -> list[torch.Tensor]:
        weights = [params[f"{prefix}from_latent.weight"].T, params[f"{prefix}from_latent.bias"].unsqueeze(0)]
        w1, b1 = params[f"{prefix}decoder.2.weight"], params[f"{prefix}decoder.2.bias"]  # (c3, c2, 2, 8)
        weights += [w1.reshape(w1.shape[0], -1), b1.repeat_interleave(16).unsqueeze(0)]  # columns (c2, a, b)
        # columns ordered (i, j, c1) instead of ConvTranspose's (c1, i, j): the output then reshapes
        # straight into rows of 8x32 pixels for the last layer, with no transposing copy
        w2, b2 = params[f"{prefix}decoder.4.weight"], params[f"{prefix}decoder.4.bias"]  # (c2, c1, 4, 4)
        weights += [w2.permute(0, 2, 3, 1).reshape(w2.shape[0], -1), b2.repeat(16).unsqueeze(0)]
        w3, b3 = params[f"{prefix}decoder.6.weight"], params[f"{prefix}decoder.6.bias"]  # (c1, 1, 4, 4)
        weights += [w3.reshape(w3.shape[0], -1), b3.repeat(16).unsqueeze(0)]
        return weights

    def to(self, device: torch.device) -> "FusedBand":
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        self.encoder, self.decoder = move(self.encoder), move(self.decoder)
        self.melody = [tuple(move(pair)) for pair in self.melody]
        self.conditional = [tuple(move(pair)) for pair in self.conditional]
        return self

    def encode_piano(self, bar: torch.Tensor) -> torch.Tensor:
        """(32, 128) -> latent mean (K,)."""
        w1, b1, w2, b2, w3, b3, wp, bp = self.encoder
        c1, c2, _ = self.channels
        x = torch.relu(_patches(bar.unsqueeze(0), *KERNELS[0]) @ w1 + b1)  # (8*32, c1)
        x = x.T.reshape(c1, STEPS_PER_BAR // 4, N_PITCHES // 4)
        x = torch.relu(_patches(x, *KERNELS[1]) @ w2 + b2)  # (2*8, c2)
        x = x.T.reshape(c2, 2, 8)
        x = torch.relu(_patches(x, *KERNELS[2]) @ w3 + b3)  # (1, c3)
        return (x @ wp + bp)[0, :-1]

    def next_piano(self, inputs: torch.Tensor) -> torch.Tensor:
        """MelodyNN in eval mode (no dropout): (K,) -> (K,); arch "context": (context*K + 24,) -> (K,)."""
        (w1, b1), (w2, b2), (w3, b3) = self.melody
        out = torch.relu(torch.relu(inputs @ w1 + b1) @ w2 + b2) @ w3 + b3
        return out if self.melody_latest is None else out + inputs[self.melody_latest]

    def next_band(self, next_piano: torch.Tensor, previous: torch.Tensor,
                  features: torch.Tensor | None = None) -> torch.Tensor:
        """The four ConditionalNNs at once: (K,), (4, K)[, (24,)] -> (4, K)."""
        (w1, b1), (w2, b2) = self.conditional
        parts = [next_piano.expand(len(BAND), -1), previous]
        if features is not None:
            parts.append(features.expand(len(BAND), -1))
        x = torch.cat(parts, dim=1).unsqueeze(1)  # (4, 1, 2K[+24])
        return (torch.relu(torch.bmm(x, w1) + b1).bmm(w2) + b2).squeeze(1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(5, K) -> (5, 32, 128) in [0, 1], all five decoders at once."""
        wl, bl, w1, b1, w2, b2, w3, b3 = self.decoder
        c1, c2, _ = self.channels
        x = torch.relu(torch.bmm(latents.unsqueeze(1), wl) + bl)  # (5, 1, c3)
        x = torch.relu(torch.bmm(x, w1) + b1)  # (5, 1, c2*2*8): one patch
        x = x.reshape(5, c2, 16).transpose(1, 2)  # (5, 16 positions (a, b), c2)
        x = torch.relu(torch.bmm(x, w2) + b2)  # (5, 16, 4*4*c1): per position, (i, j, c1)
        x = torch.bmm(x.reshape(5, 256, c1), w3) + b3  # (5, 256 pixels (a, b, i, j), 4*4 (k, l))
        # pixel (a, b, i, j), sub-pixel (k, l) -> row a*16 + i*4 + k, column b*16 + j*4 + l
        x = x.reshape(5, 2, 8, 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6)
        return torch.sigmoid(x.reshape(5, STEPS_PER_BAR, N_PITCHES))
