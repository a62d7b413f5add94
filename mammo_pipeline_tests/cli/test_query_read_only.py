"""`mammo query` is read-only: no writes, no files outside the warehouse, no network, no ATTACH, no extensions."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.cli.query import command as query_command
from mammo_pipeline.labels.app import session_secret
from mammo_pipeline.read_only_query import run_read_only
from mammo_pipeline.schemas import IMAGE_PREDICTIONS
from mammo_pipeline.warehouse import slice_file


@pytest.fixture
def warehouse_with_secrets(settings, tmp_path):
    rows = pd.DataFrame({"sop_instance_uid": ["1.1", "1.2"], "study_instance_uid": "s1", "p_biopsy": [0.1, 0.9]})
    write_parquet(rows, slice_file(settings, "image_predictions", "h1", "v1"))  # as stored: the view types it
    settings.pseudonym_salt()
    session_secret(settings.home)
    (tmp_path / "outside.txt").write_text("outside")
    return settings


def _forbidden(settings, tmp_path) -> dict[str, str]:
    home = settings.home
    table = settings.table_dir("image_predictions", "h1")
    return {
        "copy_out": f"COPY (SELECT 1 AS x) TO '{tmp_path}/stolen.csv'",
        "copy_into_warehouse": f"COPY (SELECT 1 AS x) TO '{table}/evil.parquet'",
        "passwd": "SELECT * FROM read_text('/etc/passwd')",
        "salt": f"SELECT content FROM read_text('{home}/.salt')",
        "session_secret": f"SELECT content FROM read_text('{home}/.session_secret')",
        "salt_as_csv": f"SELECT * FROM read_csv('{home}/.salt', header=false)",
        "blob": f"SELECT * FROM read_blob('{tmp_path}/outside.txt')",
        "glob": f"SELECT * FROM glob('{home}/*')",
        "network": "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        "attach": f"ATTACH '{tmp_path}/other.duckdb' AS other",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "set_back": "SET enable_external_access = true",
        "create": "CREATE TABLE t AS SELECT 1",
        "second_statement": f"SELECT 1; COPY (SELECT 1) TO '{tmp_path}/stolen2.csv'",
        "export": f"EXPORT DATABASE '{tmp_path}/export'",
        "explain_analyze_copy": f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{table}/evil2.parquet'",
        "explain_analyze_copy_options": f"EXPLAIN (FORMAT json) COPY (SELECT 1 AS x) TO '{table}/evil3.csv'",
    }


@pytest.mark.parametrize(
    "name",
    [
        "copy_out",
        "copy_into_warehouse",
        "passwd",
        "salt",
        "session_secret",
        "salt_as_csv",
        "blob",
        "glob",
        "network",
        "attach",
        "install",
        "load",
        "set_back",
        "create",
        "second_statement",
        "export",
        "explain_analyze_copy",
        "explain_analyze_copy_options",
    ],
)
def test_forbidden_query_fails_and_changes_nothing(warehouse_with_secrets, tmp_path, name):
    settings = warehouse_with_secrets
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(query_command, [_forbidden(settings, tmp_path)[name]])
    assert result.exit_code == 1, result.output
    assert "read-only" in result.output or "Permission" in result.output or "disabled" in result.output
    salt, secret = settings.pseudonym_salt().decode(), session_secret(settings.home)
    assert salt not in result.output and secret not in result.output and "root:" not in result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere (the warehouse is below)


def test_reads_still_work_through_the_views(warehouse_with_secrets):
    sql = "WITH p AS (SELECT * FROM image_predictions) SELECT count(*) AS n FROM p"
    df = run_read_only(warehouse_with_secrets, sql)
    assert df["n"].tolist() == [2]
    described = run_read_only(warehouse_with_secrets, "DESCRIBE image_predictions")
    assert set(described["column_name"]) >= set(IMAGE_PREDICTIONS.names)  # the typed view, every column
    assert len(run_read_only(warehouse_with_secrets, "EXPLAIN SELECT * FROM image_predictions")) == 1
    assert len(run_read_only(warehouse_with_secrets, "EXPLAIN ANALYZE SELECT count(*) FROM image_predictions")) == 1
