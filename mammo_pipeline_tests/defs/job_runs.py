"""Running a one-op maintenance job (`prune_cache`, `withdraw_drop`) in process, and reading its output."""

from __future__ import annotations

import dagster as dg

from mammo_pipeline.defs.resources import MammoSettings


def run_job(job: dg.JobDefinition, op: str, instance: dg.DagsterInstance, **config) -> dg.ExecuteInProcessResult:
    """`job` with `config` for its op `op`, the test's MAMMO_* environment as resources; failures returned."""
    return job.execute_in_process(
        run_config={"ops": {op: {"config": config}}},
        resources={"mammo": MammoSettings()},
        instance=instance,
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    """The metadata of the job's one output, as plain values."""
    (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    """The description of the job's one step failure."""
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failure.step_failure_data.user_failure_data.description
