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


def test_a_hospitals_first_patients_always_give_the_audit_set_one():
    """Three patients draw no audit patient with chance 0.8^3 (the quick demo then measured nothing); a hospital's
    first patients, none drawn into it, give it their lowest draw. A lone first patient keeps its own draw, and a
    hospital that already has patients is left to the draws (a new drop never moves anyone)."""
    from mammo_pipeline.labels.audit import patient_draw

    emptied = 0
    for seed in range(40):
        df = _patients("h1", 3, images_each=2)
        draws = {k: patient_draw(seed, "h1", k) for k in df["patient_key"].unique()}
        splits = assign_splits(df, seed=seed)
        audit = set(df.loc[splits == "audit", "patient_key"])
        if all(d >= 0.2 for d in draws.values()):  # the draws alone leave the audit set empty
            emptied += 1
            assert audit == {min(draws, key=draws.get)}
        else:
            assert audit == {k for k, d in draws.items() if d < 0.2}
        known = {f"patient\x1fh1\x1f{k}": "train" for k in draws}  # the same hospital's next drop
        later = assign_splits(
            _patients("h1", 3, images_each=1).assign(patient_key=lambda d: d["patient_key"] + "-new"),
            seed=seed,
            known=known,
        )
        assert later.tolist() == [split_of(seed, "h1", f"h1-p{p}-new") for p in range(3)]
    assert emptied > 5  # the case was met, not missed
    alone = _patients("h2", 1)
    assert set(assign_splits(alone, seed=0)) == {split_of(0, "h2", "h2-p0")}
    assert set(assign_splits(_patients("h3", 4), seed=0, audit_fraction=0.0)) == {"train"}
