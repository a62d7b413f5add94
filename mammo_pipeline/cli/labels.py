"""`mammo labels`: facts about the label store (`mammo labels stats`: queues, audit reads, Cohen's κ)."""

from __future__ import annotations

import json

import click

from mammo_pipeline.settings import Settings


@click.group("labels")
def command() -> None:
    """Facts about the label store.

    \b
    Example:
        mammo labels stats
    """


@command.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(as_json: bool) -> None:
    """Queue counts, the blind audit reads, Cohen's κ between readers and each reader's agreement with the audit
    truth (the adjudicated label where two readers disagreed).

    \b
    Example:
        mammo labels stats
        mammo labels stats --json
    """
    from mammo_pipeline.labels.agreement import stats_markdown
    from mammo_pipeline.labels.store import LabelStore

    settings = Settings.from_env()
    if not settings.labels_db.exists():
        raise click.ClickException(f"no label store at {settings.labels_db}: run `mammo label` or the demo first")
    store = LabelStore(settings.labels_db, seed=settings.seed)
    figures = store.audit_stats()
    counts = store.queue_counts()
    if as_json:
        click.echo(json.dumps({"queues": counts, "audit": figures}, indent=2))
        return
    click.echo(f"Label store {settings.labels_db}: {store.n_images()} images, {store.last_event_id()} label events")
    for name, (left, total) in counts.items():
        click.echo(f"  {name:<15} {left:>8} left of {total}")
    click.echo("")
    click.echo(stats_markdown(figures))
