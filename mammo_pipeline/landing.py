"""The landing zone: one folder per hospital, one sub-folder per drop.

Folders whose names start with `_` or `.` are not hospitals (`mammo synth` keeps its ground truth in
`_truth/`). Hospital keys are the folder names, which must be comma-free slugs (Dagster's UI cannot
backfill keys with commas).

Some drop folders are refused (`drop_refusal`), so that neither the sensor nor the index ever writes their name:
a name that is not UTF-8 text, and a name that is a patient identifier of the drop's own files (an export copied
without its drop level, `landing/<hospital>/<PatientID>/<Study>/...`, whose first level is then the patient).
Files lying directly in a hospital's folder, outside any drop, are not indexed either (`loose_files`). Both are
reported by the sensor and the index, never by name. A drop whose first files cannot be read yet (still being
copied) is neither refused nor passed (`NameCheck.decided`): the sensor counts it and names it only once decided.
A slug folder of landing/ named after a patient identifier of the files inside it is not a hospital
(`check_hospital`: an export copied one level too high, `landing/<PatientID>/<Study>/...`).
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mammo_pipeline.dicom.names import fold, unspaced

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
READY_MARKER = "_READY"


def _visible_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def hospital_folders(landing: Path) -> list[str]:
    """Folder names under `landing` that may be hospitals (valid slugs), refused ones too (`check_hospital`)."""
    return [p.name for p in _visible_dirs(landing) if SLUG.match(p.name)]


def misnamed_folders(landing: Path) -> int:
    """How many folders of `landing` are no hospital because their name is no slug (`SLUG`: "Kings-College",
    "guys thomas"): counted, never named (a folder may carry a patient's name)."""
    return sum(1 for p in _visible_dirs(landing) if not SLUG.match(p.name))


def list_hospitals(landing: Path) -> list[str]:
    """Hospital keys under `landing`: valid slugs, folders named after a patient (`check_hospital`) left out."""
    return [h for h in hospital_folders(landing) if check_hospital(landing, h).refusal is None]


def drop_folders(landing: Path, hospital: str) -> list[Path]:
    """Every drop folder of one hospital, refused ones too, sorted by name."""
    return _visible_dirs(landing / hospital)


def list_drops(landing: Path, hospital: str) -> list[str]:
    """Drop folder names of one hospital, sorted; refused drops (`drop_refusal`) left out."""
    return [p.name for p in drop_folders(landing, hospital) if drop_refusal(p) is None]


# Patient identifiers a drop folder may not be named after, read from the first files of the drop: enough to
# catch an export without its drop level, where every file below the folder is that one patient's.
IDENTIFIER_KEYWORDS = ("PatientID", "PatientName", "AccessionNumber", "OtherPatientIDs")
FILES_CHECKED = 3  # DICOM files whose identifiers are read ...
FILES_LOOKED_AT = 20  # ... among the first this many files (a CD export's AUTORUN.INF, INDEX.HTM come first) ...
# ... that may be DICOM: a CD or PACS export's viewer, index and report files are passed over by their suffix, so a
# drop whose first 20 files are a viewer's is still checked on its images; at most ENTRIES_VISITED names are looked
# at, as the sensor checks every tick
NOT_DICOM_SUFFIXES = frozenset(
    ".inf .ini .htm .html .css .js .xml .xsl .xsd .json .txt .pdf .exe .dll .so .dylib .cab .msi .bat .cmd .sh "  # noqa: SIM905
    ".lnk .ico .jpg .jpeg .png .gif .bmp .zip .md5 .sha1 .sha256".split()
)
ENTRIES_VISITED = 5000
# shortest name part (or whole ID) matched as a word of the folder name; shortest ID (or run of one) found inside it
MIN_PART, MIN_ID = 3, 6
_NOT_ALNUM = re.compile(r"[\W_]+")  # on folded text: what separates the words of a name or an ID (any script)
NOT_UTF8 = "a drop folder whose name is not UTF-8 text was not indexed: rename it (its files are untouched)"
NAMED_AFTER_PATIENT = (
    "a drop folder named after a patient identifier of its own files (an export copied without its drop level?) "
    "was not indexed, so the identifier stays out of every table: move it into a drop folder, "
    "landing/<hospital>/<drop>/<patient>/... (its files are untouched)"
)
HOSPITAL_NAMED_AFTER_PATIENT = (
    "a folder of landing/ named after a patient identifier of the files inside it (an export copied without its "
    "hospital and drop levels?) is not a hospital, so the identifier names no partition: move it into a drop "
    "folder, landing/<hospital>/<drop>/<patient>/... (its files are untouched)"
)


@dataclass(frozen=True)
class NameCheck:
    """What the first files below a folder say about its name (`check_drop`)."""

    refusal: str | None = None  # why the folder is refused; None when it is not, or not yet
    read: int = 0  # first files whose patient identifiers could be read; 0: nothing to decide on yet
    newest_ns: int | None = None  # newest mtime of the first files looked at; None: no file yet

    @property
    def decided(self) -> bool:
        """Refused, or passed on at least one readable DICOM file. A folder still being copied may be neither (no
        file yet, or only a file cut short): its name is not known to be safe to write yet."""
        return self.refusal is not None or self.read > 0


# (folder, as a hospital) -> ((path, size, mtime_ns) of its first files, the check they gave), per process: the
# sensor asks every tick
_checks: dict[tuple[str, bool], tuple[tuple[tuple[str, int, int], ...], NameCheck]] = {}


def drop_refusal(drop: Path) -> str | None:
    """Why the drop folder `drop` is not indexed, or None (`check_drop`)."""
    return check_drop(drop).refusal


def check_drop(drop: Path) -> NameCheck:
    """Whether the drop folder `drop` is refused. Refused: a name that is not UTF-8 text (`os.scandir` hands it back
    with surrogate escapes; Parquet and Dagster need text), and a name equal (case and spaces aside) to the
    PatientID, a component of the PatientName, the AccessionNumber or an OtherPatientIDs value of one of its first
    FILES_CHECKED DICOM files, or holding one of them (`_names_it`: "SMITH_JANE_12345678").

    Memoized per process on the path, size and mtime of the folder's first FILES_LOOKED_AT files, not on the
    folder's own mtime: a file arriving below a study folder leaves the drop folder's mtime alone, and a drop
    checked before its first DICOM file could be read must be checked again once it can.
    """
    return _memoized(drop, hospital=False)


def check_hospital(landing: Path, hospital: str) -> NameCheck:
    """Whether the folder `landing/<hospital>` is refused as a hospital: an export copied one level too high,
    `landing/<PatientID>/<Study>/...`, would make its patient a hospital partition. The check of `check_drop` on
    the first files below it (in its first drop, for a real hospital), with one difference: a single part of a
    patient's name among other words does not count (`_names_it`), since a hospital folder "frimley-park" must not
    stop being one because the first patient of its first drop is called Park; an export's top folder is the ID,
    the whole name, or holds either. Memoized as `check_drop`.
    """
    return _memoized(landing / hospital, hospital=True)


def _memoized(folder: Path, hospital: bool) -> NameCheck:
    path = os.fspath(folder)
    if not os.path.isdir(path):
        return NameCheck()
    files = tuple(_first_files(path, FILES_LOOKED_AT))
    hit = _checks.get((path, hospital))
    if hit is None or hit[0] != files:
        hit = _checks[path, hospital] = (files, _check(folder.name, files, hospital))
    return hit[1]


def _check(name: str, files: tuple[tuple[str, int, int], ...], hospital: bool) -> NameCheck:
    newest = max((mtime for _, _, mtime in files), default=None)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return NameCheck(NOT_UTF8, 0, newest)
    folded = _folded(name)
    tokens, compact = set(re.split(_NOT_ALNUM, folded)) - {""}, re.sub(_NOT_ALNUM, "", folded)
    read = 0
    for path, _, _ in files:
        names, ids = _identifiers(path)
        read += bool(names or ids)
        if (
            folded in names | ids
            or any(_names_it(tokens, compact, value, hospital) for value in names)
            or any(_ids_it(tokens, compact, value) for value in ids)
        ):
            return NameCheck(HOSPITAL_NAMED_AFTER_PATIENT if hospital else NAMED_AFTER_PATIENT, read, newest)
        if read >= FILES_CHECKED:
            break
    return NameCheck(None, read, newest)


def _names_it(tokens: set[str], compact: str, value: str, whole: bool = False) -> bool:
    """A folded folder name, given as its alphanumeric `tokens` and as `compact` (its letters and digits alone),
    holds the folded patient name (or name component) `value`: a part of it of at least MIN_PART characters as one
    of its tokens ("macdonald_joanne", "smith, jane"), or the whole name, or two or three of its parts joined in any
    order ("janedoe" for "Doe^Jane"), if of at least MIN_ID characters, anywhere in it. With `whole` (hospital
    folders), one name part is not enough: all of a name's parts of at least MIN_PART characters, two or more,
    must be tokens ("jane_doe" for "Doe^Jane"). Names in any script; accents aside (`_folded`); a name written
    without spaces (Chinese, Japanese, Korean: `dicom/names.py`) joined from two characters on ("王芳")."""
    parts = [part for part in re.split(_NOT_ALNUM, value) if len(part) >= MIN_PART]
    if (len(parts) >= 2 and all(part in tokens for part in parts)) if whole else any(p in tokens for p in parts):
        return True
    words = [part for part in re.split(_NOT_ALNUM, value) if part]
    orders = [o for r in (2, 3) for o in itertools.permutations(words[:3], r)] or [words]  # "JaneDoe": Doe^Jane
    shortest = 2 if unspaced(value) else MIN_ID  # 王小明 is a whole name in three characters
    return any(len(joined) >= shortest and joined in compact for joined in map("".join, orders))


def _ids_it(tokens: set[str], compact: str, value: str) -> bool:
    """A folded folder name, given as its alphanumeric `tokens` and as `compact` (its letters and digits alone),
    holds the folded identifier `value` (an ID or accession number): the whole of it (letters and digits) as one
    of its tokens ("a1234_cd" for "A-1234"), or the whole of it or one of its alphanumeric runs, of at least
    MIN_ID characters, anywhere in it ("rsc2100087_20240101", "2100087" for "RSC-2100087"). A short run alone is
    not matched: an ID's site prefix ("RSC-", "REAL-") is no patient's and may well name a drop."""
    whole = re.sub(_NOT_ALNUM, "", value)
    if len(whole) >= MIN_PART and whole in tokens:
        return True
    return any(len(run) >= MIN_ID and run in compact for run in (whole, *re.split(_NOT_ALNUM, value)))


def _folded(text: str) -> str:
    """Case, accents and runs of spaces aside: "Zoë  MÜLLER" and "zoe muller" fold alike; other scripts stay."""
    return fold(" ".join(text.split()))


def _identifiers(path: str) -> tuple[set[str], set[str]]:
    """The patient identifiers of one DICOM file (`IDENTIFIER_KEYWORDS`), folded: (the PatientName and its
    components, the IDs and accession numbers); both empty when it is none."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTIFIER_KEYWORDS), force=True)
        names: set[str] = set()
        ids: set[str] = set()
        for keyword in IDENTIFIER_KEYWORDS:
            value = ds.get(keyword)
            items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
            for item in items:
                if item is not None and str(item).strip():
                    if keyword == "PatientName":
                        names.add(str(item))
                        names.update(part for part in re.split(r"[\\^=]", str(item)) if part.strip())
                    else:
                        ids.add(str(item))
        return {_folded(v) for v in names}, {_folded(v) for v in ids}
    except Exception:  # not DICOM, unreadable: the index quarantines it with its reason
        return set(), set()


def _first_files(folder: str, n: int) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of up to `n` regular files below `folder` that may be DICOM (depth first, in name
    order): names starting with `.` or `_` and names with a suffix of NOT_DICOM_SUFFIXES skipped, at most
    ENTRIES_VISITED names looked at."""
    found: list[tuple[str, int, int]] = []
    _collect(folder, n, found, [ENTRIES_VISITED])
    return found


def _collect(folder: str, n: int, found: list[tuple[str, int, int]], budget: list[int]) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if len(found) >= n or budget[0] <= 0:
            return
        budget[0] -= 1
        if entry.name.startswith((".", "_")):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                _collect(entry.path, n, found, budget)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() not in NOT_DICOM_SUFFIXES:
                info = entry.stat()
                found.append((entry.path, info.st_size, info.st_mtime_ns))
        except OSError:
            continue


def loose_files(landing: Path, hospital: str) -> int:
    """Files lying directly in `landing/<hospital>/`, outside any drop folder (names starting with `.` or `_`
    aside): never indexed, since a file's drop is the folder it was delivered in."""
    folder = landing / hospital
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))


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
    landing: Path,
    hospital: str,
    drops: list[str] | None = None,
    skipped: list[str] | None = None,
    unlistable: set[str] | None = None,
) -> Iterator[tuple[str, str, int, int]]:
    """(drop, path, size in bytes, mtime_ns) for every file of a hospital's drops: regular files (symlinks to them
    too) in every folder below the drop, linked folders included (each folder once: a link loop ends), names
    starting with `.` or `_` skipped (and appended to `skipped` when given), the drops holding a folder that cannot
    be listed (permission denied) added to `unlistable` when given (its files are not gone: not listed),
    in path order (component by component, as pathlib sorts). One `os.scandir` per folder and one stat per file,
    as indexing a drop of 10^5 files must not spend its time in pathlib."""
    for drop in drops if drops is not None else list_drops(landing, hospital):
        found: list[tuple[tuple[str, ...], str, os.stat_result]] = []
        root = os.fspath(landing / hospital / drop)
        denied: list[str] = []
        if os.path.isdir(root):  # as rglob: a missing drop holds nothing
            _scan(root, (), found, skipped=skipped, denied=denied)
        if denied and unlistable is not None:
            unlistable.add(drop)
        found.sort(key=lambda entry: entry[0])
        for _, path, info in found:
            yield drop, path, info.st_size, info.st_mtime_ns


def _scan(
    folder: str,
    parts: tuple[str, ...],
    found: list[tuple[tuple[str, ...], str, os.stat_result]],
    seen: set[tuple[int, int]] | None = None,
    skipped: list[str] | None = None,
    denied: list[str] | None = None,
) -> None:
    """Append (path parts, path, stat) of every regular file below `folder`; `seen`: the (device, inode) of the
    folders entered, so a link back up the tree is not followed twice; `skipped`: where to list the files passed
    over for their name (`.` or `_` first: `_READY`, a Mac's `._` and `.DS_Store` files); `denied`: where to list
    the folders that could not be listed (permission denied)."""
    seen = seen if seen is not None else set()
    try:
        here = os.stat(folder)
        if (here.st_dev, here.st_ino) in seen:  # a link to a folder already entered (a loop, or two links)
            return
        seen.add((here.st_dev, here.st_ino))
        with os.scandir(folder) as it:
            entries = list(it)
    except FileNotFoundError:  # as pathlib's rglob: a vanished folder holds nothing
        return
    except PermissionError:  # nothing listed, but its files are not gone: the caller is told
        if denied is not None:
            denied.append(folder)
        return
    for entry in entries:
        key = (*parts, entry.name)
        try:
            if entry.is_dir():  # a linked folder too: a study folder linked in from a mount is read where it leads
                _scan(entry.path, key, found, seen, skipped, denied)
                continue
            if entry.name.startswith((".", "_")):
                if skipped is not None and entry.is_file():
                    skipped.append(entry.path)
                continue
            info = entry.stat()  # follows a symlink, as Path.is_file does
        except OSError:  # vanished, or a broken symlink: not a file
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((key, entry.path, info))
