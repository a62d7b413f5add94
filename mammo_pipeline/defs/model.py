"""Dagster assets for the model: `trained_model` (PyTorch, metrics, pictures) and `onnx_model` (+ parity check)."""

import base64
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.model.export import export_onnx, parity, parity_images, second_look_parity
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.train import TrainConfig, train_model
from mammo_pipeline.progress import every

PARITY_TOLERANCE = 1e-4


class TrainingConfig(dg.Config):
    """Hyperparameters (Launchpad-editable). Empty fields take the defaults of the path (from scratch or
    ImageNet fine-tuning, see model/train.py); seed < 0 and pretrained '' fall back to the settings."""

    size: int | None = None
    epochs: int | None = None
    image_passes: int | None = None
    freeze_epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    flips: bool | None = None
    framings: bool | None = None
    tones: bool | None = None
    pos_weight: bool | None = None
    seed: int = -1
    pretrained: str = ""
    oof_folds: int = TrainConfig.oof_folds
    second_look: bool = TrainConfig.second_look
    threads: int = TrainConfig.threads

    def to_train_config(self) -> TrainConfig:
        fields = self.model_dump()
        fields["seed"] = None if self.seed < 0 else self.seed
        fields["pretrained"] = self.pretrained or None
        return TrainConfig(**fields)


def _embed_png(path: Path, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"/>'


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ci(d: dict, key: str) -> str:
    """`key`'s value with its 95 % interval (`key_low`-`key_high`) when it has one."""
    low, high = d.get(f"{key}_low"), d.get(f"{key}_high")
    return _fmt(d.get(key)) + ("" if low is None or high is None else f" ({low:.2f}–{high:.2f})")


def _flag_table(metrics: dict) -> str:
    """Per flag at its operating points (chosen on the audit set): threshold, review band and the audit figures of
    the images, then of the studies (the MAX over a study's images at the study threshold); 95 % intervals in
    brackets (`model/intervals.py`)."""
    head = (
        "| flag | ROC-AUC (95 % CI) | threshold | review band | sensitivity | specificity | balanced acc. | κ "
        "| study ROC-AUC | study threshold | study sensitivity | study specificity | precision | recall | F1 |"
    )
    lines = [head, "|---|" + "---|" * 14]
    for flag in ("biopsy", "mag"):
        d = metrics.get("flags", {}).get(flag, {})
        point = metrics.get("operating_points", {}).get(flag, {})
        band = f"{_fmt(point.get('review_low'))}–{_fmt(point.get('review_high'))}"
        cells = [_ci(d, "roc_auc"), _fmt(point.get("threshold")), band, _ci(d, "sensitivity"), _ci(d, "specificity")]
        cells += [_fmt(d.get(k)) for k in ("balanced_accuracy", "kappa", "study_roc_auc", "study_threshold")]
        cells += [_ci(d, "study_sensitivity"), _ci(d, "study_specificity")]
        cells += [_fmt(metrics[f"{flag}_{k}"]) for k in ("precision", "recall", "f1")]
        lines.append(f"| {flag} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _per_group(metrics: dict, group: str) -> dict:
    """{flag: {value: {roc_auc (and its 95 % interval), sensitivity, specificity, kappa, n}}} for asset metadata."""
    keep = ("n", "positives", "roc_auc", "roc_auc_low", "roc_auc_high", "sensitivity", "specificity")
    keep += ("balanced_accuracy", "kappa")
    return {
        flag: {value: {k: m.get(k) for k in keep} for value, m in d.get(f"by_{group}", {}).items()}
        for flag, d in metrics.get("flags", {}).items()
    }


@dg.asset(
    deps=[dg.AssetKey("labels"), dg.AssetDep("image_cache", partition_mapping=dg.AllPartitionMapping())],
    group_name="model",
    pool="training",
    kinds={"pytorch"},
)
def trained_model(
    context: dg.AssetExecutionContext, mammo: MammoSettings, config: TrainingConfig
) -> dg.MaterializeResult:
    """ResNet18 with two flags (biopsy marker, magnification view), trained on the train labels, audited on the rest."""
    settings = mammo.get()
    labels_path = settings.warehouse / "labels" / "current.parquet"
    if not labels_path.exists():
        raise FileNotFoundError(f"{labels_path}: no labels yet; materialize `labels` first")
    labels = pd.read_parquet(labels_path)
    result = train_model(settings, labels, config.to_train_config(), every(10, context.log.info, "training batches"))
    for note in result.warnings:
        context.log.warning(note)
    m, row = result.metrics, result.row
    pictures = result.pictures
    md = {f"{name}_png": dg.MetadataValue.md(_embed_png(path, name)) for name, path in pictures.items()}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(result.ref.model_version),
        metadata={
            "model_version": result.ref.model_version,
            "label_snapshot_id": result.ref.label_snapshot_id,
            "n_train": row["n_train"],
            "n_audit": row["n_audit"],
            "label_counts": dg.MetadataValue.json(row["label_counts"]),
            "hyperparameters": dg.MetadataValue.json(row["hyperparameters"]),
            "seed": row["seed"],
            "pretrained": row["pretrained"],
            "accuracy": m["accuracy"],
            "accuracy_3class": m["accuracy_3class"],
            "flags": dg.MetadataValue.md(_flag_table(m)),
            "per_hospital_accuracy": dg.MetadataValue.json(m["per_hospital_accuracy"]),
            "biopsy_roc_auc": row.get("biopsy_roc_auc"),
            "biopsy_source": row.get("biopsy_source", "global_network"),
            "global_network_biopsy_roc_auc": m.get("global_network_biopsy_roc_auc"),
            "mag_roc_auc": row.get("mag_roc_auc"),
            **{
                f"{flag}_roc_auc_95ci": dg.MetadataValue.json([row.get(f"{flag}_roc_auc_{e}") for e in ("low", "high")])
                for flag in ("biopsy", "mag")
            },
            "operating_points": dg.MetadataValue.json(m.get("operating_points", {})),
            "per_hospital_metrics": dg.MetadataValue.json(_per_group(m, "hospital")),
            "per_vendor_metrics": dg.MetadataValue.json(_per_group(m, "manufacturer")),
            "ece": m["ece"],
            "train_seconds": round(result.train_seconds, 1),
            "path": dg.MetadataValue.path(str(result.ref.path(settings.models))),
            **{f"{name}_path": dg.MetadataValue.path(str(path)) for name, path in pictures.items()},
            **md,
        },
    )


@dg.asset(deps=[trained_model], group_name="model", kinds={"onnx"})
def onnx_model(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """The trained model as ONNX (sigmoid inside, preprocessing in metadata_props), plus an int8 variant."""
    settings = mammo.get()
    ref = export_onnx(settings, ModelRef.load(settings.models))
    comparison = ref.extra["int8"]
    context.log.info(f"ONNX {ref.model_version}: inference file {ref.inference_file}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(ref.model_version),
        metadata={
            "model_version": ref.model_version,
            "path": dg.MetadataValue.path(str(ref.path(settings.models, ref.onnx_file))),
            "sha256": ref.onnx_sha256,
            "inference_file": ref.inference_file,
            "inference_sha256": ref.inference_sha256,
            "int8_comparison": dg.MetadataValue.json(json.loads(json.dumps(comparison, default=str))),
        },
    )


@dg.asset_check(asset=onnx_model, blocking=True)
def onnx_matches_pytorch(mammo: MammoSettings) -> dg.AssetCheckResult:
    """ONNX Runtime and PyTorch agree on 32 cached images (max probability difference <= 1e-4), for the global
    network and, when the model has one, for the second look (image and candidate probabilities)."""
    settings = mammo.get()
    ref = ModelRef.load(settings.models)
    pngs = parity_images(settings, ref)
    global_diff = parity(settings, ref, pngs)
    look_diff = second_look_parity(settings, ref)
    diff = max(global_diff, look_diff or 0.0)
    return dg.AssetCheckResult(
        passed=diff <= PARITY_TOLERANCE,
        metadata={
            "max_abs_diff": diff,
            "global_network_max_abs_diff": global_diff,
            "second_look_max_abs_diff": -1.0 if look_diff is None else look_diff,  # -1: no second look
            "images": len(pngs),
            "tolerance": PARITY_TOLERANCE,
            "model_version": ref.model_version,
        },
    )
