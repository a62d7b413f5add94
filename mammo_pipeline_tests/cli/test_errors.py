"""What the `mammo` command says when it is given something it cannot use: one line naming it, never a traceback."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from mammo_pipeline.cli import _store_fault, cli
from mammo_pipeline.settings import Settings, SettingsError
from mammo_pipeline_tests.test_lineage import predict_hospital


def _run(args: list[str], **kwargs):
    return CliRunner().invoke(cli, args, **kwargs)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("MAMMO_WORKERS", "four", "MAMMO_WORKERS must be a whole number, not 'four'"),
        ("MAMMO_WORKERS", "-2", "MAMMO_WORKERS must be at least 0, not -2"),
        ("MAMMO_MODEL_SIZE", "0", "MAMMO_MODEL_SIZE must be at least 1, not 0"),
        ("MAMMO_PRETRAINED", "yes", "MAMMO_PRETRAINED must be 'imagenet' or 'none'"),
    ],
)
def test_a_setting_it_cannot_use_is_named_in_one_line(settings, var, value, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"MAMMO_HOME": str(settings.home), var: value})
    result = _run(["home"], env={var: value})
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert Settings.from_env({"MAMMO_HOME": str(settings.home), "MAMMO_SEED": "-3", var: ""}).seed == -3


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("MAMMO_DROP_SENSOR_INTERVAL", "abc", "MAMMO_DROP_SENSOR_INTERVAL must be a whole number, not 'abc'"),
        ("MAMMO_DROP_SENSOR_INTERVAL", "-3", "MAMMO_DROP_SENSOR_INTERVAL must be at least 1, not -3"),
        ("MAMMO_DROP_QUIET_SECONDS", "abc", "MAMMO_DROP_QUIET_SECONDS must be a number of seconds, not 'abc'"),
        ("MAMMO_DROP_QUIET_SECONDS", "-3", "MAMMO_DROP_QUIET_SECONDS must be more than 0, not -3"),
    ],
)
def test_home_names_a_drop_sensor_setting_it_cannot_use_in_one_line(settings, var, value, message):
    """A user's report: `mammo home` passed MAMMO_DROP_SENSOR_INTERVAL=abc and MAMMO_DROP_QUIET_SECONDS=abc, which
    only the Dagster code location (or the sensor's tick) then refused."""
    result = _run(["home"], env={var: value})
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {message}\n"


def test_lineage_refuses_an_empty_as_of(settings):
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")
    for bad in ("", "NaT", "yesterday-ish"):
        result = _run(["lineage", "s1", "--as-of", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "is not a date or time" in result.output and "--as-of" in result.output
    assert _run(["lineage", "s1", "--as-of", "2030-01-01"]).exit_code == 0


def test_label_refuses_a_port_outside_tcp(settings):
    for port in ("0", "70000"):
        result = _run(["label", "--port", port])
        assert result.exit_code == 2 and "1<=x<=65535" in result.output


def test_home_env_output_survives_eval_in_a_shell(tmp_path):
    home = tmp_path / "my home $(touch pwned) 'quoted'"
    result = _run(["home", "--env"], env={"MAMMO_HOME": str(home)})
    assert result.exit_code == 0, result.output
    script = result.output + 'printf %s "$MAMMO_HOME"'
    shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert shell.stdout == str(home)
    assert not (tmp_path / "pwned").exists()


def test_explain_of_an_uncached_image_quotes_its_hospital_whole(settings):
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")  # a model and an image cache
    result = _run(["explain", "9.9.9", "--hospital", "h1"])
    assert result.exit_code == 1
    assert "Error: image 9.9.9 is not in the image cache of hospital 'h1'\n" in result.output


def test_a_file_it_cannot_write_is_a_one_line_error(settings, tmp_path):
    from mammo_pipeline.labels.store import LabelStore

    LabelStore(settings.labels_db)
    (tmp_path / "a-file").write_text("not a folder")
    result = _run(["label", "--export", str(tmp_path / "a-file" / "labels.csv")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and "a-file" in result.output and "Traceback" not in result.output
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_promote_refuses_a_hospital_this_home_does_not_know(settings):
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")
    for hospital in ("", "h9"):
        result = _run(["model", "promote", "m1", "--hospital", hospital])
        assert result.exit_code == 1, result.output
        assert f"no hospital {hospital!r}" in result.output and "known: h1" in result.output
    assert not list(settings.warehouse.glob("model_promotions/*.parquet"))
    assert _run(["model", "promote", "m1", "--hospital", "h1"]).exit_code == 0
    assert len(list(settings.warehouse.glob("model_promotions/*.parquet"))) == 1


def test_an_output_file_that_is_a_link_is_written_through_and_a_pipe_is_refused(settings, tmp_path):
    import os

    from mammo_pipeline.labels.store import LabelStore

    LabelStore(settings.labels_db)
    target, link, fifo = tmp_path / "real.csv", tmp_path / "link.csv", tmp_path / "pipe.csv"
    target.write_text("old")
    link.symlink_to(target)
    os.mkfifo(fifo)
    result = _run(["label", "--export", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.read_text().startswith("event_id,")
    for args in (["label", "--export", str(fifo)], ["explain", "1.2.3", "--out", str(fifo)]):
        refused = _run(args)
        assert refused.exit_code == 2 and "not a regular file" in refused.output, refused.output
    assert fifo.exists() and not fifo.is_file()


@pytest.mark.parametrize("args", [["model", "list"], ["model", "history"], ["query", "SELECT 1"], ["lineage", "1.2.3"]])
def test_reading_commands_refuse_a_home_that_does_not_exist(tmp_path, monkeypatch, args):
    """A user's report: with MAMMO_HOME mistyped these said 'no trained models yet', 'Tables: none yet' or 'no
    predictions yet', as if the home were empty; now the same kind of error `mammo labels stats` gives."""
    monkeypatch.setenv("MAMMO_HOME", str(tmp_path / "mamo-hmoe"))
    for var in ("MAMMO_WAREHOUSE", "MAMMO_MODELS"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "no mammo home at" in result.output and "mamo-hmoe" in result.output
    assert not (tmp_path / "mamo-hmoe").exists()  # and nothing made


def test_a_store_it_cannot_open_or_read_is_a_one_line_error(settings, tmp_path, monkeypatch):
    """A label store that is not a database, a damaged Parquet file under a view and a damaged model reference
    gave tracebacks (stop 62's probe); each is now one line naming the store."""
    junk = tmp_path / "junk.db"
    junk.write_text("not a database " * 100)
    monkeypatch.setenv("MAMMO_LABELS_DB", str(junk))
    result = _run(["label", "--port", "5990"])
    assert result.exit_code == 1 and result.output.startswith("Error: the label store (SQLite): "), result.output
    monkeypatch.delenv("MAMMO_LABELS_DB")
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")
    assert _run(["lineage", "s1"]).exit_code == 0
    next(settings.warehouse.glob("image_predictions/**/*.parquet")).write_text("not parquet")
    result = _run(["lineage", "s1"])
    assert result.exit_code == 1 and result.output.startswith("Error: the warehouse (DuckDB): "), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_damaged_model_reference_is_named_in_one_line(settings):
    from mammo_pipeline.model.ref import ModelRef

    settings.models.mkdir(parents=True, exist_ok=True)
    (settings.models / "current.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"current\.json is damaged") as info:
        ModelRef.load(settings.models)
    assert _store_fault(info.value) == "a damaged JSON file"  # so the command group says it in one line
    assert _store_fault(ValueError("a fault in this code")) is None  # whose traceback stays


@pytest.mark.parametrize(
    "args", [["demo", "--quick", "--studies", "-5"], ["demo", "--quick", "--rounds", "0"], ["convert", "x", "-j", "-1"]]
)
def test_an_option_out_of_its_range_is_a_usage_error_before_any_work(settings, args):
    result = _run(args)
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    assert not any(settings.landing.rglob("*.dcm"))


def test_home_never_prints_the_salt(settings, monkeypatch):
    """MAMMO_SALT turns a 16-character patient key back into its Patient ID by brute force: `mammo home` said it
    in clear (stop 62's probe), and `--env` would write it to whatever file its output went to."""
    monkeypatch.setenv("MAMMO_SALT", "s3cret-salt-value")
    for args in (["home"], ["home", "--env"]):
        result = _run(args)
        assert result.exit_code == 0 and "s3cret-salt-value" not in result.output, result.output
        assert "MAMMO_SALT" in result.output  # said to be set
