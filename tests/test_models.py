"""Networks, the fused inference path, checkpoints and style banks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.bars import BAND, BAND_PITCHES, INSTRUMENTS
from models.checkpoint import CheckpointError, load_band_model, save_band_model
from models.fused import FusedBand
from models.networks import BandConfig, BandModel, ConditionalNN, InstrumentVAE, MelodyNN
from models.style import encode_style, load_style_banks, save_style
from tests.conftest import TINY


@pytest.mark.parametrize("latent", [8, 16, 32, 64])
def test_shapes(latent):
    config = BandConfig(latent=latent, channels=(8, 16, 32), hidden=32)
    bars = torch.rand(3, 1, 32, 128)
    vae = InstrumentVAE(config)
    mean, log_sigma = vae.encode(bars)
    assert mean.shape == (3, latent) and log_sigma.shape == (3, 1)
    assert vae.decode(mean).shape == (3, 1, 32, 128)
    loss, recon = vae(bars)
    assert loss.ndim == 0 and recon.shape == bars.shape
    assert MelodyNN(config)(mean).shape == (3, latent)
    assert ConditionalNN(config)(mean, mean).shape == (3, latent)
    band = BandModel(config)
    assert band.encode_means(torch.rand(2, 5, 32, 128)).shape == (2, 5, latent)
    assert band.decode_all(torch.rand(2, 5, latent)).shape == (2, 5, 32, 128)


def test_article_architecture():
    model = BandModel(BandConfig())
    conv = [m for m in model.vaes["piano"].encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in conv] == [
        (1, 64, (4, 4), (4, 4)), (64, 128, (4, 4), (4, 4)), (128, 256, (2, 8), (2, 8))]
    assert model.vaes["piano"].to_posterior.out_features == 16 + 1  # K means + one log-sigma
    assert set(model.conditionals) == set(BAND)


def test_bad_config():
    with pytest.raises(ValueError, match="latent"):
        BandConfig(latent=12)


def heard(bar: torch.Tensor) -> torch.Tensor:
    """A piano bar as the engine hands it to the networks: silent outside BAND_PITCHES."""
    bar = bar.clone()
    bar[:, :BAND_PITCHES.start] = 0.0
    bar[:, BAND_PITCHES.stop:] = 0.0
    return bar


def assert_decoded_close(fused: torch.Tensor, modules: torch.Tensor, **tolerance) -> None:
    """The fused decoders equal the modules on BAND_PITCHES and are exactly 0 outside (not computed)."""
    inside = slice(BAND_PITCHES.start, BAND_PITCHES.stop)
    torch.testing.assert_close(fused[..., inside], modules[..., inside], **tolerance)
    assert not fused[..., :BAND_PITCHES.start].any() and not fused[..., BAND_PITCHES.stop:].any()


@pytest.mark.parametrize("channels", [(16, 32, 64), (64, 128, 256)])
def test_fused_path_matches_the_modules(channels):
    torch.manual_seed(1)
    model = BandModel(BandConfig(channels=channels)).eval()
    fused = FusedBand(model)
    with torch.inference_mode():
        for bar in (heard(torch.rand(32, 128)), torch.zeros(32, 128)):  # the silent blocks: a folded constant
            mean = model.vaes["piano"].encode(bar.view(1, 1, 32, 128))[0]
            torch.testing.assert_close(fused.encode_piano(bar), mean[0])
        torch.testing.assert_close(fused.next_piano(mean[0]), model.melody(mean)[0])
        previous = torch.randn(4, 16)
        want = torch.stack([model.conditionals[n](mean, previous[i : i + 1])[0] for i, n in enumerate(BAND)])
        torch.testing.assert_close(fused.next_band(mean[0], previous), want)
        latents = torch.randn(5, 16)
        assert_decoded_close(fused.decode(latents), model.decode_all(latents[None])[0])
        assert_decoded_close(fused.decode(latents[:1]), model.decode_all(latents[None])[0, :1])  # autopilot's piano


def test_piano_features_numpy_equal_the_torch_ones():
    from models.networks import piano_features, piano_features_numpy

    torch.manual_seed(5)
    for bar in ((torch.rand(32, 128) > 0.9).float() * 0.6, torch.zeros(32, 128)):
        assert piano_features_numpy(bar.numpy()).dtype == np.float32
        torch.testing.assert_close(torch.from_numpy(piano_features_numpy(bar.numpy())), piano_features(bar[None])[0])


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    model = BandModel(TINY)
    save_band_model(model, tmp_path, half=False)
    loaded = load_band_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not loaded.training
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format_version"] == 1 and config["config"]["latent"] == TINY.latent


def test_checkpoint_half_is_smaller_and_close(tmp_path):
    model = BandModel(TINY)
    save_band_model(model, tmp_path / "full", half=False)
    save_band_model(model, tmp_path / "half")
    full = (tmp_path / "full" / "model.safetensors").stat().st_size
    half = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    loaded = load_band_model(tmp_path / "half")
    w = "vaes.bass.encoder.0.weight"
    torch.testing.assert_close(loaded.state_dict()[w], model.state_dict()[w], atol=1e-3, rtol=1e-3)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no model here"):
        load_band_model(tmp_path / "nothing")
    save_band_model(BandModel(TINY), tmp_path)
    config_path, weights = tmp_path / "config.json", tmp_path / "model.safetensors"
    good_config = config_path.read_text()
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config"):
        load_band_model(tmp_path)
    config = json.loads(good_config)
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_band_model(tmp_path)
    config["format_version"] = 1
    config["config"]["latent"] = 16  # weights were made with 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_band_model(tmp_path)
    config_path.write_text(good_config)
    state = load_file(str(weights))
    state.pop("melody.net.0.bias")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="missing"):
        load_band_model(tmp_path)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt weights"):
        load_band_model(tmp_path)


def test_style_bank_round_trip(tmp_path, song_file, tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    bank = encode_style(model, "demo", song_file)
    assert {k: len(v) for k, v in bank.latents.items()} == {i: 8 for i in INSTRUMENTS}
    save_style(bank, tmp_path)
    loaded = load_style_banks(tmp_path, model)["demo"]
    for instrument in INSTRUMENTS:
        torch.testing.assert_close(loaded.latents[instrument], bank.latents[instrument])


def test_style_bank_from_another_model_is_refused(tmp_path, song_file, tiny_model_dir):
    model = load_band_model(tiny_model_dir)
    save_style(encode_style(model, "demo", song_file), tmp_path)
    save_band_model(BandModel(TINY), tmp_path / "other")
    other = load_band_model(tmp_path / "other")
    with pytest.raises(CheckpointError, match="another model"):
        load_style_banks(tmp_path, other)


def test_style_name_is_checked(song_file, tiny_model_dir):
    with pytest.raises(ValueError, match="style name"):
        encode_style(load_band_model(tiny_model_dir), "../escape", song_file)


def test_parameters_are_in_every_checkpoint_tensor():
    # every network the method names has weights that a checkpoint stores
    names = set(BandModel(TINY).state_dict())
    for instrument in INSTRUMENTS:
        assert f"vaes.{instrument}.log_sigma_x" in names
    assert any(n.startswith("melody.") for n in names)
    assert all(any(n.startswith(f"conditionals.{b}.") for n in names) for b in BAND)


def test_int8_weights_stay_within_their_stated_tolerance_of_the_modules():
    """weights="int8": the 256->2048 decoder layer in int8 (per-channel scales), 128->1024 in
    bfloat16; decoder probabilities within 0.02 of the float modules (the shipped model: 0.005)."""
    from models.fused import ModuleBand

    torch.manual_seed(3)
    model = BandModel(BandConfig(channels=(16, 32, 64))).eval()
    reference, fused = ModuleBand(model), FusedBand(model, "int8")
    latents = torch.randn(5, 16)
    with torch.inference_mode():
        want = reference.decode(latents)
        assert_decoded_close(fused.decode(latents), want, atol=0.02, rtol=0)
        assert_decoded_close(fused.decode(latents[1:], 1), want[1:], atol=0.02, rtol=0)


def test_the_module_reference_matches_the_fused_path_piece_by_piece():
    from models.fused import ModuleBand
    from models.networks import piano_features

    torch.manual_seed(4)
    model = BandModel(BandConfig(channels=(16, 32, 64), arch="context")).eval()
    reference, fused = ModuleBand(model), FusedBand(model)
    bar = heard((torch.rand(32, 128) > 0.9).float() * 0.6)
    with torch.inference_mode():
        torch.testing.assert_close(fused.encode_piano(bar), reference.encode_piano(bar))
        inputs = torch.randn(model.config.melody_inputs)
        torch.testing.assert_close(fused.next_piano(inputs), reference.next_piano(inputs))
        features, previous = piano_features(bar[None])[0], torch.randn(4, 16)
        torch.testing.assert_close(fused.next_band(inputs[:16], previous, features),
                                   reference.next_band(inputs[:16], previous, features))
        latents = torch.randn(4, 16)
        assert_decoded_close(fused.decode(latents, 1), reference.decode(latents, 1))


def test_unknown_weight_format_is_refused():
    with pytest.raises(ValueError, match="weights='int4'"):
        FusedBand(BandModel(BandConfig(channels=(16, 32, 64))), "int4")


def test_int8_is_refused_where_the_kernel_cannot_read_the_layer():
    """channels[2] = 4: _weight_int8pack_mm would read past the inputs (measured: NaN, or a crash)."""
    from models.engine import BandEngine

    model = BandModel(BandConfig(latent=8, channels=(4, 4, 4), hidden=8))
    with pytest.raises(ValueError, match="multiple of 16"):
        FusedBand(model, "int8")
    assert BandEngine(model).fused.weights == "float32"  # "auto" falls back
