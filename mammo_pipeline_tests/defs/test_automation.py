import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from mammo_pipeline.defs import automation, sensors
from mammo_pipeline.defs.partitions import hospital_partitions

REPO = Path(__file__).resolve().parents[2]
LAPTOP_YAML = REPO / "deploy" / "laptop" / "dagster.yaml"
SHIPPED_YAML = REPO / "mammo_pipeline" / "dagster.yaml"
PRODUCTION_YAML = REPO / "deploy" / "dagster.yaml"


def stand_in_graph() -> list:
    """Assets with the keys and shapes of the real ones (the domain modules are tested elsewhere)."""

    @dg.asset
    def labels() -> None: ...

    @dg.asset(deps=[labels], pool="training")
    def trained_model() -> None: ...

    @dg.asset(deps=[trained_model], check_specs=[dg.AssetCheckSpec("parity", asset="onnx_model", blocking=True)])
    def onnx_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True)])

    @dg.asset(deps=[onnx_model], partitions_def=hospital_partitions)
    def image_predictions() -> None: ...

    return [labels, trained_model, onnx_model, image_predictions]


def test_retrain_job_selects_the_labels_snapshot_the_model_assets_and_their_checks():
    """The labels that triggered the retraining are in the snapshot it trains on: `labels` runs first."""
    defs = dg.Definitions(assets=stand_in_graph(), jobs=[automation.retrain_model])
    job = defs.resolve_job_def("retrain_model")
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey(k) for k in ("labels", "trained_model", "onnx_model")}
    assert dg.AssetCheckKey(dg.AssetKey("onnx_model"), "parity") in job.asset_layer.asset_graph.asset_check_keys


def test_retrain_job_materializes_trained_then_onnx():
    defs = dg.Definitions(assets=stand_in_graph(), jobs=[automation.retrain_model])
    result = defs.resolve_job_def("retrain_model").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    done = [e.asset_key for e in result.get_asset_materialization_events()]
    assert done == [dg.AssetKey("labels"), dg.AssetKey("trained_model"), dg.AssetKey("onnx_model")]


def test_automation_sensor_is_on_and_covers_every_asset():
    sensor = automation.default_automation_condition_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = dg.Definitions(assets=stand_in_graph(), sensors=[sensor, sensors.new_hospital_drops])
    repo = defs.get_repository_def()
    automation_sensors = [s for s in repo.sensor_defs if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert [s.name for s in automation_sensors] == ["default_automation_condition_sensor"]  # no second, stopped one
    targeted = sensor.asset_selection.resolve(repo.asset_graph)
    assert targeted == {dg.AssetKey(k) for k in ("labels", "trained_model", "onnx_model", "image_predictions")}


def instance_from(yaml_path: Path, tmp_path: Path) -> dg.DagsterInstance:
    """The instance a daemon would load with DAGSTER_HOME holding this dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(yaml_path, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


@pytest.mark.parametrize("yaml_path", [LAPTOP_YAML, SHIPPED_YAML], ids=["deploy-laptop", "shipped"])
def test_laptop_dagster_yaml_limits_runs_and_training(yaml_path, tmp_path):
    with instance_from(yaml_path, tmp_path) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
            queue.tag_concurrency_limits
        )
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("training")  # what a step in pool "training" does first
        run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
        assert storage.claim_concurrency_slot("training", run_a, "trained_model").is_claimed
        assert not storage.claim_concurrency_slot("training", run_b, "trained_model").is_claimed
        storage.free_concurrency_slot_for_step(run_a, "trained_model")
        assert storage.claim_concurrency_slot("training", run_b, "trained_model").is_claimed


def test_production_dagster_yaml_is_valid_instance_config(monkeypatch):
    for var in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB", "MAMMO_IMAGE"):
        monkeypatch.setenv(var, "x")
    config = dagster_instance_config(str(PRODUCTION_YAML.parent), PRODUCTION_YAML.name)[0]
    assert "postgres" in config["storage"]
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_production_k8s_run_launcher_config_matches_dagster_k8s():
    k8s = pytest.importorskip("dagster_k8s")
    from dagster._config import validate_config

    launcher = yaml.safe_load(PRODUCTION_YAML.read_text())["run_launcher"]
    result = validate_config(k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors


# -- a dead run no longer blocks its partition (issue 14) ----------------------------------------------
@dg.op
def _noop() -> None: ...


@dg.job
def _stand_in_job() -> None:
    _noop()


# How a run names the process that runs it: a launched run's code server, then (every run, a launched one, and
# `dagster asset materialize` with no launcher) the executor's own engine event.
LAUNCHED = "Started process for run (pid: {pid})."
HAND_RUN = "Executing steps using multiprocess executor: parent process (pid: {pid})"


def _started_run(instance: dg.DagsterInstance, pid: int, partition: str, message: str = LAUNCHED):
    """A STARTED run of partition `partition` whose run worker is process `pid`, as Dagster records it."""
    from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData

    run = instance.create_run_for_job(_stand_in_job, tags={"dagster/partition": partition})
    instance.report_engine_event(message.format(pid=pid), run, EngineEventData.multiprocess(pid))
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name, message="started"), run.run_id
    )
    return instance.get_run_by_id(run.run_id)


def _origin():
    """Where a queued run's job lives (the queue needs one; nothing is loaded from it here)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__), location_name="test")
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "_stand_in_job")


def _dequeue(instance: dg.DagsterInstance) -> list[str]:
    """The queued runs the run queue daemon would launch now."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    return [r.run_id for r in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)]


@pytest.mark.parametrize("message", [LAUNCHED, HAND_RUN], ids=["launched", "dagster-asset-materialize"])
def test_shipped_dagster_yaml_fails_a_killed_run_and_its_partition_queue_moves_on(tmp_path, message):
    import logging
    import subprocess
    import sys

    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    from mammo_pipeline.defs.run_launcher import LocalRunLauncher

    with instance_from(SHIPPED_YAML, tmp_path) as instance:
        assert instance.run_monitoring_enabled and isinstance(instance.run_launcher, LocalRunLauncher)
        dead_worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        dead = _started_run(instance, dead_worker.pid, "h2", message)
        dead_worker.kill()  # kill -9 of the run worker: the run stays STARTED by itself
        dead_worker.wait()
        queued = instance.create_run_for_job(
            _stand_in_job,
            tags={"dagster/partition": "h2"},
            status=DagsterRunStatus.QUEUED,
            remote_job_origin=_origin(),
        )
        assert _dequeue(instance) == []  # h2's queued run waits behind the dead one
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        alive = _started_run(instance, worker.pid, "h1", message)
        try:
            for run in (alive, dead):
                record = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0]
                monitor_started_run(instance, None, record, logging.getLogger("test"))
            assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
            assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
            assert _dequeue(instance) == [queued.run_id]
        finally:
            worker.kill()
            worker.wait()


def test_a_reused_pid_does_not_count_as_the_run_worker():
    import os
    import time

    from mammo_pipeline.defs.run_launcher import _process_start_epoch, worker_alive

    started = _process_start_epoch(os.getpid())
    assert started is not None and started <= time.time()
    assert worker_alive(os.getpid(), time.time())
    assert not worker_alive(os.getpid(), started - 60)  # this process started after that "event": a reused pid
    assert not worker_alive(2**22 + 12345, time.time())


def test_a_killed_in_process_run_is_failed_and_frees_its_pool_slot(tmp_path):
    """`mammo demo` executes its runs in its own process, with no daemon: killed during training, its run stayed
    STARTED and kept the "training" pool's one slot, so every later demo waited for it forever (before stop 54)."""
    import subprocess
    import sys
    import time

    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRunStatus

    from mammo_pipeline.defs.run_launcher import PID_TAG, SINCE_TAG, fail_dead_in_process_runs, in_process_tags

    with instance_from(SHIPPED_YAML, tmp_path) as instance:
        storage = instance.event_log_storage
        assert storage.supports_global_concurrency_limits
        storage.set_concurrency_slots("training", 1)
        killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        tags = {PID_TAG: str(killed.pid), SINCE_TAG: f"{time.time():.3f}"}
        killed.kill()
        killed.wait()
        runs = {}
        for name, run_tags in (("dead", tags), ("alive", in_process_tags()), ("daemon's", {})):
            run = instance.create_run_for_job(_stand_in_job, tags=run_tags)
            start = DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name, message="started")
            instance.report_dagster_event(start, run.run_id)
            runs[name] = run.run_id
        assert storage.claim_concurrency_slot("training", runs["dead"], "trained_model").is_claimed
        assert not storage.claim_concurrency_slot("training", runs["alive"], "trained_model").is_claimed  # waits

        assert fail_dead_in_process_runs(instance) == [runs["dead"]]
        status = {name: instance.get_run_by_id(run_id).status for name, run_id in runs.items()}
        assert status == {
            "dead": DagsterRunStatus.FAILURE,
            "alive": DagsterRunStatus.STARTED,
            "daemon's": DagsterRunStatus.STARTED,  # no pid tag: left to run monitoring
        }
        assert storage.claim_concurrency_slot("training", runs["alive"], "trained_model").is_claimed  # the slot is free
        assert fail_dead_in_process_runs(instance) == []


def test_a_new_hospitals_index_brings_the_metadata_completeness_map_up_to_date(tmp_path, monkeypatch):
    """A user's report: the completeness heat map never showed a hospital added after its first run (no automation,
    in no job); now an index of any hospital requests it."""
    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "home"))
    from mammo_pipeline.definitions import defs

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("hospital", ["h9"])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_num_requested(dg.AssetKey("metadata_completeness")) == 0
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="dicom_index", partition="h9"))
        later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert later.get_num_requested(dg.AssetKey("metadata_completeness")) == 1
