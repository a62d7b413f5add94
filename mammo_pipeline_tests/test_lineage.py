"""`study_lineage`: a study traced to its model, ONNX file, label snapshot, training metrics and Dagster run."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest

from mammo_pipeline import warehouse
from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.cache import read_manifest
from mammo_pipeline.cli.lineage import render
from mammo_pipeline.labels.store import LabelStore
from mammo_pipeline.lineage import UnknownStudy, study_lineage
from mammo_pipeline.model.infer import load_model, write_predictions
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.summary import aggregate_studies
from mammo_pipeline_tests.model.test_infer import make_cache, make_model


def predict_hospital(settings, hospital: str, studies: dict[str, int], version: str, seed: int, run_id: str) -> None:
    """Run the real inference + aggregation path for one hospital (what the two assets do)."""
    ref = make_model(settings, version, seed, snapshot=f"snap-{version}")
    manifest = make_cache(settings, hospital, studies, seed=seed)
    path = warehouse.slice_file(settings, "image_predictions", hospital, version)
    write_predictions(settings, manifest, load_model(settings, ref), path, run_id=run_id)
    warehouse.write_slice(settings, "study_predictions", hospital, version, aggregate_studies(path))


def test_study_lineage_names_model_snapshot_metrics_and_run(settings):
    predict_hospital(settings, "h1", {"s1": 2, "s2": 1}, "m1", seed=0, run_id="run-1")
    predict_hospital(settings, "h2", {"t1": 3}, "m2", seed=1, run_id="run-2")  # a later model, another hospital

    lineage = study_lineage(settings, "t1")
    registry = pd.read_parquet(settings.warehouse / "model_registry" / "m2.parquet").iloc[0]
    assert lineage["hospital"] == "h2" and lineage["drops"] == ["drop1"]
    assert [image["sop_instance_uid"] for image in lineage["images"]] == ["t1.0", "t1.1", "t1.2"]
    for image in lineage["images"]:
        assert image["model_version"] == "m2" and image["dagster_run_id"] == "run-2"
        assert image["onnx_sha256"] == registry["onnx_sha256"]
        assert image["label_snapshot_id"] == registry["label_snapshot_id"] == "snap-m2"
        assert "patient_key" not in image
    model = lineage["models"]["m2"]
    assert model["n_train"] == registry["n_train"] and model["accuracy"] == pytest.approx(registry["accuracy"])
    assert model["created_at"] == registry["created_at"].isoformat()
    study = lineage["prediction"]
    assert study["n_images"] == 3
    assert study["has_biopsy_marker"] == any(image["has_biopsy_marker"] for image in lineage["images"])
    assert study_lineage(settings, "s1")["models"].keys() == {"m1"}


def test_study_lineage_unknown_study_is_a_clear_error(settings):
    with pytest.raises(UnknownStudy, match="no predictions"):
        study_lineage(settings, "nope")
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")
    with pytest.raises(UnknownStudy, match="nope: not in image_predictions"):
        study_lineage(settings, "nope")


def test_lineage_as_of_before_a_late_study_was_predicted_is_a_clear_error(settings):
    """Its hospital's model was current then, but the study came in a later drop: `--as-of` raised IndexError
    (found by stop 63's nightly probe) instead of saying no model had predicted it by then."""
    import time

    predict_hospital(settings, "h1", {"s1": 2}, "m1", seed=0, run_id="run-1")
    before = pd.Timestamp.now(tz="UTC")
    time.sleep(0.01)
    manifest = make_cache(settings, "h1", {"s1": 2, "s2": 1})  # the next drop brings study s2
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m1")
    write_predictions(settings, manifest, load_model(settings, ModelRef.load(settings.models)), path, run_id="run-2")
    with pytest.raises(UnknownStudy, match=r"no model current at .* had predicted it"):
        study_lineage(settings, "s2", as_of=before)
    assert study_lineage(settings, "s1", as_of=before)["current"]["dagster_run_id"] == "run-1"
    assert study_lineage(settings, "s2")["current"]["dagster_run_id"] == "run-2"


@pytest.mark.parametrize("study_threshold", [0.0, 1.01])
def test_study_lineage_history_gives_each_models_study_flag_at_its_study_threshold(settings, study_threshold):
    predict_hospital(settings, "h1", {"s1": 3}, "m1", seed=0, run_id="run-1")
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m1")
    point = {"threshold": 0.5, "review_low": 0.5, "review_high": 0.5, "rule": "test"}
    study = {**point, "threshold": study_threshold}
    points = {flag: {**point, "study": study} for flag in ("biopsy", "mag")}
    warehouse.write_slice(settings, "study_predictions", "h1", "m1", aggregate_studies(path, points))

    registry = settings.warehouse / "model_registry" / "m1.parquet"
    row = pd.read_parquet(registry).assign(operating_points=json.dumps(points))
    row.to_parquet(registry)

    lineage = study_lineage(settings, "s1")
    flagged = study_threshold == 0.0  # every MAX reaches 0, none reaches 1.01, whatever the image flags say
    report = render(lineage)
    assert f"against study thresholds {study_threshold:.3f} / {study_threshold:.3f}, 3 images" in report
    assert lineage["prediction"]["has_biopsy_marker"] is flagged
    assert [(h["model_version"], h["has_biopsy_marker"], h["is_mag_view"]) for h in lineage["history"]] == [
        ("m1", flagged, flagged)
    ]


def sync_labels(settings, hospital: str) -> LabelStore:
    """The label sync the `labels` asset runs: an image that left its hospital's cache manifest is withdrawn."""
    manifest = read_manifest(settings, hospital)
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest.assign(display_png=manifest["model_png"]), hospitals=[hospital])
    return store


def withdrawn_at(store: LabelStore, sop: str) -> str:
    """When the store withdrew an image, as lineage writes a time."""
    return pd.Timestamp(store.images().set_index("sop_instance_uid").loc[sop, "withdrawn_at"]).isoformat()


def test_lineage_of_a_withdrawn_study_says_when_and_shows_its_predictions_kept_in_the_history(settings):
    """A withdrawn study leaves the current model's predictions once that model predicts its hospital again, so
    `mammo lineage` said only "no model current now had predicted it". It now says the study was withdrawn and when
    (the label store's `withdrawn_at`), and shows the last model whose predictions of it are kept (`last`; `current`
    is None), as for any other study. As of a time before the withdrawal the answer is the one of then."""
    predict_hospital(settings, "h1", {"s1": 2, "s2": 1}, "m1", seed=0, run_id="run-1")
    sync_labels(settings, "h1")
    before = pd.Timestamp.now(tz="UTC")
    time.sleep(0.01)
    predict_hospital(settings, "h1", {"s1": 2}, "m2", seed=1, run_id="run-2")  # s2's file deleted from its drop
    at = withdrawn_at(sync_labels(settings, "h1"), "s2.0")

    lineage = study_lineage(settings, "s2")
    assert lineage["withdrawn"] == {
        "withdrawn_at": at,
        "images": ["s2.0"],
        "n_images": 1,
        "study": True,
        "kept_by": ["m1"],
    }
    assert lineage["current"] is None
    assert (lineage["last"]["model_version"], lineage["last"]["dagster_run_id"]) == ("m1", "run-1")
    assert [(i["sop_instance_uid"], i["model_version"]) for i in lineage["images"]] == [("s2.0", "m1")]
    assert lineage["prediction"]["n_images"] == 1 and list(lineage["models"]) == ["m1"]
    report = render(lineage)
    assert (
        f"withdrawn  {at}: its 1 image left the index (deleted from the drop or replaced there by another image)"
        in report
    )
    assert (
        "no current model predicts them any more: the answer below is the last one kept; predictions of them by "
        "model m1 are kept in the prediction history"
    ) in report
    assert "last       model m1  never promoted" in report and "current    model" not in report

    assert study_lineage(settings, "s1")["withdrawn"] is None  # a study in use says nothing of the kind
    then = study_lineage(settings, "s2", as_of=before)  # not withdrawn then: the answer of then
    assert then["withdrawn"] is None and then["current"]["model_version"] == "m1"


def test_lineage_of_a_withdrawn_study_whose_predictions_are_all_gone_says_when_it_was_withdrawn(settings):
    """Predicted by the current model only, which predicted its hospital again without it: no prediction of it is
    left, and the error said only "not in image_predictions". It now says when it was withdrawn, and that none is
    kept."""
    predict_hospital(settings, "h1", {"s1": 1, "s2": 1}, "m1", seed=0, run_id="run-1")
    sync_labels(settings, "h1")
    manifest = make_cache(settings, "h1", {"s1": 1})  # s2's file deleted from its drop
    path = warehouse.slice_file(settings, "image_predictions", "h1", "m1")
    write_predictions(settings, manifest, load_model(settings, ModelRef.load(settings.models)), path, run_id="run-2")
    at = withdrawn_at(sync_labels(settings, "h1"), "s2.0")
    expected = (
        f"study s2: withdrawn {at}, its images left the index (deleted from the drop or replaced there by another "
        "image); no prediction of it is kept"
    )
    with pytest.raises(UnknownStudy, match=re.escape(expected)):
        study_lineage(settings, "s2")
    with pytest.raises(UnknownStudy, match="nope: not in image_predictions"):  # an unknown study, as before
        study_lineage(settings, "nope")


def test_lineage_of_a_study_with_one_image_withdrawn_names_it_until_the_current_model_predicts_again(settings):
    """One image of a study withdrawn, before its model predicted the hospital again: the study is still current
    and its answer still counts the image; lineage names the image, when it went, and that the current model's
    prediction of it goes at its next run (no older model's is kept)."""
    predict_hospital(settings, "h1", {"s1": 2}, "m1", seed=0, run_id="run-1")
    sync_labels(settings, "h1")
    manifest = read_manifest(settings, "h1")
    kept = manifest[manifest["sop_instance_uid"] != "s1.1"]  # its file deleted from its drop
    write_parquet(kept, settings.table_dir("image_cache", "h1") / "manifest.parquet")
    at = withdrawn_at(sync_labels(settings, "h1"), "s1.1")
    lineage = study_lineage(settings, "s1")
    assert lineage["current"]["model_version"] == "m1" and len(lineage["images"]) == 2
    assert lineage["withdrawn"] == {
        "withdrawn_at": at,
        "images": ["s1.1"],
        "n_images": 2,
        "study": False,
        "kept_by": ["m1"],
    }
    report = render(lineage)
    assert f"withdrawn  {at}: 1 of its 2 images left the index" in report
    assert "           s1.1\n" in report and "  s1.1  withdrawn  " in report  # in place of its drop
    assert (
        "the current model's predictions of them go at its next run; no earlier model's prediction of them is kept"
    ) in report

    path = warehouse.slice_file(settings, "image_predictions", "h1", "m1")  # the model predicts the hospital again
    write_predictions(settings, kept, load_model(settings, ModelRef.load(settings.models)), path, run_id="run-2")
    lineage = study_lineage(settings, "s1")
    assert lineage["current"]["model_version"] == "m1"
    assert [image["sop_instance_uid"] for image in lineage["images"]] == ["s1.0"]
    assert lineage["withdrawn"]["kept_by"] == []
    assert "the current model predicts them no more; no earlier model's prediction of them is kept" in render(lineage)
