from __future__ import annotations

import numpy as np

from mammo_pipeline.model.candidates import CROP, candidates


def _tissue(rng: np.random.Generator, shape=(512, 400)) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3)
    img = np.where(np.arange(shape[1])[None, :] > 60, 120 + 10 * noise / noise.std(), 0)
    return np.clip(img, 0, 255)


def test_the_strongest_candidate_is_the_stamped_clip_and_its_crop_is_centred_on_it():
    rng = np.random.default_rng(0)
    for where in [(100, 200), (400, 90), (260, 350)]:
        img = _tissue(rng)
        img[where[0] - 1 : where[0] + 2, where[1] - 6 : where[1] + 7] = 250  # a 3 x 13 px ribbon
        crops, centres, scores = candidates(img.astype(np.uint8), k=4)
        assert crops.shape == (4, CROP, CROP) and crops.dtype == np.float32
        assert np.hypot(*(centres[0] - np.array(where))) <= 7 and scores[0] == scores.max()
        assert crops[0, CROP // 2 - 1 : CROP // 2 + 2].max() >= 1.5  # far above the tissue range in the middle
        assert scores[0] > 2 * scores[1]  # texture maxima score far lower


def test_candidates_are_a_crop_apart_and_a_flat_image_has_none():
    img = _tissue(np.random.default_rng(1)).astype(np.uint8)
    _, centres, _ = candidates(img, k=6)
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(centres[i] - centres[j]).max() >= CROP // 2
    crops, centres, scores = candidates(np.full((64, 64), 90, np.uint8), k=3)
    assert (scores == 0).all() and (centres == -1).all() and (crops == 0).all()
