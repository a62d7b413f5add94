"""The audit split: by patient, seeded, frozen across drops."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_pipeline.labels.audit import assign_splits, split_of


def _patients(hospital: str, n: int, images_each: int = 3) -> pd.DataFrame:
    rows = [(hospital, f"{hospital}-p{p}", f"sop-{hospital}-{p}-{k}") for p in range(n) for k in range(images_each)]
    return pd.DataFrame(rows, columns=["hospital", "patient_key", "sop_instance_uid"])


def test_all_images_of_a_patient_share_a_split_and_the_fraction_holds_per_hospital():
    df = pd.concat([_patients("h1", 600), _patients("h2", 600)], ignore_index=True)
    df["split"] = assign_splits(df, seed=3, audit_fraction=0.2)
    assert (df.groupby(["hospital", "patient_key"])["split"].nunique() == 1).all()
    per_patient = df.drop_duplicates(["hospital", "patient_key"])
    for _, group in per_patient.groupby("hospital"):
        assert 0.15 < (group["split"] == "audit").mean() < 0.25


def test_split_depends_only_on_seed_hospital_and_patient():
    old = _patients("h1", 200)
    first = assign_splits(old, seed=1)
    # A later drop adds patients and reorders rows: old patients keep their side.
    both = pd.concat([_patients("h1", 400).iloc[::-1], old], ignore_index=True)
    again = assign_splits(both, seed=1).iloc[-len(old) :].reset_index(drop=True)
    assert again.tolist() == first.tolist()
    assert assign_splits(old, seed=2).tolist() != first.tolist()
    assert split_of(1, "h1", "x", 0.0) == "train" and split_of(1, "h1", "x", 1.0) == "audit"


def test_images_without_a_patient_key_are_drawn_alone():
    df = pd.DataFrame({"hospital": ["h1"] * 400, "patient_key": [None] * 400, "sop_instance_uid": range(400)})
    splits = assign_splits(df, audit_fraction=0.5)
    assert 100 < (splits == "audit").sum() < 300  # not all on one side like one big "None" patient


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="audit_fraction"):
        split_of(0, "h1", "p", 1.5)
