"""The warehouse: hive-partitioned Parquet tables under `warehouse/`, queried with DuckDB in process.

Each table is a folder laid out as `schemas.TABLES` says: `hospital=<key>/` per hospital, and for the
prediction tables one more level, `model_version=<v>/`, so a new model adds a slice and never rewrites
an older model's rows. Writers replace whole files atomically (temp name, then rename), so a reader never
sees half a file. Views read every table through `schemas.select_sql`: columns cast to the table's
schema, hive keys always VARCHAR. `warehouse.duckdb` only holds views over the Parquet files (no data),
so it can be rebuilt at any time with `refresh_views`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammo_pipeline import schemas
from mammo_pipeline.atomic import atomic_path, remove_stale_temps_of, write_parquet
from mammo_pipeline.settings import Settings

TABLES = tuple(schemas.TABLES)
PARTITIONED = tuple(t for t, spec in schemas.TABLES.items() if spec.hive_keys)
FLAT = tuple(t for t, spec in schemas.TABLES.items() if not spec.hive_keys)
HISTORY = ("image_predictions", "study_predictions")  # one slice per (hospital, model_version)
# Views derived from the tables: today's answer (see promotions.current_models_sql).
CURRENT_VIEWS = {"image_predictions_current": "image_predictions", "study_predictions_current": "study_predictions"}
# The reports' view names: their file names in `settings.warehouse_reports` (prediction_summary, ...)
_VIEW_NAME = re.compile(r"[a-z][a-z0-9_]*")
SLICE_FILE = "part.parquet"


def partition_file(settings: Settings, table: str, hospital: str, name: str = "part.parquet") -> Path:
    return settings.table_dir(table, hospital) / name


def slice_dir(settings: Settings, table: str, hospital: str, model_version: str) -> Path:
    """The folder of one model's rows for one hospital in a history table."""
    return settings.table_dir(table, hospital) / f"model_version={model_version}"


def slice_file(settings: Settings, table: str, hospital: str, model_version: str) -> Path:
    return slice_dir(settings, table, hospital, model_version) / SLICE_FILE


def write_partition(
    settings: Settings, table: str, hospital: str, df: pd.DataFrame, name: str = "part.parquet"
) -> Path:
    """Replace one file of one hospital's partition atomically."""
    return write_parquet(df, partition_file(settings, table, hospital, name))


def write_table_file(table: str, df: pd.DataFrame, path: Path) -> Path:
    """Write `df` to `path` atomically with exactly the table's schema (schemas.conform raises on a misfit). A
    file that already holds exactly these rows is left as it is: a nightly run that changes nothing rewrites
    nothing (until stop 63 every run replaced each study_predictions slice)."""
    arrow = schemas.conform(table, df)
    remove_stale_temps_of(path)  # what a run killed while writing this file left (a study_predictions slice)
    if _holds(path, arrow):
        return path
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return path


def _holds(path: Path, arrow: pa.Table) -> bool:
    """Whether the Parquet file `path` holds exactly `arrow` (rows, order, columns and types)."""
    try:
        return path.exists() and pq.read_table(path).equals(arrow, check_metadata=False)
    except (OSError, pa.ArrowInvalid):  # unreadable: write it again
        return False


def write_slice(settings: Settings, table: str, hospital: str, model_version: str, df: pd.DataFrame) -> Path:
    """Replace one (hospital, model_version) slice of a history table; other models' slices stay untouched."""
    return write_table_file(table, df, slice_file(settings, table, hospital, model_version))


def read_partition(settings: Settings, table: str, hospital: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Every Parquet file of one hospital's partition as one DataFrame (empty when there is none); `columns` only,
    when given."""
    folder = settings.table_dir(table, hospital)
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)


def read_slice(settings: Settings, table: str, hospital: str, model_version: str) -> pd.DataFrame:
    """One (hospital, model_version) slice with the table's schema (absent columns as NULL)."""
    path = slice_file(settings, table, hospital, model_version)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {table} for hospital {hospital} and model {model_version}")
    with duckdb.connect() as con:
        return con.execute(_table_sql(con, table, parquet_source(path), hive=False)).df()


def table_glob(settings: Settings, table: str) -> str | None:
    """The read_parquet glob of a table (its folder escaped: `parquet_source`), or None while it has no files."""
    root = settings.table_dir(table)
    pattern = schemas.TABLES[table].glob_pattern
    return parquet_source(root, pattern) if any(root.glob(pattern)) else None


def content_version(df: pd.DataFrame, columns: list[str]) -> str:
    """A data version for Dagster (16 hex digits): the sha256 of `df`'s `columns` (those present), rows sorted,
    so a run that writes the same rows again keeps it (downstream stays fresh) and a changed, added or removed row
    changes it (downstream shows stale). Without it an asset's version followed its code version alone, and new
    images never marked what reads them stale (stop 62's probe); "empty" for no rows."""
    cols = [c for c in columns if c in df.columns]
    if df.empty or not cols:
        return "empty"
    frame = df[cols].astype(str).sort_values(cols).reset_index(drop=True)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def parquet_source(path: Path | str, pattern: str = "") -> str:
    """`path` (a file, or a folder followed by the glob `pattern`) as DuckDB's read_parquet reads it: `*`, `?` and
    `[` in the path matched as themselves (`glob.escape`: DuckDB's globs take bash-style brackets), so a
    MAMMO_HOME such as `/data/o'brien [v2]` is read as named. Quote it with `sql_string`."""
    escaped = glob.escape(os.fspath(path))
    return f"{escaped}/{pattern}" if pattern else escaped


def sql_string(text: str) -> str:
    """`text` as an SQL string literal: in single quotes, each quote inside doubled (an apostrophe in a path)."""
    return "'" + text.replace("'", "''") + "'"


def parquet_scan(table: str, files: str, hive: bool = True) -> str:
    """The read_parquet call over `files` (a `parquet_source`: one file, or a table's escaped glob) with the table's
    read options (`schemas.read_options`: hive keys typed VARCHAR) or, `hive=False`, files unioned by name."""
    options = schemas.read_options(table) if hive else "union_by_name=true"
    return f"read_parquet({sql_string(files)}, {options})"


def _table_sql(con: duckdb.DuckDBPyConnection, table: str, files: str, hive: bool = True) -> str:
    """The typed SELECT over `files` (`parquet_scan`)."""
    source = parquet_scan(table, files, hive)
    present = set(con.execute(f"SELECT * FROM {source} LIMIT 0").df().columns)
    return schemas.select_sql(table, source, present)


def _view_sqls(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, str]:
    """View name -> SELECT for every table with files, the empty promotions table, the current views and the
    reports (`settings.warehouse_reports`)."""
    from mammo_pipeline.promotions import current_rows_sql

    sqls = {}
    for table in TABLES:
        files = table_glob(settings, table)
        if files:
            sqls[table] = _table_sql(con, table, files)
    sqls.setdefault("model_promotions", schemas.empty_sql("model_promotions"))
    sqls.setdefault("prediction_prunes", schemas.empty_sql("prediction_prunes"))
    for view, table in CURRENT_VIEWS.items():
        if table in sqls and "image_predictions" in sqls:
            sqls[view] = current_rows_sql(table)
    reports = settings.warehouse_reports
    for path in sorted(reports.glob("*.parquet")) if reports.is_dir() else []:
        if _VIEW_NAME.fullmatch(path.stem):
            sqls.setdefault(path.stem, f"SELECT * FROM read_parquet({sql_string(parquet_source(path))})")
    return sqls


def connect(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per existing table (no lock on any file)."""
    con = duckdb.connect()
    if settings is not None:
        _create_views(con, _view_sqls(con, settings))
    return con


def _create_views(con: duckdb.DuckDBPyConnection, sqls: dict[str, str]) -> None:
    for view, sql in sqls.items():
        con.execute(f"CREATE VIEW {view} AS {sql}")


def views(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The views a connection has."""
    return set(_view_definitions(con))


def refresh_views(settings: Settings) -> list[str]:
    """Rewrite `warehouse.duckdb` with a view per existing table; return their names.

    The file is built under a temporary name and renamed, so concurrent refreshes never fight over
    DuckDB's single-writer lock and readers never open a half-built file. A file that already holds exactly
    these views (the same names and SQL) is left as it is: a view reads its files at query time, so a run that
    only added rows changes nothing in it, and a nightly run that found nothing new no longer rewrites it
    (backups and file watchers see no change).
    """
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    remove_stale_temps_of(settings.duckdb_path)  # a refresh killed part way
    with duckdb.connect() as con:
        sqls = _view_sqls(con, settings)
        _create_views(con, sqls)
        wanted = _view_definitions(con)
    if _definitions_in(settings.duckdb_path) != wanted:
        with atomic_path(settings.duckdb_path) as tmp:
            with duckdb.connect(str(tmp)) as con:
                _create_views(con, sqls)
            Path(f"{tmp}.wal").unlink(missing_ok=True)
    return list(sqls)


def _view_definitions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """View name -> its CREATE VIEW statement as DuckDB keeps it."""
    return dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())


def _definitions_in(path: Path) -> dict[str, str] | None:
    """The views a warehouse file holds (`_view_definitions`), or None when it is missing or cannot be opened
    read-only (another tool holds it for writing, a DuckDB storage version this library cannot read)."""
    if not path.exists():
        return None
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            return _view_definitions(con)
    except duckdb.Error:
        return None


def query(settings: Settings, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run SQL over the warehouse views and return a DataFrame."""
    with connect(settings) as con:
        return con.execute(sql, params or []).df()
