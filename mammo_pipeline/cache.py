"""The image cache: a display PNG and a model-size PNG per usable image, and the `image_cache` manifest.

PNGs live at `cache/<hospital>/<NORM_VERSION>/<size>/<sop_instance_uid>.png`, so a new normalization writes
beside the old one instead of mixing with it. Each image is rendered once for both sizes in a worker process
that writes its own PNGs and returns only a few numbers, so memory stays flat however large the partition.
Every write is atomic; an image whose source (size, mtime) and NORM_VERSION are unchanged and whose PNGs
exist is skipped, so a killed run resumes where it stopped. Images that cannot be rendered are quarantined
(`quarantine/hospital=<h>/cache.parquet`) and stay skipped until their file or NORM_VERSION changes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mammo_pipeline.atomic import atomic_path, remove_stale_temps
from mammo_pipeline.dicom.normalize import NORM_VERSION, render
from mammo_pipeline.dicom.quarantine import quarantine_rows, read_quarantine_rows, write_quarantine
from mammo_pipeline.dicom.source_paths import redact
from mammo_pipeline.dicom.source_paths import resolve as resolve_source
from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings

INDEX_COLUMNS = [
    "sop_instance_uid",
    "study_instance_uid",
    "patient_key",
    "drop",
    "rel_path",
    "view_position",
    "laterality",
    "meta_mag",
    "meta_spot",
    "for_processing",
    "file_size",
    "file_mtime_ns",
]
MANIFEST_EVERY = 500  # images between manifest writes, so a crash loses little bookkeeping
PNG_COMPRESS_LEVEL = 3  # zlib level: most of level 9's size at a fraction of its time

_STR, _I64, _BOOL = pa.string(), pa.int64(), pa.bool_()
SCHEMA = pa.schema(
    [
        ("hospital", _STR),
        ("sop_instance_uid", _STR),
        ("study_instance_uid", _STR),
        ("patient_key", _STR),
        ("drop", _STR),
        ("rel_path", _STR),
        ("view_position", _STR),
        ("laterality", _STR),
        ("meta_mag", _BOOL),
        ("meta_spot", _BOOL),
        ("display_png", _STR),
        ("model_png", _STR),
        ("norm_version", _STR),
        ("source_size", _I64),
        ("source_mtime_ns", _I64),
        ("voi_method", _STR),
        ("fallback_reason", _STR),
        ("inverted", _BOOL),
        ("width", _I64),
        ("height", _I64),
        ("display_width", _I64),
        ("display_height", _I64),
        ("cached_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class CacheResult:
    """What one `cache_hospital` run did."""

    hospital: str
    images: int = 0  # For Presentation images in the index
    for_processing: int = 0  # For Processing images skipped (never displayed)
    new: int = 0  # images rendered this run
    unchanged: int = 0  # images whose PNGs were already current
    quarantined: dict[str, int] = field(default_factory=dict)  # newly quarantined this run, by reason
    still_quarantined: int = 0  # skipped: quarantined before, file and NORM_VERSION unchanged
    rows: int = 0  # manifest rows after the run
    seconds: float = 0.0
    manifest_path: Path | None = None
    quarantine_path: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.new / self.seconds if self.seconds > 0 else 0.0


class _Task(NamedTuple):
    sop_instance_uid: str
    source: str
    display_png: str
    model_png: str
    display_size: int
    model_size: int


def png_path(hospital: str, sop_instance_uid: str, size: int, norm_version: str | None = None) -> str:
    """Where a rendition lives, relative to `cache/` (current NORM_VERSION unless given)."""
    return f"{hospital}/{norm_version or NORM_VERSION}/{size}/{sop_instance_uid}.png"


def manifest_path(settings: Settings, hospital: str) -> Path:
    return settings.table_dir("image_cache", hospital) / "manifest.parquet"


def cache_quarantine_path(settings: Settings, hospital: str) -> Path:
    return settings.table_dir("quarantine", hospital) / "cache.parquet"


def cache_hospital(settings: Settings, hospital: str, progress: ProgressFn | None = None) -> CacheResult:
    """Render every usable, not yet cached image of one hospital; see the module docstring."""
    start = time.monotonic()
    result = CacheResult(hospital, manifest_path=manifest_path(settings, hospital))
    result.quarantine_path = cache_quarantine_path(settings, hospital)
    for folder in (settings.cache / hospital, settings.table_dir("image_cache", hospital)):
        if folder.exists():
            remove_stale_temps(folder)

    index = _read_index(settings, hospital)
    processing = index["for_processing"].fillna(False).astype(bool)
    result.for_processing = int(processing.sum())
    index = index[~processing].drop_duplicates("sop_instance_uid")
    result.images = len(index)

    old = {r["sop_instance_uid"]: r for r in _read_rows(result.manifest_path)}
    old_quarantine = {q["rel_path"]: q for q in read_quarantine_rows(result.quarantine_path)}
    done: dict[str, dict[str, Any]] = {}  # sop -> manifest row (carried or new)
    quarantine: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    for image in index.to_dict("records"):
        sop = image["sop_instance_uid"]
        prior, bad = old.get(sop), old_quarantine.get(image["rel_path"])
        if prior is not None and _is_current(prior, image, settings.cache):
            done[sop] = prior
        elif bad is not None and _same_source(bad, image) and bad.get("norm_version") == NORM_VERSION:
            quarantine.append(bad)
        else:
            todo.append(image)
    result.unchanged, result.still_quarantined = len(done), len(quarantine)

    by_sop = {image["sop_instance_uid"]: image for image in todo}
    reasons: Counter[str] = Counter()
    outcomes = imap_unordered(
        _render_one,
        _tasks(settings, hospital, todo),
        workers=settings.n_workers,
        dask_scheduler=settings.dask_scheduler,
        chunksize=4,
    )
    for n, outcome in enumerate(outcomes, start=1):
        image = by_sop[outcome["sop_instance_uid"]]
        if outcome["ok"]:
            done[image["sop_instance_uid"]] = _manifest_row(settings, hospital, image, outcome)
            result.new += 1
        else:
            row = _quarantine_row(hospital, image, outcome)
            quarantine.append(row)
            reasons[row["reason"]] += 1
        if progress:
            progress(n, len(todo))
        if n % MANIFEST_EVERY == 0:
            _write_outputs(result, done, quarantine)
    if progress and not todo:
        progress(0, 0)
    _write_outputs(result, done, quarantine)
    result.quarantined = dict(reasons)
    result.rows = len(done)
    result.seconds = time.monotonic() - start
    return result


def read_manifest(settings: Settings, hospital: str) -> pd.DataFrame:
    """The image_cache manifest of one hospital (empty when none was written)."""
    path = manifest_path(settings, hospital)
    return pq.read_table(path).to_pandas() if path.exists() else pd.DataFrame(columns=SCHEMA.names)


def _read_index(settings: Settings, hospital: str) -> pd.DataFrame:
    """The index columns the cache needs (not the whole header row), so memory stays small per image."""
    files = sorted(settings.table_dir("dicom_index", hospital).glob("*.parquet"))
    frames = [pq.read_table(f, columns=INDEX_COLUMNS).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)


def _tasks(settings: Settings, hospital: str, todo: list[dict[str, Any]]) -> Iterator[_Task]:
    for image in todo:
        sop = image["sop_instance_uid"]
        yield _Task(
            sop,
            str(resolve_source(settings, hospital, image["rel_path"])),
            str(settings.cache / png_path(hospital, sop, settings.display_size)),
            str(settings.cache / png_path(hospital, sop, settings.model_size)),
            settings.display_size,
            settings.model_size,
        )


def _render_one(task: _Task) -> dict[str, Any]:
    """Render one image to both PNGs in a worker; return only small metadata, never pixels. Never raises."""
    try:
        rendition = render(Path(task.source), sizes=(task.display_size, task.model_size))
        display = rendition.images[task.display_size]
        _write_png(display, Path(task.display_png))
        _write_png(rendition.images[task.model_size], Path(task.model_png))
        height, width = (int(v) for v in tuple(rendition.source_shape)[:2])
        return {
            "ok": True,
            "sop_instance_uid": task.sop_instance_uid,
            "voi_method": rendition.voi_method,
            "fallback_reason": rendition.fallback_reason,
            "inverted": bool(rendition.inverted),
            "width": width,
            "height": height,
            "display_width": int(display.shape[1]),
            "display_height": int(display.shape[0]),
        }
    except Exception as exc:  # quarantined by the caller with its reason; one image never fails the partition
        row = quarantine_rows(exc, "undecodable", hospital="", drop="", rel_path="", stage="cache")[0]
        message = row["message"] if task.source in row["message"] else f"{task.source}: {row['message']}"
        return {
            "ok": False,
            "sop_instance_uid": task.sop_instance_uid,
            "reason": row["reason"],
            "message": message,
            "source": task.source,
        }


def _write_png(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _same_source(row: dict[str, Any], image: dict[str, Any]) -> bool:
    size = row.get("source_size", row.get("file_size"))
    mtime = row.get("source_mtime_ns", row.get("file_mtime_ns"))
    return (size, mtime) == (image["file_size"], image["file_mtime_ns"])


def _is_current(prior: dict[str, Any], image: dict[str, Any], cache: Path) -> bool:
    return (
        _same_source(prior, image)
        and prior["norm_version"] == NORM_VERSION
        and (cache / prior["display_png"]).exists()
        and (cache / prior["model_png"]).exists()
    )


def _manifest_row(settings: Settings, hospital: str, image: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    sop = image["sop_instance_uid"]
    keep = ("study_instance_uid", "patient_key", "drop", "rel_path", "view_position", "laterality")
    row = {k: image.get(k) for k in keep}
    row.update({k: outcome[k] for k in SCHEMA.names if k in outcome})
    return row | {
        "hospital": hospital,
        "sop_instance_uid": sop,
        "meta_mag": _optional_bool(image.get("meta_mag")),
        "meta_spot": _optional_bool(image.get("meta_spot")),
        "display_png": png_path(hospital, sop, settings.display_size),
        "model_png": png_path(hospital, sop, settings.model_size),
        "norm_version": NORM_VERSION,
        "source_size": int(image["file_size"]),
        "source_mtime_ns": int(image["file_mtime_ns"]),
        "cached_at": datetime.now(UTC),
    }


def _quarantine_row(hospital: str, image: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "hospital": hospital,
        "drop": image["drop"],
        "rel_path": image["rel_path"],
        "stage": "cache",
        "reason": outcome["reason"],
        "message": redact(outcome["message"], outcome.get("source", ""), image["rel_path"]),
        "file_size": int(image["file_size"]),
        "file_mtime_ns": int(image["file_mtime_ns"]),
        "sop_instance_uid": image["sop_instance_uid"],
        "norm_version": NORM_VERSION,
        "quarantined_at": datetime.now(UTC),
    }


def _write_outputs(result: CacheResult, done: dict[str, dict[str, Any]], quarantine: list[dict[str, Any]]) -> None:
    rows = sorted(done.values(), key=lambda r: r["sop_instance_uid"])
    table = pa.Table.from_pylist([{k: _plain(r.get(k)) for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    assert result.manifest_path is not None and result.quarantine_path is not None
    with atomic_path(result.manifest_path) as tmp:
        pq.write_table(table, tmp)
    write_quarantine(quarantine, result.quarantine_path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if path.exists() else []


def _optional_bool(value: Any) -> bool | None:
    return None if value is None or pd.isna(value) else bool(value)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python, pandas' missing markers (NaN, NA, NaT) -> None, for pyarrow's typed columns."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    return value
