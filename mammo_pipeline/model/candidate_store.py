"""The second look's candidates of each display PNG, kept beside it in the image cache.

Cutting candidates costs about 100 CPU ms per 1024-px display image (version 10, stop 38: 95 ms to cut, 9 to
decode the PNG; `fill_holes` is about half of the cut), while inference of both networks on already cut crops
costs about 10: every model version, every
round's training, export and audit would pay it again for the same image. Candidates depend on the PNG's pixels
and `candidates.SECOND_LOOK_VERSION` only (not on any model), so they are derived data of the cache, like the
PNGs themselves: `image_cache` cuts them from the display pixels it has just rendered (no decode), and anyone
who finds them missing or stale cuts them from the PNG and keeps them.

Layout: `<folder of the display PNG>/candidates-v<SECOND_LOOK_VERSION>/<PNG stem>.npz` holding `crops`
float32 [k, CHANNELS, CROP, CROP], `centres` int64 [k, 2], `scores` float32 [k], `shape` int64 [2] (the PNG's
height, width) and the PNG's `png_mtime_ns` and `png_size` when cut: a PNG rendered again since has another
mtime, so its old candidates are never used. A new SECOND_LOOK_VERSION gets a new folder; old folders can be
deleted at any time. Stored deflated (`np.savez_compressed`, since stop 42): the 24 crops are 199 kB as float32
but hold few distinct values (affine images of the PNG's 8-bit gray levels and their 3 x 3 means), so they keep
in about 86 kB per image, a quarter of the 330-kB display PNG, for about 12 ms more per write (an eighth of
the cut) and reads of 1.7 ms instead of 1.0, bit for bit (50 images of the demo's drops; at a million images
86 GB instead of 199). Files written raw before are read as they are. Writes are atomic; a cache folder that
cannot be written to only costs the time of cutting again.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.model import candidates as cand
from mammo_pipeline.model.preprocess import _as_gray_uint8

Found = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]  # crops, centres, scores, (height, width)
# np.load parses each array's .npy header with ast.literal_eval, and CPython 3.11's AST constructor is not
# thread-safe (python/cpython#106905: "SystemError: AST constructor recursion depth mismatch" when two threads
# parse at once; seen in a demo round). A read takes 1-2 ms (inflating included), so one lock costs little next to
# the work around it (inference spends about 7 ms per image in all).
_LOAD_LOCK = threading.Lock()


def store_path(png: Path) -> Path:
    """Where the candidates of the display PNG `png` are kept (module docstring)."""
    return png.parent / f"candidates-v{cand.SECOND_LOOK_VERSION}" / f"{png.stem}.npz"


def forget(png: Path) -> None:
    """Delete the candidates kept for the display PNG `png`, of every SECOND_LOOK_VERSION (its image was withdrawn:
    `cache._delete_renditions`)."""
    for path in png.parent.glob(f"candidates-v*/{png.stem}.npz"):
        path.unlink(missing_ok=True)


def cut(gray: np.ndarray, long_side: int | None = None) -> Found:
    """`candidates.candidates` of a uint8 display image rendered for the display size `long_side`, with its
    shape."""
    crops, centres, scores = cand.candidates(gray, long_side=long_side)
    return crops, centres, scores, (int(gray.shape[0]), int(gray.shape[1]))


def _read(path: Path, stat: os.stat_result) -> Found | None:
    try:
        with _LOAD_LOCK, np.load(path) as kept:
            if int(kept["png_mtime_ns"]) != stat.st_mtime_ns or int(kept["png_size"]) != stat.st_size:
                return None
            found = kept["crops"], kept["centres"], kept["scores"], tuple(int(v) for v in kept["shape"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # missing, partial by hand, or foreign
        return None
    if found[0].shape != (cand.K, cand.CHANNELS, cand.CROP, cand.CROP):  # cut with other K or crop size
        return None
    return found  # type: ignore[return-value]


def keep(found: Found, png: Path, stat: os.stat_result | None = None) -> None:
    """Write `found` (the candidates of the display PNG `png` as it is now) to `store_path(png)`, atomically.
    An unwritable cache is not an error: the candidates are cut again next time."""
    stat = stat or png.stat()
    path = store_path(png)
    crops, centres, scores, shape = found
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            np.savez_compressed(  # few distinct values in float32 (8-bit levels, their means): 199 -> 86 kB
                out,
                crops=crops,
                centres=centres,
                scores=scores,
                shape=np.asarray(shape, dtype=np.int64),
                png_mtime_ns=np.int64(stat.st_mtime_ns),
                png_size=np.int64(stat.st_size),
            )
    except OSError:
        pass


def candidates_of_png(png: Path, long_side: int | None = None) -> Found:
    """The candidates of one display PNG rendered for the display size `long_side`: kept ones when current, else
    cut from the PNG (and kept). The kept ones lie under the PNG's folder, which is its display size's.

    Raises FileNotFoundError when the PNG is missing.
    """
    stat = png.stat()
    found = _read(store_path(png), stat)
    if found is None:
        found = cut(_as_gray_uint8(png), long_side)
        keep(found, png, stat)
    return found
