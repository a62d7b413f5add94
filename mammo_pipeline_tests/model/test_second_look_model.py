"""The second look inside a model version: trained with the global network, exported, checked and used by
inference for p_biopsy; refused when made for other crops; its heat map peaks on the object that decided."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import onnx
import pandas as pd
import pytest

from mammo_pipeline.model import candidates as cand
from mammo_pipeline.model import registry
from mammo_pipeline.model import second_look_model as second_look
from mammo_pipeline.model.export import second_look_parity, session
from mammo_pipeline.model.infer import ModelMismatch, load_model, predict_images
from mammo_pipeline.model.train import load_second_look, train_model
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.toy_labels import make_labels
from mammo_pipeline_tests.model.conftest import MINI


def _manifest(labels: pd.DataFrame) -> pd.DataFrame:
    return labels[["sop_instance_uid", "study_instance_uid", "patient_key", "hospital", "model_png", "display_png"]]


def test_the_model_records_exports_and_checks_its_second_look(trained):
    s, ref = trained.settings, trained.onnx
    info = ref.extra["second_look"]
    assert info["version"] == second_look.version() and info["display_size"] == s.display_size
    path = ref.path(s.models, info["onnx_file"])
    assert info["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["crops"]
    assert [o.name for o in model.graph.output] == ["probs", "patch_probs"]
    assert {p.key: p.value for p in model.metadata_props}["model_version"] == ref.model_version
    assert second_look_parity(s, ref) <= 1e-4
    row = registry.read_row(s, ref.model_version)
    assert row["biopsy_source"] == "second_look"
    assert trained.result.metrics["biopsy_source"] == "second_look"


def test_audit_biopsy_probabilities_are_the_second_looks(trained):
    s, ref = trained.settings, trained.result.ref
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet"))
    found = second_look.candidates_of([s.cache / p for p in audit["display_png"]])
    expected, _ = second_look.torch_probs(load_second_look(s, ref), found)
    np.testing.assert_allclose(audit["p_biopsy"].to_numpy(), expected, atol=1e-6)


def test_inference_takes_p_biopsy_from_the_second_look_and_p_mag_from_the_global_network(trained):
    s, ref = trained.settings, trained.onnx
    manifest = _manifest(trained.labels)
    rows = pd.concat(predict_images(s, manifest, ref)).set_index("sop_instance_uid").loc[manifest["sop_instance_uid"]]
    found = second_look.candidates_of([s.cache / p for p in manifest["display_png"]])
    look, _ = second_look.onnx_probs(session(ref.path(s.models, ref.extra["second_look"]["onnx_file"])), found)
    np.testing.assert_allclose(rows["p_biopsy"].to_numpy(), look, atol=1e-5)
    without = dataclasses.replace(ref, extra={k: v for k, v in ref.extra.items() if k != "second_look"})
    plain = pd.concat(predict_images(s, manifest, without)).set_index("sop_instance_uid").loc[rows.index]
    np.testing.assert_allclose(rows["p_mag"].to_numpy(), plain["p_mag"].to_numpy(), atol=1e-6)
    assert not np.allclose(rows["p_biopsy"].to_numpy(), plain["p_biopsy"].to_numpy(), atol=1e-3)


def test_inference_needs_display_pngs_for_a_second_look(trained):
    manifest = _manifest(trained.labels).drop(columns=["display_png"])
    with pytest.raises(ValueError, match="display_png"):
        next(predict_images(trained.settings, manifest, trained.onnx))


def test_a_second_look_made_for_other_crops_is_refused(trained, monkeypatch):
    s, ref = trained.settings, trained.onnx
    monkeypatch.setattr(cand, "SECOND_LOOK_VERSION", "other")
    with pytest.raises(ModelMismatch, match="retrain"):
        load_model(s, ref)
    monkeypatch.undo()
    # another input made from the same kept crops (a model of stop 29 read two channels) is refused too
    monkeypatch.setattr(second_look, "INPUT_VERSION", "1")
    with pytest.raises(ModelMismatch, match=r"version \d+\.\d+ \(crops\.input\); retrain"):
        load_model(s, ref)
    monkeypatch.undo()
    with pytest.raises(ModelMismatch, match="MAMMO_DISPLAY_SIZE"):
        load_model(dataclasses.replace(s, display_size=s.display_size * 2), ref)


def test_a_tampered_second_look_file_is_refused(trained, tmp_path):
    s, ref = trained.settings, trained.onnx
    info = {**ref.extra["second_look"], "onnx_sha256": "0" * 64}
    with pytest.raises(ModelMismatch, match="sha256"):
        load_model(s, dataclasses.replace(ref, extra={**ref.extra, "second_look": info}))


def test_without_display_pngs_the_global_network_answers_biopsy(tmp_path):
    settings = Settings.under(tmp_path / "home", pretrained="none", salt="s", inference_threads=1).ensure_dirs()
    result = train_model(settings, make_labels(settings, n=16, display_scale=0), MINI)
    assert result.metrics["biopsy_source"] == "global_network" and "second_look" not in result.ref.extra
    assert any("display_png" in note for note in result.warnings)


def test_heat_map_peaks_on_the_candidate_that_decided(tmp_path):
    rng = np.random.default_rng(1)
    display = np.clip(rng.normal(110, 12, (400, 320)), 0, 255).astype(np.uint8)
    display[:, :30] = 0  # air beside the breast
    clip = (230, 181)
    display[clip[0] - 4 : clip[0] + 5, clip[1] - 2 : clip[1] + 3] = 255  # a 9 x 5 px ribbon
    found = second_look.candidates_of([display])
    centres = found.centres[0]
    hit = int(np.argmin(np.abs(centres - np.array(clip)).sum(axis=1)))
    assert np.abs(centres[hit] - np.array(clip)).max() <= 3, "the clip is not among the candidates"
    patch = np.full(len(centres), 0.1, dtype=np.float32)
    patch[hit] = 0.9
    heat = second_look.heat_map(centres, patch, display.shape, (100, 80))  # the model PNG's grid (1/4)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert abs(peak[0] - clip[0] / 4) <= 2 and abs(peak[1] - clip[1] / 4) <= 2
    assert heat.max() == pytest.approx(1.0)


def test_exporting_leaves_the_second_look_in_eval_mode(trained, tmp_path):
    """torch.onnx.export puts the module it was given back into that module's mode; a fresh wrapper is in
    training mode, and restoring it once left the exported network training (BatchNorm on batch statistics), so
    its own later predictions differed from the ONNX file's."""
    s, ref = trained.settings, trained.result.ref
    net = load_second_look(s, ref)
    audit = pd.read_parquet(ref.path(s.models, "audit_predictions.parquet"))
    found = second_look.candidates_of([s.cache / p for p in audit["display_png"]])
    second_look.export(net, tmp_path / "look.onnx", found.crops, {})
    assert not net.training and not any(m.training for m in net.modules())
    after, _ = second_look.torch_probs(net, found)
    np.testing.assert_allclose(second_look.onnx_probs(session(tmp_path / "look.onnx"), found)[0], after, atol=1e-5)
