"""The run launcher of the shipped single-machine dagster.yaml: Dagster's default one, plus a health check.

Dagster's run monitoring fails a STARTED run whose worker is gone, but only when the run launcher can say so;
`DefaultRunLauncher` cannot, so a run worker killed with `kill -9` (or lost with its machine) stayed STARTED
forever and, with one run per hospital partition, every later run of that hospital stayed QUEUED.
`LocalRunLauncher.check_run_worker_health` reads the worker's pid from the run's "Started process for run"
engine event and checks that this process still exists on this host and started before that event (so a
reused pid does not count). The daemon's run monitoring (`run_monitoring: enabled: true`) then marks the run
FAILURE and the run queue moves on.

Runs executed in a process of their own (`mammo demo`'s `execute_in_process`) have no launcher and no daemon:
killed, such a run stayed STARTED and kept its pool slot ("training", one at a time), so the next demo waited
for that slot forever, silently. They carry their process's pid (`in_process_tags`), and
`fail_dead_in_process_runs` marks those whose process is gone FAILURE and frees their slots.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, DefaultRunLauncher, RunsFilter
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

_SLACK_S = 2.0  # clock ticks and event timestamps are not exact
PID_TAG, SINCE_TAG = "mammo/pid", "mammo/pid_since"  # an in-process run's process, and a time it already ran


def _process_start_epoch(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in clock ticks


def worker_alive(pid: int, started_by: float) -> bool:
    """Whether the process `pid` runs and started no later than `started_by` (epoch seconds)."""
    if Path("/proc/self/stat").exists():
        start = _process_start_epoch(pid)
        return start is not None and start <= started_by + _SLACK_S
    try:  # no /proc: existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers run on this machine, with a pid-based health check for run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def run_worker_pid(self, run: DagsterRun) -> tuple[int, float] | None:
        """(pid, event timestamp) of the run's latest worker process, from its engine events; None before one.

        A launched run names its worker in "Started process for run"; every run also names the process that
        executes its steps ("Executing steps in process" / "... using multiprocess executor: parent process"),
        the worker itself for a launched run and the command's own process for `dagster asset materialize`,
        which no launcher starts: killed, such a run stayed STARTED and blocked its hospital's queue (stop 63)."""
        found = None
        for record in self._instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            metadata = getattr(getattr(event, "event_specific_data", None), "metadata", None) or {}
            pid = metadata.get("pid")
            text = str(getattr(pid, "value", pid) or "")
            message = getattr(event, "message", None) or record.user_message or ""
            if text.isdigit() and message.startswith(("Started process for", "Executing steps ")):
                found = (int(text), record.timestamp)
        return found

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = self.run_worker_pid(run)
        if worker is None:  # no worker recorded yet: starting runs are covered by start_timeout_seconds
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker process recorded yet")
        pid, started = worker
        if worker_alive(pid, started):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)")


def in_process_tags() -> dict[str, str]:
    """Run tags for a run executed in this process: its pid, and now (the process runs already), so that a later
    process can tell whether the run died with it (`fail_dead_in_process_runs`)."""
    return {PID_TAG: str(os.getpid()), SINCE_TAG: f"{time.time():.3f}"}


def fail_dead_in_process_runs(instance: DagsterInstance) -> list[str]:
    """Mark FAILURE every STARTING or STARTED run tagged by `in_process_tags` whose process no longer exists, and
    free the pool slots it held; returns their run ids. Runs without those tags (the daemon's, the UI's) are
    left to run monitoring, which knows their workers."""
    dead = []
    for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])):
        pid, since = run.tags.get(PID_TAG, ""), run.tags.get(SINCE_TAG, "")
        try:
            alive = worker_alive(int(pid), float(since))
        except ValueError:  # not an in-process run of ours
            continue
        if alive:
            continue
        instance.report_run_failed(run, f"the process that executed this run ({pid}) is gone (killed or crashed)")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run.run_id)
    return dead
