"""The one preprocessing step shared by training, the ONNX parity check and batch inference.

A model PNG (grayscale, long side 256, portrait) is padded with black to a square, centred, then turned into
three channels at `size`, each in 0..1 and normalized with the ImageNet statistics (kept so the ONNX metadata
and the PRETRAINED path stay as they are):

0. the area-resized image (PIL BOX): the breast as a whole, the mag view's fine line pattern;
1. the white top-hat (image minus its grey opening with a TOPHAT_SIZE square), block-MAX-pooled to `size`,
   then ramped from TOPHAT_FLOOR to TOPHAT_FLOOR + TOPHAT_RANGE grey levels onto 0..1: only bright objects
   smaller than the square survive, so a 3-5 px metal clip keeps its full contrast where area resizing would
   average it into the tissue; straight edges (skin line, pectoral muscle) give nothing, and the ramp turns
   tissue texture off and clips fully on, which the from-scratch network needs to learn markers at all;
2. the block-MAX-pooled image: a clip stays near-saturated instead of being diluted.

Padding (rather than squishing) keeps a marker's round shape and the mag view's line spacing the same in
every image; black is what lies outside the breast anyway. Only numpy and PIL, so inference
stays light (about 1 ms per 256-px image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Bump when the network's input changes meaning: models record it, inference refuses a mismatch.
PREPROCESS_VERSION = "2"
TOPHAT_SIZE = 7  # px at the 256-px PNG: clips are 3-5 px long there, calcification clusters and vessels wider
# Top-hat grey levels (0..255) mapped onto 0..1. Measured on the synthetic drops (498 images): an image's
# largest top-hat is 39-103 (median 59-66) without a marker and 74-247 (median 144-156) with one; tissue
# texture sits below ~50 in 99.9% of pixels.
TOPHAT_FLOOR = 48
TOPHAT_RANGE = 96

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


def preprocess(png: Path | str | np.ndarray, size: int) -> np.ndarray:
    """float32 [3, size, size]: area-resized image, ramped max-pooled top-hat, max-pooled image; ImageNet-normalized."""
    square = pad_square(_as_gray_uint8(png))
    out = np.empty((3, size, size), dtype=np.float32)
    out[0] = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    out[1] = max_pool(white_tophat(square), size)
    out[2] = max_pool(square, size)
    out[0] *= np.float32(1.0 / 255.0)
    out[2] *= np.float32(1.0 / 255.0)
    np.clip((out[1] - np.float32(TOPHAT_FLOOR)) * np.float32(1.0 / TOPHAT_RANGE), 0.0, 1.0, out=out[1])
    return (out - _MEAN) / _STD


def preprocess_batch(pngs: list[Path] | list[np.ndarray], size: int) -> np.ndarray:
    """float32 [N, 3, size, size] for a list of images."""
    if not pngs:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack([preprocess(p, size) for p in pngs])
