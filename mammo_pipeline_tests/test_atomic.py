import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from mammo_pipeline.atomic import (
    STALE_AFTER_S,
    UnsafePath,
    atomic_path,
    ensure_under,
    is_stale,
    remove_stale_temps,
    remove_stale_temps_of,
    run_owner,
    write_parquet,
)


def test_atomic_path_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_parquet_replaces_whole_file(tmp_path):
    path = tmp_path / "t" / "part.parquet"
    write_parquet(pd.DataFrame({"x": [1, 2]}), path)
    write_parquet(pd.DataFrame({"x": [3]}), path)
    assert pd.read_parquet(path)["x"].tolist() == [3]


def test_remove_stale_temps_by_owner_and_age(tmp_path):
    (tmp_path / "sub").mkdir()
    legacy = tmp_path / "sub" / ".x.png.1234.tmp"  # no owner tag: stale only when old
    legacy.write_text("junk")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = run_owner().split("~")[0]
    killed = tmp_path / f".y.png.{host}~{dead.stdout.strip()}~ab12.tmp"  # its process is gone
    killed.write_text("junk")
    alive = tmp_path / f".z.png.{run_owner()}.tmp"  # this process: in flight
    alive.write_text("junk")
    elsewhere = tmp_path / ".w.png.otherhost~1~ab12.tmp"  # another host: stale only when old
    elsewhere.write_text("junk")
    (tmp_path / "keep.png").write_text("ok")

    assert remove_stale_temps(tmp_path) == 1 and not killed.exists()
    for path in (legacy, elsewhere, alive):
        os.utime(path, (time.time() - STALE_AFTER_S - 60,) * 2)
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(["keep.png", alive.name])


def test_remove_stale_temps_of_one_file_takes_its_dead_writers_temps_and_wal_only(tmp_path):
    target = tmp_path / "warehouse.duckdb"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = run_owner().split("~")[0]
    killed = tmp_path / f".warehouse.duckdb.{host}~{dead.stdout.strip()}~ab12.tmp"
    wal = tmp_path / f"{killed.name}.wal"
    alive = tmp_path / f".warehouse.duckdb.{run_owner()}.tmp"  # a refresh in flight in this process
    other = tmp_path / f".part.parquet.{host}~{dead.stdout.strip()}~ab12.tmp"  # another file's: not listed
    for path in (killed, wal, alive, other, tmp_path / f"{alive.name}.wal"):
        path.write_text("junk")
    assert remove_stale_temps_of(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, f"{alive.name}.wal", other.name])


def test_atomic_path_names_its_owner(tmp_path):
    owner = run_owner()
    with atomic_path(tmp_path / "a.png", owner) as tmp:
        assert tmp.name.startswith(f".a.png.{owner}") and tmp.name.endswith(".tmp")
        tmp.write_text("x")
        assert not is_stale(tmp)


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a/../../../root/escaped-1", "."])
def test_ensure_under_refuses_paths_that_leave_the_root(tmp_path, rel):
    with pytest.raises(UnsafePath):
        ensure_under(tmp_path / "root", rel)


def test_ensure_under_refuses_a_symlink_out_and_accepts_plain_children(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        ensure_under(root, "link/outside.png")
    assert ensure_under(root, "a/1.2.3.png") == (root / "a" / "1.2.3.png").resolve()


def test_scratch_dir_is_removed_after_its_block_and_a_killed_ones_when_its_owner_is_dead(tmp_path):
    import tempfile

    from mammo_pipeline.atomic import scratch_dir

    before = tempfile.tempdir
    with scratch_dir(tmp_path, "work", system_temp=True) as work:
        assert work.parent == tmp_path and work.name.startswith(".work.") and not is_stale(work)
        (work / "half.onnx").write_bytes(b"x")
        assert tempfile.TemporaryDirectory().name.startswith(str(work))  # libraries' temp folders land here
    assert tempfile.tempdir == before and list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), scratch_dir(tmp_path) as work:
        raise RuntimeError("failed")
    assert not work.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f".scratch.{run_owner().split('~')[0]}~{dead.stdout.strip()}~ab12.tmp"
    (killed / "ort.quant.1").mkdir(parents=True)
    (killed / "ort.quant.1" / ".inner.onnx.x~1~ab.tmp").write_bytes(b"x")
    alive = tmp_path / f".scratch.{run_owner()}.tmp"
    alive.mkdir()
    assert remove_stale_temps(tmp_path) == 1 and not killed.exists() and alive.is_dir()
