"""The main job in miniature: the same code path as `make demo`, with two tiny hospitals and one round."""

import json
import sqlite3

import pandas as pd
import pydicom
import pytest

from mammo_pipeline import warehouse
from mammo_pipeline.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_quick_runs_end_to_end_and_resumes(settings):
    lines: list[str] = []
    summary = run_demo(settings, DemoConfig.quick(), echo=lines.append)

    assert len(summary["rounds"]) == 1
    first = summary["rounds"][0]
    assert 0.0 <= first["accuracy"] <= 1.0 and first["n_train"] > 0
    # the fourth hospital came in through the sensor and has predictions
    assert len(summary["hospitals"]) == 3
    new = summary["hospitals"][-1]
    preds = warehouse.query(settings, "SELECT * FROM image_predictions_current WHERE hospital = ?", [new])
    assert len(preds) > 0 and set(preds["model_version"]) == {first["model_version"]}
    assert any("sensor new_hospital_drops requested" in line for line in lines)
    # the audit set was labeled and never trained on
    labels = pd.read_parquet(settings.warehouse / "labels" / "current.parquet")
    assert {"train", "audit"} <= set(labels["split"])
    assert (settings.reports / "demo_summary.json").exists()
    assert json.loads((settings.reports / "demo_summary.json").read_text())["rounds"] == summary["rounds"]

    # no patient-identifying text left the DICOM files: scan every table and the label store
    identities = set()
    for path in settings.landing.rglob("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # the corrupt files
            continue
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(tag, "") or "")
            if len(value) >= 4:
                identities.add(value)
    assert identities
    texts = []
    for parquet in settings.warehouse.rglob("*.parquet"):
        frame = pd.read_parquet(parquet)
        texts += [str(v) for c in frame.columns if frame[c].dtype == object for v in frame[c].dropna()]
    with sqlite3.connect(settings.labels_db) as con:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            texts += [str(v) for row in con.execute(f"SELECT * FROM {table}") for v in row if isinstance(v, str)]
    blob = "\n".join(texts)
    assert not [identity for identity in identities if identity in blob]

    # a second run reuses what exists: no new round, no new model
    again = run_demo(settings, DemoConfig.quick(), echo=lines.append)
    assert again["rounds"] == summary["rounds"]
