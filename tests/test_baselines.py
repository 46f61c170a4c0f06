"""The article's baselines (issue 9): each trains, saves, reloads through models.systems, plays bars
deterministically per seed, refuses broken folders cleanly, and `vaejam eval --baselines` reports them."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from bridge.cli import main
from models.baselines import baseline_module
from models.baselines.common import decision_values
from models.checkpoint import CheckpointError
from models.controls import Controls
from models.systems import load_engine
from tests.conftest import band_song
from training.baselines import BaselineTrainConfig
from training.baselines.common import windows
from training.compare import AUTO_TRAIN, paired
from training.corpus import load_corpus, split_path, write_corpus

ARCHS = ("cnn", "gru", "piano_gru")
TINY = {  # sizes that train in a second or two
    "cnn": {"channels": [4, 8, 16], "hidden": 32},
    "gru": {"hidden": 32},
    "piano_gru": {"hidden": 32, "channels": [4, 8, 16], "harmony_hidden": 32},
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> str:
    """Six training and two validation songs of 8 bars, the hand-made song in other keys."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for split, n_songs in (("train", 6), ("valid", 2)):
        keys = [int(rng.integers(-3, 4)) for _ in range(n_songs)]
        songs = [(f"{split}{i}", np.rint(np.roll(band_song(8), k, axis=-1) * 127).astype(np.uint8))
                 for i, k in enumerate(keys)]
        write_corpus(split_path(root, split), songs)
    return str(root)


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """arch -> (model folder, training report) of a tiny config trained for 2 epochs."""
    out = {}
    for arch in ARCHS:
        folder = tmp_path_factory.mktemp(arch)
        cfg = BaselineTrainConfig(arch=arch, data=corpus_dir, out=str(folder), device="cpu", epochs=2, batch_size=8,
                                  lr=3e-3, model=TINY[arch])
        out[arch] = (str(folder), __import__(f"training.baselines.{arch}", fromlist=["train"]).train(cfg))
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_a_baseline_trains_and_records_its_cost(arch, trained) -> None:
    folder, report = trained[arch]
    document = json.loads(open(f"{folder}/config.json").read())
    assert document["config"]["arch"] == arch and document["metadata"]["report"] == report
    assert report["parameters"] > 0 and report["seconds"] >= 0 and report["train_bars"] == 48
    assert len(report["thresholds"]) == 5 and all(0 < t < 1 for t in report["thresholds"])
    for stage in document["metadata"]["history"].values():  # every stage learned something
        assert len(stage) == 2 and stage[1]["train"] < stage[0]["train"]


def test_vaejam_train_arch_writes_a_loadable_folder(corpus_dir, tmp_path, capsys) -> None:
    out = tmp_path / "cnn"
    assert main(["train", "--arch", "cnn", "--data", corpus_dir, "--out", str(out), "--epochs", "1"]) == 0
    document = json.loads((out / "config.json").read_text())
    assert json.loads(capsys.readouterr().out) == document["metadata"]["report"]  # the report is printed
    assert document["metadata"]["train"]["epochs"] == 1 and document["config"]["channels"] == [16, 32, 128]
    assert type(load_engine(out)).__module__ == "models.baselines.cnn"
    assert main(["train", "--arch", "cnn", "--data", corpus_dir, "--out", str(out), "--epochs", "0"]) == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_a_baseline_loads_through_systems_and_plays_per_seed(arch, trained) -> None:
    engine = load_engine(trained[arch][0])
    assert type(engine) is baseline_module(arch).Engine and engine.styles == {}
    song = band_song(6)

    def play(seed: int, noise_sd: float = 1.0) -> np.ndarray:
        engine.set_controls(Controls(seed=seed, noise_sd=noise_sd, harmony=0))
        engine.reset()
        return np.stack([engine.step(song[t, 0]) for t in range(len(song))])

    first = play(0)
    assert first.shape == (6, 5, 32, 128) and first.dtype == np.float32
    assert ((first == 0) | (first > 0.05)).all() and first.max() <= 1.0  # silence or a velocity
    np.testing.assert_array_equal(play(0), first)  # same seed, same band
    assert not np.array_equal(play(1), first)  # another seed: another band
    np.testing.assert_array_equal(play(0, 0.0), play(1, 0.0))  # noise_sd 0: the seed has nothing to draw


@pytest.mark.parametrize("arch", ARCHS)
def test_a_muted_part_is_silent_and_the_piano_can_be_skipped(arch, trained) -> None:
    engine = load_engine(trained[arch][0], decode_piano=False)
    engine.set_controls(Controls().updated("mute/bass", 1))
    out = engine.step(band_song(1)[0, 0])
    assert not out[0].any() and not out[2].any()
    assert engine.predicted_piano().shape == (32, 128)


def test_broken_baseline_folders_are_checkpoint_errors(trained, tmp_path, capsys) -> None:
    source = trained["cnn"][0]

    def broken(name: str, change) -> str:
        folder = tmp_path / name
        shutil.copytree(source, folder)
        change(folder)
        return str(folder)

    def truncate(path, size: int) -> None:
        path.write_bytes(path.read_bytes()[:size])

    def config(folder, **values):
        document = json.loads((folder / "config.json").read_text())
        document["config"].update(values)
        (folder / "config.json").write_text(json.dumps(document))

    folders = [
        broken("huge", lambda f: config(f, channels=[4096, 4096, 4096])),
        broken("arch", lambda f: config(f, arch="rnn")),
        broken("shape", lambda f: config(f, hidden=33)),
        broken("truncated", lambda f: truncate(f / "model.safetensors", 200)),
        broken("header", lambda f: (f / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")),
        broken("missing", lambda f: (f / "model.safetensors").unlink()),
        broken("thresholds", lambda f: (f / "config.json").write_text(
            (f / "config.json").read_text().replace('"thresholds": [', '"thresholds": [2.0, '))),
    ]
    for folder in folders:
        with pytest.raises(CheckpointError):
            load_engine(folder)
    song = tmp_path / "song.mid"
    from models.bars import song_to_midi
    song_to_midi(band_song(2), bpm=100).write(str(song))
    assert main(["render", str(song), "-o", str(tmp_path / "out.mid"), "--model", folders[0]]) == 2
    err = capsys.readouterr().err
    assert "channels" in err and "Traceback" not in err


def test_render_takes_a_baseline_and_refuses_a_style_for_it(trained, song_file, tmp_path, capsys) -> None:
    out = tmp_path / "gru.mid"
    assert main(["render", song_file, "-o", str(out), "--model", trained["gru"][0]]) == 0
    assert out.stat().st_size > 0
    assert main(["render", song_file, "-o", str(out), "--model", trained["gru"][0], "--style", "funk"]) == 2
    assert "has no styles" in capsys.readouterr().err


def test_the_daemon_and_bench_load_a_baseline(trained) -> None:
    from bridge.bench import inference_latency
    from bridge.daemon import load_engine as daemon_engine

    engine, where, device = daemon_engine(trained["piano_gru"][0], "auto")
    assert type(engine).__module__ == "models.baselines.piano_gru" and where == trained["piano_gru"][0]
    assert device == "cpu" and engine.styles == {}
    with pytest.raises(ValueError, match="known: none"):  # what /vaejam/style answers for a baseline
        engine.set_controls(Controls(style="funk"))
    timings = inference_latency(trained["cnn"][0], "cpu", 3)
    assert list(timings) == ["cnn", "cnn, no piano"] and all(t["n"] == 3 for t in timings.values())


def test_the_sampling_rule_is_a_temperature_around_the_threshold() -> None:
    logits = torch.full((40000,), 0.5)
    assert torch.equal(decision_values(logits, 0.0, torch.Generator().manual_seed(0)), torch.sigmoid(logits))
    on = decision_values(logits, 0.7, torch.Generator().manual_seed(0)) > 0.5  # threshold 0.5: logit 0
    assert on.float().mean().item() == pytest.approx(1 / (1 + math.exp(-0.5 / 0.7)), abs=0.01)


def test_training_windows_tile_every_song_once(corpus_dir) -> None:
    corpus = load_corpus(corpus_dir, "train")
    for offset in (0, 3):
        runs = windows(corpus, 3, offset)
        covered = np.concatenate([np.arange(first, first + n) for first, n in runs])
        np.testing.assert_array_equal(covered, np.arange(len(corpus)))
        assert runs[:, 1].max() <= 3
        starts = set(corpus.song_starts[:-1].tolist())
        assert starts <= set(runs[:, 0].tolist())  # no run crosses into the next song


def test_paired_differences() -> None:
    result = paired(np.array([0.5, 0.6, 0.7, math.nan]), np.array([0.1, 0.2, 0.1, 0.3]))
    assert result["songs"] == 3 and result["mean"] == pytest.approx(1.4 / 3)
    assert result["low"] < result["mean"] < result["high"] and result["low"] > 0


def test_eval_baselines_writes_one_report_with_every_row(trained, corpus_dir, tiny_model_dir, tmp_path,
                                                         capsys) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained["cnn"][0], models / "cnn")  # the GRU is missing: eval trains it
    shutil.copytree(trained["piano_gru"][0], models / "piano_gru")
    out = tmp_path / "report"
    args = ["eval", "--baselines", "all", "--data", corpus_dir, "--model", tiny_model_dir, "--baseline-models",
            str(models), "--baseline-epochs", "1", "--songs", "2", "--bars", "4", "--out", str(out)]
    assert main(args) == 0
    text = (out / "report.md").read_text()
    for row in ("real parts", "shuffled bars", f"VAE-NN ({tiny_model_dir})", *AUTO_TRAIN, "piano_gru"):
        assert re.search(rf"^\| {re.escape(row)} \| [0-9n]", text, re.M), row
    assert "trained by this eval (1 epochs" in text and (models / "gru" / "config.json").is_file()
    assert "## The article's claim" in text
    assert re.search(r"harmony 0 \(raw networks\): \*\*(holds|does not hold)\*\*", text)
    result = json.loads((out / "report.json").read_text())
    assert set(result["systems"]) >= {"real", "shuffled", "vaenn", "cnn", "gru", "piano_gru"}
    for key in ("cnn", "gru", "vaenn"):
        row = result["systems"][key]
        assert row["step_ms"]["p50"] > 0 and row["training"]["parameters"] > 0
        assert 0 <= row["variation"]["0"]["notes"] <= 1
    for key, row in result["systems"].items():  # any other registered baseline is listed, untrained
        if key not in ("real", "shuffled", "vaenn", "cnn", "gru", "piano_gru"):
            assert not row["trained"] and f"--arch {key}" in row["command"] and f"--arch {key}" in text
    linked = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(linked) >= 7 and all((out / name).read_bytes()[:4] == b"\x89PNG" for name in linked)
