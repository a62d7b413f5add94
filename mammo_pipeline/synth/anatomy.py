"""A breast that looks like a processed mammogram: silhouette from the chest wall, skin line, fibroglandular
texture at several scales, a pectoral muscle on MLO views, calcifications and quantum noise.

Intensities are display values in [0, 1] (1 = white); tissue stays below TISSUE_MAX so that only metal
(biopsy clips, wires) reaches near saturation. The chest wall is at column 0; callers flip right breasts.
Smooth fields are computed on coarse grids and upsampled, which keeps a 1024x832 image near 30 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

TISSUE_MAX = 0.92
BACKGROUND = 0.03
COARSE = 8  # coarse grid step (pixels) for shape and glandular pattern
MID = 2  # mid grid step for fine fibrous texture


@dataclass
class Breast:
    """The drawn anatomy and the geometry later layers need (markers on the skin, clips inside)."""

    image: np.ndarray  # float32 display values, rows x cols
    mask: np.ndarray  # bool, inside the breast
    r: np.ndarray  # float32 normalised elliptic radius (1 = skin)
    nipple: tuple[int, int]  # (row, col), may lie outside the frame on mag views


def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 field to `shape` (rows, cols)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise. Wide filters run on a proportionally smaller grid and are
    upsampled, which looks the same and keeps full-size images cheap."""
    step = max(1, int(min(sigma) / 2))
    small = (-(-shape[0] // step), -(-shape[1] // step))
    n = ndimage.gaussian_filter(rng.standard_normal(small, dtype=np.float32), (sigma[0] / step, sigma[1] / step))
    n /= n.std() + 1e-6
    return n if step == 1 else upsample(n, shape)


def draw_breast(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    spacing_mm: float,
    view: str,
    zoom: float = 1.0,
    noise: float = 0.012,
) -> Breast:
    """Draw one breast (chest wall at column 0). `zoom` > 1 gives a magnified spot of the same anatomy."""
    mm = 1.0 / spacing_mm  # pixels per mm
    hc, wc = -(-rows // COARSE), -(-cols // COARSE)
    a = rng.uniform(0.55, 0.85) * cols  # chest wall to nipple, pixels of a contact view
    mlo = view == "MLO"
    b = rng.uniform(0.36, 0.45) * rows if not mlo else rng.uniform(0.40, 0.47) * rows
    cy = rows * (0.5 if not mlo else rng.uniform(0.52, 0.6))
    if zoom > 1.0:  # centre the spot somewhere inside the breast, chest wall left of the frame
        xc = max(cols / (2 * zoom), rng.uniform(0.35, 0.75) * a)
        yc = cy + rng.uniform(-0.4, 0.4) * b
        ox, oy = xc - cols / (2 * zoom), yc - rows / (2 * zoom)
    else:
        ox, oy = 0.0, 0.0

    # anatomy coordinates (contact-view pixels) of the coarse grid
    ys = (np.arange(hc, dtype=np.float32) + 0.5) * COARSE / zoom + oy
    xs = (np.arange(wc, dtype=np.float32) + 0.5) * COARSE / zoom + ox
    X, Y = np.meshgrid(xs, ys)
    wobble = _smooth_noise(rng, (hc, wc), (hc / 10, wc / 10))
    bb = np.where(cy > Y, b * (1 + 0.7 * np.clip(1 - X / a, 0, 1)), b) if mlo else b
    r = np.sqrt((X / a) ** 2 + ((Y - cy) / bb) ** 2) * (1 + 0.025 * wobble)
    t = np.sqrt(np.clip(1 - r**2, 0, 1))

    s = 4.0 * mm / COARSE * zoom  # ~4 mm structures, elongated towards the nipple
    pattern = (
        0.6 * _smooth_noise(rng, (hc, wc), (s, 3.5 * s))
        + 0.4 * _smooth_noise(rng, (hc, wc), (2.5 * s, 5 * s))
        + 0.3 * _smooth_noise(rng, (hc, wc), (0.6 * s, 1.2 * s))
    )
    envelope = np.exp(-(((X / a - 0.4) / 0.45) ** 2) - (((Y - cy) / (0.75 * b)) ** 2))
    threshold = rng.uniform(-0.2, 0.9)  # breast density: dense (low) to fatty (high)
    gland = envelope / (1 + np.exp(-(pattern - threshold) * 2.5))
    base = 0.14 + 0.26 * t**0.7 + 0.48 * gland * (0.5 + 0.5 * t)
    if mlo:
        px, py = rng.uniform(0.25, 0.45) * cols, rng.uniform(0.45, 0.75) * rows
        pect = 1 - (np.clip(X / px, 0, None) ** 1.15 + np.clip(Y / py, 0, None))
        base = base + 0.28 * np.clip(pect * 4, 0, 1) * (0.85 + 0.1 * wobble)

    mid_shape = (-(-rows // MID), -(-cols // MID))
    fine_sigma = max(0.5, 0.7 * mm / MID * zoom)
    fibres = _smooth_noise(rng, mid_shape, (fine_sigma, 2 * fine_sigma))
    gland_mid = upsample(gland.astype(np.float32), mid_shape)
    # thin curvilinear strands (ligaments, ducts): the zero crossings of a smooth noise field
    strands = np.exp(-((_smooth_noise(rng, mid_shape, (3 * fine_sigma, 6 * fine_sigma)) / 0.12) ** 2))
    tissue_mid = upsample(base.astype(np.float32), mid_shape) + (0.05 * fibres + 0.07 * strands) * (0.3 + gland_mid)
    tissue = upsample(tissue_mid, (rows, cols))
    r_full = upsample(r.astype(np.float32), (rows, cols))
    mask = r_full < 1.0
    skin_px = 1.2 * mm * zoom
    skin = mask & (r_full > 1.0 - skin_px / a)
    img = np.where(mask, tissue, np.float32(BACKGROUND)).astype(np.float32)
    img[skin] += 0.06
    _draw_calcifications(rng, img, mask, mm * zoom)
    img += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(noise)
    np.clip(img, 0.0, TISSUE_MAX, out=img)
    nipple = (int((cy - oy) * zoom), int((a - ox) * zoom))
    return Breast(image=img, mask=mask, r=r_full, nipple=nipple)


def _draw_calcifications(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, px_per_mm: float) -> None:
    """A few benign punctate calcifications (bright dots < 0.5 mm); bigger on magnified views."""
    n = int(rng.integers(0, 12))
    if n == 0:
        return
    inside = np.flatnonzero(mask[::COARSE, ::COARSE])
    if inside.size == 0:
        return
    wc = mask[::COARSE, ::COARSE].shape[1]
    for k in rng.choice(inside, size=n):
        y, x = (k // wc) * COARSE, (k % wc) * COARSE
        rad = max(0.8, rng.uniform(0.12, 0.3) * px_per_mm)
        h = int(np.ceil(rad)) + 1
        yy, xx = np.ogrid[-h : h + 1, -h : h + 1]
        dot = np.clip(rad + 0.5 - np.sqrt(yy**2 + xx**2), 0, 1).astype(np.float32) * np.float32(0.22)
        y0, y1, x0, x1 = max(y - h, 0), min(y + h + 1, img.shape[0]), max(x - h, 0), min(x + h + 1, img.shape[1])
        img[y0:y1, x0:x1] += dot[y0 - (y - h) : y1 - (y - h), x0 - (x - h) : x1 - (x - h)]
