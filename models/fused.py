"""The inference path of a BandModel as a few batched matrix products, for one bar at a time.

Every convolution of the VAEs has stride == kernel, so its patches never overlap and each layer
is exactly a matrix product over patches. Batching the five decoders (and the four
ConditionalNNs) into `bmm`s turns ~40 small conv/linear calls into ~12 ops: a bar costs well
under a millisecond on a laptop CPU instead of ~4 ms through nn.Conv2d. Tests check it against
the modules to float precision.

A bar is bound by memory traffic, not arithmetic: the decoders' float32 weights (13 MB) do not fit
in a core's L2, so every bar streams them in again. With `weights="int8"` the two big decoder layers
are kept small (the same layers, the same code path): 256 -> 2048 as int8 with one scale per output
channel (bfloat16 activations, float32 accumulation inside `torch._weight_int8pack_mm`), 128 -> 1024
in bfloat16; everything else stays float32. The tests state the tolerance to the modules.
"""
from __future__ import annotations

import torch

from models.bars import BAND, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, STEPS_PER_BEAT
from models.networks import BandModel, piano_features

WEIGHT_FORMATS = ("float32", "int8")
INT8_BLOCK = 16  # _weight_int8pack_mm's CPU kernel reads the inputs in blocks of 16 (else: garbage, or a crash)


def int8_fits(model: BandModel) -> bool:
    """Whether the 256 -> 2048 layer's input width (channels[2]) suits the int8 kernel."""
    return model.config.channels[2] % INT8_BLOCK == 0


def compact_weights_fast(device: torch.device | str) -> bool:
    """Whether weights="int8" pays here: a CPU with AVX-512 (bfloat16 vector code) and a torch with
    the int8-weight matmul. On an AVX2-only CPU bfloat16 matmuls were measured 20-30x slower."""
    if torch.device(device).type != "cpu" or not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FusedBand:
    """Frozen copies of a model's weights laid out for batched one-bar inference."""

    def __init__(self, model: BandModel, weights: str = "float32") -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights={weights!r}; known: {', '.join(WEIGHT_FORMATS)}")
        if weights == "int8" and not int8_fits(model):
            raise ValueError(f"weights='int8' needs channels[2] a multiple of {INT8_BLOCK}, "
                             f"got channels={model.config.channels}")
        params = {k: v.detach().float() for k, v in model.state_dict().items()}
        self.weights = weights
        self.channels = model.config.channels
        self.encoder = self._encoder_weights(params, "vaes.piano.")
        self.decoder = [torch.stack(ws) for ws in zip(*(self._decoder_weights(params, f"vaes.{n}.") for n in INSTRUMENTS))]
        if weights == "int8":
            self.decoder[2] = self._int8_per_channel(self.decoder[2])  # 256 -> c2*16, the biggest layer
            self.decoder[4] = self.decoder[4].bfloat16()
        self.chroma = torch.zeros(N_PITCHES, 12)  # (128, 12): pitch -> its pitch class
        self.chroma[torch.arange(N_PITCHES), torch.arange(N_PITCHES) % 12] = 1.0
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
        """Weights as (in, out) matrices whose rows are ordered (a, b, c) (kernel position first, then
        channel) for the 2nd and 3rd conv: the previous layer's output (positions ordered to match,
        see encode_piano) then reshapes into patch vectors without a copy."""
        weights = []
        for layer in (0, 2, 4):
            w = params[f"{prefix}encoder.{layer}.weight"]  # (out, in, kh, kw)
            w = w.permute(0, 2, 3, 1) if layer else w  # (out, kh, kw, in)
            weights += [w.reshape(w.shape[0], -1).T.contiguous(), params[f"{prefix}encoder.{layer}.bias"]]
        weights += [params[f"{prefix}to_posterior.weight"].T.contiguous(), params[f"{prefix}to_posterior.bias"]]
        return weights

    @staticmethod
    def _int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(5, in, out) float -> int8 (5, out, in) and bfloat16 scales (5, out): w ~ q * scale."""
        w = w.transpose(1, 2)
        scale = (w.abs().amax(2) / 127).clamp(min=1e-12)
        return torch.round(w / scale.unsqueeze(2)).to(torch.int8).contiguous(), scale.bfloat16()

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
        move = lambda ts: [tuple(move(t)) if isinstance(t, tuple) else t.to(device) for t in ts]  # noqa: E731
        self.encoder, self.decoder, self.chroma = move(self.encoder), move(self.decoder), self.chroma.to(device)
        self.melody = [tuple(move(pair)) for pair in self.melody]
        self.conditional = [tuple(move(pair)) for pair in self.conditional]
        return self

    def encode_piano(self, bar: torch.Tensor) -> torch.Tensor:
        """(32, 128) -> latent mean (K,)."""
        w1, b1, w2, b2, w3, b3, wp, bp = self.encoder
        c1, c2, _ = self.channels
        # step 16R + 4a + i, pitch 16C + 4b + j: conv1 patch (i, j) at position (R, C, a, b), so that
        # conv2's patch (a, b) of position (R, C) is 16 consecutive rows of conv1's output
        x = bar.reshape(2, 4, 4, 8, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(256, 16)
        x = torch.addmm(b1, x, w1).relu_()  # (2*8*4*4, c1)
        x = torch.addmm(b2, x.reshape(16, 16 * c1), w2).relu_()  # (2*8 positions (R, C), c2)
        x = torch.addmm(b3, x.reshape(1, 16 * c2), w3).relu_()  # (1, c3)
        return torch.addmm(bp, x, wp)[0, :-1]

    def features(self, bar: torch.Tensor) -> torch.Tensor:
        """models.networks.piano_features of one bar (32, 128) -> (24,), with the chroma map built once."""
        on = (bar > 0).to(bar.dtype)
        parts = torch.stack([on.sum(0), on[-STEPS_PER_BEAT:].sum(0)]) @ self.chroma  # (2, 12)
        return (parts / parts.amax(1, keepdim=True).clamp(min=1.0)).flatten()

    def next_piano(self, inputs: torch.Tensor) -> torch.Tensor:
        """MelodyNN in eval mode (no dropout): (K,) -> (K,); arch "context": (context*K + 24,) -> (K,)."""
        (w1, b1), (w2, b2), (w3, b3) = self.melody
        x = torch.addmm(b1, inputs.unsqueeze(0), w1).relu_()
        out = torch.addmm(b3, torch.addmm(b2, x, w2).relu_(), w3)[0]
        return out if self.melody_latest is None else out + inputs[self.melody_latest]

    def next_band(self, next_piano: torch.Tensor, previous: torch.Tensor,
                  features: torch.Tensor | None = None) -> torch.Tensor:
        """The four ConditionalNNs at once: (K,), (4, K)[, (24,)] -> (4, K)."""
        (w1, b1), (w2, b2) = self.conditional
        parts = [next_piano.expand(len(BAND), -1), previous]
        if features is not None:
            parts.append(features.expand(len(BAND), -1))
        x = torch.cat(parts, dim=1).unsqueeze(1)  # (4, 1, 2K[+24])
        return torch.baddbmm(b2, torch.baddbmm(b1, x, w1).relu_(), w2).squeeze(1)

    def decode(self, latents: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(n, K) latents of INSTRUMENTS[first:first + n] -> (n, 32, 128) in [0, 1], their decoders
        at once (first=1: the band without the predicted piano)."""
        n = latents.shape[0]
        wl, bl, w1, b1, w2, b2, w3, b3 = (w if isinstance(w, tuple) else w[first:first + n] for w in self.decoder)
        c1, c2, _ = self.channels
        x = torch.baddbmm(bl, latents.unsqueeze(1), wl).relu_()  # (n, 1, c3)
        if self.weights == "int8":
            (q, scale), x = w1, x.bfloat16()
            x = torch.cat([torch._weight_int8pack_mm(x[i], q[first + i], scale[first + i]) for i in range(n)])
            x = (x.unsqueeze(1) + b1).relu_()  # (n, 1, c2*2*8) float32
            x = x.reshape(n, c2, 16).transpose(1, 2).bfloat16()  # (n, 16 positions (a, b), c2)
            x = (torch.bmm(x, w2) + b2).relu_()  # (n, 16, 4*4*c1): float32 from here
        else:
            x = torch.baddbmm(b1, x, w1).relu_()  # (n, 1, c2*2*8): one patch
            x = x.reshape(n, c2, 16).transpose(1, 2)  # (n, 16 positions (a, b), c2)
            x = torch.baddbmm(b2, x, w2).relu_()  # (n, 16, 4*4*c1): per position, (i, j, c1)
        x = torch.baddbmm(b3, x.reshape(n, 256, c1), w3)  # (n, 256 pixels (a, b, i, j), 4*4 (k, l))
        # pixel (a, b, i, j), sub-pixel (k, l) -> row a*16 + i*4 + k, column b*16 + j*4 + l
        x = x.reshape(n, 2, 8, 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6)
        return torch.sigmoid(x.reshape(n, STEPS_PER_BAR, N_PITCHES))


class ModuleBand:
    """FusedBand's interface over the model's own nn modules: the reference the fused path is
    tested equal to, and what `vaejam bench` times beside it (BandEngine(weights="modules"))."""

    weights = "modules"

    def __init__(self, model: BandModel) -> None:
        self.model = model

    def to(self, device: torch.device) -> "ModuleBand":
        return self

    def encode_piano(self, bar: torch.Tensor) -> torch.Tensor:
        return self.model.vaes["piano"].encode(bar.view(1, 1, STEPS_PER_BAR, N_PITCHES))[0][0]

    def features(self, bar: torch.Tensor) -> torch.Tensor:
        return piano_features(bar.unsqueeze(0))[0]

    def next_piano(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.melody(inputs.unsqueeze(0))[0]

    def next_band(self, next_piano: torch.Tensor, previous: torch.Tensor,
                  features: torch.Tensor | None = None) -> torch.Tensor:
        extra = features.unsqueeze(0) if features is not None else None
        return torch.cat([self.model.conditionals[name](next_piano.unsqueeze(0), previous[i : i + 1], extra)
                          for i, name in enumerate(BAND)])

    def decode(self, latents: torch.Tensor, first: int = 0) -> torch.Tensor:
        return torch.cat([self.model.vaes[name].decode(latents[i : i + 1])[:, 0]
                          for i, name in enumerate(INSTRUMENTS[first:first + len(latents)])])
