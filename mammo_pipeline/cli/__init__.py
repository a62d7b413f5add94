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
    "demo",
)


class _Mammo(click.Group):
    """The command group: a MAMMO_* variable it cannot use, or a file it cannot write (a full disk, a folder
    without write permission), is a one-line error naming the file, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SettingsError as e:
            raise click.ClickException(str(e)) from e
        except OSError as e:
            if e.errno == errno.EPIPE:  # `mammo query ... | head`: click.main ends quietly on a closed pipe
                raise
            raise click.ClickException(str(e)) from e


@click.group(cls=_Mammo, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mammo")
def cli() -> None:
    """Sort screening mammograms into biopsy-marker and magnification views.

    Paths come from MAMMO_HOME (default ./mammo-home) and the MAMMO_* variables in the README.
    """


for _name in SUBCOMMANDS:
    cli.add_command(importlib.import_module(f"mammo_pipeline.cli.{_name}").command)
