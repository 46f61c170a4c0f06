"""The generative baselines (issue 9): DCGAN and the event-token transformer, trained tiny on a
small corpus, saved, reloaded through models.systems.load_engine and played bar by bar."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bridge.cli import main
from models.bars import roll_notes
from models.baselines import dcgan, transformer
from models.checkpoint import CheckpointError
from models.systems import load_engine
from tests.conftest import band_song
from training.baselines import BaselineTrainConfig
from training.baselines import dcgan as dcgan_training
from training.baselines import transformer as transformer_training
from training.corpus import load_corpus, split_path, write_corpus

TINY_GAN = dcgan.Config(noise=8, channels=(8, 16, 32), features=16)
TINY_TRANSFORMER = transformer.Config(d_model=32, layers=1, heads=2, block=256, max_bar_tokens=96)


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


def train_cfg(arch: str, corpus_dir: str, out, **changes) -> BaselineTrainConfig:
    values = dict(arch=arch, data=corpus_dir, out=str(out), device="cpu", epochs=2, batch_size=8) | changes
    return BaselineTrainConfig(**values)


@pytest.fixture(scope="module")
def gan_dir(corpus_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("dcgan")
    dcgan_training.train(train_cfg("dcgan", corpus_dir, out, model=TINY_GAN.to_dict()))
    return str(out)


@pytest.fixture(scope="module")
def transformer_dir(corpus_dir, tmp_path_factory) -> str:
    pytest.importorskip("miditok")
    out = tmp_path_factory.mktemp("transformer")
    transformer_training.train(train_cfg("transformer", corpus_dir, out, lr=3e-3, model=TINY_TRANSFORMER.to_dict()))
    return str(out)


@pytest.fixture(params=["dcgan", "transformer"])
def model_dir(request) -> str:
    return request.getfixturevalue("gan_dir" if request.param == "dcgan" else "transformer_dir")


def play(directory: str, seed: int, n_bars: int = 4) -> np.ndarray:
    """A fresh engine's answers to n_bars piano bars, (n_bars, 5, 32, 128)."""
    engine = load_engine(directory)
    engine.reset(seed)
    return np.stack([engine.step(bar[0]) for bar in band_song(n_bars)])


def test_engines_load_and_step(model_dir):
    bars = play(model_dir, seed=0)
    assert bars.shape == (4, 5, 32, 128) and bars.dtype == np.float32
    assert bars.min() >= 0 and bars.max() <= 1 and bars[:, 1:].any()  # the band plays something


def test_same_seed_same_bars_other_seed_other_bars(model_dir):
    first, again, other = play(model_dir, 3), play(model_dir, 3), play(model_dir, 4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_broken_folders_are_refused(model_dir, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(model_dir, weights)
    (weights / "model.safetensors").write_bytes(b"\x00" * 64)
    oversized = tmp_path / "oversized"
    shutil.copytree(model_dir, oversized)
    document = json.loads((oversized / "config.json").read_text())
    document["config"]["layers" if document["config"]["arch"] == "transformer" else "noise"] = 10**6
    (oversized / "config.json").write_text(json.dumps(document))
    missing = tmp_path / "missing"
    shutil.copytree(model_dir, missing)
    (missing / "model.safetensors").unlink()
    for folder, reason in ((weights, "weights|safetensors|header"), (oversized, "outside"), (missing, "missing")):
        with pytest.raises(CheckpointError, match=reason):
            load_engine(folder)


def test_configs_check_their_values():
    with pytest.raises(ValueError, match="unknown"):
        dcgan.Config.from_dict({"arch": "dcgan", "depth": 3})
    with pytest.raises(ValueError, match="channels"):
        dcgan.Config.from_dict({"arch": "dcgan", "channels": [8, 16]})
    with pytest.raises(ValueError, match="noise"):
        dcgan.Config.from_dict({"arch": "dcgan", "noise": True})
    with pytest.raises(ValueError, match="multiple"):
        transformer.Config.from_dict({"arch": "transformer", "d_model": 30, "heads": 4})
    with pytest.raises(ValueError, match="arch"):
        transformer.Config.from_dict({"arch": "dcgan"})
    assert dcgan.Config.from_dict(TINY_GAN.to_dict()) == TINY_GAN


def test_dcgan_diversity_is_measured_on_generated_bars(gan_dir, corpus_dir):
    engine = load_engine(gan_dir)
    generator, thresholds = engine.network, engine.base_thresholds
    valid = load_corpus(corpus_dir, "valid")
    measured = dcgan_training.diversity(generator, valid, thresholds, 6, 4, 1.0, 0, torch.device("cpu"))
    assert 0 < measured["data"] <= 1 and 0 <= measured["across_inputs"] <= 1
    assert measured["within_input"] > 0  # the noise changes the bars
    generator.project[0].weight.data[:, : TINY_GAN.noise] = 0  # now the generator ignores z
    deaf = dcgan_training.diversity(generator, valid, thresholds, 6, 4, 1.0, 0, torch.device("cpu"))
    assert deaf["within_input"] == 0 and deaf["distinct"] <= 1 / 4
    metadata = json.loads(open(f"{gan_dir}/config.json").read())["metadata"]
    assert {"within_input", "across_inputs", "data", "to_next", "collapse_ratio", "noise_share", "distinct"} <= set(metadata["report"]["diversity"]["sd_1.0"])


def test_dcgan_trains_from_the_command_line(corpus_dir, tmp_path):
    out = tmp_path / "cli"
    assert main(["train", "--arch", "dcgan", "--data", corpus_dir, "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--threads", "1"]) == 0
    assert load_engine(out).step(band_song(1)[0, 0]).shape == (5, 32, 128)


def test_tokeniser_round_trips_a_bar():
    pytest.importorskip("miditok")
    tokeniser = transformer.BarTokeniser(velocities=8)
    grammar = transformer.Grammar(tokeniser.names)
    rng = np.random.default_rng(1)
    noisy = (rng.random((5, 32, 128)) < 0.01) * rng.integers(1, 128, (5, 32, 128)) / 127
    for bar in list(band_song(2)) + [noisy.astype(np.float32), np.zeros((5, 32, 128), np.float32)]:
        ids = tokeniser.encode(bar)
        back = tokeniser.decode(ids)
        np.testing.assert_array_equal(back > 0, bar > 0)  # steps and pitches are exact
        for row in range(5):  # velocity: the note's first step's, to one of 8 bins (15, 31, ... 127)
            for note in roll_notes(bar[row]):
                assert abs(back[row, note.start, note.pitch] * 127 - note.velocity) <= 127 / 8
        assert all(grammar.allowed(a, p)[b] for a, b, p in walk(grammar, ids))


def walk(grammar, ids):
    """(previous token, token, position before it) along a bar's token ids."""
    position = -1
    for previous, token in zip(ids, ids[1:]):
        yield previous, token, position
        position = grammar.step(token, position)


def test_sampling_is_bounded_and_well_formed():
    pytest.importorskip("miditok")
    tokeniser = transformer.BarTokeniser()
    config = transformer.Config(vocab_size=len(tokeniser), vocab_sha=tokeniser.sha, d_model=16, layers=1, heads=2,
                                block=64, max_bar_tokens=24)
    torch.manual_seed(0)
    network = transformer.Network(config).eval()
    grammar = transformer.Grammar(tokeniser.names)
    prompt = tokeniser.encode(band_song(1)[0]) + [tokeniser.bar]  # longer than the block: cut from the left
    for seed in range(5):
        sampled = transformer.sample_bar(network, grammar, prompt, 3.0, torch.Generator().manual_seed(seed),
                                         torch.device("cpu"))
        assert len(sampled) <= config.max_bar_tokens
        assert all(grammar.allowed(a, p)[b] for a, b, p in walk(grammar, [tokeniser.bar] + sampled))
        assert tokeniser.decode([tokeniser.bar] + sampled).shape == (5, 32, 128)


def test_transformer_refuses_another_vocabulary(transformer_dir, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(transformer_dir, changed)
    document = json.loads((changed / "config.json").read_text())
    document["config"]["vocab_sha"] = "0" * 16
    (changed / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_engine(changed)
