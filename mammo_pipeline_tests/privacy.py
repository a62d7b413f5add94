"""A reusable privacy scan: does any identifier from any DICOM header appear anywhere outside the landing zone?

`identifiers(landing)` collects every patient-identifying value of every readable file (PS3.15 Annex E's patient
attributes, person-name components too); `scan(settings)` looks for each of them as a substring (case and accents
aside in tables and names) in every string value of every column of every Parquet file (any dtype: pyarrow strings,
large strings, dictionaries, lists, structs; so pandas 3's `str` columns too), in every file and folder name under
MAMMO_HOME, and in the bytes of every other file: the label store, warehouse.duckdb, Dagster's run and event-log
databases, compute logs. The landing zone (the DICOM files themselves) and the secrets are not scanned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pydicom

from mammo_pipeline.dicom.names import fold
from mammo_pipeline.settings import Settings

# Patient-identifying attributes (PS3.15 Table E.1-1, patient module and its neighbours).
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "ReferringPhysicianName",
)
MIN_LENGTH = 4  # shorter values ("F", "L", "1") occur everywhere by chance


@dataclass(frozen=True)
class Finding:
    where: str  # "<file>:<column>", "name:<path>" or "bytes:<file>"
    identifier: str


def identifiers(landing: Path) -> set[str]:
    """Every identifying header value (and name component) of length >= MIN_LENGTH of every readable file."""
    found: set[str] = set()
    for path in landing.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # broken files: whatever is unreadable cannot leak through a reader either
            continue
        for keyword in IDENTIFYING:
            try:
                value = ds.get(keyword)
            except Exception:
                continue
            values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
            for item in values:
                text = str(item or "").strip()
                parts = [text, *text.replace("^", " ").split()] if keyword.endswith("Name") else [text]
                found |= {p for p in parts if len(p) >= MIN_LENGTH}
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)] + [s for k in value for s in _strings(k)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    return []


def scan_parquet(path: Path, ids: set[str]) -> list[Finding]:
    """Every column of one Parquet file, whatever its type, value by value, case and accents aside (`names.fold`)."""
    table = pq.read_table(path)
    folded = {i: fold(i) for i in ids}
    findings = []
    for name in table.column_names:
        for text in (fold(s) for v in table.column(name).to_pylist() for s in _strings(v)):
            findings += [Finding(f"{path}:{name}", i) for i, f in folded.items() if f in text]
    return findings


def scan_names(root: Path, ids: set[str], skip: tuple[Path, ...] = ()) -> list[Finding]:
    """Every file and folder name under `root` (relative path), except below `skip`, case and accents aside."""
    folded = {i: fold(i) for i in ids}
    findings = []
    for path in root.rglob("*"):
        if any(path.is_relative_to(s) for s in skip):
            continue
        rel = str(path.relative_to(root))
        folded_rel = fold(rel)
        findings += [Finding(f"name:{rel}", i) for i, f in folded.items() if f in folded_rel]
    return findings


def scan_bytes(path: Path, ids: set[str]) -> list[Finding]:
    """The raw bytes of a non-Parquet file (SQLite databases, DuckDB, JSON, logs), UTF-8 and UTF-16."""
    data = path.read_bytes()
    return [Finding(f"bytes:{path}", i) for i in ids if i.encode() in data or i.encode("utf-16-le") in data]


def scan(settings: Settings, ids: set[str] | None = None, exclude: tuple[Path, ...] = ()) -> list[Finding]:
    """Every place under MAMMO_HOME (and DAGSTER_HOME) outside the landing zone where an identifier appears.

    `exclude`: more paths not to scan, e.g. a private operator lookup kept outside the warehouse on purpose.
    """
    ids = identifiers(settings.landing) if ids is None else ids
    skip = (settings.landing, settings.home / ".salt", settings.home / ".session_secret", *exclude)
    roots = [settings.home] + [
        p for p in (settings.dagster_home, settings.warehouse, settings.cache) if not p.is_relative_to(settings.home)
    ]
    findings: list[Finding] = []
    for root in roots:
        findings += scan_names(root, ids, skip)
        for path in root.rglob("*"):
            if not path.is_file() or any(path.is_relative_to(s) for s in skip):
                continue
            if path.suffix == ".parquet":
                findings += scan_parquet(path, ids)
            elif path.suffix != ".png":
                findings += scan_bytes(path, ids)
    return findings
