import json
import logging
import os
import time

import dagster as dg
import pandas as pd
import pytest

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.defs import jobs, sensors
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.labels.store import LabelStore
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline_tests.dicom.test_headers import PATIENT, write_mg

CHAIN = ["dicom_index", "image_cache", "image_predictions", "study_predictions"]


def stand_in(name: str) -> dg.AssetsDefinition:
    """A partitioned asset with the key of a real one, so the chain job resolves without the domain modules."""

    @dg.asset(name=name, partitions_def=hospital_partitions)
    def _asset() -> None: ...

    return _asset


@pytest.fixture
def mammo(settings):
    return MammoSettings(home=str(settings.home))


@pytest.fixture
def defs(mammo):
    return dg.Definitions(
        assets=[stand_in(n) for n in CHAIN],
        jobs=[jobs.hospital_chain_job],
        sensors=[sensors.new_hospital_drops],
        resources={"mammo": mammo},
    )


@pytest.fixture(autouse=True)
def quiet_two_minutes(monkeypatch):
    monkeypatch.setenv("MAMMO_DROP_QUIET_SECONDS", "120")


class Lines(logging.Handler):
    """The messages a sensor logs, kept in a list."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def tick(instance, defs, mammo, cursor, logs: list[str] | None = None):
    """One sensor evaluation, then what the daemon does with it: add the requested partitions. The sensor's log
    lines are appended to `logs`."""
    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), cursor=cursor, definitions=defs, resources={"mammo": mammo}
    )
    if logs is not None:
        context.log.addHandler(Lines(logs))
    data = sensors.new_hospital_drops.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def add_drop(landing, hospital, drop, age=3600.0, ready_marker=False, dicom=False):
    """A drop folder with one file (a readable DICOM file when `dicom`) last modified `age` seconds ago."""
    folder = landing / hospital / drop
    folder.mkdir(parents=True)
    f = folder / "img.dcm"
    if dicom:
        write_mg(f)
    else:
        f.write_bytes(b"x")
    t = time.time() - age
    os.utime(f, (t, t))
    if ready_marker:
        (folder / "_READY").touch()
    return folder


def keys(data):
    return [(r.partition_key, r.run_key) for r in data.run_requests]


def written(data, logs: list[str]) -> str:
    """Everything a tick hands to Dagster as text: log lines, skip reason, run keys, tags, cursor."""
    requests = [f"{r.run_key} {r.tags}" for r in data.run_requests]
    return " ".join([*logs, data.skip_message or "", *requests, data.cursor or ""])


def test_new_hospital_adds_partition_and_requests_its_drop(instance, defs, mammo, settings):
    first = tick(instance, defs, mammo, None)  # empty landing
    add_drop(settings.landing, "st-marys", "drop-20260101", ready_marker=True)

    data = tick(instance, defs, mammo, first.cursor)

    assert instance.get_dynamic_partitions("hospital") == ["st-marys"]
    assert keys(data) == [("st-marys", "st-marys:drop-20260101")]
    assert data.run_requests[0].tags["dagster/partition"] == "st-marys"


def test_new_drop_of_known_hospital_requests_one_run(instance, defs, mammo, settings):
    add_drop(settings.landing, "h1", "d1")
    cursor = tick(instance, defs, mammo, None).cursor
    add_drop(settings.landing, "h1", "d2")

    data = tick(instance, defs, mammo, cursor)

    assert keys(data) == [("h1", "h1:d2")]
    assert not data.dynamic_partitions_requests


def test_half_copied_drop_is_picked_only_once_quiet(instance, defs, mammo, settings):
    cursor = tick(instance, defs, mammo, None).cursor
    folder = add_drop(settings.landing, "h1", "d1", age=5, dicom=True)  # still being copied

    busy = tick(instance, defs, mammo, cursor)
    assert busy.run_requests == []
    assert instance.get_dynamic_partitions("hospital") == ["h1"]

    old = time.time() - 300
    os.utime(folder / "img.dcm", (old, old))
    later = tick(instance, defs, mammo, busy.cursor)
    assert keys(later) == [("h1", "h1:d1")]


def test_a_drop_being_copied_is_not_named_before_its_files_can_be_read(instance, defs, mammo, settings):
    """A drop folder named after its patient whose first file is still empty: not named in a log line while it
    is being copied, and refused, not requested, once its files arrive below its study folder."""
    add_drop(settings.landing, "h1", "d1")
    cursor = tick(instance, defs, mammo, None).cursor
    study = settings.landing / "h1" / PATIENT["PatientID"] / "s1"
    study.mkdir(parents=True)
    (study / "a.dcm").write_bytes(b"")
    logs: list[str] = []

    busy = tick(instance, defs, mammo, cursor, logs)
    assert PATIENT["PatientID"] not in written(busy, logs)
    assert any("h1: 1 drop folder(s) still being copied" in line for line in logs)

    write_mg(study / "a.dcm")
    old = time.time() - 300
    os.utime(study / "a.dcm", (old, old))
    later = tick(instance, defs, mammo, busy.cursor, logs)
    assert PATIENT["PatientID"] not in written(busy, logs) + written(later, logs)
    assert later.run_requests == []


def test_refused_drops_and_loose_files_are_reported_by_count_once(instance, defs, mammo, settings):
    """Without waiting for another drop of the hospital to start a run (the index's warning), and not every tick."""
    add_drop(settings.landing, "h1", "d1")
    write_mg(settings.landing / "h1" / PATIENT["PatientID"] / "s1" / "a.dcm")
    (settings.landing / "h1" / "loose.dcm").write_bytes(b"x")
    logs: list[str] = []

    first = tick(instance, defs, mammo, None, logs)
    assert any("landing/h1/: 1 drop folder(s) not indexed" in line for line in logs)
    assert any("landing/h1/: 1 file(s) outside any drop folder" in line for line in logs)
    assert PATIENT["PatientID"] not in written(first, logs)

    again: list[str] = []
    second = tick(instance, defs, mammo, first.cursor, again)
    assert not any("not indexed" in line for line in again)
    assert second.skip_message.endswith("; not indexed: h1: 1 refused drop folder(s), 1 loose file(s)")
    assert PATIENT["PatientID"] not in written(second, again)


def test_a_folder_named_after_a_patient_is_no_hospital_partition(instance, defs, mammo, settings):
    add_drop(settings.landing, "h1", "d1")
    write_mg(settings.landing / "pat-0042" / "s1" / "a.dcm")  # an export copied one level too high
    logs: list[str] = []
    data = tick(instance, defs, mammo, None, logs)
    assert instance.get_dynamic_partitions("hospital") == ["h1"] and keys(data) == [("h1", "h1:d1")]
    assert any("landing/: 1 folder(s) not taken as a hospital" in line for line in logs)
    assert "pat-0042" not in written(data, logs).lower()


def test_restart_with_stored_cursor_repeats_nothing(instance, defs, mammo, settings):
    add_drop(settings.landing, "h1", "d1")
    add_drop(settings.landing, "h2", "d1")
    cursor = tick(instance, defs, mammo, None).cursor
    stored = json.loads(cursor)  # what the daemon persisted before it stopped

    after_restart = tick(instance, defs, mammo, json.dumps(stored))

    assert after_restart.run_requests == []
    assert after_restart.skip_message and "no new ready drops" in after_restart.skip_message


def test_repeated_tick_without_cursor_update_reuses_the_run_key(instance, defs, mammo, settings):
    add_drop(settings.landing, "h1", "d1")
    cursor = tick(instance, defs, mammo, None).cursor
    add_drop(settings.landing, "h1", "d2")
    # If a tick's cursor were lost, the retry asks for the same run_key, which the daemon runs only once.
    assert keys(tick(instance, defs, mammo, cursor)) == keys(tick(instance, defs, mammo, cursor)) == [("h1", "h1:d2")]


def test_first_start_registers_history_without_flooding(instance, defs, mammo, settings):
    for drop in ["drop-20250101", "drop-20250201", "drop-20250301"]:
        add_drop(settings.landing, "h1", drop)
    add_drop(settings.landing, "h2", "drop-20250115")
    add_drop(settings.landing, "_truth", "drop-20250101")

    data = tick(instance, defs, mammo, None)

    assert sorted(instance.get_dynamic_partitions("hospital")) == ["h1", "h2"]
    assert keys(data) == [("h1", "h1:drop-20250301"), ("h2", "h2:drop-20250115")]
    assert json.loads(data.cursor)["seen"] == {
        "h1": ["drop-20250101", "drop-20250201", "drop-20250301"],
        "h2": ["drop-20250115"],
    }


def test_drops_dicom_index_holds_are_not_new_even_without_a_cursor(instance, defs, mammo, settings):
    for hospital, drop in [("h1", "d1"), ("h1", "d2"), ("h2", "d1")]:
        add_drop(settings.landing, hospital, drop)
    # h1/d1 indexed, h2/d1 had only bad files (quarantine rows only); h1/d2 was never indexed
    index = pd.DataFrame({"hospital": ["h1"], "drop": ["d1"], "sop_instance_uid": ["1.2.3"]})
    write_parquet(index, settings.table_dir("dicom_index", "h1") / "d1.parquet")
    bad = pd.DataFrame({"hospital": ["h2"], "drop": ["d1"], "stage": ["index"], "reason": ["not_dicom"]})
    write_parquet(bad, settings.table_dir("quarantine", "h2") / "index-d1.parquet")

    data = tick(instance, defs, mammo, None)  # the daemon's first tick after a manual materialization

    assert keys(data) == [("h1", "h1:d2")]
    assert sorted(instance.get_dynamic_partitions("hospital")) == ["h1", "h2"]
    assert json.loads(data.cursor)["seen"] == {"h1": ["d1", "d2"], "h2": ["d1"]}
    assert tick(instance, defs, mammo, data.cursor).run_requests == []


def test_a_drop_indexed_while_still_being_copied_gets_its_own_run_once_copied(instance, defs, mammo, settings):
    """Another run (d1's, the nightly pass) indexes the hospital while d2 is still arriving: d2's first file is
    in the index, the rest not. Once d2 is copied it is new, not 'already indexed'."""
    add_drop(settings.landing, "h1", "d1", ready_marker=True, dicom=True)
    first = tick(instance, defs, mammo, None)
    d2 = add_drop(settings.landing, "h1", "d2", age=1, dicom=True)  # being copied
    busy = tick(instance, defs, mammo, first.cursor)
    assert busy.run_requests == []
    index_hospital(settings, "h1")  # d1's run: every drop of the hospital, d2's first file too
    during = tick(instance, defs, mammo, busy.cursor)
    assert during.run_requests == []
    write_mg(d2 / "b.dcm")
    write_mg(d2 / "c.dcm")
    (d2 / "_READY").touch()
    done = tick(instance, defs, mammo, during.cursor)
    assert keys(done) == [("h1", "h1:d2")]


def test_a_half_indexed_drop_whose_first_file_the_cache_quarantined_still_gets_its_run(instance, defs, mammo, settings):
    """The cache's quarantine rows are files the index already counted: counted again, a drop indexed half-copied
    looked whole once its first file failed to render, and its other files waited for the nightly pass."""
    from mammo_pipeline.cache import cache_hospital
    from mammo_pipeline_tests.dicom.test_headers import write_damaged_mg

    add_drop(settings.landing, "h1", "d1", ready_marker=True, dicom=True)
    first = tick(instance, defs, mammo, None)
    d2 = settings.landing / "h1" / "d2"
    write_damaged_mg(d2 / "a.dcm")  # being copied: one file so far, damaged
    index_hospital(settings, "h1")  # d1's run indexes and caches the whole hospital
    assert cache_hospital(settings, "h1").quarantined == {"undecodable": 1}
    write_mg(d2 / "b.dcm")
    (d2 / "_READY").touch()
    done = tick(instance, defs, mammo, first.cursor)
    assert keys(done) == [("h1", "h1:d2")]


def test_the_index_holding_a_refused_drop_does_not_repeat_its_warning_every_tick(instance, defs, mammo, settings):
    """A drop indexed before it was refused (named after its patient once its files could be read) stays in the
    index until the next index run: its warning is still logged once."""
    add_drop(settings.landing, "h1", "d1", ready_marker=True, dicom=True)
    refused = settings.landing / "h1" / PATIENT["PatientID"]
    write_mg(refused / "s1" / "a.dcm")
    index = pd.DataFrame({"hospital": ["h1"], "drop": [PATIENT["PatientID"]], "sop_instance_uid": ["1.2.3"]})
    write_parquet(index, settings.table_dir("dicom_index", "h1") / "refused.parquet")
    counts, cursor = [], None
    for _ in range(3):
        logs: list[str] = []
        data = tick(instance, defs, mammo, cursor, logs)
        counts.append(sum("not indexed" in line for line in logs))
        cursor = data.cursor
    assert counts == [1, 0, 0]


def test_missing_landing_is_skipped(instance, defs, mammo, settings):
    settings.landing.rmdir()
    assert "does not exist" in tick(instance, defs, mammo, None).skip_message


def test_drop_sensor_is_on_by_default():
    assert sensors.new_hospital_drops.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors.retrain_on_new_labels.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors.new_hospital_drops.minimum_interval_seconds == int(
        os.environ.get("MAMMO_DROP_SENSOR_INTERVAL") or 30
    )


def test_a_bad_drop_sensor_interval_fails_the_code_location_naming_the_variable():
    """A user's report: MAMMO_DROP_SENSOR_INTERVAL=abc failed loading the code location with a bare
    "invalid literal for int()", not naming the variable."""
    import subprocess
    import sys

    env = {**os.environ, "MAMMO_DROP_SENSOR_INTERVAL": "abc"}
    done = subprocess.run(
        [sys.executable, "-c", "import mammo_pipeline.defs.sensors"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "mammo_pipeline.settings.SettingsError: MAMMO_DROP_SENSOR_INTERVAL must be a whole number, not 'abc'"
    )


# --- retraining -------------------------------------------------------------------------------------


@pytest.fixture
def label_events(settings):
    """Add label events to a real label store until its last event id is n."""
    store = LabelStore(settings.labels_db)
    manifest = pd.DataFrame(
        {"sop_instance_uid": ["1.2.3.1", "1.2.3.2"], "hospital": ["h1", "h1"], "display_png": ["a.png", "b.png"],
         "model_png": ["a_s.png", "b_s.png"], "patient_key": ["p1", "p2"]}
    )  # fmt: skip
    store.sync_images(manifest)
    image_ids = store.images()["id"].tolist()

    def grow_to(n: int) -> None:
        while store.last_event_id() < n:
            store.record(image_ids[store.last_event_id() % 2], "biopsy", "ann")

    return grow_to


def retrain_tick(instance, mammo, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"mammo": mammo})
    return sensors.retrain_on_new_labels.evaluate_tick(context)


def save_model(settings, snapshot_events: list[int] | None) -> None:
    """A current model trained on a label snapshot holding these events (None: snapshot file missing)."""
    ModelRef("m1", "snap1", "m1", 256, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)).save(settings.models)
    if snapshot_events is not None:
        path = settings.table_dir("labels") / "snapshots" / "snap1.parquet"
        write_parquet(pd.DataFrame({"event_id": snapshot_events}), path)


@pytest.fixture
def retrain_after_10(monkeypatch):
    monkeypatch.setenv("MAMMO_RETRAIN_AFTER", "10")


def test_retrain_waits_for_enough_labels_then_requests_once(instance, mammo, label_events, retrain_after_10):
    label_events(9)
    assert retrain_tick(instance, mammo, None).run_requests == []
    label_events(12)
    first = retrain_tick(instance, mammo, None)
    assert [r.run_key for r in first.run_requests] == ["retrain:12"]
    assert first.run_requests[0].job_name in (None, "retrain_model")

    label_events(15)  # 3 more since the request: not yet
    assert retrain_tick(instance, mammo, first.cursor).run_requests == []
    label_events(22)
    assert [r.run_key for r in retrain_tick(instance, mammo, first.cursor).run_requests] == ["retrain:22"]


def test_retrain_counts_from_the_current_models_label_snapshot(
    instance, mammo, settings, label_events, retrain_after_10
):
    save_model(settings, [38, 40])
    label_events(45)
    assert retrain_tick(instance, mammo, None).run_requests == []
    label_events(50)
    assert [r.run_key for r in retrain_tick(instance, mammo, None).run_requests] == ["retrain:50"]


def test_retrain_with_unreadable_snapshot_waits_for_new_labels(
    instance, mammo, settings, label_events, retrain_after_10
):
    save_model(settings, None)
    label_events(30)
    skipped = retrain_tick(instance, mammo, None)
    assert skipped.run_requests == [] and "0 new label events" in skipped.skip_message


def test_retrain_without_label_store_is_skipped(instance, mammo, settings):
    assert "no label store" in retrain_tick(instance, mammo, None).skip_message
    assert not settings.labels_db.exists()  # the sensor does not create it


@pytest.mark.parametrize(
    ("cursor", "model_event", "has_model", "expected"),
    [
        (None, None, False, 0),
        (None, 12, True, 12),
        (None, None, True, 30),
        ('{"requested_at_event": 20}', 12, True, 20),
        ('{"requested_at_event": 20}', 25, True, 25),
        ('{"requested_at_event": 20}', None, True, 20),
    ],
)
def test_retrain_baseline(cursor, model_event, has_model, expected):
    assert sensors.retrain_baseline(cursor, model_event, has_model, last_event_id=30) == expected
