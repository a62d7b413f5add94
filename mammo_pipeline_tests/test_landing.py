import os

from mammo_pipeline.landing import drop_is_ready, list_drops, list_hospitals
from mammo_pipeline_tests.dicom.test_headers import write_mg


def test_list_hospitals_skips_private_and_invalid(tmp_path):
    for name in ["st-marys", "royal_free", "_truth", ".hidden", "Bad,Name"]:
        (tmp_path / name / "drop-20260101").mkdir(parents=True)
    assert list_hospitals(tmp_path) == ["royal_free", "st-marys"]
    assert list_drops(tmp_path, "st-marys") == ["drop-20260101"]


def test_a_folder_named_after_a_patient_is_not_a_hospital(tmp_path):
    """An export copied one level too high, landing/<PatientID>/<Study>/...: its top folder, a valid slug, would
    become a hospital partition named after the patient. A single name part among other words is not enough for
    a hospital folder (its first patient may be called Doe), the whole name or an ID is."""
    write_mg(tmp_path / "st-marys" / "d1" / "a.dcm")
    write_mg(tmp_path / "doe-general" / "d1" / "a.dcm")
    write_mg(tmp_path / "pat-0042" / "s1" / "a.dcm")
    write_mg(tmp_path / "jane_doe" / "a.dcm")
    write_mg(tmp_path / "20240101_12345678" / "s1" / "a.dcm", PatientID="12345678")
    assert list_hospitals(tmp_path) == ["doe-general", "st-marys"]
    from mammo_pipeline.landing import check_drop, check_hospital

    assert check_hospital(tmp_path, "pat-0042").refusal.startswith("a folder of landing/ named after a patient")
    assert check_drop(tmp_path / "doe-general" / "d1").decided  # read, passed


def test_drop_ready_by_marker_or_quiet_time(tmp_path):
    drop = tmp_path / "h" / "d1"
    drop.mkdir(parents=True)
    f = drop / "a.dcm"
    f.write_bytes(b"x")
    now = f.stat().st_mtime
    assert not drop_is_ready(drop, quiet_seconds=60, now=now + 5)
    assert drop_is_ready(drop, quiet_seconds=60, now=now + 61)
    (drop / "_READY").touch()
    os.utime(f, (now + 5, now + 5))
    assert drop_is_ready(drop, quiet_seconds=60, now=now + 6)


def test_iter_dicom_files_walks_like_pathlib_rglob(tmp_path):
    """The scandir walk yields what `sorted(root.rglob("*"))` filtered to files would, plus what linked folders
    hold (a study folder linked in from a mount; until stop 55 not entered, its files neither indexed nor
    reported): files in hidden folders, symlinks to files, not broken links, link loops or `.`/`_` names, in
    pathlib's component order (where "a/b" sorts before "a-b/c", unlike plain string order), with each file's size
    and mtime."""
    from pathlib import Path

    from mammo_pipeline.landing import iter_dicom_files, iter_dicom_stats

    names = ["a0", "a-b/c", "a/b", "a.b", ".hid/x", "_x", ".y", "Z", "z/_READY", "é", "deep/er/f.dcm"]
    for rel in names:
        (tmp_path / "h" / "d1" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "h" / "d1" / rel).write_bytes(rel.encode())
    (tmp_path / "h" / "d2").mkdir()
    (tmp_path / "h" / "d2" / "only.dcm").write_bytes(b"12345")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_bytes(b"x")
    os.symlink(tmp_path / "other", tmp_path / "h" / "d1" / "linkdir")
    os.symlink(tmp_path / "other" / "x", tmp_path / "h" / "d1" / "linkfile")
    os.symlink(tmp_path / "nope", tmp_path / "h" / "d1" / "broken")
    os.symlink(tmp_path / "h" / "d1", tmp_path / "h" / "d1" / "a" / "loop")  # back up the tree: entered once

    expected = []
    for drop in list_drops(tmp_path, "h"):
        for path in sorted([*(tmp_path / "h" / drop).rglob("*"), *(tmp_path / "h" / drop).glob("linkdir/*")]):
            if path.is_file() and not path.name.startswith((".", "_")):
                expected.append((drop, path))
    assert (("d1", tmp_path / "h" / "d1" / "linkdir" / "x")) in expected
    assert list(iter_dicom_files(tmp_path, "h")) == expected
    assert [p.relative_to(tmp_path / "h").as_posix() for _, p in expected][:4] == [
        "d1/.hid/x",
        "d1/Z",
        "d1/a/b",
        "d1/a-b/c",
    ]
    stats = list(iter_dicom_stats(tmp_path, "h"))
    assert [(d, Path(p)) for d, p, _, _ in stats] == expected
    for _, path, size, mtime_ns in stats:
        info = Path(path).stat()
        assert (size, mtime_ns) == (info.st_size, info.st_mtime_ns)
    assert list(iter_dicom_stats(tmp_path, "h", drops=["gone"])) == []
