"""`mammo model`: promote or roll back a model, list the promotions, prune old models' predictions."""

from __future__ import annotations

import click

from mammo_pipeline import promotions, warehouse
from mammo_pipeline.settings import Settings


@click.group("model")
def command() -> None:
    """Which model is current: promote, roll back, history, prune.

    \b
    Example:
        mammo model promote 3f2a9c1d7e4b
        mammo model promote 3f2a9c1d7e4b --hospital hospital-b --rollback
        mammo model history
        mammo model prune --keep 3 --dry-run
    """


@command.command("promote")
@click.argument("version")
@click.option("--hospital", default=None, help="Only for this hospital (default: every hospital).")
@click.option("--rollback", is_flag=True, help="Record the promotion as a roll back to an earlier model.")
@click.option("--note", default="", help="Why (kept in model_promotions).")
def promote(version: str, hospital: str | None, rollback: bool, note: str) -> None:
    """Make VERSION the current model (its predictions show in the *_current views from now on).

    \b
    Example:
        mammo model promote 3f2a9c1d7e4b --note "retrained on round 5"
        mammo model promote 1b7e0c9a2d44 --hospital hospital-b --rollback
    """
    settings = Settings.from_env()
    try:
        row = promotions.promote(
            settings, version, hospital, reason="rollback" if rollback else "manual", promoted_by="cli", note=note
        )
    except promotions.UnknownModel as e:
        raise click.ClickException(str(e)) from e
    warehouse.refresh_views(settings)
    scope = hospital or "every hospital"
    click.echo(
        f"{version} is current for {scope} since {row['promoted_at']} (was {row['previous_model_version'] or 'none'})"
    )
    predicted = set(promotions.predicted_hospitals(settings, version))
    wanted = [hospital] if hospital else [p.name.split("=", 1)[1] for p in _hospital_dirs(settings)]
    missing = [h for h in wanted if h not in predicted]
    if missing:
        click.echo(
            f"No predictions of {version} yet for {', '.join(missing)}: until image_predictions and "
            "study_predictions are materialized for them, their current views keep the previous model's rows."
        )


def _hospital_dirs(settings: Settings):
    return sorted(settings.table_dir("image_predictions").glob("hospital=*"))


@command.command("history")
def history() -> None:
    """Every promotion, oldest first, with the time (valid_to) a later promotion covering its scope replaced it.

    \b
    Example:
        mammo model history
    """
    df = promotions.read_promotions(Settings.from_env())
    if df.empty:
        click.echo("no promotions yet (the promoted_model asset records one when a model passes its checks)")
        return
    df["hospital"] = df["hospital"].fillna("(all)")
    df["previous_model_version"] = df["previous_model_version"].fillna("-")
    df["valid_to"] = df["valid_to"].astype(object).where(df["valid_to"].notna(), "(current)")
    cols = ["promoted_at", "valid_to", "hospital", "model_version", "reason", "previous_model_version", "promoted_by"]
    click.echo(df[cols].to_string(index=False))


@command.command("prune")
@click.option("--keep", type=int, default=3, show_default=True, help="Promoted models kept per hospital.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def prune(keep: int, dry_run: bool) -> None:
    """Delete prediction slices of models no longer needed (retention rule: README, 'Prediction history').

    \b
    Example:
        mammo model prune --keep 3 --dry-run
    """
    settings = Settings.from_env()
    try:
        plan = promotions.prune(settings, keep, dry_run=dry_run)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    verb = "would delete" if dry_run else "deleted"
    for item in plan:
        click.echo(f"{verb} {item.table} hospital={item.hospital} model_version={item.model_version}")
    click.echo(f"{len(plan)} slices {verb}")
