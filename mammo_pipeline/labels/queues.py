"""Labeling queues: which image to show next, as SQL over maintained, indexed columns of `images`.

Every queue is a partial index over columns of the `images` table that the label store keeps up to date
(store.py: the latest label, the audit reads, a copy of the latest prediction) plus virtual generated columns
derived from them (the low-confidence margin, the cleanlab-style self-confidence, ...). Taking the next image is
an index range scan (`ORDER BY <key> LIMIT n`), and the counts come from maintained totals (`queue_totals`),
so a key press costs the same with 10,000 or 1,000,000 images in the store.

A withdrawn image (its file deleted from its drop: `store.sync_images` sets `withdrawn_at`) is in no queue and no
count: every membership below is of live images only (`live`), and each partial index carries that term too, so a
queue's WHERE still implies its index's (SQLite uses a partial index only then).

Random order is a seeded rank stored per image when it is added (`images.rnd`, a hash of the store's seed and
the SOP Instance UID): stable as the pool shrinks, the same for every annotator. Two annotators in team mode
never meet on one image because of leases (`leases` table), not because of different orders.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

QUEUES: dict[str, str] = {
    "unlabeled": "unlabeled training images, random order",
    "low_confidence": "unlabeled training images the model is least sure about",
    "disagreements": "labels the model contradicts, least self-confidence first",
    "meta_conflicts": "DICOM metadata says magnification one way, the model the other",
    "needs_review": "images the latest model run flagged for review (needs_review)",
    "audit": "audit images still needing a blind read (measure the model; never trained on)",
    "adjudication": "audit images two readers disagree on: a third read decides",
    "audit_recheck": "agreed audit labels the model contradicts: a third blind read decides",
}

LIVE = "withdrawn_at IS NULL"  # not withdrawn (store.sync_images)


def live(where: str) -> str:
    """`where` among the live images only: the form of every membership, index and plan below."""
    return f"{where} AND {LIVE}"


# Generated columns of `images` (VIRTUAL: computed from the row, indexable). Flags of a label code:
# biopsy = code in (1, 4), mag = code in (2, 4) (codes.py).


def _contradicts(code: str) -> str:
    """SQL: the latest prediction (pb, pm) puts a flag of the label in column `code` on the other side of 0.5."""
    return f"(({code} IN (1, 4)) != (pb >= 0.5) OR ({code} IN (2, 4)) != (pm >= 0.5))"


def _confidence(code: str) -> str:
    """SQL: the model's probability of the label in column `code`, its two flags taken as independent."""
    biopsy = f"CASE WHEN {code} IN (1, 4) THEN pb ELSE 1 - pb END"
    mag = f"CASE WHEN {code} IN (2, 4) THEN pm ELSE 1 - pm END"
    return f"({biopsy}) * ({mag})"


GENERATED: dict[str, str] = {
    # smallest margin |p - 0.5| over both flags; 2.0 (after every real margin) without a prediction
    "lc_key": "CASE WHEN pb IS NULL THEN 2.0 ELSE MIN(ABS(pb - 0.5), ABS(pm - 0.5)) END",
    # the model's probability of the given label (flags independent), when an out-of-sample model contradicts it
    "dis_conf": f"""CASE WHEN split = 'train' AND label IS NOT NULL AND p_oos = 1 AND {_contradicts("label")}
        THEN {_confidence("label")} END""",
    # ... and nobody labeled it again after that prediction was made
    "dis_todo": f"""(split = 'train' AND label IS NOT NULL AND p_oos = 1 AND {_contradicts("label")}
        AND label_ts <= p_ts)""",
    # the model most sure first where the DICOM magnification flag and p_mag disagree
    "mc_key": "CASE WHEN meta_mag IS NOT NULL AND pm IS NOT NULL AND meta_mag != (pm >= 0.5) THEN -ABS(pm - 0.5) END",
    "nr_todo": "(p_nr = 1 AND (label IS NULL OR label_ts <= p_ts))",
    # 0 unread, 1 one read, 2 two reads agree, 3 they disagree (adjudication due), 4 adjudicated; NULL off audit
    "audit_state": """CASE WHEN split != 'audit' THEN NULL WHEN read1 IS NULL THEN 0 WHEN read2 IS NULL THEN 1
        WHEN adjudicated IS NOT NULL THEN 4 WHEN read1 = read2 THEN 2 ELSE 3 END""",
    # the audit truth: the adjudicated label, else the agreed one, else a lone first read; NULL while disputed
    "truth": """CASE WHEN split != 'audit' THEN NULL WHEN adjudicated IS NOT NULL THEN adjudicated
        WHEN read2 IS NULL THEN read1 WHEN read1 = read2 THEN read1 END""",
    # an agreed audit label (two blind reads alike) that the model contradicts: the model's probability of that
    # label (the self-confidence of `dis_conf`), lowest first. Two readers can slip alike on one image, and then
    # nothing in the double read catches it, yet one such label decides the sensitivity operating point
    # (evaluate.operating_point) when it marks a clip-free image as a clip. Audit images are never trained on,
    # so every prediction of one is out of sample. Re-reading the test labels a model contradicts, blind, is
    # Northcutt, Athalye & Mueller's protocol (NeurIPS 2021 Datasets and Benchmarks, "Pervasive label errors
    # in test sets destabilize machine learning benchmarks").
    "rc_key": f"""CASE WHEN audit_state = 2 AND pb IS NOT NULL AND {_contradicts("truth")}
        THEN {_confidence("truth")} END""",
}

# Maintained totals: name -> membership of one image (SQL over the images row; live images only). Recounted in
# bulk writes, updated by the difference before/after in single-image writes.
_COUNTED: dict[str, str] = {
    "train": "split = 'train'",
    "train_unlabeled": "split = 'train' AND label IS NULL",
    "train_labeled": "split = 'train' AND label IS NOT NULL",
    "dis_pool": "dis_conf IS NOT NULL",
    "dis_todo": "dis_todo = 1",
    "mc_pool": "split = 'train' AND mc_key IS NOT NULL",
    "mc_todo": "split = 'train' AND mc_key IS NOT NULL AND label IS NULL",
    "meta_known": "split = 'train' AND meta_mag IS NOT NULL",
    "meta_known_todo": "split = 'train' AND meta_mag IS NOT NULL AND label IS NULL",
    "nr_pool": "split = 'train' AND p_nr = 1",
    "nr_todo": "split = 'train' AND nr_todo = 1",
    "audit": "split = 'audit'",
    "audit_todo": "split = 'audit' AND audit_state IN (0, 1)",
    "adj_pool": "audit_state IN (3, 4)",
    "adj_todo": "audit_state = 3",
    "rc_pool": "split = 'audit' AND audit_state = 2",
    "rc_todo": "rc_key IS NOT NULL",
    "predicted": "pb IS NOT NULL",
    "predicted_oos": "p_oos = 1",
}
COUNTERS: dict[str, str] = {name: live(expr) for name, expr in _COUNTED.items()}

# Bumped when a queue's membership or an index's definition changes: a store made before is recounted and its
# queue indexes are made again on open (`LabelStore._upgrade`). 2: needs_review takes training images only, and
# the disagreements fallback walks labeled images oldest label first. 3: the audit queue reads images with one
# read and unread ones through two indexes, so an annotator's own lone reads are never walked past. 4: a withdrawn
# image (`withdrawn_at`) leaves every queue, index and count. 5: the audit_recheck queue.
VERSION = 5
OBSOLETE_INDEXES = ("q_audit",)  # dropped from a store made before (`LabelStore._upgrade`)

# name -> "images (columns) WHERE membership"; `live` adds the live-image term to each membership
_INDEXED = {
    "q_unlabeled": "images (rnd) WHERE split = 'train' AND label IS NULL",
    "q_low_confidence": "images (lc_key, rnd) WHERE split = 'train' AND label IS NULL",
    "q_disagreements": "images (dis_conf, id) WHERE dis_todo = 1",
    "q_labeled_train": "images (label_ts, rnd) WHERE split = 'train' AND label IS NOT NULL",
    "q_meta_conflicts": "images (mc_key, id) WHERE split = 'train' AND mc_key IS NOT NULL AND label IS NULL",
    "q_meta_known": "images (rnd) WHERE split = 'train' AND meta_mag IS NOT NULL AND label IS NULL",
    "q_needs_review": "images (rnd) WHERE split = 'train' AND nr_todo = 1",
    # the audit queue (`store._audit_queue`): images with one read in order, or by reader (ranges that leave out the
    # annotator's own lone reads when they fill the head), then unread images
    "q_audit_one": "images (rnd) WHERE split = 'audit' AND audit_state = 1",
    "q_audit_one_reader": "images (reader1, rnd) WHERE split = 'audit' AND audit_state = 1",
    "q_audit_none": "images (rnd) WHERE split = 'audit' AND audit_state = 0",
    "q_adjudication": "images (rnd) WHERE audit_state = 3",
    "q_audit_recheck": "images (rc_key, id) WHERE rc_key IS NOT NULL",
}
INDEXES = {name: live(spec) for name, spec in _INDEXED.items()}


@dataclass(frozen=True)
class Plan:
    """How to read one queue: a WHERE (matching a partial index), an ORDER BY, counters and a note."""

    membership: str  # which images the queue holds; `where` keeps them to the live ones, as its index does
    order: str
    pool: str  # counter name: size of the pool the queue draws from
    todo: str  # counter name: what is left
    note: str

    @property
    def where(self) -> str:
        return live(self.membership)


PLANS: dict[str, Plan] = {
    "unlabeled": Plan("split = 'train' AND label IS NULL", "rnd", "train", "train_unlabeled", "random order (seeded)"),
    "low_confidence": Plan(
        "split = 'train' AND label IS NULL",
        "lc_key, rnd",
        "train_unlabeled",
        "train_unlabeled",
        "smallest margin |p - 0.5| first",
    ),
    "disagreements": Plan("dis_todo = 1", "dis_conf, id", "dis_pool", "dis_todo", "lowest self-confidence first"),
    "meta_conflicts": Plan(
        "split = 'train' AND mc_key IS NOT NULL AND label IS NULL",
        "mc_key, id",
        "mc_pool",
        "mc_todo",
        "model most sure first",
    ),
    # training images only: a key press on an audit image here would overwrite its adjudicated truth
    "needs_review": Plan(
        "split = 'train' AND nr_todo = 1", "rnd", "nr_pool", "nr_todo", "flagged by the model run, random order"
    ),
    # one read first (completes a pair), then unread; never an image this annotator already read
    "audit": Plan(
        "split = 'audit' AND audit_state IN (0, 1)",
        "audit_state DESC, rnd",
        "audit",
        "audit_todo",
        "blind double reads, random order",
    ),
    "adjudication": Plan("audit_state = 3", "rnd", "adj_pool", "adj_todo", "third read decides, random order"),
    # of the agreed audit labels, those the model contradicts; a read here decides (store.record, `recheck`)
    "audit_recheck": Plan(
        "rc_key IS NOT NULL", "rc_key, id", "rc_pool", "rc_todo", "lowest model probability of the label first; blind"
    ),
}

# Used when the model has not given what a queue needs yet (and said so on the card).
FALLBACKS: dict[str, tuple[str, Plan]] = {
    "low_confidence": (
        "predicted",
        Plan("split = 'train' AND label IS NULL", "rnd", "train_unlabeled", "train_unlabeled", ""),
    ),
    "disagreements": (
        "predicted_oos",
        Plan(
            "split = 'train' AND label IS NOT NULL",
            "label_ts, rnd",  # a label given here sends its image to the back, so the next key shows another
            "train_labeled",
            "train_labeled",
            "no out-of-sample predictions: all labeled images, the longest unchecked first",
        ),
    ),
    "meta_conflicts": (
        "predicted",
        Plan(
            "split = 'train' AND meta_mag IS NOT NULL AND label IS NULL",
            "rnd",
            "meta_known",
            "meta_known_todo",
            "no predictions: images with a metadata magnification flag, random order",
        ),
    ),
}
FALLBACK_NOTES = {"low_confidence": "no predictions: random order"}


def plan(name: str, totals: dict[str, int]) -> Plan:
    """The plan of queue `name` given the maintained totals (a fallback when predictions are missing)."""
    if name not in PLANS:
        raise KeyError(f"unknown queue {name!r}; choose one of {', '.join(QUEUES)}")
    if name in FALLBACKS and not totals.get(FALLBACKS[name][0], 0):
        fb = FALLBACKS[name][1]
        return replace(fb, note=fb.note or FALLBACK_NOTES[name])
    return PLANS[name]


@dataclass(frozen=True)
class Queue:
    name: str
    ids: list[int]  # the next image ids for this annotator, best first (at most the limit asked for)
    remaining: int  # images left in the queue (all annotators)
    total: int  # size of the pool the queue draws from
    note: str  # how the order was made


def ranks(seed: int, sop_instance_uids: list[str]) -> list[int]:
    """The seeded random rank of each image: a signed 63-bit hash of (seed, SOP Instance UID), fixed when the
    image is added. Vectorized (pandas' hash_array: SipHash-2-4 keyed by the seed), about 50 ns per image."""
    import numpy as np
    import pandas as pd

    key = hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()  # 16 characters, as hash_array needs
    values = np.asarray(sop_instance_uids, dtype=object)
    hashed = pd.util.hash_array(values, hash_key=key, categorize=False)
    return (hashed >> np.uint64(1)).astype(np.int64).tolist()


def rank(seed: int, sop_instance_uid: str) -> int:
    """The rank of one image (see ranks)."""
    return ranks(seed, [sop_instance_uid])[0]
