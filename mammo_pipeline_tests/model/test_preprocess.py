from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mammo_pipeline.model.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_VERSION,
    describe,
    max_pool,
    otsu_threshold,
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


def test_preprocess_pads_black_and_measures_channels_in_tissue_units():
    rng = np.random.default_rng(3)
    img = np.zeros((100, 80), dtype=np.uint8)
    img[:, 10:] = rng.integers(100, 201, (100, 70))  # tissue: uniform 100..200, air on the left
    x = _unnormalize(preprocess(img, 50))
    low, high = np.percentile(img[:, 10:], [1, 99])
    assert x[0, 25, 0] == pytest.approx(max((0 - low) / (high - low), -1.0), abs=1e-5)  # padding: air units
    inside = x[0, 10:40, 20:40]
    assert inside.min() > -0.05 and inside.max() < 1.05  # the tissue spans about 0..1
    assert x[2, 10:40, 20:40].max() <= (img.max() - low) / (high - low) + 1e-5


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


def _textured(rng: np.random.Generator, contrast: float, shape=(256, 200)) -> np.ndarray:
    """Air on the left, 'tissue' of the given texture contrast (grey levels of noise around 120) elsewhere."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    img = np.where(np.arange(shape[1])[None, :] > 30, 120 + contrast * noise / noise.std(), 0)
    return np.clip(img, 0, 255)


def test_small_bright_dot_survives_in_the_object_channels_but_fades_in_the_area_channel():
    img = _textured(np.random.default_rng(0), 10.0).astype(np.uint8)
    img[101:103, 61:63] = 255  # a 2-px clip straddling four 2x2 blocks (the image is padded 28 px each side)
    x = _unnormalize(preprocess(img, 128))[..., ::-1]  # made with the chest wall (right here) at column 0: read back
    area, tophat, peak = x[0], x[1], x[2]
    dot = (slice(50, 52), slice(44, 46))  # its blocks at 128 px
    assert tophat[dot].min() > 0.9  # far above the tissue's own top-hat level
    assert np.count_nonzero(tophat > 0.9) == 4  # only the four blocks the dot touches
    assert peak[dot].min() > 1.2  # above the tissue's 99th percentile
    assert area[dot].max() < peak[dot].min() - 0.3  # averaged into the tissue


def test_channels_do_not_depend_on_the_images_contrast_or_brightness():
    """No grey-level constant: an affine change of the image's intensities leaves every channel the same,
    and a marker stands out equally in low- and high-contrast tissue (where fixed levels saturate)."""
    rng = np.random.default_rng(1)
    base = _textured(rng, 1.0)
    base[120:123, 100:103] += 8  # a marker 8 texture-SDs above its surroundings
    xs = []
    for gain, offset in ((8.0, -860.0), (14.0, -1560.0), (5.0, -500.0)):
        img = np.where(base > 0, base * gain + offset, 0)
        x = preprocess(np.clip(np.rint(img), 0, 255).astype(np.uint8), 64)
        xs.append(_unnormalize(x)[..., ::-1])  # made with the chest wall (right here) at column 0: read back
    for other in xs[1:]:
        np.testing.assert_allclose(other[1], xs[0][1], atol=0.08)
        np.testing.assert_allclose(other[0, :, 20:], xs[0][0, :, 20:], atol=0.08)
    for x in xs:
        marker = x[1, 29:32, 31:34].max()  # rows 120-122, columns 128-130 of the padded square
        assert marker > 0.8 and np.mean(x[1] > 0.8) < 0.01  # the marker, and almost nothing else
    assert describe()["fitted_constants"] == [] and describe()["version"] == PREPROCESS_VERSION


def test_otsu_threshold_splits_two_levels():
    img = np.array([[10] * 50 + [200] * 50], dtype=np.uint8)
    assert 10 <= otsu_threshold(img) < 200
    flat = np.full((4, 4), 7, np.uint8)
    assert not (flat > otsu_threshold(flat)).any()  # a flat image has no foreground


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


def test_a_breast_stored_mirrored_gets_the_same_network_input():
    """Some vendors store one side mirrored: the input is made with the chest wall at column 0, so an image and its
    mirror give the same input (padding, resize and max-pooling blocks are not mirror-symmetric on their own)."""
    img = _textured(np.random.default_rng(3), 20, shape=(256, 187))[:, ::-1].astype(np.uint8)  # chest wall left
    img[100:104, 60:63] = 255  # a clip
    for size in (64, 100):
        np.testing.assert_array_equal(preprocess(img[:, ::-1], size), preprocess(img, size))
