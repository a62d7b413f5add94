import pandas as pd
import pytest

from mammo_pipeline.atomic import atomic_path, remove_stale_temps, write_parquet


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


def test_remove_stale_temps(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".x.png.1234.tmp").write_text("junk")
    (tmp_path / "keep.png").write_text("ok")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.png"]
