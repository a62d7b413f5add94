"""Toy model PNGs and a labels table in the `labels` contract, for the model tests and `bench_train.py`.

"biopsy" images carry small bright blobs, "mag" images a dark border band and horizontal lines, so a
small network learns both flags in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.labels.codes import flags_of
from mammo_pipeline.settings import Settings

LABEL_CYCLE = ("neither", "biopsy", "mag", "both")


def synthetic_image(rng: np.random.Generator, biopsy: bool, mag: bool, height: int = 80) -> np.ndarray:
    """A portrait (0.8 aspect) grayscale 'breast' with optional markers and mag-view features."""
    width = round(height * 0.8)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(-0.1, 0.1) * width, height / 2 + rng.uniform(-0.1, 0.1) * height
    breast = ((xx - cx) / (0.9 * width)) ** 2 + ((yy - cy) / (0.55 * height)) ** 2 < 1
    img = np.where(breast, rng.uniform(90, 140), 5.0) + rng.normal(0, 12, (height, width))
    if biopsy:
        for _ in range(int(rng.integers(2, 4))):
            by, bx = rng.integers(height // 4, 3 * height // 4), rng.integers(2, max(3, width // 2))
            img[((yy - by) ** 2 + (xx - bx) ** 2) <= max(2, height // 40) ** 2] = 255  # clip-sized: 5 px across
    if mag:
        band = max(4, height // 6)
        img[:band], img[-band:], img[:, -band:] = 0, 0, 0
        for y in range(band + 3, height - band, max(4, height // 12)):
            img[y : y + 2, : width - band] = 230
    return np.clip(img, 0, 255).astype(np.uint8)


def make_labels(
    settings: Settings,
    n: int = 48,
    seed: int = 0,
    audit_fraction: float = 0.25,
    height: int = 80,
    hospitals: tuple[str, ...] = ("alpha", "beta"),
    snapshot_id: str = "snap-test",
    write: bool = True,
    display_scale: int = 4,
) -> pd.DataFrame:
    """Write n PNGs under settings.cache/synthetic/ and return (and write) warehouse/labels/current.parquet.

    Each image also gets a display PNG `display_scale` times larger (nearest neighbour: the same objects,
    5 px blobs become 20 px), for the second look; display_scale 0 leaves the display_png column out.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = LABEL_CYCLE[i % len(LABEL_CYCLE)]
        biopsy, mag = flags_of(label)
        sop = f"1.2.826.0.1.{seed}.{i:05d}"
        rel = f"synthetic/{sop}.png"
        path = settings.cache / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(synthetic_image(rng, biopsy, mag, height))
        image.save(path)
        display = f"synthetic/display/{sop}.png"
        if display_scale:
            (settings.cache / display).parent.mkdir(parents=True, exist_ok=True)
            size = (image.width * display_scale, image.height * display_scale)
            image.resize(size, Image.Resampling.NEAREST).save(settings.cache / display)
        hospital = hospitals[i % len(hospitals)]
        rows.append(
            {
                "image_id": i + 1,
                "sop_instance_uid": sop,
                "hospital": hospital,
                "study_instance_uid": f"1.2.826.0.2.{seed}.{i // 4}",
                "patient_key": f"p{i // 4:015d}",
                "label": label,
                "has_biopsy_marker": biopsy,
                "is_mag_view": mag,
                "split": "audit" if (i // 4) % round(1 / audit_fraction) == 0 else "train",
                "annotator": "test",
                "event_id": i + 1,
                "labeled_at": pd.Timestamp("2026-01-01", tz="UTC"),
                "snapshot_id": snapshot_id,
                "model_png": rel,
                **({"display_png": display} if display_scale else {}),
            }
        )
    labels = pd.DataFrame(rows)
    if write:
        write_parquet(labels, settings.warehouse / "labels" / "current.parquet")
    return labels


def png_paths(settings: Settings, labels: pd.DataFrame) -> list[Path]:
    return [settings.cache / p for p in labels["model_png"]]
