"""`mammo demo`: the whole loop on synthetic data, in the persistent Dagster instance."""

from __future__ import annotations

import click

from mammo_pipeline.settings import Settings


@click.command("demo")
@click.option("--quick", is_flag=True, help="A tiny version (2 hospitals, one round) for CI and a first look.")
@click.option(
    "--rounds", type=click.IntRange(min=1), default=None, help="Active-learning rounds of 125 labels (default 4)."
)
@click.option("--studies", type=click.IntRange(min=1), default=None, help="Studies per hospital (default 90).")
@click.option(
    "--pretrained",
    type=click.Choice(["none", "imagenet"]),
    default="none",
    show_default=True,
    help="'imagenet' needs local ResNet18 weights (see `mammo weights`).",
)
def command(quick: bool, rounds: int | None, studies: int | None, pretrained: str) -> None:
    """Run the main job end to end on synthetic hospital drops.

    Makes three hospitals, materializes the asset graph in MAMMO_HOME/dagster, runs four active-learning
    rounds with a simulated radiologist, brings in a new hospital drop through the sensor and prints a
    summary. A second run reuses what exists and finishes quickly.

    \b
    Example:
        mammo demo
        MAMMO_HOME=/tmp/try mammo demo --quick
    """
    from mammo_pipeline.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if quick else DemoConfig()
    if rounds is not None:
        config.rounds = rounds
    if studies is not None:
        config.studies_per_hospital = studies
    run_demo(Settings.from_env(pretrained=pretrained), config, echo=click.echo)
