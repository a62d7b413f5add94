"""A simulated radiologist for the demo and the tests: the synthetic ground truth answers, through the
same label store API the labeling app uses, so the active-learning loop runs without a person.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mammo_pipeline.labels.store import LabelStore


def load_truth(landing: Path) -> pd.DataFrame:
    """Every `_truth/<hospital>.parquet` that `mammo synth` wrote, usable images only."""
    files = sorted((landing / "_truth").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{landing / '_truth'}: no ground truth; the simulated annotator needs `mammo synth`")
    truth = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return truth[truth["label"].notna()]


class SimulatedAnnotator:
    """Labels images with their true class, as a careful radiologist would."""

    def __init__(self, store: LabelStore, truth: pd.DataFrame, name: str = "simulated-radiologist") -> None:
        self.store = store
        self.name = name
        self.truth = dict(zip(truth["sop_instance_uid"], truth["label"], strict=True))

    def label(self, image_ids: list[int], round: int | None = None) -> int:
        """Label each image; return how many got a label (images without truth are skipped)."""
        sops = self.store.sop_uids(image_ids)
        done = 0
        for image_id in image_ids:
            label = self.truth.get(sops.get(image_id, ""))
            if label is not None:
                self.store.record(image_id, label, self.name, source="human", round=round)
                done += 1
        return done
