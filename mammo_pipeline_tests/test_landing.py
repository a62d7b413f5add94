import os

from mammo_pipeline.landing import drop_is_ready, list_drops, list_hospitals


def test_list_hospitals_skips_private_and_invalid(tmp_path):
    for name in ["st-marys", "royal_free", "_truth", ".hidden", "Bad,Name"]:
        (tmp_path / name / "drop-20260101").mkdir(parents=True)
    assert list_hospitals(tmp_path) == ["royal_free", "st-marys"]
    assert list_drops(tmp_path, "st-marys") == ["drop-20260101"]


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
