"""Jobs: the per-hospital chain that a new drop triggers; `prune_cache` and `withdraw_drop`, maintenance a data
engineer runs from the UI (Jobs -> prune_cache -> Launchpad)."""

import dagster as dg

from mammo_pipeline import cache_prune, drop_withdrawal
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


class WithdrawDropConfig(dg.Config):
    """Which drop `withdraw_drop` withdraws; by default it only says how many images it would."""

    hospital: str
    drop: str
    dry_run: bool = True  # false: withdraw


@dg.op(name="withdraw_drop_op")
def withdraw_drop_op(context: dg.OpExecutionContext, config: WithdrawDropConfig, mammo: MammoSettings) -> dg.Output:
    """`drop_withdrawal.withdraw_drop`, logged. A real run re-indexes and re-caches the hospital outside the assets,
    so it records a materialization of `dicom_index` and `image_cache` for the partition: the UI then shows the
    predictions of that hospital stale. Fails when the drop cannot be withdrawn (unknown, or still in landing)."""
    try:
        result = drop_withdrawal.withdraw_drop(mammo.get(), config.hospital, config.drop, dry_run=config.dry_run)
    except drop_withdrawal.NotWithdrawable as e:
        raise dg.Failure(str(e)) from e
    context.log.info(result.report())
    metadata = {
        "dry_run": result.dry_run,
        "images": result.images,
        "kept_by_another_copy": result.elsewhere,
        "withdrawn": result.withdrawn,
        "withdrawn_from_labels": result.from_labels,
    }
    if not result.dry_run:
        for asset in ("dicom_index", "image_cache"):
            context.log_event(
                dg.AssetMaterialization(
                    asset,
                    partition=config.hospital,
                    description=f"drop {config.drop} withdrawn by the withdraw_drop job",
                    metadata={"withdrawn_drop": config.drop, "withdrawn": result.withdrawn},
                )
            )
    return dg.Output(None, metadata=metadata)


@dg.job(
    name="withdraw_drop",
    description=(
        "Withdraw the images of a drop whose files were deleted from landing (a drop folder with no file left "
        "counts as archived and keeps its images): renditions deleted, images withdrawn in the label store. Dry "
        "run by default: set dry_run: false to withdraw."
    ),
    tags={"mammo/job": "maintenance"},
)
def withdraw_drop() -> None:
    withdraw_drop_op()
