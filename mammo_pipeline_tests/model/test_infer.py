"""Batched ONNX inference: parity with a direct onnxruntime run, lineage columns, missing PNGs, memory bounds.

The builders at the top (a tiny ONNX model, a cache manifest, a dicom_index) are shared by the other
prediction tests, which import them from here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from PIL import Image

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.model.export import export_module
from mammo_pipeline.model.infer import COLUMNS, ModelMismatch, load_model, predict_images, write_predictions
from mammo_pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings

SIZE = 32  # network input side for the tiny test model


class _TinyNet(torch.nn.Module):
    """Two convolutions, a global average and a sigmoid: enough to give each image its own probabilities."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.conv2 = torch.nn.Conv2d(4, 2, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        return torch.sigmoid(4 * self.conv2(x).mean(dim=(2, 3)))


def make_model(settings: Settings, version: str = "m1", seed: int = 0, snapshot: str = "snap1") -> ModelRef:
    """Export a tiny ONNX model to models/<version>/model.onnx, write current.json and its registry row."""
    folder = settings.models / version
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    bare = ModelRef(version, snapshot, version, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    export_module(_TinyNet(seed), path, bare)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ref = ModelRef(
        model_version=version,
        label_snapshot_id=snapshot,
        folder=version,
        input_size=SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        onnx_file="model.onnx",
        onnx_sha256=sha,
        inference_file="model.onnx",
        inference_sha256=sha,
    )
    ref.save(settings.models)
    registry = {
        "model_version": version,
        "created_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=seed),
        "label_snapshot_id": snapshot,
        "n_train": 100 + seed,
        "n_audit": 20,
        "accuracy": 0.9,
        "biopsy_f1": 0.8,
        "mag_f1": 0.85,
        "onnx_sha256": sha,
        "inference_file": "model.onnx",
    }
    write_parquet(pd.DataFrame([registry]), settings.warehouse / "model_registry" / f"{version}.parquet")
    return ref


def make_cache(settings: Settings, hospital: str, studies: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Write small model PNGs (studies: uid -> number of images) and the hospital's image_cache manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for study, n in studies.items():
        for i in range(n):
            sop = f"{study}.{i}"
            rel = Path(hospital) / "n1" / "256" / f"{sop}.png"
            (settings.cache / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(40, 30), dtype=np.uint8)  # portrait, like the cache
            Image.fromarray(pixels).save(settings.cache / rel)
            rows.append(
                {
                    "hospital": hospital,
                    "sop_instance_uid": sop,
                    "study_instance_uid": study,
                    "patient_key": f"pk-{study}",
                    "drop": "drop1",
                    "rel_path": f"drop1/{sop}.dcm",
                    "meta_mag": None,
                    "model_png": str(rel),
                    "norm_version": "n1",
                }
            )
    manifest = pd.DataFrame(rows)
    write_parquet(manifest, settings.table_dir("image_cache", hospital) / "manifest.parquet")
    return manifest


def make_dicom_index(settings: Settings, hospital: str, meta_mag: dict[str, bool | None]) -> pd.DataFrame:
    """A dicom_index partition with just the columns the summary and lineage read."""
    df = pd.DataFrame(
        {
            "hospital": hospital,
            "drop": "drop1",
            "sop_instance_uid": list(meta_mag),
            "study_instance_uid": [sop.rsplit(".", 1)[0] for sop in meta_mag],
            "meta_mag": pd.array(list(meta_mag.values()), dtype="boolean"),
        }
    )
    write_parquet(df, settings.table_dir("dicom_index", hospital) / "part.parquet")
    return df


def test_predict_images_matches_direct_onnxruntime_run(settings):
    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {"s1": 3, "s2": 4})
    model = load_model(settings, ref)
    frames = list(predict_images(settings, manifest, model, batch_size=3))
    assert [len(f) for f in frames] == [3, 3, 1]
    got = pd.concat(frames, ignore_index=True)

    inputs = np.stack([preprocess(settings.cache / p, SIZE) for p in manifest["model_png"]])
    direct = ort.InferenceSession(str(settings.models / "m1" / "model.onnx")).run(["probs"], {"image": inputs})[0]
    np.testing.assert_allclose(got[["p_biopsy", "p_mag"]].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    assert got["sop_instance_uid"].tolist() == manifest["sop_instance_uid"].tolist()
    assert got["has_biopsy_marker"].tolist() == (direct[:, 0] >= 0.5).tolist()
    assert got["is_mag_view"].tolist() == (direct[:, 1] >= 0.5).tolist()
    assert got["predicted_class"].tolist() == [label_of(b, m) for b, m in direct >= 0.5]
    assert got["p_biopsy"].nunique() == len(got), "the test model should tell the images apart"


def test_write_predictions_lineage_columns_match_registry(settings):
    ref = make_model(settings, "m7", seed=7, snapshot="snap7")
    manifest = make_cache(settings, "h1", {"s1": 2})
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    stats = write_predictions(settings, manifest, load_model(settings, ref), path, run_id="run-abc")
    out = pd.read_parquet(path)
    registry = pd.read_parquet(settings.warehouse / "model_registry" / "m7.parquet").iloc[0]
    assert list(out.columns) == list(COLUMNS)
    assert stats.n_images == 2 and stats.n_missing == 0
    assert set(out["model_version"]) == {registry["model_version"]}
    assert set(out["onnx_sha256"]) == {registry["onnx_sha256"]}
    assert set(out["label_snapshot_id"]) == {registry["label_snapshot_id"]}
    assert set(out["dagster_run_id"]) == {"run-abc"}
    assert out["predicted_at"].notna().all()


def test_write_predictions_skips_and_counts_missing_pngs(settings):
    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {"s1": 3})
    (settings.cache / manifest["model_png"].iloc[1]).unlink()
    manifest.loc[2, "model_png"] = None  # the cache could not render it
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    stats = write_predictions(settings, manifest, ref, path, batch_size=2)  # a ModelRef is loaded for us
    assert (stats.n_images, stats.n_missing) == (1, 2)
    assert pd.read_parquet(path)["sop_instance_uid"].tolist() == ["s1.0"]


def test_write_predictions_clears_a_killed_runs_half_written_slice(settings):
    """A prediction run killed while streaming its slice left `.predictions.parquet.<owner>.tmp` for good (before
    stop 54); the next write of that slice removes it when its owner is dead, and leaves a live run's."""
    from mammo_pipeline.atomic import run_owner
    from mammo_pipeline_tests.test_cache import dead_owner

    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {"s1": 2})
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    killed, alive = (path.parent / f".{path.name}.{owner}1234.tmp" for owner in (dead_owner(), run_owner()))
    for tmp in (killed, alive):
        tmp.write_bytes(b"PAR1 half")
    write_predictions(settings, manifest, ref, path)
    assert not killed.exists() and alive.exists() and len(pd.read_parquet(path)) == 2


def test_load_model_refuses_a_file_that_is_not_current_json(settings):
    tampered = make_model(settings).with_(inference_sha256="0" * 64)  # the file changed after export
    with pytest.raises(ModelMismatch, match="model m1 recorded when it was exported"):
        load_model(settings, tampered)


def test_predict_images_keeps_only_a_few_batches_in_flight(settings, monkeypatch):
    import mammo_pipeline.model.infer as infer

    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {f"s{i}": 2 for i in range(10)})
    loaded, real = [], infer._load_batch
    monkeypatch.setattr(infer, "_load_batch", lambda paths, *a: (loaded.append(len(paths)), real(paths, *a))[1])
    gen = predict_images(settings, manifest, load_model(settings, ref), batch_size=2)
    next(gen)
    assert len(loaded) <= 1 + max(2, settings.n_threads), "preprocessing ran ahead of inference unbounded"
    assert sum(len(f) for f in gen) == 18


def test_write_predictions_empty_manifest_writes_an_empty_table(settings):
    ref = make_model(settings)
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    stats = write_predictions(settings, pd.DataFrame(), load_model(settings, ref), path)
    assert stats.n_images == 0
    assert list(pd.read_parquet(path).columns) == list(COLUMNS)


def test_predict_images_rejects_a_manifest_without_model_png(settings):
    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {"s1": 1}).drop(columns=["model_png"])
    with pytest.raises(ValueError, match=r"lacks columns \['model_png'\]"):
        next(predict_images(settings, manifest, load_model(settings, ref)))


def test_predictions_record_the_sha_of_the_file_actually_used(settings):
    ref = make_model(settings)
    proto = onnx.load(str(ref.path(settings.models, "model.onnx")))
    proto.metadata_props.add(key="variant", value="int8 stand-in")
    onnx.save(proto, str(ref.path(settings.models, "model.int8.onnx")))
    sha = hashlib.sha256(ref.path(settings.models, "model.int8.onnx").read_bytes()).hexdigest()
    int8 = ref.with_(inference_file="model.int8.onnx", inference_sha256=sha)
    frame = next(predict_images(settings, make_cache(settings, "h1", {"s1": 1}), load_model(settings, int8)))
    assert sha != ref.onnx_sha256
    assert frame["onnx_sha256"].tolist() == [sha]


def test_load_model_refuses_a_model_made_for_other_preprocessing(settings, monkeypatch):
    from mammo_pipeline.model import infer

    ref = make_model(settings)
    monkeypatch.setattr(infer, "PREPROCESS_VERSION", "999")
    with pytest.raises(infer.ModelMismatch, match="preprocessing version"):
        infer.load_model(settings, ref)


def test_predictions_use_the_models_thresholds_and_mark_the_review_band(settings):
    ref = make_model(settings, "m9", seed=3)
    manifest = make_cache(settings, "h1", {"s1": 4, "s2": 4})
    plain = pd.concat(predict_images(settings, manifest, load_model(settings, ref)), ignore_index=True)
    pb, pm = plain["p_biopsy"].to_numpy(), plain["p_mag"].to_numpy()
    # thresholds inside the spread of this model's probabilities, so both decisions and the band matter
    tb, tm = float(np.median(pb)), float(np.median(pm))
    points = {
        "biopsy": {"threshold": tb, "review_low": float(np.quantile(pb, 0.25)), "review_high": tb},
        "mag": {"threshold": tm, "review_low": tm, "review_high": float(np.quantile(pm, 0.75))},
    }
    ref = ref.with_(extra={**ref.extra, "operating_points": points})
    ref.save(settings.models)
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    write_predictions(settings, manifest, load_model(settings, ref), path)
    out = pd.read_parquet(path)
    assert list(out.columns) == list(COLUMNS) and out["needs_review"].dtype == bool
    assert out["has_biopsy_marker"].tolist() == (pb >= tb).tolist()
    assert out["is_mag_view"].tolist() == (pm >= tm).tolist()
    band = ((pb >= points["biopsy"]["review_low"]) & (pb < tb)) | ((pm >= tm) & (pm < points["mag"]["review_high"]))
    assert out["needs_review"].tolist() == band.tolist() and 0 < band.sum() < len(out)
    assert not plain["needs_review"].any()  # a model without operating points: 0.5, no review band


def test_flags_and_the_review_band_compare_in_float64_as_the_audit_does():
    """A bound one float64 step above an audit score (nextafter: a review band's high edge over a saturated
    negative, a balanced threshold just above the gap's lower end) rounds to that score in float32: an image at
    p = 1.0 fell out of review while its study needed it, and one at float32 0.62 was flagged where the audit
    decides 'no'. The network's probabilities are float32."""
    from mammo_pipeline.model.infer import KEYS, LoadedModel, _frame

    low = float(np.float32(0.62))
    points = {
        "biopsy": {"threshold": 0.9, "review_low": 0.5, "review_high": float(np.nextafter(1.0, 2.0))},
        "mag": {"threshold": float(np.nextafter(low, 1.0)), "review_low": 0.7, "review_high": 0.7},
    }
    model = LoadedModel(None, Path("m.onnx"), "sha", "v1", "snap", 64, points)
    part = pd.DataFrame({key: ["x"] for key in KEYS})
    out = _frame(part, np.array([[1.0, low]], dtype=np.float32), model)
    assert out["needs_review"].tolist() == [True] and out["is_mag_view"].tolist() == [False]
    assert out["has_biopsy_marker"].tolist() == [True]


def test_a_png_that_cannot_be_read_is_listed_and_the_others_are_predicted(settings):
    """One unreadable PNG (cut short on disk) used to raise out of the batch and fail the hospital's predictions."""
    ref = make_model(settings)
    manifest = make_cache(settings, "h1", {"s1": 3})
    broken = settings.cache / manifest["model_png"].iloc[1]
    broken.write_bytes(broken.read_bytes()[:40])
    path = settings.table_dir("image_predictions", "h1") / "predictions.parquet"
    stats = write_predictions(settings, manifest, ref, path, batch_size=2)
    assert (stats.n_images, stats.n_missing, stats.unreadable) == (2, 0, ["s1.1"])
    assert sorted(pd.read_parquet(path)["sop_instance_uid"]) == ["s1.0", "s1.2"]
