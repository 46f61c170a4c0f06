"""The docs say what the code does: generated sections are current, commands exist."""
from __future__ import annotations

import re
from pathlib import Path

from bridge.cli import build_parser
from bridge.osc_table import README_END, README_START, markdown_table, with_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_osc_table_is_generated_from_the_table():
    text = README.read_text(encoding="utf-8")
    assert text == with_table(text), "run: python -m bridge.osc_table --readme README.md"
    block = text[text.index(README_START) : text.index(README_END)]
    assert markdown_table() in block


def test_every_vaejam_command_in_the_readme_parses():
    """Each `vaejam ...` line names a real subcommand; lines without placeholders parse whole."""
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S))
    lines = re.findall(r"^(?:.*&& )?vaejam ([a-z][^#\n]*)", code, flags=re.M)
    assert len(lines) >= 8
    for line in lines:
        words = line.replace("\\", "").split()
        assert words[0] in subcommands, line
        concrete = not re.search(r"[A-Z]{2,}|\[|\|", line)
        if concrete:
            parser.parse_args(words)


def readme_commands() -> list[str]:
    """The numbered commands of "The two commands", comments left out."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## The two commands\n\n```bash\n(.*?)```", text, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_command_1_works_on_a_stock_debian_or_ubuntu():
    """No system-wide pip (refused there), no `pgrep -x jackd` (fooled by any other JACK server)."""
    setup = readme_commands()[0]
    steps = [step.strip() for step in setup.split("&&")]
    assert "python3-venv" in steps[1] and "python3-pip" in steps[1] and "jackd2" in steps[1]
    venv = steps.index("python3 -m venv .venv")
    assert steps[venv + 1] == ". .venv/bin/activate"
    assert all(not step.startswith(("pip ", "python3 -m pip")) for step in steps[:venv])
    assert "torch==2.13.0" not in setup  # our CI machine's local CPU build, not a user's torch
    assert "pgrep" not in setup and steps[-1] == "vaejam run --start-jack"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"then runs: (.*?)\)", README.read_text(encoding="utf-8")).group(1)
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_commands()[1] == "bash .ci/run"
    assert ci.rstrip().splitlines()[-1] == command
    for package in ("jackd2", "jack-midi-clock", "mma", "python3-venv"):
        assert package in ci
    assert "pgrep -x" not in ci


def test_readme_says_where_the_tools_come_from():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "`oscsend` comes with liblo-tools" in text
    assert "Mutes act at once" in text and "takes effect from the next bar" in text
    assert "`vaejam data synth` runs MMA" in text and "apt-get install mma" in text
