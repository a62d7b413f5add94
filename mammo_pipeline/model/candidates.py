"""The second look's first stage: bright compact objects at display resolution, cut out as small crops.

A clip is 2-4 mm: 10-15 px in the 1024-px display PNG of a 24-30 cm detector, where its shape (ribbon, coil,
barbell) is still visible, while it is 3-5 px in the 256-px model PNG and one pixel at the global network's
64 px.

**Where to look (the score).** A clip, a BB, a calcification are *blobs*: at a scale about their size the image
curves down in every direction. The skin line, the bright equalized rim, vessels, ligaments, collimator and
paddle edges are *ridges* or *edges*: they curve in one direction only, whatever their brightness, length or
curvature. The score is therefore the Hessian blob measure max(0, -lambda_2) * sigma^2 (lambda_2 the larger
eigenvalue of the Gaussian-smoothed Hessian: strongly negative only where *both* principal curvatures are),
at BLOB_SCALES (fractions of the long side: geometry, not intensity), each divided by its own 99th percentile
inside the image's tissue (so the units are "times the image's own texture", whatever the vendor's contrast
or the tissue density; an unsaturated clip in dense tissue still stands out against its own surroundings).
A white top-hat with a square, the first cut, lets thin lines through; this measure does not (tested).
It runs on the 2x2-averaged image (half the display PNG): the blob scales are 4+ px there, so nothing is lost,
and it costs a quarter.

**What the classifier sees (the crops).** The K strongest local maxima, at least half a crop apart, each
give two CROP x CROP channels in units of the image's own tissue (1st percentile -> 0, 99th -> 1, clipped to
CHANNEL_RANGE): 0. the native crop (shape: ribbon vs bead vs letter vs popcorn); 1. a CONTEXT-times wider
crop, area-averaged to CROP (where it is: in the breast, on the skin line, in the air beside the letters).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_pipeline.model.preprocess import CHANNEL_RANGE, TISSUE_PERCENTILES, _as_gray_uint8, tissue_mask

# Bump whenever the crops' meaning or the patch network's input changes: saved second-look models record it
# and are refused when it differs. 1: Hessian blob score, [k, 2, CROP, CROP] native + 3x context crops.
SECOND_LOOK_VERSION = "1"
# Gaussian scales of the blob score as shares of the long side: 0.4 % and 0.8 % of a 24-30 cm detector are
# 1-2.4 mm, the radius of a 2-5 mm clip (or a magnified one) - about the object's half-size, where the
# scale-normalized blob measure of an object of that size peaks.
BLOB_SCALES = (0.004, 0.008)
CROP = 32  # px at the display PNG: 3 % of the long side (8-10 mm), a 3-mm clip with its surroundings
CONTEXT = 3  # the context channel covers CONTEXT * CROP px (9 % of the long side, 2-3 cm) at 1/CONTEXT resolution
CHANNELS = 2
K = 12  # candidates per image (recall of clip images vs K: docstring of bench_learning_curve's second look)
# The blob measure runs on the white top-hat with a square of TOPHAT_WINDOW of the long side (as preprocess's
# TOPHAT_SIZE: 2.7 %, 6-8 mm, wider than a clip): steps (the breast's edge against the air, the pectoral muscle)
# vanish, so where a bright line crosses such a step no false "corner blob" appears.
TOPHAT_WINDOW = 0.027
SCORE_PERCENTILE = 99.0  # each blob scale is divided by its own tissue percentile (as preprocess's top-hat)


def _half(gray: np.ndarray) -> np.ndarray:
    """float32 2x2 block mean (odd last row/column dropped)."""
    h, w = gray.shape[0] // 2 * 2, gray.shape[1] // 2 * 2
    g = gray[:h, :w].astype(np.float32)
    return 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])


def _opening(g: np.ndarray, width: int) -> np.ndarray:
    """Grey opening of a float image with a `width`-px square (scipy's separable min/max filters)."""
    from scipy import ndimage

    return ndimage.grey_dilation(ndimage.grey_erosion(g, size=(width, width)), size=(width, width))


def blob_score(gray: np.ndarray, tissue: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(score float32 [H/f, W/f], f): the self-normalized Hessian blob measure (module docstring) and its
    subsampling factor f (2, or 1 for images under 64 px) relative to `gray`; `tissue` is
    `preprocess.tissue_mask(gray)` when the caller has it already."""
    from scipy import ndimage

    f = 2 if min(gray.shape) >= 64 else 1
    width = max(3, round(TOPHAT_WINDOW * max(gray.shape) / f) | 1)
    g = _half(gray) if f == 2 else gray.astype(np.float32)
    g = g - _opening(g, width)
    mask = (tissue_mask(gray) if tissue is None else tissue)[: g.shape[0] * f : f, : g.shape[1] * f : f]
    out = np.zeros_like(g)
    for share in BLOB_SCALES:
        sigma = max(share * max(gray.shape) / f, 1.0)
        rr = ndimage.gaussian_filter(g, sigma, order=(2, 0), mode="nearest")
        cc = ndimage.gaussian_filter(g, sigma, order=(0, 2), mode="nearest")
        rc = ndimage.gaussian_filter(g, sigma, order=(1, 1), mode="nearest")
        lam2 = 0.5 * (rr + cc) + np.sqrt(0.25 * (rr - cc) ** 2 + rc**2)
        blob = np.maximum(-lam2, 0.0)
        level = float(np.percentile(blob[mask], SCORE_PERCENTILE)) if mask.any() else 0.0
        if level <= 1e-6:  # flat tissue: nothing to normalize by, an absolute blob still counts
            level = 1e-6 if blob.max() > 1e-3 else np.inf
        np.maximum(out, blob / np.float32(level), out=out)
    edge = int(np.ceil(2 * max(BLOB_SCALES) * max(gray.shape) / f))
    if min(out.shape) > 4 * edge:  # within 2 sigma of the frame the derivatives see the padding, not the image:
        out[:edge], out[-edge:], out[:, :edge], out[:, -edge:] = 0, 0, 0, 0  # a line leaving it looks like an end
    return out, f


def candidates(gray: np.ndarray, k: int = K, crop: int = CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops float32 [k, CHANNELS, crop, crop], centres int [k, 2] (row, col), scores float32 [k]) of a uint8
    image; always k rows, an image with fewer than k blobs gets zero crops, score 0 and centre -1.

    Scores are the blob measure in units of the image's own tissue texture (module docstring).
    """
    gray = _as_gray_uint8(gray)
    mask = tissue_mask(gray)
    score, f = blob_score(gray, mask)
    low, high = np.percentile(gray[mask], TISSUE_PERCENTILES)
    span = float(max(high - low, 1.0))
    wide = crop * CONTEXT
    pad = wide // 2 + 1
    padded = np.pad((gray.astype(np.float32) - np.float32(low)) / np.float32(span), pad, constant_values=-low / span)
    crops = np.zeros((k, CHANNELS, crop, crop), dtype=np.float32)
    centres = np.full((k, 2), -1, dtype=np.int64)
    scores = np.zeros(k, dtype=np.float32)
    work = score.copy()
    gap = max(1, crop // 2 // f)
    for i in range(k):
        flat = int(np.argmax(work))
        if not work.flat[flat] > 0:
            break
        r, c = divmod(flat, work.shape[1])
        scores[i] = work[r, c]
        work[max(0, r - gap) : r + gap + 1, max(0, c - gap) : c + gap + 1] = 0  # half a crop apart
        r, c = min(r * f + f // 2, gray.shape[0] - 1), min(c * f + f // 2, gray.shape[1] - 1)
        centres[i] = (r, c)
        top, left = r + pad - crop // 2, c + pad - crop // 2
        crops[i, 0] = padded[top : top + crop, left : left + crop]
        top, left = r + pad - wide // 2, c + pad - wide // 2
        crops[i, 1] = padded[top : top + wide, left : left + wide].reshape(crop, CONTEXT, crop, CONTEXT).mean((1, 3))
    np.clip(crops, *CHANNEL_RANGE, out=crops)
    return crops, centres, scores


def image_candidates(png: Path | str | np.ndarray, k: int = K, crop: int = CROP):
    """`candidates` of a PNG path or array (the display PNG, long side settings.display_size)."""
    return candidates(_as_gray_uint8(png), k, crop)
