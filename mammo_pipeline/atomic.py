"""Crash-safe writes: write to a temporary name beside the target, then rename; and paths that stay put.

A killed run therefore never leaves a half-written PNG, Parquet file or model behind, and the next run
sees either the old file or the new one. Temporary names carry their owner (`run_owner()`: host, process id
and a random part), so a run cleaning up after a killed one never deletes the in-flight file of a run that
is still alive (`remove_stale_temps`). `ensure_under` refuses any path that would leave its root, so a value
read from a file (a UID, a folder name) can never make the pipeline write elsewhere.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

STALE_AFTER_S = 6 * 3600  # a temp file of an owner we cannot check (another host, old name) is stale after this
_OWNER = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]{1,40})~(?P<pid>\d{1,10})~(?P<rand>[0-9a-f]{1,32})\.tmp$")


class UnsafePath(ValueError):
    """A path built from data would leave the folder it must stay in."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def run_owner() -> str:
    """A temp-file owner tag for this process: `<host>~<pid>~<random>` (no dots, no slashes)."""
    return f"{_host()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def ensure_under(root: Path, path: Path | str) -> Path:
    """`path` (absolute, or relative to `root`) resolved; raises UnsafePath unless it lies inside `root`.

    Symlinks and `..` are resolved first, so neither `a/../../x` nor a link out of the tree passes.
    """
    root_resolved = Path(root).resolve()
    resolved = (root_resolved / path).resolve()
    if not resolved.is_relative_to(root_resolved) or resolved == root_resolved:
        raise UnsafePath(f"{path} is not inside {root}")
    return resolved


class NotRegularFile(ValueError):
    """A file to write names a device, FIFO, socket or folder, which a rename would replace."""


def regular_file_target(path: Path) -> Path:
    """Where an atomic write of a file a user named should land: the target of a symlink (so the link stays a link;
    the rename of `atomic_path` would replace it with a plain file), else `path` itself.

    Raises NotRegularFile when that exists and is not a regular file (`/dev/stdout`, a FIFO, a folder): renaming
    onto it would replace the device or the folder's entry, not write into it.
    """
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        raise NotRegularFile(f"{path} exists and is not a regular file (a device, pipe or folder): name a file")
    return target


@contextlib.contextmanager
def atomic_path(path: Path, owner: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `path` if the block succeeds.

    `owner` (from `run_owner()`) names the run in the temp name; default: this process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{owner or run_owner()}{uuid.uuid4().hex[:4]}.tmp")  # unique per write
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def scratch_dir(folder: Path, name: str = "scratch", system_temp: bool = False) -> Iterator[Path]:
    """A private working folder `folder/.<name>.<owner>.tmp/`, removed with its contents when the block ends.

    Named like a temp file, so one that a killed run leaves behind is removed by `remove_stale_temps` once its
    owner is dead, rather than filling the system temp folder. With `system_temp`, `tempfile`'s default folder
    is this one during the block (libraries such as onnxruntime's quantizer make their own temporary folders
    there); that setting is process-wide, so the block holds a lock and must not run beside other temp users.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{run_owner()}{uuid.uuid4().hex[:4]}.tmp"
    path.mkdir()
    try:
        if not system_temp:
            yield path
            return
        with _TEMPDIR_LOCK:
            before, tempfile.tempdir = tempfile.tempdir, str(path)
            try:
                yield path
            finally:
                tempfile.tempdir = before
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Write one Parquet file atomically (pyarrow, no index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow")
    return path


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by an owner tag (`<host>~<pid>~...`) still runs; None when not on this host."""
    host, _, rest = owner.partition("~")
    pid = rest.partition("~")[0]
    if host != _host() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps_of(path: Path) -> int:
    """Delete the temp files killed runs left while writing `path` (`.<name>.<owner>.tmp`, and the `.wal` DuckDB
    keeps beside a database being built), only stale ones (`is_stale`); return how many temps. For a target in
    a folder too large or too shared to sweep with `remove_stale_temps` (the warehouse root): only this file's
    temps are listed."""
    n = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if is_stale(tmp):
            tmp.unlink(missing_ok=True)
            n += 1
    for wal in path.parent.glob(f".{glob.escape(path.name)}.*.tmp.wal"):
        if not wal.with_suffix("").exists() and is_stale(wal.with_suffix("")):
            wal.unlink(missing_ok=True)
    return n


def is_stale(path: Path, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> bool:
    """A temp file whose owner on this host is dead, or (owner elsewhere or unknown) older than `max_age_s`."""
    match = _OWNER.match(path.name)
    if match:
        owner = f"{match['host']}~{match['pid']}~{match['rand']}"
        alive = owner_alive(owner)
        if alive is not None:
            return not alive
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def remove_stale_temps(folder: Path, max_age_s: float = STALE_AFTER_S) -> int:
    """Delete temporary files and `scratch_dir` folders killed runs left in `folder` (recursively); return how many.

    Only stale ones (`is_stale`): the in-flight files of a run that is still alive are left alone.
    """
    n = 0
    for tmp in sorted(folder.rglob(".*.tmp"), key=lambda p: len(p.parts)):  # a folder before what it holds
        if tmp.exists() and is_stale(tmp, max_age_s):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            n += 1
    return n
