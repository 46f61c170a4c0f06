"""Hardware knobs (bridge.cc_map): scaling, --cc parsing, learning, the config file, and the session
moving a control when a bound CC arrives on its input."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import mido
import pytest

from bridge.cc_map import CONFIG_FILE, CcMap, apply_bindings, config_dir, knob_names, parse_binding, scale
from bridge.osc_table import BY_ADDRESS
from tests.test_session import Rig


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("VAEJAM_CONFIG_DIR", str(folder))
    return folder


def row(name: str):
    return BY_ADDRESS[f"/vaejam/{name}"]


@pytest.mark.parametrize("name, value, expected", [
    ("noise_sd", 0, 0.0), ("noise_sd", 127, 3.0), ("alpha", 127, 1.0), ("velocity/bass", 0, 0.0),
    ("tempo", 0, 20.0), ("tempo", 127, 400.0),
    ("mute/drums", 63, 0), ("mute/drums", 64, 1), ("mute/drums", 127, 1), ("record", 0, 0),
    ("harmony", 0, 0), ("harmony", 32, 1), ("harmony", 95, 1), ("harmony", 96, 2), ("harmony", 127, 2),
    ("autopilot", 127, 64), ("autopilot", 2, 1), ("seed", 127, 2**31 - 1),
])
def test_cc_values_scale_to_the_table_range(name: str, value: int, expected: float) -> None:
    got = scale(row(name), value)
    assert got == pytest.approx(expected) and type(got) is type(expected)


def test_float_scaling_is_linear() -> None:
    assert scale(row("noise_sd"), 64) == pytest.approx(3.0 * 64 / 127)


@pytest.mark.parametrize("text, message", [
    ("noise_sd", "CONTROL=CC"), ("noise_sd=", "CONTROL=CC"), ("noise_sd=x", "CONTROL=CC"),
    ("style=21", "not a numeric control"), ("nope=21", "not a numeric control"), ("play=21", "not a numeric"),
    ("noise_sd=64", "sustain pedal"), ("noise_sd=120", "outside 0-119"),
])
def test_bad_bindings_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_binding(text)


def test_good_bindings_parse() -> None:
    assert parse_binding("noise_sd=21") == ("noise_sd", 21)
    assert parse_binding("density/bass=0") == ("density/bass", 0)
    assert "style" not in knob_names() and "noise_sd" in knob_names() and "mute/bass" in knob_names()


def test_config_dir_follows_the_environment(config: Path) -> None:
    assert config_dir() == config


def test_unbound_cc_is_not_handled() -> None:
    assert CcMap().handle(21, 100) is None


def test_bindings_move_one_control_each_and_save(config: Path) -> None:
    cc_map = CcMap.from_config()
    apply_bindings(cc_map, {"noise_sd": 21, "alpha": 22})
    assert cc_map.handle(21, 127) == ("noise_sd", 3.0)
    cc_map.bind("noise_sd", 23)  # a control has one CC: 21 is free again
    assert cc_map.handle(21, 127) is None and cc_map.handle(23, 0) == ("noise_sd", 0.0)
    cc_map.bind("density/bass", 22)  # a CC drives one control: alpha loses it
    assert cc_map.bindings() == {"density/bass": 22, "noise_sd": 23}
    saved = json.loads((config / CONFIG_FILE).read_text())
    assert saved == {"version": 1, "cc": {"density/bass": 22, "noise_sd": 23}}
    assert CcMap.from_config().bindings() == {"density/bass": 22, "noise_sd": 23}


def test_learn_binds_the_next_cc_that_moves_and_skips_the_pedal(config: Path) -> None:
    cc_map = CcMap.from_config()
    cc_map.learn("alpha")
    assert cc_map.status() == {"cc_learning": "alpha"}
    assert cc_map.handle(64, 127) is None  # the pedal is never a knob: still learning
    assert cc_map.status()["cc_learning"] == "alpha"
    assert cc_map.handle(30, 127) == ("alpha", 1.0)
    assert cc_map.status() == {"cc/alpha": 30, "cc_learning": ""}
    assert CcMap.from_config().bindings() == {"alpha": 30}
    cc_map.learn("noise_sd")
    cc_map.learn("")  # cancelled
    assert cc_map.handle(31, 5) is None and cc_map.bindings() == {"alpha": 30}
    with pytest.raises(ValueError, match="not a numeric control"):
        cc_map.learn("style")


def test_a_broken_config_is_ignored_with_a_warning(config: Path, caplog: pytest.LogCaptureFixture) -> None:
    config.mkdir(parents=True)
    for text in ("{not json", '{"cc": [1]}', '{"cc": {"nope": 3}}', '{"cc": {"alpha": 64}}'):
        (config / CONFIG_FILE).write_text(text)
        with caplog.at_level(logging.WARNING):
            assert CcMap.from_config().bindings() == {}
        assert "ignoring the CC bindings" in caplog.text
        caplog.clear()


def test_an_unwritable_config_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cc_map = CcMap(blocker / "sub" / CONFIG_FILE)
    with pytest.raises(OSError, match="cannot save CC bindings"):
        cc_map.bind("alpha", 3)
    cc_map.learn("noise_sd")  # learning still binds for this run when the file cannot be written
    assert cc_map.handle(9, 127) == ("noise_sd", 3.0)


def test_a_knob_on_the_input_port_moves_noise_sd_in_the_session() -> None:
    rig = Rig()
    rig.session.cc_map = CcMap()
    rig.session.cc_map.bind("noise_sd", 21)
    rig.session.on_midi(mido.Message("control_change", control=21, value=127), rig.t(0))
    assert rig.session.status()["noise_sd"] == pytest.approx(3.0)
    rig.session.on_midi(mido.Message("control_change", control=21, value=0), rig.t(1))
    assert rig.session.status()["noise_sd"] == 0.0
    assert rig.session.status()["cc/noise_sd"] == 21
    rig.session.on_midi(mido.Message("control_change", control=5, value=0), rig.t(2))
    assert rig.session.status()["ignored_control_change"] == 1  # unbound CCs are counted, as before


def test_learn_action_and_mute_toggle_through_the_session() -> None:
    rig = Rig()
    with pytest.raises(ValueError, match="no CC map"):
        rig.session.action("learn", ("alpha",))
    rig.session.cc_map = CcMap()
    rig.session.action("learn", ("mute/bass",))
    assert rig.session.status()["cc_learning"] == "mute/bass"
    rig.session.on_midi(mido.Message("control_change", channel=3, control=40, value=100), rig.t(0))
    status = rig.session.status()
    assert status["mute/bass"] == 1 and status["cc/mute/bass"] == 40 and status["cc_learning"] == ""
    with pytest.raises(ValueError):
        rig.session.action("learn", ("play",))


def test_the_daemon_reads_cc_and_osc_out_options(config: Path) -> None:
    from bridge.daemon import StartupError, _knobs_and_osc_out

    cc_map, osc_out = _knobs_and_osc_out(argparse.Namespace(cc=["noise_sd=21"], osc_out=None))
    assert cc_map.bindings() == {"noise_sd": 21} and osc_out is None
    assert CcMap.from_config().bindings() == {"noise_sd": 21}  # saved for the next run
    for bad in (argparse.Namespace(cc=["noise_sd=64"], osc_out=None), argparse.Namespace(cc=[], osc_out="nohost")):
        with pytest.raises(StartupError):
            _knobs_and_osc_out(bad)
