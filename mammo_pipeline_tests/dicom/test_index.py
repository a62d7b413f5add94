"""Discovery of one hospital: quarantine of every corrupt kind, incremental re-runs, no patient text written."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable

import pandas as pd
import pytest

from mammo_pipeline.dicom import index as index_module
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.dicom.source_paths import pseudonymize_path, resolve
from mammo_pipeline.warehouse import read_partition
from mammo_pipeline_tests.dicom.test_headers import PATIENT, write_damaged_mg, write_mg


def pseudo(settings, real_rel_path: str) -> str:
    """The pseudonymized rel_path the tables hold for a landing-relative path."""
    return pseudonymize_path(settings.pseudonym_salt(), real_rel_path)


def _corrupt_drop(settings, hospital="h1", drop="d1"):
    """Two good images plus one file of every corrupt kind (and a duplicate UID)."""
    root = settings.landing / hospital / drop
    good = write_mg(root / "p1" / "s1" / "a.dcm")
    write_mg(root / "p1" / "s1" / "b.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1")
    shutil.copy(good, root / "p1" / "s1" / "z_copy.dcm")  # same SOP Instance UID as a.dcm
    (root / "p2").mkdir(parents=True)
    (root / "p2" / "readme.dcm").write_text("not a dicom file at all" * 20)
    cut = write_mg(root / "p2" / "cut.dcm")
    cut.write_bytes(cut.read_bytes()[:-500])
    write_mg(root / "p2" / "nopix.dcm", pixels=False)
    write_mg(root / "p2" / "ct.dcm", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    return root


def _deny_listing(monkeypatch, folder_name: str) -> Callable:
    """Landing's walker gets "permission denied" listing any folder named `folder_name`; returns the real
    `os.scandir`, to put back."""
    from mammo_pipeline import landing as landing_module

    real_scandir = os.scandir

    def scandir(folder):
        if os.fspath(folder).endswith(folder_name):
            raise PermissionError(13, "Permission denied", os.fspath(folder))
        return real_scandir(folder)

    monkeypatch.setattr(landing_module.os, "scandir", scandir)
    return real_scandir


def test_index_hospital_quarantines_every_corrupt_kind_and_goes_on(settings):
    _corrupt_drop(settings)
    result = index_hospital(settings, "h1")

    assert (result.files, result.new, result.rows, result.unchanged) == (7, 2, 2, 0)
    expected = {"not_dicom": 1, "truncated": 1, "no_pixel_data": 1, "not_mammography": 1, "duplicate": 1}
    assert result.quarantined == expected
    index = read_partition(settings, "dicom_index", "h1")
    a, b = pseudo(settings, "h1/d1/p1/s1/a.dcm"), pseudo(settings, "h1/d1/p1/s1/b.dcm")
    assert sorted(index["rel_path"]) == sorted([a, b])
    assert index.set_index("rel_path")["for_processing"].to_dict() == {a: False, b: True}
    quarantine = read_partition(settings, "quarantine", "h1")
    assert dict(zip(quarantine["rel_path"], quarantine["reason"], strict=True)) == {
        pseudo(settings, "h1/d1/p1/s1/z_copy.dcm"): "duplicate",
        pseudo(settings, "h1/d1/p2/readme.dcm"): "not_dicom",
        pseudo(settings, "h1/d1/p2/cut.dcm"): "truncated",
        pseudo(settings, "h1/d1/p2/nopix.dcm"): "no_pixel_data",
        pseudo(settings, "h1/d1/p2/ct.dcm"): "not_mammography",
    }
    assert set(quarantine["stage"]) == {"index"}
    assert all(rel in message for rel, message in zip(quarantine["rel_path"], quarantine["message"], strict=True))
    assert resolve(settings, "h1", a) == settings.landing / "h1/d1/p1/s1/a.dcm"
    assert (settings.warehouse / "dicom_index" / "hospital=h1" / "d1.parquet").exists()
    assert (settings.warehouse / "quarantine" / "hospital=h1" / "index-d1.parquet").exists()


def test_index_hospital_second_drop_adds_rows_without_rereading(settings, monkeypatch):
    _corrupt_drop(settings)
    calls: list[str] = []
    real = index_module.read_header_row

    def counting(path, *args, **kwargs):
        calls.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(index_module, "read_header_row", counting)  # workers=1: runs in this process
    index_hospital(settings, "h1")
    assert len(calls) == 7
    first_file = settings.warehouse / "dicom_index" / "hospital=h1" / "d1.parquet"
    first_mtime = first_file.stat().st_mtime_ns

    calls.clear()
    write_mg(settings.landing / "h1" / "d2" / "p3" / "s9" / "c.dcm")
    second = index_hospital(settings, "h1")
    assert calls == ["c.dcm"]  # neither indexed nor quarantined files of d1 were opened again
    assert (second.new, second.unchanged, second.rows, second.quarantined) == (1, 7, 3, {})
    assert first_file.stat().st_mtime_ns == first_mtime  # the untouched drop's file was not rewritten
    assert len(read_partition(settings, "dicom_index", "h1")) == 3

    calls.clear()
    third = index_hospital(settings, "h1")
    assert calls == [] and third.new == 0 and third.unchanged == 8


def test_index_hospital_rereads_a_changed_file_once(settings):
    root = _corrupt_drop(settings)
    index_hospital(settings, "h1")
    fixed = write_mg(root / "p2" / "nopix.dcm")  # the sender re-sends the file, now with pixels
    os.utime(fixed, ns=(fixed.stat().st_atime_ns, fixed.stat().st_mtime_ns + 10**9))
    result = index_hospital(settings, "h1")
    assert (result.new, result.unchanged, result.rows) == (1, 6, 3)
    quarantine = read_partition(settings, "quarantine", "h1")
    assert pseudo(settings, "h1/d1/p2/nopix.dcm") not in set(quarantine["rel_path"])
    index = read_partition(settings, "dicom_index", "h1")
    assert index["rel_path"].is_unique and index["sop_instance_uid"].is_unique


def test_index_hospital_duplicate_in_later_drop_loses_to_the_indexed_one(settings):
    first = write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    index_hospital(settings, "h1")
    (settings.landing / "h1" / "d2").mkdir(parents=True)
    shutil.copy(first, settings.landing / "h1" / "d2" / "a_again.dcm")
    result = index_hospital(settings, "h1")
    assert result.quarantined == {"duplicate": 1} and result.rows == 1
    quarantine = read_partition(settings, "quarantine", "h1")
    assert quarantine["message"].str.contains(pseudo(settings, "h1/d1/a.dcm")).all()


def test_index_hospital_writes_no_patient_text(settings):
    _corrupt_drop(settings)
    index_hospital(settings, "h1")
    for table in ("dicom_index", "quarantine"):
        df = read_partition(settings, table, "h1")
        text = " ".join(map(str, df.to_numpy().ravel()))
        for value in PATIENT.values():
            assert value not in text, f"{value!r} leaked into {table}"
    keys = read_partition(settings, "dicom_index", "h1")["patient_key"]
    assert keys.str.fullmatch(r"[0-9a-f]{16}").all()


def test_index_hospital_in_a_process_pool_reports_progress(settings):
    _corrupt_drop(settings)
    write_mg(settings.landing / "h1" / "d2" / "x.dcm")
    seen: list[tuple[int, int]] = []
    result = index_hospital(dataclasses.replace(settings, workers=2), "h1", progress=lambda d, t: seen.append((d, t)))
    assert result.rows == 3 and sum(result.quarantined.values()) == 5
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == list(range(1, 9))
    assert result.headers_per_s > 0


@pytest.mark.parametrize("hospital", ["empty"])
def test_index_hospital_without_files_writes_nothing(settings, hospital):
    (settings.landing / hospital).mkdir()
    result = index_hospital(settings, hospital)
    assert (result.files, result.rows, result.index_paths) == (0, 0, [])
    assert read_partition(settings, "dicom_index", hospital).equals(pd.DataFrame())


def test_a_hospital_without_a_landing_folder_is_said_to_have_none(settings):
    """A mistyped partition key, or a hospital folder removed from landing, indexed 0 files without a word."""
    result = index_hospital(settings, "no-such-hospital")
    assert result.rows == 0 and result.refused == [
        "landing/no-such-hospital/ does not exist: nothing to index (rows indexed before are kept)"
    ]


def test_index_hospital_on_a_synthetic_drop_matches_the_truth(settings):
    from mammo_pipeline.synth.drops import generate_drops, read_truth

    report = generate_drops(
        settings.landing, hospitals=1, studies_per_hospital=3, seed=3, scale=0.1, corrupt_fraction=0.3, workers=1
    )
    (hospital,) = report.hospitals
    truth = read_truth(settings.landing, hospital)
    result = index_hospital(settings, hospital)

    index = read_partition(settings, "dicom_index", hospital).set_index("rel_path")
    quarantine = read_partition(settings, "quarantine", hospital).set_index("rel_path")
    truth["rel_path"] = [pseudo(settings, rel) for rel in truth["rel_path"]]
    corrupt = truth[truth["corrupt_kind"].notna()]
    assert len(corrupt) > 0 and result.files == len(truth)
    assert quarantine.loc[corrupt["rel_path"], "reason"].tolist() == corrupt["corrupt_kind"].tolist()
    good = truth[truth["corrupt_kind"].isna()].set_index("rel_path")
    assert sorted(index.index) == sorted(good.index)
    assert (index.loc[good.index, "for_processing"] == good["for_processing"].astype(bool)).all()
    said_mag = index.index[index["meta_mag"] == True]  # noqa: E712 (nullable column)
    assert good.loc[said_mag, "is_mag_view"].all()  # the metadata never calls a contact view a mag view


def test_index_hospital_quarantines_a_row_pyarrow_refuses_before_deduplicating(settings, monkeypatch):
    """The table is built once; when pyarrow refuses a row, that row alone is quarantined `unsupported` and does
    not claim its SOP Instance UID: its copy under a later name is indexed instead."""
    root = settings.landing / "h1" / "d1"
    first = write_mg(root / "a.dcm")
    shutil.copy(first, root / "b.dcm")  # same SOP Instance UID
    write_mg(root / "c.dcm")
    real = index_module.read_header_row

    def refused_a(path, *args, **kwargs):
        row = real(path, *args, **kwargs)
        return row | {"rows": 2**70} if path.name == "a.dcm" else row

    monkeypatch.setattr(index_module, "read_header_row", refused_a)
    unclamped = lambda row: tuple(map(row.get, index_module.NAMES))  # noqa: E731
    monkeypatch.setattr(index_module, "conform_record", unclamped)  # as if a row slipped past the clamp
    result = index_hospital(settings, "h1")
    assert (result.new, result.rows, result.quarantined) == (2, 2, {"unsupported": 1})
    index = read_partition(settings, "dicom_index", "h1")
    assert sorted(index["rel_path"]) == sorted(pseudo(settings, f"h1/d1/{n}.dcm") for n in ("b", "c"))
    quarantine = read_partition(settings, "quarantine", "h1")
    assert list(quarantine["rel_path"]) == [pseudo(settings, "h1/d1/a.dcm")]


def test_a_name_that_is_not_utf8_is_indexed_and_read_back(settings):
    """Exports copied from SMB or unzipped from cp437/latin-1 archives carry folder names that are not UTF-8
    (os.scandir hands them back surrogate-escaped): one such name stopped the whole hospital's index."""
    other = write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    odd = os.fsdecode(b"M\xfcller")  # latin-1 "Müller", not UTF-8
    write_mg(settings.landing / "h1" / "d2" / odd / "b.dcm", SOPInstanceUID="1.2.3.4.99")
    result = index_hospital(settings, "h1")
    assert (result.rows, result.quarantined) == (2, {})
    rel = pseudo(settings, f"h1/d2/{odd}/b.dcm")
    assert resolve(settings, "h1", rel) == settings.landing / "h1" / "d2" / odd / "b.dcm"
    assert resolve(settings, "h1", pseudo(settings, "h1/d1/a.dcm")) == other
    assert index_hospital(settings, "h1").new == 0  # the lookup reads back equal: nothing re-read


def test_a_drop_whose_name_is_not_utf8_does_not_stop_the_others(settings):
    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    write_mg(settings.landing / "h1" / os.fsdecode(b"drop-\xe9t\xe9") / "b.dcm", SOPInstanceUID="1.2.3.4.98")
    result = index_hospital(settings, "h1")
    assert (result.files, result.rows) == (1, 1)
    assert set(read_partition(settings, "dicom_index", "h1")["drop"]) == {"d1"}
    assert len(result.refused) == 1 and "not UTF-8" in result.refused[0]


def test_a_drop_named_after_its_patient_is_not_indexed_and_never_named(settings):
    """An export copied without its drop level, landing/<hospital>/<PatientID>/<Study>/...: its first level, the
    drop, is the patient. Also files directly in the hospital's folder: reported, not silently skipped."""
    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    for i, folder in enumerate([PATIENT["PatientID"], "doe", f" {PATIENT['AccessionNumber'].lower()} "]):
        write_mg(settings.landing / "h1" / folder / "s1" / "b.dcm", SOPInstanceUID=f"1.2.3.4.{90 + i}")
    write_mg(settings.landing / "h1" / "loose.dcm", SOPInstanceUID="1.2.3.4.97")
    result = index_hospital(settings, "h1")
    assert (result.files, result.rows) == (1, 1)
    assert len(result.refused) == 4 and sum("patient identifier" in why for why in result.refused) == 3
    assert "1 file(s) directly in landing/h1/" in result.refused[-1]
    outside = [
        p for p in settings.home.rglob("*") if not p.is_relative_to(settings.landing) and "private" not in p.parts
    ]
    written = " ".join(result.refused) + " ".join(p.name for p in outside)
    for table in ("dicom_index", "quarantine"):
        written += " ".join(map(str, read_partition(settings, table, "h1").to_numpy().ravel()))
    assert PATIENT["PatientID"] not in written and "ACC-777".lower() not in written.lower()
    assert not re.search(r"\bdoe\b", written.lower())


def test_a_drop_refused_after_it_was_indexed_loses_what_was_written_under_its_name(settings):
    """A drop named after its patient, indexed while half-copied (its first file not readable yet), is refused
    once its files are: its index and quarantine files and its private lookup go, reported by count."""
    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    drop = settings.landing / "h1" / PATIENT["PatientID"]
    (drop / "s1").mkdir(parents=True)
    (drop / "s1" / "a.dcm").write_bytes(b"\0" * 64)  # the copy has only begun
    first = index_hospital(settings, "h1")
    assert (first.refused, first.quarantined) == ([], {"truncated": 1})
    assert index_module.index_path(settings, "h1", PATIENT["PatientID"]).exists()

    write_mg(drop / "s1" / "a.dcm", SOPInstanceUID="1.2.3.4.95")  # copied: its identifiers can be read now
    second = index_hospital(settings, "h1")
    names = [p.name for p in settings.home.rglob("*") if not p.is_relative_to(settings.landing)]
    assert not any(PATIENT["PatientID"] in name for name in names)
    assert (second.forgotten, second.rows, len(second.refused)) == (1, 1, 1)
    assert set(read_partition(settings, "dicom_index", "h1")["drop"]) == {"d1"}
    assert read_partition(settings, "quarantine", "h1").empty
    assert index_hospital(settings, "h1").forgotten == 0


def test_a_drop_is_checked_on_its_images_behind_a_viewer_of_many_files(settings):
    """A CD export whose viewer (30 files) sorts before its images: the viewer's files are passed over by their
    suffix, so the drop, named after its patient, is still refused instead of indexed under the patient's name."""
    root = settings.landing / "h1" / "Doe_Jane"
    (root / "DICOMVIEWER").mkdir(parents=True)
    (root / "AUTORUN.INF").write_text("[autorun]")
    for i in range(30):
        (root / "DICOMVIEWER" / f"lib{i:02d}.dll").write_bytes(b"MZ")
    write_mg(root / "IMAGES" / "a.dcm")
    result = index_hospital(settings, "h1")
    assert result.rows == 0 and any("patient identifier" in why for why in result.refused)


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("Müller^Zoë", "zoe_muller"),
        ("MÜLLER^ZOË", "Zoë Müller"),
        ("Иванова^Анна", "Анна_Иванова"),
        ("王^小明", "王小明"),
        ("李^娜", "export_李娜"),
    ],
)
def test_a_drop_named_after_a_patient_in_any_script_is_refused(settings, name, folder):
    """Accents aside, and names in any script: a folder "zoe_muller" names the patient Müller^Zoë."""
    write_mg(settings.landing / "h1" / folder / "a.dcm", PatientName=name, SpecificCharacterSet="ISO_IR 192")
    result = index_hospital(settings, "h1")
    assert result.rows == 0 and len(result.refused) == 1 and "patient identifier" in result.refused[0]


def test_a_hospital_folder_named_after_its_patient_is_not_indexed(settings):
    """A partition registered before its folder was found to be an export copied one level too high
    (landing/<PatientID>/<Study>/...): its index writes nothing under the patient's name."""
    write_mg(settings.landing / "pat-0042" / "s1" / "a.dcm")
    result = index_hospital(settings, "pat-0042")
    assert (result.files, result.rows, len(result.refused)) == (0, 0, 1)
    assert "not a hospital" in result.refused[0]
    assert not [p for p in settings.home.rglob("*") if "pat-0042" in p.name and not p.is_relative_to(settings.landing)]


def test_the_copy_of_a_deleted_duplicate_takes_its_place(settings):
    first = write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    write_mg(settings.landing / "h1" / "d1" / "b.dcm", SOPInstanceUID="1.2.3.4.5")
    (settings.landing / "h1" / "d2").mkdir(parents=True)
    shutil.copy(first, settings.landing / "h1" / "d2" / "a_again.dcm")
    assert index_hospital(settings, "h1").quarantined == {"duplicate": 1}
    first.unlink()  # the copy that won is cleaned up; the other is the image now
    result = index_hospital(settings, "h1")
    assert (result.rows, result.new, result.withdrawn) == (2, 0, 0) and result.moved == 1  # the image never left
    rels = set(read_partition(settings, "dicom_index", "h1")["rel_path"])
    assert rels == {pseudo(settings, "h1/d1/b.dcm"), pseudo(settings, "h1/d2/a_again.dcm")}
    assert read_partition(settings, "quarantine", "h1").empty


def test_another_image_under_a_sop_uid_already_taken_is_a_uid_collision_not_a_copy(settings):
    """An R view sent under the SOP Instance UID of an L view: it used to be quarantined `duplicate`, like a copy,
    and so offered to the cache as a stand-in for the L view. Now `uid_collision`, naming what differs, and a copy
    re-sent in another transfer syntax (the same study, side, view and matrix) stays a `duplicate`."""
    study = "1.2.3.9"
    write_mg(settings.landing / "h1" / "d1" / "a.dcm", SOPInstanceUID="1.2.3.4.5", StudyInstanceUID=study)
    write_mg(
        settings.landing / "h1" / "d2" / "r.dcm",
        SOPInstanceUID="1.2.3.4.5",
        StudyInstanceUID=study,
        ImageLaterality="R",
    )
    write_damaged_mg(settings.landing / "h1" / "d3" / "a.dcm", SOPInstanceUID="1.2.3.4.5", StudyInstanceUID=study)
    result = index_hospital(settings, "h1")
    assert result.rows == 1 and result.quarantined == {"uid_collision": 1, "duplicate": 1}
    rows = read_partition(settings, "quarantine", "h1").set_index("reason")
    assert "differs in laterality" in rows.loc["uid_collision", "message"]
    assert rows.loc["duplicate", "drop"] == "d3"


@pytest.mark.parametrize("left", ["empty", "deleted"])
def test_every_file_of_a_drop_moved_to_another_drop_is_counted_moved_not_duplicate(settings, left):
    """Moving every file of a drop into another drop (landing reorganized: d1 left empty, or deleted) left d1 with
    no file, so it counted as cleaned out of landing: its rows were kept, naming files that are gone, and the moved
    files were quarantined as their `duplicate`s. A present file with the SOP Instance UID of such a row now takes
    the row over: counted `moved` (neither new nor duplicate), its row names where it is, d1's table loses it."""
    import pyarrow.parquet as pq

    root = settings.landing / "h1"
    for name in ("a", "b"):
        write_mg(root / "d1" / f"{name}.dcm")
    index_hospital(settings, "h1")
    (root / "d2").mkdir()
    for name in ("a", "b"):
        os.rename(root / "d1" / f"{name}.dcm", root / "d2" / f"{name}.dcm")
    if left == "deleted":
        (root / "d1").rmdir()
    result = index_hospital(settings, "h1")
    assert (result.moved, result.new, result.withdrawn, result.quarantined, result.rows) == (2, 0, 0, {}, 2)
    assert result.read == 2
    assert read_partition(settings, "quarantine", "h1").empty  # no `duplicate` rows
    index = read_partition(settings, "dicom_index", "h1")
    assert set(index["drop"]) == {"d2"}
    assert set(index["rel_path"]) == {pseudo(settings, f"h1/d2/{n}.dcm") for n in ("a", "b")}
    assert pq.read_table(index_module.index_path(settings, "h1", "d1")).num_rows == 0  # written empty
    again = index_hospital(settings, "h1")
    assert (again.moved, again.new, again.withdrawn, again.unchanged, again.rows) == (0, 0, 0, 2, 2)
    assert again.quarantined == {}


def test_a_run_killed_before_it_removed_the_rows_taken_over_is_finished_by_the_next(settings, monkeypatch):
    """The rows a copy took over leave their cleaned-out drop's table after the copies' tables are written: a run
    killed in between leaves the image under two rows, and the next run removes the stale one."""
    import pyarrow.parquet as pq

    root = settings.landing / "h1"
    for name in ("a", "b"):
        write_mg(root / "d1" / f"{name}.dcm")
    index_hospital(settings, "h1")
    os.rename(root / "d1", root / "d2")
    stale = index_module.index_path(settings, "h1", "d1")
    write_table = index_module._write_table

    def killed(table, path):
        if path == stale:
            raise KeyboardInterrupt
        return write_table(table, path)

    monkeypatch.setattr(index_module, "_write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        index_hospital(settings, "h1")
    assert len(read_partition(settings, "dicom_index", "h1")) == 4  # d2's rows written, d1's not yet removed
    monkeypatch.setattr(index_module, "_write_table", write_table)
    result = index_hospital(settings, "h1")
    assert (result.rows, result.unchanged, result.new, result.moved, result.withdrawn) == (2, 2, 0, 0, 0)
    assert pq.read_table(stale).num_rows == 0 and set(read_partition(settings, "dicom_index", "h1")["drop"]) == {"d2"}


@pytest.mark.parametrize("left", ["empty", "deleted"])
def test_a_drop_cleaned_out_of_landing_keeps_its_rows_and_withdraws_nothing(settings, left):
    """Deleting a drop folder, or emptying it, after ingest is a normal clean-up (an archive's
    `rsync --remove-source-files`): its rows are the record of what was ingested, so they stay, and nothing is
    withdrawn, run after run."""
    root = settings.landing / "h1"
    for name in ("a", "b"):
        write_mg(root / "d1" / f"{name}.dcm")
    write_mg(root / "d2" / "c.dcm")
    index_hospital(settings, "h1")
    before = read_partition(settings, "dicom_index", "h1").sort_values("rel_path").reset_index(drop=True)
    for name in ("a", "b"):
        (root / "d1" / f"{name}.dcm").unlink()
    if left == "deleted":
        (root / "d1").rmdir()
    for _ in range(2):
        result = index_hospital(settings, "h1")
        assert (result.withdrawn, result.moved, result.new, result.rows, result.quarantined) == (0, 0, 0, 3, {})
        after = read_partition(settings, "dicom_index", "h1").sort_values("rel_path").reset_index(drop=True)
        pd.testing.assert_frame_equal(after, before)


def test_a_copy_of_an_image_whose_drop_left_landing_takes_its_row_over(settings):
    """A drop cleaned out of landing keeps its index rows (its renditions stay usable), and a copy of one of its
    images arriving later was quarantined as its `duplicate`, the row naming a file that is gone. The copy is now
    indexed in its place, counted `moved`, whether it comes in the run that finds the drop gone or in a later one,
    or was quarantined as a duplicate while the drop was still there; the row then names a file the cache can read
    again (a new normalization renders it). The drop's other rows stay."""
    root = settings.landing / "h1"
    first = write_mg(root / "d1" / "a.dcm")
    second = write_mg(root / "d1" / "b.dcm")
    third = write_mg(root / "d1" / "c.dcm")
    write_mg(root / "d1" / "kept.dcm")
    index_hospital(settings, "h1")
    sops = read_partition(settings, "dicom_index", "h1").set_index("rel_path")["sop_instance_uid"]
    (root / "d2").mkdir()
    shutil.copy(first, root / "d2" / "a_again.dcm")  # a duplicate while d1 is there
    assert index_hospital(settings, "h1").quarantined == {"duplicate": 1}
    shutil.copy(second, root / "d2" / "b_again.dcm")  # arrives in the run that finds d1 gone
    kept = third.read_bytes()
    shutil.rmtree(root / "d1")
    result = index_hospital(settings, "h1")
    assert (result.moved, result.new, result.withdrawn, result.quarantined, result.rows) == (2, 0, 0, {}, 4)
    assert read_partition(settings, "quarantine", "h1").empty
    (root / "d3").mkdir()
    (root / "d3" / "c_later.dcm").write_bytes(kept)  # arrives in a later run
    later = index_hospital(settings, "h1")
    assert (later.moved, later.new, later.withdrawn, later.quarantined, later.rows) == (1, 0, 0, {}, 4)
    index = read_partition(settings, "dicom_index", "h1").set_index("sop_instance_uid")["rel_path"]
    assert index[sops[pseudo(settings, "h1/d1/a.dcm")]] == pseudo(settings, "h1/d2/a_again.dcm")
    assert index[sops[pseudo(settings, "h1/d1/b.dcm")]] == pseudo(settings, "h1/d2/b_again.dcm")
    assert index[sops[pseudo(settings, "h1/d1/c.dcm")]] == pseudo(settings, "h1/d3/c_later.dcm")
    assert index[sops[pseudo(settings, "h1/d1/kept.dcm")]] == pseudo(settings, "h1/d1/kept.dcm")  # not come back
    again = index_hospital(settings, "h1")
    assert (again.moved, again.new, again.withdrawn, again.quarantined, again.rows) == (0, 0, 0, {}, 4)


def test_another_image_under_the_uid_of_a_cleaned_out_drops_image_does_not_take_its_row(settings, monkeypatch):
    """Only a copy takes a cleaned-out drop's row over: another image under its SOP Instance UID (another side) is
    a `uid_collision`, and the row stays, run after run; so does the row of a drop the index may not list (its
    file may be there), whose copy stays a `duplicate`."""
    from mammo_pipeline import landing as landing_module

    root = settings.landing / "h1"
    write_mg(root / "d1" / "a.dcm", SOPInstanceUID="1.2.3.4.5", StudyInstanceUID="1.2.3.9")
    shown = write_mg(root / "d3" / "s1" / "c.dcm")
    index_hospital(settings, "h1")
    shutil.rmtree(root / "d1")
    write_mg(root / "d2" / "r.dcm", SOPInstanceUID="1.2.3.4.5", StudyInstanceUID="1.2.3.9", ImageLaterality="R")
    shutil.copy(shown, root / "d2" / "c_again.dcm")
    real_scandir = _deny_listing(monkeypatch, "s1")
    result = index_hospital(settings, "h1")
    assert result.quarantined == {"uid_collision": 1, "duplicate": 1} and result.moved == 0 and result.rows == 2
    assert index_hospital(settings, "h1").quarantined == {}  # kept, not read again
    monkeypatch.setattr(landing_module.os, "scandir", real_scandir)
    index = read_partition(settings, "dicom_index", "h1")
    assert set(index["rel_path"]) == {pseudo(settings, "h1/d1/a.dcm"), pseudo(settings, "h1/d3/s1/c.dcm")}


def test_a_file_moved_to_another_drop_or_renamed_is_counted_moved_not_withdrawn_and_new(settings):
    """A file moved to another drop of its hospital (a sender re-filing its export) was counted `withdrawn` (its
    path left its drop) and `new` (read under the new path), though its image never left the index. A SOP Instance
    UID whose file left its path and which is indexed again in the same run, from another drop or under another
    name, is counted `moved`, neither withdrawn nor new, and its row names where it is now; a file deleted in the
    same run is still withdrawn, and a new one new."""
    root = settings.landing / "h1"
    for name in ("a", "b", "c"):
        write_mg(root / "d1" / f"{name}.dcm")
    write_mg(root / "d2" / "x.dcm")
    index_hospital(settings, "h1")
    sops = read_partition(settings, "dicom_index", "h1").set_index("rel_path")["sop_instance_uid"]
    a, b = sops[pseudo(settings, "h1/d1/a.dcm")], sops[pseudo(settings, "h1/d1/b.dcm")]

    os.rename(root / "d1" / "a.dcm", root / "d2" / "a.dcm")  # another drop: same size and mtime
    os.rename(root / "d1" / "b.dcm", root / "d1" / "b_renamed.dcm")  # another name in its drop
    (root / "d1" / "c.dcm").unlink()  # a withdrawal
    write_mg(root / "d2" / "y.dcm")  # a new image
    result = index_hospital(settings, "h1")
    assert (result.withdrawn, result.new, result.unchanged, result.rows) == (1, 1, 1, 4)
    assert result.moved == 2
    assert result.read == 3  # the moved files' headers were opened
    index = read_partition(settings, "dicom_index", "h1").set_index("sop_instance_uid")
    assert (index.loc[a, "drop"], index.loc[a, "rel_path"]) == ("d2", pseudo(settings, "h1/d2/a.dcm"))
    assert index.loc[b, "rel_path"] == pseudo(settings, "h1/d1/b_renamed.dcm")
    again = index_hospital(settings, "h1")
    assert (again.moved, again.withdrawn, again.new, again.unchanged) == (0, 0, 0, 4)


@pytest.mark.parametrize(
    ("folder", "refused"),
    [
        ("Doe Jane", True),
        ("DOE_JANE", True),
        ("Doe, Jane", True),
        ("doe_jane_pat-0042", True),
        ("PAT-0042_20240101", True),
        ("acc777_export", True),  # the accession "ACC-777", its punctuation aside
        ("JaneDoe", True),  # given name first, no separator
        ("export_janedoe_2024", True),
        ("20240101", False),
        ("batch_001", False),
        ("2024-01-15_export", False),
        ("pat_batch_03", False),  # an ID's site prefix ("PAT-0042") is no patient's: a word of many drop names
        ("acc_drop_2024", False),  # nor is an accession number's ("ACC-777")
    ],
)
def test_a_drop_folder_holding_a_patients_name_or_id_is_refused(settings, folder, refused):
    root = settings.landing / "h1" / folder
    (root / "IHE_PDI").mkdir(parents=True)
    for name in ("AUTORUN.INF", "IHE_PDI/INDEX.HTM", "IHE_PDI/STYLE.CSS"):  # a CD export: these sort first
        (root / name).write_text("not DICOM")
    write_mg(root / "IMAGES" / "a.dcm")
    result = index_hospital(settings, "h1")
    assert any("patient identifier" in why for why in result.refused) == refused


def test_a_killed_runs_temp_files_go_at_the_next_index_and_a_live_runs_stay(settings):
    """An index killed while writing leaves `.<file>.<owner>.tmp` beside its table and its private lookup. They went
    only after six hours, by age, or (the lookup's) never (before stop 54); now whenever their owner is dead."""
    from mammo_pipeline.atomic import run_owner
    from mammo_pipeline.dicom.source_paths import lookup_path
    from mammo_pipeline_tests.test_cache import dead_owner

    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    index_hospital(settings, "h1")
    folders = [settings.table_dir("dicom_index", "h1"), lookup_path(settings, "h1", "d1").parent]
    killed = [folder / f".d1.parquet.{dead_owner()}1234.tmp" for folder in folders]
    alive = [folder / f".d1.parquet.{run_owner()}1234.tmp" for folder in folders]
    for path in killed + alive:
        path.write_bytes(b"half")
    write_mg(settings.landing / "h1" / "d2" / "b.dcm")  # a new drop: the lookup is written again
    index_hospital(settings, "h1")
    assert [p.exists() for p in killed + alive] == [False, False, True, True]


def test_a_file_the_index_may_not_read_is_read_again_once_it_may(settings, monkeypatch):
    """A permission error is quarantined `unreadable`, not `unsupported`, and the file is read again on the next
    run: fixing a permission changes neither its size nor its mtime, so it stayed quarantined for good (before
    stop 54). The message names the file by its pseudonymized path only."""
    path = write_mg(settings.landing / "h1" / "d1" / "Doe_Jane" / "a.dcm")
    real = index_module.read_header_row

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(index_module, "read_header_row", denied)
    assert index_hospital(settings, "h1").quarantined == {"unreadable": 1}
    message = read_partition(settings, "quarantine", "h1")["message"].iat[0]
    assert "Permission denied" in message and "Doe_Jane" not in message and str(path) not in message
    monkeypatch.setattr(index_module, "read_header_row", real)
    again = index_hospital(settings, "h1")
    assert again.new == 1 and again.quarantined == {} and read_partition(settings, "quarantine", "h1").empty


def test_a_folder_the_index_may_not_list_is_not_taken_for_deleted(settings, monkeypatch):
    """A study folder whose permission forbids listing held nothing to the scan, so its images' rows were dropped
    as if deleted, with no word said, and read and rendered again once it could be listed (stop 62's probe). Its
    drop now keeps its rows as they were, the run says why (by count, never by a folder's name), and nothing is
    read again afterwards."""
    from mammo_pipeline import landing as landing_module

    root = settings.landing / "h1" / "d1"
    for study in ("Doe_Jane", "s2"):
        write_mg(root / study / "a.dcm")
        write_mg(root / study / "b.dcm")
    assert index_hospital(settings, "h1").rows == 4
    real_scandir = _deny_listing(monkeypatch, "Doe_Jane")
    hidden = index_hospital(settings, "h1")
    assert hidden.rows == 4 and len(read_partition(settings, "dicom_index", "h1")) == 4
    assert any("cannot be listed" in why for why in hidden.refused)
    assert not any("Doe_Jane" in why for why in hidden.refused)
    monkeypatch.setattr(landing_module.os, "scandir", real_scandir)
    again = index_hospital(settings, "h1")
    assert again.rows == 4 and again.new == 0 and again.unchanged == 4 and again.refused == []


def test_an_image_indexed_under_two_hospitals_is_counted_in_both(settings):
    """The same file sent to two hospitals' drops was indexed in both without a word (stop 62's probe); each
    keeps its row, and each run now counts the images another hospital's index holds too."""
    first = write_mg(settings.landing / "h1" / "d1" / "s1" / "a.dcm")
    write_mg(settings.landing / "h1" / "d1" / "s1" / "b.dcm")
    (settings.landing / "h2" / "d1" / "s9").mkdir(parents=True)
    shutil.copy(first, settings.landing / "h2" / "d1" / "s9" / "a.dcm")
    assert index_hospital(settings, "h1").shared == 0  # h2 not indexed yet
    h2 = index_hospital(settings, "h2")
    assert h2.rows == 1 and h2.shared == 1
    assert index_hospital(settings, "h1").shared == 1


@pytest.mark.parametrize("key", ["../../elsewhere/h1", "..", "h1/d1", "", "a\\b"])
def test_a_partition_key_that_is_not_one_folder_reads_and_writes_nothing(settings, key):
    """A key typed into the Dagster UI's "Add partition" is the hospital: "../../elsewhere/h1" indexed DICOM files
    outside landing/ and wrote tables and the private path lookup outside their folders (stop 62's probe)."""
    outside = settings.home.parent / "elsewhere" / "h1" / "d1"
    write_mg(outside / "a.dcm")
    before = sorted(p for p in settings.home.parent.rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="not a hospital partition key"):
        index_hospital(settings, key)
    with pytest.raises(ValueError, match="not a hospital partition key"):
        settings.table_dir("dicom_index", key)
    assert sorted(p for p in settings.home.parent.rglob("*") if p.is_file()) == before


def test_dicom_files_named_like_hidden_files_are_counted_not_lost_in_silence(settings):
    """Names starting with `.` or `_` are the pipeline's markers and an OS's hidden files, so they are not indexed;
    a DICOM file so named (a PACS export's `_0001.dcm`) is counted in the partition's warnings, while `_READY`, a
    Mac's `._` file and `.DS_Store` are not."""
    root = settings.landing / "h1" / "d1"
    write_mg(root / "p1" / "a.dcm")
    write_mg(root / "p1" / "_0001.dcm")
    write_mg(root / "p1" / ".b.dcm")
    (root / "_READY").touch()
    (root / "p1" / "._a.dcm").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)  # AppleDouble
    (root / "p1" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    result = index_hospital(settings, "h1")
    assert (result.files, result.rows) == (1, 1)
    assert [why for why in result.refused if "names start with" in why] == [
        "2 DICOM file(s) in landing/h1/ were not indexed because their names start with `.` or `_` (names the "
        "pipeline keeps for markers and hidden files): rename them"
    ]


def _later(path) -> None:
    """Move a file's mtime a second on, so a rewrite is a change even on a coarse clock."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_an_indexed_file_overwritten_by_one_the_index_cannot_read_keeps_its_image(settings):
    """A re-sent drop damaged in transfer overwrites indexed files with garbage or a truncated copy: their rows left
    the index as if the files were deleted, so the cache withdrew the images (renditions deleted, out of the label
    store) until a readable copy came. Now each image keeps its index row (the file it was read from), the new
    file is quarantined with its reason, the run counts it `replaced_unreadable`, and nothing is withdrawn; a
    later run leaves both as they are, a readable copy is read as any changed file, and deleting the damaged file
    withdraws the image as any deletion does."""
    root = settings.landing / "h1" / "d1"
    for name in ("a", "b", "c"):
        write_mg(root / f"{name}.dcm")
    index_hospital(settings, "h1")
    before = read_partition(settings, "dicom_index", "h1").set_index("rel_path")
    a, b = pseudo(settings, "h1/d1/a.dcm"), pseudo(settings, "h1/d1/b.dcm")
    sent = (root / "a.dcm").read_bytes()
    (root / "a.dcm").write_bytes(b"\x00garbage from a transfer gone wrong" * 40)
    (root / "b.dcm").write_bytes((root / "b.dcm").read_bytes()[:-500])
    for name in ("a", "b"):
        _later(root / f"{name}.dcm")

    result = index_hospital(settings, "h1")
    assert (result.replaced_unreadable, result.withdrawn, result.new, result.moved) == (2, 0, 0, 0)
    assert result.rows == 3 and result.quarantined == {"not_dicom": 1, "truncated": 1}
    after = read_partition(settings, "dicom_index", "h1").set_index("rel_path")
    columns = ["sop_instance_uid", "file_size", "file_mtime_ns"]
    assert after[columns].sort_index().equals(before[columns].sort_index())  # the rows of the files read before
    quarantine = read_partition(settings, "quarantine", "h1").set_index("rel_path")
    assert quarantine["reason"].to_dict() == {a: "not_dicom", b: "truncated"}
    assert quarantine.loc[a, "file_size"] == (root / "a.dcm").stat().st_size  # the damaged file's, not the image's
    for rel in (a, b):
        message = quarantine.loc[rel, "message"]
        assert rel in message and before.loc[rel, "sop_instance_uid"] in message and "replaced" in message

    again = index_hospital(settings, "h1")
    assert (again.replaced_unreadable, again.new, again.withdrawn, again.quarantined) == (0, 0, 0, {})
    assert (again.unchanged, again.rows, again.read) == (3, 3, 0)
    assert (
        read_partition(settings, "dicom_index", "h1")
        .set_index("rel_path")[columns]
        .sort_index()
        .equals(before[columns].sort_index())
    )

    (root / "a.dcm").write_bytes(sent)  # re-sent intact
    _later(root / "a.dcm")
    (root / "b.dcm").unlink()  # deleted: withdrawn, as any file deleted from its drop
    last = index_hospital(settings, "h1")
    assert (last.new, last.withdrawn, last.replaced_unreadable, last.quarantined, last.rows) == (1, 1, 0, {}, 2)
    index = read_partition(settings, "dicom_index", "h1").set_index("rel_path")
    assert index.loc[a, "sop_instance_uid"] == before.loc[a, "sop_instance_uid"]
    assert index.loc[a, "file_size"] == (root / "a.dcm").stat().st_size and b not in index.index
    assert read_partition(settings, "quarantine", "h1").empty


def test_an_indexed_file_replaced_by_another_readable_image_is_indexed_as_that_image(settings):
    """Only a file the index cannot read as an image stands for nothing: a readable file in its place (another
    image, or a tomosynthesis stack it quarantines as such) is what the drop holds now, so the earlier image's row
    goes, as before."""
    root = settings.landing / "h1" / "d1"
    write_mg(root / "a.dcm")
    write_mg(root / "b.dcm")
    index_hospital(settings, "h1")
    before = read_partition(settings, "dicom_index", "h1").set_index("rel_path")["sop_instance_uid"]
    write_mg(root / "a.dcm", Rows=96, Columns=72, pixel_bytes=bytes(96 * 72 * 2))
    write_mg(root / "b.dcm", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    for name in ("a", "b"):
        _later(root / f"{name}.dcm")
    result = index_hospital(settings, "h1")
    assert (result.new, result.replaced_unreadable, result.rows) == (1, 0, 1)
    assert result.quarantined == {"not_mammography": 1}
    after = read_partition(settings, "dicom_index", "h1")
    assert not set(after["sop_instance_uid"]) & set(before)


def test_an_indexed_file_replaced_by_one_the_index_may_not_read_keeps_its_image_every_run(settings, monkeypatch):
    """A replacement the index may not open (permission denied) is read again on every run (`unreadable`): the
    image keeps its row on each, and once the file may be read it is indexed as it is."""
    root = settings.landing / "h1" / "d1"
    path = write_mg(root / "a.dcm")
    write_mg(root / "b.dcm")
    index_hospital(settings, "h1")
    sop = read_partition(settings, "dicom_index", "h1").set_index("rel_path").loc[pseudo(settings, "h1/d1/a.dcm")]
    write_mg(path, SOPInstanceUID=sop["sop_instance_uid"], Rows=96, Columns=72, pixel_bytes=bytes(96 * 72 * 2))
    _later(path)
    real = index_module.read_header_row

    def denied(file, *args, **kwargs):
        if file.name == "a.dcm":
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(index_module, "read_header_row", denied)
    for _ in range(2):
        result = index_hospital(settings, "h1")
        assert (result.replaced_unreadable, result.withdrawn, result.rows) == (1, 0, 2)
        assert result.quarantined == {"unreadable": 1}
        row = read_partition(settings, "dicom_index", "h1").set_index("sop_instance_uid").loc[sop["sop_instance_uid"]]
        assert (row["file_size"], row["rows"]) == (sop["file_size"], 48)
    monkeypatch.setattr(index_module, "read_header_row", real)
    fixed = index_hospital(settings, "h1")
    assert (fixed.new, fixed.replaced_unreadable, fixed.quarantined, fixed.rows) == (1, 0, {}, 2)
    row = read_partition(settings, "dicom_index", "h1").set_index("sop_instance_uid").loc[sop["sop_instance_uid"]]
    assert (row["file_size"], row["rows"]) == (path.stat().st_size, 96)
