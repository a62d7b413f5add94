"""The Definitions of the `mammo-pipeline` code location (loaded by workspace.yaml)."""

from __future__ import annotations

from types import ModuleType

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mammo_pipeline.defs import automation, checks, ingest, jobs, labels, model, predict, schedules, sensors
from mammo_pipeline.defs.resources import MammoSettings

# Modules of defs/ whose assets, checks, jobs, sensors and schedules make up the code location.
DOMAIN_MODULES: list[ModuleType] = [ingest, labels, model, predict, checks, jobs, sensors, schedules, automation]

_ASSETS = (dg.AssetsDefinition, dg.SourceAsset, dg.AssetSpec)
_JOBS = (dg.JobDefinition, UnresolvedAssetJobDefinition)


def _collect(kinds: type | tuple[type, ...]) -> list:
    """Objects of `kinds` defined or imported in DOMAIN_MODULES, each once."""
    found = {id(obj): obj for module in DOMAIN_MODULES for obj in vars(module).values() if isinstance(obj, kinds)}
    return list(found.values())


def build_definitions() -> dg.Definitions:
    """Everything in DOMAIN_MODULES, with the `mammo` resource and a bounded multiprocess executor."""
    return dg.Definitions(
        assets=[a for a in _collect(_ASSETS) if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=_collect(dg.AssetChecksDefinition),
        jobs=_collect(_JOBS),
        sensors=_collect(dg.SensorDefinition),
        schedules=_collect(dg.ScheduleDefinition),
        resources={"mammo": MammoSettings()},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


defs = build_definitions()
