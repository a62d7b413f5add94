"""`mammo label`: the keyboard labeling app (or an export of every label event)."""

from __future__ import annotations

import getpass
from pathlib import Path

import click

from mammo_pipeline.cli.labels import DISK_ONLY_NOTE
from mammo_pipeline.cli.output import output_file
from mammo_pipeline.labels.store import NoLabelStore, open_existing, sync_from_warehouse
from mammo_pipeline.settings import Settings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("label")
@click.option("--host", default="127.0.0.1", show_default=True, help="Any other than loopback turns on team mode.")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--team", "force_team", is_flag=True, help="Sign-in even on loopback (behind a TLS reverse proxy).")
@click.option(
    "--annotator",
    default=None,
    help="Your name in the labels (single-user mode; default: OS user); with --hash-password, the line's name.",
)
@click.option("--blind", is_flag=True, help="Hide the model's hint.")
@click.option(
    "--lease-minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Team mode: how long an image shown to one annotator is kept from the others.",
)
@click.option(
    "--audit-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of patients per hospital held out for measuring (only for images new to the store).",
)
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=output_file,
    help="Write every label event with provenance to FILE (.csv or .jsonl) and exit.",
)
@click.option(
    "--hash-password",
    is_flag=True,
    help="Print a MAMMO_ANNOTATORS_FILE line, name:<salted hash of a password asked for>, and exit. The name is "
    "--annotator's, else asked for (default: OS user).",
)
def command(
    host: str,
    port: int,
    annotator: str | None,
    blind: bool,
    lease_minutes: float,
    audit_fraction: float,
    export_file: Path | None,
    hash_password: bool,
    force_team: bool = False,
) -> None:
    """Label images with the keyboard: 1 biopsy marker, 2 magnification view, 3 neither, 4 both.

    New images of the image_cache table are added to the label store first. On a host other than
    loopback, annotators sign in (MAMMO_ANNOTATORS="alice:pw,bob:pw" or MAMMO_ANNOTATORS_FILE).

    \b
    Example:
        mammo label --annotator alice
        mammo label --host 0.0.0.0 --port 5001
        mammo label --host 127.0.0.1 --team   # behind a TLS reverse proxy on this machine
        mammo label --export labels.csv
        mammo label --hash-password --annotator alice >> annotators.txt   # for MAMMO_ANNOTATORS_FILE
    """
    from mammo_pipeline.labels import app as label_app
    from mammo_pipeline.labels import security

    if hash_password:  # a line ready for the file (prompts on stderr): a bare hash is refused there
        name = (annotator or click.prompt("Annotator", default=getpass.getuser(), err=True)).strip()
        if not name or ":" in name or name.startswith("#"):
            raise click.BadParameter(
                f"{name!r} cannot name an annotator in the file (empty, a ':' or a leading '#')",
                param_hint="--annotator",
            )
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
        click.echo(f"{name}:{label_app.hash_password(password)}")
        return
    settings = Settings.existing()  # a mistyped MAMMO_HOME is refused, not made into an empty home
    if export_file is not None:  # reads the store as it is: never makes one, never syncs it first
        try:
            existing = open_existing(settings.labels_db, seed=settings.seed)
        except NoLabelStore as e:
            raise click.ClickException(e.args[0]) from e
        fmt = "jsonl" if export_file.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"
        n = existing.export(export_file, fmt=fmt)
        click.echo(f"Wrote {n} label events to {export_file} ({fmt})")
        if existing.disk_only:
            click.echo(DISK_ONLY_NOTE.format(path=settings.labels_db), err=True)
        return
    try:
        store, synced = sync_from_warehouse(settings, audit_fraction=audit_fraction)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    team = force_team or host not in LOOPBACK
    hosts = security.allowed_hosts(host)
    try:
        app = label_app.create_app(
            settings,
            team=team,
            annotator=annotator or getpass.getuser(),
            blind=blind,
            allowed_hosts=hosts,  # loopback, the bind address, MAMMO_ALLOWED_HOSTS
            lease_seconds=lease_minutes * 60,
        )
    except (ValueError, OSError) as e:  # OSError: MAMMO_ANNOTATORS_FILE missing or unreadable
        raise click.ClickException(str(e)) from e
    n_images, withdrawn = store.n_images(), store.n_withdrawn()
    gone = f", {withdrawn} withdrawn: deleted from their drop, shown nowhere" if withdrawn else ""
    click.echo(f"{n_images} images ({synced.new} new{gone}) · {'team mode: sign in' if team else 'single user'}")
    click.echo(f"Open http://{'localhost' if host in LOOPBACK else host}:{port}/  (press ? for the keys)")
    if team:
        click.echo(f"Answers to Host names: {', '.join(hosts)} (add yours with MAMMO_ALLOWED_HOSTS)")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
