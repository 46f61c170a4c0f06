"""The `vaejam` command: one entry point, a subcommand per job.

Each subcommand lives beside the code it drives and registers itself through a
`register_cli(subparsers)` function; this module only lists them, so `vaejam --help` shows them all.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
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
)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaejam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
