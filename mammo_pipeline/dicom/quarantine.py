"""Quarantine rows: files the index or the cache could not use, with the reason, so nothing is lost silently.

Both stages write the same table (`warehouse/quarantine/hospital=<h>/`): the index one file per drop
(`index-<drop>.parquet`), the cache one file (`cache.parquet`). `file_size` and `file_mtime_ns` let a re-run
skip a file that is still the same bad file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.dicom.errors import UnusableImage

DUPLICATE = "duplicate"
# another image under a SOP Instance UID already indexed (a different study, side, view or matrix): not a copy,
# so never a stand-in for the kept one; the sending system reused a UID, and one of the two images is not shown
UID_COLLISION = "uid_collision"
SCHEMA = pa.schema(
    [
        ("hospital", pa.string()),
        ("drop", pa.string()),
        ("rel_path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("file_size", pa.int64()),
        ("file_mtime_ns", pa.int64()),
        ("sop_instance_uid", pa.string()),
        ("norm_version", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)


def quarantine_row(
    *,
    hospital: str,
    drop: str,
    rel_path: str,
    stage: str,
    reason: str,
    message: str,
    file_size: int | None = None,
    file_mtime_ns: int | None = None,
    sop_instance_uid: str | None = None,
    norm_version: str | None = None,
) -> dict[str, Any]:
    """One quarantine row (stage 'index' or 'cache')."""
    return {
        "hospital": hospital,
        "drop": drop,
        "rel_path": rel_path,
        "stage": stage,
        "reason": reason,
        "message": message,
        "file_size": file_size,
        "file_mtime_ns": file_mtime_ns,
        "sop_instance_uid": sop_instance_uid,
        "norm_version": norm_version,
        "quarantined_at": datetime.now(UTC),
    }


# A file the pipeline may not read (its permissions): tried again on every run, since fixing a permission changes
# neither the file's size nor its modification time, by which the index and the cache know a file they have seen.
UNREADABLE = "unreadable"


def reason_of(exc: BaseException, default: str = "undecodable") -> str:
    """The quarantine reason of an exception: UnusableImage.reason, UNREADABLE for a PermissionError, else
    `default`."""
    if isinstance(exc, PermissionError):
        return UNREADABLE
    if isinstance(exc, UnusableImage):
        return getattr(exc, "reason", None) or default
    return default


def quarantine_rows(exc: BaseException, default_reason: str = "undecodable", **fields: Any) -> list[dict[str, Any]]:
    """The quarantine rows for one failed file: reason from the exception, message naming the file."""
    message = str(exc) or type(exc).__name__
    return [quarantine_row(reason=reason_of(exc, default_reason), message=message, **fields)]


def write_quarantine(rows: list[dict[str, Any]] | pd.DataFrame, path: Path) -> Path:
    """Write quarantine rows to one Parquet file atomically, with the fixed schema."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    table = pa.Table.from_pylist([{k: _none(r.get(k)) for k in SCHEMA.names} for r in records], schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_quarantine_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one quarantine file (none when it is missing), types as written."""
    return pq.read_table(path).to_pylist() if path.exists() else []


def _none(value: Any) -> Any:
    """pandas NaN/NaT -> None so pyarrow accepts it in typed columns."""
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):
        return value
