"""`mammo cache prune`: says what it would delete, deletes it, and exits 1 when a hospital was left alone."""

from __future__ import annotations

from click.testing import CliRunner

from mammo_pipeline import cache as cache_module
from mammo_pipeline.cli import cli
from mammo_pipeline_tests.test_cache_prune import small_cache


def _prune(*args: str):
    return CliRunner().invoke(cli, ["cache", "prune", *args])


def test_cache_prune_prints_the_plan_then_deletes_it(settings):
    made = small_cache(settings)
    small_cache(settings, "h2")["orphan"].unlink()  # a hospital with nothing to delete

    dry = _prune("--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "h1: would delete 1 file(s), 1.5 kB: old-version PNGs 0 (0 B), orphan PNGs 1 (1.5 kB), " in dry.output
    assert "h2: nothing to delete" in dry.output
    assert "would delete 1 file(s), 1.5 kB, from 2 of 2 hospital(s)" in dry.output
    assert made["orphan"].exists()

    done = _prune("--hospital", "h1", "-s")
    assert done.exit_code == 0, done.output
    assert "h1: deleted 1 file(s), 1.5 kB" in done.output and "h2" not in done.output
    assert not made["orphan"].exists() and all(p.exists() for p in made["named"])


def test_cache_prune_exits_1_naming_a_hospital_a_cache_run_holds(settings):
    busy = small_cache(settings)
    free = small_cache(settings, "h2")
    with cache_module.run_lock_now(settings, "h1"):
        result = _prune("-s")
    assert result.exit_code == 1
    assert "h1: skipped: a cache run holds it" in result.output and "Error: not pruned: h1" in result.output
    assert busy["orphan"].exists() and not free["orphan"].exists()  # the other hospital was pruned


def test_cache_prune_of_an_unknown_hospital_is_one_line(settings):
    result = _prune("--hospital", "h9")
    assert result.exit_code == 1 and result.output == f"Error: no cache folder for 'h9' under {settings.cache}\n"
