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
It runs on the image area-averaged to SCORE_GRID px on the long side (the display PNG's 4x4 block means): the
blob scales are 1-2 px there, the curvature comes from finite differences of one Gaussian smoothing per scale,
and the whole score costs a sixteenth of the display PNG's pixels (issue 13's >= 67 images/s end to end).

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
# and are refused when it differs. 1: Hessian blob score on the 2x2-averaged image; 2: the same on the 4x4-averaged
# image (SCORE_GRID) with finite-difference curvature and tissue statistics from the averaged image.
SECOND_LOOK_VERSION = "2"
# Gaussian scales of the blob score as shares of the long side: 0.4 % and 0.8 % of a 24-30 cm detector are
# 1-2.4 mm, the radius of a 2-5 mm clip (or a magnified one) - about the object's half-size, where the
# scale-normalized blob measure of an object of that size peaks.
BLOB_SCALES = (0.004, 0.008)
SCORE_GRID = 256  # px on the long side of the grid the score is computed on: the smaller scale is >= 1 px there
CROP = 32  # px at the display PNG: 3 % of the long side (8-10 mm), a 3-mm clip with its surroundings
CONTEXT = 3  # the context channel covers CONTEXT * CROP px (9 % of the long side, 2-3 cm) at 1/CONTEXT resolution
CHANNELS = 2
K = 12  # candidates per image (recall of clip images vs K: docstring of bench_learning_curve's second look)
# The blob measure runs on the white top-hat with a square of TOPHAT_WINDOW of the long side (as preprocess's
# TOPHAT_SIZE: 2.7 %, 6-8 mm, wider than a clip): steps (the breast's edge against the air, the pectoral muscle)
# vanish, so where a bright line crosses such a step no false "corner blob" appears.
TOPHAT_WINDOW = 0.027
SCORE_PERCENTILE = 99.0  # each blob scale is divided by its own tissue percentile (as preprocess's top-hat)


def _block_mean(gray: np.ndarray, f: int) -> np.ndarray:
    """float32 f x f block means of a 2-D image (the last rows/columns that do not fill a block are dropped)."""
    h, w = gray.shape[0] // f * f, gray.shape[1] // f * f
    out = np.zeros((h // f, w // f), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            out += gray[i:h:f, j:w:f]
    out *= np.float32(1.0 / (f * f))
    return out


def _opening(g: np.ndarray, width: int) -> np.ndarray:
    """Grey opening of a float image with a `width`-px square (scipy's separable min/max filters)."""
    from scipy import ndimage

    return ndimage.grey_dilation(ndimage.grey_erosion(g, size=(width, width)), size=(width, width))


def _blob_measure(g: np.ndarray, sigma: float) -> np.ndarray:
    """max(0, -lambda_2) of the Hessian of `g` by Gaussian derivative filters of scale `sigma` (px)."""
    from scipy import ndimage

    rr = ndimage.gaussian_filter(g, sigma, order=(2, 0), mode="nearest")
    cc = ndimage.gaussian_filter(g, sigma, order=(0, 2), mode="nearest")
    rc = ndimage.gaussian_filter(g, sigma, order=(1, 1), mode="nearest")
    lam2 = 0.5 * (rr + cc) + np.sqrt(0.25 * (rr - cc) ** 2 + rc**2)
    return np.maximum(-lam2, 0.0)


def _grid(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(float32 image on the score grid, its tissue mask, block size f): the 1-2 % of the work that sees all pixels."""
    f = max(1, max(gray.shape) // SCORE_GRID)
    small = _block_mean(gray, f) if f > 1 else gray.astype(np.float32)
    return small, tissue_mask(small.astype(np.uint8)), f


def _score(small: np.ndarray, mask: np.ndarray, long_side: int, f: int) -> np.ndarray:
    """The self-normalized blob score (module docstring) on the score grid."""
    width = max(3, round(TOPHAT_WINDOW * long_side / f) | 1)
    g = small - _opening(small, width)
    out = np.zeros_like(g)
    for share in BLOB_SCALES:
        blob = _blob_measure(g, max(share * long_side / f, 0.7))
        level = float(np.percentile(blob[mask], SCORE_PERCENTILE)) if mask.any() else 0.0
        if level <= 1e-6:  # flat tissue: nothing to normalize by, an absolute blob still counts
            level = 1e-6 if blob.max() > 1e-3 else np.inf
        np.maximum(out, blob / np.float32(level), out=out)
    edge = int(np.ceil(2 * max(BLOB_SCALES) * long_side / f)) + 1
    if min(out.shape) > 4 * edge:  # within 2 sigma of the frame the derivatives see the padding, not the image:
        out[:edge], out[-edge:], out[:, :edge], out[:, -edge:] = 0, 0, 0, 0  # a line leaving it looks like an end
    return out


def blob_score(gray: np.ndarray) -> tuple[np.ndarray, int]:
    """(score float32 [H/f, W/f], f): the self-normalized Hessian blob measure (module docstring) of a uint8
    image and the block size f of its grid (max(1, long side // SCORE_GRID) px of `gray` per grid pixel)."""
    small, mask, f = _grid(_as_gray_uint8(gray))
    return _score(small, mask, max(gray.shape), f), f


def candidates(gray: np.ndarray, k: int = K, crop: int = CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops float32 [k, CHANNELS, crop, crop], centres int [k, 2] (row, col), scores float32 [k]) of a uint8
    image; always k rows, an image with fewer than k blobs gets zero crops, score 0 and centre -1.

    Scores are the blob measure in units of the image's own tissue texture (module docstring).
    """
    gray = _as_gray_uint8(gray)
    small, mask, f = _grid(gray)
    score = _score(small, mask, max(gray.shape), f)
    low, high = np.percentile(small[mask], TISSUE_PERCENTILES)
    span = float(max(high - low, 1.0))
    wide = crop * CONTEXT
    pad = wide // 2 + 1
    padded = np.pad(gray, pad)  # uint8 zeros: black air around the image
    crops = np.zeros((k, CHANNELS, crop, crop), dtype=np.float32)
    centres = np.full((k, 2), -1, dtype=np.int64)
    scores = np.zeros(k, dtype=np.float32)
    work = score.copy()
    gap = max(1, crop // 2 // f)
    found = 0
    for i in range(k):
        flat = int(np.argmax(work))
        if not work.flat[flat] > 0:
            break
        found += 1
        r, c = divmod(flat, work.shape[1])
        scores[i] = work[r, c]
        work[max(0, r - gap) : r + gap + 1, max(0, c - gap) : c + gap + 1] = 0  # half a crop apart
        r, c = min(r * f + f // 2, gray.shape[0] - 1), min(c * f + f // 2, gray.shape[1] - 1)
        centres[i] = (r, c)
        top, left = r + pad - crop // 2, c + pad - crop // 2
        crops[i, 0] = padded[top : top + crop, left : left + crop]
        top, left = r + pad - wide // 2, c + pad - wide // 2
        crops[i, 1] = _block_mean(padded[top : top + wide, left : left + wide], CONTEXT)
    crops[:found] -= np.float32(low)  # in units of the image's tissue range (empty rows stay 0)
    crops[:found] *= np.float32(1.0 / span)
    np.clip(crops, *CHANNEL_RANGE, out=crops)
    return crops, centres, scores


def image_candidates(png: Path | str | np.ndarray, k: int = K, crop: int = CROP):
    """`candidates` of a PNG path or array (the display PNG, long side settings.display_size)."""
    return candidates(_as_gray_uint8(png), k, crop)
