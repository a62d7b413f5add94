"""`mammo lineage`: which model labeled a study, trained on which labels, written by which Dagster run."""

from __future__ import annotations

import click

from mammo_pipeline.lineage import UnknownStudy, lineage_json, study_lineage
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
def command(study_uid: str, fmt: str) -> None:
    """Trace a study's predictions to the model, its ONNX file, label snapshot, training metrics and run.

    \b
    Example:
        mammo lineage 1.2.826.0.1.3680043.8.498.1
        mammo lineage 1.2.826.0.1.3680043.8.498.1 --format json
    """
    try:
        lineage = study_lineage(Settings.from_env(), study_uid)
    except UnknownStudy as e:
        raise click.ClickException(str(e)) from e
    click.echo(lineage_json(lineage) if fmt == "json" else render(lineage))


def render(lineage: dict) -> str:
    """A short human-readable report: the study, each model, then one line per image."""
    study = lineage["prediction"] or {}
    lines = [
        f"study      {lineage['study_instance_uid']}",
        f"hospital   {lineage['hospital']}   drops: {', '.join(lineage['drops']) or '?'}",
        f"prediction biopsy={study.get('has_biopsy_marker')} mag={study.get('is_mag_view')} "
        f"(max p {_p(study.get('max_p_biopsy'))} / {_p(study.get('max_p_mag'))}, {study.get('n_images')} images)",
    ]
    for version, model in lineage["models"].items():
        lines.append(
            f"model      {version}  labels {model.get('label_snapshot_id', '?')}"
            f"  created {model.get('created_at', '?')}"
            f"  n_train {model.get('n_train', '?')}  accuracy {_p(model.get('accuracy'))}"
            f"  biopsy F1 {_p(model.get('biopsy_f1'))}  mag F1 {_p(model.get('mag_f1'))}"
        )
    lines.append("images")
    for image in lineage["images"]:
        lines.append(
            f"  {image['sop_instance_uid']}  {image.get('drop') or '?'}  {image['predicted_class']:8}"
            f"  p_biopsy {_p(image['p_biopsy'])}  p_mag {_p(image['p_mag'])}  model {image['model_version']}"
            f"  onnx {image['onnx_sha256'][:12]}  labels {image['label_snapshot_id']}  run {image['dagster_run_id']}"
        )
    return "\n".join(lines)


def _p(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"
