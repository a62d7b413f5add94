"""A simulated radiologist for the demo and the tests: the synthetic ground truth answers, through the
same label store API the labeling app uses, so the active-learning loop runs without a person.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pandas as pd

from mammo_pipeline.labels.codes import LABELS
from mammo_pipeline.labels.store import LabelStore


def load_truth(landing: Path) -> pd.DataFrame:
    """Every `_truth/<hospital>.parquet` that `mammo synth` wrote, usable images only."""
    files = sorted((landing / "_truth").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{landing / '_truth'}: no ground truth; the simulated annotator needs `mammo synth`")
    truth = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return truth[truth["label"].notna()]


class SimulatedAnnotator:
    """Labels images with their true class, slipping now and then on a first read as a busy reader would.

    A first label is wrong with probability `error_rate` (deterministic per reader and image), which gives the
    disagreement queue real mistakes to surface; a careful read (`careful=True`: the audit set, a review
    of a disagreement) is always right.
    """

    def __init__(
        self, store: LabelStore, truth: pd.DataFrame, name: str = "simulated-radiologist", error_rate: float = 0.0
    ) -> None:
        self.store = store
        self.name = name
        self.error_rate = error_rate
        self.truth = dict(zip(truth["sop_instance_uid"], truth["label"], strict=True))
        self.slips = 0

    def _read(self, sop: str, careful: bool) -> str:
        label = self.truth[sop]
        if careful or self.error_rate <= 0:
            return label
        # per reader and image: two readers slip on different images, each always on the same ones
        rng = random.Random(hashlib.sha256(f"{self.name}\x1f{sop}".encode()).digest())
        if rng.random() >= self.error_rate:
            return label
        self.slips += 1
        return rng.choice([other for other in LABELS.values() if other != label])

    def label(
        self, image_ids: list[int], round: int | None = None, careful: bool = False, recheck: bool = False
    ) -> int:
        """Label each image; return how many got a label (images without truth are skipped). `recheck`: the
        reads come from the audit_recheck queue (store.record)."""
        sops = self.store.sop_uids(image_ids)
        done = 0
        for image_id in image_ids:
            sop = sops.get(image_id, "")
            if sop in self.truth:
                read = self._read(sop, careful)
                self.store.record(image_id, read, self.name, source="human", round=round, recheck=recheck)
                done += 1
        return done

    def wrong_labels(self) -> int:
        """Current labels that disagree with the truth (what the disagreement queue should find)."""
        current = self.store.current_labels()
        truth = current["sop_instance_uid"].map(self.truth)
        return int((truth.notna() & (truth != current["label"])).sum())


def double_read_audit(
    store: LabelStore, readers: tuple[SimulatedAnnotator, SimulatedAnnotator], adjudicator: SimulatedAnnotator
) -> dict[str, int]:
    """The audit protocol: both readers read every audit image blind (at their slip rates), then the adjudicator
    reads, carefully, each image they disagree on; that third read becomes the audit truth.

    Returns how many reads each step made: {reader name: n, ..., "adjudicated": n}.
    """
    done = {}
    for reader in readers:
        done[reader.name] = reader.label(store.queue("audit", reader.name, limit=10_000_000), round=0)
    disputed = store.queue("adjudication", adjudicator.name, limit=10_000_000)
    done["adjudicated"] = adjudicator.label(disputed, round=0, careful=True)
    return done


def recheck_audit(store: LabelStore, adjudicator: SimulatedAnnotator, limit: int, round: int | None = None) -> int:
    """The adjudicator re-reads, carefully and blind, up to `limit` agreed audit labels the latest model
    contradicts (the audit_recheck queue, lowest model probability of the label first); each read becomes that
    image's audit truth. Returns how many it read."""
    return adjudicator.label(
        store.queue("audit_recheck", adjudicator.name, limit=limit), round=round, careful=True, recheck=True
    )
