import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from mammo_pipeline.defs import jobs
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.schedules import nightly_reprocess

LONDON = ZoneInfo("Europe/London")


@pytest.fixture
def repository_def():
    def stand_in(name):
        @dg.asset(name=name, partitions_def=hospital_partitions)
        def _asset() -> None: ...

        return _asset

    chain = ["dicom_index", "image_cache", "image_predictions", "study_predictions"]
    defs = dg.Definitions(
        assets=[stand_in(n) for n in chain], jobs=[jobs.hospital_chain_job], schedules=[nightly_reprocess]
    )
    return defs.get_repository_def()


def evaluate(instance, repository_def, when):
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repository_def)
    return nightly_reprocess.evaluate_tick(context)


def test_nightly_requests_every_hospital_once_per_date(instance, repository_def):
    instance.add_dynamic_partitions("hospital", ["st-marys", "royal-free"])
    night = dt.datetime(2026, 3, 4, 2, 0, tzinfo=LONDON)

    data = evaluate(instance, repository_def, night)

    assert [(r.partition_key, r.run_key) for r in data.run_requests] == [
        ("royal-free", "nightly:royal-free:2026-03-04"),
        ("st-marys", "nightly:st-marys:2026-03-04"),
    ]
    again = evaluate(instance, repository_def, night)  # a retried tick: same keys, so no second runs
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in data.run_requests]
    next_night = evaluate(instance, repository_def, night + dt.timedelta(days=1))
    assert {r.run_key for r in next_night.run_requests}.isdisjoint(r.run_key for r in data.run_requests)


def test_nightly_includes_hospitals_added_later(instance, repository_def):
    instance.add_dynamic_partitions("hospital", ["h1"])
    instance.add_dynamic_partitions("hospital", ["h2"])
    data = evaluate(instance, repository_def, dt.datetime(2026, 7, 1, 2, 0, tzinfo=LONDON))
    assert sorted(r.partition_key for r in data.run_requests) == ["h1", "h2"]


def test_nightly_without_hospitals_skips(instance, repository_def):
    data = evaluate(instance, repository_def, dt.datetime(2026, 1, 1, 2, 0, tzinfo=LONDON))
    assert data.run_requests == [] and "no hospital partitions" in data.skip_message


def test_nightly_runs_at_two_london_time():
    assert nightly_reprocess.cron_schedule == "0 2 * * *"
    assert nightly_reprocess.execution_timezone == "Europe/London"
    assert nightly_reprocess.default_status == dg.DefaultScheduleStatus.RUNNING
