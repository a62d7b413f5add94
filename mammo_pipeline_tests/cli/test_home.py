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


def test_home_rewrites_the_views_of_a_copied_home_to_read_its_own_files(tmp_path):
    """A user's report: a home copied for a backup kept a warehouse.duckdb whose views read the original home's
    Parquet files (absolute paths), so querying the copy silently answered from the original."""
    import shutil

    import duckdb
    import pandas as pd

    from mammo_pipeline import warehouse
    from mammo_pipeline.cli.home import init_home
    from mammo_pipeline.settings import Settings

    original = Settings.under(tmp_path / "home").ensure_dirs()
    warehouse.write_table_file("model_promotions", pd.DataFrame(), original.table_dir("model_promotions") / "a.parquet")
    warehouse.refresh_views(original)
    shutil.copytree(original.home, tmp_path / "copy")
    shutil.rmtree(original.home)  # the original gone (or changed): the copy must not depend on it
    copy = init_home(Settings.under(tmp_path / "copy"))
    with duckdb.connect(str(copy.duckdb_path), read_only=True) as con:
        sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'model_promotions'").fetchone()[0]
        assert str(tmp_path / "copy") in sql and str(tmp_path / "home") + "/" not in sql
        con.execute("SELECT count(*) FROM model_promotions").fetchone()


def test_home_lists_every_variable_of_the_readmes_configuration_table(settings):
    """A user's report: `mammo home` named fewer variables than the README (no MAMMO_DROP_QUIET_SECONDS, MAMMO_SECRET,
    ...)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `((?:MAMMO|DAGSTER)_[A-Z_]+)`", table, flags=re.MULTILINE))
    documented |= set(re.findall(r", `(MAMMO_[A-Z_]+)`", table))
    output = CliRunner().invoke(command, []).output
    assert len(documented) > 20 and {v for v in documented if v not in output} == set()


def test_home_prints_the_value_of_the_settings_dagster_and_the_benchmarks_read(settings, monkeypatch):
    """A newcomer's report: the values `mammo home` printed stopped at Settings' own, leaving out the drop sensor's
    two (read by Dagster) and where the real evaluation images are looked for."""
    monkeypatch.setenv("MAMMO_DROP_QUIET_SECONDS", "45")
    monkeypatch.setenv("MAMMO_REALDATA", "/data/real")
    output = CliRunner().invoke(command, []).output
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line and " " not in line.split("=")[0])
    assert values["MAMMO_DROP_QUIET_SECONDS"] == "45"
    assert values["MAMMO_DROP_SENSOR_INTERVAL"] == "30"
    assert values["MAMMO_REALDATA"] == "/data/real"
    exports = CliRunner().invoke(command, ["--env"]).output
    assert "export MAMMO_DROP_QUIET_SECONDS=45" in exports and "export MAMMO_REALDATA=/data/real" in exports
