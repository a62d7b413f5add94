"""Drift and newcomer findings: each fires on a crafted partition and stays quiet on a normal one."""

from __future__ import annotations

import pandas as pd

from mammo_pipeline import drift, warehouse
from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.dicom.index import SCHEMA as INDEX_SCHEMA

HAS_IMAGE_KIND = "image_kind" in INDEX_SCHEMA.names

DEVICE = ("HOLOGIC, Inc.", "Selenia Dimensions", "2d")
# 100 audit labels: the label shares the predictions are compared with
AUDIT = {"neither": 70, "biopsy": 15, "mag": 10, "both": 5}


def write_labels(settings, sops: list[str]) -> None:
    labels = [c for c, n in AUDIT.items() for _ in range(n)]
    df = pd.DataFrame({"sop_instance_uid": sops[: len(labels)], "hospital": "h0", "label": labels, "split": "audit"})
    write_parquet(df, settings.table_dir("labels") / "current.parquet")


def write_index(settings, hospital: str, n: int, device=DEVICE, image_kind: bool = True) -> list[str]:
    sops = [f"{hospital}.{i}" for i in range(n)]
    df = pd.DataFrame(
        {
            "hospital": hospital,
            "drop": "d1",
            "sop_instance_uid": sops,
            "manufacturer": device[0],
            "model_name": device[1],
        }
    )
    if image_kind:
        df["image_kind"] = device[2]
    warehouse.write_partition(settings, "dicom_index", hospital, df, "d1.parquet")
    return sops


def write_predictions(settings, hospital: str, version: str, classes: dict[str, int], review: float | None, day: int):
    rows = [c for c, n in classes.items() for _ in range(n)]
    df = pd.DataFrame(
        {
            "sop_instance_uid": [f"{hospital}.{i}" for i in range(len(rows))],
            "hospital": hospital,
            "predicted_class": rows,
            "model_version": version,
            "predicted_at": pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(days=day),
        }
    )
    if review is not None:
        df["needs_review"] = [i < round(review * len(df)) for i in range(len(df))]
    warehouse.write_slice(settings, "image_predictions", hospital, version, df)


def test_newcomer_fires_on_an_unseen_device_and_is_quiet_on_known_ones(settings):
    write_labels(settings, write_index(settings, "h0", 100))
    write_index(settings, "h1", 30)
    write_index(settings, "h2", 30, device=("FUJIFILM Corporation", "AMULET Innovality", "tomosynthesis"))
    quiet, loud = drift.newcomers(settings, "h1"), drift.newcomers(settings, "h2")
    assert quiet.passed and quiet.details["newcomers"] == {}
    assert not loud.passed
    expected = {"manufacturer": {"FUJIFILM Corporation": 30}, "model_name": {"AMULET Innovality": 30}}
    if HAS_IMAGE_KIND:  # the typed view shows image_kind once dicom_index's schema has it (issue 17)
        expected["image_kind"] = {"tomosynthesis": 30}
    assert loud.details["newcomers"] == expected
    assert "Label some of those images" in loud.summary and "h2" in loud.summary


def test_newcomer_leaves_out_images_the_cache_never_renders(settings):
    """For Processing images are indexed but never cached, so never labeled: a newcomer finding about their
    image_kind could never clear (stop 62's probe). Once the hospital has a cache, only its images count."""
    write_labels(settings, write_index(settings, "h0", 100))
    sops = write_index(settings, "h1", 30)
    raw = pd.DataFrame({"hospital": "h1", "drop": "d2", "sop_instance_uid": ["h1.raw.0", "h1.raw.1"]})
    raw["manufacturer"], raw["model_name"], raw["image_kind"] = DEVICE[0], DEVICE[1], "for_processing"
    warehouse.write_partition(settings, "dicom_index", "h1", raw, "d2.parquet")
    if HAS_IMAGE_KIND:
        assert not drift.newcomers(settings, "h1").passed  # no cache yet: every indexed image counts
    cache = pd.DataFrame({"sop_instance_uid": sops, "hospital": "h1"})
    warehouse.write_partition(settings, "image_cache", "h1", cache, "manifest.parquet")
    finding = drift.newcomers(settings, "h1")
    assert finding.passed and finding.details["images"] == 30


def test_newcomer_without_image_kind_column_checks_the_other_fields(settings):
    write_labels(settings, write_index(settings, "h0", 100, image_kind=False))
    write_index(settings, "h1", 30, image_kind=False)
    finding = drift.newcomers(settings, "h1")
    assert finding.passed
    assert finding.details.get("not_in_dicom_index", []) == ([] if HAS_IMAGE_KIND else ["image_kind"])


def test_newcomer_before_any_label_is_quiet(settings):
    write_index(settings, "h1", 30)
    assert drift.newcomers(settings, "h1").passed


def test_class_rates_fire_beyond_the_bound_and_not_within_it(settings):
    write_labels(settings, write_index(settings, "h0", 100))
    write_predictions(settings, "h1", "m1", {"neither": 68, "biopsy": 17, "mag": 10, "both": 5}, None, 0)
    write_predictions(settings, "h2", "m1", {"neither": 40, "biopsy": 45, "mag": 10, "both": 5}, None, 0)
    quiet, loud = drift.class_rates(settings, "h1"), drift.class_rates(settings, "h2")
    assert quiet.passed, quiet.summary
    assert not loud.passed and "biopsy 45.0% vs 15.0%" in loud.summary and "label a sample" in loud.summary
    write_predictions(settings, "h3", "m1", {"biopsy": 5}, None, 0)
    assert drift.class_rates(settings, "h3").passed  # 5 images: too few to judge


def test_needs_review_growth_against_the_previous_model(settings):
    normal = {"neither": 100}
    write_predictions(settings, "h1", "m1", normal, 0.05, 0)
    write_predictions(settings, "h1", "m2", normal, 0.07, 1)
    write_predictions(settings, "h2", "m1", normal, 0.05, 0)
    write_predictions(settings, "h2", "m2", normal, 0.40, 1)
    quiet, loud = drift.needs_review_growth(settings, "h1"), drift.needs_review_growth(settings, "h2")
    assert quiet.passed, quiet.summary
    assert not loud.passed and "grew to 40.0%" in loud.summary and "previous model m1" in loud.summary


def test_needs_review_absent_in_old_rows_is_quiet(settings):
    write_predictions(settings, "h1", "m1", {"neither": 100}, None, 0)
    finding = drift.needs_review_growth(settings, "h1")
    assert finding.passed and "no needs_review flag" in finding.summary


def test_needs_review_of_a_hospital_without_predictions_says_so(settings):
    """A hospital whose images were all For Processing has no predictions: the check says that, not that its
    predictions come from a model before the needs_review flag."""
    write_predictions(settings, "h1", "m1", {"neither": 100}, 0.05, 0)
    finding = drift.needs_review_growth(settings, "h2")
    assert finding.passed and finding.summary == "no current predictions of h2 yet"
