"""`mammo query` and `mammo lineage` through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mammo_pipeline.cli.lineage import command as lineage_command
from mammo_pipeline.cli.query import command as query_command
from mammo_pipeline_tests.test_lineage import predict_hospital, sync_labels


def test_query_prints_table_csv_and_json(settings):
    predict_hospital(settings, "h1", {"s1": 2, "s2": 1}, "m1", seed=0, run_id="run-1")
    sql = "SELECT study_instance_uid, count(*) AS n FROM image_predictions GROUP BY 1 ORDER BY 1"
    runner = CliRunner()
    table = runner.invoke(query_command, [sql])
    assert table.exit_code == 0, table.output
    assert table.output.split() == ["study_instance_uid", "n", "s1", "2", "s2", "1"]
    csv = runner.invoke(query_command, [sql, "--format", "csv"])
    assert csv.output.splitlines() == ["study_instance_uid,n", "s1,2", "s2,1"]
    rows = json.loads(runner.invoke(query_command, [sql, "--format", "json"]).output)
    assert rows == [{"study_instance_uid": "s1", "n": 2}, {"study_instance_uid": "s2", "n": 1}]


def test_query_bad_sql_is_a_clear_error(settings):
    result = CliRunner().invoke(query_command, ["SELECT * FROM no_such_table"])
    assert result.exit_code == 1
    assert "query failed" in result.output and "no_such_table" in result.output


def test_query_reads_the_reports_and_its_error_lists_every_view(settings):
    """A newcomer's report: the README sends readers to `prediction_summary`, which `mammo query` could not read
    (it is a report beside the tables), and a failed query's "Tables:" left out the *_current views."""
    import pandas as pd

    from mammo_pipeline.atomic import write_parquet

    predict_hospital(settings, "h1", {"s1": 2}, "m1", seed=0, run_id="run-1")
    write_parquet(
        pd.DataFrame({"hospital": ["h1"], "n_images": [2]}),
        settings.warehouse / "reports" / "prediction_summary.parquet",
    )
    (settings.warehouse / "reports" / "not a view!.parquet").write_bytes(b"")  # no view named from a file's whim
    result = CliRunner().invoke(query_command, ["SELECT hospital, n_images FROM prediction_summary", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["hospital,n_images", "h1,2"]
    failed = CliRunner().invoke(query_command, ["SELECT * FROM no_such_table"])
    listed = failed.output.split("Tables:", 1)[1].replace(",", " ").split()
    assert {"image_predictions", "image_predictions_current", "prediction_summary"} <= set(listed)


def test_query_help_names_every_table_and_view_the_warehouse_has(settings):
    """A user's report: `mammo query --help` listed the tables by hand and left out quarantine and
    prediction_prunes, which `mammo query "SHOW TABLES"` lists."""
    import re

    import pandas as pd

    from mammo_pipeline import schemas, warehouse

    for table, spec in schemas.TABLES.items():  # one empty file per table: every view the warehouse can have
        folder = settings.table_dir(table).joinpath(*(f"{key}=x" for key in spec.hive_keys))
        warehouse.write_table_file(table, pd.DataFrame(), folder / "a.parquet")
    warehouse.refresh_views(settings)
    shown = CliRunner().invoke(query_command, ["SHOW TABLES", "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    views = set(shown.output.split()[1:])
    assert {"quarantine", "prediction_prunes", "image_predictions_current"} <= views
    help_text = CliRunner().invoke(query_command, ["--help"]).output.split("Example:")[0]
    assert views <= set(re.findall(r"\w+", help_text))


def test_lineage_table_and_json(settings):
    predict_hospital(settings, "h1", {"s1": 2}, "m1", seed=0, run_id="run-1")
    runner = CliRunner()
    table = runner.invoke(lineage_command, ["s1"])
    assert table.exit_code == 0, table.output
    assert "model      m1  labels snap-m1" in table.output
    assert table.output.count("run run-1") == 3  # the current model line and one line per image
    assert "current    model m1  never promoted" in table.output
    assert "against ANY image at the image thresholds, 2 images)" in table.output  # a model without study points
    data = json.loads(runner.invoke(lineage_command, ["s1", "--format", "json"]).output)
    assert data["models"]["m1"]["n_train"] == 100
    assert {image["dagster_run_id"] for image in data["images"]} == {"run-1"}


def test_lineage_unknown_study_exits_1(settings):
    predict_hospital(settings, "h1", {"s1": 1}, "m1", seed=0, run_id="run-1")
    result = CliRunner().invoke(lineage_command, ["1.2.3.unknown"])
    assert result.exit_code == 1
    assert "1.2.3.unknown: not in image_predictions" in result.output


def test_lineage_of_a_withdrawn_study_exits_0_and_says_when(settings):
    """It exited 1 with "no model current now had predicted it" once the current model had predicted its hospital
    again; it now prints the withdrawal and the predictions kept in the history, in both formats."""
    predict_hospital(settings, "h1", {"s1": 1, "s2": 1}, "m1", seed=0, run_id="run-1")
    sync_labels(settings, "h1")
    predict_hospital(settings, "h1", {"s1": 1}, "m2", seed=1, run_id="run-2")
    sync_labels(settings, "h1")
    runner = CliRunner()
    table = runner.invoke(lineage_command, ["s2"])
    assert table.exit_code == 0, table.output
    assert "withdrawn  " in table.output and "last       model m1" in table.output
    assert table.output.count("run run-1") == 2  # the last model's line and its one image
    data = json.loads(runner.invoke(lineage_command, ["s2", "--format", "json"]).output)
    assert data["current"] is None and data["last"]["model_version"] == "m1"
    assert data["withdrawn"]["images"] == ["s2.0"] and data["withdrawn"]["kept_by"] == ["m1"]
