"""The Definitions of the `mammo-pipeline` code location (loaded by workspace.yaml)."""

from __future__ import annotations

from types import ModuleType

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mammo_pipeline.defs.resources import MammoSettings

# Modules of defs/ whose assets, checks, jobs, sensors and schedules make up the code location.
DOMAIN_MODULES: list[ModuleType] = []

_ASSETS = (dg.AssetsDefinition, dg.SourceAsset, dg.AssetSpec)
_JOBS = (dg.JobDefinition, UnresolvedAssetJobDefinition)


def _collect(kinds: type | tuple[type, ...]) -> list:
    return [obj for module in DOMAIN_MODULES for obj in vars(module).values() if isinstance(obj, kinds)]


def build_definitions() -> dg.Definitions:
    """Everything in DOMAIN_MODULES, with the `mammo` resource and a bounded multiprocess executor."""
    return dg.Definitions(
        assets=_collect(_ASSETS),
        asset_checks=_collect(dg.AssetChecksDefinition),
        jobs=_collect(_JOBS),
        sensors=_collect(dg.SensorDefinition),
        schedules=_collect(dg.ScheduleDefinition),
        resources={"mammo": MammoSettings()},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


defs = build_definitions()
