import duckdb
import pandas as pd

from mammo_pipeline import warehouse


def test_views_cover_partitioned_and_flat_tables(settings):
    warehouse.write_partition(settings, "image_predictions", "h1", pd.DataFrame({"sop_instance_uid": ["a", "b"]}))
    warehouse.write_partition(settings, "image_predictions", "h2", pd.DataFrame({"sop_instance_uid": ["c"]}))
    (settings.table_dir("model_registry")).mkdir(parents=True)
    pd.DataFrame({"model_version": ["m1"]}).to_parquet(settings.table_dir("model_registry") / "m1.parquet")

    made = warehouse.refresh_views(settings)
    assert made == ["image_predictions", "model_registry"]
    counts = warehouse.query(settings, "SELECT hospital, count(*) AS n FROM image_predictions GROUP BY 1 ORDER BY 1")
    assert counts.to_dict("list") == {"hospital": ["h1", "h2"], "n": [2, 1]}
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:  # the file other tools open
        assert con.execute("SELECT count(*) FROM image_predictions").fetchone() == (3,)
        assert con.execute("SELECT model_version FROM model_registry").fetchone() == ("m1",)


def test_read_partition_of_a_missing_table_is_empty(settings):
    assert warehouse.read_partition(settings, "dicom_index", "nowhere").empty
    assert warehouse.table_glob(settings, "dicom_index") is None


def test_refresh_views_replaces_the_file_atomically(settings):
    warehouse.refresh_views(settings)
    warehouse.write_partition(settings, "quarantine", "h1", pd.DataFrame({"reason": ["not_dicom"]}))
    assert warehouse.refresh_views(settings) == ["quarantine"]
    assert [p.name for p in settings.warehouse.iterdir() if p.name.startswith(".")] == []
