"""A pointer to the current model: `models/current.json`, written atomically by each step that makes one.

`trained_model` writes it with the PyTorch artifacts; `onnx_model` adds the ONNX files; inference reads it.
Everything downstream names a model by `model_version`, a content hash, never by "latest file".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mammo_pipeline.atomic import write_text

# The newest trained model's ref, under the models folder (promotions may make another one current per hospital).
CURRENT = "current.json"


@dataclass(frozen=True)
class ModelRef:
    model_version: str  # content hash of the trained weights
    label_snapshot_id: str  # the labels snapshot it was trained on
    folder: str  # models/<model_version>/, relative to the models root
    input_size: int  # square side the network sees
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...] = ("has_biopsy_marker", "is_mag_view")
    pretrained: bool = False
    onnx_file: str = ""  # file name inside folder, set by onnx_model
    onnx_sha256: str = ""
    inference_file: str = ""  # the ONNX file inference uses (fp32 or int8)
    inference_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def path(self, models_root: Path, name: str = "") -> Path:
        return models_root / self.folder / name if name else models_root / self.folder

    def save(self, models_root: Path, name: str = CURRENT) -> Path:
        return write_text(models_root / name, json.dumps(asdict(self), indent=2, sort_keys=True))

    def thresholds(self) -> tuple[float, float]:
        """Per-flag operating thresholds (biopsy, mag) chosen on the audit set; 0.5 for models made before them."""
        points = self.extra.get("operating_points") or {}
        return (
            float(points.get("biopsy", {}).get("threshold", 0.5)),
            float(points.get("mag", {}).get("threshold", 0.5)),
        )

    def with_(self, **changes: object) -> ModelRef:
        return replace(self, **changes)  # type: ignore[arg-type]

    @staticmethod
    def exists(models_root: Path, name: str = CURRENT) -> bool:
        """Whether a model's ref was saved there: under `models_root` with the default name, whether any model
        was trained."""
        return (models_root / name).exists()

    @classmethod
    def load(cls, models_root: Path, name: str = CURRENT) -> ModelRef:
        path = models_root / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: no model yet; materialize trained_model and onnx_model first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:  # named, so the CLI's one-line error says which file
            raise json.JSONDecodeError(f"{path} is damaged: {e.msg}", e.doc, e.pos) from e
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        data["class_names"] = tuple(data["class_names"])
        return cls(**data)
