"""The landing zone: one folder per hospital, one sub-folder per drop.

Folders whose names start with `_` or `.` are not hospitals (`mammo synth` keeps its ground truth in
`_truth/`). Hospital keys are the folder names, which must be comma-free slugs (Dagster's UI cannot
backfill keys with commas).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
READY_MARKER = "_READY"


def _visible_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def list_hospitals(landing: Path) -> list[str]:
    """Hospital keys under `landing` (valid slugs only)."""
    return [p.name for p in _visible_dirs(landing) if SLUG.match(p.name)]


def list_drops(landing: Path, hospital: str) -> list[str]:
    """Drop folder names of one hospital, sorted."""
    return [p.name for p in _visible_dirs(landing / hospital)]


def drop_is_ready(drop: Path, quiet_seconds: float, now: float | None = None) -> bool:
    """A drop is complete when it holds `_READY` or no file in it changed for `quiet_seconds`."""
    if (drop / READY_MARKER).exists():
        return True
    now = time.time() if now is None else now
    newest = max((p.stat().st_mtime for p in drop.rglob("*") if p.is_file()), default=None)
    return newest is not None and now - newest >= quiet_seconds


def iter_dicom_files(landing: Path, hospital: str, drops: list[str] | None = None):
    """(drop, path) for every file of a hospital's drops, in a stable order; skips hidden files and markers."""
    for drop in drops if drops is not None else list_drops(landing, hospital):
        root = landing / hospital / drop
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith((".", "_")):
                yield drop, path
