"""The audit set: a frozen, seeded sample of patients per hospital, used only to measure the model.

A patient's side depends only on (seed, hospital, patient_key) through a hash, never on which other
patients exist (one exception: a hospital's first patients, when none of them is drawn into the audit set, give
it the one with the lowest draw), so a new drop never moves an old patient and all images of a patient land on
one side; images that share a study stay together too, even where only some of them carry a Patient ID
(`assign_splits`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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


def assign_splits(
    images: pd.DataFrame, seed: int = 0, audit_fraction: float = 0.2, known: Mapping[str, str] | None = None
) -> pd.Series:
    """The split of each row of `images` (columns hospital, patient_key, optionally study_instance_uid and
    sop_instance_uid), aligned with its index.

    Rows that share a patient or a study (within a hospital) are one unit: an image without a Patient ID is keyed
    by its study (`headers.patient_key`) while the study's other images may carry the ID, and a study split
    between train and audit would put one clip on both sides. A unit takes the split that `known` gives any of
    its members (`unit_key`: the patients and studies already placed, so a new drop never moves them), else the
    draw of its smallest patient key (a lone patient's own draw, the usual case). Rows without a patient key are
    drawn by their own sop_instance_uid, so an image with unreadable identity never drags other images along.
    A hospital's first patients (none of its units in `known`), two or more and none drawn into the audit set,
    give their lowest draw to it, so that every hospital has audit images (a first drop of n patients draws
    none with chance 0.8^n: a quarter of the quick demo's three-patient hospitals; never in practice at scale).
    """
    hospital = images["hospital"].astype(str)
    keys = images["patient_key"].where(images["patient_key"].notna() & (images["patient_key"] != ""))
    keys = keys.fillna("sop:" + images.get("sop_instance_uid", pd.Series("", index=images.index)).astype(str))
    keys = keys.astype(str)
    studies = images.get("study_instance_uid", pd.Series(None, index=images.index, dtype=object))
    studies = studies.where(studies.notna() & (studies.astype(str) != ""))
    patient_nodes = unit_key("patient", hospital, keys)
    study_nodes = unit_key("study", hospital, studies.astype(str)).where(studies.notna())
    has_study = study_nodes.notna().to_numpy()
    codes, nodes = pd.factorize(pd.concat([patient_nodes, study_nodes[has_study]], ignore_index=True))
    n_rows = len(images)
    rows, linked = codes[:n_rows][has_study], codes[n_rows:]
    graph = coo_matrix((np.ones(len(rows)), (rows, linked)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    unit = component[codes[:n_rows]]
    placed = {int(c): known[node] for node, c in zip(nodes, component, strict=True) if known and node in known}
    first = pd.DataFrame({"unit": unit, "h": hospital.to_numpy(), "k": keys.to_numpy()})
    first = first[~first["unit"].isin(placed)].sort_values("k").drop_duplicates("unit")  # a unit's smallest key
    drawn = {
        u: split_of(seed, h, k, audit_fraction)
        for u, h, k in zip(first["unit"].tolist(), first["h"].tolist(), first["k"].tolist(), strict=True)
    }
    if audit_fraction > 0:
        seen = {node.split("\x1f")[1] for node in known or {}}
        for h, units in first[~first["h"].isin(seen)].groupby("h"):  # a hospital's first patients
            if len(units) >= 2 and all(drawn[u] == "train" for u in units["unit"]):
                lowest = min(zip(units["unit"], units["k"], strict=True), key=lambda uk: patient_draw(seed, h, uk[1]))
                drawn[lowest[0]] = "audit"  # so that each hospital can be measured
    split = [placed.get(u) or drawn[u] for u in unit.tolist()]
    return pd.Series(split, index=images.index, dtype="object")


def unit_key(kind: str, hospital: pd.Series, value: pd.Series) -> pd.Series:
    """The name of a patient or a study in a hospital as `assign_splits`'s `known` spells it."""
    return f"{kind}\x1f" + hospital + "\x1f" + value
