"""Jobs: the per-hospital chain that a new drop triggers; `prune_cache`, maintenance a data engineer runs from the UI
(Jobs -> prune_cache -> Launchpad)."""

import dagster as dg

from mammo_pipeline import cache_prune
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.progress import every

hospital_chain_job = dg.define_asset_job(
    "process_hospital",
    selection=dg.AssetSelection.assets("dicom_index", "image_cache", "image_predictions", "study_predictions"),
    description="Index, cache and predict one hospital partition (requested by the new-drop sensor).",
)


class PruneCacheConfig(dg.Config):
    """What `prune_cache` does: by default it only says what it would delete."""

    dry_run: bool = True  # false: delete
    hospital: str | None = None  # one hospital; None: every hospital with a cache folder


@dg.op(name="prune_cache_op")
def prune_cache_op(context: dg.OpExecutionContext, config: PruneCacheConfig, mammo: MammoSettings) -> dg.Output:
    """`cache_prune.prune` of each hospital, logged; files and bytes per hospital and kind in the output's
    metadata. Fails (after pruning the others) when a hospital was skipped: a cache run held it, or it has no
    manifest."""
    settings = mammo.get()
    names = [config.hospital] if config.hospital else cache_prune.hospitals(settings)
    results = []
    for name in names:
        result = cache_prune.prune(
            settings, name, dry_run=config.dry_run, progress=every(10, context.log.info, f"{name}: files deleted")
        )
        (context.log.warning if result.skipped else context.log.info)(result.report(config.dry_run))
        results.append(result)
    metadata = {
        "dry_run": config.dry_run,
        "files": sum(r.n_files for r in results),
        "bytes": sum(r.n_bytes for r in results),
        "per_hospital": dg.MetadataValue.json({r.hospital: r.counts() for r in results}),
    }
    if skipped := [r.hospital for r in results if r.skipped]:
        raise dg.Failure(f"not pruned: {', '.join(skipped)} (see the log)", metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(
    name="prune_cache",
    description=(
        "Delete the image cache's PNGs and second-look candidates that nothing names any more (old normalization "
        "versions' included, never one in use). Dry run by default: set dry_run: false to delete."
    ),
    tags={"mammo/job": "maintenance"},
)
def prune_cache() -> None:
    prune_cache_op()
