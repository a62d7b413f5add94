"""The second look inside a model version: trained with the global network, exported, checked and used by
inference for p_biopsy; refused when made for other crops; its heat map peaks on the object that decided."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image

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


def test_a_breast_stored_mirrored_gets_the_same_probabilities_and_mirrored_candidates(trained, tmp_path):
    """Some vendors store one side mirrored. Inference (both networks, the ONNX files) gives an image and its
    left-right mirror the same p_biopsy and p_mag, and the candidates' centres of the mirror are the mirror of the
    stored image's, in stored pixels (the real images' clip went 0.282 -> 0.098 when mirrored, stop 57)."""
    s = dataclasses.replace(trained.settings, cache=tmp_path / "cache")
    manifest = _manifest(trained.labels[trained.labels["has_biopsy_marker"]].head(6)).reset_index(drop=True)
    mirrored = manifest.copy()
    for i, row in manifest.iterrows():
        for column in ("model_png", "display_png"):
            gray = np.asarray(Image.open(trained.settings.cache / row[column]).convert("L"))
            for name, pixels in ((row[column], gray), (f"mirrored/{row[column]}", gray[:, ::-1])):
                (s.cache / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(pixels)).save(s.cache / name)
            mirrored.loc[i, column] = f"mirrored/{row[column]}"
    mirrored["sop_instance_uid"] += ".m"
    stored = pd.concat(predict_images(s, manifest, trained.onnx)).reset_index(drop=True)
    flipped = pd.concat(predict_images(s, mirrored, trained.onnx)).reset_index(drop=True)
    np.testing.assert_allclose(flipped["p_biopsy"], stored["p_biopsy"], atol=1e-6)
    np.testing.assert_allclose(flipped["p_mag"], stored["p_mag"], atol=1e-6)
    found = second_look.candidates_of([s.cache / p for p in manifest["display_png"]])
    m_found = second_look.candidates_of([s.cache / p for p in mirrored["display_png"]])
    np.testing.assert_array_equal(m_found.crops, found.crops)
    kept = found.centres[..., 0] >= 0
    width = found.shapes[:, 1][:, None].repeat(found.centres.shape[1], axis=1)
    np.testing.assert_array_equal(m_found.centres[..., 0], found.centres[..., 0])
    np.testing.assert_array_equal(m_found.centres[..., 1][kept], (width - 1 - found.centres[..., 1])[kept])


def test_the_heat_map_of_a_mirrored_image_peaks_on_its_clip_in_stored_pixels(trained):
    """The candidates are cut with the chest wall at column 0; the map drawn from them is in the stored image's
    pixels: on the mirrored clip, and with a trained second look exactly the mirror of the stored image's map."""
    rng = np.random.default_rng(1)
    display = np.clip(rng.normal(110, 12, (400, 320)), 0, 255).astype(np.uint8)
    display[:, :30] = 0  # air beside the breast
    clip = (230, 181)
    display[clip[0] - 4 : clip[0] + 5, clip[1] - 2 : clip[1] + 3] = 255  # a 9 x 5 px ribbon
    found = second_look.candidates_of([display, np.ascontiguousarray(display[:, ::-1])])
    hit = int(np.argmin(np.abs(found.centres[0] - np.array(clip)).sum(axis=1)))
    patch = np.full(cand.K, 0.1, dtype=np.float32)
    patch[hit] = 0.9  # the crop on the clip decided
    m_heat = second_look.heat_map(found.centres[1], patch, display.shape, (100, 80))  # the model PNG's grid (1/4)
    peak = np.unravel_index(int(np.argmax(m_heat)), m_heat.shape)
    assert abs(peak[0] - clip[0] / 4) <= 2 and abs(peak[1] - (319 - clip[1]) / 4) <= 2, peak
    probs, patch = second_look.torch_probs(load_second_look(trained.settings, trained.result.ref), found)
    assert abs(probs[1] - probs[0]) <= 1e-6
    heat, m_heat = (second_look.heat_map(found.centres[i], patch[i], display.shape, (100, 80)) for i in (0, 1))
    np.testing.assert_allclose(m_heat, heat[:, ::-1], atol=1e-6)
