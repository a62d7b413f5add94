from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mammo_pipeline.model.air import SKIN_DEPTH, air_mask, away_from_air


def _breast(rng: np.random.Generator, shape=(256, 200), air: float = 0.02, noise: float = 0.004) -> np.ndarray:
    """A textured half-disc breast against the left frame edge, in noisy air of gray `air` (display 0..1)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = np.hypot(yy - shape[0] / 2, xx) < 0.45 * shape[0]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2)
    img = np.where(inside, 0.55 + 0.15 * texture / texture.std(), air + rng.normal(0, noise, shape))
    return np.clip(img, 0, 1), inside


@pytest.mark.parametrize("air", [0.0, 0.02, 0.15])
def test_the_air_is_the_flat_dark_background_around_the_breast(air):
    img, inside = _breast(np.random.default_rng(0), air=air)
    found = air_mask(img)
    assert (found == ~inside).mean() > 0.98


def test_dark_fat_touching_the_frame_is_not_air_nor_is_a_bright_collimator():
    rng = np.random.default_rng(1)
    img, inside = _breast(rng)
    fat = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5)
    coned = np.where(inside, img, 0.05 + 0.06 * fat / fat.std())  # textured dark tissue instead of flat air
    assert not air_mask(np.clip(coned, 0, 1)).any()
    collimator = np.where(inside, img, 0.9)  # a coned view: the breast inside a bright collimator frame
    assert not air_mask(collimator).any()
    assert away_from_air(collimator, 10).all()


def test_away_from_air_keeps_what_lies_deeper_than_the_skin_depth():
    img, inside = _breast(np.random.default_rng(2))
    depth = SKIN_DEPTH * max(img.shape)
    keep = away_from_air(img, depth)
    truth = ndimage.distance_transform_edt(inside) >= depth
    assert (keep == truth).mean() > 0.98
    assert keep[128, 20] and not keep[128, 112]  # deep in the breast; on its skin line (radius 115 px)
