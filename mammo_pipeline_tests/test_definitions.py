import subprocess
import sys

import dagster as dg

from mammo_pipeline.definitions import build_definitions

ASSETS = {
    "dicom_index", "image_cache", "metadata_completeness", "label_store", "labels", "trained_model",
    "onnx_model", "promoted_model", "image_predictions", "study_predictions", "prediction_summary",
}  # fmt: skip


def test_definitions_load_and_every_job_resolves():
    defs = build_definitions()
    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}
    assert {"process_hospital", "retrain_model", "prune_cache"} <= jobs
    assert {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()} == ASSETS
    assert {"new_hospital_drops", "retrain_on_new_labels"} <= {s.name for s in repo.sensor_defs}
    assert "nightly_reprocess" in {s.name for s in repo.schedule_defs}
    assert "mammo" in defs.resources


def test_prediction_assets_are_partitioned_per_hospital():
    repo = build_definitions().get_repository_def()
    for key in ("dicom_index", "image_cache", "image_predictions", "study_predictions"):
        partitions = repo.asset_graph.get(dg.AssetKey(key)).partitions_def
        assert partitions is not None and partitions.name == "hospital", key


def test_cli_every_subcommand_has_help():
    from click.testing import CliRunner

    from mammo_pipeline.cli import cli

    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, command in cli.commands.items():
        assert name in top.output
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in (command.help or ""), f"{name} help lacks an Example: block"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "mammo_pipeline", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "mammo" in out.stdout
