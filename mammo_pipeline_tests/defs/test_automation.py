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

    @dg.asset(pool="training")
    def trained_model() -> None: ...

    @dg.asset(deps=[trained_model], check_specs=[dg.AssetCheckSpec("parity", asset="onnx_model", blocking=True)])
    def onnx_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True)])

    @dg.asset(deps=[onnx_model], partitions_def=hospital_partitions)
    def image_predictions() -> None: ...

    return [trained_model, onnx_model, image_predictions]


def test_retrain_job_selects_the_model_assets_and_their_checks():
    defs = dg.Definitions(assets=stand_in_graph(), jobs=[automation.retrain_model])
    job = defs.resolve_job_def("retrain_model")
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey("trained_model"), dg.AssetKey("onnx_model")}
    assert dg.AssetCheckKey(dg.AssetKey("onnx_model"), "parity") in job.asset_layer.asset_graph.asset_check_keys


def test_retrain_job_materializes_trained_then_onnx():
    defs = dg.Definitions(assets=stand_in_graph(), jobs=[automation.retrain_model])
    result = defs.resolve_job_def("retrain_model").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    assert done == {dg.AssetKey("trained_model"), dg.AssetKey("onnx_model")}


def test_automation_sensor_is_on_and_covers_every_asset():
    sensor = automation.default_automation_condition_sensor
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = dg.Definitions(assets=stand_in_graph(), sensors=[sensor, sensors.new_hospital_drops])
    repo = defs.get_repository_def()
    automation_sensors = [s for s in repo.sensor_defs if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert [s.name for s in automation_sensors] == ["default_automation_condition_sensor"]  # no second, stopped one
    targeted = sensor.asset_selection.resolve(repo.asset_graph)
    assert targeted == {dg.AssetKey(k) for k in ("trained_model", "onnx_model", "image_predictions")}


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
