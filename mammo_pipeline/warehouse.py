"""The warehouse: hive-partitioned Parquet tables under `warehouse/`, queried with DuckDB in process.

Each table is a folder; a partitioned table has one `hospital=<key>/` folder per hospital. Writers
replace whole files atomically, so a reader never sees half a table. `warehouse.duckdb` only holds
views over the Parquet files (no data), so it can be rebuilt at any time with `refresh_views`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from mammo_pipeline.atomic import atomic_path, write_parquet
from mammo_pipeline.settings import Settings

# Tables with one folder per hospital; the others are flat folders of Parquet files.
PARTITIONED = ("dicom_index", "quarantine", "image_cache", "image_predictions", "study_predictions")
FLAT = ("labels", "model_registry")
TABLES = PARTITIONED + FLAT


def partition_file(settings: Settings, table: str, hospital: str, name: str = "part.parquet") -> Path:
    return settings.table_dir(table, hospital) / name


def write_partition(
    settings: Settings, table: str, hospital: str, df: pd.DataFrame, name: str = "part.parquet"
) -> Path:
    """Replace one file of one hospital's partition atomically."""
    return write_parquet(df, partition_file(settings, table, hospital, name))


def read_partition(settings: Settings, table: str, hospital: str) -> pd.DataFrame:
    """Every Parquet file of one hospital's partition as one DataFrame (empty when there is none)."""
    folder = settings.table_dir(table, hospital)
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def table_glob(settings: Settings, table: str) -> str | None:
    """The read_parquet glob of a table, or None while it has no files."""
    root = settings.table_dir(table)
    pattern = "*/*.parquet" if table in PARTITIONED else "*.parquet"
    return str(root / pattern) if any(root.glob(pattern)) else None


def connect(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per existing table (no lock on any file)."""
    con = duckdb.connect()
    if settings is not None:
        for table in TABLES:
            glob = table_glob(settings, table)
            if glob:
                con.execute(f"CREATE VIEW {table} AS {_select(table, glob)}")
    return con


def _select(table: str, glob: str) -> str:
    hive = "true" if table in PARTITIONED else "false"
    return f"SELECT * FROM read_parquet('{glob}', hive_partitioning={hive}, union_by_name=true)"


def refresh_views(settings: Settings) -> list[str]:
    """Rewrite `warehouse.duckdb` with a view per existing table; return their names.

    The file is built under a temporary name and renamed, so concurrent refreshes never fight over
    DuckDB's single-writer lock and readers never open a half-built file.
    """
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    made = []
    with atomic_path(settings.duckdb_path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for table in TABLES:
                glob = table_glob(settings, table)
                if glob:
                    con.execute(f"CREATE OR REPLACE VIEW {table} AS {_select(table, glob)}")
                    made.append(table)
        finally:
            con.close()
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    return made


def query(settings: Settings, sql: str) -> pd.DataFrame:
    """Run SQL over the warehouse views and return a DataFrame."""
    with connect(settings) as con:
        return con.execute(sql).df()
