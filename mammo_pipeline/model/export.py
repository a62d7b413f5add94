"""The trained network as ONNX (sigmoid included), an int8 variant, and the ONNX-vs-PyTorch parity figure.

`model.onnx` takes `image` float32 [N, 3, S, S] (dynamic N, preprocess.preprocess output) and returns
`probs` [N, 2] = [p_biopsy, p_mag]; its metadata_props carry what inference needs to reproduce the input.
`model.int8.onnx` (static quantization, QDQ, calibrated on cached train images) becomes the inference
default only when its audit accuracy is within 1 point of fp32; the comparison is recorded either way.
A model with a second look (model/second_look_model.py) also gets `second_look.onnx` (fp32), whose p_biopsy
replaces the global network's in every audit figure here, and whose parity is checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_pipeline.atomic import atomic_path, remove_stale_temps, scratch_dir, write_text
from mammo_pipeline.model import registry
from mammo_pipeline.model import second_look_model as second_look
from mammo_pipeline.model.evaluate import evaluate
from mammo_pipeline.model.preprocess import PREPROCESS_VERSION, describe, preprocess_batch
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_TOLERANCE = 0.01  # int8 is kept when its audit accuracy is at most 1 point below fp32
CALIBRATION_IMAGES = 64
PARITY_IMAGES = 32


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata(ref: ModelRef) -> dict[str, str]:
    return {
        "model_version": ref.model_version,
        "label_snapshot_id": ref.label_snapshot_id,
        "input_size": str(ref.input_size),
        "mean": json.dumps(list(ref.mean)),
        "std": json.dumps(list(ref.std)),
        "class_names": json.dumps(list(ref.class_names)),
        "preprocess_version": PREPROCESS_VERSION,
        "preprocessing": json.dumps(describe()),
        "operating_points": json.dumps(ref.extra.get("operating_points") or {}),
    }


def _write_onnx(model, path: Path, ref: ModelRef) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, _metadata(ref))
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_probs(path: Path, pngs: list[Path], size: int, threads: int = 0, batch_size: int = 32) -> np.ndarray:
    sess = session(path, threads)
    out = [
        sess.run(["probs"], {"image": preprocess_batch(pngs[i : i + batch_size], size)})[0]
        for i in range(0, len(pngs), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def torch_probs(settings: Settings, ref: ModelRef, pngs: list[Path]) -> np.ndarray:
    import torch

    from mammo_pipeline.model.train import flip_reading, load_network

    net = flip_reading(load_network(settings, ref)).eval()
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(preprocess_batch(pngs, ref.input_size)))).numpy()


def export_module(module, path: Path, ref: ModelRef) -> Path:
    """Export a network that ends in a sigmoid to ONNX with the contract's names: input `image`
    [N, 3, S, S] (dynamic batch), output `probs` [N, 2], and `metadata_props` from `ref`."""
    import onnx
    import torch

    example = torch.zeros(2, 3, ref.input_size, ref.input_size)
    with scratch_dir(path.parent, "export") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: fast, no extra dependency
        raw = tmp / "raw.onnx"
        torch.onnx.export(
            module.eval(),
            (example,),
            str(raw),
            input_names=["image"],
            output_names=["probs"],
            dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        _write_onnx(onnx.load(str(raw)), path, ref)
    return path


def _export_fp32(settings: Settings, ref: ModelRef, path: Path) -> None:
    import torch

    from mammo_pipeline.model.train import flip_reading, load_network

    export_module(torch.nn.Sequential(flip_reading(load_network(settings, ref)), torch.nn.Sigmoid()), path, ref)


@contextmanager
def _quiet_root_logger():
    """Root logger at ERROR inside the block (onnxruntime's quantizer warns through the root logger)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_int8(fp32: Path, out: Path, calibration: list[Path], ref: ModelRef) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": preprocess_batch([p], ref.input_size)} for p in calibration])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    # onnxruntime's quantizer makes temporary folders of its own (ort.quant.*, ~2x the model): kept in the model's
    # folder so that a killed export leaves nothing in the system temp folder that nobody removes
    with scratch_dir(out.parent, "quantize", system_temp=True) as tmp:
        raw, prepared = tmp / "int8.onnx", tmp / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shape inference + graph optimization (folds BatchNorm)
        with _quiet_root_logger():  # per-channel QDQ warns "Axis 1 is out-of-range" on the head's 1-D BatchNorm weights
            quantize_static(
                str(prepared),
                str(raw),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        _write_onnx(onnx.load(str(raw)), out, ref)


def cached_images(settings: Settings, ref: ModelRef, table: str, n: int) -> list[Path]:
    """Up to n cached model PNGs listed in the model's oof.parquet (train) or audit_predictions.parquet."""
    path = ref.path(settings.models, table)
    if not path.exists():
        return []
    rels = sorted(pd.read_parquet(path, columns=["model_png"])["model_png"])[:n]
    return [settings.cache / r for r in rels if (settings.cache / r).exists()]


def parity_images(settings: Settings, ref: ModelRef, n: int = PARITY_IMAGES) -> list[Path]:
    """The cached images the parity check uses: audit first, then train, up to n."""
    audit = cached_images(settings, ref, "audit_predictions.parquet", n)
    return (audit + cached_images(settings, ref, "oof.parquet", n))[:n]


def second_look_pngs(settings: Settings, ref: ModelRef, table: str, n: int | None = None) -> list[Path]:
    """Display PNGs of a model table (audit_predictions / oof): all rows in order, or the first n existing by name."""
    path = ref.path(settings.models, table)
    if not path.exists():
        return []
    rels = pd.read_parquet(path)
    rels = list(rels["display_png"]) if "display_png" in rels else []
    if n is None:  # every row, in order (a missing PNG raises later, rather than shifting rows)
        return [settings.cache / r for r in rels]
    return [settings.cache / r for r in sorted(rels)[:n] if (settings.cache / r).exists()]


def second_look_parity(settings: Settings, ref: ModelRef, n: int = PARITY_IMAGES) -> float | None:
    """max |p_onnx - p_torch| of the second look's image and patch probabilities over up to n cached display
    PNGs (audit first); None for a model without a second look."""
    info = ref.extra.get("second_look") or {}
    if not info:
        return None
    if not info.get("onnx_file"):
        raise ValueError(f"model {ref.model_version} has no second_look.onnx yet; run export_onnx first")
    from mammo_pipeline.model.train import load_second_look

    pngs = (
        second_look_pngs(settings, ref, "audit_predictions.parquet", n)
        + second_look_pngs(settings, ref, "oof.parquet", n)
    )[:n]
    if not pngs:
        raise ValueError("the second look's parity needs at least one cached display PNG")
    found = second_look.candidates_of(pngs, settings.n_threads, settings.display_size)
    a, a_patch = second_look.onnx_probs(session(ref.path(settings.models, info["onnx_file"])), found)
    b, b_patch = second_look.torch_probs(load_second_look(settings, ref), found)
    return float(max(np.max(np.abs(a - b)), np.max(np.abs(a_patch - b_patch))))


def parity(settings: Settings, ref: ModelRef, pngs: list[Path]) -> float:
    """max |p_onnx - p_torch| over `pngs` (fp32 ONNX file of `ref`)."""
    if not ref.onnx_file:
        raise ValueError(f"model {ref.model_version} has no ONNX file yet; run export_onnx first")
    if not pngs:
        raise ValueError("parity needs at least one cached image")
    a = onnx_probs(ref.path(settings.models, ref.onnx_file), pngs, ref.input_size, settings.inference_threads)
    b = torch_probs(settings, ref, pngs)
    return float(np.max(np.abs(a - b)))


def _audit_accuracy(
    settings: Settings, ref: ModelRef, onnx_path: Path, biopsy: np.ndarray | None = None
) -> float | None:
    """Audit accuracy of an ONNX file of the global network; `biopsy` [N_audit] (the second look's ONNX
    probabilities, in audit_predictions order) replaces its biopsy column when the model has a second look."""
    path = ref.path(settings.models, "audit_predictions.parquet")
    audit = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    if audit.empty:
        return None
    pngs = [settings.cache / p for p in audit["model_png"]]
    probs = onnx_probs(onnx_path, pngs, ref.input_size, settings.inference_threads)
    if biopsy is not None:
        probs[:, 0] = biopsy
    return evaluate(audit, probs, ref.thresholds())["accuracy"]


def _export_second_look(settings: Settings, ref: ModelRef) -> tuple[dict | None, np.ndarray | None]:
    """Write second_look.onnx; (ref.extra["second_look"] with its file and sha256, its audit probabilities)."""
    info = ref.extra.get("second_look")
    if not info:
        return None, None
    from mammo_pipeline.model.train import load_second_look

    net = load_second_look(settings, ref)
    example = second_look.candidates_of([np.zeros((64, 64), np.uint8)] * 2).crops
    path = ref.path(settings.models, second_look.ONNX_FILE)
    meta = {**_metadata(ref), "second_look": json.dumps(info), "second_look_version": second_look.version()}
    sha = second_look.export(net, path, example, meta)
    audit = second_look_pngs(settings, ref, "audit_predictions.parquet")
    probs = None
    if audit:
        probs = second_look.onnx_probs(
            session(path, settings.inference_threads),
            second_look.candidates_of(audit, settings.n_threads, settings.display_size),
        )[0]
    return {**info, "onnx_file": path.name, "onnx_sha256": sha}, probs


def export_onnx(settings: Settings, ref: ModelRef) -> ModelRef:
    """Write model.onnx and model.int8.onnx, choose the inference file, update the registry row and current.json.

    Raises ModelMismatch for a model trained on another PREPROCESS_VERSION: its operating points were chosen on
    another input or reading, so exporting it with this code's would silently move them."""
    from mammo_pipeline.model.infer import ModelMismatch

    trained = str((ref.extra.get("preprocessing") or {}).get("version", PREPROCESS_VERSION))
    if trained != PREPROCESS_VERSION:
        raise ModelMismatch(
            f"model {ref.model_version} was trained on preprocessing version {trained}, this code makes version "
            f"{PREPROCESS_VERSION}; retrain (materialize trained_model and onnx_model)"
        )
    fp32 = ref.path(settings.models, ONNX_FILE)
    int8 = ref.path(settings.models, INT8_FILE)
    remove_stale_temps(fp32.parent)  # what a killed export of this model left
    _export_fp32(settings, ref, fp32)
    look, biopsy = _export_second_look(settings, ref)
    fp32_acc = _audit_accuracy(settings, ref, fp32, biopsy)
    calibration = cached_images(settings, ref, "oof.parquet", CALIBRATION_IMAGES)
    int8_acc: float | None = None
    if calibration:
        _quantize_int8(fp32, int8, calibration, ref)
        int8_acc = _audit_accuracy(settings, ref, int8, biopsy)
    keep_int8 = fp32_acc is not None and int8_acc is not None and int8_acc >= fp32_acc - INT8_TOLERANCE
    chosen = int8 if keep_int8 else fp32
    comparison = {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        "onnx_bytes": fp32.stat().st_size,
        "int8_bytes": int8.stat().st_size if int8.exists() else None,
        "inference_file": chosen.name,
        "rule": f"int8 kept when its audit accuracy >= fp32 - {INT8_TOLERANCE:.2f} (needs audit labels)",
    }
    new = ref.with_(
        onnx_file=fp32.name,
        onnx_sha256=_sha256(fp32),
        inference_file=chosen.name,
        inference_sha256=_sha256(chosen),
        extra={**ref.extra, "int8": comparison, **({"second_look": look} if look else {})},
    )
    registry.update_row(
        settings,
        ref.model_version,
        onnx_sha256=new.onnx_sha256,
        int8_accuracy=int8_acc,
        fp32_accuracy=fp32_acc,
        onnx_bytes=comparison["onnx_bytes"],
        int8_bytes=comparison["int8_bytes"],
        inference_file=chosen.name,
        inference_sha256=new.inference_sha256,
        second_look_sha256=(look or {}).get("onnx_sha256"),
    )
    meta_path = ref.path(settings.models, "meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"ref": json.loads(json.dumps(new.__dict__, default=list)), "onnx": comparison})
    write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True, default=str))
    new.save(settings.models, name=f"{ref.folder}/ref.json")
    if not ModelRef.exists(settings.models) or ModelRef.load(settings.models).model_version == ref.model_version:
        new.save(settings.models)  # never roll current.json back to an older model
    return new
