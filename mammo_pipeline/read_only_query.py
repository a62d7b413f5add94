"""Read-only SQL over the warehouse for people (`mammo query`): SELECT only, no file, network or extension access.

`warehouse.connect` is for the pipeline's own queries; a person's SQL goes through `read_only_connection`, which
takes the same views and then locks DuckDB down before any user text runs:

- `enable_external_access=false` with `allowed_directories` = the warehouse's table and report folders, so the views can
  read their Parquet files but `read_text('/etc/passwd')`, `read_csv('https://...')`, `glob`, `ATTACH` and
  reading MAMMO_HOME/.salt or .session_secret are refused;
- `autoinstall_known_extensions`/`autoload_known_extensions` off and no external extensions (`INSTALL`, `LOAD`);
- no spill directory (`temp_directory=''`), then `lock_configuration=true` so SQL cannot `SET` any of it back.

On top, `run_read_only` accepts only SELECT-like statements (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE,
and EXPLAIN of a SELECT): `COPY ... TO` (also inside `EXPLAIN ANALYZE`, which runs its statement) could otherwise
write into an allowed table folder, and `CREATE`/`SET`/`PRAGMA`/`CALL` have no business in a read-only query.
"""

from __future__ import annotations

import re

import duckdb
import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.settings import Settings

_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)
ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class ReadOnlyViolation(ValueError):
    """The SQL holds a statement that is not a read (COPY, ATTACH, INSTALL, SET, CREATE, ...)."""


def read_only_connection(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the warehouse views, file/network/extension access off and locked."""
    con = warehouse.connect(settings)
    tables = [settings.table_dir(table) for table in warehouse.TABLES]
    folders = sorted({f"{folder.resolve()}/" for folder in [*tables, settings.warehouse_reports]})
    listed = ", ".join("'" + folder.replace("'", "''") + "'" for folder in folders)
    for statement in (
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        "SET temp_directory = ''",
        f"SET allowed_directories = [{listed}]",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    """The parsed statements of `sql`; raises ReadOnlyViolation naming the first one that is not a read."""
    statements = con.extract_statements(sql)
    if not statements:
        raise ReadOnlyViolation("no SQL statement given")
    for statement in statements:
        if statement.type == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs its statement: check that one
            inner = _EXPLAIN.sub("", statement.query, count=1)
            if not inner.strip() or any(s.type != duckdb.StatementType.SELECT for s in con.extract_statements(inner)):
                raise ReadOnlyViolation(
                    f"mammo query is read-only: only EXPLAIN of a SELECT ({statement.query[:60]!r})"
                )
        elif statement.type not in ALLOWED_STATEMENTS:
            shown = statement.query.strip()[:60]
            raise ReadOnlyViolation(f"mammo query is read-only: {statement.type.name} is refused ({shown!r})")
    return statements


def run_read_only(settings: Settings, sql: str) -> pd.DataFrame:
    """Run read-only SQL over the warehouse views; the last statement's result as a DataFrame.

    Raises ReadOnlyViolation for a non-read statement and duckdb.Error (PermissionException for file access
    outside the warehouse) for the rest.
    """
    with read_only_connection(settings) as con:
        statements = check_read_only(con, sql)
        for statement in statements[:-1]:
            con.execute(statement.query)
        return con.execute(statements[-1].query).df()
