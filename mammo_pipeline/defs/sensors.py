"""Sensors: new hospital drops start the per-hospital chain; enough new labels start a retraining.

Both are on by default (no toggling in the UI) and keep their state in the sensor cursor, so a daemon
restart neither repeats nor forgets work. A drop that dicom_index already holds is never new, whatever the
cursor says: the first tick after the demo, or after a manual materialization, requests nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.defs import automation, jobs
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.drops import DropCursor, scan_landing
from mammo_pipeline.landing import drop_is_ready, iter_dicom_stats
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings, drop_sensor_interval_from_env, quiet_seconds_from_env

RETRAIN_SENSOR_INTERVAL = 300


@dg.sensor(
    job=jobs.hospital_chain_job,
    minimum_interval_seconds=drop_sensor_interval_from_env(),  # a bad value fails the code location, named
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_hospital_drops(context: dg.SensorEvaluationContext, mammo: MammoSettings) -> dg.SensorResult | dg.SkipReason:
    """Adds a `hospital` partition per new landing/ folder; runs the chain per hospital with new ready drops;
    warns, by count and once per change, about drop folders and files that are not indexed."""
    settings = mammo.get()
    landing = settings.landing
    if not landing.is_dir():
        return dg.SkipReason(f"{landing} does not exist yet")
    cursor = DropCursor.from_json(context.cursor)
    seen = cursor.seen if cursor else frozenset()
    quiet = quiet_seconds_from_env()
    indexed = {p for p, rows in indexed_drops(settings).items() if p in seen or whole(landing, p, rows, quiet)}
    if indexed - seen:
        # drops dicom_index already holds whole (the demo, a manual materialization) are not new; one it indexed
        # while it was still being copied (another drop's run, the nightly pass) stays new until a run takes it
        cursor = DropCursor(seen | indexed, cursor.reported if cursor else frozenset())
    scan = scan_landing(
        landing,
        cursor,
        registered=context.instance.get_dynamic_partitions(hospital_partitions.name),
        quiet_seconds=quiet,
    )
    for hospital, drop in scan.waiting:
        context.log.info(f"{hospital}/{drop} is still being copied (no _READY, files changed recently)")
    for hospital, n in scan.undecided:  # maybe named after their patient: counted, never named
        context.log.info(
            f"{hospital}: {n} drop folder(s) still being copied, with no readable DICOM file yet to check their "
            "names against (named here once checked)"
        )
    if scan.hospitals_waiting:  # maybe named after a patient: counted, never named
        context.log.info(
            f"{scan.hospitals_waiting} new folder(s) of landing/ with no readable DICOM file yet: taken as hospitals "
            "once their names are checked, or their files are quiet"
        )
    for line in scan.new_notices:  # once per change: the cursor keeps what was reported
        context.log.warning(line)
    if scan.first_start and scan.runs:
        context.log.info(f"First start: one run per hospital for {sum(len(r.drops) for r in scan.runs)} drops")
    if not scan.changed and context.cursor == scan.cursor.to_json():
        summary = f"; {scan.not_indexed_summary}" if scan.not_indexed else ""
        return dg.SkipReason(f"no new ready drops ({scan.copying} still being copied){summary}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run.run_key,
                partition_key=run.hospital,
                tags={"mammo/trigger": "new_drop", "mammo/drops": ",".join(run.drops)[:200]},
            )
            for run in scan.runs
        ],
        dynamic_partitions_requests=(
            [hospital_partitions.build_add_request(list(scan.new_hospitals))] if scan.new_hospitals else []
        ),
        cursor=scan.cursor.to_json(),
    )


def indexed_drops(settings: Settings) -> dict[tuple[str, str], int]:
    """(hospital, drop) -> how many of its files dicom_index holds (rows of dicom_index and the index's rows of the
    quarantine table, so a drop whose files were all quarantined counts; the cache's quarantine rows are files
    the index already counted)."""
    found: dict[tuple[str, str], int] = {}
    with warehouse.connect(settings) as con:
        present = warehouse.views(con)
        for table, where in (("dicom_index", ""), ("quarantine", " AND stage = 'index'")):
            if table in present:
                rows = con.execute(
                    f'SELECT hospital, "drop", count(*) FROM {table} WHERE "drop" IS NOT NULL{where} GROUP BY ALL'
                ).fetchall()
                for h, d, n in rows:
                    found[(str(h), str(d))] = found.get((str(h), str(d)), 0) + int(n)
    return found


def whole(landing: Path, pair: tuple[str, str], rows: int, quiet_seconds: float) -> bool:
    """Whether a drop is copied (`landing.drop_is_ready`) and the index holds every file it holds now: a drop
    indexed while it was being copied has more files than rows once the copy is done. Walks only the drops the
    cursor has not seen."""
    hospital, drop = pair
    folder = landing / hospital / drop
    if not folder.is_dir() or not drop_is_ready(folder, quiet_seconds):
        return not folder.is_dir()  # a drop gone from landing: nothing left to run
    return sum(1 for _ in iter_dicom_stats(landing, hospital, [drop])) <= rows


def retrain_baseline(cursor: str | None, model_event: int | None, has_model: bool, last_event_id: int) -> int:
    """The label event id up to which the current model (or the last retraining request) has seen labels.

    The later of the cursor (the last request) and the newest event in the current model's label snapshot.
    A model whose snapshot cannot be read is taken as up to date on the first tick; no model saw no labels.
    """
    covered = [0]
    if cursor:
        covered.append(int(json.loads(cursor)["requested_at_event"]))
    if model_event is not None:
        covered.append(model_event)
    elif has_model and not cursor:
        covered.append(last_event_id)
    return max(covered)


def _last_event_id(labels_db: Path) -> int:
    """The newest label event, read from the existing store (`open_existing`: read-only when this user may not
    write it, as on a read-only home, where opening it for writing failed every tick: stop 62's probe)."""
    from mammo_pipeline.labels.store import open_existing

    return open_existing(labels_db).last_event_id()


def _model_event(settings: Settings) -> tuple[bool, int | None]:
    """(a model exists, the newest label event in the snapshot it was trained on, if readable)."""
    try:
        ref = ModelRef.load(settings.models)
    except FileNotFoundError:
        return False, None
    snapshot = settings.table_dir("labels") / "snapshots" / f"{ref.label_snapshot_id}.parquet"
    if not snapshot.exists():
        return True, None
    events = pd.read_parquet(snapshot, columns=["event_id"])["event_id"]
    return True, int(events.max()) if len(events) else 0


@dg.sensor(
    job=automation.retrain_model,
    minimum_interval_seconds=RETRAIN_SENSOR_INTERVAL,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def retrain_on_new_labels(context: dg.SensorEvaluationContext, mammo: MammoSettings) -> dg.SensorResult | dg.SkipReason:
    """Retrains (trained_model + onnx_model) once `retrain_after` labels arrived since the last model."""
    settings = mammo.get()
    if not settings.labels_db.exists():
        return dg.SkipReason(f"no label store at {settings.labels_db} yet")
    last = _last_event_id(settings.labels_db)
    has_model, model_event = _model_event(settings)
    baseline = retrain_baseline(context.cursor, model_event, has_model, last)
    new = last - baseline
    if new < settings.retrain_after:
        return dg.SkipReason(f"{new} new label events since the last model; retraining after {settings.retrain_after}")
    context.log.info(f"{new} new label events (up to event {last}): requesting a retraining")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"retrain:{last}", tags={"mammo/trigger": "new_labels"})],
        cursor=json.dumps({"requested_at_event": last}),
    )
