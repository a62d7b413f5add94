"""The drift checks run per hospital partition in Dagster, with WARN severity and a what-to-do description."""

import dagster as dg

from mammo_pipeline.defs.checks import class_rates_near_audit, needs_review_not_growing, no_unlabeled_device
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline_tests.test_drift import write_index, write_labels, write_predictions


@dg.asset(name="dicom_index", partitions_def=hospital_partitions)
def fake_dicom_index() -> None: ...


@dg.asset(name="image_predictions", partitions_def=hospital_partitions)
def fake_image_predictions() -> None: ...


def test_checks_warn_on_the_crafted_partition_only(settings):
    write_labels(settings, write_index(settings, "h0", 100))
    write_index(settings, "normal", 100)
    write_index(settings, "odd", 100, device=("Agfa", "CR 85-X", "digitized_film"))
    audit_like = {"neither": 70, "biopsy": 15, "mag": 10, "both": 5}
    for hospital in ("normal", "odd"):
        write_predictions(settings, hospital, "m1", audit_like, 0.05, 0)
    write_predictions(settings, "normal", "m2", audit_like, 0.05, 1)
    write_predictions(settings, "odd", "m2", {"biopsy": 100}, 0.5, 1)

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["normal", "odd"])
    verdicts = {}
    for hospital in ("normal", "odd"):
        result = dg.materialize(
            [fake_dicom_index, fake_image_predictions, no_unlabeled_device, class_rates_near_audit,
             needs_review_not_growing],
            partition_key=hospital,
            instance=instance,
            resources={"mammo": MammoSettings(home=str(settings.home))},
        )  # fmt: skip
        assert result.success  # WARN checks never fail the run
        for evaluation in result.get_asset_check_evaluations():
            assert evaluation.severity == dg.AssetCheckSeverity.WARN
            verdicts[hospital, evaluation.check_name] = evaluation.passed
            if not evaluation.passed:
                assert "label" in evaluation.description.lower()
            if evaluation.check_name == "class_rates_near_audit":
                assert "| biopsy |" in evaluation.metadata["shares"].value
    checks = ("no_unlabeled_device", "class_rates_near_audit", "needs_review_not_growing")
    assert all(verdicts["normal", c] for c in checks)
    assert not any(verdicts["odd", c] for c in checks)
