import yaml
from click.testing import CliRunner

from mammo_pipeline.cli.home import command


def test_home_creates_folders_and_a_loadable_dagster_yaml(settings):
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    assert "MAMMO_LANDING" in result.output and str(settings.landing) in result.output
    for folder in (settings.landing, settings.cache, settings.warehouse, settings.models, settings.dagster_home):
        assert folder.is_dir()
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1


def test_home_never_overwrites_an_existing_dagster_yaml(settings):
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert CliRunner().invoke(command, []).exit_code == 0
    assert (settings.dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_home_env_prints_exports(settings):
    result = CliRunner().invoke(command, ["--env"])
    assert f"export MAMMO_HOME={settings.home}" in result.output
