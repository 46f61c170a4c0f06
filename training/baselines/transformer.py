"""`vaejam train --arch transformer`: the event-token transformer on the corpus's bars.

Every bar is tokenised once (models.baselines.transformer.BarTokeniser). A training example is
what the engine will see and say: the tokens of bars t-c+1..t of one song (c = context_bars,
fewer at a song's start, as the engine has at the start of a take), then bar t+1 and the Bar
token that closes it; the loss is next-token cross-entropy over all of it. The weights of the
epoch with the best validation loss are kept (a small corpus is soon overfitted). Thresholds are
calibrated by the shared rule on sampled bars, and sampling is timed per bar for the report.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, replace

import numpy as np
import torch
from torch.nn import functional as F

from models.baselines.checkpoint import save_baseline
from models.baselines.transformer import ARCH, BarTokeniser, Config, Grammar, Network, sample_bar
from models.controls import CONTROL_SPECS
from training.baselines import BaselineTrainConfig, calibrate_thresholds
from training.corpus import Corpus
from training.train import first_bars, load_corpora, pick_device

log = logging.getLogger(__name__)
PLAY_TEMPERATURE = float(CONTROL_SPECS["noise_sd"].default)  # the engine's default temperature
EPOCHS = 4  # `vaejam train --arch transformer` without --epochs (about 6 min an epoch per 1,000 MMA bars, 1 thread)
CALIBRATION_SAMPLES = 200  # sampled bars for thresholds and timing (sampling is ~100x a GAN's cost)
VALID_WINDOWS = 512  # validation examples per epoch, spread through the split
GRAD_CLIP = 1.0  # keeps an early bad batch from wrecking a small transformer


def tokenise_corpus(tokeniser: BarTokeniser, corpus: Corpus) -> list[list[int]]:
    """Token ids of every bar of the corpus, in corpus order."""
    return [tokeniser.encode(corpus.float_bars(i)) for i in range(len(corpus))]


def song_first_bars(corpus: Corpus) -> np.ndarray:
    """(n,) index of the first bar of each bar's song."""
    return np.repeat(corpus.song_starts[:-1], np.diff(corpus.song_starts))


def prompt_tokens(tokens: list[list[int]], first: np.ndarray, t: int, context: int, bar: int) -> list[int]:
    """The engine's prompt before bar t+1: bars t-context+1..t of t's song, then a Bar token."""
    return [token for i in range(max(int(first[t]), t - context + 1), t + 1) for token in tokens[i]] + [bar]


def example(tokens: list[list[int]], first: np.ndarray, t: int, config: Config, bar: int) -> list[int]:
    """One training sequence: the prompt before bar t+1, bar t+1's tokens after its Bar, a closing
    Bar; its last block + 1 tokens (inputs = all but the last, targets = all but the first)."""
    sequence = prompt_tokens(tokens, first, t, config.context_bars, bar) + tokens[t + 1][1:] + [bar]
    return sequence[-(config.block + 1):]


def batch_tensors(sequences: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) inputs and targets; padding is never a target (-100, ignored)."""
    length = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(sequences), length), pad, dtype=torch.long)
    targets = torch.full((len(sequences), length), -100, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        values = torch.tensor(sequence)
        inputs[row, : len(sequence) - 1] = values[:-1]
        targets[row, : len(sequence) - 1] = values[1:]
    return inputs.to(device), targets.to(device)


def sequence_loss(network: Network, sequences: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    inputs, targets = batch_tensors(sequences, pad, device)
    logits, _ = network(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def run_epoch(network: Network, opt: torch.optim.Optimizer, data: tuple, cfg: BaselineTrainConfig,
              epoch: int, device: torch.device) -> float:
    """One pass over the training pairs in a per-epoch seeded order; mean batch loss."""
    tokens, first, pairs, bar, pad = data
    network.train()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(pairs))
    losses = []
    for i in range(0, len(order), cfg.batch_size):
        batch = [example(tokens, first, int(t), network.config, bar) for t in pairs[order[i : i + cfg.batch_size], 0]]
        loss = sequence_loss(network, batch, pad, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP)
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def valid_loss(network: Network, data: tuple, batch_size: int, device: torch.device) -> float:
    """Mean token cross-entropy over up to VALID_WINDOWS validation examples, spread evenly."""
    tokens, first, pairs, bar, pad = data
    network.eval()
    picked = pairs[np.unique(np.linspace(0, len(pairs) - 1, min(VALID_WINDOWS, len(pairs))).astype(int)), 0]
    losses = [sequence_loss(network, [example(tokens, first, int(t), network.config, bar) for t in picked[i : i + batch_size]],
                            pad, device).item() for i in range(0, len(picked), batch_size)]
    return float(np.mean(losses))


def sample_and_time(network: Network, tokeniser: BarTokeniser, corpus: Corpus, data: tuple, n: int, seed: int,
                    device: torch.device) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Sampled next bars (P, 5, 32, 128) for n pairs spread through the corpus (prompts of real
    bars), the real next bars' uint8 cells, and the time and tokens per sampled bar."""
    tokens, first, pairs, bar, _ = data
    network.eval()
    grammar, generator = Grammar(tokeniser.names), torch.Generator(device=device).manual_seed(seed)
    picked = pairs[np.unique(np.linspace(0, len(pairs) - 1, min(n, len(pairs))).astype(int))]
    bars, ms, counts = [], [], []
    for t in picked[:, 0]:
        started = time.perf_counter()
        prompt = prompt_tokens(tokens, first, int(t), network.config.context_bars, bar)
        sampled = sample_bar(network, grammar, prompt, PLAY_TEMPERATURE, generator, device)
        bars.append(tokeniser.decode([bar] + sampled))
        ms.append((time.perf_counter() - started) * 1000)
        counts.append(len(sampled))
    timing = {"bars": len(ms), "ms_mean": round(float(np.mean(ms)), 1), "ms_p95": round(float(np.percentile(ms, 95)), 1),
              "tokens_mean": round(float(np.mean(counts)), 1), "tokens_max": int(max(counts)),
              "hit_token_bound": int(sum(c >= network.config.max_bar_tokens for c in counts))}
    return torch.from_numpy(np.stack(bars)), corpus.bars[picked[:, 1]], timing


def corpus_data(tokeniser: BarTokeniser, corpus: Corpus) -> tuple:
    """(bar tokens, first bar of each bar's song, pairs, Bar id, PAD id) of a split."""
    return tokenise_corpus(tokeniser, corpus), song_first_bars(corpus), corpus.pairs(), tokeniser.bar, tokeniser.pad


def train(cfg: BaselineTrainConfig) -> dict:
    """Train the transformer on cfg.data, write the model folder cfg.out, return the report."""
    if cfg.resume:
        raise ValueError("--resume: the transformer trainer keeps no training state; train again from scratch")
    device = pick_device(cfg.device)
    train_set, valid_set = load_corpora(cfg.data, "train"), load_corpora(cfg.data, "valid")
    if cfg.max_bars:
        train_set = first_bars(train_set, cfg.max_bars)
    if not len(train_set.pairs()) or not len(valid_set.pairs()):
        raise ValueError(f"{cfg.data}: too few consecutive bars to train on")
    config = Config.from_dict({"arch": ARCH, **cfg.model})  # cfg.model: size overrides (tests: tiny)
    tokeniser = BarTokeniser(config.velocities)
    config = replace(config, vocab_size=len(tokeniser), vocab_sha=tokeniser.sha)
    started = time.perf_counter()
    train_data, valid_data = corpus_data(tokeniser, train_set), corpus_data(tokeniser, valid_set)
    tokenise_seconds = time.perf_counter() - started
    torch.manual_seed(cfg.seed)
    network = Network(config).to(device)
    opt = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=0.01)
    history, best = [], (float("inf"), 0, copy.deepcopy(network.state_dict()))
    for epoch in range(cfg.epochs):
        row = {"epoch": epoch + 1, "train": round(run_epoch(network, opt, train_data, cfg, epoch, device), 4),
               "valid": round(valid_loss(network, valid_data, cfg.batch_size, device), 4)}
        history.append(row)
        log.info("transformer epoch %d/%d  train %.3f  valid %.3f", epoch + 1, cfg.epochs, row["train"], row["valid"])
        if row["valid"] < best[0]:
            best = (row["valid"], epoch + 1, copy.deepcopy(network.state_dict()))
    seconds = time.perf_counter() - started
    network.load_state_dict(best[2])
    predicted, real, timing = sample_and_time(network, tokeniser, train_set, train_data, CALIBRATION_SAMPLES,
                                              cfg.seed, device)
    thresholds = calibrate_thresholds(predicted, real)
    lengths = [len(t) for t in train_data[0]]
    report = {"arch": config.arch, "seconds": round(time.perf_counter() - started, 1), "train_seconds": round(seconds, 1),
              "tokenise_seconds": round(tokenise_seconds, 1), "parameters": sum(p.numel() for p in network.parameters()),
              "device": str(device), "torch_threads": torch.get_num_threads(), "train_bars": len(train_set),
              "valid_bars": len(valid_set), "best_epoch": best[1], "best_valid_loss": best[0],
              "vocab_size": config.vocab_size, "tokens_per_bar": {"mean": round(float(np.mean(lengths)), 1),
                                                                  "max": int(max(lengths))},
              "sampling": timing, "thresholds": [round(t, 4) for t in thresholds]}
    save_baseline(network, config, thresholds, cfg.out, metadata={"train": asdict(cfg), "report": report, "history": history})
    return report
