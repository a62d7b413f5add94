"""Study aggregation (the ANY rule) and the per-hospital header-vs-model summary."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_pipeline import warehouse
from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.summary import MissingTable, MixedModels, aggregate_studies, summarize_predictions
from mammo_pipeline_tests.model.test_infer import make_dicom_index


def _predictions(hospital: str, rows: list[tuple[str, str, float, float]], model: str = "m1") -> pd.DataFrame:
    """image_predictions rows from (sop, study, p_biopsy, p_mag)."""
    df = pd.DataFrame(rows, columns=["sop_instance_uid", "study_instance_uid", "p_biopsy", "p_mag"])
    df["patient_key"] = "pk-" + df["study_instance_uid"]
    df["hospital"] = hospital
    df["has_biopsy_marker"] = df["p_biopsy"] >= 0.5
    df["is_mag_view"] = df["p_mag"] >= 0.5
    df["predicted_class"] = [label_of(b, m) for b, m in zip(df["has_biopsy_marker"], df["is_mag_view"], strict=True)]
    df["model_version"], df["onnx_sha256"], df["label_snapshot_id"] = model, f"sha-{model}", "snap1"
    df["dagster_run_id"], df["predicted_at"] = "run1", pd.Timestamp("2026-01-01", tz="UTC")
    return df


def _write(settings, hospital: str, df: pd.DataFrame) -> pd.DataFrame:
    version = df["model_version"].iloc[0]
    path = warehouse.write_slice(settings, "image_predictions", hospital, version, df)
    studies = aggregate_studies(path)
    warehouse.write_slice(settings, "study_predictions", hospital, version, studies)
    return studies


def test_aggregate_studies_flags_a_study_when_any_image_is_flagged(settings):
    rows = [
        ("a.1", "a", 0.9, 0.1),  # study a: one biopsy image among clean ones
        ("a.2", "a", 0.2, 0.1),
        ("a.3", "a", 0.1, 0.3),
        ("b.1", "b", 0.1, 0.2),  # study b: nothing flagged anywhere
        ("b.2", "b", 0.4, 0.49),
        ("c.1", "c", 0.3, 0.7),  # study c: one mag view
    ]
    studies = _write(settings, "h1", _predictions("h1", rows)).set_index("study_instance_uid")
    assert studies.loc["a", ["has_biopsy_marker", "is_mag_view"]].tolist() == [True, False]
    assert studies.loc["b", ["has_biopsy_marker", "is_mag_view"]].tolist() == [False, False]
    assert studies.loc["c", ["has_biopsy_marker", "is_mag_view"]].tolist() == [False, True]
    assert studies["n_images"].to_dict() == {"a": 3, "b": 2, "c": 1}
    assert studies.loc["b", "max_p_mag"] == pytest.approx(0.49)
    assert set(studies["model_version"]) == {"m1"} and set(studies["dagster_run_id"]) == {"run1"}


@pytest.mark.parametrize("late", ["a.1", "a.2", "a.3"])
def test_a_studys_run_is_the_run_of_its_newest_prediction(settings, late):
    """A late image of a study predicted by a later run: the study row named an arbitrary image's run beside the
    newest `predicted_at` (any_value; found by stop 63's nightly probe), so lineage paired the old run with the
    new time."""
    df = _predictions("h1", [("a.1", "a", 0.2, 0.1), ("a.2", "a", 0.3, 0.1), ("a.3", "a", 0.1, 0.2)])
    is_late = df["sop_instance_uid"] == late
    df.loc[is_late, "dagster_run_id"], df.loc[is_late, "predicted_at"] = "run2", pd.Timestamp("2026-01-02", tz="UTC")
    study = _write(settings, "h1", df).iloc[0]
    assert (study["dagster_run_id"], study["predicted_at"]) == ("run2", pd.Timestamp("2026-01-02", tz="UTC"))


def test_aggregate_studies_flags_and_reviews_at_the_models_study_points(settings):
    rows = [
        ("a.1", "a", 0.7, 0.1),  # study a: an image flagged at the image threshold, its MAX under the study one
        ("a.2", "a", 0.2, 0.1),
        ("b.1", "b", 0.95, 0.1),  # study b: over the study threshold, outside the study review band
        ("b.2", "b", 0.6, 0.2),
        ("c.1", "c", 0.1, 0.45),  # study c: mag under its image threshold, inside its study review band
    ]
    band = {"rule": "test"}
    points = {
        "biopsy": {
            **band,
            "threshold": 0.5,
            "review_low": 0.3,
            "review_high": 0.8,
            "study": {**band, "threshold": 0.8, "review_low": 0.75, "review_high": 0.9},
        },
        "mag": {
            **band,
            "threshold": 0.5,
            "review_low": 0.5,
            "review_high": 0.5,
            "study": {**band, "threshold": 0.5, "review_low": 0.4, "review_high": 0.6},
        },
    }
    df = _predictions("h1", rows)
    df["needs_review"] = [True, False, False, True, False]  # the image bands: a study's own band decides instead
    path = warehouse.write_slice(settings, "image_predictions", "h1", "m1", df)
    studies = aggregate_studies(path, points).set_index("study_instance_uid")
    assert studies["has_biopsy_marker"].to_dict() == {"a": False, "b": True, "c": False}
    assert studies["n_biopsy_images"].to_dict() == {"a": 1, "b": 2, "c": 0}
    assert studies["is_mag_view"].to_dict() == {"a": False, "b": False, "c": False}
    assert studies["needs_review"].to_dict() == {"a": False, "b": False, "c": True}
    assert studies["n_needs_review"].to_dict() == {"a": 1, "b": 1, "c": 0}
    # a model made before study points: the ANY rule on the image flags, as before
    legacy = aggregate_studies(path, {f: {k: v for k, v in p.items() if k != "study"} for f, p in points.items()})
    assert legacy.set_index("study_instance_uid")["has_biopsy_marker"].to_dict() == {"a": True, "b": True, "c": False}
    assert legacy.set_index("study_instance_uid")["needs_review"].to_dict() == {"a": True, "b": True, "c": False}


def test_aggregate_studies_fails_loudly_on_mixed_models(settings):
    mixed = pd.concat(
        [_predictions("h1", [("a.1", "a", 0.1, 0.1)]), _predictions("h1", [("a.2", "a", 0.1, 0.1)], "m2")]
    )
    path = write_parquet(mixed, settings.table_dir("image_predictions", "h1") / "predictions.parquet")
    with pytest.raises(MixedModels, match="2 models"):
        aggregate_studies(path)


def test_summarize_predictions_sorts_header_and_model_disagreements(settings):
    _write(
        settings,
        "h1",
        _predictions(
            "h1",
            [
                ("1", "a", 0.1, 0.9),
                ("2", "a", 0.1, 0.1),
                ("3", "b", 0.1, 0.9),
                ("4", "b", 0.9, 0.9),
                ("5", "c", 0.1, 0.1),
            ],
        ),
    )
    make_dicom_index(settings, "h1", {"1": True, "2": True, "3": False, "4": None, "5": None})
    _write(settings, "h2", _predictions("h2", [("6", "d", 0.1, 0.1), ("7", "d", 0.1, 0.9)]))
    make_dicom_index(settings, "h2", {"6": False, "7": True})

    summary = summarize_predictions(settings)
    agreement = summary.agreement.set_index("hospital")
    cols = ["n_images", "agree", "meta_only", "visual_only", "silent", "silent_visual_mag"]
    assert agreement.loc["h1", cols].tolist() == [5, 1, 1, 1, 2, 1]
    assert agreement.loc["h2", cols].tolist() == [2, 2, 0, 0, 0, 0]
    assert agreement.loc["h1", "agree_rate"] == pytest.approx(1 / 3)

    counts = summary.counts.set_index(["hospital", "level", "predicted_class"])["n"]
    assert counts[("h1", "image", "mag")] == 2 and counts[("h1", "image", "both")] == 1
    assert counts[("h1", "study", "mag")] == 1 and counts[("h1", "study", "both")] == 1  # b: one mag + one both
    assert pd.read_parquet(summary.agreement_path).equals(summary.agreement)
    assert summary.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summarize_predictions_names_the_missing_table(settings):
    with pytest.raises(MissingTable, match="materialize image_predictions"):
        summarize_predictions(settings)
