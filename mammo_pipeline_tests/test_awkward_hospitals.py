"""Hospitals named like numbers, dates and infinity go through the whole chain, and an instance whose drops are
already indexed (what the demo leaves behind) makes the drop sensor request nothing."""

import shutil

import dagster as dg
import pytest

from mammo_pipeline import synth, warehouse
from mammo_pipeline.lineage import study_lineage
from mammo_pipeline_tests.model.test_infer import make_model
from mammo_pipeline_tests.test_e2e_new_drop import sensor_tick

# DuckDB's hive type guessing would make these BIGINT, DATE, DATE 9999-12-31 and BIGINT 42.
AWKWARD = ["1001", "2024-01-05", "inf", "0042"]
DROP, NEW_DROP = "drop-20260301", "drop-20260315"


def _drops(settings, drop: str, names: list[str], tmp) -> None:
    """Synthetic drops for hospitals called `names` (synth names them itself, so generate aside and move)."""
    aside = tmp / drop
    synth.generate_drops(aside, hospitals=len(names), studies_per_hospital=1, scale=0.1, drop=drop, workers=1)
    slugs = sorted(p.name for p in aside.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for slug, name in zip(slugs, names, strict=False):
        (settings.landing / name).mkdir(parents=True, exist_ok=True)
        shutil.move(aside / slug / drop, settings.landing / name / drop)


def _materialize(defs, instance, keys: list[str], partition: str | None = None) -> dg.ExecuteInProcessResult:
    asset_keys = [dg.AssetKey(k) for k in keys]
    job = defs.resolve_implicit_job_def_def_for_assets(asset_keys)
    result = job.execute_in_process(asset_selection=asset_keys, partition_key=partition, instance=instance)
    assert result.success
    return result


@pytest.mark.timeout(600)
def test_awkward_hospital_names_pass_the_chain_and_an_indexed_instance_requests_nothing(
    settings, defs, instance, tmp_path
):
    _drops(settings, DROP, AWKWARD, tmp_path)
    make_model(settings, version="m-awk")
    _materialize(defs, instance, ["promoted_model"])
    instance.add_dynamic_partitions("hospital", AWKWARD)  # the demo's way: no sensor, direct materializations
    checks = set()
    for hospital in AWKWARD:
        result = _materialize(
            defs, instance, ["dicom_index", "image_cache", "image_predictions", "study_predictions"], hospital
        )
        checks |= {(e.check_name, e.passed) for e in result.get_asset_check_evaluations()}
    ran = {"no_unlabeled_device", "class_rates_near_audit", "needs_review_not_growing"}
    assert checks == {(name, True) for name in ran}  # the drift checks ran on every partition, quiet here
    _materialize(defs, instance, ["prediction_summary"])

    first = sensor_tick(instance, defs, settings, None)  # the daemon starts after the demo
    assert first.run_requests == []

    for hospital in AWKWARD:
        rows = warehouse.query(
            settings,
            "SELECT DISTINCT hospital, model_version FROM image_predictions_current WHERE hospital IN (SELECT ?)",
            [hospital],
        )
        assert rows.values.tolist() == [[hospital, "m-awk"]]
        (study,) = warehouse.query(
            settings, "SELECT study_instance_uid FROM study_predictions_current WHERE hospital = ?", [hospital]
        )["study_instance_uid"]
        lineage = study_lineage(settings, study, as_of="2999-01-01")
        assert lineage["hospital"] == hospital and lineage["current"]["promoted"]
        assert lineage["current"]["model_version"] == "m-awk"
    agreement = warehouse.query(
        settings,
        "SELECT hospital FROM read_parquet(?)",
        [str(settings.warehouse / "reports" / "prediction_summary.parquet")],
    )
    assert sorted(agreement["hospital"]) == sorted(AWKWARD)

    _drops(settings, NEW_DROP, ["0042"], tmp_path)  # a really new drop is still new
    second = sensor_tick(instance, defs, settings, first.cursor)
    assert [(r.partition_key, r.run_key) for r in second.run_requests] == [("0042", f"0042:{NEW_DROP}")]
