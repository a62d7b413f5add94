"""Prediction assets: the promoted model, per-image and per-study predictions per hospital, the summary.

Predictions are history: each (hospital, model_version) is its own slice
(`warehouse/image_predictions/hospital=H/model_version=V/part.parquet`), so a new model adds rows and
never rewrites an older model's; re-running the same model replaces only its own slice. Which model is
current is recorded in `model_promotions` (see mammo_pipeline/promotions.py): `promoted_model` appends a
promotion once the ONNX export's blocking checks passed, and the `*_current` views follow it.
"""

from collections import Counter
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from mammo_pipeline import promotions, schemas, warehouse
from mammo_pipeline.model.evaluate import FLAGS, study_point
from mammo_pipeline.model.infer import InferenceStats, load_model, slice_is_current, write_predictions
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.progress import every
from mammo_pipeline.settings import Settings
from mammo_pipeline.summary import aggregate_studies, agreement_markdown, summarize_predictions

from .partitions import hospital_partitions
from .resources import MammoSettings

# Re-run when the model or the cache changes, but only once their blocking checks passed.
ON_NEW_INPUTS = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
ONNX_CHECK = dg.AssetCheckKey(dg.AssetKey("onnx_model"), "onnx_matches_pytorch")


def _failed_check(instance: dg.DagsterInstance, model_version: str) -> bool:
    """Whether the newest parity-check evaluation for this model version failed (False when none ran)."""
    try:
        history = instance.event_log_storage.get_asset_check_execution_history(ONNX_CHECK, limit=20)
    except Exception:  # an instance without check storage: nothing recorded, nothing failed
        return False
    for record in history:
        evaluation = getattr(getattr(record.event, "dagster_event", None), "event_specific_data", None)
        meta = getattr(evaluation, "metadata", None) or {}
        version = getattr(meta.get("model_version"), "value", None)
        if version == model_version and hasattr(evaluation, "passed"):
            return not evaluation.passed
    return False


@dg.asset(
    deps=[dg.AssetKey("onnx_model")],
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"parquet"},
)
def promoted_model(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """Makes the exported model current for every hospital (a `model_promotions` row) once its checks passed, once:
    a model promoted before (and since rolled back or replaced by hand, `mammo model promote`) is not promoted
    again by a re-materialization ("materialize all" in the UI); a person's decision stands. A model whose audit
    ROC-AUC of a flag lies below the current model's 95 % interval is held back (`promotions.audit_regressions`:
    a failed training round), both measured on the audit images the two models share (withdrawals shrink the set);
    the current model keeps predicting, and `mammo model promote VERSION` overrides. The log and the
    `audit_comparison` metadata say which images the comparison rests on, or why it was skipped."""
    settings = mammo.get()
    ref = ModelRef.load(settings.models)
    if not ref.onnx_file:
        raise dg.Failure(f"model {ref.model_version} has no ONNX file yet; materialize onnx_model first")
    if _failed_check(context.instance, ref.model_version):
        raise dg.Failure(
            f"model {ref.model_version}: onnx_matches_pytorch failed, so it is not promoted; "
            "re-export it, or promote another model with `mammo model promote VERSION`"
        )
    promotions.save_ref(settings, ref)
    history = promotions.read_promotions(settings)
    already = ref.model_version in set(history["model_version"])
    current = promotions.promoted_version(settings)
    row = None
    comparison = (
        None
        if already or current in (None, ref.model_version)
        else promotions.held_back(settings, ref.model_version, current)
    )
    held = list(comparison.regressions) if comparison else []
    basis = comparison.basis if comparison else ""  # which audit images the check rests on, or why it was skipped
    if comparison and not comparison.compared:
        context.log.warning(f"Audit figures of {ref.model_version} not held against {current}'s: {comparison.basis}")
    elif comparison and not held:
        context.log.info(f"Audit figures of {ref.model_version} within {current}'s intervals ({comparison.basis})")
    if held:
        context.log.warning(
            f"Model {ref.model_version} is not promoted: {'; '.join(held)} ({basis}). {current} stays "
            f"current; `mammo model promote {ref.model_version}` promotes it on purpose."
        )
    elif not already:
        row = promotions.promote(
            settings,
            ref.model_version,
            reason="checks_passed",
            promoted_by="dagster",
            dagster_run_id=context.run.run_id,
        )
        warehouse.refresh_views(settings)
        context.log.info(f"Model {ref.model_version} promoted")
    elif current == ref.model_version:
        context.log.info(f"Model {ref.model_version} was already current")
    else:
        context.log.warning(
            f"Model {ref.model_version} was promoted before and {current or 'another model'} has been promoted "
            f"since (by hand or by a rollback); it is not promoted again. `mammo model promote "
            f"{ref.model_version}` does that on purpose."
        )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(ref.model_version),
        metadata={
            "model_version": ref.model_version,
            "onnx_sha256": ref.onnx_sha256,
            "label_snapshot_id": ref.label_snapshot_id,
            "promoted": row is not None,
            "held_back": "; ".join(held),
            "audit_comparison": basis,
            "previous_model_version": (row or {}).get("previous_model_version") or "",
            "ref": dg.MetadataValue.path(str(promotions.ref_path(settings, ref.model_version))),
        },
    )


def model_for(settings: Settings, hospital: str, instance: dg.DagsterInstance | None = None) -> ModelRef:
    """The model that predicts a hospital: the one promoted for it, else (never promoted) current.json, unless
    its blocking parity check failed on `instance` (a model promoted_model refused does not predict either)."""
    ref = promotions.model_for_hospital(settings, hospital)
    if (
        instance is not None
        and _failed_check(instance, ref.model_version)
        and promotions.promoted_version(settings, hospital) is None  # read again only for a failed check
    ):
        raise dg.Failure(
            f"model {ref.model_version}: onnx_matches_pytorch failed and no model was ever promoted, so {hospital} is "
            "not predicted; re-export the model, or promote one with `mammo model promote VERSION`"
        )
    return ref


def no_model_yet(settings: Settings, hospital: str) -> bool:
    """Whether no model can predict `hospital`: none promoted for it and none trained (a first drop arrives before
    anything is labeled)."""
    return promotions.promoted_version(settings, hospital) is None and not ModelRef.exists(settings.models)


@dg.asset(
    deps=[promoted_model, dg.AssetKey("image_cache")],
    partitions_def=hospital_partitions,
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"onnx", "parquet"},
    output_required=False,
)
def image_predictions(context: dg.AssetExecutionContext, mammo: MammoSettings) -> Iterator[dg.MaterializeResult]:
    """The promoted model's biopsy-marker and magnification probabilities for every cached image of a hospital,
    written to its own (hospital, model_version) slice beside the older models' slices. Before any model exists
    nothing is materialized (study_predictions is skipped, the run succeeds): the first model's promotion
    predicts the hospital."""
    settings, hospital = mammo.get(), context.partition_key
    promotions.migrate_legacy(settings)
    if no_model_yet(settings, hospital):
        context.log.info(
            f"{hospital}: no model yet, so nothing is predicted; label images, then materialize trained_model, "
            "onnx_model and promoted_model (its promotion predicts this hospital)"
        )
        return
    ref = model_for(settings, hospital, context.instance)
    if not any(settings.table_dir("image_cache", hospital).glob("*.parquet")):  # never cached: not "no images"
        raise dg.Failure(
            f"{hospital}: no image cache yet; materialize dicom_index and image_cache for it first (an empty "
            "prediction slice would pass for a hospital without images)"
        )
    model = load_model(settings, ref)
    manifest = warehouse.read_partition(settings, "image_cache", hospital)
    if len(manifest):
        manifest = manifest.drop_duplicates("sop_instance_uid", keep="last")
    path = warehouse.slice_file(settings, "image_predictions", hospital, ref.model_version)
    unchanged = slice_is_current(path, manifest, model.sha256)
    if unchanged:  # nightly re-runs: same model, same images: keep the slice and its lineage
        context.log.info(f"{hospital}: predictions of model {ref.model_version} are up to date; nothing to do")
        stats = InferenceStats(n_kept=len(manifest))
    else:
        context.log.info(
            f"{hospital}: predicting the new and re-cached of its {len(manifest)} images with {ref.model_version}"
        )
        stats = write_predictions(
            settings,
            manifest,
            model,
            path,
            run_id=context.run.run_id,
            progress=every(10, context.log.info, "predicted"),
        )
        context.log.info(f"{hospital}: {stats.n_images} predicted, {stats.n_kept} kept as they were")
        if stats.unreadable:
            context.log.warning(
                f"{hospital}: {len(stats.unreadable)} cached images could not be read and have no prediction (tried "
                f"again next run), e.g. {stats.unreadable[0]}"
            )
    schemas.check_file("image_predictions", path)
    warehouse.refresh_views(settings)
    predictions = pd.read_parquet(path)  # read once, for the class counts and the data version
    counts = predictions["predicted_class"].value_counts(dropna=False, sort=False)
    class_counts = {None if pd.isna(k) else k: int(n) for k, n in counts.items()}
    # the slice's content: a nightly run that keeps every prediction leaves study_predictions fresh
    version = warehouse.content_version(predictions, ["sop_instance_uid", "model_version", "p_biopsy", "p_mag"])
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "model_version": ref.model_version,
            "label_snapshot_id": ref.label_snapshot_id,
            "model_file": dg.MetadataValue.path(str(model.path)),
            "onnx_sha256": model.sha256,
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": stats.n_images + stats.n_kept,
            "predicted": stats.n_images,
            "kept": stats.n_kept,
            "missing_png": stats.n_missing,
            "unreadable_png": len(stats.unreadable),
            "unchanged": unchanged,
            "images_per_second": round(stats.images_per_second, 1),
            "class_counts": dg.MetadataValue.json(class_counts),
        },
    )


@dg.asset(
    deps=[image_predictions],
    partitions_def=hospital_partitions,
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"duckdb", "parquet"},
)
def study_predictions(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """One row per study of a hospital: flagged when ANY of its images reaches the model's study threshold (the
    MAX over its images; `summary.aggregate_studies`), with the model that decided."""
    settings, hospital = mammo.get(), context.partition_key
    promotions.migrate_legacy(settings)
    ref = model_for(settings, hospital, context.instance)
    version = ref.model_version
    source = warehouse.slice_file(settings, "image_predictions", hospital, version)
    if not source.exists():
        raise FileNotFoundError(
            f"{source}: no image predictions of model {version} for {hospital}; materialize image_predictions"
        )
    points = ref.extra.get("operating_points") or {}
    studies = aggregate_studies(source, points)
    path = warehouse.write_slice(settings, "study_predictions", hospital, version, studies)
    warehouse.refresh_views(settings)
    return dg.MaterializeResult(
        # the rows' content: a night that changes no study leaves prediction_summary fresh (and the file as it was)
        data_version=dg.DataVersion(warehouse.content_version(studies, list(studies.columns))),
        metadata={
            "model_version": version,
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": len(studies),
            "biopsy_studies": int(studies["has_biopsy_marker"].sum()),
            "mag_studies": int(studies["is_mag_view"].sum()),
            "needs_review_studies": int(studies["needs_review"].fillna(False).astype(bool).sum()),
            "study_thresholds": dg.MetadataValue.json(
                {flag: (study_point(points, flag) or {}).get("threshold") for flag in FLAGS}
            ),
        },
    )


@dg.asset(
    deps=[study_predictions, dg.AssetKey("dicom_index")],
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"duckdb", "parquet"},
)
def prediction_summary(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """Classes per hospital (current model), and where each hospital's magnification metadata can be trusted."""
    summary = summarize_predictions(mammo.get())
    counts = Counter()
    for row in summary.counts.itertuples(index=False):
        counts[f"{row.level}_{row.predicted_class}"] += int(row.n)
    context.log.info(f"Summarized {len(summary.agreement)} hospitals")
    return dg.MaterializeResult(
        metadata={
            "agreement": dg.MetadataValue.md(agreement_markdown(summary.agreement)),
            "class_counts": dg.MetadataValue.json(dict(counts)),
            "table": dg.MetadataValue.path(str(summary.agreement_path)),
            "counts_table": dg.MetadataValue.path(str(summary.counts_path)),
            "plot": dg.MetadataValue.path(str(summary.png_path)),
            "hospitals": len(summary.agreement),
        }
    )
