"""`mammo lineage`: which model labeled a study, trained on which labels, written by which Dagster run."""

from __future__ import annotations

import json

import click
import pandas as pd

from mammo_pipeline.lineage import LEFT, UnknownStudy, lineage_json, study_lineage
from mammo_pipeline.model.evaluate import FLAGS, study_point
from mammo_pipeline.settings import Settings


@click.command("lineage")
@click.argument("study_uid")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    metavar="WHEN",
    help="A date or time (UTC unless it says otherwise): the answer that was current then. Default: now.",
)
def command(study_uid: str, fmt: str, as_of: str | None) -> None:
    """Trace a study's predictions to the model, its ONNX file, label snapshot, training metrics and run;
    with --as-of, the model that was current for its hospital at that time.

    \b
    Example:
        mammo lineage 1.2.826.0.1.3680043.8.498.1
        mammo lineage 1.2.826.0.1.3680043.8.498.1 --as-of 2026-11-01
        mammo lineage 1.2.826.0.1.3680043.8.498.1 --format json
    """
    if as_of is not None:
        try:
            when = pd.Timestamp(as_of)
        except ValueError:
            when = pd.NaT
        if pd.isna(when):  # pandas reads "" and "NaT" as NaT instead of refusing them
            raise click.BadParameter(
                f"{as_of!r} is not a date or time (e.g. 2026-11-01 or 2026-11-01T09:30)", param_hint="--as-of"
            )
    try:
        lineage = study_lineage(Settings.existing(), study_uid, as_of=as_of)
    except UnknownStudy as e:
        raise click.ClickException(str(e)) from e
    click.echo(lineage_json(lineage) if fmt == "json" else render(lineage))


LATER = "; recomputed from the images of then: the study gained images later"


def render(lineage: dict) -> str:
    """A short human-readable report: the study, each model, then one line per image. A withdrawn study that no
    current model predicts any more is shown from the last model whose predictions of it are kept (`last`)."""
    study = lineage["prediction"] or {}
    current = lineage["current"] or lineage["last"]
    promoted = f"promoted {current['promoted_at']}" if current["promoted"] else "never promoted (newest predictions)"
    lines = [
        f"study      {lineage['study_instance_uid']}",
        f"as of      {lineage['as_of']}",
        f"hospital   {lineage['hospital']}   drops: {', '.join(lineage['drops']) or '?'}",
        *_withdrawn(lineage),
        f"{'current' if lineage['current'] else 'last':10} model {current['model_version']}  {promoted}",
        f"           onnx sha256 {current['onnx_sha256']}",
        f"           labels {current['label_snapshot_id']}  dagster run {current['dagster_run_id']}",
        f"prediction biopsy={study.get('has_biopsy_marker')} mag={study.get('is_mag_view')} "
        f"(max p {_p(study.get('max_p_biopsy'))} / {_p(study.get('max_p_mag'))} against "
        f"{_study_rule(lineage['models'].get(current['model_version'], {}))}, {study.get('n_images')} images"
        f"{LATER if study.get('recomputed_as_of') else ''})",
    ]
    for version, model in lineage["models"].items():
        lines.append(
            f"model      {version}  labels {model.get('label_snapshot_id', '?')}"
            f"  created {model.get('created_at', '?')}"
            f"  n_train {model.get('n_train', '?')}  accuracy {_p(model.get('accuracy'))}"
            f"  biopsy F1 {_p(model.get('biopsy_f1'))}  mag F1 {_p(model.get('mag_f1'))}"
        )
    if len(lineage["history"]) > 1:
        lines.append("history    every model that predicted this study (oldest first)")
        for row in lineage["history"]:
            lines.append(
                f"  {row['model_version']}  biopsy={row['has_biopsy_marker']} mag={row['is_mag_view']}"
                f"  predicted {row['predicted_at']}  run {row['dagster_run_id']}"
            )
    if lineage["promotions"]:
        lines.append(f"promotions for {lineage['hospital']} (oldest first)")
        for row in lineage["promotions"]:
            scope = row["hospital"] or "all hospitals"
            lines.append(f"  {row['promoted_at']}  {row['model_version']}  {row['reason']}  ({scope})")
    lines.append("images")
    gone = set((lineage.get("withdrawn") or {}).get("images", []))
    for image in lineage["images"]:
        drop = image.get("drop") or ("withdrawn" if image["sop_instance_uid"] in gone else "?")
        lines.append(
            f"  {image['sop_instance_uid']}  {drop}  {image['predicted_class']:8}"
            f"  p_biopsy {_p(image['p_biopsy'])}  p_mag {_p(image['p_mag'])}  model {image['model_version']}"
            f"  onnx {image['onnx_sha256'][:12]}  labels {image['label_snapshot_id']}  run {image['dagster_run_id']}"
        )
    return "\n".join(lines)


def _withdrawn(lineage: dict) -> list[str]:
    """When the study's withdrawn images went, whether a current model still predicts them, and which models'
    predictions of them are kept in the prediction history (no lines when nothing is withdrawn)."""
    withdrawn = lineage.get("withdrawn")
    if not withdrawn:
        return []
    n, sops = withdrawn["n_images"], withdrawn["images"]
    what = f"its {n} image{'s' if n != 1 else ''}" if withdrawn["study"] else f"{len(sops)} of its {n} images"
    version = (lineage["current"] or {}).get("model_version")
    older = [v for v in withdrawn.get("kept_by", []) if v != version]
    if version is None:
        now = "no current model predicts them any more: the answer below is the last one kept"
    elif version in withdrawn.get("kept_by", []):
        now = "the current model's predictions of them go at its next run"
    else:
        now = "the current model predicts them no more"
    kept = (
        f"predictions of them by model {', '.join(older)} are kept in the prediction history"
        if older
        else "no earlier model's prediction of them is kept"
    )
    lines = [f"withdrawn  {withdrawn['withdrawn_at']}: {what} {LEFT}"]
    if not withdrawn["study"]:
        lines.append(f"           {', '.join(sops)}")
    return [*lines, f"           {now}; {kept}"]


def _study_rule(model: dict) -> str:
    """What a model's study flags were decided against: its study thresholds (biopsy / mag), or, for a model
    made before study operating points, the ANY-image rule."""
    try:
        points = json.loads(model.get("operating_points") or "{}")
    except (TypeError, ValueError):
        points = {}
    thresholds = [(study_point(points, flag) or {}).get("threshold") for flag in FLAGS]
    if None in thresholds:
        return "ANY image at the image thresholds"
    return f"study thresholds {thresholds[0]:.3f} / {thresholds[1]:.3f}"


def _p(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"
