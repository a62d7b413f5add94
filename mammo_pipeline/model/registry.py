"""The model registry: one Parquet row per trained model in warehouse/model_registry/<model_version>.parquet.

One file per model means two trainings never write the same file, and `onnx_model` can rewrite just its
own row (atomically) when it adds the ONNX hash and the int8 comparison. Columns: docs/architecture.md.
"""

from __future__ import annotations

import json

import pandas as pd

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.settings import Settings

# Per flag: images at the flag's operating point, studies (MAX over a study's images) at its study operating
# point (model/evaluate.py::study_metrics; study_fp_rate = 1 - study_specificity).
METRICS = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "kappa")
STUDY_METRICS = ("study_roc_auc", "study_sensitivity", "study_specificity", "study_fp_rate")
# ... and the 95 % interval of six of them (model/intervals.py: ROC-AUC bootstrapped over whole patients, the
# rates by Wilson's score interval): biopsy_roc_auc_low, biopsy_roc_auc_high, ...
INTERVALS = tuple(
    f"{metric}_{end}"
    for metric in ("roc_auc", "sensitivity", "specificity", "study_roc_auc", "study_sensitivity", "study_specificity")
    for end in ("low", "high")
)
FLAG_METRICS = tuple(
    f"{flag}_{metric}" for flag in ("biopsy", "mag") for metric in (*METRICS, *STUDY_METRICS, *INTERVALS)
)
COLUMNS: tuple[str, ...] = (
    "model_version",
    "created_at",
    "label_snapshot_id",
    "n_train",
    "n_audit",
    "label_counts",
    "hyperparameters",
    "seed",
    "pretrained",
    "pretrained_source",
    "accuracy",
    "accuracy_3class",
    "biopsy_precision",
    "biopsy_recall",
    "biopsy_f1",
    "mag_precision",
    "mag_recall",
    "mag_f1",
    "per_hospital_accuracy",
    "ece",
    "train_seconds",
    "onnx_sha256",
    "int8_accuracy",
    "fp32_accuracy",
    "onnx_bytes",
    "int8_bytes",
    "inference_file",
    "inference_sha256",  # the file image_predictions.onnx_sha256 names (int8 or fp32)
    "second_look_sha256",  # the second look's ONNX file, which answers p_biopsy when the model has one
    "operating_points",
    "per_hospital_metrics",
    "per_vendor_metrics",
    *FLAG_METRICS,
    "biopsy_source",  # 'second_look' | 'global_network': which network answers the biopsy flag
    "global_network_biopsy_roc_auc",  # the global network's own biopsy ROC-AUC, beside the second look's
)
JSON_COLUMNS = (
    "label_counts",
    "hyperparameters",
    "per_hospital_accuracy",
    "operating_points",
    "per_hospital_metrics",
    "per_vendor_metrics",
)
FLOAT_COLUMNS = (
    "accuracy",
    "accuracy_3class",
    "biopsy_precision",
    "biopsy_recall",
    "biopsy_f1",
    "mag_precision",
    "mag_recall",
    "mag_f1",
    "ece",
    "train_seconds",
    "int8_accuracy",
    "fp32_accuracy",
    *FLAG_METRICS,
    "global_network_biopsy_roc_auc",
)
INT_COLUMNS = ("n_train", "n_audit", "seed", "onnx_bytes", "int8_bytes")
TABLE = "model_registry"


def _frame(row: dict) -> pd.DataFrame:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown registry columns: {sorted(unknown)}")
    values = {c: row.get(c) for c in COLUMNS}
    for c in JSON_COLUMNS:
        if not isinstance(values[c], str):
            values[c] = json.dumps(values[c] if values[c] is not None else {}, sort_keys=True)
    df = pd.DataFrame([values])
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in INT_COLUMNS:
        df[c] = pd.array([values[c]], dtype="Int64")
    strings = ("model_version", "label_snapshot_id", "pretrained", "pretrained_source", "onnx_sha256", "inference_file")
    strings += ("inference_sha256", "second_look_sha256")
    for c in (*strings, "biopsy_source"):
        df[c] = df[c].fillna("").astype(str)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


def write_row(settings: Settings, row: dict) -> None:
    """Write (or replace) one model's row."""
    write_parquet(_frame(row), settings.table_dir(TABLE) / f"{row['model_version']}.parquet")


def read_row(settings: Settings, model_version: str) -> dict:
    path = settings.table_dir(TABLE) / f"{model_version}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no registry row for model {model_version}; materialize trained_model")
    return pd.read_parquet(path).iloc[0].to_dict()


def update_row(settings: Settings, model_version: str, **changes: object) -> dict:
    """Rewrite one model's row with `changes` applied; return the new row."""
    row = read_row(settings, model_version)
    row.update(changes)
    write_row(settings, row)
    return row


def with_row(settings: Settings, row: dict) -> pd.DataFrame:
    """Every model's row and `row` (replacing its model's, if any), oldest first: the registry as `read_registry`
    will list it once `row` is written, for a picture drawn before the model is complete."""
    df = read_registry(settings)
    df = df[df["model_version"] != row["model_version"]] if len(df) else df
    new = _frame(row)
    out = pd.concat([df, new], ignore_index=True) if len(df) else new
    return out.sort_values("created_at", kind="stable").reset_index(drop=True)


def read_registry(settings: Settings) -> pd.DataFrame:
    """Every model's row, oldest first (empty frame with the columns when there are none)."""
    files = sorted(settings.table_dir(TABLE).glob("*.parquet"))
    if not files:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return df.sort_values("created_at", kind="stable").reset_index(drop=True)
