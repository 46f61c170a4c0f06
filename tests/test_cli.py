"""The `vaejam` command line: version, help texts, one-line errors."""
from __future__ import annotations

import argparse
from importlib import metadata

import pytest
import torch

from bridge.cli import build_parser, main


def all_parsers(parser: argparse.ArgumentParser, path: str = "vaejam"):
    """(command path, parser) for the top level and every subcommand, however deep."""
    yield path, parser
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, f"{path} {name}")


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"vaejam {metadata.version('vaejam')}"


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    parsers = dict(all_parsers(build_parser()))
    assert {"vaejam run", "vaejam render", "vaejam style add", "vaejam train", "vaejam eval"} <= set(parsers)
    for path, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{path} {name}: no help text"
            shown = parser._get_formatter()._get_help_string(action)
            off = action.default is None or action.default is False or action.default is argparse.SUPPRESS
            if action.option_strings and not off:
                assert "default" in shown.lower(), f"{path} {name}: default not shown"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
@pytest.mark.parametrize("command", [
    ["run", "--device", "cuda", "--osc-port", "0", "--clock", "midi"],  # midi: no Link peer for a moment
    ["train", "--data", "CORPUS", "--out", "OUT", "--device", "cuda", "--vae-epochs", "1", "--nn-epochs", "1"],
])
def test_device_cuda_on_a_cpu_torch_is_one_line_naming_the_fix(command, tiny_model_dir, tmp_path, capsys):
    args = [str(tmp_path / a) if a in ("OUT", "CORPUS") else a for a in command]
    if command[0] == "run":
        args += ["--model", tiny_model_dir]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "install a CUDA build of torch" in err and "--device cpu" in err
