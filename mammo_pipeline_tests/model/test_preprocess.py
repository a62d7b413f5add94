from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mammo_pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, pad_square, preprocess, preprocess_batch


def test_preprocess_shape_dtype_and_path_equals_array(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (100, 80), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    from_path = preprocess(tmp_path / "a.png", 48)
    assert from_path.shape == (3, 48, 48) and from_path.dtype == np.float32
    np.testing.assert_array_equal(from_path, preprocess(gray, 48))
    np.testing.assert_array_equal(from_path, preprocess(tmp_path / "a.png", 48))  # deterministic


def test_preprocess_pads_black_and_normalizes_per_channel():
    white = np.full((100, 80), 255, dtype=np.uint8)  # portrait: padding left and right
    x = preprocess(white, 50)
    for c in range(3):
        black = (0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        full = (1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert x[c, 25, 0] == pytest.approx(black, abs=1e-5)  # padded column
        assert x[c, 25, 25] == pytest.approx(full, abs=1e-5)  # inside the image
        assert x[c, 25, 49] == pytest.approx(black, abs=1e-5)


def test_pad_square_centres_the_image():
    img = np.ones((4, 2), dtype=np.uint8)
    out = pad_square(img)
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[:, 1:3], 1)
    assert out[:, 0].sum() == 0 and out[:, 3].sum() == 0


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros((2, 3, 4, 5)), 8)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        preprocess(np.full((4, 4), 300.0), 8)


def test_preprocess_batch_stacks():
    imgs = [np.zeros((10, 8), np.uint8), np.full((10, 8), 200, np.uint8)]
    batch = preprocess_batch(imgs, 16)
    assert batch.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(batch[1], preprocess(imgs[1], 16))
    assert preprocess_batch([], 16).shape == (0, 3, 16, 16)
