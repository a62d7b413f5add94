"""`mammo drops`: drops cleaned out of landing, and withdrawing the images of one (`drop_withdrawal.py`)."""

from __future__ import annotations

import click

from mammo_pipeline.settings import Settings


@click.group("drops")
def command() -> None:
    """Drops cleaned out of landing: list them, withdraw the images of one whose files were deleted to withdraw them.

    \b
    Example:
        mammo drops cleaned-out royal-surrey-county
        mammo drops withdraw royal-surrey-county 2026-11-30 --dry-run
    """


@command.command("cleaned-out")
@click.argument("hospital")
def cleaned_out(hospital: str) -> None:
    """List the drops of HOSPITAL whose index rows are kept while landing holds no file of them (gone or emptied:
    archived after ingest, or deleted). Their images stay in use until `mammo drops withdraw` says otherwise.

    \b
    Example:
        mammo drops cleaned-out royal-surrey-county
    """
    from mammo_pipeline.drop_withdrawal import cleaned_out_drops

    drops = cleaned_out_drops(Settings.existing(), hospital)
    click.echo("\n".join(drops) if drops else f"{hospital}: no drop cleaned out of landing with its rows kept")


@command.command("withdraw")
@click.argument("hospital")
@click.argument("drop")
@click.option("--dry-run", is_flag=True, help="Only say how many images would be withdrawn.")
def withdraw(hospital: str, drop: str, dry_run: bool) -> None:
    """Withdraw the images of DROP, whose files were deleted from landing/HOSPITAL/DROP/ (a patient's opt-out, a
    drop sent to the wrong site): the index forgets its rows, then HOSPITAL is indexed and cached again, which
    deletes the renditions of every image no other file holds and marks it withdrawn in the label store (its
    labels kept for a file sent again). Refused while landing still holds files of DROP.

    \b
    Example:
        mammo drops withdraw royal-surrey-county 2026-11-30 --dry-run
        mammo drops withdraw royal-surrey-county 2026-11-30
    """
    from mammo_pipeline.drop_withdrawal import NotWithdrawable, withdraw_drop

    try:
        result = withdraw_drop(Settings.existing(), hospital, drop, dry_run=dry_run)
    except NotWithdrawable as e:
        raise click.ClickException(str(e)) from e
    click.echo(result.report())
