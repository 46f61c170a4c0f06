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
