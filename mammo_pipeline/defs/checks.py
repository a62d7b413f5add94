"""Drift and newcomer checks per hospital partition: WARN severity, shown on the asset in the UI.

Thin wrappers over mammo_pipeline/drift.py. Each check says in its description and its failure text what to
do (label some of those images). They never block: predictions stay available while someone looks.
"""

import warnings

import dagster as dg

from mammo_pipeline import drift

from .partitions import hospital_partitions
from .resources import MammoSettings

# Partitioned asset checks are a preview feature of Dagster 1.13; say so once here, not on every load.
warnings.filterwarnings("ignore", message=".*partitions_def.*AssetCheckSpec.*")


def _result(finding: drift.Finding) -> dg.AssetCheckResult:
    metadata = {"summary": dg.MetadataValue.text(finding.summary), "details": dg.MetadataValue.json(finding.details)}
    shares = finding.details.get("shares")
    if shares:  # class shares side by side read faster as a table than as JSON
        lines = ["| class | predicted | audit |", "|---|---|---|"]
        lines += [f"| {c} | {v['predicted']:.1%} | {v['audit']:.1%} |" for c, v in shares.items()]
        metadata["shares"] = dg.MetadataValue.md("\n".join(lines))
    return dg.AssetCheckResult(
        passed=finding.passed, severity=dg.AssetCheckSeverity.WARN, description=finding.summary, metadata=metadata
    )


@dg.asset_check(
    asset=dg.AssetKey("dicom_index"),
    partitions_def=hospital_partitions,
    description="Warns when the hospital brings a Manufacturer, model or image_kind no labeled image has: "
    "label some of those images.",
)
def no_unlabeled_device(context: dg.AssetCheckExecutionContext, mammo: MammoSettings) -> dg.AssetCheckResult:
    return _result(drift.newcomers(mammo.get(), context.partition_key))


@dg.asset_check(
    asset=dg.AssetKey("image_predictions"),
    partitions_def=hospital_partitions,
    description="Warns when the hospital's predicted class shares move beyond the bound from the audit set's "
    "label shares: label a sample of its images.",
)
def class_rates_near_audit(context: dg.AssetCheckExecutionContext, mammo: MammoSettings) -> dg.AssetCheckResult:
    return _result(drift.class_rates(mammo.get(), context.partition_key))


@dg.asset_check(
    asset=dg.AssetKey("image_predictions"),
    partitions_def=hospital_partitions,
    description="Warns when the share of needs_review predictions grows: label those images first.",
)
def needs_review_not_growing(context: dg.AssetCheckExecutionContext, mammo: MammoSettings) -> dg.AssetCheckResult:
    return _result(drift.needs_review_growth(mammo.get(), context.partition_key))
