"""Event-token transformer baseline: the band (and piano) continued token by token.

Bars become REMI tokens from miditok (one stream for all five parts: Bar, Position, Program,
Pitch, Velocity, Duration; 8 positions per beat, so the roll's 32 steps are kept exactly;
velocities in `velocities` bins; pitches 0-127 for every part). The model, a small causal
transformer (GPT-style, learned positions), reads the tokens of the last `context_bars` bars as
they sounded (the pianist's bar, the band's own last bar) and a Bar token, and samples bar t+1's
tokens until the next Bar token or `max_bar_tokens`, whichever comes first: a step never runs
away. A grammar mask keeps every sample a well-formed REMI bar (positions only move forward), so
every generated note decodes. Temperature = the noise_sd control (0: the most likely token).
"""
from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.bars import INSTRUMENTS, N_PITCHES, STEPS_PER_BAR, roll_notes
from models.baselines.configs import config_from_dict
from models.checkpoint import CheckpointError
from models.controls import Controls
from models.engine import BarEngine

ARCH = "transformer"
NOISE = "the sampling temperature of each token (0 = the most likely token)"
PROGRAMS = (0, 25, 33, 48, -1)  # General MIDI program per INSTRUMENTS row; miditok writes drums as -1
STEPS_PER_BEAT = 8
LIMITS = {"vocab_size": (1, 4096), "velocities": (1, 127), "d_model": (8, 1024), "layers": (1, 24),
          "heads": (1, 32), "block": (16, 4096), "context_bars": (1, 16), "max_bar_tokens": (8, 2048),
          "dropout": (0.0, 0.9)}
INSTALL_HINT = "the transformer baseline needs miditok: pip install 'vaejam[transformer]'"


@dataclass(frozen=True)
class Config:
    arch: str = ARCH
    velocities: int = 8  # velocity bins of the tokeniser
    vocab_size: int = 338  # what BarTokeniser(velocities) makes; checked against it when loading
    vocab_sha: str = ""  # BarTokeniser.sha of the vocabulary trained on: a changed miditok is refused
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    block: int = 1024  # positions the model knows: prompt + generated bar
    context_bars: int = 2  # bars of history in the prompt
    max_bar_tokens: int = 512  # bound on one generated bar (about 120 notes; MMA bars: mean 242, p99 589 tokens)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if self.max_bar_tokens >= self.block:
            raise ValueError(f"max_bar_tokens {self.max_bar_tokens} leaves no prompt in block {self.block}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        return config_from_dict(cls, values, LIMITS)


# ---- tokens
class BarTokeniser:
    """(5, 32, 128) bars <-> REMI token ids, one bar at a time; every bar starts with a Bar token."""

    def __init__(self, velocities: int = 8) -> None:
        try:
            import miditok
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        config = miditok.TokenizerConfig(
            pitch_range=(0, 127), drums_pitch_range=(0, 127), beat_res={(0, 4): STEPS_PER_BEAT},
            num_velocities=velocities, use_programs=True, one_token_stream_for_programs=True,
            programs=list(PROGRAMS), use_time_signatures=False, use_tempos=False)
        self.tokenizer = miditok.REMI(config)
        self.names: list[str] = sorted(self.tokenizer.vocab, key=self.tokenizer.vocab.get)  # id -> token
        self.bar = self.tokenizer.vocab["Bar_None"]
        self.pad = self.tokenizer.vocab["PAD_None"]
        self.sha = hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, bar: np.ndarray) -> list[int]:
        """(5, 32, 128) velocity/127 -> token ids [Bar, ...] (an empty bar is just [Bar])."""
        import symusic

        score = symusic.Score(STEPS_PER_BEAT)  # ticks per quarter = our steps per beat
        for row, program in enumerate(PROGRAMS):
            track = symusic.Track(program=max(program, 0), is_drum=program < 0)
            for note in roll_notes(bar[row]):
                track.notes.append(symusic.Note(int(note.start), int(note.end - note.start), int(note.pitch),
                                                int(note.velocity)))
            score.tracks.append(track)
        ids = list(self.tokenizer.encode(score).ids)
        return ids if ids[:1] == [self.bar] else [self.bar] + ids

    def decode(self, ids: list[int]) -> np.ndarray:
        """Token ids of one bar [Bar, ...] -> (5, 32, 128) float32 velocity/127; incomplete notes dropped."""
        bar = np.zeros((len(INSTRUMENTS), STEPS_PER_BAR, N_PITCHES), np.float32)
        if len(ids) < 2:
            return bar
        rows = {program: row for row, program in enumerate(PROGRAMS)}
        for track in self.tokenizer.decode(list(ids)).tracks:
            row = rows[-1 if track.is_drum else track.program]
            for note in track.notes:
                start = int(note.time)
                bar[row, start : min(STEPS_PER_BAR, start + max(1, int(note.duration))), int(note.pitch)] = \
                    note.velocity / 127
        return bar


class Grammar:
    """Which token may follow which in a REMI bar: Bar -> Position -> Program -> Pitch (PitchDrum
    after the drums' program) -> Velocity -> Duration -> Program | a later Position | Bar."""

    FOLLOWS = {"Bar": ("Position", "Bar"), "Position": ("Program", "DrumProgram"), "Program": ("Pitch",),
               "DrumProgram": ("PitchDrum",), "Pitch": ("Velocity",), "PitchDrum": ("Velocity",),
               "Velocity": ("Duration",), "Duration": ("Program", "DrumProgram", "Position", "Bar")}

    def __init__(self, names: list[str]) -> None:
        kinds = ["DrumProgram" if name == "Program_-1" else name.split("_")[0] for name in names]
        self.kind = kinds  # id -> kind
        self.masks = {kind: torch.tensor([k in allowed for k in kinds]) for kind, allowed in self.FOLLOWS.items()}
        self.position = torch.tensor([int(n.split("_")[1]) if k == "Position" else -1 for n, k in zip(names, kinds)])

    def allowed(self, last: int, position: int) -> torch.Tensor:
        """(V,) bool: the tokens that may follow token `last` in a bar now at `position`."""
        kind = self.kind[last] if self.kind[last] in self.masks else "Bar"  # PAD/BOS/EOS: start a bar
        if "Position" not in self.FOLLOWS[kind]:
            return self.masks[kind]
        return self.masks[kind] & ((self.position > position) | (self.position < 0))  # time moves forward

    def step(self, token: int, position: int) -> int:
        """The bar's position after `token`."""
        return int(self.position[token]) if self.kind[token] == "Position" else position


# ---- the network
class Block(nn.Module):
    """Pre-norm transformer block; attention takes and returns a (keys, values) cache for sampling."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.heads = config.heads
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        b, t, d = x.shape
        q, k, v = (part.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, T, d/heads)
                   for part in self.qkv(self.norm1(x)).split(d, dim=2))
        if cache is not None:  # earlier positions' keys and values: each token attends to all of them
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # no dropout on the attention weights: it forces torch's unfused CPU path (1.8x slower to train)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.mlp(self.norm2(x))), (k, v)


class Network(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab); `caches` continue an earlier call."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.block, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor, caches: list | None = None) -> tuple[torch.Tensor, list]:
        start = 0 if caches is None else caches[0][0].shape[2]  # positions already in the cache
        x = self.embed(ids) + self.positions(torch.arange(start, start + ids.shape[1], device=ids.device))
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[i])
            new_caches.append(cache)
        return self.head(self.norm(x)), new_caches


@torch.inference_mode()
def sample_bar(network: Network, grammar: Grammar, prompt: list[int], temperature: float,
               generator: torch.Generator, device: torch.device) -> list[int]:
    """Tokens of the bar after `prompt` (which ends with its Bar token), without the closing Bar:
    at most config.max_bar_tokens tokens, every one allowed by the grammar."""
    config, out, position = network.config, [], -1
    keep = config.block - config.max_bar_tokens  # the prompt's most recent tokens that fit
    logits, caches = network(torch.tensor([prompt[-keep:]], device=device))
    last = prompt[-1]
    for _ in range(config.max_bar_tokens):
        scores = logits[0, -1].masked_fill(~grammar.allowed(last, position).to(device), -math.inf)
        if temperature <= 0:
            token = int(scores.argmax())
        else:
            token = int(torch.multinomial(F.softmax(scores / temperature, dim=0), 1, generator=generator))
        if grammar.kind[token] == "Bar":
            break
        out.append(token)
        last, position = token, grammar.step(token, position)
        logits, caches = network(torch.tensor([[token]], device=device), caches)
    return out


# ---- the bar engine
class Engine(BarEngine):
    """The transformer behind `step`: history = the tokens of the last bars as they sounded."""

    def __init__(self, network: Network, thresholds: list[float], device: str | torch.device = "cpu",
                 controls: Controls | None = None, decode_piano: bool = True) -> None:
        config = network.config
        self.tokeniser = BarTokeniser(config.velocities)
        if (len(self.tokeniser), self.tokeniser.sha) != (config.vocab_size, config.vocab_sha):
            raise CheckpointError(f"the model was trained on another token vocabulary ({config.vocab_size} tokens, "
                                  f"{config.vocab_sha}) than this miditok makes ({len(self.tokeniser)}, "
                                  f"{self.tokeniser.sha})")
        self.grammar = Grammar(self.tokeniser.names)
        self.network = network.to(device).eval()
        self.last_tokens = 0  # tokens sampled by the last step, for benchmarks
        super().__init__(thresholds, None, device, controls, decode_piano)

    def _reset_stream(self) -> None:
        self.history: deque[list[int]] = deque(maxlen=self.network.config.context_bars)  # token ids per bar
        self.band = np.zeros((len(INSTRUMENTS) - 1, STEPS_PER_BAR, N_PITCHES), np.float32)  # last band bar
        self.last_piano = np.zeros((1, STEPS_PER_BAR, N_PITCHES), np.float32)  # last predicted piano

    def _stream_state(self) -> object:
        return list(self.history), self.band, self.last_piano

    def _restore_stream_state(self, state: object) -> None:
        history, self.band, self.last_piano = state  # type: ignore[misc]
        self.history = deque(history, maxlen=self.network.config.context_bars)

    def _decode_predicted_piano(self) -> np.ndarray:
        return self.last_piano

    def _decode_next(self, piano_bar: torch.Tensor, first: int = 0) -> np.ndarray:
        heard = np.concatenate([piano_bar.numpy()[None], self.band])  # (5, 32, 128): bar t as it sounded
        self.history.append(self.tokeniser.encode(heard))
        prompt = [token for bar in self.history for token in bar] + [self.tokeniser.bar]
        tokens = sample_bar(self.network, self.grammar, prompt, self.controls.noise_sd, self.generator, self.device)
        self.last_tokens = len(tokens)
        bar = self.tokeniser.decode([self.tokeniser.bar] + tokens)  # (5, 32, 128)
        self.band, self.last_piano = bar[1:], bar[:1]
        return bar[first:]
