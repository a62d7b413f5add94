import os
import time

import pytest

from mammo_pipeline.drops import DropCursor, DropRun, scan_landing
from mammo_pipeline_tests.dicom.test_headers import PATIENT, write_mg

NOW = 1_800_000_000.0


def make_drop(landing, hospital, drop, *, age=3600.0, ready_marker=False, dicom=False):
    """A drop folder with one file last modified `age` seconds before NOW (a readable DICOM file when `dicom`)."""
    folder = landing / hospital / drop
    folder.mkdir(parents=True)
    f = folder / "img.dcm"
    if dicom:
        write_mg(f)
    else:
        f.write_bytes(b"dicom")
    os.utime(f, (NOW - age, NOW - age))
    if ready_marker:
        (folder / "_READY").touch()
    return folder


def touch(path, *, age, write=True):
    """`path` (emptied when `write`) last modified `age` seconds before NOW."""
    if write:
        path.write_bytes(b"")
    os.utime(path, (NOW - age, NOW - age))


def scan(landing, cursor, registered=(), quiet=120.0):
    return scan_landing(landing, cursor, registered=registered, quiet_seconds=quiet, now=NOW)


def test_first_start_registers_every_hospital_and_requests_one_run_each(tmp_path):
    for drop in ["drop-20260101", "drop-20260201", "drop-20260301"]:
        make_drop(tmp_path, "st-marys", drop)
    make_drop(tmp_path, "royal-free", "drop-20260105")
    make_drop(tmp_path, "_truth", "drop-20260101")

    result = scan(tmp_path, None)

    assert result.first_start
    assert result.new_hospitals == ("royal-free", "st-marys")
    assert [r.run_key for r in result.runs] == ["royal-free:drop-20260105", "st-marys:drop-20260301"]
    assert len(result.cursor.seen) == 4  # history remembered, not requested drop by drop


def test_known_drops_are_not_requested_again(tmp_path):
    make_drop(tmp_path, "h1", "d1")
    first = scan(tmp_path, None)
    again = scan(tmp_path, DropCursor.from_json(first.cursor.to_json()), registered=["h1"])
    assert again.runs == () and again.new_hospitals == () and not again.changed
    assert again.cursor == first.cursor


def test_new_drop_of_known_hospital_requests_its_partition(tmp_path):
    make_drop(tmp_path, "h1", "d1")
    cursor = scan(tmp_path, None).cursor
    make_drop(tmp_path, "h1", "d2")
    result = scan(tmp_path, cursor, registered=["h1"])
    assert result.runs == (DropRun("h1", ("d2",)),)
    assert result.runs[0].run_key == "h1:d2"
    assert result.new_hospitals == ()


def test_drops_arriving_together_share_one_run_keyed_by_the_newest(tmp_path):
    cursor = scan(tmp_path, None).cursor  # empty landing on first start
    make_drop(tmp_path, "h1", "d1")
    make_drop(tmp_path, "h1", "d2")
    result = scan(tmp_path, cursor)
    assert result.new_hospitals == ("h1",)
    assert result.runs == (DropRun("h1", ("d1", "d2")),)
    assert result.cursor.seen == {("h1", "d1"), ("h1", "d2")}


def test_drop_still_being_copied_waits_until_quiet_or_marked(tmp_path):
    cursor = scan(tmp_path, None).cursor
    folder = make_drop(tmp_path, "h1", "d1", age=10, dicom=True)
    busy = scan(tmp_path, cursor)
    assert busy.runs == () and busy.waiting == (("h1", "d1"),)
    assert ("h1", "d1") not in busy.cursor.seen
    assert busy.new_hospitals == ("h1",)  # the hospital is registered even before its first drop is ready

    (folder / "_READY").touch()
    marked = scan(tmp_path, busy.cursor, registered=["h1"])
    assert [r.run_key for r in marked.runs] == ["h1:d1"]


def test_empty_drop_is_not_ready(tmp_path):
    (tmp_path / "h1" / "d1").mkdir(parents=True)
    result = scan(tmp_path, None, registered=["h1"])
    assert result.runs == () and result.waiting == () and result.undecided == (("h1", 1),)
    new = scan(tmp_path, None)  # nor is a new hospital folder without a file: it may be named after a patient
    assert (new.new_hospitals, new.hospitals_waiting, new.undecided) == ((), 1, ())


def test_a_drop_being_copied_is_named_only_once_its_files_can_be_read(tmp_path):
    """A drop still being copied whose first files cannot be read yet may be named after its patient (an export
    copied without its drop level): counted, not named, and checked again once its files arrive, although a file
    arriving below a study folder leaves the drop folder's own mtime alone."""
    make_drop(tmp_path, "h1", "d1")
    cursor = scan(tmp_path, None).cursor
    study = tmp_path / "h1" / PATIENT["PatientID"] / "s1"
    study.mkdir(parents=True)
    for folder in (study, tmp_path / "h1" / "d2"):  # the copy has just begun: an empty first file
        folder.mkdir(exist_ok=True)
        touch(folder / "a.dcm", age=5)
    drop_mtime = study.parent.stat().st_mtime_ns

    busy = scan(tmp_path, cursor, registered=["h1"])
    assert PATIENT["PatientID"] not in repr(busy) and "d2" not in repr(busy)
    assert busy.undecided == (("h1", 2),) and busy.copying == 2 and busy.runs == ()

    for folder in (study, tmp_path / "h1" / "d2"):  # the first files are copied
        write_mg(folder / "a.dcm")
        touch(folder / "a.dcm", age=5, write=False)
    assert study.parent.stat().st_mtime_ns == drop_mtime
    copied = scan(tmp_path, busy.cursor, registered=["h1"])
    assert PATIENT["PatientID"] not in repr(copied)
    assert copied.waiting == (("h1", "d2"),) and copied.undecided == ()  # d2 passed the check: named now

    for folder in (study, tmp_path / "h1" / "d2"):
        touch(folder / "a.dcm", age=3600, write=False)
    done = scan(tmp_path, copied.cursor, registered=["h1"])
    assert PATIENT["PatientID"] not in repr(done)
    assert done.runs == (DropRun("h1", ("d2",)),)


def test_refused_drops_and_loose_files_are_reported_by_count_once_per_change(tmp_path):
    make_drop(tmp_path, "h1", "d1")
    make_drop(tmp_path, "h2", "d1")
    write_mg(tmp_path / "h1" / PATIENT["PatientID"] / "s1" / "a.dcm")  # an export copied without its drop level
    (tmp_path / "h1" / "loose.dcm").write_bytes(b"x")

    first = scan(tmp_path, None)
    assert first.not_indexed == (("h1", 1, 1),)
    assert first.new_notices == first.notices and len(first.notices) == 2
    assert "landing/h1/: 1 drop folder(s) not indexed" in first.notices[0]
    assert "landing/h1/: 1 file(s) outside any drop folder" in first.notices[1]
    assert first.not_indexed_summary == "not indexed: h1: 1 refused drop folder(s), 1 loose file(s)"
    assert PATIENT["PatientID"] not in repr(first) + first.cursor.to_json()

    again = scan(tmp_path, DropCursor.from_json(first.cursor.to_json()), registered=["h1", "h2"])
    assert again.new_notices == () and again.notices == first.notices and again.cursor == first.cursor

    (tmp_path / "h1" / "loose2.dcm").write_bytes(b"x")
    more = scan(tmp_path, again.cursor, registered=["h1", "h2"])
    assert len(more.new_notices) == 1 and more.new_notices[0].startswith("landing/h1/: 2 file(s) outside any drop")
    assert more.cursor != again.cursor


def test_a_drop_refused_after_it_was_seen_leaves_the_cursor(tmp_path):
    """A drop indexed while half-copied (by hand, or before its name could be checked) came into the cursor from
    dicom_index; refused now, its name leaves the cursor too."""
    make_drop(tmp_path, "h1", "d1")
    write_mg(tmp_path / "h1" / PATIENT["PatientID"] / "s1" / "a.dcm")
    cursor = DropCursor(frozenset({("h1", "d1"), ("h1", PATIENT["PatientID"])}))
    result = scan(tmp_path, cursor, registered=["h1"])
    assert result.cursor.seen == {("h1", "d1")} and result.runs == ()


def test_a_folder_named_after_a_patient_is_not_a_hospital_and_is_counted(tmp_path):
    """landing/<PatientID>/<Study>/... (an export copied one level too high) is no hospital partition; one whose
    first file cannot be read yet is not named either until it can (or its files are quiet)."""
    make_drop(tmp_path, "h1", "d1")
    write_mg(tmp_path / "pat-0042" / "s1" / "a.dcm")
    (tmp_path / "12345678" / "s1").mkdir(parents=True)
    touch(tmp_path / "12345678" / "s1" / "a.dcm", age=5)  # still being copied
    first = scan(tmp_path, None)
    assert first.new_hospitals == ("h1",) and [r.hospital for r in first.runs] == ["h1"]
    assert (first.hospitals_refused, first.hospitals_waiting) == (1, 1)
    assert "pat-0042" not in repr(first).lower() and "12345678" not in repr(first)
    assert first.new_notices == (
        "landing/: 1 folder(s) not taken as a hospital, named after a patient identifier of the files inside (an "
        "export copied without its hospital and drop levels?): move each into a drop folder, "
        "landing/<hospital>/<drop>/<patient>/...",
    )
    assert first.not_indexed_summary == "not indexed: 1 folder(s) of landing/ refused as hospitals"

    write_mg(tmp_path / "12345678" / "s1" / "a.dcm", PatientID="12345678")  # copied: refused too
    touch(tmp_path / "12345678" / "s1" / "a.dcm", age=3600, write=False)
    later = scan(tmp_path, first.cursor, registered=["h1"])
    assert (later.new_hospitals, later.runs, later.hospitals_refused, later.hospitals_waiting) == ((), (), 2, 0)
    assert "12345678" not in repr(later) and len(later.new_notices) == 1


def test_misnamed_hospital_folders_are_no_hospital_and_are_reported_by_count_once(tmp_path):
    """A user's report: landing/Kings-College and "landing/guys thomas" were ignored without a word, their files
    never processed. They are still no hospital (the key names partitions and paths), and now counted in a notice;
    hidden folders (.cache) are not."""
    make_drop(tmp_path, "Bad,Name", "d1")
    make_drop(tmp_path, "Kings-College", "d1")
    make_drop(tmp_path, "guys thomas", "d1")
    make_drop(tmp_path, ".cache", "d1")
    result = scan(tmp_path, None)
    assert result.new_hospitals == () and result.runs == ()
    assert result.new_notices == result.notices and len(result.notices) == 1
    assert result.notices[0].startswith("landing/: 3 folder(s) not taken as a hospital, their names not lower-case")
    assert "Kings" not in result.notices[0]
    assert scan(tmp_path, result.cursor).new_notices == ()  # said once, until the count changes


def test_cursor_round_trips_and_rejects_garbage():
    cursor = DropCursor(frozenset({("h1", "d1"), ("h2", "d9")}))
    assert DropCursor.from_json(cursor.to_json()) == cursor
    reported = DropCursor(cursor.seen, frozenset({"landing/h1/: 1 file(s) outside any drop folder"}))
    assert DropCursor.from_json(reported.to_json()) == reported
    assert DropCursor.from_json(None) is None and DropCursor.from_json("") is None
    with pytest.raises(ValueError, match="not a drop cursor"):
        DropCursor.from_json('{"last": 3}')
    with pytest.raises(ValueError, match="not a drop cursor"):
        DropCursor.from_json("not json")


def test_scan_uses_the_clock_when_no_time_is_given(tmp_path):
    folder = tmp_path / "h1" / "d1"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"x")
    assert scan_landing(tmp_path, None, registered=[], quiet_seconds=3600).runs == ()
    old = time.time() - 7200
    os.utime(folder / "a.dcm", (old, old))
    assert len(scan_landing(tmp_path, None, registered=[], quiet_seconds=3600).runs) == 1
