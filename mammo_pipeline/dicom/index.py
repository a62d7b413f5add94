"""Discovery: walk one hospital's drops, read every new header in parallel, write the `dicom_index` partition.

One Parquet file per drop (`warehouse/dicom_index/hospital=<h>/<drop>.parquet`), replaced atomically, so a second
drop adds a file and a crash loses at most the drop in progress. A file already indexed or quarantined with the same
(rel_path, size, mtime_ns) is not opened again. One bad file never fails the partition: it becomes a quarantine row
(`quarantine/hospital=<h>/index-<drop>.parquet`) with its reason, and that holds in the stage that writes the table
too: every row is clamped into the schema's types in the worker (`conform_row`), and a row pyarrow still refuses is
quarantined `unsupported` on its own. An indexed file gone from its path is `withdrawn` (deleted from its drop),
unless its SOP Instance UID is indexed again in the same run from another file of the hospital (moved to another
drop, or renamed): then it is `moved`, neither withdrawn nor new, and the cache, which keys its manifest by SOP
Instance UID, keeps the image. A drop cleaned out of landing (its folder gone, or without files) keeps its rows,
which name files that are gone, and withdraws nothing: a clean-up after ingest. A copy of one of those images read
in another drop of the hospital, in that run or a later one (the whole drop moved, or the image sent again), takes
its row over: it is indexed where it is, counted `moved`, and the row leaves the cleaned-out drop's table (rewritten
atomically after the copies' tables, empty when no row is left; a run killed in between leaves the row, which the
next run removes); another image under the UID (`_identity`) does not. An indexed file overwritten in place by one
the index cannot read as an image (garbage, a truncated copy: a re-sent drop damaged in transfer) is not a deletion
either: the image keeps its row, which names the file it was read from, the new file is quarantined with its reason,
and the run counts it `replaced_unreadable`; the cache keeps its rendition. A readable file in its place (another
image, a copy of one indexed elsewhere, a non-mammography or tomosynthesis object) replaces the image as before, and
deleting the damaged file withdraws it as any deletion does.

`rel_path` in every row and message is the pseudonymized path of `source_paths.py` (`<hospital>/<drop>/<hash>`);
the index writes the private lookup that maps it back to the file. A drop refused (`landing.drop_refusal`) after it
was indexed, half-copied then, loses what was written under its name (`forget_drop`). Temporary files that a
killed index run left in its table folders and in the private lookup's are removed when their owner is dead
(`atomic.remove_stale_temps`: an owner on another host, when older than its `STALE_AFTER_S`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydicom.misc import is_dicom

from mammo_pipeline.atomic import atomic_path, remove_stale_temps
from mammo_pipeline.dicom import source_paths
from mammo_pipeline.dicom.errors import NotMammography, Tomosynthesis
from mammo_pipeline.dicom.headers import read_header_row
from mammo_pipeline.dicom.quarantine import (
    DUPLICATE,
    UID_COLLISION,
    UNREADABLE,
    quarantine_row,
    quarantine_rows,
    read_quarantine_rows,
    write_quarantine,
)
from mammo_pipeline.landing import check_hospital, drop_folders, drop_refusal, iter_dicom_stats, loose_files
from mammo_pipeline.parallel import imap_unordered
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings, check_hospital_key

_STR, _I64, _F64, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
SCHEMA = pa.schema(
    [
        ("hospital", _STR),
        ("drop", _STR),
        ("rel_path", _STR),
        ("file_size", _I64),
        ("file_mtime_ns", _I64),
        ("sop_instance_uid", _STR),
        ("study_instance_uid", _STR),
        ("series_instance_uid", _STR),
        ("patient_key", _STR),
        ("patient_key_source", _STR),
        ("modality", _STR),
        ("manufacturer", _STR),
        ("model_name", _STR),
        ("sop_class_uid", _STR),
        ("image_kind", _STR),
        ("image_kind_rule", _STR),
        ("for_processing", _BOOL),
        ("no_file_meta", _BOOL),
        ("image_type", _STR),
        ("view_position", _STR),
        ("view_source", _STR),
        ("laterality", _STR),
        ("laterality_source", _STR),
        ("view_code", _STR),
        ("view_code_meaning", _STR),
        ("rows", _I64),
        ("columns", _I64),
        ("number_of_frames", _I64),
        ("pixel_spacing", _F64),
        ("bits_stored", _I64),
        ("bits_allocated", _I64),
        ("photometric", _STR),
        ("presentation_lut_shape", _STR),
        ("pixel_intensity_relationship", _STR),
        ("transfer_syntax", _STR),
        ("window_centers", pa.list_(_F64)),
        ("window_widths", pa.list_(_F64)),
        ("voi_lut_function", _STR),
        ("has_voi_lut_sequence", _BOOL),
        ("rescale_slope", _F64),
        ("rescale_intercept", _F64),
        ("view_modifier_codes", pa.list_(_STR)),
        ("view_modifier_meanings", pa.list_(_STR)),
        ("series_description", _STR),
        ("magnification_factor", _F64),
        ("focal_spot", _F64),
        ("grid", _STR),
        ("partial_view", _STR),
        ("paddle_description", _STR),
        ("compression_force", _F64),
        ("body_part_thickness", _F64),
        ("pixel_data_bytes", _I64),
        ("meta_mag", _BOOL),
        ("meta_mag_rule", _STR),
        ("meta_spot", _BOOL),
        ("meta_spot_rule", _STR),
        ("indexed_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Files per task sent to a worker (the pool's per-task cost is paid once per task): a drop's files / (8 x
# workers), within these bounds, so every worker gets several tasks and the last one finishes soon after the rest.
CHUNK_FILES = (16, 256)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class IndexResult:
    """What one `index_hospital` run did."""

    hospital: str
    files: int = 0  # files under the hospital's drops
    new: int = 0  # headers read and indexed this run (a moved image's are counted in `moved`, not here)
    unchanged: int = 0  # files skipped: same (rel_path, size, mtime) as already indexed or quarantined
    quarantined: dict[str, int] = field(default_factory=dict)  # new quarantine rows by reason
    rows: int = 0  # indexed images in the partition after the run
    seconds: float = 0.0
    index_paths: list[Path] = field(default_factory=list)  # files written this run
    quarantine_paths: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why files were left out (`landing`): never by name
    forgotten: int = 0  # refused drops indexed before (half-copied then): what was written under their name removed
    withdrawn: int = 0  # indexed images whose file was deleted from its drop (still in landing): their rows went
    # indexed images whose file left its path and whose SOP Instance UID is indexed this run from another file of the
    # hospital (moved to another drop or renamed; or a copy taking over a row of a drop cleaned out of landing): the
    # image stays, only its row's drop and rel_path changed
    moved: int = 0
    # indexed images whose file was overwritten by one the index cannot read as an image (damaged in transfer, cut
    # short, not DICOM, not readable): the image keeps its row (the file it was read from) and the new file is
    # quarantined; counted on each run that reads such a file (once, or every run for `unreadable`)
    replaced_unreadable: int = 0
    shared: int = 0  # indexed images whose SOP Instance UID another hospital's index holds too (`shared_with_others`)

    @property
    def read(self) -> int:
        """Headers opened this run (indexed, moved, quarantined, or found to repeat an indexed SOP Instance UID)."""
        return self.new + self.moved + sum(self.quarantined.values())

    @property
    def headers_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


def index_path(settings: Settings, hospital: str, drop: str) -> Path:
    return settings.table_dir("dicom_index", hospital) / f"{drop}.parquet"


def index_quarantine_path(settings: Settings, hospital: str, drop: str) -> Path:
    return settings.table_dir("quarantine", hospital) / f"index-{drop}.parquet"


def forget_drop(settings: Settings, hospital: str, drop: str) -> bool:
    """Delete the files the index wrote under a drop's name (its dicom_index and quarantine files, its private
    source-path lookup); True when there was one. For a drop refused after it was indexed: a patient-named drop
    indexed while half-copied, before its first DICOM file could be read. Each file goes in one atomic unlink,
    rows first; a kill part way leaves files that the next run deletes, as it looks for all three. The cache drops
    the drop's manifest rows on its next run (its images are no longer in the index); PNGs are named by UID.
    """
    found = False
    for path in (
        index_path(settings, hospital, drop),
        index_quarantine_path(settings, hospital, drop),
        source_paths.lookup_path(settings, hospital, drop),
    ):
        try:
            path.unlink()
            found = True
        except FileNotFoundError:
            continue
    return found


def index_hospital(settings: Settings, hospital: str, progress: ProgressFn | None = None) -> IndexResult:
    """Index every new or changed file of one hospital; see the module docstring."""
    start = time.monotonic()
    result = IndexResult(check_hospital_key(hospital))
    if (why := check_hospital(settings.landing, hospital).refusal) is not None:  # a partition registered before
        result.refused = [why]
        result.rows = _count_rows(settings.table_dir("dicom_index", hospital))
        return result
    if not (settings.landing / hospital).is_dir():  # a typo'd key, or a hospital folder removed: say so
        result.refused = [f"landing/{hospital}/ does not exist: nothing to index (rows indexed before are kept)"]
    salt = settings.pseudonym_salt()
    for table in ("dicom_index", "quarantine"):
        remove_stale_temps(settings.table_dir(table, hospital))
    files: dict[str, list[tuple[str, int, int, str]]] = {}  # drop -> [(path, size, mtime_ns, pseudonymized path)]
    real: dict[str, dict[str, str]] = {}  # drop -> {pseudonymized path: real landing-relative path}
    prefix = len(str(settings.landing)) + 1
    skipped: list[str] = []
    unlistable: set[str] = set()
    for drop, text, size, mtime_ns in iter_dicom_stats(
        settings.landing, hospital, skipped=skipped, unlistable=unlistable
    ):
        real_rel = text[prefix:] if os.sep == "/" else _rel(text, settings.landing)
        rel = source_paths.pseudonymize_path(salt, real_rel)
        files.setdefault(drop, []).append((text, size, mtime_ns, rel))
        real.setdefault(drop, {})[rel] = real_rel
    result.files = sum(len(v) for v in files.values())
    refused = [(p.name, why) for p in drop_folders(settings.landing, hospital) if (why := drop_refusal(p)) is not None]
    result.refused += [why for _, why in refused]
    result.forgotten = sum(forget_drop(settings, hospital, drop) for drop, _ in refused)
    if loose := loose_files(settings.landing, hospital):
        result.refused.append(
            f"{loose} file(s) directly in landing/{hospital}/, outside any drop folder, were not indexed: move them "
            f"into a drop folder, landing/{hospital}/<drop>/..."
        )
    if hidden := sum(map(_is_part10, skipped)):
        result.refused.append(
            f"{hidden} DICOM file(s) in landing/{hospital}/ were not indexed because their names start with `.` or "
            "`_` (names the pipeline keeps for markers and hidden files): rename them"
        )
    if unlistable:  # a folder that cannot be listed is not a deletion: such a drop keeps its rows as they were
        for drop in unlistable:
            files.pop(drop, None)
            real.pop(drop, None)
        result.refused.append(
            f"{len(unlistable)} drop folder(s) of landing/{hospital}/ hold a folder that cannot be listed (permission "
            "denied): their rows are kept as they were, and they are indexed again once every folder can be read"
        )
    for drop, mapping in real.items():
        source_paths.write_lookup(settings, hospital, drop, mapping)

    plans = {drop: _plan_drop(settings, hospital, drop, entries) for drop, entries in files.items()}
    seen: dict[str, tuple[str, tuple[Any, ...]]] = {}  # sop uid -> (rel_path, identity); indexed rows win over new
    for plan in plans.values():
        for record in plan.kept_rows + plan.kept_replaced:
            seen.setdefault(record[_SOP], (record[_REL], _identity(record)))
    planned = {index_path(settings, hospital, drop) for drop in plans}
    held = set(seen)  # SOP Instance UIDs held by rows of files present at their path
    # rows of drops cleaned out of landing (folder gone or without files; not one the index may not list): sop ->
    # rel_path of the row, whose file is gone, so a copy read this run takes the row over (`_deduplicate`) ...
    vacant: dict[str, str] = {}
    # ... and, per such drop's table, its rows that go (taken over) once the run has written the copies' tables
    cleaned: dict[Path, list[tuple[str, str]]] = {}
    for path in sorted(settings.table_dir("dicom_index", hospital).glob("*.parquet")):
        if path not in planned:  # a drop gone from landing keeps its rows, and its images stay taken
            present = set(pq.read_schema(path).names)
            table = pq.read_table(
                path, columns=[c for c in ("sop_instance_uid", "rel_path", *IDENTITY) if c in present]
            )
            listed = path.name.removesuffix(".parquet") not in unlistable
            for row in table.to_pylist():
                sop, rel, identity = row["sop_instance_uid"], row["rel_path"], tuple(row.get(c) for c in IDENTITY)
                first = seen.setdefault(sop, (rel, identity))
                if not listed:
                    continue
                if first[0] == rel:
                    vacant[sop] = rel
                    cleaned.setdefault(path, []).append((sop, rel))
                elif sop in held and not _differ(first[1], identity):  # a run killed before it removed this row
                    cleaned.setdefault(path, []).append((sop, rel))
    for drop, plan in plans.items():
        _reread_orphaned_duplicates(plan, files[drop], seen, vacant)
    total = sum(len(p.to_read) for p in plans.values())
    done = 0
    reasons: Counter[str] = Counter()
    gone = {sop for plan in plans.values() for sop in plan.gone}  # indexed images whose file left its path
    for drop, plan in plans.items():
        result.unchanged += len(plan.kept_rows) + len(plan.kept_quarantine)
        if not plan.changed:
            continue
        read = functools.partial(_read_one, landing=str(settings.landing), hospital=hospital, drop=drop, salt=salt)
        new_rows: list[tuple[Any, ...]] = []  # records: conformed rows as tuples in SCHEMA order
        new_quarantine: list[dict[str, Any]] = []
        workers = settings.n_workers or os.cpu_count() or 1
        chunk = max(CHUNK_FILES[0], min(CHUNK_FILES[1], len(plan.to_read) // (8 * workers)))
        for kind, row in imap_unordered(
            read, plan.to_read, workers=settings.n_workers, dask_scheduler=settings.dask_scheduler, chunksize=chunk
        ):
            (new_rows if kind == "row" else new_quarantine).append(row)
            done += 1
            if progress:
                progress(done, total)
        order = {entry[3]: i for i, entry in enumerate(files[drop])}  # real-path order: the first file by name wins
        new_rows.sort(key=lambda r: order.get(r[_REL], len(order)))
        before = dict(seen)
        unique, duplicates = _deduplicate(new_rows, seen, vacant)
        rows = sorted(plan.kept_rows + unique, key=itemgetter(_REL))  # records are conformed already
        table = _table(rows)  # one conversion; only when pyarrow refuses a row are the rows tried one by one
        if table is None:
            seen.clear()
            seen.update(before)
            accepted, refused = _isolate([dict(zip(NAMES, r, strict=True)) for r in new_rows])
            new_quarantine.extend(refused)
            unique, duplicates = _deduplicate([tuple(r.values()) for r in accepted], seen, vacant)
            rows = sorted(plan.kept_rows + unique, key=itemgetter(_REL))
            table = _records_table(rows)
        new_quarantine.extend(duplicates)
        replaced = _keep_replaced(plan, new_quarantine, seen)  # images whose file is now one that cannot be read
        result.replaced_unreadable += len(replaced)
        if plan.kept_replaced or replaced:
            rows = sorted(rows + plan.kept_replaced + replaced, key=itemgetter(_REL))
            table = _records_table(rows)  # rows the index wrote before: they fit the schema
        # back under another path (or in the place of a row of a drop cleaned out of landing): not new, not withdrawn
        moved = sum(record[_SOP] in gone or record[_SOP] in vacant for record in unique)
        result.new += len(unique) - moved
        result.moved += moved
        reasons.update(q["reason"] for q in new_quarantine)
        result.index_paths.append(_write_table(table, index_path(settings, hospital, drop)))
        quarantine = sorted(plan.kept_quarantine + new_quarantine, key=lambda r: r["rel_path"])
        result.quarantine_paths.append(write_quarantine(quarantine, index_quarantine_path(settings, hospital, drop)))
    for path, rows in cleaned.items():  # after the copies' tables: a kill in between leaves a row the next run removes
        taken = {sop for sop, rel in rows if seen[sop][0] != rel}
        if taken:
            table = pq.read_table(path)
            keep = pc.invert(pc.is_in(table["sop_instance_uid"], value_set=pa.array(sorted(taken), type=pa.string())))
            result.index_paths.append(_write_table(table.filter(keep), path))  # none left: written empty
    if progress and total == 0:
        progress(0, 0)
    result.withdrawn = len(gone - seen.keys())  # `seen`: every SOP Instance UID the index holds after the run
    result.quarantined = dict(reasons)
    result.rows = _count_rows(settings.table_dir("dicom_index", hospital))
    result.shared = shared_with_others(settings, hospital)
    result.seconds = time.monotonic() - start
    return result


def shared_with_others(settings: Settings, hospital: str) -> int:
    """How many of `hospital`'s indexed SOP Instance UIDs another hospital's index holds too: the same image sent
    to two hospitals' drops (or a UID reused across sites). Each hospital keeps its row, so both get predictions,
    while the label store keeps one image per UID; the count is reported, never decided on (one DuckDB join over
    the UID column of every partition: 0.8 s over 1,000,000 rows in 20 hospitals, measured once at stop 62)."""
    import duckdb

    from mammo_pipeline import warehouse

    files = warehouse.table_glob(settings, "dicom_index")
    if files is None:
        return 0
    source = warehouse.parquet_scan("dicom_index", files)
    sql = (
        f"WITH i AS (SELECT DISTINCT hospital, sop_instance_uid FROM {source}) "
        "SELECT count(DISTINCT a.sop_instance_uid) FROM i a JOIN i b ON a.sop_instance_uid = b.sop_instance_uid "
        "WHERE a.hospital = ? AND b.hospital <> ?"
    )
    with duckdb.connect() as con:  # the index's own files only: a damaged table elsewhere cannot stop indexing
        return int(con.execute(sql, [hospital, hospital]).fetchone()[0])


def conform_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with every value clamped into its SCHEMA type: integers outside int64, NaN/inf floats and values of
    the wrong type become None (null), list items that do not fit are dropped. Never raises."""
    out = dict(row)
    for name, conform, text in _CONFORM_PLAN:
        value = out.get(name)
        if value is not None and not (text and type(value) is str):  # a str in a string column is right as it is
            out[name] = conform(value)
    return out


def _to_int(value: Any) -> int | None:
    if type(value) is int:
        return value if _INT64[0] <= value <= _INT64[1] else None
    if type(value) is float and math.isfinite(value) and value.is_integer() and _INT64[0] <= value <= _INT64[1]:
        return int(value)
    return None


def _to_float(value: Any) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _to_bool(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _to_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _to_list(item: Any) -> Any:
    def conform(value: Any) -> list | None:
        if not isinstance(value, list | tuple):
            return None
        return [v for v in (item(x) for x in value if x is not None) if v is not None]

    return conform


def _conformer(kind: pa.DataType) -> Any:
    """The clamp function of one Arrow type (identity for types rows never carry wrongly, e.g. timestamps)."""
    if pa.types.is_list(kind):
        return _to_list(_conformer(kind.value_type))
    if pa.types.is_boolean(kind):
        return _to_bool
    if pa.types.is_integer(kind):
        return _to_int
    if pa.types.is_floating(kind):
        return _to_float
    if pa.types.is_string(kind):
        return _to_str
    return lambda value: value


NAMES: tuple[str, ...] = tuple(SCHEMA.names)
_SOP, _REL = NAMES.index("sop_instance_uid"), NAMES.index("rel_path")
# what a copy of an image shares with it, whatever its transfer syntax: two files under one SOP Instance UID that
# differ here are two images (`uid_collision`), not a copy (`duplicate`)
IDENTITY = ("study_instance_uid", "laterality", "view_position", "rows", "columns")
_IDENTITY = tuple(NAMES.index(c) for c in IDENTITY)


def _identity(record: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(record[i] for i in _IDENTITY)


def _differ(held: tuple[Any, ...], other: tuple[Any, ...]) -> list[str]:
    """The `IDENTITY` columns in which `other` differs from the image that holds the UID (`held`; unknown there:
    not a difference): none for a copy, some for another image under the same SOP Instance UID."""
    return [c for c, a, b in zip(IDENTITY, held, other, strict=True) if a is not None and a != b]


_CONFORM_PLAN = [(f.name, _conformer(f.type), pa.types.is_string(f.type)) for f in SCHEMA]


def _columns(test: Any) -> tuple[int, ...]:
    return tuple(i for i, f in enumerate(SCHEMA) if test(f.type))


_STR_COLUMNS = _columns(pa.types.is_string)
_INT_COLUMNS = _columns(pa.types.is_integer)
_FLOAT_COLUMNS = _columns(pa.types.is_floating)
_BOOL_COLUMNS = _columns(pa.types.is_boolean)
_OTHER_COLUMNS = tuple(  # lists (conformed item by item) and timestamps (identity)
    (i, _conformer(SCHEMA.field(i).type))
    for i in sorted(set(range(len(SCHEMA))) - {*_STR_COLUMNS, *_INT_COLUMNS, *_FLOAT_COLUMNS, *_BOOL_COLUMNS})
)


def conform_record(row: dict[str, Any]) -> tuple[Any, ...]:
    """`conform_row`'s clamp as a record (a tuple in SCHEMA order; keys the schema lacks are dropped, missing ones
    are None). A value already of its column's type and range, the usual case, is taken as it is; any other goes
    through the same clamp function as in `conform_row`. Never raises."""
    values = list(map(row.get, NAMES))
    for i in _STR_COLUMNS:
        value = values[i]
        if value is not None and type(value) is not str:
            values[i] = _to_str(value)
    for i in _INT_COLUMNS:
        value = values[i]
        if value is not None and not (type(value) is int and _INT64[0] <= value <= _INT64[1]):
            values[i] = _to_int(value)
    for i in _FLOAT_COLUMNS:
        value = values[i]
        if value is not None and not (type(value) is float and value - value == 0.0):  # finite
            values[i] = _to_float(value)
    for i in _BOOL_COLUMNS:
        value = values[i]
        if value is not None and type(value) is not bool:
            values[i] = None
    for i, conform in _OTHER_COLUMNS:
        value = values[i]
        if value is not None:
            values[i] = conform(value)
    return tuple(values)


def write_index(rows: list[dict[str, Any]], path: Path, *, conformed: bool = False) -> Path:
    """Write dicom_index rows to one Parquet file atomically, with the fixed schema (rows conformed first unless
    the caller says they are)."""
    table = pa.Table.from_pylist(rows if conformed else [conform_row(r) for r in rows], schema=SCHEMA)
    return _write_table(table, path)


def _write_table(table: pa.Table, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _table(records: list[tuple[Any, ...]]) -> pa.Table | None:
    """The records as a SCHEMA table; None when pyarrow refuses one of them (see `_isolate`)."""
    try:
        return _records_table(records)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None


def _records_table(records: list[tuple[Any, ...]]) -> pa.Table:
    """A SCHEMA table of records (tuples in SCHEMA order), built column by column: half the cost of
    `Table.from_pylist` on dicts, which looks every key up in every row."""
    if not records:
        return SCHEMA.empty_table()
    columns = zip(*records, strict=True)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA)


def _deduplicate(
    records: list[tuple[Any, ...]], seen: dict[str, tuple[str, tuple[Any, ...]]], vacant: dict[str, str]
) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """(records whose SOP Instance UID is new, or held by a row of a drop cleaned out of landing (`vacant`: sop uid
    -> that row's rel_path, whose file is gone) that a copy of its image takes over; quarantine rows for the others:
    `duplicate` for a copy of the image that holds the UID, `uid_collision` for another image under it, `IDENTITY`
    telling them apart); `seen` (sop uid -> rel_path and identity of the record that holds it) is updated."""
    unique, duplicates = [], []
    for record in records:
        sop, rel = record[_SOP], record[_REL]
        first, identity = seen.setdefault(sop, (rel, _identity(record)))
        if first == rel:
            unique.append(record)
            continue
        row = dict(zip(NAMES, record, strict=True))
        differ = _differ(identity, _identity(record))
        if not differ and vacant.get(sop) == first:  # the copy present takes over the row of a file that is gone
            seen[sop] = (rel, _identity(record))
            unique.append(record)
            continue
        if differ:
            message = (
                f"{rel}: another image under SOP Instance UID {sop}, already indexed from {first} (differs in "
                f"{', '.join(differ)})"
            )
            duplicates.append(_duplicate_row(row, message, UID_COLLISION))
        else:
            duplicates.append(_duplicate_row(row, f"{rel}: SOP Instance UID {sop} already indexed from {first}"))
    return unique, duplicates


def _isolate(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows pyarrow accepts, quarantine rows for the others): one bad row never fails the drop's table."""
    try:
        pa.Table.from_pylist(rows, schema=SCHEMA)
        return rows, []
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    good, bad = [], []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=SCHEMA)
            good.append(row)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            message = f"{row['rel_path']}: a header value does not fit the dicom_index schema ({type(exc).__name__})"
            bad.append(
                quarantine_row(
                    hospital=row["hospital"],
                    drop=row["drop"],
                    rel_path=row["rel_path"],
                    stage="index",
                    reason="unsupported",
                    message=message,
                    file_size=row.get("file_size"),
                    file_mtime_ns=row.get("file_mtime_ns"),
                )
            )
    return good, bad


# Quarantine reasons of a file the index read as an image, another one than the image indexed from its path before:
# a readable file in that image's place replaces it. Every other reason (not_dicom, truncated, unreadable, ...)
# says the file cannot be read as an image, so it stands for no image, and the one indexed before keeps its row.
ANOTHER_IMAGE = frozenset({DUPLICATE, UID_COLLISION, NotMammography.reason, Tomosynthesis.reason})


@dataclass
class _DropPlan:
    kept_rows: list[tuple[Any, ...]]  # records (SCHEMA order) of files already indexed and unchanged
    kept_quarantine: list[dict[str, Any]]
    to_read: list[tuple[str, int, int, str]]
    changed: bool
    # SOP Instance UIDs of indexed files no longer in the drop (deleted, or moved: `index_hospital` tells which):
    # their rows go
    gone: list[str] = field(default_factory=list)
    # rel_path -> record of an indexed file still at its path but changed since (size or mtime): its image keeps
    # the record if the file now there cannot be read as an image (`_keep_replaced`)
    replaced: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # records kept for files overwritten by one that cannot be read, still the same unreadable file (its quarantine
    # row kept): not counted `unchanged`, which counts files, and the file is counted by its quarantine row
    kept_replaced: list[tuple[Any, ...]] = field(default_factory=list)


def _plan_drop(settings: Settings, hospital: str, drop: str, entries: list[tuple[str, int, int, str]]) -> _DropPlan:
    """Split a drop's files into already-known (same rel_path, size, mtime) and to-read ones."""
    old_index = index_path(settings, hospital, drop)
    old_rows = pq.read_table(old_index).to_pylist() if old_index.exists() else []
    old_quarantine = read_quarantine_rows(index_quarantine_path(settings, hospital, drop))
    current = {rel: (size, mtime) for _, size, mtime, rel in entries}
    kept_rows = [
        tuple(map(r.get, NAMES)) for r in old_rows if current.get(r["rel_path"]) == (r["file_size"], r["file_mtime_ns"])
    ]
    kept_quarantine = [  # an unreadable file is read again: its permission may have been fixed since
        q
        for q in old_quarantine
        if current.get(q["rel_path"]) == (q["file_size"], q["file_mtime_ns"]) and q["reason"] != UNREADABLE
    ]
    known = {r[_REL] for r in kept_rows} | {q["rel_path"] for q in kept_quarantine}
    to_read = [e for e in entries if e[3] not in known]
    unreadable_now = {q["rel_path"] for q in kept_quarantine if q["reason"] not in ANOTHER_IMAGE}
    replaced, kept_replaced = {}, []
    for row in old_rows:
        rel = row["rel_path"]
        if rel in current and current[rel] != (row["file_size"], row["file_mtime_ns"]):
            record = tuple(map(row.get, NAMES))
            if rel in unreadable_now:  # overwritten by a file that cannot be read, which is still there as it was
                kept_replaced.append(record)
            else:
                replaced[rel] = record
    dropped = len(old_rows) + len(old_quarantine) - len(kept_rows) - len(kept_replaced) - len(kept_quarantine)
    changed = bool(to_read) or dropped > 0 or not old_index.exists()
    gone = [r["sop_instance_uid"] for r in old_rows if r["rel_path"] not in current]
    return _DropPlan(kept_rows, kept_quarantine, to_read, changed, gone, replaced, kept_replaced)


def _keep_replaced(
    plan: _DropPlan, quarantine: list[dict[str, Any]], seen: dict[str, tuple[str, tuple[Any, ...]]]
) -> list[tuple[Any, ...]]:
    """The records to keep of indexed files overwritten by one the index could not read as an image this run (a
    quarantine row at their path whose reason is not `ANOTHER_IMAGE`), whose SOP Instance UID no other file holds
    now (`seen`, updated); each such quarantine row's message says which image the file replaced."""
    kept = []
    for q in quarantine:
        record = plan.replaced.get(q["rel_path"])
        if record is None or q["reason"] in ANOTHER_IMAGE or record[_SOP] in seen:
            continue
        seen[record[_SOP]] = (record[_REL], _identity(record))
        kept.append(record)
        q["message"] += (
            f" (it replaced the file of the indexed image {record[_SOP]}, which keeps its earlier index row until a "
            "readable copy comes: re-send the file)"
        )
    return kept


def _reread_orphaned_duplicates(
    plan: _DropPlan,
    entries: list[tuple[str, int, int, str]],
    seen: dict[str, tuple[str, tuple[Any, ...]]],
    vacant: dict[str, str],
) -> None:
    """Move a kept `duplicate` quarantine row whose SOP Instance UID no kept row holds any more (the file that won
    was deleted or changed) back to the files to read: otherwise the surviving copy stayed quarantined as the
    duplicate of nothing, and its image out of the index, until someone touched the file. So too a `duplicate` of
    a row of a drop cleaned out of landing (`vacant`: its file is gone), which the copy then takes over."""
    orphans = {
        q["rel_path"]
        for q in plan.kept_quarantine
        if (q["reason"] in (DUPLICATE, UID_COLLISION) and q["sop_instance_uid"] not in seen)
        or (q["reason"] == DUPLICATE and q["sop_instance_uid"] in vacant)
    }
    if orphans:
        plan.kept_quarantine[:] = [q for q in plan.kept_quarantine if q["rel_path"] not in orphans]
        plan.to_read.extend(e for e in entries if e[3] in orphans)
        plan.changed = True


def _read_one(
    entry: tuple[str, int, int, str], *, landing: str, hospital: str, drop: str, salt: bytes
) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
    """('row', conformed index row as a record: a tuple in SCHEMA order, smaller to pickle and faster to turn into
    columns than a dict) or ('quarantine', quarantine row); never raises (runs in a worker process).

    Messages name the file by its pseudonymized path only (any real path an exception carries is replaced).
    """
    path, size, mtime, rel = entry
    try:
        row = read_header_row(Path(path), None, hospital, drop, salt, rel_path=rel, stat=(size, mtime))
        return "row", conform_record(row)
    except Exception as exc:
        fields = dict(hospital=hospital, drop=drop, rel_path=rel, stage="index")
        row = quarantine_rows(exc, "unsupported", file_size=size, file_mtime_ns=mtime, **fields)[0]
        row["message"] = source_paths.redact(row["message"], path, rel, Path(landing))
        return "quarantine", row


def _duplicate_row(row: dict[str, Any], message: str, reason: str = DUPLICATE) -> dict[str, Any]:
    return quarantine_row(
        hospital=row["hospital"],
        drop=row["drop"],
        rel_path=row["rel_path"],
        stage="index",
        reason=reason,
        message=message,
        file_size=row["file_size"],
        file_mtime_ns=row["file_mtime_ns"],
        sop_instance_uid=row["sop_instance_uid"],
    )


def _is_part10(path: str) -> bool:
    """pydicom's `is_dicom` (a 128-byte preamble, then "DICM": PS3.10 7.1), False for a file it cannot read."""
    try:
        return is_dicom(path)
    except OSError:
        return False


def _rel(path: str | Path, landing: Path) -> str:
    return Path(path).relative_to(landing).as_posix()


def _count_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet")) if folder.exists() else 0
