"""Training: a short real run lowers the losses; checkpoints resume exactly; bad arguments."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bridge.cli import main
from models.checkpoint import load_band_model
from tests.conftest import TINY, band_song
from training.corpus import split_path, write_corpus
import training.train
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, n_songs in (("train", 6), ("valid", 2)):
        songs = []
        for i in range(n_songs):
            bars = np.roll(band_song(8), int(rng.integers(-3, 4)), axis=-1)  # other keys
            songs.append((f"{split}{i}", np.rint(bars * 127).astype(np.uint8)))
        write_corpus(split_path(root, split), songs)
    return str(root)


def config(corpus_dir, out, **changes) -> TrainConfig:
    base = TrainConfig(data=corpus_dir, out=str(out), vae_epochs=6, nn_epochs=6, batch_size=8,
                       lr=3e-3, model=TINY.to_dict())
    return replace(base, **changes)


def losses(history, stage, split="valid"):
    return [sum(v for k, v in h[split].items() if k.startswith("loss")) for h in history if h["stage"] == stage]


def test_training_lowers_every_loss(corpus_dir, tmp_path):
    report = train(config(corpus_dir, tmp_path))
    history = json.loads((tmp_path / "training_log.json").read_text())["history"]
    for stage in ("vae", "melody", "conditional"):
        curve = losses(history, stage, "train")
        assert curve[-1] < curve[0], (stage, curve)
    assert set(report["valid"]) == {"vae", "melody", "conditional"}
    assert all(0 <= report["valid"]["vae"][f"f1/{i}"] <= 1 for i in ("piano", "drums"))
    load_band_model(tmp_path)  # the result is a loadable model
    assert (tmp_path / "training.png").stat().st_size > 1000


def train_killed_then_resumed(cfg: TrainConfig, monkeypatch, saves_before_kill: int) -> None:
    """Train until the given checkpoint, stop as a killed process would, then train again."""
    saves = []
    real_save = training.train.save_state

    def save_then_die(*args):
        real_save(*args)
        saves.append(1)
        if len(saves) == saves_before_kill:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.train, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(training.train, "save_state", real_save)
    train(cfg)


def test_resume_continues_exactly(corpus_dir, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(config(corpus_dir, straight, vae_epochs=3, nn_epochs=2))
    resumed = tmp_path / "resumed"
    # the process is killed right after the 2nd epoch's checkpoint; the rerun picks up at VAE epoch 3
    train_killed_then_resumed(config(corpus_dir, resumed, vae_epochs=3, nn_epochs=2), monkeypatch, 2)
    a, b = load_band_model(straight).state_dict(), load_band_model(resumed).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_cli_refuses_to_overwrite_a_run(corpus_dir, tmp_path, capsys):
    args = ["train", "--data", corpus_dir, "--out", str(tmp_path), "--vae-epochs", "1", "--nn-epochs", "1",
            "--channels", "8,16,32", "--latent", "8", "--device", "cpu"]
    assert main(args) == 0
    assert main(args) == 2
    assert "add --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0


def test_cli_bad_corpus(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert "no such corpus" in capsys.readouterr().err


def test_calibrated_thresholds_reproduce_the_data_density(corpus_dir, tmp_path):
    from training.corpus import load_corpus
    from training.train import calibrate_thresholds, pick_device
    train(config(corpus_dir, tmp_path, vae_epochs=2, nn_epochs=2))
    model = load_band_model(tmp_path)
    corpus = load_corpus(corpus_dir, "train")
    thresholds = calibrate_thresholds(model, corpus, config(corpus_dir, tmp_path), pick_device("cpu"))
    torch.testing.assert_close(model.thresholds, thresholds, atol=2e-3, rtol=0)  # float16 on disk
    pairs = corpus.pairs()
    with torch.inference_mode():
        latents = model.encode_means(torch.from_numpy(corpus.float_bars(pairs[:, 0])))
        next_piano = model.melody(latents[:, 0])
        bass = model.vaes["bass"].decode(model.conditionals["bass"](next_piano, latents[:, 2]))
    played = float((bass > thresholds[2]).sum()) / len(pairs)
    real = float((corpus.bars[pairs[:, 1], 2] > 0).sum()) / len(pairs)
    assert 0.5 * real < played < 2 * real  # noise-free here, calibrated with noise: near, not equal


def test_context_arch_trains_reports_its_baselines_and_plays(corpus_dir, tmp_path):
    """arch "context" (issue 6): MelodyNN sees 4 bars + chroma and is measured against the
    current-latent and mean-latent baselines; the engine keeps whichever was best on validation."""
    from models.engine import BandEngine

    report = train(config(corpus_dir, tmp_path, model=replace(TINY, arch="context").to_dict()))
    choice = report["melody_choice"]
    scores = choice["validation_mse"]
    assert set(scores) == {"network", "current", "mean"}
    assert choice["source"] == min(scores, key=scores.get)
    model = load_band_model(tmp_path)
    assert model.config.arch == "context" and model.config.melody_source == choice["source"]
    engine = BandEngine(model)
    song = band_song(4)
    outs = [engine.step(song[t, 0]) for t in range(3)]
    assert all(out.shape == (5, 32, 128) for out in outs)
    model.config = replace(model.config, melody_source="network")  # the network path, whatever won
    engine = BandEngine(model)
    assert all(engine.step(song[t, 0]).shape == (5, 32, 128) for t in range(3))
    assert engine.history is not None and engine.history.shape == (4, TINY.latent)


def test_context_arch_resumes_exactly_after_the_melody_stage(corpus_dir, tmp_path, monkeypatch):
    """The melody source chosen after stage 2 survives a kill in stage 3."""
    cfg = dict(vae_epochs=2, nn_epochs=2, model=replace(TINY, arch="context").to_dict())
    straight = tmp_path / "straight"
    train(config(corpus_dir, straight, **cfg))
    resumed = tmp_path / "resumed"
    # killed after stage 3's first epoch (checkpoints 2 + 2 + 1)
    train_killed_then_resumed(config(corpus_dir, resumed, **cfg), monkeypatch, 5)
    a, b = load_band_model(straight), load_band_model(resumed)
    assert a.config == b.config
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, b.state_dict()[name], msg=name)


def test_history_rows_pad_each_song_with_its_first_bar() -> None:
    from training.corpus import Corpus
    from training.train import history_rows

    corpus = Corpus(np.zeros((7, 5, 32, 128), np.uint8), np.array([0, 3, 7]), ["a", "b"])
    rows = history_rows(corpus, 3)
    assert rows.tolist() == [[0, 0, 0, 1], [0, 0, 1, 2], [3, 3, 3, 4], [3, 3, 4, 5], [3, 4, 5, 6]]
