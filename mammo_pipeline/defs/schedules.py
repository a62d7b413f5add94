"""Schedules: a nightly pass over every hospital partition, which is cheap when nothing changed."""

import dagster as dg

from mammo_pipeline.defs import jobs
from mammo_pipeline.defs.partitions import hospital_partitions


@dg.schedule(
    job=jobs.hospital_chain_job,
    cron_schedule="0 2 * * *",
    execution_timezone="Europe/London",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_reprocess(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    """Re-runs the chain for every registered hospital; the incremental assets skip unchanged files."""
    hospitals = sorted(context.instance.get_dynamic_partitions(hospital_partitions.name))
    if not hospitals:
        return dg.SkipReason("no hospital partitions registered yet")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"nightly:{hospital}:{day}", partition_key=hospital, tags={"mammo/trigger": "nightly"})
        for hospital in hospitals
    ]
