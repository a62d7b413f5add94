"""The one preprocessing step shared by training, the ONNX parity check, batch inference and the heat maps.

A model PNG (grayscale, long side 256, portrait) is padded with black to a square, centred, then turned into
three channels at `size`. No channel depends on a constant measured on any data set: each is expressed in
units of the image's *own* tissue, so a real mammogram with dense, high-contrast texture and a synthetic one
with smooth texture land on the same scale (see `describe()`, which every model records in its metadata):

0. the area-resized image (PIL BOX), mapped so the tissue's 1st percentile is 0 and its 99th is 1: the
   breast as a whole, the mag view's fine line pattern;
1. the white top-hat (image minus its grey opening with a TOPHAT_SIZE square), block-MAX-pooled to `size`,
   as r² / (1 + r²) with r = top-hat / (99th percentile of the top-hat inside the tissue): the image's own
   fine texture sits at or below 0.5 and an object several times brighter than anything in its
   surroundings (metal) approaches 1 (r = 3: 0.9), whatever the vendor's contrast. Straight edges (skin
   line, pectoral muscle) give nothing;
2. the block-MAX-pooled image, in the units of channel 0: a clip stays at its full brightness instead of
   being diluted.

"Tissue" is the Otsu foreground of the image (threshold from its own histogram, so again no fitted level).
Channels 0 and 2 are clipped to [-1, 2] tissue ranges (padding and air below, metal above), then all three
are normalized with the ImageNet statistics (kept so the PRETRAINED path sees what its weights expect).

TOPHAT_SIZE is geometry, not intensity: 7 px of a 256-px PNG is 2.7 % of the detector's long side (6-8 mm on
a 24-30 cm detector), wider than a 2-4 mm clip and narrower than a mass or the pectoral muscle.
Padding (rather than squishing) keeps a marker's shape and the mag view's line spacing the same in every
image. Only numpy and PIL, so inference stays light (about 1-2 ms per 256-px image).

The image is first turned so that its chest wall is at column 0 (`air.canonical`, version 5): the area resize,
the top-hat and the max-pooling blocks are not exactly mirror-symmetric (the padding and the blocks' edges fall
elsewhere), so a breast stored mirrored, as some vendors store one side, got a slightly different input and
probability. An image and its mirror now get the same input; maps drawn from it are mirrored back
(`explain.image_heatmaps`). No constant was added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mammo_pipeline.model.air import canonical

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Bump when the network's input changes meaning: models record it, inference refuses a mismatch.
# 3: channels in units of the image's own tissue distribution (2 ramped the top-hat with fixed grey levels);
# 4: the same channels, read under the image's four flips (`train.flip_reading`; a model whose operating points
# came from one reading is refused, not read otherwise); 5: the same channels of the image with its chest wall at
# column 0 (`air.canonical`: a breast stored mirrored gets the same input).
PREPROCESS_VERSION = "5"
TOPHAT_SIZE = 7  # px at the 256-px PNG (geometry: see the module docstring)
TISSUE_PERCENTILES = (1.0, 99.0)  # the tissue range that channels 0 and 2 map onto 0..1
TOPHAT_PERCENTILE = 99.0  # the tissue's own top-hat level that channel 1 maps onto 0.5
CHANNEL_RANGE = (-1.0, 2.0)  # channels 0 and 2, in tissue ranges


def describe() -> dict:
    """What the network's input is, for the model's metadata (meta.json, ONNX metadata_props)."""
    return {
        "version": PREPROCESS_VERSION,
        "source": "model PNG (cache, long side settings.model_size), padded black to a square",
        "tissue": "Otsu foreground of the image's own histogram",
        "channels": [
            f"area-resized image, tissue p{TISSUE_PERCENTILES[0]:g}->0, p{TISSUE_PERCENTILES[1]:g}->1, "
            f"clipped to {list(CHANNEL_RANGE)}",
            f"white top-hat ({TOPHAT_SIZE}-px square), max-pooled, r^2/(1+r^2) with r = top-hat / tissue "
            f"top-hat p{TOPHAT_PERCENTILE:g}",
            "max-pooled image, same units as channel 0",
        ],
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "orientation": "mirrored left-right when needed so that the chest wall is at column 0",
        "reading": "mean logit over the image and its left-right, up-down and double flips",
        "fitted_constants": [],
    }


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def _as_gray_uint8(png: Path | str | np.ndarray) -> np.ndarray:
    if isinstance(png, np.ndarray):
        arr = png
        if arr.ndim == 3:  # RGB(A) array: keep the luminance the cache would have written
            arr = np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))
        if arr.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {png.shape}")
        if arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise ValueError(f"pixel values must lie in 0..255, got {arr.min()}..{arr.max()}")
            arr = np.rint(arr).astype(np.uint8)
        return arr
    with Image.open(png) as img:
        return np.asarray(img.convert("L"))


def pad_square(gray: np.ndarray) -> np.ndarray:
    """Centre a 2-D image on a black square whose side is its long side."""
    h, w = gray.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=gray.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = gray
    return out


def max_pool(square: np.ndarray, size: int) -> np.ndarray:
    """Square image -> [size, size], each output pixel the maximum of its block (blocks as even as possible).

    Upsampling (size > side) repeats pixels, so every output pixel still comes from one input block.
    """
    side = square.shape[0]
    if size > side:
        idx = (np.arange(size) * side) // size
        return square[np.ix_(idx, idx)]
    if side % size == 0 and side > size and (side // size) % 2 == 0:  # halve first: 3 ops on quarter-size views
        half = np.maximum(
            np.maximum(square[::2, ::2], square[1::2, ::2]), np.maximum(square[::2, 1::2], square[1::2, 1::2])
        )
        return max_pool(half, size)
    if side % size == 0:  # integer factor: a maximum over the k*k strided views
        k = side // size
        out = square[::k, ::k].copy()
        for dy in range(k):
            for dx in range(k):
                np.maximum(out, square[dy::k, dx::k], out=out)
        return out
    edges = (np.arange(size) * side) // size
    return np.maximum.reduceat(np.maximum.reduceat(square, edges, axis=0), edges, axis=1)


def _running(op: np.ufunc, img: np.ndarray, width: int, axis: int) -> np.ndarray:
    """op (np.minimum / np.maximum) over a centred window of `width` px along `axis`, edges repeated.

    Shifted-view reductions in doubling steps: a few whole-array numpy ops, far cheaper than scipy's
    1-D rank filters on a 256-px image.
    """

    def part(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        return a[start:stop] if axis == 0 else a[:, start:stop]

    half = width // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, width - 1 - half)
    acc = np.pad(img, pad, mode="edge")
    span = 1  # acc[i] covers [i, i + span) of the padded image
    while span * 2 <= width:
        n = acc.shape[axis] - span
        acc = op(part(acc, 0, n), part(acc, span, span + n))
        span *= 2
    rest = width - span  # two overlapping windows of `span` cover exactly `width`
    n = img.shape[axis]
    return op(part(acc, 0, n), part(acc, rest, rest + n))


def white_tophat(gray: np.ndarray, width: int = TOPHAT_SIZE) -> np.ndarray:
    """Bright detail narrower than `width` px: image minus its grey opening (uint8, >= 0 by construction).

    The opening is a `width`-square erosion then dilation, each separable into rows and columns; `width`
    is odd so the square is centred and the dilation needs no mirrored window.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"top-hat width must be a positive odd number of pixels, got {width}")
    opened = gray
    for op in (np.minimum, np.maximum):
        opened = _running(op, _running(op, opened, width, 0), width, 1)
    return gray - opened


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's grey level (0..255) of a uint8 image: maximizes the between-class variance of its histogram.

    Pixels > threshold are the foreground; a flat image returns its one level (so nothing is foreground).
    """
    if gray.size == 0 or gray.min() == gray.max():
        return int(gray.min()) if gray.size else 0
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = np.divide(m0, w0, out=np.zeros(256), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros(256), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return int(np.argmax(between))


def tissue_mask(gray: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the image's tissue (Otsu foreground); every pixel when that leaves fewer than 1 %.

    `exclude` (bool, gray's shape): pixels that are no tissue whatever their gray, such as a coned view's
    collimator shadow (`air.unexposed_mask`); Otsu's level is then found on the rest, and they stay outside.
    """
    if exclude is None or not exclude.any():
        mask = gray > otsu_threshold(gray)
        return mask if mask.sum() >= 0.01 * gray.size else np.ones_like(mask)
    keep = ~exclude
    mask = keep & (gray > otsu_threshold(gray[keep]))
    return mask if mask.sum() >= 0.01 * gray.size else tissue_mask(gray)


def channel_scales(gray: np.ndarray, tophat: np.ndarray) -> tuple[float, float, float]:
    """(low, range, top-hat level) of one image, all measured on its own tissue (grey levels, >= 1)."""
    mask = tissue_mask(gray)
    tissue = gray[mask]
    low, high = np.percentile(tissue, TISSUE_PERCENTILES)
    level = np.percentile(tophat[mask], TOPHAT_PERCENTILE)
    return float(low), float(max(high - low, 1.0)), float(max(level, 1.0))


def preprocess(png: Path | str | np.ndarray, size: int) -> np.ndarray:
    """float32 [3, size, size]: tissue-scaled area image, self-normalized top-hat, tissue-scaled max image;
    ImageNet-normalized, of the image with its chest wall at column 0. See the module docstring."""
    gray = canonical(_as_gray_uint8(png))[0]
    square = pad_square(gray)
    tophat = white_tophat(square)
    h, w = gray.shape
    top, left = (square.shape[0] - h) // 2, (square.shape[1] - w) // 2
    low, span, level = channel_scales(gray, tophat[top : top + h, left : left + w])
    out = np.empty((3, size, size), dtype=np.float32)
    out[0] = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    out[1] = max_pool(tophat, size)
    out[2] = max_pool(square, size)
    for c in (0, 2):
        out[c] -= np.float32(low)
        out[c] *= np.float32(1.0 / span)
    np.clip(out[0::2], *CHANNEL_RANGE, out=out[0::2])
    r2 = np.square(out[1] * np.float32(1.0 / level))
    out[1] = r2 / (np.float32(1.0) + r2)
    return (out - _MEAN) / _STD


def preprocess_batch(pngs: list[Path] | list[np.ndarray], size: int) -> np.ndarray:
    """float32 [N, 3, size, size] for a list of images."""
    if not pngs:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack([preprocess(p, size) for p in pngs])
