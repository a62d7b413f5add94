"""Which hospital drops under landing/ are new and ready, against a cursor of the drops already seen.

The `new_hospital_drops` sensor is a thin door over `scan_landing`: it registers the new hospital
partitions and asks for one run per hospital that has new ready drops. A run processes a whole hospital
partition (every drop; the assets skip what is already done), so one run covers all of a hospital's new
drops. It is keyed by the newest of them (`<hospital>:<drop>`, drops ordered by name), and two drops that
arrive together do not start two runs that would write the same partition at once.

Refused drop folders and files outside any drop are reported by count per hospital, never by name, in a
warning logged once per change (`DropScan.new_notices`; the cursor keeps what was reported).

On the first start (no cursor) every existing drop counts as new, so the same rule gives one run per
hospital, keyed by its newest ready drop, instead of flooding the queue with one run per historical drop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from mammo_pipeline.landing import (
    check_drop,
    check_hospital,
    drop_folders,
    drop_is_ready,
    hospital_folders,
    loose_files,
    misnamed_folders,
)

_CURSOR_VERSION = 1


@dataclass(frozen=True)
class DropCursor:
    """The (hospital, drop) pairs already handed to a run, and the not-indexed notices already logged (counts,
    never a name: `DropScan.notices`); stored as the sensor cursor (JSON)."""

    seen: frozenset[tuple[str, str]] = frozenset()
    reported: frozenset[str] = frozenset()

    def to_json(self) -> str:
        by_hospital: dict[str, list[str]] = {}
        for hospital, drop in sorted(self.seen):
            by_hospital.setdefault(hospital, []).append(drop)
        data: dict[str, object] = {"version": _CURSOR_VERSION, "seen": by_hospital}
        if self.reported:  # absent from cursors written before it existed: read as none
            data["reported"] = sorted(self.reported)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DropCursor | None:
        """The cursor, or None when the sensor has never ticked (no cursor yet)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            seen, reported = data["seen"], data.get("reported", [])
            if data.get("version") != _CURSOR_VERSION or not isinstance(seen, dict) or not isinstance(reported, list):
                raise ValueError(f"unknown cursor version {data.get('version')!r}")
            pairs = frozenset((str(h), str(d)) for h, drops in seen.items() for d in drops)
            return cls(pairs, frozenset(map(str, reported)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"new_hospital_drops cursor is not a drop cursor ({exc}): {text[:200]!r}") from None


@dataclass(frozen=True)
class DropRun:
    """One run to request: a hospital partition and the new ready drops it covers (sorted by name)."""

    hospital: str
    drops: tuple[str, ...]

    @property
    def run_key(self) -> str:
        return f"{self.hospital}:{self.drops[-1]}"


@dataclass(frozen=True)
class DropScan:
    """What one look at landing/ found: partitions to add, runs to request, drops still being copied.

    A drop still being copied is named (`waiting`) only once its name has passed the refusal check on a readable
    DICOM file; one whose first files cannot be read yet is only counted (`undecided`), as it may be named after
    its patient.
    """

    new_hospitals: tuple[str, ...]
    runs: tuple[DropRun, ...]
    waiting: tuple[tuple[str, str], ...]
    undecided: tuple[tuple[str, int], ...]  # (hospital, drops being copied with no readable DICOM file yet)
    not_indexed: tuple[tuple[str, int, int], ...]  # (hospital, refused drop folders, loose files), never names
    hospitals_refused: int  # folders of landing/ named after a patient of the files inside: not hospitals
    hospitals_waiting: int  # new folders of landing/ with no readable DICOM file yet, not yet quiet: not named
    notices: tuple[str, ...]  # `not_indexed` as warnings (`not_indexed_notices`), counts only
    new_notices: tuple[str, ...]  # the notices the cursor had not reported yet: logged once per change
    cursor: DropCursor
    first_start: bool

    @property
    def copying(self) -> int:
        """Drops still being copied, named or not."""
        return len(self.waiting) + sum(n for _, n in self.undecided)

    @property
    def changed(self) -> bool:
        return bool(self.new_hospitals or self.runs)

    @property
    def not_indexed_summary(self) -> str:
        """`not_indexed` in a few words, for the sensor's skip reason ("" when everything is indexed)."""
        parts = [
            f"{hospital}: {refused} refused drop folder(s), {loose} loose file(s)"
            for hospital, refused, loose in self.not_indexed
        ]
        if self.hospitals_refused:
            parts.append(f"{self.hospitals_refused} folder(s) of landing/ refused as hospitals")
        return "not indexed: " + "; ".join(parts) if parts else ""


def not_indexed_notices(hospital: str, refused: int, loose: int) -> list[str]:
    """The sensor's warnings for one hospital's refused drop folders and loose files: counts, never a name (the
    name of a refused drop is what must not be written)."""
    lines = []
    if refused:
        lines.append(
            f"landing/{hospital}/: {refused} drop folder(s) not indexed, named after a patient identifier of their "
            f"own files or not UTF-8 text: move each into a drop folder, landing/{hospital}/<drop>/<patient>/..., "
            "or rename it (dicom_index's not_indexed metadata gives each one's reason)"
        )
    if loose:
        lines.append(
            f"landing/{hospital}/: {loose} file(s) outside any drop folder, not indexed: move them into a drop "
            f"folder, landing/{hospital}/<drop>/..."
        )
    return lines


def refused_hospitals_notice(refused: int) -> str:
    """The sensor's warning for folders of landing/ refused as hospitals (`landing.check_hospital`), by count."""
    return (
        f"landing/: {refused} folder(s) not taken as a hospital, named after a patient identifier of the files inside "
        "(an export copied without its hospital and drop levels?): move each into a drop folder, "
        "landing/<hospital>/<drop>/<patient>/..."
    )


def misnamed_hospitals_notice(misnamed: int) -> str:
    """The sensor's warning for folders of landing/ whose name cannot be a hospital key (`landing.SLUG`)."""
    return (
        f"landing/: {misnamed} folder(s) not taken as a hospital, their names not lower-case letters, digits, '-' "
        "and '_' (a hospital key names partitions and paths): rename each, e.g. St-Marys -> st-marys"
    )


def scan_landing(
    landing: Path,
    cursor: DropCursor | None,
    registered: Collection[str],
    quiet_seconds: float,
    now: float | None = None,
) -> DropScan:
    """Compare landing/ with the cursor and the registered hospital partitions.

    A drop that is neither marked `_READY` nor quiet for `quiet_seconds` is left out of the cursor, so a
    later scan picks it up once its copy has finished. Refused drops (`landing.check_drop`) are left out, of the
    cursor too (one indexed while half-copied, before its name could be checked, may be in it); a ready
    drop whose first files hold no readable DICOM file is not: its copy is over, so there is nothing left to read
    (the index quarantines its files).

    Hospitals are checked as drops are (`landing.check_hospital`): a refused folder is no hospital, and a new one
    with no readable DICOM file among its first files is taken only once those files are quiet for
    `quiet_seconds` (it has a partition to add, which would carry its name); both are counted, never named.
    """
    now = time.time() if now is None else now
    seen = cursor.seen if cursor is not None else frozenset()
    registered = set(registered)
    hospitals, refused_hospitals, hospitals_waiting = _hospitals(landing, registered, quiet_seconds, now)
    runs: list[DropRun] = []
    waiting: list[tuple[str, str]] = []
    undecided: list[tuple[str, int]] = []
    not_indexed: list[tuple[str, int, int]] = []
    newly_seen: set[tuple[str, str]] = set()
    forgotten: set[tuple[str, str]] = set()  # refused drops the cursor may hold (indexed while half-copied)
    for hospital in hospitals:
        ready: list[str] = []
        unread = refused = 0
        for folder in drop_folders(landing, hospital):
            drop, check = folder.name, check_drop(folder)
            if check.refusal is not None:
                refused += 1
                forgotten.add((hospital, drop))
                continue
            if (hospital, drop) in seen:
                continue
            if drop_is_ready(folder, quiet_seconds, now=now):
                ready.append(drop)
            elif check.decided:
                waiting.append((hospital, drop))
            else:
                unread += 1
        if unread:
            undecided.append((hospital, unread))
        loose = loose_files(landing, hospital)
        if refused or loose:
            not_indexed.append((hospital, refused, loose))
        if ready:
            runs.append(DropRun(hospital, tuple(ready)))
            newly_seen.update((hospital, drop) for drop in ready)
    notices = [line for counts in not_indexed for line in not_indexed_notices(*counts)]
    if refused_hospitals:
        notices.append(refused_hospitals_notice(len(refused_hospitals)))
    if misnamed := misnamed_folders(landing):
        notices.append(misnamed_hospitals_notice(misnamed))
    forgotten.update(pair for pair in seen if pair[0] in refused_hospitals)
    reported = cursor.reported if cursor is not None else frozenset()
    return DropScan(
        new_hospitals=tuple(h for h in hospitals if h not in registered),
        runs=tuple(runs),
        waiting=tuple(waiting),
        undecided=tuple(undecided),
        not_indexed=tuple(not_indexed),
        hospitals_refused=len(refused_hospitals),
        hospitals_waiting=hospitals_waiting,
        notices=tuple(notices),
        new_notices=tuple(line for line in notices if line not in reported),
        cursor=DropCursor((seen | newly_seen) - forgotten, frozenset(notices)),
        first_start=cursor is None,
    )


def _hospitals(
    landing: Path, registered: set[str], quiet_seconds: float, now: float
) -> tuple[list[str], set[str], int]:
    """(hospitals, folders refused as hospitals, folders not decided yet). A registered hospital whose first files
    cannot be read (a new first drop being copied) stays one: its name is a partition already."""
    hospitals: list[str] = []
    refused: set[str] = set()
    waiting = 0
    for hospital in hospital_folders(landing):
        check = check_hospital(landing, hospital)
        quiet = check.newest_ns is not None and now - check.newest_ns / 1e9 >= quiet_seconds
        if check.refusal is not None:
            refused.add(hospital)
        elif check.decided or hospital in registered or quiet:
            hospitals.append(hospital)
        else:
            waiting += 1
    return hospitals, refused, waiting
