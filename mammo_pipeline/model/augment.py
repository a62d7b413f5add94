"""Train-only crops: a view as an export cropped to the breast would show it.

Research exports and some archives crop each view to the breast (the NYU samples in `../shared/realdata/` are
cropped so), and the cache then renders that crop at the same long side as a whole detector. Such a contact view
has no air around the breast and its anatomy is drawn larger: both are what a coned magnification view looks
like, so a network trained only on whole-detector views learns "little air, large structures" as its mag cue and
calls cropped contact views magnified. Training on both framings of every image leaves it the cues a crop cannot
take away: the paddle edge, the collimator and the magnified micro-structure. No constant here comes from data:
the crop is the image's own Otsu tissue, and the margin is drawn from a range given in the image's own size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mammo_pipeline.model.preprocess import preprocess_batch, tissue_mask

CROP_MARGIN = (0.0, 0.05)  # share of each side's length kept around the tissue (a tight crop up to a loose one)


def crop_to_breast(gray: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """uint8 [h', w'] with the long side of `gray` (uint8 [H, W]): the bounding box of its tissue (Otsu
    foreground, `preprocess.tissue_mask`) widened by `margin` of each side, resized (Lanczos) as the cache would
    render an image cropped so. An image whose tissue fills it comes back unchanged."""
    mask = tissue_mask(gray)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = gray.shape
    pad_r, pad_c = round(margin * h), round(margin * w)
    top, bottom = max(0, rows[0] - pad_r), min(h, rows[-1] + 1 + pad_r)
    left, right = max(0, cols[0] - pad_c), min(w, cols[-1] + 1 + pad_c)
    if (top, bottom, left, right) == (0, h, 0, w):
        return gray
    crop = gray[top:bottom, left:right]
    scale = max(h, w) / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))


def cropped_batch(pngs: list, size: int, seed: int) -> np.ndarray:
    """float32 [N, 3, size, size]: `preprocess` of each image cropped to its breast, with a margin drawn from
    CROP_MARGIN (seeded, so a training run is reproducible)."""
    rng = np.random.default_rng(seed)
    grays = [np.asarray(Image.open(p).convert("L")) if not isinstance(p, np.ndarray) else p for p in pngs]
    return preprocess_batch([crop_to_breast(g, float(rng.uniform(*CROP_MARGIN))) for g in grays], size)
