from __future__ import annotations

import dagster as dg
import torch

from mammo_pipeline.defs.model import TrainingConfig, onnx_matches_pytorch, onnx_model, trained_model
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.model import registry
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.synth.toy_labels import make_labels


def test_trained_and_onnx_model_materialize_with_blocking_check(settings):
    make_labels(settings, n=16)  # writes warehouse/labels/current.parquet + the PNGs
    config = {"size": 32, "epochs": 1, "batch_size": 8, "threads": 1, "oof_folds": 2, "seed": 7}
    result = dg.materialize(
        [trained_model, onnx_model, onnx_matches_pytorch],
        resources={"mammo": MammoSettings(home=str(settings.home))},
        run_config=dg.RunConfig(ops={"trained_model": TrainingConfig(**config)}),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    ref = ModelRef.load(settings.models)
    trained = result.asset_materializations_for_node("trained_model")[0]
    assert trained.metadata["model_version"].value == ref.model_version
    assert trained.tags["dagster/data_version"] == ref.model_version
    assert trained.metadata["hyperparameters"].value["seed"] == 7
    assert "data:image/png;base64," in trained.metadata["confusion_png"].value
    assert "| biopsy |" in trained.metadata["flags"].value
    onnx = result.asset_materializations_for_node("onnx_model")[0]
    assert onnx.tags["dagster/data_version"] == ref.model_version
    assert (
        onnx.metadata["sha256"].value
        == ref.onnx_sha256
        == registry.read_row(settings, ref.model_version)["onnx_sha256"]
    )
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["max_abs_diff"].value <= 1e-4

    # PyTorch weights that no longer match the ONNX file fail the blocking check
    pth = ref.path(settings.models, "model.pth")
    state = torch.load(pth, weights_only=True)
    state["1.8.weight"] = state["1.8.weight"] + 0.5  # the head's last Linear
    torch.save(state, pth)
    failed = onnx_matches_pytorch(
        dg.build_asset_check_context(resources={"mammo": MammoSettings(home=str(settings.home))})
    )
    assert not failed.passed and failed.metadata["max_abs_diff"].value > 1e-4
