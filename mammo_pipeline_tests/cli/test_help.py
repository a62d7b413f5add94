"""The README promises that every `mammo` command's `--help` shows an example."""

from __future__ import annotations

import click
from click.testing import CliRunner

from mammo_pipeline.cli import cli


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path under `group` (groups' subcommands, recursively)."""
    paths = []
    for name, sub in group.commands.items():
        path = (*prefix, name)
        paths.extend(_leaf_commands(sub, path) if isinstance(sub, click.Group) else [path])
    return paths


def test_every_command_help_has_an_example():
    paths = _leaf_commands(cli)
    assert {("home",), ("labels", "stats"), ("model", "prune")} <= set(paths)  # the walk reaches into groups
    missing = []
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        if "Example:" not in result.output:
            missing.append(" ".join(path))
    assert missing == []
