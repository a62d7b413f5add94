"""The click callback of every option that names a file to write (`--out`, `--export`, report PNGs)."""

from __future__ import annotations

from pathlib import Path

import click

from mammo_pipeline.atomic import NotRegularFile, regular_file_target


def output_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`value` as `atomic.regular_file_target` sees it: a symlink followed, a device or pipe refused (exit 2)."""
    if value is None:
        return None
    try:
        return regular_file_target(value)
    except NotRegularFile as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from e
