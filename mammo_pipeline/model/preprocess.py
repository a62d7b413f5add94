"""The one preprocessing step shared by training, the ONNX parity check and batch inference.

A model PNG (grayscale, long side 256, portrait) is padded with black to a square, centred, then
area-resized to `size` and normalized with the ImageNet statistics the ResNet18 body was trained on.
Padding (rather than squishing) keeps a marker's round shape and the mag view's line spacing the same
in every image; black is what lies outside the breast anyway. Only numpy and PIL, so inference stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

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


def preprocess(png: Path | str | np.ndarray, size: int) -> np.ndarray:
    """float32 [3, size, size]: pad to square with 0, area-resize (PIL BOX), scale to 0..1, ImageNet-normalize."""
    square = pad_square(_as_gray_uint8(png))
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    rgb = np.broadcast_to(resized / np.float32(255.0), (3, size, size))
    return ((rgb - _MEAN) / _STD).astype(np.float32)


def preprocess_batch(pngs: list[Path] | list[np.ndarray], size: int) -> np.ndarray:
    """float32 [N, 3, size, size] for a list of images."""
    if not pngs:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    return np.stack([preprocess(p, size) for p in pngs])
