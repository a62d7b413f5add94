"""The `withdraw_drop` job: a dry run by default, what it did in its metadata, the partition's assets marked."""

from __future__ import annotations

import shutil

from mammo_pipeline.cache import read_manifest
from mammo_pipeline.defs.jobs import withdraw_drop
from mammo_pipeline_tests.defs.job_runs import failure_description, output_metadata, run_job
from mammo_pipeline_tests.test_drop_withdrawal import _ingested


def _run(instance, **config):
    return run_job(withdraw_drop, "withdraw_drop_op", instance, **config)


def test_withdraw_drop_is_a_dry_run_unless_told_and_marks_the_partitions_assets(settings, instance):
    _ingested(settings)
    shutil.rmtree(settings.landing / "h1" / "d1")

    dry = _run(instance, hospital="h1", drop="d1")
    assert dry.success and len(read_manifest(settings, "h1")) == 4
    assert output_metadata(dry) == {
        "dry_run": True,
        "images": 2,
        "kept_by_another_copy": 1,
        "withdrawn": 0,
        "withdrawn_from_labels": 0,
    }
    assert not dry.asset_materializations_for_node("withdraw_drop_op")

    done = _run(instance, hospital="h1", drop="d1", dry_run=False)
    assert done.success and len(read_manifest(settings, "h1")) == 3
    assert (output_metadata(done)["withdrawn"], output_metadata(done)["withdrawn_from_labels"]) == (1, 1)
    marked = done.asset_materializations_for_node("withdraw_drop_op")
    assert {(m.asset_key.to_user_string(), m.partition) for m in marked} == {
        ("dicom_index", "h1"),
        ("image_cache", "h1"),
    }


def test_withdraw_drop_fails_for_a_drop_landing_still_holds(settings, instance):
    _ingested(settings)
    result = _run(instance, hospital="h1", drop="d1", dry_run=False)
    assert not result.success and len(read_manifest(settings, "h1")) == 4
    assert "still holds files" in failure_description(result)
