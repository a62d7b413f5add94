from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mammo_pipeline.model import registry
from mammo_pipeline.model.export import onnx_probs, parity, parity_images
from mammo_pipeline.model.preprocess import IMAGENET_MEAN, preprocess_batch
from mammo_pipeline.model.ref import ModelRef


def test_onnx_contract_and_metadata(trained):
    s, ref = trained.settings, trained.onnx
    model = onnx.load(str(ref.path(s.models, ref.onnx_file)))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_version"] == ref.model_version and props["label_snapshot_id"] == "snap-test"
    assert props["input_size"] == "64" and json.loads(props["mean"]) == list(IMAGENET_MEAN)
    assert json.loads(props["class_names"]) == ["has_biopsy_marker", "is_mag_view"]
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["probs"]


def test_onnx_dynamic_batch_and_probabilities(trained):
    s, ref = trained.settings, trained.onnx
    pngs = parity_images(s, ref, 3)
    path = ref.path(s.models, ref.onnx_file)
    three = onnx_probs(path, pngs, ref.input_size, batch_size=3)
    one = onnx_probs(path, pngs, ref.input_size, batch_size=1)
    assert three.shape == (3, 2) and ((three >= 0) & (three <= 1)).all()
    np.testing.assert_allclose(one, three, atol=1e-5)


def test_parity_with_pytorch(trained):
    s, ref = trained.settings, trained.onnx
    pngs = parity_images(s, ref)
    assert len(pngs) == 32
    assert parity(s, ref, pngs) <= 1e-4


def test_the_exported_network_gives_the_audit_probabilities_the_thresholds_were_chosen_on(trained):
    import pandas as pd

    s, ref = trained.settings, trained.onnx
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet"))
    probs = onnx_probs(ref.path(s.models, ref.onnx_file), [s.cache / p for p in audit["model_png"]], ref.input_size)
    np.testing.assert_allclose(probs[:, 1], audit["p_mag"], atol=1e-4)


def test_a_model_trained_on_another_preprocessing_version_is_not_exported(trained):
    from mammo_pipeline.model.export import export_onnx
    from mammo_pipeline.model.infer import ModelMismatch

    s, ref = trained.settings, trained.onnx
    old = ref.with_(extra={**ref.extra, "preprocessing": {**ref.extra["preprocessing"], "version": "3"}})
    with pytest.raises(ModelMismatch, match="preprocessing version 3"):
        export_onnx(s, old)


def test_hashes_recorded_in_ref_registry_and_current(trained):
    s, ref = trained.settings, trained.onnx
    assert ref.onnx_sha256 == hashlib.sha256(ref.path(s.models, ref.onnx_file).read_bytes()).hexdigest()
    assert ref.inference_sha256 == hashlib.sha256(ref.path(s.models, ref.inference_file).read_bytes()).hexdigest()
    row = registry.read_row(s, ref.model_version)
    assert row["onnx_sha256"] == ref.onnx_sha256 and row["inference_file"] == ref.inference_file
    # what each prediction row records (the inference file's hash), so predictions join their registry row on it
    assert row["inference_sha256"] == ref.inference_sha256
    assert row["second_look_sha256"] == ((ref.extra.get("second_look") or {}).get("onnx_sha256") or "")
    assert ModelRef.load(s.models) == ref


def test_int8_comparison_recorded_and_rule_applied(trained):
    s, ref = trained.settings, trained.onnx
    cmp = ref.extra["int8"]
    row = registry.read_row(s, ref.model_version)
    assert row["int8_accuracy"] == pytest.approx(cmp["int8_accuracy"])
    assert row["int8_bytes"] < row["onnx_bytes"]
    keep = cmp["int8_accuracy"] >= cmp["fp32_accuracy"] - 0.01
    assert ref.inference_file == ("model.int8.onnx" if keep else "model.onnx")
    int8 = onnx.load(str(ref.path(s.models, "model.int8.onnx")))
    assert {p.key: p.value for p in int8.metadata_props}["model_version"] == ref.model_version


def test_parity_needs_an_onnx_file(trained):
    with pytest.raises(ValueError, match="no ONNX file"):
        parity(trained.settings, trained.result.ref, parity_images(trained.settings, trained.onnx))


def test_onnx_input_is_preprocess_output(trained):
    """Inference feeds preprocess_batch output straight in: same shape as the exported example."""
    s, ref = trained.settings, trained.onnx
    x = preprocess_batch(parity_images(s, ref, 2), ref.input_size)
    model = onnx.load(str(ref.path(s.models, ref.onnx_file)))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == list(x.shape[1:])


def test_an_export_keeps_its_temporary_folders_in_the_models_folder_and_clears_a_killed_ones(
    trained, tmp_path, monkeypatch
):
    """onnxruntime's quantizer makes temporary folders twice the model's size; a killed export used to leave them in
    the system temp folder, where no later run looked. They now live in the model's folder, named for their run."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from mammo_pipeline.atomic import run_owner
    from mammo_pipeline.model.export import export_onnx

    s = dataclasses.replace(trained.settings, models=tmp_path / "models", warehouse=tmp_path / "warehouse")
    shutil.copytree(trained.settings.models, s.models)
    shutil.copytree(trained.settings.warehouse, s.warehouse)
    folder = trained.onnx.path(s.models, "model.onnx").parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = folder / f".quantize.{run_owner().split('~')[0]}~{dead.stdout.strip()}~ab12.tmp"  # a killed export's
    (killed / "ort.quant.x").mkdir(parents=True)
    (killed / "ort.quant.x" / "augmented.onnx").write_bytes(b"half")
    made: list[str] = []
    before = tempfile.tempdir
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1])

    export_onnx(s, trained.onnx)

    assert made and all(Path(m).resolve().is_relative_to(folder.resolve()) for m in made)  # fails before: /tmp
    assert not killed.exists() and not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert tempfile.tempdir == before  # the process-wide default is restored
