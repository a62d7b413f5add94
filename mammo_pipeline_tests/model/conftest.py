"""A tiny model trained once per test session on synthetic PNGs (64 px, from scratch, one thread)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from mammo_pipeline.model.export import export_onnx
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.train import TrainConfig, TrainResult, train_model
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.toy_labels import make_labels

# Small, fast and still able to learn the synthetic markers (48 images, about 20 s on one busy core).
TINY = TrainConfig(size=64, epochs=6, lr=3e-3, batch_size=8, pretrained="none", threads=1, oof_folds=2)
# Even smaller, for tests that only need "a model" (determinism, edge cases).
MINI = TrainConfig(size=32, epochs=1, lr=3e-3, batch_size=8, pretrained="none", threads=1, oof_folds=2)


@dataclass
class Trained:
    settings: Settings
    labels: pd.DataFrame
    result: TrainResult
    onnx: ModelRef


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """One trained + exported model in its own MAMMO_HOME, shared (read-only) by the model tests."""
    settings = Settings.under(
        tmp_path_factory.mktemp("trained") / "home", pretrained="none", salt="s", inference_threads=1
    ).ensure_dirs()
    labels = make_labels(settings, n=48, seed=0)
    result = train_model(settings, labels, TINY)
    return Trained(settings, labels, result, export_onnx(settings, result.ref))
