"""`mammo home`: create MAMMO_HOME and show where everything lives."""

from __future__ import annotations

import shlex
import shutil
from importlib.resources import files

import click

from mammo_pipeline.settings import (
    DROP_SENSOR_INTERVAL_VAR,
    ENVIRONMENT_VARIABLES,
    QUIET_SECONDS_VAR,
    Settings,
    drop_sensor_interval_from_env,
    quiet_seconds_from_env,
    realdata_dir,
)

# Settings never echoed: MAMMO_SALT turns a 16-character patient key back into its Patient ID by brute force
SECRETS = frozenset({"MAMMO_SALT"})


def init_home(settings: Settings) -> Settings:
    """Create the folders and install the shipped dagster.yaml into DAGSTER_HOME (never overwriting one); rewrite
    an existing `warehouse.duckdb`, whose views name their Parquet files by absolute path: in a home copied, moved
    or restored from a backup they would read the original home's files."""
    settings.ensure_dirs()
    target = settings.dagster_home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(str(files("mammo_pipeline") / "dagster.yaml"), target)
    if settings.duckdb_path.exists():
        from mammo_pipeline import warehouse

        warehouse.refresh_views(settings)
    return settings


@click.command("home")
@click.option("--env", "show_env", is_flag=True, help="Print the settings as shell exports.")
def command(show_env: bool) -> None:
    """Create MAMMO_HOME (and DAGSTER_HOME with its dagster.yaml) and print the resolved paths.

    \b
    Example:
        MAMMO_HOME=/data/mammo mammo home
        eval "$(mammo home --env)"
    """
    settings = Settings.from_env()
    values = {  # Settings' own, then what Dagster and the benchmarks read themselves (refused here too)
        **settings.as_env(),
        QUIET_SECONDS_VAR: f"{quiet_seconds_from_env():g}",
        DROP_SENSOR_INTERVAL_VAR: str(drop_sensor_interval_from_env()),
        "MAMMO_REALDATA": str(realdata_dir()),
    }
    settings = init_home(settings)
    if show_env:
        for key, value in values.items():
            if key in SECRETS:
                click.echo(f"# {key} is set and not printed: a secret (with it, patient keys can be traced back)")
            else:
                click.echo(f"export {key}={shlex.quote(value)}")
        return
    for var, default, text in ENVIRONMENT_VARIABLES:
        click.echo(f"{var:26} {text} (default {default})")
    click.echo()
    for key, value in values.items():
        click.echo(f"{key}={'(set, not printed)' if key in SECRETS else value}")
