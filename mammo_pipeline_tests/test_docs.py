"""The README tells the truth about the commands, the settings and the pictures."""

import re
from pathlib import Path

import pytest

from mammo_pipeline.cli import cli
from mammo_pipeline.settings import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_cli_command_is_documented(command):
    assert f"mammo {command}" in README


@pytest.mark.parametrize("variable", [var for var, _, _ in ENVIRONMENT_VARIABLES])
def test_every_setting_is_documented(variable):
    assert f"`{variable}`" in README


def test_readme_first_screen_gives_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_picture_the_readme_shows_exists():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures, "the README shows no pictures"
    for picture in pictures:
        assert (ROOT / picture).is_file(), picture


def test_make_targets_named_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make (\w+)`", README)):
        assert re.search(rf"^{target}:", makefile, re.M), target
