"""Labeling queues: which image to show next. Pure functions over DataFrames, so they are testable alone.

Inputs (the label store builds them):
- images: id, split ('train'|'audit'), meta_mag (True/False or 1/0; None or NaN when unknown)
- labels: image_id, label (code 1-4), ts (ISO time of the latest decision), one row per labeled image
- predictions: image_id, p_biopsy, p_mag, out_of_sample (bool), updated_at (ISO time)

Every queue returns the image ids still to look at, best first, the size of the pool it draws from, and
a note saying how it ordered them (a queue without predictions falls back to random order and says so).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mammo_pipeline.labels.codes import flags_of

QUEUES: dict[str, str] = {
    "unlabeled": "unlabeled training images, random order",
    "low_confidence": "unlabeled training images the model is least sure about",
    "disagreements": "labels the model contradicts, least self-confidence first",
    "meta_conflicts": "DICOM metadata says magnification one way, the model the other",
    "audit": "unlabeled audit images (measure the model; never trained on)",
}


@dataclass(frozen=True)
class Queue:
    name: str
    ids: list[int]  # remaining image ids, best first
    total: int  # size of the pool the queue draws from
    note: str  # how the order was made


def _shuffled(ids: pd.Series, seed: int, annotator: str) -> list[int]:
    """Ids in a seeded random order that is stable as the pool shrinks (each id has a fixed rank).

    Each annotator gets their own order, so two people labeling at once rarely meet on one image.
    """
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"{seed}\x1f{annotator}".encode()).digest()[:8], "big"))
    values = ids.to_numpy(dtype=np.uint64)
    return [int(i) for i in values[np.lexsort((values, _splitmix64(values ^ salt)))]]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (SplitMix64 finalizer), vectorized."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _unlabeled(images: pd.DataFrame, labels: pd.DataFrame, split: str) -> pd.DataFrame:
    pool = images[images["split"] == split]
    return pool[~pool["id"].isin(labels["image_id"])]


def _with_predictions(pool: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    return pool.merge(predictions, left_on="id", right_on="image_id", how="inner")


def unlabeled(images, labels, predictions, seed: int = 0, annotator: str = "") -> Queue:
    pool = _unlabeled(images, labels, "train")
    total = int((images["split"] == "train").sum())
    return Queue("unlabeled", _shuffled(pool["id"], seed, annotator), total, "random order (seeded)")


def audit(images, labels, predictions, seed: int = 0, annotator: str = "") -> Queue:
    pool = _unlabeled(images, labels, "audit")
    total = int((images["split"] == "audit").sum())
    return Queue("audit", _shuffled(pool["id"], seed, annotator), total, "random order (seeded)")


def low_confidence(images, labels, predictions, seed: int = 0, annotator: str = "") -> Queue:
    """Smallest margin |p - 0.5| over both flags first; images without a prediction after, at random."""
    pool = _unlabeled(images, labels, "train")
    scored = _with_predictions(pool, predictions)
    if scored.empty:
        return Queue(
            "low_confidence", _shuffled(pool["id"], seed, annotator), len(pool), "no predictions: random order"
        )
    margin = np.minimum((scored["p_biopsy"] - 0.5).abs(), (scored["p_mag"] - 0.5).abs())
    first = scored.assign(margin=margin).sort_values(["margin", "id"])["id"].astype(int).tolist()
    rest = _shuffled(pool[~pool["id"].isin(scored["id"])]["id"], seed, annotator)
    return Queue("low_confidence", first + rest, len(pool), "smallest margin |p - 0.5| first")


def self_confidence(label: pd.Series, p_biopsy: pd.Series, p_mag: pd.Series) -> pd.Series:
    """The model's probability of the given label (flags independent), as in cleanlab's self-confidence."""
    flags = np.array([flags_of(int(code)) for code in label], dtype=bool).reshape(-1, 2)
    pb = np.where(flags[:, 0], p_biopsy, 1 - p_biopsy)
    pm = np.where(flags[:, 1], p_mag, 1 - p_mag)
    return pd.Series(pb * pm, index=label.index)


def contradicts(label: pd.Series, p_biopsy: pd.Series, p_mag: pd.Series) -> pd.Series:
    """True where the model's predicted flags (p >= 0.5) differ from the label's flags."""
    flags = np.array([flags_of(int(code)) for code in label], dtype=bool).reshape(-1, 2)
    return pd.Series((flags[:, 0] != (p_biopsy >= 0.5)) | (flags[:, 1] != (p_mag >= 0.5)), index=label.index)


def disagreements(images, labels, predictions, seed: int = 0, annotator: str = "") -> Queue:
    """Labeled training images the out-of-sample model contradicts, lowest self-confidence first.

    An image leaves the queue once someone labels it again after the prediction was made.
    Without out-of-sample predictions: every labeled training image, random order (a spot check).
    """
    pool = images[images["split"] == "train"].merge(labels, left_on="id", right_on="image_id")
    oos = predictions[predictions["out_of_sample"].astype(bool)] if len(predictions) else predictions
    scored = pool.merge(oos[["image_id", "p_biopsy", "p_mag", "updated_at"]], on="image_id") if len(oos) else None
    if scored is None or scored.empty:
        note = "no out-of-sample predictions: all labeled images, random order"
        return Queue("disagreements", _shuffled(pool["id"], seed, annotator), len(pool), note)
    scored = scored[contradicts(scored["label"], scored["p_biopsy"], scored["p_mag"])]
    scored = scored.assign(conf=self_confidence(scored["label"], scored["p_biopsy"], scored["p_mag"]))
    todo = scored[scored["ts"] <= scored["updated_at"]].sort_values(["conf", "id"])
    return Queue("disagreements", todo["id"].astype(int).tolist(), len(scored), "lowest self-confidence first")


def meta_conflicts(images, labels, predictions, seed: int = 0, annotator: str = "") -> Queue:
    """Unlabeled images whose DICOM magnification flag and the model's p_mag disagree."""
    known = images[images["meta_mag"].notna()]
    scored = _with_predictions(known, predictions)
    if scored.empty:
        pool = known[~known["id"].isin(labels["image_id"])]
        note = "no predictions: images with a metadata magnification flag, random order"
        return Queue("meta_conflicts", _shuffled(pool["id"], seed, annotator), len(known), note)
    clash = scored[scored["meta_mag"].astype(bool) != (scored["p_mag"] >= 0.5)]
    todo = clash[~clash["id"].isin(labels["image_id"])]
    # The most confident model disagreement first: likely a metadata error worth a look.
    todo = todo.assign(margin=-(todo["p_mag"] - 0.5).abs()).sort_values(["margin", "id"])
    return Queue("meta_conflicts", todo["id"].astype(int).tolist(), len(clash), "model most sure first")


BUILDERS = {
    "unlabeled": unlabeled,
    "low_confidence": low_confidence,
    "disagreements": disagreements,
    "meta_conflicts": meta_conflicts,
    "audit": audit,
}


def build(
    name: str, images: pd.DataFrame, labels: pd.DataFrame, predictions: pd.DataFrame, seed: int = 0, annotator: str = ""
) -> Queue:
    """The queue called `name` (one of QUEUES)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown queue {name!r}; choose one of {', '.join(QUEUES)}")
    return BUILDERS[name](images, labels, predictions, seed=seed, annotator=annotator)
