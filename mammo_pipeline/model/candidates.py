"""The second look's first stage: bright compact objects at display resolution, cut out as small crops.

A clip is 2-4 mm: 10-15 px in the 1024-px display PNG of a 24-30 cm detector, where its shape (ribbon, coil,
barbell) is still visible, while it is 3-5 px in the 256-px model PNG and one pixel at the global network's
64 px. Candidates are the K strongest local maxima of the self-normalized white top-hat (`preprocess`'s
object channel, here with a square of CANDIDATE_WINDOW of the long side: geometry, not intensity), at least
one crop apart; each becomes a CROP x CROP crop in units of the image's own tissue (preprocess.channel_scales),
so a patch classifier can tell a clip from a skin marker, a lead letter or a calcification by its shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_pipeline.model.preprocess import CHANNEL_RANGE, _as_gray_uint8, channel_scales, white_tophat

CANDIDATE_WINDOW = 0.027  # top-hat square as a share of the long side (as TOPHAT_SIZE = 7 of 256 px)
CROP = 32  # px at the display PNG: a 15-px clip with its surroundings
K = 6  # candidates per image


def candidates(gray: np.ndarray, k: int = K, crop: int = CROP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops float32 [k, crop, crop], centres int [k, 2] (row, col), scores float32 [k]) of one uint8 image.

    Scores are r = top-hat / the tissue's 99th-percentile top-hat; an image with fewer than k maxima gets
    zero crops with score 0 (and centre -1).
    """
    width = max(3, round(CANDIDATE_WINDOW * max(gray.shape)) | 1)
    tophat = white_tophat(gray, width)
    low, span, level = channel_scales(gray, tophat)
    score = tophat.astype(np.float32) / np.float32(level)
    half = crop // 2
    padded = np.pad((gray.astype(np.float32) - low) / span, half, mode="constant", constant_values=-low / span)
    crops = np.zeros((k, crop, crop), dtype=np.float32)
    centres = np.full((k, 2), -1, dtype=np.int64)
    scores = np.zeros(k, dtype=np.float32)
    work = score.copy()
    for i in range(k):
        flat = int(np.argmax(work))
        if work.flat[flat] <= 0:
            break
        r, c = divmod(flat, work.shape[1])
        crops[i] = padded[r : r + crop, c : c + crop]
        centres[i], scores[i] = (r, c), work[r, c]
        work[max(0, r - half) : r + half, max(0, c - half) : c + half] = 0  # one crop apart
    np.clip(crops, *CHANNEL_RANGE, out=crops)
    return crops, centres, scores


def image_candidates(png: Path | str | np.ndarray, k: int = K, crop: int = CROP):
    """`candidates` of a PNG path or array."""
    return candidates(_as_gray_uint8(png), k, crop)
