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


def test_a_study_whose_images_only_partly_carry_a_patient_id_stays_on_one_side():
    """An image without a Patient ID is keyed by its study (headers.patient_key); the study's other images carry
    the ID. Both halves are one unit, drawn once, whatever the seed; a lone patient keeps its own draw."""
    rows = []
    for s in range(200):
        rows.append(("h1", f"pid-{s}", f"study-{s}", f"sop-{s}-a"))
        rows.append(("h1", f"studykey-{s}", f"study-{s}", f"sop-{s}-b"))  # the same study, no Patient ID
    df = pd.DataFrame(rows, columns=["hospital", "patient_key", "study_instance_uid", "sop_instance_uid"])
    df["split"] = assign_splits(df, seed=5, audit_fraction=0.2)
    assert (df.groupby("study_instance_uid")["split"].nunique() == 1).all()
    assert 0.1 < (df["split"] == "audit").mean() < 0.3
    alone = pd.DataFrame({"hospital": ["h1"], "patient_key": ["p"], "study_instance_uid": ["s"]})
    assert assign_splits(alone, seed=5).tolist() == [split_of(5, "h1", "p")]


def test_a_new_image_joins_the_side_of_its_known_study_or_patient():
    new = pd.DataFrame(
        {"hospital": ["h1", "h1"], "patient_key": ["fresh-1", "fresh-2"], "study_instance_uid": ["old-s", "new-s"]}
    )
    known = {"study\x1fh1\x1fold-s": "audit"}
    splits = assign_splits(new, seed=0, audit_fraction=0.0, known=known)  # a draw would give train
    assert splits.tolist() == ["audit", "train"]


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="audit_fraction"):
        split_of(0, "h1", "p", 1.5)
