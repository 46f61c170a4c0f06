"""`vaejam run` start-up errors: one clear line and exit status 2, never a traceback (no MIDI needed:
the model and the arguments are checked before any port opens)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bridge.cli import main


def run(capsys, *args: str) -> tuple[int, str]:
    # --clock midi: no Ableton Link peer, not even for a moment (a Link test's peer nearby would join it)
    code = main(["run", "--osc-port", "0", "--clock", "midi", *args])
    err = capsys.readouterr().err
    return code, err


def test_missing_model_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    code, err = run(capsys, "--model", str(tmp_path / "nothing"))
    assert code == 2 and "cannot load the model" in err and "no model here" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_corrupt_model_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    code, err = run(capsys, "--model", str(tmp_path))
    assert code == 2 and "corrupt config" in err and "Traceback" not in err


def test_truncated_weights_are_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    from models.checkpoint import save_band_model
    from models.networks import BandConfig, BandModel

    save_band_model(BandModel(BandConfig(latent=8, channels=(4, 4, 4), hidden=8)), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = run(capsys, "--model", str(tmp_path))
    assert code == 2 and "model.safetensors" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_without_cuda_is_exit_2(capsys, tmp_path: Path) -> None:
    code, err = run(capsys, "--device", "cuda", "--model", str(tmp_path))
    assert code == 2 and ("CUDA" in err or "model" in err)


@pytest.mark.parametrize("args, message", [
    (("--channels", "guitar=17"), "--channels"),
    (("--lookahead-steps", "0"), "lookahead"),
    (("--bpm", "1000"), "bpm"),
    (("--autopilot", "-1"), "autopilot"),
])
def test_bad_arguments_are_exit_2(capsys, args: tuple[str, ...], message: str) -> None:
    code, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(os.path.exists("/dev/snd/seq"), reason="this machine has an ALSA sequencer")
def test_alsa_without_a_sequencer_is_exit_2(capsys, tmp_path: Path) -> None:
    from models.checkpoint import save_band_model
    from models.networks import BandConfig, BandModel

    save_band_model(BandModel(BandConfig(latent=8, channels=(4, 4, 4), hidden=8)), tmp_path)
    code, err = run(capsys, "--model", str(tmp_path), "--midi-api", "alsa")
    assert code == 2 and "ALSA" in err and "Traceback" not in err


def test_shutdown_goes_on_after_a_failing_step_and_says_so() -> None:
    """A port that fails to close (rtmidi's SystemError is an OSError) must not skip the note-offs;
    it escaped as an OSError before, which the CLI turned into exit status 2 after a normal log."""
    from bridge.daemon import Daemon

    calls: list[str] = []

    class Step:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        def __call__(self, *args: object, **kwargs: object) -> None:
            calls.append(self.name)
            if self.fails:
                raise OSError("MidiInJack::closePort: JACK error")

    class Parts:
        def __init__(self, **steps: Step) -> None:
            self.__dict__.update(steps)

    daemon = Daemon(session=Parts(close=Step("session.close")),  # type: ignore[arg-type]
                    midi=Parts(close_input=Step("midi.close_input", fails=True), close=Step("midi.close")),  # type: ignore[arg-type]
                    osc=Parts(stop=Step("osc.stop")), housekeeper=Parts(stop=Step("housekeeper.stop")))  # type: ignore[arg-type]
    assert daemon.shutdown() is False
    assert calls == ["housekeeper.stop", "osc.stop", "midi.close_input", "session.close", "midi.close"]
