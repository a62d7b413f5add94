"""Training, evaluation, ONNX export and batch inference (no Dagster here)."""
