"""Prediction summaries in DuckDB: one row per study, and per hospital where metadata can be trusted.

A study is flagged when ANY of its images reaches the model's *study* threshold (a biopsy marker on one view is
a biopsy marker study), chosen on the audit studies (`model/evaluate.py::operating_points`); for a model made
before study thresholds, when ANY image is flagged at the image threshold.
The disagreement table compares the DICOM header's magnification flag (`dicom_index.meta_mag`) with
what the model sees (`image_predictions.is_mag_view`), per hospital.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
from matplotlib.figure import Figure

from mammo_pipeline import schemas, warehouse
from mammo_pipeline.atomic import atomic_path, write_parquet
from mammo_pipeline.model import evaluate
from mammo_pipeline.settings import Settings

AGREEMENT = ("agree", "meta_only", "visual_only", "silent")


class MixedModels(ValueError):
    """A partition holds predictions from more than one model."""


class MissingTable(LookupError):
    """A warehouse table the step reads has no files yet."""


def _study_flag(flag: str, column: str, point: dict | None) -> tuple[str, list[float]]:
    """SQL for one study flag and its parameters: MAX(p) at the study threshold, else ANY image's flag."""
    if point is None:
        return f"bool_or({column})", []
    return f"max({flag}) >= ?", [float(point["threshold"])]


def aggregate_studies(image_predictions: Path, points: dict | None = None) -> pd.DataFrame:
    """One row per study from one image_predictions Parquet file (study_predictions columns).

    `points` is the predicting model's `operating_points`: a study is flagged when the MAX of a flag's
    probability over its images reaches that flag's study threshold, and needs review when either MAX lies in
    its study review band. Without study points (older models, `points` None) a study is flagged when ANY image
    is and needs review when ANY image does (NULL when the model gave no needs_review flag). n_biopsy_images,
    n_mag_images and n_needs_review count the images flagged at the image thresholds.
    """
    con = duckdb.connect()
    try:
        source = f"read_parquet({warehouse.sql_string(warehouse.parquet_source(image_predictions))})"
        present = set(con.execute(f"SELECT * FROM {source} LIMIT 0").df().columns)
        # typed like the image_predictions table: needs_review is a NULL column for models without it
        con.execute(f"CREATE VIEW images AS {schemas.select_sql('image_predictions', source, present)}")
        models = con.execute("SELECT DISTINCT model_version, onnx_sha256 FROM images").fetchall()
        if len(models) > 1:
            raise MixedModels(f"{image_predictions}: predictions from {len(models)} models {models}; re-materialize")
        return _aggregate(con, points)
    finally:
        con.close()


def study_flags(images: pd.DataFrame, points: dict | None = None) -> dict:
    """`aggregate_studies`' row for the image_predictions rows `images` of one study (a frame, not a file): the
    study's flags from a chosen set of its images, such as those it had at a past time."""
    con = duckdb.connect()
    try:
        con.register("frame", images)
        present = set(images.columns)
        con.execute(f"CREATE VIEW images AS {schemas.select_sql('image_predictions', 'frame', present)}")
        rows = _aggregate(con, points)
    finally:
        con.close()
    return rows.iloc[0].to_dict() if len(rows) else {}


def _aggregate(con: duckdb.DuckDBPyConnection, points: dict | None) -> pd.DataFrame:
    """The per-study rows of the `images` view of `con` (see `aggregate_studies`)."""
    biopsy, mag = (evaluate.study_point(points or {}, flag) for flag in evaluate.FLAGS)
    biopsy_sql, biopsy_args = _study_flag("p_biopsy", "has_biopsy_marker", biopsy)
    mag_sql, mag_args = _study_flag("p_mag", "is_mag_view", mag)
    review_sql, review_args = "bool_or(needs_review)", []
    if biopsy is not None and mag is not None:
        review_sql = "(max(p_biopsy) >= ? AND max(p_biopsy) < ?) OR (max(p_mag) >= ? AND max(p_mag) < ?)"
        review_args = [float(biopsy["review_low"]), float(biopsy["review_high"])]
        review_args += [float(mag["review_low"]), float(mag["review_high"])]
    return con.execute(
        f"""
        SELECT study_instance_uid, any_value(hospital) AS hospital, any_value(patient_key) AS patient_key,
               count(*) AS n_images,
               {biopsy_sql} AS has_biopsy_marker, {mag_sql} AS is_mag_view,
               count_if(has_biopsy_marker) AS n_biopsy_images, count_if(is_mag_view) AS n_mag_images,
               max(p_biopsy) AS max_p_biopsy, max(p_mag) AS max_p_mag,
               {review_sql} AS needs_review,
               CASE WHEN count(needs_review) > 0 THEN count_if(needs_review) END AS n_needs_review,
               any_value(model_version) AS model_version, any_value(onnx_sha256) AS onnx_sha256,
               any_value(label_snapshot_id) AS label_snapshot_id,
               arg_max(dagster_run_id, predicted_at) AS dagster_run_id, max(predicted_at) AS predicted_at
        FROM images GROUP BY study_instance_uid ORDER BY study_instance_uid
        """,
        biopsy_args + mag_args + review_args,
    ).df()


@dataclass(frozen=True)
class PredictionSummary:
    """The two summary tables and where they were written."""

    counts: pd.DataFrame  # hospital, level ('image'|'study'), predicted_class, n
    agreement: pd.DataFrame  # one row per hospital: n_images, agree, meta_only, visual_only, silent, ...
    counts_path: Path
    agreement_path: Path
    png_path: Path


_COUNTS_SQL = """
SELECT hospital, 'image' AS level, predicted_class, count(*) AS n FROM image_predictions_current GROUP BY ALL
UNION ALL
SELECT hospital, 'study' AS level,
       CASE WHEN has_biopsy_marker AND is_mag_view THEN 'both' WHEN has_biopsy_marker THEN 'biopsy'
            WHEN is_mag_view THEN 'mag' ELSE 'neither' END AS predicted_class,
       count(*) AS n
FROM study_predictions_current GROUP BY ALL
ORDER BY hospital, level, predicted_class
"""

# dicom_index may hold a SOP more than once (re-sent drops); one header verdict per image.
_AGREEMENT_SQL = """
WITH meta AS (
    SELECT hospital, sop_instance_uid, any_value(meta_mag) AS meta_mag
    FROM dicom_index GROUP BY hospital, sop_instance_uid
), joined AS (
    SELECT p.hospital, p.is_mag_view, m.meta_mag
    FROM image_predictions_current p LEFT JOIN meta m USING (hospital, sop_instance_uid)
)
SELECT hospital, count(*) AS n_images,
       count(*) FILTER (meta_mag IS NOT NULL AND meta_mag = is_mag_view) AS agree,
       count(*) FILTER (meta_mag AND NOT is_mag_view) AS meta_only,
       count(*) FILTER (NOT meta_mag AND is_mag_view) AS visual_only,
       count(*) FILTER (meta_mag IS NULL) AS silent,
       count(*) FILTER (meta_mag IS NULL AND is_mag_view) AS silent_visual_mag,
       count(*) FILTER (meta_mag) AS meta_mag,
       count(*) FILTER (is_mag_view) AS visual_mag
FROM joined GROUP BY hospital ORDER BY hospital
"""


def summarize_predictions(settings: Settings) -> PredictionSummary:
    """Count classes per hospital (each hospital's current model) and compare header mag flags with the model,
    writing Parquet + a PNG."""
    with warehouse.connect(settings) as con:
        views = warehouse.views(con)
        for needed in ("image_predictions", "study_predictions", "dicom_index"):
            if needed not in views:
                raise MissingTable(f"{settings.table_dir(needed)}: no Parquet files yet; materialize {needed} first")
        counts = con.execute(_COUNTS_SQL).df()
        agreement = con.execute(_AGREEMENT_SQL).df()
    with_meta = agreement["n_images"] - agreement["silent"]
    agreement["agree_rate"] = (agreement["agree"] / with_meta.where(with_meta > 0)).astype(float)
    reports = settings.warehouse_reports
    counts_path = write_parquet(counts, reports / "prediction_counts.parquet")
    agreement_path = write_parquet(agreement, reports / "prediction_summary.parquet")
    png_path = plot_agreement(agreement, reports / "prediction_summary.png")
    return PredictionSummary(counts, agreement, counts_path, agreement_path, png_path)


# What the plot stacks: the agreement parts, with "silent" split by what the pixels say.
_PARTS = {
    "agree": ("header and model agree", "#4c9f70"),
    "meta_only": ("header says mag, model does not", "#d1495b"),
    "visual_only": ("model says mag, header does not", "#edae49"),
    "silent_visual_mag": ("header silent, model says mag", "#7a7a7a"),
    "silent_other": ("header silent, model says not mag", "#c8c8c8"),
}


def plot_agreement(agreement: pd.DataFrame, path: Path) -> Path:
    """Horizontal stacked bars per hospital: where the header's magnification flag can be trusted."""
    parts = agreement.assign(silent_other=agreement["silent"] - agreement["silent_visual_mag"])
    share = parts[list(_PARTS)].div(parts["n_images"].where(parts["n_images"] > 0), axis=0).fillna(0)
    names = [f"{h} (n={n})" for h, n in zip(parts["hospital"], parts["n_images"], strict=True)]
    fig = Figure(figsize=(9, 1.2 + 0.55 * len(parts)))  # no pyplot: no global state, no GUI backend
    ax = fig.subplots()
    left = pd.Series(0.0, index=parts.index)
    for part, (label, color) in _PARTS.items():
        ax.barh(names, share[part], left=left, label=label, color=color)
        left += share[part]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of images")
    ax.set_title("Magnification view: DICOM header vs model, per hospital")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / max(len(parts), 1)), ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def agreement_markdown(agreement: pd.DataFrame) -> str:
    """The agreement table as markdown for the Dagster UI."""
    cols = ["hospital", "n_images", *AGREEMENT, "silent_visual_mag", "agree_rate"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in agreement[cols].itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
