"""`mammo labels`: facts about the label store (`mammo labels stats`: queues, audit reads, Cohen's κ)."""

from __future__ import annotations

import json

import click

from mammo_pipeline.settings import Settings

DISK_ONLY_NOTE = (
    "note: {path} is read as it is on disk (this user may not write its folder, so labels a running app still "
    "holds in its -wal file are left out)"
)


@click.group("labels")
def command() -> None:
    """Facts about the label store: queue counts, double audit reads and reader agreement.

    \b
    Example:
        mammo labels stats
        mammo labels stats --json
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
    from mammo_pipeline.labels.store import NoLabelStore, open_existing

    settings = Settings.from_env()
    try:
        store = open_existing(settings.labels_db, seed=settings.seed)
    except NoLabelStore as e:
        raise click.ClickException(e.args[0]) from e
    figures = store.audit_stats()
    counts = store.queue_counts()
    if store.disk_only:
        click.echo(DISK_ONLY_NOTE.format(path=settings.labels_db), err=True)
    if as_json:
        click.echo(json.dumps({"queues": counts, "audit": figures}, indent=2))
        return
    withdrawn = store.n_withdrawn()
    gone = f" (and {withdrawn} withdrawn: deleted from their drop, counted nowhere)" if withdrawn else ""
    n_images, n_events = store.n_images(), store.last_event_id()
    click.echo(f"Label store {settings.labels_db}: {n_images} images{gone}, {n_events} label events")
    for name, (left, total) in counts.items():
        click.echo(f"  {name:<15} {left:>8} left of {total}")
    click.echo("")
    click.echo(stats_markdown(figures))
