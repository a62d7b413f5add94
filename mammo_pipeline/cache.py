"""The image cache: a display PNG and a model-size PNG per usable image, and the `image_cache` manifest.

PNGs live at `cache/<hospital>/<NORM_VERSION>/<size>/<key>.png`, so a new normalization writes beside the old
one instead of mixing with it (`cache_prune` deletes the old files once nothing names them). `<key>` is the SOP
Instance UID only when it is a valid DICOM UID (digits and dots, at most 64 characters), else a hash of hospital
and UID (`safe_key`): no value read from a file ever becomes a path, and every path written is checked to stay
under its root (`atomic.ensure_under`).

Each image is rendered once for both sizes in a worker process that writes its own PNGs and returns only a
few numbers, so memory stays flat however large the partition. Every write is atomic. An image is skipped
("unchanged") only when its manifest row records the same source (rel_path, size, mtime), a rendition the current
NORM_VERSION would make (`normalize.rendition_current`: an upgrade that changes one VOI step re-renders only the
images that took it), and PNGs whose mtime is the one recorded when they were written. Each finished image is appended
at once to a per-run journal beside the manifest (`.journal-<owner>.jsonl`), so a run killed at any point
(even `kill -9`) resumes with only the missing images; the journal is folded into `manifest.parquet` every
MANIFEST_EVERY images and at the end, under a lock. One run renders a hospital at a time (`RUN_LOCK`; a
second run waits for the first); should two still overlap (a file system whose locks do not hold), folding
merges what each wrote, and temp files carry their run's owner tag and are only cleaned when their owner is
dead (or, on another host, when old), so neither deletes the other's in-flight files. Images that cannot be rendered are
quarantined (`quarantine/hospital=<h>/cache.parquet`) and stay skipped until their file or NORM_VERSION changes
(reason `source_missing`, a file that left the landing folder after it was indexed, is tried again each run, as is
`source_changed`, a file replaced or rewritten since it was indexed: its pixels are not the indexed image's, so it
is not rendered under that image's SOP Instance UID until dicom_index has read it again; a rendition made before
is kept meanwhile, `_kept_without_source`). An image that left the index (its file deleted from its drop, or
replaced there by another image: withdrawn, typically a patient's opt-out) loses its manifest row, and its PNGs and
second-look candidates are deleted once the manifest without it is written (`_fold`). A file overwritten by one the
index cannot read does not take its image out of the index (`dicom.index`), so the image keeps its rendition.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mammo_pipeline.atomic import UnsafePath, atomic_path, ensure_under, owner_alive, remove_stale_temps, run_owner
from mammo_pipeline.dicom.normalize import NORM_VERSION, REFERENCE_FIELD_MM, AtPitch, render, rendition_current
from mammo_pipeline.dicom.quarantine import SCHEMA as QUARANTINE_SCHEMA
from mammo_pipeline.dicom.quarantine import UNREADABLE, quarantine_rows, read_quarantine_rows, write_quarantine
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
    "image_kind",  # 2d, synthesized_2d, digitized_film, ... (dicom.headers.classify); absent in older indexes
]
RUN_LOCK = ".run.lock"  # held by a cache run of the hospital from start to end (`cache_hospital`)
# the renditions of withdrawn images still to delete: written before the manifest that drops their rows, removed
# once they are gone, so a run killed in between leaves the next one a list and not orphaned PNGs (`_fold`)
WITHDRAWN_FILES = ".withdrawn.jsonl"
MANIFEST_EVERY = 2000  # images between folding the journals into manifest.parquet (each fold rereads it)
PNG_COMPRESS_LEVEL = 3  # zlib level: most of level 9's size at a fraction of its time

_STR, _I64, _F64, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
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
        ("image_kind", _STR),
        ("meta_mag", _BOOL),
        ("meta_spot", _BOOL),
        ("display_png", _STR),
        ("model_png", _STR),
        ("norm_version", _STR),
        ("source_size", _I64),
        ("source_mtime_ns", _I64),
        ("display_png_mtime_ns", _I64),  # as written by this cache: a PNG replaced since is rendered again
        ("model_png_mtime_ns", _I64),
        ("voi_method", _STR),
        ("fallback_reason", _STR),
        ("padding_trimmed", _STR),  # the frame of padding cut away (`Rendition.trimmed`), null when none
        ("display_mm_per_px", _F64),  # mm a display pixel spans (`Rendition.mm_per_px`), null: no pixel spacing
        ("inverted", _BOOL),
        ("width", _I64),
        ("height", _I64),
        ("display_width", _I64),
        ("display_height", _I64),
        ("cached_at", pa.timestamp("us", tz="UTC")),
    ]
)


SOURCE_MISSING = (
    "the file is no longer where the index found it (moved or removed from the landing folder after it was "
    "indexed); it is rendered again once dicom_index has seen it back"
)
SOURCE_CHANGED = (
    "the file changed since it was indexed (its size or modification time differ: replaced or rewritten), so its "
    "pixels may be another image's; it is rendered once dicom_index has read it again"
)
RETRIED = frozenset({"source_missing", "source_changed", UNREADABLE})  # quarantine reasons tried again every run


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
    # not current, but the file the index read is no longer there to render again (left landing, or overwritten
    # since): the rendition they have stays (`_kept_without_source`)
    kept_without_source: int = 0
    withdrawn: int = 0  # manifest rows dropped: their image left the index (its file deleted from its drop); its
    # PNGs and second-look candidates are deleted with them (`_delete_renditions`)
    # the SOP Instance UIDs whose renditions this run deleted (its withdrawals, and a killed run's list): for the
    # label store
    withdrawn_sops: list[str] = field(default_factory=list)
    rows: int = 0  # manifest rows after the run
    seconds: float = 0.0
    waited_s: float = 0.0  # spent waiting for another run of the same hospital to finish (`_locked`)
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
    owner: str  # temp-file owner tag of the run (atomic.run_owner)
    label: str  # how messages name the file: the index's rel_path, never the resolved source path
    alternates: tuple[tuple[str, str, int | None, int | None], ...] = ()  # the other copies (`other_copies`):
    # (source, label, file_size, file_mtime_ns) of each
    file_size: int | None = None  # what the index read: a file that differs now is not rendered (`_render_copy`)
    file_mtime_ns: int | None = None


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 §9.1: digits, dots, no leading zeros
UID_MAX = 64


def valid_uid(value: object) -> bool:
    """Whether `value` is a valid DICOM UID (PS3.5 §9.1): digit components without leading zeros, ≤ 64 chars."""
    return isinstance(value, str) and len(value) <= UID_MAX and _UID.fullmatch(value) is not None


def safe_key(hospital: str, sop_instance_uid: str) -> str:
    """The file-name stem for one image: the UID when valid, else `h-` + a SHA-256 of hospital and UID.

    Never a raw header value: a UID like `../../x` or one with a slash becomes a 32-hex-digit hash.
    """
    if valid_uid(sop_instance_uid):
        return sop_instance_uid
    digest = hashlib.sha256(f"{hospital}\0{sop_instance_uid}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"h-{digest[:32]}"


def png_path(hospital: str, sop_instance_uid: str, size: int, norm_version: str | None = None) -> str:
    """Where a rendition lives, relative to `cache/` (current NORM_VERSION unless given); see `safe_key`."""
    return f"{hospital}/{norm_version or NORM_VERSION}/{size}/{safe_key(hospital, sop_instance_uid)}.png"


def source_path(settings: Settings, hospital: str, rel_path: str) -> Path:
    """The DICOM file behind an index row's pseudonymized `rel_path`, checked to lie inside the landing folder.

    The one place the cache turns an index row into a file to read (`dicom.source_paths.resolve`). The check is
    on the path as written, `..` removed, not on where symlinks lead: the index follows a hospital or drop folder
    linked in from a mount (landing/<hospital> -> /sftp/<hospital>, instead of copying terabytes) and a linked file,
    and what it indexed the cache must read (a link resolved here took every such image for one leaving landing).

    Raises ValueError when the path would leave the landing folder, KeyError when no lookup knows it.
    """
    root = Path(os.path.abspath(settings.landing))
    path = Path(os.path.abspath(resolve_source(settings, hospital, rel_path)))  # abspath: `..` gone, links kept
    if not path.is_relative_to(root / hospital):
        raise UnsafePath(f"{rel_path} is not inside {settings.landing / hospital}")
    return path


def manifest_path(settings: Settings, hospital: str) -> Path:
    return settings.table_dir("image_cache", hospital) / "manifest.parquet"


def cache_quarantine_path(settings: Settings, hospital: str) -> Path:
    return settings.table_dir("quarantine", hospital) / "cache.parquet"


def cache_hospital(
    settings: Settings, hospital: str, progress: ProgressFn | None = None, on_wait: Callable[[str], None] | None = None
) -> CacheResult:
    """Render every usable, not yet cached image of one hospital; see the module docstring.

    One run per hospital at a time: a run that finds another one rendering the same hospital (a second
    `dagster asset materialize`, which bypasses the run queue's one-run-per-partition limit) says so through
    `on_wait` and waits for it, then renders only what that run left. Overlapping runs used to render every
    image twice, and the one that finished last dropped the rows the other had added for a newer index
    (stop 63's probe). Raises FileNotFoundError when the hospital has no dicom_index yet (a cache run racing
    ahead of its first index wrote an empty manifest that passed for a hospital without images).
    """
    start = time.monotonic()
    result = CacheResult(hospital, manifest_path=manifest_path(settings, hospital))
    result.quarantine_path = cache_quarantine_path(settings, hospital)
    table_dir = result.manifest_path.parent
    ensure_under(settings.warehouse, table_dir)

    def waiting() -> None:
        if on_wait:
            on_wait(f"{hospital}: another run is caching (or pruning) this hospital; waiting for it to finish")

    with _one_run_at_a_time(table_dir, waiting):
        result.waited_s = time.monotonic() - start
        _cache(settings, hospital, result, progress)
    result.seconds = time.monotonic() - start - result.waited_s
    return result


def _cache(settings: Settings, hospital: str, result: CacheResult, progress: ProgressFn | None) -> None:
    """The body of `cache_hospital`, under its run lock."""
    owner = run_owner()
    assert result.manifest_path is not None and result.quarantine_path is not None
    table_dir = result.manifest_path.parent
    hospital_cache = ensure_under(settings.cache, hospital)
    for folder in (hospital_cache, table_dir, result.quarantine_path.parent):
        if folder.exists():
            remove_stale_temps(folder)

    index = _read_index(settings, hospital)
    processing = index["for_processing"].fillna(False).astype(bool)
    result.for_processing = int(processing.sum())
    index = index[~processing].drop_duplicates("sop_instance_uid")
    result.images = len(index)
    others = other_copies(settings, hospital)  # sop -> the copies the index quarantined as `duplicate`

    with _locked(table_dir):
        old, old_quarantine, _ = _load(result, table_dir)
    journal = _Journal(table_dir / f".journal-{owner}.jsonl")
    mine: dict[str, dict[str, Any]] = {}  # sop -> manifest row rendered by this run
    mine_quarantined: dict[str, dict[str, Any]] = {}  # sop -> quarantine row written by this run
    todo: list[dict[str, Any]] = []
    for image in index.to_dict("records"):
        sop = image["sop_instance_uid"]
        prior, bad = old.get(sop), old_quarantine.get(sop)
        copies = [image, *others.get(sop, [])]
        if prior is not None and _is_current(prior, copies, settings, hospital):
            result.unchanged += 1
        elif (
            bad is not None
            and _same_source(bad, image)
            and bad.get("norm_version") == NORM_VERSION
            and bad.get("reason") not in RETRIED  # tried again each run: a stat or a failed open if still so
            and sop not in others  # a copy that arrived since (a re-sent drop) may render: tried again each run
        ):
            result.still_quarantined += 1
        elif prior is not None and _kept_without_source(prior, image, settings, hospital):
            result.kept_without_source += 1
        else:
            todo.append(image)
    keep = set(index["sop_instance_uid"])

    by_sop = {image["sop_instance_uid"]: image for image in todo}
    reasons: Counter[str] = Counter()
    outcomes = imap_unordered(
        _render_one,
        _tasks(settings, hospital, todo, owner, others),
        workers=settings.n_workers,
        dask_scheduler=settings.dask_scheduler,
        chunksize=4,
    )
    try:
        for n, outcome in enumerate(outcomes, start=1):
            image = by_sop[outcome["sop_instance_uid"]]
            sop = image["sop_instance_uid"]
            if outcome["ok"]:
                copy = [image, *others.get(sop, [])][outcome["copy"]]
                row = mine[sop] = _manifest_row(settings, hospital, image | _source_of(copy), outcome)
                mine_quarantined.pop(sop, None)
                journal.append("manifest", row)
                result.new += 1
            else:
                row = mine_quarantined[sop] = _quarantine_row(hospital, image, outcome)
                mine.pop(sop, None)
                journal.append("quarantine", row)
                reasons[row["reason"]] += 1
            if progress:
                progress(n, len(todo))
            if n % MANIFEST_EVERY == 0:
                result.rows = _fold(settings, result, keep, mine, mine_quarantined, journal, final=False)
        if progress and not todo:
            progress(0, 0)
        result.rows = _fold(settings, result, keep, mine, mine_quarantined, journal, final=True)
    finally:
        journal.close()
    result.quarantined = dict(reasons)


def read_manifest(settings: Settings, hospital: str) -> pd.DataFrame:
    """The image_cache manifest of one hospital (empty when none was written)."""
    path = manifest_path(settings, hospital)
    return pq.read_table(path).to_pandas() if path.exists() else pd.DataFrame(columns=SCHEMA.names)


def named_pngs(settings: Settings, hospital: str) -> set[str]:
    """Every PNG (path relative to `cache/`) a row of the hospital's manifest names, or a manifest row of a journal
    not folded into it yet (a live run's, or one a killed run left for the next): the renditions in use, in
    whichever NORM_VERSION's folder they lie (`cache_prune`)."""
    path = manifest_path(settings, hospital)
    named: set[str] = set()
    if path.exists():
        table = pq.read_table(path, columns=["display_png", "model_png"])
        for column in table.columns:
            named.update(v for v in column.to_pylist() if v)
    for journal in sorted(path.parent.glob(".journal-*.jsonl")):
        for kind, row in _read_journal(journal):
            if kind == "manifest":
                named.update(row[k] for k in ("display_png", "model_png") if row.get(k))
    return named


def _read_index(settings: Settings, hospital: str) -> pd.DataFrame:
    """The index columns the cache needs (not the whole header row), so memory stays small per image.
    FileNotFoundError when the hospital has no dicom_index file yet (never indexed: not "no images")."""
    files = sorted(settings.table_dir("dicom_index", hospital).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{hospital}: no dicom_index yet; materialize dicom_index for it first")
    frames = []
    for f in files:
        present = set(pq.read_schema(f).names)
        frame = pq.read_table(f, columns=[c for c in INDEX_COLUMNS if c in present]).to_pandas()
        frames.append(frame.reindex(columns=INDEX_COLUMNS))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INDEX_COLUMNS)


def other_copies(settings: Settings, hospital: str) -> dict[str, list[dict[str, Any]]]:
    """sop -> the other copies of the image (the index keeps the first and quarantines the rest as `duplicate`):
    the cache falls back on them when the kept copy cannot be rendered (a drop re-sent to replace a file damaged
    in transfer; `_render_one`)."""
    columns = ["sop_instance_uid", "reason", "drop", "rel_path", "file_size", "file_mtime_ns"]
    copies: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(settings.table_dir("quarantine", hospital).glob("index-*.parquet")):
        rows = pq.read_table(path, columns=columns).to_pylist()
        for row in rows:
            if row["reason"] == "duplicate" and row["rel_path"]:
                copies.setdefault(row["sop_instance_uid"], []).append(row)
    return copies


def _source_of(copy: dict[str, Any]) -> dict[str, Any]:
    """The index fields that name one copy's file (what `_manifest_row` records as the rendition's source)."""
    return {key: copy[key] for key in ("drop", "rel_path", "file_size", "file_mtime_ns")}


def _source(settings: Settings, hospital: str, rel_path: str) -> str:
    try:
        return str(source_path(settings, hospital, rel_path))
    except (ValueError, KeyError):  # a rel_path leaving the landing folder: quarantined by the worker, never read
        return ""


def _tasks(
    settings: Settings,
    hospital: str,
    todo: list[dict[str, Any]],
    owner: str,
    others: dict[str, list[dict[str, Any]]],
) -> Iterator[_Task]:
    for image in todo:
        sop = image["sop_instance_uid"]
        yield _Task(
            sop,
            _source(settings, hospital, image["rel_path"]),
            str(ensure_under(settings.cache, png_path(hospital, sop, settings.display_size))),
            str(ensure_under(settings.cache, png_path(hospital, sop, settings.model_size))),
            settings.display_size,
            settings.model_size,
            owner,
            str(image["rel_path"]),
            tuple(
                (_source(settings, hospital, c["rel_path"]), str(c["rel_path"]), c["file_size"], c["file_mtime_ns"])
                for c in others.get(sop, [])
            ),
            image["file_size"],
            image["file_mtime_ns"],
        )


def _render_one(task: _Task) -> dict[str, Any]:
    """Render one image to both PNGs in a worker; return only small metadata, never pixels. Never raises.

    The copy the index kept is tried first, then each other copy of the image (`_Task.alternates`): the outcome's
    `copy` says which one rendered (0: the kept one). When none does, the kept copy's failure is the image's.
    """
    failure: dict[str, Any] | None = None
    kept = (task.source, task.label, task.file_size, task.file_mtime_ns)
    for n, (source, label, size, mtime_ns) in enumerate((kept, *task.alternates)):
        outcome = _render_copy(task, source, label, size, mtime_ns)
        if outcome["ok"]:
            return outcome | {"copy": n}
        failure = failure or outcome
    assert failure is not None
    if task.alternates:
        k = len(task.alternates)
        failure["message"] += f" (nor did the {k} other {'copy' if k == 1 else 'copies'} in other drops)"
    return failure


def _render_copy(
    task: _Task, source: str, label: str, size: int | None = None, mtime_ns: int | None = None
) -> dict[str, Any]:
    """`_render_one` for the file `source` (named `label` in messages), which the index read at `size` bytes and
    `mtime_ns` (when given: a file that differs now is quarantined `source_changed`, not rendered)."""
    try:
        if not source:
            raise ValueError("rel_path leaves the landing folder; not read")
        if _known(size) and _known(mtime_ns):
            stat = os.stat(source)
            if (stat.st_size, stat.st_mtime_ns) != (int(size), int(mtime_ns)):  # type: ignore[arg-type]
                message = f"{label}: {SOURCE_CHANGED}"
                return {
                    "ok": False,
                    "sop_instance_uid": task.sop_instance_uid,
                    "reason": "source_changed",
                    "message": message,
                }
        rendition = render(Path(source), sizes=(AtPitch(task.display_size), task.model_size))
        display = rendition.images[AtPitch(task.display_size)]
        _write_png(display, Path(task.display_png), task.owner)
        _write_png(rendition.images[task.model_size], Path(task.model_png), task.owner)
        _keep_candidates(display, Path(task.display_png), task.display_size)
        height, width = (int(v) for v in tuple(rendition.source_shape)[:2])
        return {
            "ok": True,
            "sop_instance_uid": task.sop_instance_uid,
            "voi_method": rendition.voi_method,
            "fallback_reason": rendition.fallback_reason,
            "padding_trimmed": rendition.trimmed,
            "display_mm_per_px": rendition.mm_per_px(AtPitch(task.display_size)),
            "inverted": bool(rendition.inverted),
            "width": width,
            "height": height,
            "display_width": int(display.shape[1]),
            "display_height": int(display.shape[0]),
            "display_png_mtime_ns": Path(task.display_png).stat().st_mtime_ns,
            "model_png_mtime_ns": Path(task.model_png).stat().st_mtime_ns,
        }
    except FileNotFoundError:  # the file left the landing folder after it was indexed (a drop cleaned up, re-sent)
        message = f"{label}: {SOURCE_MISSING}"
        return {"ok": False, "sop_instance_uid": task.sop_instance_uid, "reason": "source_missing", "message": message}
    except Exception as exc:  # quarantined by the caller with its reason; one image never fails the partition
        row = quarantine_rows(exc, "undecodable", hospital="", drop="", rel_path="", stage="cache")[0]
        text = redact(row["message"], source, label) if source else row["message"]
        message = text if label in text else f"{label}: {text}"
        return {"ok": False, "sop_instance_uid": task.sop_instance_uid, "reason": row["reason"], "message": message}


def _known(value: object) -> bool:
    """Not None and not NaN (a missing integer read back through pandas)."""
    return value is not None and value == value


def displays_at_pitch(manifest: pd.DataFrame, display_size: int) -> int:
    """How many of a manifest's displays are at one pitch (`normalize.AtPitch(display_size)`: the file stated a
    usable pixel spacing); the others show `display_size` px on their long side."""
    if "display_mm_per_px" not in manifest:
        return 0
    spans = manifest["display_mm_per_px"].to_numpy(float)
    return int(np.isclose(spans, REFERENCE_FIELD_MM / display_size, rtol=0.01).sum())


def _keep_candidates(display: np.ndarray, png: Path, display_size: int) -> None:
    """Cut the second look's candidates from the pixels just rendered (no decode) and keep them beside the PNG
    (`model/candidate_store.py`); a failure here is not the image's fault and never quarantines it: whoever
    needs them cuts them from the PNG and meets the error there."""
    from mammo_pipeline.model import candidate_store

    with contextlib.suppress(Exception):  # see docstring
        candidate_store.keep(candidate_store.cut(display, display_size), png)


def _write_png(pixels: np.ndarray, path: Path, owner: str) -> None:
    with atomic_path(path, owner) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _same_source(row: dict[str, Any], image: dict[str, Any]) -> bool:
    size = row.get("source_size", row.get("file_size"))
    mtime = row.get("source_mtime_ns", row.get("file_mtime_ns"))
    return (row.get("rel_path"), size, mtime) == (image["rel_path"], image["file_size"], image["file_mtime_ns"])


def _png_current(cache: Path, rel: str, recorded_mtime_ns: int | None) -> bool:
    try:
        stat = ensure_under(cache, rel).stat()
    except (OSError, ValueError):
        return False
    return recorded_mtime_ns is None or stat.st_mtime_ns == recorded_mtime_ns  # None: a row from before the column


def _is_current(prior: dict[str, Any], copies: list[dict[str, Any]], settings: Settings, hospital: str) -> bool:
    """The image's PNGs need no new rendering: the same source (one of the image's `copies`, the kept one first),
    a rendition this NORM_VERSION would make (an earlier
    version's where only other images changed: `normalize.rendition_current`; its PNGs stay where they are),
    the configured sizes, and PNGs untouched since they were written."""
    sop, version = copies[0]["sop_instance_uid"], prior.get("norm_version")
    return (
        any(_same_source(prior, copy) for copy in copies)
        and rendition_current(
            version,
            prior.get("voi_method"),
            NORM_VERSION,
            _png_reader(settings.cache, prior),
            pitched=prior.get("display_mm_per_px") is not None,
        )
        and prior["display_png"] == png_path(hospital, sop, settings.display_size, version)
        and prior["model_png"] == png_path(hospital, sop, settings.model_size, version)
        and _png_current(settings.cache, prior["display_png"], prior.get("display_png_mtime_ns"))
        and _png_current(settings.cache, prior["model_png"], prior.get("model_png_mtime_ns"))
    )


def _png_reader(cache: Path, prior: dict[str, Any]) -> Callable[[], np.ndarray]:
    """Reads the display PNG of `prior` (uint8 HxW) when `rendition_current` asks for it: an upgrade across
    `normalize.FRAME_CUT_SINCE` renders again only the images whose display shows a frame. A PNG that cannot
    be read reads as one gray level, so it is rendered again."""

    def read() -> np.ndarray:
        try:
            with Image.open(ensure_under(cache, prior["display_png"])) as image:
                return np.asarray(image.convert("L"))
        except (OSError, ValueError, KeyError):
            return np.zeros((1, 1), dtype=np.uint8)

    return read


def _kept_without_source(prior: dict[str, Any], image: dict[str, Any], settings: Settings, hospital: str) -> bool:
    """An image that is not current (`_is_current`) keeps its manifest row as it is when the file the index read
    is no longer there to read while its PNGs are: gone from landing (cleaned up after ingest, a drop archived), or,
    for a rendition of that very file (`_same_source`), overwritten since (its size or mtime differ from the index
    row's: a file damaged in transfer, which the index quarantined while the image kept its row, or another image
    the index has not read yet). Rendering it again (after a NORM_VERSION upgrade, a touched PNG) can only fail
    (`source_missing`, `source_changed`), and the failure would replace a good rendition with a quarantine row."""
    try:
        stat = os.stat(source_path(settings, hospital, image["rel_path"]))
    except (FileNotFoundError, NotADirectoryError):  # gone from landing
        pass
    except (OSError, ValueError, KeyError):
        return False
    else:
        indexed = (image.get("file_size"), image.get("file_mtime_ns"))
        if not _same_source(prior, image) or not all(map(_known, indexed)):
            return False
        if (stat.st_size, stat.st_mtime_ns) == tuple(int(v) for v in indexed):
            return False
    return all((settings.cache / prior[key]).is_file() for key in ("display_png", "model_png"))


def _manifest_row(settings: Settings, hospital: str, image: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    sop = image["sop_instance_uid"]
    keep = ("study_instance_uid", "patient_key", "drop", "rel_path", "view_position", "laterality", "image_kind")
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
        "message": outcome["message"],  # redacted where it was made (`_render_one`), beside the real path
        "file_size": int(image["file_size"]),
        "file_mtime_ns": int(image["file_mtime_ns"]),
        "sop_instance_uid": image["sop_instance_uid"],
        "norm_version": NORM_VERSION,
        "quarantined_at": datetime.now(UTC),
    }


# -- the journal: one JSON line per finished image, folded into manifest.parquet ---------------------------
_TIMES = ("cached_at", "quarantined_at")


class _Journal:
    """Append-only JSON lines of one run; each line is written and flushed as its image finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def append(self, kind: str, row: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        record = {k: _plain(v) for k, v in row.items()}
        record = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in record.items()}
        self._file.write(json.dumps({"kind": kind, "row": record}) + "\n")  # one write: a kill tears at most a line
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _journal_owner(path: Path) -> str:
    return path.name.removeprefix(".journal-").removesuffix(".jsonl")


def _read_journal(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            record = json.loads(line)
            row = record["row"]
        except (ValueError, KeyError, TypeError):  # a line torn by a kill
            continue
        for key in _TIMES:
            if isinstance(row.get(key), str):
                row[key] = datetime.fromisoformat(row[key])
        yield record["kind"], row


class CacheBusy(RuntimeError):
    """Another process holds the hospital's run lock (`RUN_LOCK`): a cache run, or a prune, is working on it."""


@contextlib.contextmanager
def _locked(
    folder: Path, name: str = ".lock", waiting: Callable[[], None] | None = None, wait: bool = True
) -> Iterator[None]:
    """An exclusive lock across processes on `folder/name`: `.lock` guards the partition's bookkeeping
    (manifest, quarantine, journals), RUN_LOCK a whole run. `waiting` is called once when another process
    holds it; without `wait`, CacheBusy is raised instead. The kernel releases a dead holder's lock (flock), so a
    killed run never blocks the next."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise CacheBusy(f"{folder / name} is held by another process") from None
            if waiting:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_run_at_a_time(table_dir: Path, waiting: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
    """The hospital's run lock (`RUN_LOCK`), held by `cache_hospital` from start to end."""
    return _locked(table_dir, RUN_LOCK, waiting)


def run_lock_now(settings: Settings, hospital: str) -> contextlib.AbstractContextManager[None]:
    """The hospital's run lock (`RUN_LOCK`), taken without waiting, for work no cache run may overlap
    (`cache_prune`): a run that starts meanwhile waits for it. Raises CacheBusy when a run holds it."""
    return _locked(manifest_path(settings, hospital).parent, RUN_LOCK, wait=False)


def _newer(a: dict[str, Any] | None, b: dict[str, Any], key: str) -> bool:
    """Whether row `b` should replace `a` (no `a`, or `b` written later)."""
    if a is None:
        return True
    ta, tb = a.get(key), b.get(key)
    return ta is None or (tb is not None and tb >= ta)


def _load(
    result: CacheResult, table_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[Path]]:
    """Manifest and cache-quarantine rows by SOP UID: the Parquet files, then every journal (newest row wins)."""
    assert result.manifest_path is not None and result.quarantine_path is not None
    rows = {r["sop_instance_uid"]: r for r in _read_rows(result.manifest_path)}
    bad = {q["sop_instance_uid"]: q for q in read_quarantine_rows(result.quarantine_path) if q.get("sop_instance_uid")}
    journals = sorted(table_dir.glob(".journal-*.jsonl"))
    for path in journals:
        for kind, row in _read_journal(path):
            sop = row.get("sop_instance_uid")
            if kind == "manifest" and _newer(rows.get(sop), row, "cached_at"):
                rows[sop] = row
            elif kind == "quarantine" and _newer(bad.get(sop), row, "quarantined_at"):
                bad[sop] = row
    for sop in set(rows) & set(bad):  # rendered and quarantined: the later outcome holds
        cached, quarantined = rows[sop].get("cached_at"), bad[sop].get("quarantined_at")
        if cached is not None and quarantined is not None and quarantined > cached:
            del rows[sop]
        else:
            del bad[sop]
    return rows, bad, journals


def _fold(
    settings: Settings,
    result: CacheResult,
    keep: set[str],
    mine: dict[str, dict[str, Any]],
    mine_quarantined: dict[str, dict[str, Any]],
    journal: _Journal,
    final: bool,
) -> int:
    """Merge manifest, every journal and this run's rows into manifest.parquet and cache.parquet; return rows.

    Under the partition lock, so overlapping runs never overwrite each other's images. Rows of images no
    longer in the index are dropped unless a live run's journal holds them (withdrawn: their file was deleted from
    its drop), and their renditions deleted once the manifest without them is written (`_delete_renditions`; a
    manifest row never names a deleted PNG). Journals of this run (at the end) and of dead runs are deleted once
    folded in. When nothing changed (no journal, no new row, none dropped) the files are left as they are, so a
    nightly run that finds nothing new leaves their mtimes to the last change (backups and file watchers see no
    change)."""
    assert result.manifest_path is not None
    table_dir = result.manifest_path.parent
    with _locked(table_dir):
        rows, bad, journals = _load(result, table_dir)
        loaded = len(rows), len(bad)
        live = {p for p in journals if p != journal.path and owner_alive(_journal_owner(p)) is not False}
        live_sops = {row.get("sop_instance_uid") for p in live for _, row in _read_journal(p)}
        rows.update(mine)
        for sop in mine:
            bad.pop(sop, None)
        bad.update(mine_quarantined)
        for sop in mine_quarantined:
            rows.pop(sop, None)
        wanted = keep | live_sops
        gone = [r for sop, r in rows.items() if sop not in wanted]
        result.withdrawn += len(gone)
        # quarantined ones too: a PNG rendered before their quarantine may be left
        gone += [q for sop, q in bad.items() if sop not in wanted and sop not in rows]
        rows = {sop: r for sop, r in rows.items() if sop in wanted}
        bad = {sop: q for sop, q in bad.items() if sop in wanted}
        pending = _Journal(table_dir / WITHDRAWN_FILES)
        for row in gone:  # before the manifest that drops them: a kill in between leaves the list, not orphans
            pending.append("withdrawn", {k: row.get(k) for k in ("sop_instance_uid", "display_png", "model_png")})
        pending.close()
        if (
            journals
            or mine
            or mine_quarantined
            or gone
            or (len(rows), len(bad)) != loaded
            or _outdated(result.manifest_path, SCHEMA)
            or _outdated(result.quarantine_path, QUARANTINE_SCHEMA)
        ):
            _write_outputs(result, rows, list(bad.values()))  # else a run that found nothing new rewrites nothing
        if pending.path.exists():  # this fold's, or left by a run killed before it had deleted them all
            listed = [row for _, row in _read_journal(pending.path) if row["sop_instance_uid"] not in wanted]
            _delete_renditions(settings.cache, result.hospital, listed)  # not one that came back meanwhile
            # this fold's and a killed run's: each reaches the label store (`CacheResult.withdrawn_sops`)
            result.withdrawn_sops = list(
                dict.fromkeys([*result.withdrawn_sops, *(r["sop_instance_uid"] for r in listed)])
            )
            pending.path.unlink()
        for path in journals:
            if path not in live and (final or path != journal.path):
                if path == journal.path:
                    journal.close()
                path.unlink(missing_ok=True)
    return len(rows)


def _delete_renditions(cache: Path, hospital: str, rows: list[dict[str, Any]]) -> None:
    """Delete every rendition of each withdrawn image (`rows`: sop_instance_uid, display_png, model_png): the PNGs
    its manifest row names (an earlier NORM_VERSION's folder when they were kept across an upgrade), any PNG of its
    SOP in the current NORM_VERSION's folder (every size), and the second-look candidates kept beside each
    (`candidate_store.forget`). Only under the partition lock, for images no live run holds (`_fold`)."""
    from mammo_pipeline.model import candidate_store

    current = ensure_under(cache, f"{hospital}/{NORM_VERSION}")
    for row in rows:
        pngs = set(current.glob(f"*/{safe_key(hospital, row['sop_instance_uid'])}.png"))
        for rel in (row.get("display_png"), row.get("model_png")):
            if rel:
                with contextlib.suppress(ValueError):  # UnsafePath: nothing outside the cache is deleted
                    pngs.add(ensure_under(cache, rel))
        for png in pngs:
            candidate_store.forget(png)
            png.unlink(missing_ok=True)


def _write_outputs(result: CacheResult, done: dict[str, dict[str, Any]], quarantine: list[dict[str, Any]]) -> None:
    rows = sorted(done.values(), key=lambda r: r["sop_instance_uid"])
    table = pa.Table.from_pylist([{k: _plain(r.get(k)) for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    assert result.manifest_path is not None and result.quarantine_path is not None
    with atomic_path(result.manifest_path) as tmp:
        pq.write_table(table, tmp)
    write_quarantine(sorted(quarantine, key=lambda q: str(q.get("sop_instance_uid"))), result.quarantine_path)


def _outdated(path: Path | None, schema: pa.Schema) -> bool:
    """Whether a table file must be written even with no row changed: missing, or of an older schema (a run
    brings a manifest written by older code up to the current columns)."""
    return path is None or not path.exists() or not pq.read_schema(path).equals(schema, check_metadata=False)


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
