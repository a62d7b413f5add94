"""`mammo model`: list the trained models, promote or roll back one, list the promotions, prune old predictions."""

from __future__ import annotations

import click
import pandas as pd

from mammo_pipeline import promotions, warehouse
from mammo_pipeline.model import registry
from mammo_pipeline.settings import Settings


@click.group("model")
def command() -> None:
    """Which model is current: list, promote, roll back, history, prune.

    \b
    Example:
        mammo model list
        mammo model promote 3f2a9c1d7e4b
        mammo model promote 3f2a9c1d7e4b --hospital hospital-b --rollback
        mammo model history
        mammo model prune --keep 3 --dry-run
    """


@command.command("list")
def list_models() -> None:
    """Every trained model, oldest first: its labels, its audit ROC-AUC per flag with the 95 % interval, which
    network answers the biopsy flag, and the hospitals whose predictions it currently serves.

    \b
    Example:
        mammo model list
    """
    settings = Settings.existing()
    reg = registry.read_registry(settings)
    if reg.empty:
        click.echo("no trained models yet (materialize trained_model, or run `mammo demo`)")
        return
    serving: dict[str, str] = {}
    try:
        rows = warehouse.query(settings, f"SELECT hospital, model_version FROM ({promotions.current_models_sql()})")
        for version, group in rows.groupby("model_version"):
            serving[str(version)] = ", ".join(sorted(map(str, group["hospital"])))
    except Exception:  # no predictions yet: no model serves any hospital
        pass
    table = pd.DataFrame(
        {
            "model_version": reg["model_version"],
            "created_at": pd.to_datetime(reg["created_at"], utc=True).dt.strftime("%Y-%m-%d %H:%M"),
            "n_train": reg["n_train"],
            "n_audit": reg["n_audit"],
            "biopsy ROC-AUC [95 % CI]": [_with_interval(r, "biopsy_roc_auc") for _, r in reg.iterrows()],
            "mag ROC-AUC [95 % CI]": [_with_interval(r, "mag_roc_auc") for _, r in reg.iterrows()],
            "biopsy from": reg.get("biopsy_source", pd.Series("", index=reg.index)).replace("", "-"),
            "current for": [serving.get(str(v), "-") for v in reg["model_version"]],
        }
    )
    click.echo(table.to_string(index=False))


def _with_interval(row: pd.Series, key: str) -> str:
    """'0.907 [0.825-0.967]', '0.907' (a model registered before intervals) or 'n/a'."""
    value, low, high = (row.get(f"{key}{end}") for end in ("", "_low", "_high"))
    if value is None or pd.isna(value):
        return "n/a"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}-{high:.3f}]"


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
    from mammo_pipeline.model.infer import ModelMismatch  # onnxruntime: only for this command

    settings = Settings.existing()
    try:
        row = promotions.promote(
            settings, version, hospital, reason="rollback" if rollback else "manual", promoted_by="cli", note=note
        )
    except (promotions.UnknownModel, promotions.UnknownHospital, ModelMismatch, FileNotFoundError) as e:
        raise click.ClickException(str(e.args[0])) from e
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
    for h, n, cached in promotions.partly_predicted(settings, version, [h for h in wanted if h in predicted]):
        click.echo(
            f"{version} predicted {n} of the {cached} cached images of {h}: its current views show those {n} until "
            f"image_predictions and study_predictions are materialized for {h} (the nightly pass, or the UI)."
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
    df = promotions.read_promotions(Settings.existing())
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
    settings = Settings.existing()
    try:
        plan = promotions.prune(settings, keep, dry_run=dry_run)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    verb = "would delete" if dry_run else "deleted"
    for item in plan:
        click.echo(f"{verb} {item.table} hospital={item.hospital} model_version={item.model_version}")
    click.echo(f"{len(plan)} slice(s) {'would be deleted' if dry_run else 'deleted'}")
