"""Dagster face of the label store: an observable source (`label_store`) and the `labels` snapshot asset."""

import dagster as dg
import pandas as pd

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.labels.agreement import stats_markdown
from mammo_pipeline.labels.codes import LABELS
from mammo_pipeline.labels.store import LabelStore, sync_from_warehouse

COLUMNS = [
    "image_id",
    "sop_instance_uid",
    "hospital",
    "study_instance_uid",
    "patient_key",
    "label",
    "has_biopsy_marker",
    "is_mag_view",
    "split",
    "annotator",
    "event_id",
    "labeled_at",
    "snapshot_id",
    "model_png",
    "display_png",
    "label_source",
    "first_read",
    "n_reads",
]


@dg.observable_source_asset(group_name="labels", description="The label database (SQLite) people write to.")
def label_store(mammo: MammoSettings) -> dg.DataVersion:
    """Its version changes with every label, undo or new image, so `labels` shows as stale."""
    settings = mammo.get()
    if not settings.labels_db.exists():
        return dg.DataVersion("empty")
    return dg.DataVersion(LabelStore(settings.labels_db).version())


def counts_markdown(df: pd.DataFrame) -> str:
    """Label counts per hospital and class as a markdown table."""
    classes = list(LABELS.values())
    table = pd.crosstab(df["hospital"], df["label"]).reindex(columns=classes, fill_value=0) if len(df) else None
    lines = ["| hospital | " + " | ".join(classes) + " | total |", "|---" * (len(classes) + 2) + "|"]
    for hospital, row in table.iterrows() if table is not None else []:
        lines.append(f"| {hospital} | " + " | ".join(str(int(v)) for v in row) + f" | {int(row.sum())} |")
    return "\n".join(lines)


@dg.asset(
    group_name="labels",
    deps=[label_store, dg.AssetDep(dg.AssetKey("image_cache"), partition_mapping=dg.AllPartitionMapping())],
    kinds={"sqlite", "parquet"},
)
def labels(context: dg.AssetExecutionContext, mammo: MammoSettings) -> dg.MaterializeResult:
    """The current labels as Parquet, plus an immutable copy per snapshot id.

    Training images carry their latest decision; audit images carry the audit truth (the adjudicated label
    where two blind readers disagreed, else their agreed label, else a lone read), named in `label_source`.
    """
    settings = mammo.get()
    store, synced = sync_from_warehouse(settings)
    context.log.info(
        f"Label store: {synced.new} new image(s) from image_cache, {synced.withdrawn} withdrawn (deleted from their "
        f"drop: out of every queue and of the labels), {synced.restored} restored (sent again, with their labels)"
    )
    df, snapshot_id = store.snapshot()
    df = df[COLUMNS]
    folder = settings.table_dir("labels")
    write_parquet(df, folder / "current.parquet")
    snapshot = folder / "snapshots" / f"{snapshot_id}.parquet"
    if not snapshot.exists():
        write_parquet(df, snapshot)
    context.log.info(f"Snapshot {snapshot_id}: {len(df)} labeled images")
    per_class = df["label"].value_counts().reindex(list(LABELS.values()), fill_value=0)
    totals = store.totals()
    agreement = store.audit_stats()
    recheck = int(totals.get("rc_todo", 0))
    if recheck:  # two readers who slipped alike agree, and such a label can set a flag's operating point
        context.log.warning(
            f"{recheck} agreed audit label(s) the latest model contradicts: a third annotator should re-read them "
            "in the labeling app's Audit recheck queue (/?q=audit_recheck) before the operating points are trusted"
        )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(snapshot_id),
        metadata={
            "snapshot_id": snapshot_id,
            "dagster/row_count": len(df),
            "label_counts": dg.MetadataValue.json({k: int(v) for k, v in per_class.items()}),
            "per_hospital": dg.MetadataValue.md(counts_markdown(df)),
            "images_train": int(totals.get("train", 0)),
            "images_audit": int(totals.get("audit", 0)),
            "audit_label_sources": dg.MetadataValue.json(
                {k: int(v) for k, v in df.loc[df["split"] == "audit", "label_source"].value_counts().items()}
            ),
            # Cohen's κ between the two blind readers; NaN while it is undefined (no image read twice yet, or both
            # readers gave one same label throughout): -1 would read as perfect disagreement
            "audit_kappa": dg.MetadataValue.float(float("nan") if agreement["kappa"] is None else agreement["kappa"]),
            "audit_agreement": dg.MetadataValue.md(stats_markdown(agreement)),
            "audit_readers": dg.MetadataValue.json(agreement["per_reader"]),
            "audit_recheck_due": recheck,  # agreed audit labels the latest model contradicts (queues.py)
            "labeled_train": int((df["split"] == "train").sum()),
            "labeled_audit": int((df["split"] == "audit").sum()),
            "new_images": synced.new,
            "withdrawn_images": synced.withdrawn,
            "restored_images": synced.restored,
            "path": dg.MetadataValue.path(str(folder / "current.parquet")),
        },
    )
