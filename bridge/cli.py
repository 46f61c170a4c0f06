"""The `vaejam` command: one entry point, a subcommand per job.

Each subcommand lives beside the code it drives and registers itself through a
`register_cli(subparsers)` function; this module only lists them, so `vaejam --help` shows them all.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib import metadata
from typing import Sequence

# (module, what it adds); a module's register_cli adds one or more subparsers whose
# `func(args) -> int` runs the job.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "bridge.daemon",  # run
    "models.render",  # render
    "models.style",  # style add|list
    "training.synth",  # data synth|midi
    "training.train",  # train
    "training.evaluate",  # eval
    "bridge.bench",  # bench
    "max_for_live.build",  # m4l build
)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help shows its default, unless the help already says it or there is none
    to show (flags, and options that are simply off when not given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default is None or default is False or default is argparse.SUPPRESS:
            return text
        if default == "":
            return f"{text} (default: none)"
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """Subcommands (and theirs) are made through add_parser with this class, so all share the formatter."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def package_version() -> str:
    try:
        return metadata.version("vaejam")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def no_cuda_message(option: str = "--device cuda") -> str:
    return (f"{option}: this torch ({torch_version()}) has no CUDA support or sees no GPU; "
            "install a CUDA build of torch (pytorch.org) or use --device cpu")


def torch_version() -> str:
    import torch
    return torch.__version__


def check_device(device: str) -> str:
    """A torch device name the user gave ("auto": CUDA when torch sees a GPU, else the CPU); UsageError
    naming the fix when CUDA is asked for but missing."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: use auto, cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(no_cuda_message(f"--device {device}"))
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaejam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # not written yet in this checkout
                continue
            raise
        module.register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, OSError) as err:
        # Bad input files, bad values and port trouble: one clear line, no traceback.
        print(f"vaejam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
