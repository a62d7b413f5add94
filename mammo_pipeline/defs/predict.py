"""Prediction assets: per-image and per-study predictions for each hospital, and the cross-hospital summary.

Each prediction partition is one Parquet file, replaced whole on re-materialization, so it only holds the
current model's rows (one per image). Older models' predictions are not kept in these tables: their history
lives in the model registry (`warehouse/model_registry/<v>.parquet`) and in Dagster's materialization
history, whose metadata names the model version, file and sha256 of every run.
"""

from collections import Counter

import dagster as dg

from mammo_pipeline import warehouse
from mammo_pipeline.model.infer import load_model, write_predictions
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.progress import every
from mammo_pipeline.summary import aggregate_studies, agreement_markdown, summarize_predictions

from .partitions import hospital_partitions
from .resources import MammoSettings

# Re-run when the model or the cache changes, but only once their blocking checks passed.
ON_NEW_INPUTS = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


@dg.asset(
    deps=[dg.AssetKey("onnx_model"), dg.AssetKey("image_cache")],
    partitions_def=hospital_partitions,
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"onnx", "parquet"},
)
def image_predictions(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """The current model's biopsy-marker and magnification probabilities for every cached image of a hospital."""
    settings, hospital = mammo.get(), context.partition_key
    ref = ModelRef.load(settings.models)
    model = load_model(settings, ref)
    manifest = warehouse.read_partition(settings, "image_cache", hospital)
    if len(manifest):
        manifest = manifest.drop_duplicates("sop_instance_uid", keep="last")
    context.log.info(f"Predicting {len(manifest)} images of {hospital} with model {ref.model_version}")
    path = warehouse.partition_file(settings, "image_predictions", hospital, "predictions.parquet")
    stats = write_predictions(
        settings, manifest, model, path, run_id=context.run_id, progress=every(10, context.log.info, "predicted")
    )
    warehouse.refresh_views(settings)
    classes = warehouse.query(settings, f"SELECT predicted_class, count(*) AS n FROM read_parquet('{path}') GROUP BY 1")
    class_counts = dict(zip(classes["predicted_class"], classes["n"].tolist(), strict=True))
    return dg.MaterializeResult(
        metadata={
            "model_version": ref.model_version,
            "label_snapshot_id": ref.label_snapshot_id,
            "model_file": dg.MetadataValue.path(str(model.path)),
            "onnx_sha256": model.sha256,
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": stats.n_images,
            "missing_png": stats.n_missing,
            "images_per_second": round(stats.images_per_second, 1),
            "class_counts": dg.MetadataValue.json(class_counts),
        }
    )


@dg.asset(
    deps=[image_predictions],
    partitions_def=hospital_partitions,
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"duckdb", "parquet"},
)
def study_predictions(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """One row per study of a hospital: flagged when ANY of its images is, with the model that decided."""
    settings, hospital = mammo.get(), context.partition_key
    source = warehouse.partition_file(settings, "image_predictions", hospital, "predictions.parquet")
    if not source.exists():
        raise FileNotFoundError(f"{source}: no image predictions for {hospital}; materialize image_predictions")
    studies = aggregate_studies(source)
    path = warehouse.write_partition(settings, "study_predictions", hospital, studies, "studies.parquet")
    warehouse.refresh_views(settings)
    models = studies["model_version"].dropna().unique().tolist()
    return dg.MaterializeResult(
        metadata={
            "model_version": models[0] if models else "",
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": len(studies),
            "biopsy_studies": int(studies["has_biopsy_marker"].sum()),
            "mag_studies": int(studies["is_mag_view"].sum()),
        }
    )


@dg.asset(
    deps=[study_predictions, dg.AssetKey("dicom_index")],
    automation_condition=ON_NEW_INPUTS,
    group_name="predict",
    kinds={"duckdb", "parquet"},
)
def prediction_summary(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """Classes per hospital, and where each hospital's magnification metadata can and cannot be trusted."""
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
