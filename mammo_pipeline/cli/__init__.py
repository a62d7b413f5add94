"""The `mammo` command: a thin shell over the domain functions, one module per subcommand."""

from __future__ import annotations

import errno
import importlib
import warnings

import click

from mammo_pipeline import __version__
from mammo_pipeline.settings import SettingsError

# Dagster marks observable source assets as beta; say so in the docs, not on every command line.
warnings.filterwarnings("ignore", message=".*is currently in beta.*")
# torch 2.14 deprecates torch.jit.script, which its own code paths still call when a model is traced or exported;
# nothing for a user to act on, so it does not belong on their terminal.
warnings.filterwarnings("ignore", message=r".*`torch\.jit\.script` is deprecated.*", category=FutureWarning)

# Each module defines `command` (a click command or group); its name is the subcommand's name.
SUBCOMMANDS: tuple[str, ...] = (
    "home",
    "synth",
    "convert",
    "label",
    "labels",
    "weights",
    "explain",
    "query",
    "lineage",
    "model",
    "cache",
    "drops",
    "demo",
)


class _Mammo(click.Group):
    """The command group: a MAMMO_* variable it cannot use, a file it cannot write (a full disk, a folder
    without write permission), or a store it cannot open or read (a read-only home's DuckDB or SQLite file, a
    damaged Parquet or JSON file: `_store_fault`) is a one-line error naming it, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SettingsError as e:
            raise click.ClickException(str(e)) from e
        except OSError as e:
            if e.errno == errno.EPIPE:  # `mammo query ... | head`: click.main ends quietly on a closed pipe
                raise
            raise click.ClickException(str(e)) from e
        except Exception as e:
            store = _store_fault(e)
            if store is None:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise click.ClickException(f"{store}: {first}") from e


def _store_fault(e: Exception) -> str | None:
    """Which store an exception comes from, when it says a file cannot be opened or read rather than a fault in
    this code: DuckDB's (the warehouse: a read-only home, a damaged Parquet file under a view), SQLite's (the
    label store: a file that is not a database, locked or read-only), pyarrow's (a damaged Parquet file) and a
    damaged JSON file. None for anything else, whose traceback stays."""
    import json
    import sqlite3

    if isinstance(e, sqlite3.Error):
        return "the label store (SQLite)"
    if isinstance(e, json.JSONDecodeError):
        return "a damaged JSON file"
    module = type(e).__module__ or ""
    if module.split(".")[0] in ("duckdb", "_duckdb"):
        return "the warehouse (DuckDB)"
    if module.split(".")[0] == "pyarrow":
        return "a Parquet file"
    return None


@click.group(cls=_Mammo, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mammo")
def cli() -> None:
    """Sort screening mammograms into biopsy-marker and magnification views.

    Paths come from MAMMO_HOME (default ./mammo-home) and the MAMMO_* variables in the README.
    """


for _name in SUBCOMMANDS:
    cli.add_command(importlib.import_module(f"mammo_pipeline.cli.{_name}").command)
