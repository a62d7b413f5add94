from pathlib import Path

import pytest

from mammo_pipeline.settings import Settings, SettingsError, drop_sensor_interval_from_env, quiet_seconds_from_env


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


def test_the_drop_sensors_variables_are_positive_numbers_named_when_refused():
    """A user's report: MAMMO_DROP_SENSOR_INTERVAL=abc failed the code location with a bare int() error, and -3 (or
    a negative MAMMO_DROP_QUIET_SECONDS) was taken; now both are read like the other MAMMO_* numbers."""
    assert quiet_seconds_from_env({}) == 120.0 and quiet_seconds_from_env({"MAMMO_DROP_QUIET_SECONDS": " "}) == 120.0
    assert quiet_seconds_from_env({"MAMMO_DROP_QUIET_SECONDS": "5.5"}) == 5.5
    assert drop_sensor_interval_from_env({}) == 30
    assert drop_sensor_interval_from_env({"MAMMO_DROP_SENSOR_INTERVAL": "7"}) == 7
    refused = [
        (quiet_seconds_from_env, "MAMMO_DROP_QUIET_SECONDS", "soon", "must be a number of seconds, not 'soon'"),
        (quiet_seconds_from_env, "MAMMO_DROP_QUIET_SECONDS", "nan", "must be a number of seconds, not 'nan'"),
        (quiet_seconds_from_env, "MAMMO_DROP_QUIET_SECONDS", "-3", "must be more than 0, not -3"),
        (quiet_seconds_from_env, "MAMMO_DROP_QUIET_SECONDS", "0", "must be more than 0, not 0"),
        (drop_sensor_interval_from_env, "MAMMO_DROP_SENSOR_INTERVAL", "abc", "must be a whole number, not 'abc'"),
        (drop_sensor_interval_from_env, "MAMMO_DROP_SENSOR_INTERVAL", "-3", "must be at least 1, not -3"),
        (drop_sensor_interval_from_env, "MAMMO_DROP_SENSOR_INTERVAL", "0", "must be at least 1, not 0"),
    ]
    for read, var, value, message in refused:
        with pytest.raises(SettingsError, match=f"^{var} {message}$"):
            read({var: value})
