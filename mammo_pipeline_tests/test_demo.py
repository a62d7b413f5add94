"""The main job in miniature: the same code path as `make demo`, with two tiny hospitals and one round."""

import json
import shlex

import numpy as np
import pandas as pd
import pytest

from mammo_pipeline import warehouse
from mammo_pipeline.demo import DemoConfig, run_demo
from mammo_pipeline.dicom.source_paths import private_root
from mammo_pipeline.labels.simulated import load_truth
from mammo_pipeline_tests.privacy import scan


@pytest.mark.slow
def test_demo_quick_runs_end_to_end_and_resumes(settings, monkeypatch):
    from mammo_pipeline.demo import MODEL, Demo

    lines: list[str] = []
    # killed while round 1 trains: the rerun trains on the labels given, without drawing another round's worth
    real = Demo.materialize

    def killed_in_training(self, keys, partition=None):
        if tuple(keys) == MODEL:
            raise KeyboardInterrupt("killed while training")
        return real(self, keys, partition)

    monkeypatch.setattr(Demo, "materialize", killed_in_training)
    with pytest.raises(KeyboardInterrupt):
        run_demo(settings, DemoConfig.quick(), echo=lines.append)
    monkeypatch.setattr(Demo, "materialize", real)
    summary = run_demo(settings, DemoConfig.quick(), echo=lines.append)
    assert any("labels were given before the last run stopped" in line for line in lines)
    assert summary["rounds"][0]["n_train"] <= DemoConfig.quick().first_labels  # not twice the round's labels

    assert len(summary["rounds"]) == 1
    first = summary["rounds"][0]
    assert 0.0 <= first["accuracy"] <= 1.0 and first["n_train"] > 0
    # the new hospital came in through the sensor and has predictions
    assert len(summary["hospitals"]) == 3
    new = summary["hospitals"][-1]
    preds = warehouse.query(settings, "SELECT * FROM image_predictions_current WHERE hospital = ?", [new])
    assert len(preds) > 0 and set(preds["model_version"]) == {first["model_version"]}
    assert any("sensor new_hospital_drops requested" in line for line in lines)
    # each round says why its accuracy at the operating points is what it is: the registry's per-flag figures
    row = warehouse.query(
        settings, "SELECT * FROM model_registry WHERE model_version = ?", [first["model_version"]]
    ).iloc[0]
    for key in ("biopsy_roc_auc", "biopsy_sensitivity", "biopsy_specificity", "mag_roc_auc", "mag_specificity"):
        assert first[key] == (None if pd.isna(row[key]) else pytest.approx(float(row[key]))), key
    assert any(line.strip().startswith("per flag: biopsy marker ROC-AUC") for line in lines)
    low, high = first["mag_roc_auc_low"], first["mag_roc_auc_high"]  # ... with the 95 % intervals of the registry
    assert low == pytest.approx(float(row["mag_roc_auc_low"])) and high == pytest.approx(float(row["mag_roc_auc_high"]))
    assert any(f"magnification ROC-AUC {first['mag_roc_auc']:.3f} [{low:.3f}–{high:.3f}]" in line for line in lines)
    # ... and per study at the study operating points, which the study flags of the warehouse use
    for key in ("biopsy_study_sensitivity", "biopsy_study_specificity"):
        assert first[key] == (None if pd.isna(row[key]) else pytest.approx(float(row[key]))), key
    studies = warehouse.query(settings, "SELECT * FROM study_predictions_current")
    point = json.loads(row["operating_points"])["biopsy"]["study"]
    assert (studies["has_biopsy_marker"] == (studies["max_p_biopsy"] >= point["threshold"])).all()
    # the summary's study counts beside the truth they can be judged against
    truth = load_truth(settings.landing).groupby(["hospital", "study_instance_uid"])["has_biopsy_marker"].any()
    for r in summary["studies"]:
        assert r["true_biopsy_studies"] == int(truth.loc[r["hospital"]].sum())
    assert any("biopsy marker (" in line and "truly)" in line for line in lines)
    # the audit set was labeled and never trained on
    labels = pd.read_parquet(settings.warehouse / "labels" / "current.parquet")
    assert {"train", "audit"} <= set(labels["split"])
    assert set(summary["hospitals"][:2]) <= set(labels.loc[labels["split"] == "audit", "hospital"])  # each measured
    home = shlex.quote(str(settings.home))
    assert f"MAMMO_HOME={home} make ui" in "\n".join(lines)  # make's default home may be another
    assert (settings.reports / "demo_summary.json").exists()
    assert json.loads((settings.reports / "demo_summary.json").read_text())["rounds"] == summary["rounds"]

    # no identifier of any header left the DICOM files: every table (any dtype), file name, the label store and
    # Dagster's event log; the operators' private path lookup is the one place real paths are kept on purpose
    findings = scan(settings, exclude=(private_root(settings),))
    assert not findings, sorted({f.where.split(str(settings.home))[-1] for f in findings})[:20]

    # a second run reuses what exists: no new round, no new model
    again = run_demo(settings, DemoConfig.quick(), echo=lines.append)
    assert again["rounds"] == summary["rounds"]

    # after an upgrade that changes what the second look's crops mean, a rerun retrains instead of failing
    from mammo_pipeline.demo import _stale_model
    from mammo_pipeline.model import candidates

    assert _stale_model(settings) is None
    monkeypatch.setattr(candidates, "SECOND_LOOK_VERSION", "upgraded")
    assert "version upgraded" in (_stale_model(settings) or "")
    upgraded = run_demo(settings, DemoConfig.quick(), echo=lines.append)
    assert any("does not fit this code" in line for line in lines)
    assert _stale_model(settings) is None  # the new current model is this code's
    assert upgraded["rounds"] == summary["rounds"]  # same labels, no new round


def _audit_labels(settings, labels: list[str]) -> list[str]:
    """Write labels/current.parquet with one audit image per label (the adjudicated label and the first read);
    return their SOP Instance UIDs."""
    uids = [f"1.2.826.0.{i}" for i in range(len(labels))]
    table = pd.DataFrame({"sop_instance_uid": uids, "split": "audit", "label": labels, "first_read": labels})
    path = settings.table_dir("labels") / "current.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path)
    return uids


def test_the_audit_accuracy_of_a_round_is_the_current_models_not_an_earlier_ones(settings):
    """image_predictions keeps every model's rows (prediction history); a round's printed accuracy must read the
    model just trained, whatever order the warehouse returns the slices in."""
    from mammo_pipeline.demo import audit_accuracies
    from mammo_pipeline.model.ref import ModelRef

    uids = _audit_labels(settings, ["biopsy", "neither", "mag", "both"])
    truth = dict(zip(uids, ["biopsy", "neither", "mag", "both"], strict=True))
    right = {"p_biopsy": [0.9, 0.1, 0.1, 0.9], "p_mag": [0.1, 0.1, 0.9, 0.9]}
    wrong = {"p_biopsy": [0.1, 0.9, 0.9, 0.1], "p_mag": [0.9, 0.9, 0.1, 0.1]}
    for version, p in (("a-current", right), ("z-earlier", wrong)):  # the stale slice sorts last
        warehouse.write_slice(
            settings, "image_predictions", "h1", version, pd.DataFrame({"sop_instance_uid": uids, **p})
        )
    ref = ModelRef("a-current", "snap", "a-current", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ref.save(settings.models)
    assert audit_accuracies(settings, truth)["adjudicated"] == 1.0
    ref.with_(model_version="z-earlier").save(settings.models)
    assert audit_accuracies(settings, truth)["adjudicated"] == 0.0


def test_the_audit_roc_auc_against_the_hidden_truth_sees_past_a_label_both_readers_got_wrong(settings):
    """Two blind readers can slip on the same image; the registry's ROC-AUC is measured against their adjudicated
    label, so the demo also prints each flag's ROC-AUC against the synthetic truth, and how many labels differ."""
    from mammo_pipeline.demo import _truth_line, audit_accuracies
    from mammo_pipeline.model.evaluate import roc_auc
    from mammo_pipeline.model.ref import ModelRef

    uids = _audit_labels(settings, ["biopsy", "neither", "mag", "mag"])  # the clip of image 2 missed by both readers
    truth = dict(zip(uids, ["biopsy", "neither", "both", "mag"], strict=True))
    p = {"p_biopsy": [0.8, 0.1, 0.9, 0.2], "p_mag": [0.1, 0.2, 0.9, 0.7]}  # the missed clip scores highest
    warehouse.write_slice(settings, "image_predictions", "h1", "m1", pd.DataFrame({"sop_instance_uid": uids, **p}))
    ModelRef("m1", "snap", "m1", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).save(settings.models)

    assert roc_auc(np.array([True, False, False, False]), np.array(p["p_biopsy"])) == pytest.approx(2 / 3)  # labels
    vs = audit_accuracies(settings, truth)
    assert vs["biopsy_roc_auc_truth"] == 1.0 and vs["mag_roc_auc_truth"] == 1.0
    assert vs["labels_off_truth"] == 1 and vs["adjudicated"] == 0.75 and vs["hidden_truth"] == 1.0
    line = _truth_line({**vs, "audit_images": vs["n"]})
    assert "biopsy marker 1.000" in line and "1 of 4 adjudicated audit labels differs" in line


def test_a_round_whose_model_was_held_back_from_promotion_reads_that_models_own_audit_predictions(settings):
    """promoted_model holds back a model whose audit ROC-AUC fell below the current one's interval, and that model
    then predicts nothing: the round's accuracy lines printed n/a (a fresh clone's demo, stop 68). They now read
    the audit predictions its training wrote, and the round says it was held back and which model predicts."""
    from mammo_pipeline.demo import _held_back_line, audit_accuracies
    from mammo_pipeline.model.ref import ModelRef

    uids = _audit_labels(settings, ["biopsy", "neither", "mag", "both"])
    truth = dict(zip(uids, ["biopsy", "neither", "mag", "both"], strict=True))
    predicting = {"p_biopsy": [0.1, 0.9, 0.9, 0.1], "p_mag": [0.9, 0.9, 0.1, 0.1]}  # every image wrong
    warehouse.write_slice(
        settings, "image_predictions", "h1", "m-current", pd.DataFrame({"sop_instance_uid": uids, **predicting})
    )
    ModelRef("m-held", "snap", "m-held", 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).save(settings.models)
    assert audit_accuracies(settings, truth)["n"] == 0  # no audit predictions of its own yet: nothing to read
    own = pd.DataFrame({"sop_instance_uid": uids, "p_biopsy": [0.9, 0.1, 0.1, 0.9], "p_mag": [0.1, 0.1, 0.9, 0.9]})
    own["has_biopsy_marker"], own["is_mag_view"] = own["p_biopsy"] > 0.5, own["p_mag"] > 0.5  # as training writes it
    (settings.models / "m-held").mkdir(parents=True, exist_ok=True)
    own.to_parquet(settings.models / "m-held" / "audit_predictions.parquet")
    vs = audit_accuracies(settings, truth)
    assert vs["n"] == 4 and vs["adjudicated"] == 1.0 and vs["biopsy_roc_auc_truth"] == 1.0
    line = _held_back_line("m-held", "mag ROC-AUC 0.949 below m-current's", None)
    assert line.startswith("model m-held held back from promotion: mag ROC-AUC 0.949") and "promote m-held" in line
