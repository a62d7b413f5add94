from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mammo_pipeline.model.augment import CROP_MARGIN, crop_to_breast, cropped_batch
from mammo_pipeline.model.preprocess import preprocess
from mammo_pipeline.model.train import _datasets


def _view(h: int = 256, w: int = 200) -> np.ndarray:
    """Black air with a gray 'breast' (rows 40..199, cols 0..119) holding a one-pixel bright dot at (100, 60)."""
    gray = np.zeros((h, w), dtype=np.uint8)
    gray[40:200, :120] = 120
    gray[100, 60] = 250
    return gray


def test_a_crop_keeps_the_long_side_and_leaves_no_air_around_the_breast():
    gray = _view()
    out = crop_to_breast(gray)
    assert max(out.shape) == max(gray.shape) == 256
    assert out.shape == (256, 192)  # the 160 x 120 breast scaled by 256 / 160
    edge = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
    assert edge.min() > 60  # every border pixel is breast, none is air
    dot = np.unravel_index(np.argmax(out), out.shape)  # the dot moved where the crop and the scale take it
    assert abs(dot[0] - (100 - 40) * 1.6) <= 2 and abs(dot[1] - 60 * 1.6) <= 2


def test_a_margin_keeps_that_share_of_each_side_around_the_breast():
    gray = _view()
    out = crop_to_breast(gray, margin=0.05)
    # rows 40 - 13 .. 199 + 13 (0.05 of 256), cols 0 .. 119 + 10 (0.05 of 200): 186 x 130 before scaling
    assert max(out.shape) == 256 and abs(out.shape[1] - round(130 * 256 / 186)) <= 1
    assert out[0].max() < 10 and out[:, -1].max() < 10  # air above and on the far side


def test_an_image_whose_tissue_fills_it_comes_back_unchanged():
    gray = np.random.default_rng(0).integers(80, 200, (256, 180), dtype=np.uint8)
    assert crop_to_breast(gray) is gray


def test_cropped_batch_is_the_preprocessed_crop_and_seeded(tmp_path):
    Image.fromarray(_view()).save(tmp_path / "a.png")
    batch = cropped_batch([tmp_path / "a.png"], 32, seed=3)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, cropped_batch([tmp_path / "a.png"], 32, seed=3))
    margin = np.random.default_rng(3).uniform(*CROP_MARGIN)
    np.testing.assert_array_equal(batch[0], preprocess(crop_to_breast(_view(), margin), 32))


def test_training_draws_see_both_framings_and_keep_the_flags():
    images, cropped = np.zeros((4, 3, 8, 8), np.float32), np.ones((4, 3, 8, 8), np.float32)
    flags = np.array([[1, 0], [0, 1], [0, 0], [1, 1]], dtype=bool)
    torch.manual_seed(0)
    dsets = _datasets(images, flags, cropped)
    draws = [dsets[i % 4] for i in range(200)]
    seen_crop = [float(x.mean()) == 1.0 for x, _ in draws]
    assert 0.35 < np.mean(seen_crop) < 0.65  # p = 1/2 per draw
    assert all(y.tolist() == flags[i % 4].tolist() for i, (_, y) in enumerate(draws))
    plain = _datasets(images, flags)  # crops off: only the whole image
    assert all(float(plain[i][0].mean()) == 0.0 for i in range(4))
