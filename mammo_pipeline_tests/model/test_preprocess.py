from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mammo_pipeline.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TOPHAT_FLOOR,
    TOPHAT_RANGE,
    max_pool,
    pad_square,
    preprocess,
    preprocess_batch,
    white_tophat,
)


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
    inside = {0: 1.0, 1: 0.0, 2: 1.0}  # area and max-pooled image full; a flat image has no small bright detail
    for c in range(3):
        black = (0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert x[c, 25, 0] == pytest.approx(black, abs=1e-5)  # padded column
        assert x[c, 25, 25] == pytest.approx((inside[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-5)
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


def _unnormalize(x: np.ndarray) -> np.ndarray:
    return x * np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1) + np.asarray(IMAGENET_MEAN, np.float32).reshape(
        3, 1, 1
    )


def test_small_bright_dot_survives_in_the_object_channels_but_fades_in_the_area_channel():
    img = np.full((256, 200), 100, dtype=np.uint8)  # flat tissue
    img[101:103, 61:63] = 250  # a 2-px clip straddling four 2x2 blocks (the image is padded 28 px each side)
    x = _unnormalize(preprocess(img, 128))
    area, tophat, peak = x[0], x[1], x[2]
    assert area.max() == pytest.approx((3 * 100 + 250) / 4 / 255, abs=1 / 255)  # averaged away (PIL rounds)
    assert tophat.max() == pytest.approx(1.0)  # 150 grey levels above the tissue: fully on
    assert peak.max() == pytest.approx(250 / 255, abs=1e-5)
    assert np.count_nonzero(tophat > 1e-6) == 4  # only the four blocks the dot touches


def test_tophat_channel_ramps_faint_texture_off_and_clips_on():
    img = np.full((64, 64), 100, dtype=np.uint8)
    img[10, 10] = 100 + TOPHAT_FLOOR  # texture-level detail: off
    img[30, 30] = 100 + TOPHAT_FLOOR + TOPHAT_RANGE // 2  # halfway up the ramp
    tophat = _unnormalize(preprocess(img, 64))[1]
    assert tophat[10, 10] == pytest.approx(0.0, abs=1e-6)
    assert tophat[30, 30] == pytest.approx(0.5, abs=1e-5)
    assert np.count_nonzero(np.abs(tophat) > 1e-6) == 1


def test_tophat_ignores_edges_and_wide_objects():
    img = np.zeros((256, 256), dtype=np.uint8)
    img[:, 100:] = 180  # a straight edge (skin line)
    img[20:60, 150:190] = 240  # a bright blob wider than the top-hat square
    assert white_tophat(img).max() == 0
    dot = img.copy()
    dot[200, 200] = 255
    assert white_tophat(dot)[200, 200] == 255 - 180


def test_white_tophat_matches_scipy_grey_opening():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for shape in [(37, 53), (256, 256)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        for width in (1, 3, 7, 9):
            expected = img - ndimage.grey_opening(img, size=(width, width), mode="nearest")
            np.testing.assert_array_equal(white_tophat(img, width), expected)
    with pytest.raises(ValueError, match="odd"):
        white_tophat(img, 4)


def test_max_pool_takes_each_blocks_maximum():
    img = np.arange(36, dtype=np.uint8).reshape(6, 6)
    np.testing.assert_array_equal(max_pool(img, 3), img[1::2, 1::2])  # the bottom-right of each 2x2 block is largest
    uneven = max_pool(img, 4)  # blocks 0-0,1-2,3-3,4-5 along each axis
    np.testing.assert_array_equal(uneven, img[np.ix_([0, 2, 3, 5], [0, 2, 3, 5])])
    np.testing.assert_array_equal(max_pool(img, 12), np.repeat(np.repeat(img, 2, 0), 2, 1))
    big = np.random.default_rng(2).integers(0, 256, (24, 24), dtype=np.uint8)
    for size in (12, 6, 3, 8):  # halvings, then an odd factor
        k = 24 // size
        np.testing.assert_array_equal(max_pool(big, size), big.reshape(size, k, size, k).max(axis=(1, 3)))
