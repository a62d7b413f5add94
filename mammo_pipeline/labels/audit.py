"""The audit set: a frozen, seeded sample of patients per hospital, used only to measure the model.

A patient's side depends only on (seed, hospital, patient_key) through a hash, never on which other
patients exist, so a new drop never moves an old patient and all images of a patient land on one side.
"""

from __future__ import annotations

import hashlib

import pandas as pd

SPLITS = ("train", "audit")


def patient_draw(seed: int, hospital: str, patient_key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, hospital, patient_key)."""
    digest = hashlib.sha256(f"{seed}\x1f{hospital}\x1f{patient_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(seed: int, hospital: str, patient_key: str, audit_fraction: float = 0.2) -> str:
    """'audit' for about `audit_fraction` of the patients of each hospital, else 'train'."""
    if not 0.0 <= audit_fraction <= 1.0:
        raise ValueError(f"audit_fraction must be in [0, 1], not {audit_fraction}")
    return "audit" if patient_draw(seed, hospital, patient_key) < audit_fraction else "train"


def assign_splits(images: pd.DataFrame, seed: int = 0, audit_fraction: float = 0.2) -> pd.Series:
    """The split of each row of `images` (columns hospital, patient_key), aligned with its index.

    Rows without a patient key are drawn by their own sop_instance_uid, so an image with unreadable
    identity never drags other images along.
    """
    keys = images["patient_key"].where(images["patient_key"].notna() & (images["patient_key"] != ""))
    keys = keys.fillna("sop:" + images.get("sop_instance_uid", pd.Series("", index=images.index)).astype(str))
    pairs = pd.DataFrame({"h": images["hospital"].astype(str).to_numpy(), "k": keys.astype(str).to_numpy()})
    unique = pairs.drop_duplicates()  # one draw per patient (a patient has several images)
    drawn = [
        split_of(seed, h, k, audit_fraction) for h, k in zip(unique["h"].tolist(), unique["k"].tolist(), strict=True)
    ]
    split = pairs.merge(unique.assign(split=drawn), on=["h", "k"], how="left")["split"]
    return pd.Series(split.to_numpy(dtype=object), index=images.index, dtype="object")
