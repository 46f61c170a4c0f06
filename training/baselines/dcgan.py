"""`vaejam train --arch dcgan`: the DCGAN baseline, and what it does (mode collapse measured).

The usual recipe (Radford et al. 2015): Adam lr 2e-4, beta1 0.5, weights N(0, 0.02), the
non-saturating generator loss. The generator sees piano bar t and learns bar t+1 of the same song;
real bars are shown as note-on cells (velocity is the engine's business, models.engine).

Diversity (the article reports mode collapse for its DCGAN): on held-out pairs, bars are binarised
as the engine plays them (calibrated thresholds) and compared by Jaccard distance of their active
cells per instrument (1 = no cell shared, 0 = the same bar; two empty parts count as the same):
  within_input   mean distance between noise draws for the same piano bar
  across_inputs  mean distance between the bars generated for different piano bars
  data           the same between the real next bars of those piano bars
  to_next        mean distance from a generated bar to the real next bar of its input: at or above
                 `data`, the bars differ as much as unrelated real bars would (Jaccard alone
                 cannot tell varied music from scattered cells; this says how close to the truth)
  collapse_ratio across_inputs / data: near 0, one bar whatever the input (mode collapse)
  noise_share    within_input / across_inputs: near 0, z is ignored (one bar per input: the
                 conditional form of mode collapse)
  distinct       distinct bars among all draws / draws
It is logged every epoch and stored in the model folder's metadata for the eval report.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.bars import INSTRUMENTS
from models.baselines.checkpoint import save_baseline
from models.baselines.dcgan import ARCH, Config, Discriminator, Network, sample_noise
from models.controls import CONTROL_SPECS
from training.baselines import CALIBRATION_BARS, BaselineTrainConfig, calibrate_thresholds
from training.corpus import Corpus
from training.train import first_bars, load_corpora, pick_device, to_tensor

log = logging.getLogger(__name__)
EPOCHS = 30  # `vaejam train --arch dcgan` without --epochs: ~7 min on one CPU thread for 2,500 bars
RECIPE_LR = 2e-4  # DCGAN's learning rate, used unless --lr was changed from the shared default
BETAS = (0.5, 0.999)  # DCGAN's Adam: beta1 0.5 keeps the adversarial game from oscillating
PLAY_SD = float(CONTROL_SPECS["noise_sd"].default)  # z's sd the engine uses by default
EPOCH_PROBE = (32, 4)  # (inputs, draws) of the cheap per-epoch diversity check
FINAL_PROBE = (64, 8)  # (inputs, draws) of the reported one


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: conv/linear weights N(0, 0.02), batchnorm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def pair_tensors(corpus: Corpus, pairs: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2) pairs -> piano bar t (P, 1, 32, 128) velocity/127 and bar t+1 (P, 5, 32, 128) note-on 0/1."""
    piano = to_tensor(corpus.bars[pairs[:, 0], :1], device)
    nxt = torch.from_numpy(corpus.bars[pairs[:, 1]] > 0).to(device).float()
    return piano, nxt


def adversarial_step(gen: Network, disc: Discriminator, opts: tuple, piano: torch.Tensor, real: torch.Tensor,
                     noise: torch.Generator) -> dict[str, float]:
    """One discriminator and one generator update on a batch; the losses and D's mean beliefs."""
    opt_g, opt_d = opts
    fake = gen(piano, sample_noise(len(piano), gen.config, 1.0, noise, piano.device))  # (B, 5, 32, 128)
    d_real, d_fake = disc(piano, real), disc(piano, fake.detach())
    loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    d_gen = disc(piano, fake)
    loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))  # non-saturating
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
            "d_real": torch.sigmoid(d_real).mean().item(), "d_fake": torch.sigmoid(d_fake).mean().item()}


@torch.inference_mode()
def generate(gen: Network, piano: torch.Tensor, draws: int, sd: float, seed: int) -> torch.Tensor:
    """(P, 1, 32, 128) piano bars -> (P, draws, 5, 32, 128) generated next bars, seeded."""
    noise = torch.Generator(device=piano.device).manual_seed(seed)
    repeated = piano.repeat_interleave(draws, dim=0)
    out = torch.cat([gen(repeated[i : i + 256], sample_noise(len(repeated[i : i + 256]), gen.config, sd, noise,
                                                             piano.device))
                     for i in range(0, len(repeated), 256)])
    return out.view(len(piano), draws, *out.shape[1:])


def spread_pairs(corpus: Corpus, n: int) -> np.ndarray:
    """n pairs evenly spaced through the corpus (all of them if fewer): the same ones every epoch."""
    pairs = corpus.pairs()
    return pairs[np.unique(np.linspace(0, len(pairs) - 1, min(n, len(pairs))).astype(int))]


def jaccard_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boolean bars a (N, 5, cells), b (M, 5, cells) -> (N, M, 5) Jaccard distances per instrument
    (1 - shared / either); two empty parts are at distance 0."""
    a, b = a.float(), b.float()
    shared = torch.einsum("nic,mic->nmi", a, b)
    either = a.sum(-1)[:, None] + b.sum(-1)[None] - shared
    return torch.where(either > 0, 1 - shared / either.clamp(min=1), torch.zeros_like(shared))


def mean_pairwise(bars: torch.Tensor) -> torch.Tensor:
    """(N, 5, cells) boolean -> (5,) mean distance over the N(N-1)/2 distinct pairs."""
    n = len(bars)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return jaccard_distances(bars, bars)[upper].mean(0) if n > 1 else torch.zeros(bars.shape[1])


def diversity(gen: Network, corpus: Corpus, thresholds: list[float], inputs: int, draws: int, sd: float,
              seed: int, device: torch.device) -> dict:
    """The mode-collapse figures (module doc) of `gen` on `inputs` pairs of `corpus`, `draws` each."""
    gen.eval()
    pairs = spread_pairs(corpus, inputs)
    piano, real = pair_tensors(corpus, pairs, device)
    fake = generate(gen, piano, draws, sd, seed).flatten(-2).cpu()  # (P, draws, 5, 4096)
    on = fake > torch.tensor(thresholds)[:, None]  # as the engine binarises at density 0.5
    real_on = real.flatten(-2).cpu() > 0  # (P, 5, 4096)
    within = torch.stack([mean_pairwise(bars) for bars in on]).mean(0)  # (5,)
    across, data = mean_pairwise(on[:, 0]), mean_pairwise(real_on)
    to_next = torch.diagonal(jaccard_distances(on[:, 0], real_on), dim1=0, dim2=1).mean(1)  # (5,): vs the truth
    distinct = len(torch.unique(on.flatten(0, 1).flatten(1), dim=0)) / (len(pairs) * draws)
    figures = {"within_input": within, "across_inputs": across, "data": data, "to_next": to_next}
    per = {name: {key: round(float(value[i]), 4) for key, value in figures.items()} for i, name in enumerate(INSTRUMENTS)}
    return {"sd": sd, "inputs": len(pairs), "draws": draws, **{key: round(float(v.mean()), 4) for key, v in figures.items()},
            "collapse_ratio": round(float(across.mean() / data.mean().clamp(min=1e-6)), 4),
            "noise_share": round(float(within.mean() / across.mean().clamp(min=1e-6)), 4),
            "distinct": round(distinct, 4), "per_instrument": per}


def calibrate(gen: Network, corpus: Corpus, n: int, seed: int, device: torch.device) -> list[float]:
    """The shared rule on n spread pairs: at z's default sd, as many cells as the real next bars."""
    gen.eval()
    pairs = spread_pairs(corpus, n)
    piano, _ = pair_tensors(corpus, pairs, device)
    return calibrate_thresholds(generate(gen, piano, 1, PLAY_SD, seed)[:, 0].cpu(), corpus.bars[pairs[:, 1]])


def run_epoch(gen: Network, disc: Discriminator, opts: tuple, corpus: Corpus, cfg: BaselineTrainConfig,
              epoch: int, device: torch.device) -> dict[str, float]:
    """One pass over the training pairs in a per-epoch seeded order; mean batch figures."""
    gen.train(), disc.train()
    rng = np.random.default_rng([cfg.seed, epoch])
    noise = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
    pairs = corpus.pairs()
    order = rng.permutation(len(pairs))
    rows = []
    for i in range(0, len(order), cfg.batch_size):
        batch = pairs[order[i : i + cfg.batch_size]]
        if len(batch) < 2:  # batchnorm needs two bars
            continue
        rows.append(adversarial_step(gen, disc, opts, *pair_tensors(corpus, batch, device), noise))
    return {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}


def train(cfg: BaselineTrainConfig) -> dict:
    """Train the DCGAN on cfg.data, write the model folder cfg.out, return the report."""
    if cfg.resume:
        raise ValueError("--resume: the dcgan trainer keeps no training state; train again from scratch")
    config = Config.from_dict({"arch": ARCH, **cfg.model})  # cfg.model: size overrides (tests: tiny)
    device = pick_device(cfg.device)
    train_set, valid_set = load_corpora(cfg.data, "train"), load_corpora(cfg.data, "valid")
    if cfg.max_bars:
        train_set = first_bars(train_set, cfg.max_bars)
    if len(train_set.pairs()) < 2 or len(valid_set.pairs()) < 2:
        raise ValueError(f"{cfg.data}: too few consecutive bars to train on")
    torch.manual_seed(cfg.seed)
    gen, disc = Network(config).to(device), Discriminator(config).to(device)
    gen.apply(dcgan_init), disc.apply(dcgan_init)
    lr = RECIPE_LR if cfg.lr == BaselineTrainConfig.lr else cfg.lr
    opts = (torch.optim.Adam(gen.parameters(), lr=lr, betas=BETAS), torch.optim.Adam(disc.parameters(), lr=lr, betas=BETAS))
    history, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        row = {"epoch": epoch + 1, **run_epoch(gen, disc, opts, train_set, cfg, epoch, device)}
        probe = calibrate(gen, valid_set, 256, cfg.seed, device)
        row["diversity"] = diversity(gen, valid_set, probe, *EPOCH_PROBE, 1.0, cfg.seed, device)
        history.append(row)
        log.info("dcgan epoch %d/%d  D %.3f  G %.3f  D(real) %.2f  D(fake) %.2f  collapse ratio %.2f",
                 epoch + 1, cfg.epochs, row["loss_d"], row["loss_g"], row["d_real"], row["d_fake"],
                 row["diversity"]["collapse_ratio"])
    seconds = time.perf_counter() - started
    thresholds = calibrate(gen, train_set, CALIBRATION_BARS, cfg.seed, device)
    measured = {f"sd_{sd}": diversity(gen, valid_set, thresholds, *FINAL_PROBE, sd, cfg.seed, device)
                for sd in (PLAY_SD, 1.0)}
    report = {"arch": config.arch, "seconds": round(time.perf_counter() - started, 1), "train_seconds": round(seconds, 1),
              "parameters": count(gen), "discriminator_parameters": count(disc), "device": str(device),
              "torch_threads": torch.get_num_threads(), "lr": lr, "train_bars": len(train_set),
              "valid_bars": len(valid_set), "thresholds": [round(t, 4) for t in thresholds], "diversity": measured}
    save_baseline(gen, config, thresholds, cfg.out, metadata={"train": asdict(cfg), "report": report, "history": history})
    return report
