"""What makes a magnification or spot-compression view look like one: a collimated rectangular field with an
unexposed border, the bright rim of the raised spot/mag paddle, and faint horizontal line artefacts (the anatomy
itself is drawn magnified x1.5-1.8 and with less noise by anatomy.draw_breast).

A magnification view keeps most of the detector (`collimated_field`: 1-3 sides collimated); subtle mag views
collimate one side only, narrowly, with a faint rim: they are the hard positives. A spot-compression view
without magnification is coned down to its small paddle (`spot_field`: realism.md §5, "same detector sampling,
a small paddle outline", the paddle 7-10 cm): at 1x a 7-10 cm paddle spans a third of a 24-30 cm detector, where
the same paddle under a 1.5-1.8x magnification stand would span half or more.
"""

from __future__ import annotations

import numpy as np

UNEXPOSED = (0.90, 0.935)  # collimator shadow: bright and flat, below clip level
SPOT_PADDLE_MM = (70.0, 100.0)  # spot paddle width (realism.md §5: 7-10 cm round or rectangular, †)
SPOT_MARGIN_MM = (5.0, 15.0)  # the collimator opened a little beyond the paddle on each side (†)


def collimated_field(rng: np.random.Generator, shape: tuple[int, int], subtle: bool) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the exposed field; 1-3 sides collimated (1 narrow side when subtle)."""
    rows, cols = shape
    sides = ["top", "bottom", "far", "near"]
    chosen = (
        [str(rng.choice(sides))] if subtle else list(rng.choice(sides, size=int(rng.integers(1, 4)), replace=False))
    )
    lo, hi = (0.04, 0.07) if subtle else (0.07, 0.2)
    r0, r1, c0, c1 = 0, rows, 0, cols
    if "top" in chosen:
        r0 = int(rng.uniform(lo, hi) * rows)
    if "bottom" in chosen:
        r1 = rows - int(rng.uniform(lo, hi) * rows)
    if "near" in chosen:
        c0 = int(rng.uniform(lo, hi) * cols)
    if "far" in chosen:
        c1 = cols - int(rng.uniform(lo, hi) * cols)
    return r0, r1, c0, c1


def spot_field(
    rng: np.random.Generator, shape: tuple[int, int], pixel_spacing_mm: float, centre: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of a spot-compression view's exposed field: the spot paddle (SPOT_PADDLE_MM) plus
    a collimator margin (SPOT_MARGIN_MM) in detector mm at `pixel_spacing_mm`, centred on `centre` (a point of the
    breast under the paddle) and moved whole inside the detector."""
    rows, cols = shape
    sides = []
    for _ in range(2):  # height, width: a rectangular paddle, or a round one's square field
        mm = rng.uniform(*SPOT_PADDLE_MM) + 2 * rng.uniform(*SPOT_MARGIN_MM)
        sides.append(mm / pixel_spacing_mm)
    h, w = min(rows, max(8, round(sides[0]))), min(cols, max(8, round(sides[1])))
    r0 = int(np.clip(round(centre[0] - h / 2), 0, rows - h))
    c0 = int(np.clip(round(centre[1] - w / 2), 0, cols - w))
    return r0, r0 + h, c0, c0 + w


def draw_mag_artifacts(
    img: np.ndarray, rng: np.random.Generator, field: tuple[int, int, int, int], subtle: bool
) -> None:
    """Paddle-rim band and horizontal line artefacts inside the exposed field (before markers)."""
    r0, r1, c0, c1 = field
    rows = img.shape[0]
    band_h = max(2, int(rng.uniform(0.01, 0.025) * rows))
    gain = np.float32(rng.uniform(0.03, 0.06) if subtle else rng.uniform(0.12, 0.22))
    y = r0 + int(rng.uniform(0.02, 0.08) * rows)
    img[y : y + band_h, c0:c1] += gain
    img[y + band_h : y + band_h + max(1, band_h // 3), c0:c1] -= gain / 2  # the rim's shadow edge
    for _ in range(int(rng.integers(2, 6))):
        yl = int(rng.uniform(r0, r1))
        img[yl : yl + max(1, rows // 600), c0:c1] += np.float32(rng.uniform(0.02, 0.05))


def draw_collimation(img: np.ndarray, rng: np.random.Generator, field: tuple[int, int, int, int]) -> None:
    """Fill everything outside the field with the flat, bright unexposed level (sharp straight edges)."""
    r0, r1, c0, c1 = field
    level = rng.uniform(*UNEXPOSED)
    border = np.ones(img.shape, dtype=bool)
    border[r0:r1, c0:c1] = False
    flat = np.float32(level) + rng.standard_normal(int(border.sum()), dtype=np.float32) * np.float32(0.002)
    img[border] = flat
