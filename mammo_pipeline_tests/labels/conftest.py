"""Fixtures for the label store and the labeling app: small PNG images in a temp cache and their manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammo_pipeline.labels.store import LabelStore

# (biopsy, mag) per image, cycling; only used to make the pictures look like what they are.
_KINDS = [(True, False), (False, True), (False, False), (True, True)]


def _picture(i: int, size: tuple[int, int], synth: bool) -> np.ndarray:
    """A mammogram-looking picture from mammo_pipeline.synth when asked and available, else a gradient."""
    rows, cols = size
    try:
        if not synth:
            raise ImportError("a gradient is enough")
        from mammo_pipeline.synth.image import ImageSpec, draw_image

        biopsy, mag = _KINDS[i % len(_KINDS)]
        spec = ImageSpec(
            rows=rows,
            cols=cols,
            pixel_spacing=0.1 * 3000 / rows,
            scale=rows / 3000,
            view="CC" if i % 2 else "MLO",
            laterality="L" if i % 3 else "R",
            biopsy=biopsy,
            mag=mag,
        )
        img, _ = draw_image(spec, np.random.default_rng(i))
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)
    except Exception:  # the synth package is another helper's work in progress
        ramp = np.linspace(0, 255, cols, dtype=np.float32)[None, :] * np.ones((rows, 1), dtype=np.float32)
        return ((ramp + i * 20) % 256).astype(np.uint8)


def write_images(
    cache: Path, n: int, hospital: str = "h1", size: tuple[int, int] = (48, 40), synth: bool = False
) -> pd.DataFrame:
    """Write n display + model PNGs under `cache` and return an image_cache manifest for them."""
    rows = []
    for i in range(n):
        sop = f"1.2.826.0.1.{hospital}.{i}"
        display, model = f"{hospital}/n1/{size[0]}/{sop}.png", f"{hospital}/n1/16/{sop}.png"
        pixels = _picture(i, size, synth)
        for rel, scale in ((display, 1), (model, 3)):
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[::scale, ::scale]).save(cache / rel)
        rows.append(
            {
                "hospital": hospital,
                "sop_instance_uid": sop,
                "study_instance_uid": f"1.2.3.{hospital}.{i // 2}",
                "patient_key": f"{hospital}-patient-{i // 2:03d}",
                "display_png": display,
                "model_png": model,
                "meta_mag": [True, False, None][i % 3],
                "view_position": "CC",
                "laterality": "L",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def manifest(settings) -> pd.DataFrame:
    return write_images(settings.cache, 8)


@pytest.fixture
def store(settings, manifest) -> LabelStore:
    s = LabelStore(settings.labels_db)
    s.sync_images(manifest, seed=0, audit_fraction=0.0)
    return s


def event_count(store: LabelStore) -> int:
    return len(store.events())


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "browser: drives the app in headless Chromium (/usr/bin/chromium)")
