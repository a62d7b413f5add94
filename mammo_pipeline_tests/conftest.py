"""Fixtures shared by every test: a throw-away MAMMO_HOME."""

from __future__ import annotations

import warnings

import pytest

from mammo_pipeline.settings import Settings


def _import_anyio_eagerly() -> None:
    """Resolve anyio's lazily imported API now, in the main thread.

    anyio (4.x) imports its submodules on first attribute access, e.g. `anyio.open_file` when Starlette serves a
    file from the app server's thread. anyio is a pytest plugin, so pytest's assertion rewriting compiles those
    modules, and CPython 3.11 can fail compiling in two threads at once with "SystemError: AST constructor
    recursion depth mismatch" (python/cpython#106905): a flaky test failure, not an app error.
    """
    import anyio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn when resolved
        for name in dir(anyio):
            getattr(anyio, name, None)


_import_anyio_eagerly()


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
