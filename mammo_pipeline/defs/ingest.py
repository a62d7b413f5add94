"""Ingest assets: discover each hospital's DICOM files, cache their renditions, and report metadata completeness."""

import base64
import sqlite3

import dagster as dg
import pandas as pd

from mammo_pipeline import completeness, warehouse
from mammo_pipeline.cache import cache_hospital, cache_quarantine_path, displays_at_pitch, read_manifest
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.dicom.normalize import NORM_VERSION
from mammo_pipeline.labels.store import LabelStore, forget_zoom_crops, withdraw_dropped
from mammo_pipeline.progress import every
from mammo_pipeline.settings import Settings

from .partitions import hospital_partitions
from .resources import MammoSettings

PREVIEW_ROWS = 5
# No rel_path: even pseudonymized, a path is not what a reader of the run page needs.
INDEX_PREVIEW = ["image_kind", "manufacturer", "view_position", "laterality", "rows", "columns", "meta_mag"]
# What a data version is taken over (`warehouse.content_version`): a file indexed again, or a PNG rendered again
INDEX_VERSION_COLUMNS = ["sop_instance_uid", "rel_path", "file_size", "file_mtime_ns"]
CACHE_VERSION_COLUMNS = ["sop_instance_uid", "display_png", "model_png", "display_png_mtime_ns", "model_png_mtime_ns"]
CACHE_PREVIEW = ["sop_instance_uid", "view_position", "laterality", "voi_method", "fallback_reason", "model_png"]


@dg.asset(partitions_def=hospital_partitions, group_name="ingest", code_version="1", kinds={"dicom", "parquet"})
def dicom_index(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """One pseudonymized header row per DICOM file of a hospital; unusable files go to the quarantine table."""
    settings, hospital = mammo.get(), context.partition_key
    result = index_hospital(settings, hospital, progress=every(10, context.log.info, f"headers read ({hospital})"))
    warehouse.refresh_views(settings)
    moved = (
        f", {result.moved} moved (indexed now from another file of the hospital: another drop or name)"
        if result.moved
        else ""
    )
    withdrawn = f", {result.withdrawn} withdrawn (deleted from their drop)" if result.withdrawn else ""
    context.log.info(
        f"{hospital}: {result.new} new, {result.unchanged} unchanged{moved}{withdrawn}, "
        f"{result.quarantined} quarantined"
    )
    for why in result.refused:
        context.log.warning(f"{hospital}: {why}")
    if result.replaced_unreadable:
        context.log.warning(
            f"{hospital}: {result.replaced_unreadable} indexed file(s) were replaced by files that cannot be read; "
            "their images keep their earlier index rows and renditions, the new files are quarantined: re-send them"
        )
    if result.shared:
        context.log.warning(
            f"{hospital}: {result.shared} indexed image(s) share their SOP Instance UID with another hospital's "
            "(the same file sent twice?): each hospital keeps its row; the label store keeps one image per UID"
        )
    if result.forgotten:
        context.log.warning(
            f"{hospital}: {result.forgotten} refused drop folder(s) had been indexed before (half-copied then): "
            "their index and quarantine rows and private source-path lookup were removed"
        )
    index = warehouse.read_partition(settings, "dicom_index", hospital)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(warehouse.content_version(index, INDEX_VERSION_COLUMNS)),
        metadata={
            "dagster/row_count": result.rows,
            "new": result.new,
            "unchanged": result.unchanged,
            "moved": result.moved,
            "withdrawn": result.withdrawn,
            "replaced_unreadable": result.replaced_unreadable,
            "files": result.files,
            "not_indexed": dg.MetadataValue.md("\n".join(f"- {why}" for why in result.refused) or "none"),
            "refused_drops_removed": result.forgotten,
            "shared_with_other_hospitals": result.shared,
            **_by_reason(result.quarantined),
            **_by_kind(index),
            "headers_per_second": round(result.headers_per_s, 1),
            "seconds": round(result.seconds, 2),
            "path": dg.MetadataValue.path(str(settings.table_dir("dicom_index", hospital))),
            "quarantine_path": dg.MetadataValue.path(str(settings.table_dir("quarantine", hospital))),
            "preview": dg.MetadataValue.md(preview_markdown(index, INDEX_PREVIEW)),
        },
    )


@dg.asset(
    deps=[dicom_index],
    partitions_def=hospital_partitions,
    group_name="ingest",
    code_version=f"1+{NORM_VERSION}",
    kinds={"png", "parquet"},
)
def image_cache(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """A display PNG and a model-size PNG per For Presentation image of a hospital, with their manifest."""
    settings, hospital = mammo.get(), context.partition_key
    result = cache_hospital(
        settings,
        hospital,
        progress=every(10, context.log.info, f"images cached ({hospital})"),
        on_wait=context.log.warning,
    )
    warehouse.refresh_views(settings)
    unlabeled = _withdraw_from_labels(context, settings, hospital, result.withdrawn_sops)
    skipped = f", {result.for_processing} For Processing skipped (never displayed)" if result.for_processing else ""
    withdrawn = (
        f", {result.withdrawn} withdrawn (left the index: deleted from their drop or replaced there by another image; "
        "PNGs deleted)"
        if result.withdrawn
        else ""
    )
    withdrawn += f", {unlabeled} withdrawn from the label store" if unlabeled else ""
    context.log.info(
        f"{hospital}: {result.new} rendered, {result.unchanged} unchanged{skipped}{withdrawn}, "
        f"quarantined {result.quarantined}"
    )
    manifest = read_manifest(settings, hospital)
    trimmed = int(manifest["padding_trimmed"].notna().sum()) if "padding_trimmed" in manifest else 0
    at_pitch = displays_at_pitch(manifest, settings.display_size)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(warehouse.content_version(manifest, CACHE_VERSION_COLUMNS)),
        metadata={
            "dagster/row_count": result.rows,
            "new": result.new,
            "unchanged": result.unchanged,
            "withdrawn": result.withdrawn,
            "withdrawn_from_labels": unlabeled,
            "for_processing_skipped": result.for_processing,
            "still_quarantined": result.still_quarantined,
            "kept_without_source": result.kept_without_source,
            "padding_trimmed": trimmed,  # images shown without the frame of padding they were stored in
            "at_pitch": at_pitch,  # displays at one pitch (their file states a pixel spacing); the rest at 1024 px
            **_by_reason(result.quarantined),
            "images_per_second": round(result.images_per_s, 2),
            "seconds": round(result.seconds, 2),
            "waited_for_another_run_s": round(result.waited_s, 2),
            "norm_version": NORM_VERSION,
            "cache_path": dg.MetadataValue.path(str(settings.cache / hospital / NORM_VERSION)),
            "manifest_path": dg.MetadataValue.path(str(result.manifest_path)),
            "quarantine_path": dg.MetadataValue.path(str(cache_quarantine_path(settings, hospital))),
            "preview": dg.MetadataValue.md(preview_markdown(manifest, CACHE_PREVIEW)),
        },
    )


@dg.asset(
    deps=[dg.AssetDep(dicom_index, partition_mapping=dg.AllPartitionMapping())],
    # every hospital's index, a new one's too (it had no automation before stop 55, and missed every hospital
    # added after its first run)
    automation_condition=dg.AutomationCondition.eager(),
    group_name="ingest",
    code_version="1",
    kinds={"parquet", "matplotlib"},
)
def metadata_completeness(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """Share of images per hospital with each metadata field populated, and where the mag fields disagree."""
    settings = mammo.get()
    table, png = completeness.metadata_completeness(settings)
    context.log.info(f"Completeness of {table['hospital'].nunique() if len(table) else 0} hospitals -> {png}")
    image = base64.b64encode(png.read_bytes()).decode()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "heatmap": dg.MetadataValue.md(f"![metadata completeness](data:image/png;base64,{image})"),
            "heatmap_path": dg.MetadataValue.path(str(png)),
            "path": dg.MetadataValue.path(str(png.with_suffix(".parquet"))),
        }
    )


def preview_markdown(df: pd.DataFrame, columns: list[str], rows: int = PREVIEW_ROWS) -> str:
    """The first rows of a table as Markdown, for the asset's metadata."""
    if df.empty:
        return "_no rows_"
    return df[[c for c in columns if c in df.columns]].head(rows).to_markdown(index=False)


def _by_kind(index: pd.DataFrame) -> dict[str, int]:
    """Indexed images per `image_kind` (tomosynthesis is counted among the quarantined)."""
    if index.empty or "image_kind" not in index.columns:
        return {}
    return {f"image_kind_{kind}": int(n) for kind, n in sorted(index["image_kind"].value_counts().items())}


def _by_reason(counts: dict[str, int]) -> dict[str, int]:
    return {"quarantined": sum(counts.values())} | {f"quarantined_{reason}": n for reason, n in sorted(counts.items())}


def _withdraw_from_labels(context: dg.AssetExecutionContext, settings: Settings, hospital: str, sops: list[str]) -> int:
    """Withdraw the images whose files are gone from the label store now (out of the labeling queues at once, not
    at the store's next sync); how many were in use. A store another writer holds past SQLite's wait (a sync of a
    million images takes about 20 s) is left to the next label sync, which withdraws them too: the renditions are
    already deleted and the manifest written, so failing the run would only hide that its work is done."""
    if not sops or not settings.labels_db.exists():
        return 0
    try:
        store = LabelStore(settings.labels_db, seed=settings.seed)
        withdrawn = withdraw_dropped(settings, store, hospital, sops)
        forget_zoom_crops(settings, store)  # the app's full-resolution crops of them
        return withdrawn
    except sqlite3.OperationalError as exc:  # "database is locked"
        context.log.warning(
            f"{hospital}: {len(sops)} withdrawn image(s) not yet marked in the label store ({exc}); the next label "
            "sync (the labels asset, mammo label) marks them"
        )
        return 0
