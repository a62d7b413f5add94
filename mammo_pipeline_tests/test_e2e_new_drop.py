"""A drop lands, the sensor notices it, and the run it asks for leaves predictions in the warehouse."""

import dagster as dg
import pandas as pd
import pytest

from mammo_pipeline import synth, warehouse
from mammo_pipeline.defs import sensors
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline_tests.model.test_infer import make_model

DROP = "drop-20260301"


def sensor_tick(instance, defs, settings, cursor):
    context = dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=defs,
        resources={"mammo": MammoSettings(home=str(settings.home))},
    )
    data = sensors.new_hospital_drops.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:  # what the daemon does before launching runs
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


@pytest.mark.timeout(300)
def test_new_drop_is_sensed_and_processed_into_predictions(settings, defs, instance):

    empty = sensor_tick(instance, defs, settings, None)  # the daemon starts before any drop exists
    assert empty.run_requests == []
    synth.generate_drops(settings.landing, hospitals=1, studies_per_hospital=2, scale=0.25, drop=DROP, workers=1)
    (hospital,) = [p.name for p in settings.landing.iterdir() if not p.name.startswith(("_", "."))]

    tick = sensor_tick(instance, defs, settings, empty.cursor)
    assert instance.get_dynamic_partitions("hospital") == [hospital]
    (request,) = tick.run_requests
    assert (request.partition_key, request.run_key) == (hospital, f"{hospital}:{DROP}")

    job = defs.resolve_job_def("process_hospital")
    # a first drop comes before any model: indexed and cached, and predicting waits without failing the run
    first = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags)
    assert first.success
    assert {e.asset_key.path[-1] for e in first.get_asset_materialization_events()} == {"dicom_index", "image_cache"}
    assert not list(settings.table_dir("image_predictions", hospital).glob("*.parquet"))

    ref = make_model(settings, version="m-e2e")  # the model the predictions must name
    result = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags)
    assert result.success
    checks = {e.check_name for e in result.get_asset_check_evaluations()}  # the drift checks run with the chain
    assert checks == {"no_unlabeled_device", "class_rates_near_audit", "needs_review_not_growing"}

    images = pd.read_parquet(settings.table_dir("image_cache", hospital))
    predictions = warehouse.read_slice(settings, "image_predictions", hospital, ref.model_version)
    assert len(predictions) == images["sop_instance_uid"].nunique() > 0
    assert set(predictions["model_version"]) == {ref.model_version}
    assert set(predictions["sop_instance_uid"]) == set(images["sop_instance_uid"])
    studies = warehouse.read_slice(settings, "study_predictions", hospital, ref.model_version)
    assert set(studies["study_instance_uid"]) == set(predictions["study_instance_uid"])

    assert sensor_tick(instance, defs, settings, tick.cursor).run_requests == []  # the drop is not run again
