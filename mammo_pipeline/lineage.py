"""Which model labeled which study, now or at any past time: a study's predictions traced back to the model,
its labels and its run.

Everything comes from the warehouse: image_predictions keep every model's rows (one slice per hospital and
model_version) with the sha256 of the ONNX file used, the label snapshot and the Dagster run id;
model_promotions says which model was current when (rule: mammo_pipeline/promotions.py); the model registry
adds how that model scored when it was trained; image_cache / dicom_index add the drop each image arrived in.
A withdrawn image (its file deleted from its drop, or replaced there by another image) leaves the index, the cache
and the current model's predictions, so when it was withdrawn comes from the label store (`images.withdrawn_at`),
and its earlier predictions from the older models' slices, which are kept.
"""

from __future__ import annotations

import json
import math
import sqlite3

import pandas as pd

from mammo_pipeline import promotions, summary, warehouse
from mammo_pipeline.labels.store import LabelStore, NoLabelStore
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
    "operating_points",  # JSON: per flag the image point and its study point (what decided the study's flags)
)


class UnknownStudy(LookupError):
    """No prediction in the warehouse names this study (at the time asked)."""


LEFT = "left the index (deleted from the drop or replaced there by another image)"  # what withdrawn means


def study_lineage(settings: Settings, study_uid: str, as_of: str | pd.Timestamp | None = None) -> dict:
    """The study's prediction from the model current for its hospital at `as_of` (now when None), its images'
    predictions, the registry facts of that model, every model that ever predicted the study, and the
    promotions that applied to its hospital.

    `withdrawn` says which of its images were withdrawn by then, when, and which models' predictions of them are
    kept (`_withdrawal`; None when none was). A study withdrawn whole is in no current model's predictions once that
    model has predicted again: `current` is then None and `last` names the newest model whose predictions of it
    are kept (in the prediction history), which the rest of the answer is from.

    Raises UnknownStudy when no image_predictions row has this StudyInstanceUID, or none was current then (for a
    study withdrawn whole, when none is kept: the message says when it was withdrawn).
    """
    when = promotions.timestamp_sql(as_of)
    withdrawn = _withdrawal(settings, study_uid, as_of)
    whole = withdrawn is not None and withdrawn["study"]  # a study with images in use is answered as any other
    with warehouse.connect(settings) as con:
        views = warehouse.views(con)
        hospitals = []
        if "image_predictions" in views:
            hospitals = [
                row[0]
                for row in con.execute(
                    "SELECT DISTINCT hospital FROM image_predictions WHERE study_instance_uid = ?", [study_uid]
                ).fetchall()
            ]
        if not hospitals and whole:
            raise UnknownStudy(
                f"study {study_uid}: withdrawn {withdrawn['withdrawn_at']}, its images {LEFT}; no prediction of it "
                "is kept (the current model predicts the images in use only, and no older model's predictions hold it)"
            )
        if "image_predictions" not in views:
            raise UnknownStudy(f"study {study_uid}: no predictions in the warehouse yet")
        if not hospitals:
            raise UnknownStudy(f"study {study_uid}: not in image_predictions (try `mammo query` to list studies)")
        # the model whose study flags were current (study_predictions lags image_predictions by one asset); the
        # image table's answer where the study table has none (not materialized for that hospital)
        current = pd.DataFrame()
        for flags in [t for t in ("study_predictions", "image_predictions") if t in views]:
            current = con.execute(
                f"SELECT * FROM ({promotions.current_models_sql(when, flags)}) c "
                "WHERE hospital IN (SELECT unnest(?)) AND EXISTS (SELECT 1 FROM image_predictions i "
                "WHERE i.hospital = c.hospital AND i.model_version = c.model_version AND i.study_instance_uid = ? "
                f"AND i.predicted_at <= {when})",  # predicted by then (a study that came later was not yet)
                [hospitals, study_uid],
            ).df()
            if not current.empty:
                break
        stale = current.empty and whole  # withdrawn: its answer is the last one kept
        if stale:
            current = _last_model(con, study_uid, hospitals, when)
        if current.empty:
            when_text = "now" if as_of is None else f"at {as_of}"
            raise UnknownStudy(f"study {study_uid}: no model current {when_text} had predicted it")
        pick = current.iloc[0]
        hospital, version = str(pick["hospital"]), str(pick["model_version"])
        if withdrawn is not None:
            withdrawn["kept_by"] = _kept_by(con, withdrawn["images"], hospital, when)
        # as of a past time: only the images predicted by then (a study that gained an image later had fewer)
        images = con.execute(
            "SELECT * EXCLUDE (patient_key) FROM image_predictions WHERE study_instance_uid = ? AND hospital = ? "
            f"AND model_version = ? AND predicted_at <= {when} ORDER BY sop_instance_uid",
            [study_uid, hospital, version],
        ).df()
        images = images.merge(_drops(con, views, study_uid), on="sop_instance_uid", how="left")
        study = _study_row(con, views, study_uid, hospital, version, when)
        history = _history(con, views, study_uid, hospital, when)
        models = _models(con, views, history["model_version"].tolist())
        if study is None and "study_predictions" in views:  # the study's row was rewritten after `as_of`: its
            study = _study_as_of(images, models.get(version, {}))  # flags then, from the images of then
        promoted = con.execute(
            "SELECT promoted_at, hospital, model_version, reason, promoted_by, dagster_run_id "
            "FROM model_promotions WHERE hospital IS NULL OR hospital = ? ORDER BY promoted_at",
            [hospital],
        ).df()
    first = images.sort_values("predicted_at").iloc[-1]  # the newest prediction by then: its run wrote the answer
    answer = _clean(
        {
            "model_version": version,
            "promoted": bool(pick["promoted"]),
            "promoted_at": pick["promoted_at"],
            "onnx_sha256": first["onnx_sha256"],
            "label_snapshot_id": first["label_snapshot_id"],
            "dagster_run_id": first["dagster_run_id"],
        }
    )
    return {
        "study_instance_uid": study_uid,
        "as_of": "now" if as_of is None else promotions.utc(as_of).isoformat(),
        "hospital": hospital,
        "drops": sorted(images["drop"].dropna().unique().tolist()),
        "withdrawn": withdrawn,
        "current": None if stale else answer,
        **({"last": answer} if stale else {}),
        "prediction": study,
        "models": models,
        "history": [_clean(row) for row in history.to_dict("records")],
        "promotions": [_clean(row) for row in promoted.to_dict("records")],
        "images": [_clean(row) for row in images.to_dict("records")],
    }


def _withdrawal(settings: Settings, study_uid: str, as_of: str | pd.Timestamp | None) -> dict | None:
    """Which of the study's images the label store holds withdrawn by `as_of` (now when None), and when the last
    went: {withdrawn_at, images (their SOP Instance UIDs), n_images (the study's images in the store), study
    (all of them withdrawn)}. The store is the one place that keeps it: a withdrawn image's index, cache and
    current prediction rows go. None when none is withdrawn, or the store is absent or unreadable: lineage opens
    it read-only, never creating or upgrading it."""
    if not settings.labels_db.is_file():
        return None
    try:
        images = LabelStore(settings.labels_db, read_only=True).study_images(study_uid)
    except (NoLabelStore, sqlite3.DatabaseError):
        return None
    at = pd.to_datetime(images["withdrawn_at"], utc=True, format="ISO8601")
    by_then = at.notna() if as_of is None else at <= promotions.utc(as_of)  # NaT (in use) compares False
    gone = images[by_then]
    if gone.empty:
        return None
    return {
        "withdrawn_at": at[by_then].max().isoformat(),
        "images": gone["sop_instance_uid"].tolist(),
        "n_images": len(images),
        "study": len(gone) == len(images),
    }


def _last_model(con, study_uid: str, hospitals: list[str], when: str) -> pd.DataFrame:
    """hospital, model_version, promoted_at, promoted of the newest model whose predictions of the study were
    written by `when` and are kept: a withdrawn study's last answer, when no current model predicts it any more."""
    return con.execute(
        f"""WITH last AS (
                SELECT hospital, model_version, max(predicted_at) AS predicted_at FROM image_predictions
                WHERE study_instance_uid = ? AND hospital IN (SELECT unnest(?)) AND predicted_at <= {when}
                GROUP BY ALL ORDER BY predicted_at DESC, model_version LIMIT 1)
            SELECT l.hospital, l.model_version, max(p.promoted_at) AS promoted_at,
                   max(p.promoted_at) IS NOT NULL AS promoted
            FROM last l LEFT JOIN model_promotions p ON p.model_version = l.model_version
              AND (p.hospital IS NULL OR p.hospital = l.hospital) AND p.promoted_at <= {when}
            GROUP BY l.hospital, l.model_version""",
        [study_uid, hospitals],
    ).df()


def _kept_by(con, sops: list[str], hospital: str, when: str) -> list[str]:
    """The models whose predictions of these (withdrawn) images, written by `when`, are still kept."""
    rows = con.execute(
        "SELECT DISTINCT model_version FROM image_predictions WHERE hospital = ? "
        f"AND sop_instance_uid IN (SELECT unnest(?)) AND predicted_at <= {when} ORDER BY 1",
        [hospital, sops],
    ).fetchall()
    return [row[0] for row in rows]


def _drops(con, views: set[str], study_uid: str) -> pd.DataFrame:
    for table in ("image_cache", "dicom_index"):
        if table in views:
            return con.execute(
                f'SELECT sop_instance_uid, any_value("drop") AS "drop" FROM {table} '
                "WHERE study_instance_uid = ? GROUP BY 1",
                [study_uid],
            ).df()
    return pd.DataFrame({"sop_instance_uid": pd.Series(dtype=str), "drop": pd.Series(dtype=str)})


def _history(con, views: set[str], study_uid: str, hospital: str, when: str = "now()") -> pd.DataFrame:
    """One row per model that predicted the study by `when`, oldest first, from its image predictions of then:
    its study flags as study_predictions holds them (each model's own study thresholds) when that row was written
    by then, else ANY of its image flags (study_predictions not materialized, or rewritten since)."""
    studies = "SELECT NULL::VARCHAR AS model_version, NULL::BOOLEAN AS b, NULL::BOOLEAN AS m"
    if "study_predictions" in views:
        studies = (
            "SELECT model_version, any_value(has_biopsy_marker) AS b, any_value(is_mag_view) AS m "
            "FROM study_predictions WHERE study_instance_uid = $study AND hospital = $hospital "
            f"AND predicted_at <= {when} GROUP BY 1"
        )
    return con.execute(
        f"""WITH images AS (
                SELECT model_version, count(*) AS n_images, bool_or(has_biopsy_marker) AS b,
                       bool_or(is_mag_view) AS m, any_value(onnx_sha256) AS onnx_sha256,
                       any_value(label_snapshot_id) AS label_snapshot_id,
                       any_value(dagster_run_id) AS dagster_run_id, max(predicted_at) AS predicted_at
                FROM image_predictions WHERE study_instance_uid = $study AND hospital = $hospital
                  AND predicted_at <= {when}
                GROUP BY model_version),
            studies AS ({studies})
            SELECT i.model_version, i.n_images, coalesce(s.b, i.b) AS has_biopsy_marker,
                   coalesce(s.m, i.m) AS is_mag_view, i.onnx_sha256, i.label_snapshot_id, i.dagster_run_id,
                   i.predicted_at
            FROM images i LEFT JOIN studies s USING (model_version) ORDER BY i.predicted_at""",
        {"study": study_uid, "hospital": hospital},
    ).df()


def _study_row(con, views: set[str], study_uid: str, hospital: str, version: str, when: str = "now()") -> dict | None:
    """The study_predictions row of the study and model, if it was written by `when`."""
    if "study_predictions" not in views:
        return None
    rows = con.execute(
        "SELECT * EXCLUDE (patient_key) FROM study_predictions WHERE study_instance_uid = ? AND hospital = ? "
        f"AND model_version = ? AND predicted_at <= {when}",
        [study_uid, hospital, version],
    ).df()
    return _clean(rows.iloc[0].to_dict()) if len(rows) else None


def _study_as_of(images: pd.DataFrame, model: dict) -> dict:
    """The study's flags from the image predictions it had at a past time, by the model's study operating points
    (`summary.study_flags`, the rule study_predictions applies), marked `recomputed_as_of`: study_predictions keeps
    one row per study and model, rewritten when the study gains an image, so its flags of then are not stored."""
    points = model.get("operating_points")
    row = summary.study_flags(images, json.loads(points) if isinstance(points, str) and points else None)
    return _clean({**row, "recomputed_as_of": True})


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
