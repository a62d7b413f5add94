"""The prediction assets end to end, with fake upstream assets standing in for onnx_model, image_cache, dicom_index."""

import dagster as dg
import pandas as pd
import pytest

from mammo_pipeline import promotions, warehouse
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.predict import image_predictions, prediction_summary, promoted_model, study_predictions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline_tests.model.test_infer import make_cache, make_dicom_index, make_model
from mammo_pipeline_tests.test_promotions import EASY, HARD, audit_frame, measured_on

HOSPITAL = "h1"
STUDIES = {"s1": 2, "s2": 3, "s3": 1}


class ModelConfig(dg.Config):
    version: str = "m1"
    seed: int = 0


@dg.asset(name="onnx_model")
def fake_onnx_model(config: ModelConfig, mammo: MammoSettings) -> dg.MaterializeResult:
    make_model(mammo.get(), config.version, config.seed, snapshot=f"snap-{config.version}")
    return dg.MaterializeResult(data_version=dg.DataVersion(config.version))


@dg.asset(name="image_cache", partitions_def=hospital_partitions)
def fake_image_cache(context: dg.AssetExecutionContext, mammo: MammoSettings) -> None:
    make_cache(mammo.get(), context.partition_key, STUDIES)


@dg.asset(name="dicom_index", partitions_def=hospital_partitions)
def fake_dicom_index(context: dg.AssetExecutionContext, mammo: MammoSettings) -> None:
    sops = [f"{study}.{i}" for study, n in STUDIES.items() for i in range(n)]
    make_dicom_index(mammo.get(), context.partition_key, {sop: i % 3 == 0 or None for i, sop in enumerate(sops)})


ASSETS = [fake_onnx_model, promoted_model, fake_image_cache, fake_dicom_index, image_predictions, study_predictions]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", [HOSPITAL])
    return instance


def _run(settings, instance, assets, version: str = "m1", seed: int = 0, partition: str | None = HOSPITAL):
    result = dg.materialize(
        assets,
        partition_key=partition,
        resources={"mammo": MammoSettings(home=str(settings.home))},
        instance=instance,
        run_config={"ops": {"onnx_model": {"config": {"version": version, "seed": seed}}}}
        if fake_onnx_model in assets
        else None,
    )
    assert result.success
    return result


def test_predictions_partition_carries_model_lineage_and_the_any_rule(settings, instance):
    result = _run(settings, instance, ASSETS)
    images = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1")
    studies = warehouse.read_slice(settings, "study_predictions", HOSPITAL, "m1")
    ref = ModelRef.load(settings.models)

    assert len(images) == sum(STUDIES.values()) and images["sop_instance_uid"].is_unique
    assert set(images["model_version"]) == set(studies["model_version"]) == {"m1"}
    assert set(images["onnx_sha256"]) == {ref.onnx_sha256}
    assert set(images["dagster_run_id"]) == {result.run_id}
    expected = images.groupby("study_instance_uid").agg(
        n_images=("sop_instance_uid", "size"),
        has_biopsy_marker=("has_biopsy_marker", "any"),
        max_p_mag=("p_mag", "max"),
    )
    got = studies.set_index("study_instance_uid")
    assert got["n_images"].to_dict() == expected["n_images"].to_dict()
    assert got["has_biopsy_marker"].to_dict() == expected["has_biopsy_marker"].to_dict()
    assert got["max_p_mag"].to_dict() == pytest.approx(expected["max_p_mag"].to_dict())

    meta = result.asset_materializations_for_node("image_predictions")[0].metadata
    assert meta["model_version"].value == "m1"
    assert meta["model_file"].value == str(settings.models / "m1" / "model.onnx")
    assert meta["dagster/row_count"].value == len(images)


def test_new_model_is_promoted_then_predicted_beside_the_old_rows(settings, instance):
    _run(settings, instance, ASSETS, "m1")
    defs = dg.Definitions(
        assets=[*ASSETS[:1], promoted_model, *ASSETS[2:]], resources={"mammo": MammoSettings(home=str(settings.home))}
    )
    selection = dg.AssetSelection.assets("promoted_model", "image_predictions", "study_predictions")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    settled = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, cursor=first.cursor
    )
    assert settled.get_requested_partitions(image_predictions.key) == set()

    _run(settings, instance, [fake_onnx_model], "m2", seed=1, partition=None)
    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, cursor=settled.cursor
    )
    assert promoted_model.key in {r.key for r in after.results if r.true_subset.size}

    _run(settings, instance, [promoted_model], partition=None)
    _run(settings, instance, [image_predictions, study_predictions])
    old = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1")
    new = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m2")
    studies = warehouse.read_slice(settings, "study_predictions", HOSPITAL, "m2")
    assert len(old) == len(new) == sum(STUDIES.values()) and new["sop_instance_uid"].is_unique
    assert set(old["model_version"]) == {"m1"} and set(new["label_snapshot_id"]) == {"snap-m2"}
    assert set(studies["model_version"]) == {"m2"}
    current = warehouse.query(settings, "SELECT DISTINCT model_version FROM image_predictions_current")
    assert current["model_version"].tolist() == ["m2"]


def test_a_rolled_back_model_is_not_promoted_again_by_a_rematerialization(settings, instance):
    """m2 promoted, rolled back by hand to m1; "materialize all" runs promoted_model again while current.json
    still names m2: the rollback stands."""
    _run(settings, instance, ASSETS, "m1")
    _run(settings, instance, [fake_onnx_model], "m2", seed=1, partition=None)
    _run(settings, instance, [promoted_model], partition=None)
    assert promotions.promoted_version(settings) == "m2"
    promotions.promote(settings, "m1", reason="rollback")
    result = _run(settings, instance, [promoted_model], partition=None)
    assert promotions.promoted_version(settings) == "m1"
    assert result.asset_materializations_for_node("promoted_model")[0].metadata["promoted"].value is False
    assert promotions.read_promotions(settings)["model_version"].tolist() == ["m1", "m2", "m1"]


def test_prediction_summary_materializes_tables_and_plot(settings, instance):
    _run(settings, instance, ASSETS)
    result = _run(settings, instance, [prediction_summary], partition=None)
    meta = result.asset_materializations_for_node("prediction_summary")[0].metadata
    assert "| h1 |" in meta["agreement"].value
    assert (settings.warehouse / "reports" / "prediction_summary.png").stat().st_size > 0


def _refused_after_failed_parity(settings, instance, asset, partition_key: str | None = None) -> None:
    """Export model m1 with its blocking onnx_matches_pytorch check failed, then check that materializing `asset`
    fails and says why."""

    @dg.asset_check(asset="onnx_model", name="onnx_matches_pytorch")
    def failing_parity() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, metadata={"model_version": "m1"})

    _run(settings, instance, [fake_onnx_model, failing_parity], partition=None)
    result = dg.materialize(
        [asset],
        partition_key=partition_key,
        resources={"mammo": MammoSettings(home=str(settings.home))},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "onnx_matches_pytorch failed" in failure.event_specific_data.error.message


def test_a_model_whose_parity_check_failed_is_not_promoted(settings, instance):
    _refused_after_failed_parity(settings, instance, promoted_model)
    assert promotions.read_promotions(settings).empty


def test_a_model_whose_parity_check_failed_predicts_nothing_either(settings, instance):
    """Never promoted (its check failed), the model in current.json must not answer a new drop's predictions."""
    _refused_after_failed_parity(settings, instance, image_predictions, HOSPITAL)
    assert not warehouse.slice_file(settings, "image_predictions", HOSPITAL, "m1").exists()


def test_same_model_same_images_keeps_the_slice_and_its_run(settings, instance):
    first = _run(settings, instance, ASSETS)
    studies = warehouse.slice_file(settings, "study_predictions", HOSPITAL, "m1")
    written = studies.stat().st_ino, studies.stat().st_mtime_ns
    again = _run(settings, instance, [image_predictions, study_predictions])
    # nothing new: the study slice is not rewritten and keeps its data version (before stop 63 both changed)
    assert (studies.stat().st_ino, studies.stat().st_mtime_ns) == written
    tags = [r.asset_materializations_for_node("study_predictions")[0].tags for r in (first, again)]
    assert tags[0]["dagster/data_version"] == tags[1]["dagster/data_version"]
    images = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1")
    assert set(images["dagster_run_id"]) == {first.run_id}
    assert again.asset_materializations_for_node("image_predictions")[0].metadata["unchanged"].value is True

    def version(result) -> str:
        return result.asset_materializations_for_node("image_predictions")[0].tags["dagster/data_version"]

    assert version(again) == version(first)  # the same predictions: study_predictions is not marked stale

    manifest_path = settings.table_dir("image_cache", HOSPITAL) / "manifest.parquet"
    manifest = pd.read_parquet(manifest_path).assign(cached_at=pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1))
    manifest.to_parquet(manifest_path)  # an image re-rendered after the predictions were made
    third = _run(settings, instance, [image_predictions, study_predictions])
    images = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1")
    assert set(images["dagster_run_id"]) == {third.run_id}
    assert version(third) == version(first)  # predicted again, the same probabilities: still the same data


def test_after_an_incremental_drop_a_nightly_run_keeps_the_slice(settings, instance):
    """A new drop's images are cached after the older images were predicted; once they are predicted too, the
    next run with nothing new must take the fast path (until stop 63 it compared the oldest prediction with the
    newest rendition, so every nightly run after the first new drop rewrote the slice)."""
    import shutil

    first = _run(settings, instance, ASSETS)
    manifest_path = settings.table_dir("image_cache", HOSPITAL) / "manifest.parquet"
    manifest = pd.read_parquet(manifest_path).assign(cached_at=pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1))
    new = manifest.iloc[[0]].assign(
        sop_instance_uid="s4.0",
        study_instance_uid="s4",
        model_png="h1/n1/256/s4.0.png",
        cached_at=pd.Timestamp.now(tz="UTC"),
    )
    shutil.copy(settings.cache / manifest["model_png"].iloc[0], settings.cache / "h1/n1/256/s4.0.png")
    pd.concat([manifest, new]).to_parquet(manifest_path)  # the new drop, rendered after the first predictions

    second = _run(settings, instance, [image_predictions])
    meta = second.asset_materializations_for_node("image_predictions")[0].metadata
    assert meta["unchanged"].value is False
    images = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1").set_index("sop_instance_uid")
    assert images.loc["s4.0", "dagster_run_id"] == second.run_id
    assert set(images.drop(index="s4.0")["dagster_run_id"]) == {first.run_id}  # the others kept as they were

    third = _run(settings, instance, [image_predictions])
    assert third.asset_materializations_for_node("image_predictions")[0].metadata["unchanged"].value is True
    again = warehouse.read_slice(settings, "image_predictions", HOSPITAL, "m1").set_index("sop_instance_uid")
    assert again["dagster_run_id"].to_dict() == images["dagster_run_id"].to_dict()


def _audit_figures(settings, version: str, biopsy: tuple[float, float, float], mag=(0.99, 0.97, 1.0)) -> None:
    """Give model `version`'s registry row per-flag audit ROC-AUC figures (value, low, high)."""
    from mammo_pipeline.model import registry

    figures = {
        f"{flag}_roc_auc{end}": v
        for flag, t in (("biopsy", biopsy), ("mag", mag))
        for end, v in zip(("", "_low", "_high"), t, strict=True)
    }
    row = pd.read_parquet(settings.warehouse / "model_registry" / f"{version}.parquet").iloc[0].to_dict()
    registry.write_row(settings, {k: v for k, v in {**row, **figures}.items() if k in registry.COLUMNS})


def test_a_model_far_below_the_current_ones_audit_interval_is_held_back(settings, instance):
    """Round 3 of a demo collapsed (biopsy 0.561 after 0.982 [0.936-0.998]) and was promoted all the same; now it
    is held back with the reason, the current model keeps predicting, and a model within the interval is promoted."""
    _run(settings, instance, ASSETS, "m1")
    _audit_figures(settings, "m1", (0.982, 0.936, 0.998))
    _run(settings, instance, [fake_onnx_model], "m2", seed=1, partition=None)
    _audit_figures(settings, "m2", (0.561, 0.435, 0.686))
    result = _run(settings, instance, [promoted_model], partition=None)
    meta = result.asset_materializations_for_node("promoted_model")[0].metadata
    assert meta["promoted"].value is False and "biopsy ROC-AUC 0.561" in meta["held_back"].value
    assert meta["audit_comparison"].value == "registry figures; the audit images were not recorded (20 images each)"
    assert promotions.promoted_version(settings) == "m1"
    _run(settings, instance, [image_predictions, study_predictions])
    assert not warehouse.slice_file(settings, "image_predictions", HOSPITAL, "m2").exists()

    _run(settings, instance, [fake_onnx_model], "m3", seed=2, partition=None)
    _audit_figures(settings, "m3", (0.950, 0.900, 0.990))  # lower, but inside m1's interval: noise
    result = _run(settings, instance, [promoted_model], partition=None)
    assert result.asset_materializations_for_node("promoted_model")[0].metadata["promoted"].value is True
    assert promotions.promoted_version(settings) == "m3"


def test_a_model_measured_after_withdrawals_is_compared_on_the_audit_images_both_models_were_measured_on(
    settings, instance
):
    """Half of m1's 80 audit images withdrawn since (easy ones): m2 scores the other 40 exactly as m1 did, yet its
    registry figure from them (0.815) lies below m1's interval from all 80 [0.877-0.989], and it was held back.
    Compared on the 40 they share, the figures are equal: m2 is promoted, and the metadata says on what."""
    _run(settings, instance, ASSETS, "m1")
    measured_on(settings, "m1", pd.concat([HARD, EASY]))
    _run(settings, instance, [fake_onnx_model], "m2", seed=1, partition=None)
    measured_on(settings, "m2", HARD)
    meta = (
        _run(settings, instance, [promoted_model], partition=None)
        .asset_materializations_for_node("promoted_model")[0]
        .metadata
    )
    assert meta["promoted"].value is True and meta["held_back"].value == ""
    assert meta["audit_comparison"].value == (
        "audit sets differ: 40 of m1's 80 audit images withdrawn since (no longer in the audit set), 0 new, "
        "0 relabeled; both measured again on the 40 they share"
    )
    assert promotions.promoted_version(settings) == "m2"


def test_a_regression_on_the_shared_audit_images_is_held_back_though_new_audit_images_hide_it(settings, instance):
    """m2 scores m1's 40 audit images near chance and 160 new ones perfectly: its registry figure from all 200
    lies inside m1's interval, so the registry rows alone promoted it. On the 40 both were measured on it is far
    below m1's: held back."""
    _run(settings, instance, ASSETS, "m1")
    measured_on(settings, "m1", HARD.assign(p_biopsy=audit_frame(40, 0, 2.5, 3)["p_biopsy"]))
    _run(settings, instance, [fake_onnx_model], "m2", seed=1, partition=None)
    poor = HARD.assign(p_biopsy=audit_frame(40, 0, 0.1, 4)["p_biopsy"])
    measured_on(settings, "m2", pd.concat([poor, audit_frame(160, 40, 6.0, 5)]))
    meta = (
        _run(settings, instance, [promoted_model], partition=None)
        .asset_materializations_for_node("promoted_model")[0]
        .metadata
    )
    assert meta["promoted"].value is False
    assert meta["held_back"].value == (
        "biopsy ROC-AUC 0.465 on the 40 shared audit images, below m1's 0.995 [0.894-1.000] on them"
    )
    assert "160 new" in meta["audit_comparison"].value
    assert promotions.promoted_version(settings) == "m1"


def test_predictions_of_a_hospital_never_cached_fail_and_write_no_slice(settings, instance):
    """With a model but no image cache for the partition (never materialized), image_predictions succeeded with
    an empty slice, green in the UI, and that slice made a mistyped hospital look real to `model promote`
    (stop 62's probe). It now fails and says what to materialize first."""
    _run(settings, instance, [fake_onnx_model, promoted_model], partition=None)
    instance.add_dynamic_partitions("hospital", ["h2"])
    result = dg.materialize(
        [image_predictions],
        partition_key="h2",
        resources={"mammo": MammoSettings(home=str(settings.home))},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("image_predictions")
    assert "no image cache yet" in str(failure.error)
    assert not warehouse.slice_file(settings, "image_predictions", "h2", "m1").exists()
