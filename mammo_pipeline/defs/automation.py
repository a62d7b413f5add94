"""Declarative automation: the retraining job and an automation sensor that is on without a UI toggle.

Predictions follow a new model by their own automation conditions (eager, after the blocking checks),
evaluated by `default_automation_condition_sensor` below.
"""

import dagster as dg

retrain_model = dg.define_asset_job(
    "retrain_model",
    selection=dg.AssetSelection.assets("labels", "trained_model", "onnx_model"),
    description=(
        "Snapshot the label store (the labels that triggered it included), train a model on it and export it to "
        "ONNX (requested by retrain_on_new_labels)."
    ),
    tags={"mammo/job": "retrain"},
)

default_automation_condition_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (predictions after a new model or new images).",
)
