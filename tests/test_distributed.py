"""`vaejam train` under real torchrun processes: gloo, 2 CPU processes, a sharded corpus."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.cli import main
from models.checkpoint import load_band_model
from tests.conftest import band_song
from tests.test_streaming import write_sharded
from training.distributed import Dist

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "bridge.cli"]
EPOCHS = {"vae": 2, "melody": 1, "conditional": 1}
BATCH = 12


def train_args(corpus: Path, out: Path) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(out), "--vae-epochs", str(EPOCHS["vae"]),
            "--nn-epochs", "1", "--batch-size", str(BATCH), "--lr", "3e-3", "--channels", "8,16,32",
            "--latent", "8", "--device", "cpu", "--threads", "1"]


def torchrun(args: list[str], log: Path) -> subprocess.Popen:
    """torchrun in a session of its own, so a kill reaches the agent and both workers."""
    return subprocess.Popen(TORCHRUN + args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The corpus, a one-process run and a two-process torchrun run of the same training."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(3)
    lengths = [9, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]  # 97 bars: the last batch of 12 holds one bar,
    # so rank 1 gets none of it and joins with a weight-0 stand-in
    train = [(f"t{i}", np.rint(np.roll(band_song(n), int(rng.integers(-4, 5)), axis=-1) * 127).astype(np.uint8))
             for i, n in enumerate(lengths)]
    valid = [(f"v{i}", np.rint(np.roll(band_song(6), i, axis=-1) * 127).astype(np.uint8)) for i in range(3)]
    write_sharded(root / "corpus", {"train": train, "valid": valid}, shard_bars=30)
    assert main(train_args(root / "corpus", root / "one")) == 0
    finish(torchrun(train_args(root / "corpus", root / "two"), root / "two.log"), root / "two.log")
    return root / "corpus", root / "one", root / "two"


def valid_losses(out: Path) -> list[tuple[str, int, float]]:
    history = json.loads((out / "training_log.json").read_text())["history"]
    return [(h["stage"], h["epoch"], sum(v for k, v in h["valid"].items() if k.startswith("loss"))) for h in history]


def test_rank_parts_cover_each_batch_once() -> None:
    for total in (1, 2, 5, 12, 13):
        parts = [Dist(rank, 3).part(total) for rank in range(3)]
        covered = [i for p in parts if p.weight for i in range(total)[p.rows]]
        assert covered == list(range(total))
        assert all(p.hi > p.lo for p in parts)  # every rank reads at least its stand-in
        assert sum(p.weight * (p.hi - p.lo) for p in parts) == total


def test_two_processes_follow_one(runs) -> None:
    """Same global batches, so the validation curves of every stage agree within 2 %."""
    _, one, two = runs
    curve_one, curve_two = valid_losses(one), valid_losses(two)
    assert [c[:2] for c in curve_one] == [c[:2] for c in curve_two]
    assert len(curve_one) == sum(EPOCHS.values())
    for (stage, epoch, a), (_, _, b) in zip(curve_one, curve_two):
        assert abs(a - b) <= 0.02 * abs(a), (stage, epoch, a, b)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "train_state").iterdir()) == sorted(
        p.name for p in (one / "train_state").iterdir())  # one writer: no file twice, none per rank


def test_killed_torchrun_resumes_exactly(runs, tmp_path) -> None:
    """SIGKILL the whole torchrun (agent and both workers) after the first checkpoint, rerun it
    with --resume: the weights equal those of the uninterrupted two-process run."""
    corpus, _, two = runs
    out, state = tmp_path / "killed", tmp_path / "killed" / "train_state" / "state.json"
    proc = torchrun(train_args(corpus, out), tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not state.exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 300 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()  # killed mid-run, in VAE epoch 2 or after
    finish(torchrun(train_args(corpus, out) + ["--resume"], tmp_path / "resumed.log"), tmp_path / "resumed.log")
    assert [c[:2] for c in valid_losses(out)] == [c[:2] for c in valid_losses(two)]
    a, b = load_band_model(two).state_dict(), load_band_model(out).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], msg=name)
