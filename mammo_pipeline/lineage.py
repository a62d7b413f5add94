"""Which model labeled which study: one study's predictions traced back to the model, its labels and its run.

Everything comes from the warehouse: image_predictions carry model_version, the sha256 of the ONNX file
used, the label snapshot and the Dagster run id; the model registry adds how that model scored when it
was trained; image_cache / dicom_index add the drop each image arrived in.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.settings import Settings

MODEL_FIELDS = (
    "model_version",
    "created_at",
    "label_snapshot_id",
    "n_train",
    "n_audit",
    "accuracy",
    "biopsy_f1",
    "mag_f1",
    "onnx_sha256",
    "inference_file",
)


class UnknownStudy(LookupError):
    """No prediction in the warehouse names this study."""


def study_lineage(settings: Settings, study_uid: str) -> dict:
    """The study's prediction, its images' predictions, and for each model used its registry facts.

    Raises UnknownStudy when no image_predictions row has this StudyInstanceUID.
    """
    with warehouse.connect(settings) as con:
        views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if "image_predictions" not in views:
            raise UnknownStudy(f"study {study_uid}: no predictions in the warehouse yet")
        images = con.execute(
            "SELECT * EXCLUDE (patient_key) FROM image_predictions WHERE study_instance_uid = ? "
            "ORDER BY sop_instance_uid",
            [study_uid],
        ).df()
        if images.empty:
            raise UnknownStudy(f"study {study_uid}: not in image_predictions (try `mammo query` to list studies)")
        images = images.merge(_drops(con, views, study_uid), on="sop_instance_uid", how="left")
        study = _study_row(con, views, study_uid)
        models = _models(con, views, images["model_version"].unique().tolist())
    return {
        "study_instance_uid": study_uid,
        "hospital": images["hospital"].iloc[0],
        "drops": sorted(images["drop"].dropna().unique().tolist()),
        "prediction": study,
        "models": models,
        "images": [_clean(row) for row in images.to_dict("records")],
    }


def _drops(con, views: set[str], study_uid: str) -> pd.DataFrame:
    for table in ("image_cache", "dicom_index"):
        if table in views:
            return con.execute(
                f'SELECT sop_instance_uid, any_value("drop") AS "drop" FROM {table} '
                "WHERE study_instance_uid = ? GROUP BY 1",
                [study_uid],
            ).df()
    return pd.DataFrame({"sop_instance_uid": pd.Series(dtype=str), "drop": pd.Series(dtype=str)})


def _study_row(con, views: set[str], study_uid: str) -> dict | None:
    if "study_predictions" not in views:
        return None
    rows = con.execute(
        "SELECT * EXCLUDE (patient_key) FROM study_predictions WHERE study_instance_uid = ?", [study_uid]
    ).df()
    return _clean(rows.iloc[0].to_dict()) if len(rows) else None


def _models(con, views: set[str], versions: list[str]) -> dict[str, dict]:
    """Registry facts per model version (empty dict for a version the registry does not know)."""
    found: dict[str, dict] = {v: {} for v in versions}
    if "model_registry" not in views:
        return found
    columns = set(con.execute("SELECT * FROM model_registry LIMIT 0").df().columns)
    wanted = ", ".join(f'"{c}"' for c in MODEL_FIELDS if c in columns)
    rows = con.execute(
        f"SELECT {wanted} FROM model_registry WHERE model_version IN (SELECT unnest(?))", [versions]
    ).df()
    for row in rows.to_dict("records"):
        found[row["model_version"]] = _clean(row)
    return found


def _clean(row: dict) -> dict:
    """JSON-friendly values: timestamps as ISO text, NaN/NA as None, numpy scalars as Python."""
    out = {}
    for key, value in row.items():
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


def lineage_json(lineage: dict) -> str:
    return json.dumps(lineage, indent=2, default=str)
