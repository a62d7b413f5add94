"""The `prune_cache` job: a dry run by default, the counts in its output's metadata, a failure for a busy hospital."""

from __future__ import annotations

from mammo_pipeline import cache as cache_module
from mammo_pipeline.defs.jobs import prune_cache
from mammo_pipeline_tests.defs.job_runs import failure_description, output_metadata, run_job
from mammo_pipeline_tests.test_cache_prune import small_cache


def _run(instance, **config):
    return run_job(prune_cache, "prune_cache_op", instance, **config)


def test_prune_cache_is_a_dry_run_unless_told_and_records_what_it_deleted(settings, instance):
    made = small_cache(settings)

    dry = _run(instance)
    assert dry.success and made["orphan"].exists()
    metadata = output_metadata(dry)
    assert (metadata["dry_run"], metadata["files"], metadata["bytes"]) == (True, 1, 1500)
    assert metadata["per_hospital"]["h1"]["orphan_png"] == {"files": 1, "bytes": 1500}

    done = _run(instance, dry_run=False, hospital="h1")
    assert done.success and not made["orphan"].exists() and all(p.exists() for p in made["named"])
    assert output_metadata(done)["files"] == 1


def test_prune_cache_fails_naming_a_hospital_a_cache_run_holds(settings, instance):
    made = small_cache(settings)
    with cache_module.run_lock_now(settings, "h1"):
        result = _run(instance, dry_run=False)
    assert not result.success and made["orphan"].exists()
    assert "not pruned: h1" in failure_description(result)
