"""The inference path of a BandModel as a few batched matrix products, for one bar at a time.

Every convolution of the VAEs has stride == kernel, so its patches never overlap and each layer
is exactly a matrix product over patches. Batching the five decoders (and the four
ConditionalNNs) into `bmm`s turns ~40 small conv/linear calls into ~12 ops. Tests check it against
the modules to float precision.

Only BAND_PITCHES (MIDI 16-111) are computed: the decoders skip the positions whose 16 pitches lie
outside (a quarter of their three big layers), and the encoder, which the engine hands a bar silent
there, folds those positions' constant share of conv3 into its bias. Outside, decode gives 0.

A bar is bound by memory traffic as much as by arithmetic: the decoders' float32 weights (10 MB for
five) do not fit in a core's L2, so every bar streams them in again. With `weights="int8"` the two
big decoder layers are kept small (the same layers, the same code path): 256 -> 1536 as int8 with one
scale per output channel (bfloat16 activations, float32 accumulation inside
`torch._weight_int8pack_mm`), 128 -> 1024 in bfloat16; everything else stays float32. The tests
state the tolerance to the modules.
"""
from __future__ import annotations

import torch

from models.bars import BAND, BAND_PITCHES, INSTRUMENTS, N_PITCHES, STEPS_PER_BAR
from models.networks import BandModel

WEIGHT_FORMATS = ("float32", "int8")
INT8_BLOCK = 16  # _weight_int8pack_mm's CPU kernel reads the inputs in blocks of 16 (else: garbage, or a crash)
# A decoder position (a, b) of the 2 x 8 after the first transposed conv becomes 16 steps x 16
# pitches (two more of stride 4); only the positions b that cover BAND_PITCHES are computed.
PITCHES_PER_POSITION = 16
if BAND_PITCHES.start % PITCHES_PER_POSITION or BAND_PITCHES.stop % PITCHES_PER_POSITION:
    raise ValueError(f"BAND_PITCHES {BAND_PITCHES} must be whole blocks of {PITCHES_PER_POSITION} pitches")
PLAYED_POSITIONS = range(BAND_PITCHES.start // PITCHES_PER_POSITION, BAND_PITCHES.stop // PITCHES_PER_POSITION)


def int8_fits(model: BandModel) -> bool:
    """Whether the 256 -> 1536 layer's input width (channels[2]) suits the int8 kernel."""
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
        self._sliced: dict[tuple[int, int], list] = {}  # (first, n) -> decoder weights of those instruments
        if weights == "int8":
            self.decoder[2] = self._int8_per_channel(self.decoder[2])  # 256 -> c2 * 12, the biggest layer
            self.decoder[4] = self.decoder[4].bfloat16()
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
        see encode_piano) then reshapes into patch vectors without a copy.

        The piano is heard within BAND_PITCHES (the engine silences the rest), so the conv3 positions
        outside it always see a silent patch: their part of conv3 is a constant, folded into its bias."""
        (w1, b1), (w2, b2), (w3, b3) = ((params[f"{prefix}encoder.{i}.weight"], params[f"{prefix}encoder.{i}.bias"])
                                        for i in (0, 2, 4))
        w1 = w1.reshape(w1.shape[0], -1).T.contiguous()  # (16 (i, j), c1)
        w2 = w2.permute(0, 2, 3, 1).reshape(w2.shape[0], -1).T.contiguous()  # (16 (a, b) * c1, c2)
        silent = torch.relu(b2 + torch.relu(b1).repeat(16) @ w2)  # (c2,): conv2 of a silent 16 x 16 patch
        w3 = w3.permute(0, 2, 3, 1)  # (c3, 2, 8 (R, C), c2)
        heard = torch.zeros(w3.shape[2], dtype=torch.bool)
        heard[PLAYED_POSITIONS.start:PLAYED_POSITIONS.stop] = True
        b3 = b3 + torch.einsum("orcn,n->o", w3[:, :, ~heard], silent)
        w3 = w3[:, :, heard].reshape(w3.shape[0], -1).T.contiguous()  # (2 * len(PLAYED_POSITIONS) * c2, c3)
        wp, bp = params[f"{prefix}to_posterior.weight"].T.contiguous(), params[f"{prefix}to_posterior.bias"]
        return [w1, b1, w2, b2, w3, b3, wp, bp]

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
        # only the positions b that cover BAND_PITCHES, columns ordered (a, b, c2) instead of
        # ConvTranspose's (c2, a, b): the output then reshapes straight into one row per position
        w1 = w1[..., PLAYED_POSITIONS.start:PLAYED_POSITIONS.stop].permute(0, 2, 3, 1)
        weights += [w1.reshape(w1.shape[0], -1), b1.repeat(2 * len(PLAYED_POSITIONS)).unsqueeze(0)]
        # columns ordered (i, j, c1) instead of ConvTranspose's (c1, i, j): the output then reshapes
        # straight into rows of 8x32 pixels for the last layer, with no transposing copy
        w2, b2 = params[f"{prefix}decoder.4.weight"], params[f"{prefix}decoder.4.bias"]  # (c2, c1, 4, 4)
        weights += [w2.permute(0, 2, 3, 1).reshape(w2.shape[0], -1), b2.repeat(16).unsqueeze(0)]
        w3, b3 = params[f"{prefix}decoder.6.weight"], params[f"{prefix}decoder.6.bias"]  # (c1, 1, 4, 4)
        weights += [w3.reshape(w3.shape[0], -1), b3.repeat(16).unsqueeze(0)]
        return weights

    def to(self, device: torch.device) -> "FusedBand":
        move = lambda ts: [tuple(move(t)) if isinstance(t, tuple) else t.to(device) for t in ts]  # noqa: E731
        self.encoder, self.decoder = move(self.encoder), move(self.decoder)
        self._sliced.clear()
        self.melody = [tuple(move(pair)) for pair in self.melody]
        self.conditional = [tuple(move(pair)) for pair in self.conditional]
        return self

    def encode_piano(self, bar: torch.Tensor) -> torch.Tensor:
        """(32, 128), silent outside BAND_PITCHES -> latent mean (K,)."""
        w1, b1, w2, b2, w3, b3, wp, bp = self.encoder
        c1, c2, _ = self.channels
        heard, positions = bar[:, BAND_PITCHES.start:BAND_PITCHES.stop], 2 * len(PLAYED_POSITIONS)
        # step 16R + 4a + i, pitch 16C + 4b + j (C counted from the first heard block): conv1 patch
        # (i, j) at position (R, C, a, b), so that conv2's patch (a, b) of position (R, C) is 16
        # consecutive rows of conv1's output
        x = heard.reshape(2, 4, 4, len(PLAYED_POSITIONS), 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(positions * 16, 16)
        x = torch.addmm(b1, x, w1).relu_()  # (positions * 4*4, c1)
        x = torch.addmm(b2, x.view(positions, 16 * c1), w2).relu_()  # (positions (R, C), c2)
        x = torch.addmm(b3, x.view(1, positions * c2), w3).relu_()  # (1, c3)
        return torch.addmm(bp, x, wp)[0, :-1]

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

    def _decoders(self, first: int, n: int) -> list:
        """The decoder weights of INSTRUMENTS[first:first + n], sliced once (8 views a bar otherwise)."""
        if (first, n) not in self._sliced:
            self._sliced[first, n] = [w if isinstance(w, tuple) else w[first:first + n] for w in self.decoder]
        return self._sliced[first, n]

    def decode(self, latents: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(n, K) latents of INSTRUMENTS[first:first + n] -> (n, 32, 128) in [0, 1], their decoders
        at once (first=1: the band without the predicted piano). Cells outside BAND_PITCHES are 0:
        the decoders never compute them."""
        n, positions = latents.shape[0], 2 * len(PLAYED_POSITIONS)
        wl, bl, w1, b1, w2, b2, w3, b3 = self._decoders(first, n)
        c1, c2, _ = self.channels
        x = torch.baddbmm(bl, latents.unsqueeze(1), wl).relu_()  # (n, 1, c3)
        if self.weights == "int8":
            (q, scale), x = w1, x.bfloat16()
            x = torch.cat([torch._weight_int8pack_mm(x[i], q[first + i], scale[first + i]) for i in range(n)])
            x = (x.unsqueeze(1) + b1).relu_()  # (n, 1, positions * c2) float32
            x = x.view(n, positions, c2).bfloat16()  # one row per position (a, b)
            x = (torch.bmm(x, w2) + b2).relu_()  # (n, positions, 4*4*c1): float32 from here
        else:
            x = torch.baddbmm(b1, x, w1).relu_()  # (n, 1, positions * c2): one patch
            x = torch.baddbmm(b2, x.view(n, positions, c2), w2).relu_()  # (n, positions, 4*4*c1): (i, j, c1) each
        x = torch.baddbmm(b3, x.view(n, positions * 16, c1), w3)  # (n, pixels (a, b, i, j), 4*4 (k, l))
        bars = torch.zeros(n, STEPS_PER_BAR, N_PITCHES, device=x.device)
        # pixel (a, b, i, j), sub-pixel (k, l) -> row a*16 + i*4 + k, column b*16 + j*4 + l of the
        # played pitches. The sigmoid runs on the contiguous output first: on the permuted view it
        # does not vectorise (measured 79 against 55 us a bar)
        played = bars[:, :, BAND_PITCHES.start:BAND_PITCHES.stop].view(n, 2, 4, 4, len(PLAYED_POSITIONS), 4, 4)
        played.copy_(x.sigmoid_().view(n, 2, len(PLAYED_POSITIONS), 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6))
        return bars


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
