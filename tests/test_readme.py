"""Every vqclip command the README shows is one the CLI accepts, as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vqclip.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The `vqclip …` lines of the README's shell blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", README.read_text(), re.DOTALL):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("!")
            if line.startswith("vqclip "):
                commands.append(shlex.split(line, comments=True))
    return [" ".join(shlex.quote(word) for word in words) for words in commands]


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_parses(command):
    words = shlex.split(command)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as done:  # a usage error (exit 2), or --help (exit 0)
        assert done.code == 0, f"the README's command is refused: {command}"


def test_the_readme_shows_how_to_make_resume_and_export_an_animation():
    commands = readme_commands()
    motion = [c for c in commands if c.startswith("vqclip motion ")]
    assert any("--zoom" in c and "--frames" in c for c in motion)
    assert any("--init-video" in c for c in motion)
    assert any("--resume" in c for c in motion)
    assert any(c.startswith("vqclip export ") and "--interpolate" in c for c in commands)
    assert "(assets/motion.gif)" in README.read_text()
    assert (README.parent / "assets" / "motion.gif").stat().st_size < 300_000
