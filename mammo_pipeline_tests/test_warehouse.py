import duckdb
import pandas as pd
import pytest

from mammo_pipeline import schemas, warehouse

# Folder names DuckDB would otherwise type as BIGINT, DATE, DATE 9999-12-31 and BIGINT 42.
AWKWARD = ["1001", "2024-01-05", "inf", "0042"]


def _slice(settings, hospital: str, sops: list[str], model: str = "m1") -> None:
    df = pd.DataFrame({"sop_instance_uid": sops, "hospital": hospital, "model_version": model})
    warehouse.write_slice(settings, "image_predictions", hospital, model, df)


def test_views_cover_partitioned_and_flat_tables(settings):
    _slice(settings, "h1", ["a", "b"])
    _slice(settings, "h2", ["c"])
    (settings.table_dir("model_registry")).mkdir(parents=True)
    pd.DataFrame({"model_version": ["m1"]}).to_parquet(settings.table_dir("model_registry") / "m1.parquet")

    made = warehouse.refresh_views(settings)
    assert made == [
        "image_predictions",
        "model_registry",
        "model_promotions",
        "prediction_prunes",
        "image_predictions_current",
    ]
    counts = warehouse.query(settings, "SELECT hospital, count(*) AS n FROM image_predictions GROUP BY 1 ORDER BY 1")
    assert counts.to_dict("list") == {"hospital": ["h1", "h2"], "n": [2, 1]}
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:  # the file other tools open
        assert con.execute("SELECT count(*) FROM image_predictions").fetchone() == (3,)
        assert con.execute("SELECT model_version FROM model_registry").fetchone() == ("m1",)


def test_views_are_typed_by_the_schema_and_hive_keys_stay_text(settings):
    for hospital in AWKWARD:
        _slice(settings, hospital, [f"{hospital}.1"], model="20240105")  # a model version that looks like a date
    with warehouse.connect(settings) as con:
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?", ["image_predictions"]
            ).fetchall()
        )
        assert types["hospital"] == types["model_version"] == "VARCHAR"
        assert types["p_biopsy"] == "FLOAT" and types["needs_review"] == "BOOLEAN"  # absent in the file: NULL
        assert list(types) == schemas.IMAGE_PREDICTIONS.names
        for hospital in AWKWARD:
            rows = con.execute(
                "SELECT hospital, model_version FROM image_predictions WHERE hospital IN (SELECT ?)", [hospital]
            ).fetchall()
            assert rows == [(hospital, "20240105")]


@pytest.mark.parametrize("name", ["o'brien", "mammo [v2]", "run*"])
def test_a_home_whose_path_holds_a_quote_or_glob_characters_is_read_as_named(tmp_path, name):
    """The tables' paths go into DuckDB's SQL and globs: an apostrophe ended the string literal (a ParserException)
    and `[v2]` was a character class that matched no file (stop 62's probe); both are now escaped."""
    from mammo_pipeline.settings import Settings

    settings = Settings.under(tmp_path / name).ensure_dirs()
    _slice(settings, "h1", ["a", "b"])
    assert warehouse.refresh_views(settings)[0] == "image_predictions"
    assert warehouse.query(settings, "SELECT count(*) AS n FROM image_predictions")["n"].iat[0] == 2
    assert list(warehouse.read_slice(settings, "image_predictions", "h1", "m1")["sop_instance_uid"]) == ["a", "b"]


def test_write_refuses_a_frame_that_does_not_fit_the_schema(settings):
    with pytest.raises(schemas.SchemaError, match="not in its schema"):
        warehouse.write_slice(settings, "image_predictions", "h1", "m1", pd.DataFrame({"surprise": [1]}))
    with pytest.raises(schemas.SchemaError, match="p_biopsy"):
        warehouse.write_slice(settings, "image_predictions", "h1", "m1", pd.DataFrame({"p_biopsy": ["high"]}))
    assert not settings.table_dir("image_predictions").exists() or not any(
        settings.table_dir("image_predictions").rglob("*.parquet")
    )


def test_read_partition_of_a_missing_table_is_empty(settings):
    assert warehouse.read_partition(settings, "dicom_index", "nowhere").empty
    assert warehouse.table_glob(settings, "dicom_index") is None


def test_refresh_views_removes_what_a_killed_refresh_left(settings):
    """A refresh killed while building `.warehouse.duckdb.<owner>.tmp` left it (and its WAL) for good: no later
    run swept the warehouse root (found by stop 63's probe)."""
    import subprocess
    import sys

    from mammo_pipeline.atomic import run_owner

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{run_owner().split('~')[0]}~{dead.stdout.strip()}~ab12"
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    left = [
        settings.warehouse / f".warehouse.duckdb.{owner}.tmp",
        settings.warehouse / f".warehouse.duckdb.{owner}.tmp.wal",
    ]
    for path in left:
        path.write_bytes(b"half a database")
    warehouse.refresh_views(settings)
    assert not [p for p in left if p.exists()]
    assert settings.duckdb_path.exists()


def test_refresh_views_replaces_the_file_atomically(settings):
    warehouse.refresh_views(settings)
    warehouse.write_partition(settings, "quarantine", "h1", pd.DataFrame({"reason": ["not_dicom"]}))
    assert warehouse.refresh_views(settings) == ["quarantine", "model_promotions", "prediction_prunes"]
    assert [p.name for p in settings.warehouse.iterdir() if p.name.startswith(".")] == []


def test_refresh_views_keeps_a_file_that_already_holds_its_views(settings):
    """Every asset refreshes the views, and each refresh replaced `warehouse.duckdb`, so a nightly run that found
    nothing new still changed the file (stop 63's leftover): now only a change of a view's name or SQL does."""
    _slice(settings, "h1", ["a"])
    warehouse.refresh_views(settings)
    before = settings.duckdb_path.stat()
    _slice(settings, "h2", ["b"])  # more files under the same glob: the views read them at query time
    assert warehouse.refresh_views(settings)[0] == "image_predictions"
    after = settings.duckdb_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM image_predictions").fetchone() == (2,)

    warehouse.write_partition(settings, "quarantine", "h1", pd.DataFrame({"reason": ["not_dicom"]}))
    assert "quarantine" in warehouse.refresh_views(settings)  # a new table: a new view, a new file
    assert settings.duckdb_path.stat().st_ino != before.st_ino
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (1,)


def test_refresh_views_rebuilds_a_file_it_cannot_read(settings):
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    settings.duckdb_path.write_bytes(b"not a database")
    _slice(settings, "h1", ["a"])
    warehouse.refresh_views(settings)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM image_predictions").fetchone() == (1,)
