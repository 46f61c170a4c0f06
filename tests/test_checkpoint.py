"""A model folder is checked before it is trusted: sizes, header shapes, finite weights, bad JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import models.checkpoint as checkpoint
from models.checkpoint import CheckpointError, load_band_model, save_band_model
from models.networks import BandConfig, BandModel

TINY = BandConfig(latent=8, channels=(4, 8, 16), hidden=16)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    save_band_model(BandModel(TINY), tmp_path, half=False)
    return tmp_path


def set_config(folder: Path, **values: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["config"].update(values)
    path.write_text(json.dumps(config))


def test_huge_channels_are_refused_before_anything_is_allocated(model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # channels [2048, 2048, 2048] allocated 5.5 GB for 15 s before "shape mismatch".
    built: list[BandConfig] = []
    real = checkpoint.BandModel

    def counting(config: BandConfig) -> BandModel:
        if torch.empty(0).device.type != "meta":
            built.append(config)
        return real(config)

    monkeypatch.setattr(checkpoint, "BandModel", counting)
    set_config(model_dir, channels=[2048, 2048, 2048])
    with pytest.raises(CheckpointError, match="channels"):
        load_band_model(model_dir)
    set_config(model_dir, channels=[4, 8, 1000])  # within the limits, but not what the weights hold
    with pytest.raises(CheckpointError, match="shape"):
        load_band_model(model_dir)
    assert built == []  # refused from the header, before a real model was built


@pytest.mark.parametrize("values", [
    {"channels": [4, 8, 10**12]}, {"hidden": 10**9}, {"channels": [4, 8, 16.5]}, {"channels": "wide"},
    {"hidden": True}, {"latent": "16"}, {"dropout": "a lot"},
])
def test_bad_sizes_are_one_line_errors(model_dir: Path, values: dict) -> None:
    set_config(model_dir, **values)
    with pytest.raises(CheckpointError, match="bad model config"):
        load_band_model(model_dir)


def test_deeply_nested_json_is_a_checkpoint_error(model_dir: Path) -> None:
    (model_dir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="corrupt config"):
        load_band_model(model_dir)


def test_non_finite_weights_are_refused_naming_the_tensor(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    state = load_file(str(weights))
    state["melody.net.3.weight"][0, 0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"melody\.net\.3\.weight holds NaN or inf"):
        load_band_model(model_dir)
    state["melody.net.3.weight"][0, 0] = float("inf")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"melody\.net\.3\.weight"):
        load_band_model(model_dir)


def test_a_good_folder_still_loads(model_dir: Path) -> None:
    model = load_band_model(model_dir)
    assert not model.training and model.config == TINY
