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


@pytest.fixture
def defs():
    """The real Definitions of the code location."""
    from mammo_pipeline import definitions

    return definitions.build_definitions()


@pytest.fixture
def instance():
    """A throw-away Dagster instance (modules that share one across tests override this)."""
    import dagster as dg

    with dg.instance_for_test() as inst:
        yield inst
