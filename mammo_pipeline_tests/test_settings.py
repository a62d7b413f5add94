from pathlib import Path

import pytest

from mammo_pipeline.settings import Settings


def test_settings_default_paths_are_under_home(tmp_path):
    s = Settings.from_env({"MAMMO_HOME": str(tmp_path)})
    assert s.landing == tmp_path / "landing"
    assert s.labels_db == tmp_path / "labels.sqlite"
    assert s.dagster_home == tmp_path / "dagster"
    assert s.table_dir("dicom_index", "st-marys") == tmp_path / "warehouse" / "dicom_index" / "hospital=st-marys"


def test_settings_each_path_overridable(tmp_path):
    s = Settings.from_env({"MAMMO_HOME": str(tmp_path), "MAMMO_CACHE": "/fast/cache", "MAMMO_WORKERS": "3"})
    assert s.cache == Path("/fast/cache")
    assert s.workers == 3 and s.n_workers == 3


def test_settings_roundtrip_through_environment(tmp_path):
    s = Settings.from_env({"MAMMO_HOME": str(tmp_path), "MAMMO_PRETRAINED": "none", "MAMMO_SEED": "7"})
    assert Settings.from_env(s.as_env()) == s


def test_settings_reject_unknown_pretrained(tmp_path):
    with pytest.raises(ValueError, match="MAMMO_PRETRAINED"):
        Settings.from_env({"MAMMO_HOME": str(tmp_path), "MAMMO_PRETRAINED": "yes"})


def test_pseudonym_salt_is_made_once_and_kept(tmp_path):
    s = Settings.under(tmp_path)
    first = s.pseudonym_salt()
    assert len(first) == 64
    assert Settings.under(tmp_path).pseudonym_salt() == first
    assert (tmp_path / ".salt").stat().st_mode & 0o077 == 0
