"""Fixtures shared by every test: a throw-away MAMMO_HOME."""

from __future__ import annotations

import pytest

from mammo_pipeline.settings import Settings


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings with every path under a temporary MAMMO_HOME (also exported, for code that reads the env)."""
    s = Settings.under(tmp_path / "home", workers=1, pretrained="none", salt="test-salt").ensure_dirs()
    for key, value in s.as_env().items():
        monkeypatch.setenv(key, value)
    return s
