"""Pseudonymized source paths: no folder or file name of a drop leaves the landing zone.

Drops are commonly laid out `<hospital>/<drop>/<PatientID>/<Study>/<file>`, so a landing-relative path is
patient-identifying text. Every table, message and Dagster metadata value carries instead the *pseudonymized*
path `<hospital>/<drop>/<h>`, where `h` is the first 24 hex digits of sha256(salt + 0x1f "source_path" 0x1f +
the real landing-relative path). The hospital and drop folder names stay readable (they name a partition and a
delivery, not a person); everything below the drop is hashed whole, so no identifier in any folder or file name
survives, whatever the layout.

The way back is a private lookup outside the warehouse, `$MAMMO_HOME/private/source_paths/<hospital>/<drop>.json`
(folder mode 700, file mode 600), written atomically by the index: `{pseudonymized path: real relative path}`.
`resolve` is the one function that turns a pseudonymized path into the real file, for the cache and for operators.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

from mammo_pipeline.atomic import atomic_path, remove_stale_temps
from mammo_pipeline.settings import Settings, check_hospital_key

DIGEST_HEX = 24  # 96 bits: no collision in any realistic archive (p < 1e-17 at 10^6 files per drop)

_cache: dict[Path, tuple[int, dict[str, str]]] = {}  # lookup file -> (mtime_ns, mapping), per process


def pseudonymize_path(salt: bytes, real_rel_path: str) -> str:
    """`<hospital>/<drop>/<24 hex>` for a landing-relative path `<hospital>/<drop>/...` (POSIX separators)."""
    parts = real_rel_path.split("/")
    if len(parts) < 3:
        raise ValueError(f"a source path is <hospital>/<drop>/<file...>, got {len(parts)} component(s)")
    digest = hashlib.sha256(salt + b"\x1fsource_path\x1f" + real_rel_path.encode("utf-8", "surrogateescape"))
    return f"{parts[0]}/{parts[1]}/{digest.hexdigest()[:DIGEST_HEX]}"


def private_root(settings: Settings) -> Path:
    """`$MAMMO_HOME/private`: operator-only files (mode 700), never part of the warehouse."""
    return settings.home / "private"


def lookup_path(settings: Settings, hospital: str, drop: str) -> Path:
    """The private lookup file of one drop."""
    return private_root(settings) / "source_paths" / check_hospital_key(hospital) / f"{drop}.json"


def write_lookup(settings: Settings, hospital: str, drop: str, mapping: dict[str, str]) -> Path:
    """Write one drop's {pseudonymized: real relative path} lookup atomically, mode 600 in 700 folders.

    Skipped (no write) when the file already holds exactly `mapping`. Written as ASCII JSON: a name that is not
    UTF-8 (an export from a cp437 or latin-1 archive; `os.scandir` hands it back with surrogate escapes) is kept
    as a `\\udcXX` escape, which reads back to the same string.
    """
    path = lookup_path(settings, hospital, drop)
    for folder in (private_root(settings), path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    remove_stale_temps(path.parent)  # what a killed index left half-written here
    if path.exists() and _load(path) == mapping:
        return path
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            json.dump(mapping, fp, sort_keys=True, ensure_ascii=True)
    return path


def resolve(settings: Settings, hospital: str, rel_path: str) -> Path:
    """The real file behind a pseudonymized `rel_path` of `hospital`.

    Raises
    ------
    KeyError
        When no lookup of that drop knows `rel_path` (the drop was not indexed, or the path is not of `hospital`).
    """
    parts = rel_path.split("/")
    if len(parts) != 3 or parts[0] != hospital:
        raise KeyError(f"{rel_path!r} is not a pseudonymized source path of hospital {hospital!r}")
    try:
        check_hospital_key(hospital)  # "..": no hospital's folder
    except ValueError as e:
        raise KeyError(str(e)) from e
    real = _load(lookup_path(settings, hospital, parts[1])).get(rel_path)
    if real is None:
        raise KeyError(f"{rel_path!r}: not in the private source-path lookup of {hospital}/{parts[1]}")
    return settings.landing / real


def redact(text: str, real: Path | str, rel_path: str, landing: Path | None = None) -> str:
    """`text` with the real path of a file (absolute, and landing-relative when `landing` is given) replaced by
    `rel_path`, in every spelling an exception's text gives it (`_spellings`)."""
    real = str(real)
    if not real:
        return text
    paths = [real]
    if landing is not None:
        with contextlib.suppress(ValueError):
            paths.append(Path(real).relative_to(landing).as_posix())
    for path in paths:
        for spelling in _spellings(path):
            text = text.replace(spelling, rel_path)
    return text


def _spellings(path: str) -> list[str]:
    """How a path shows in an exception's text, longest first: as is; as `repr` writes it (OSError and pydicom
    messages quote file names with repr, which writes a name that is not UTF-8, held as surrogate escapes, as
    `\\udcXX`, and doubles a backslash); and decoded with U+FFFD for bytes that are not UTF-8."""
    forms = {
        path,
        repr(path)[1:-1],
        path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
    }
    return sorted(forms, key=len, reverse=True)


def _load(path: Path) -> dict[str, str]:
    """A lookup file's mapping, cached per process until the file changes; {} when it is missing."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    mapping = json.loads(path.read_text(encoding="utf-8"))
    _cache[path] = (mtime, mapping)
    return mapping
