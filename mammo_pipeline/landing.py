"""The landing zone: one folder per hospital, one sub-folder per drop.

Folders whose names start with `_` or `.` are not hospitals (`mammo synth` keeps its ground truth in
`_truth/`). Hospital keys are the folder names, which must be comma-free slugs (Dagster's UI cannot
backfill keys with commas).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
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


def iter_dicom_files(landing: Path, hospital: str, drops: list[str] | None = None) -> Iterator[tuple[str, Path]]:
    """(drop, path) for every file of a hospital's drops, in a stable order; skips hidden files and markers."""
    for drop, path, _, _ in iter_dicom_stats(landing, hospital, drops):
        yield drop, Path(path)


def iter_dicom_stats(
    landing: Path, hospital: str, drops: list[str] | None = None
) -> Iterator[tuple[str, str, int, int]]:
    """(drop, path, size in bytes, mtime_ns) for every file of a hospital's drops: regular files (symlinks to them
    too) in every folder below the drop, symlinked folders not entered, names starting with `.` or `_` skipped,
    in path order (component by component, as pathlib sorts). One `os.scandir` per folder and one stat per file,
    as indexing a drop of 10^5 files must not spend its time in pathlib."""
    for drop in drops if drops is not None else list_drops(landing, hospital):
        found: list[tuple[tuple[str, ...], str, os.stat_result]] = []
        root = os.fspath(landing / hospital / drop)
        if os.path.isdir(root):  # as rglob: a missing drop holds nothing
            _scan(root, (), found)
        found.sort(key=lambda entry: entry[0])
        for _, path, info in found:
            yield drop, path, info.st_size, info.st_mtime_ns


def _scan(folder: str, parts: tuple[str, ...], found: list[tuple[tuple[str, ...], str, os.stat_result]]) -> None:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except PermissionError:  # as pathlib's rglob: an unreadable folder holds nothing
        return
    for entry in entries:
        key = (*parts, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                _scan(entry.path, key, found)
                continue
            if entry.name.startswith((".", "_")):
                continue
            info = entry.stat()  # follows a symlink, as Path.is_file does
        except OSError:  # vanished, or a broken symlink: not a file
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((key, entry.path, info))
