"""Compose one synthetic mammogram (display values in [0, 1]) and record what was drawn on it.

Layer order matters for the ground truth: anatomy, then artefacts, then a clamp to the tissue ceiling, then
distractors, clips and wires, and on mag views the collimator border last (clips are placed in the field).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammo_pipeline.synth import magview, markers
from mammo_pipeline.synth.anatomy import TISSUE_MAX, draw_breast


@dataclass(frozen=True)
class ImageSpec:
    """What to draw; the random details come from `rng` in draw_image."""

    rows: int
    cols: int
    pixel_spacing: float  # mm at this scale
    scale: float
    view: str  # 'CC' | 'MLO'
    laterality: str  # 'L' | 'R'
    biopsy: bool
    mag: bool
    screening: bool = False


@dataclass(frozen=True)
class Drawn:
    """Facts about a drawn image, for the truth table."""

    n_clips: int = 0
    hook_wire: bool = False
    marker_partly_outside: bool = False
    subtle_mag: bool = False
    mag_factor: float = 1.0
    distractor: bool = False
    grid_streaks: bool = False
    bright_stripes: bool = False
    field: tuple[int, int, int, int] | None = None  # exposed field of a mag view, after the laterality flip


def _inside_points(rng: np.random.Generator, mask: np.ndarray, r: np.ndarray, box: tuple[int, int, int, int], n: int):
    """n random (row, col) points well inside the breast and inside `box`."""
    r0, r1, c0, c1 = box
    step = max(1, min(mask.shape) // 128)
    sub = (mask & (r < 0.85))[r0:r1:step, c0:c1:step]
    idx = np.flatnonzero(sub)
    if idx.size == 0:
        idx = np.arange(sub.size)
    pick = rng.choice(idx, size=n)
    return [(r0 + (k // sub.shape[1]) * step, c0 + (k % sub.shape[1]) * step) for k in pick]


def draw_image(spec: ImageSpec, rng: np.random.Generator) -> tuple[np.ndarray, Drawn]:
    """Draw one image; right breasts come out mirrored (chest wall on the right)."""
    rows, cols = spec.rows, spec.cols
    subtle = spec.mag and rng.random() < 0.3
    zoom = float(rng.uniform(1.5, 1.8)) if spec.mag else 1.0
    if subtle:
        zoom = float(rng.uniform(1.5, 1.6))
    breast = draw_breast(rng, rows, cols, spec.pixel_spacing, spec.view, zoom, noise=0.006 if spec.mag else 0.012)
    img = breast.image
    facts: dict[str, object] = {"subtle_mag": subtle, "mag_factor": round(zoom, 2) if spec.mag else 1.0}

    field = (0, rows, 0, cols)
    if spec.mag:
        field = magview.collimated_field(rng, (rows, cols), subtle)
        magview.draw_mag_artifacts(img, rng, field, subtle)
    else:
        if rng.random() < 0.08:
            markers.draw_grid_streaks(img, rng)
            facts["grid_streaks"] = True
        if rng.random() < 0.06:
            markers.draw_bright_stripes(img, rng)
            facts["bright_stripes"] = True
    np.clip(img, 0.0, TISSUE_MAX, out=img)

    small = spec.scale < 0.5  # keep metal visible in the 256-px model rendition
    px_mm = 1.0 / spec.pixel_spacing
    if not spec.mag and rng.random() < (0.2 if spec.screening else 0.1):
        radius = max(1.0 * px_mm, 0.006 * max(rows, cols) if small else 0.0)
        if rng.random() < 0.5 and 0 <= breast.nipple[0] < rows and 0 <= breast.nipple[1] < cols:
            center = breast.nipple
        else:
            skin = np.flatnonzero((breast.r[::4, ::4] > 0.97) & (breast.r[::4, ::4] < 1.0))
            k = int(rng.choice(skin)) if skin.size else 0
            w4 = breast.r[::4, ::4].shape[1]
            center = ((k // w4) * 4, (k % w4) * 4)
        markers.draw_skin_marker(img, rng, center, radius)
        facts["distractor"] = True

    if spec.biopsy:
        n = int(rng.choice([1, 1, 2, 3]))  # clips per image, one of them maybe cut off at the chest wall
        want_outside = not spec.mag and rng.random() < 0.25
        n_inside = n - 1 if want_outside and n > 1 else n
        length_min = 0.022 * max(rows, cols) if small else 0.0
        thick_min = max(2.0, 0.0045 * max(rows, cols)) if small else 2.0
        for center in _inside_points(rng, breast.mask, breast.r, _shrink(field, 0.1), n_inside):
            length = max(rng.uniform(1.0, 4.0) * px_mm * zoom, length_min)
            thick = max(rng.uniform(0.3, 0.6) * px_mm * zoom, thick_min)
            markers.draw_clip(img, rng, center, length, thick)
        outside, n = False, n_inside
        if want_outside:
            length = max(rng.uniform(2.0, 4.0) * px_mm, length_min)
            for _ in range(8):
                center = (rng.uniform(0.3, 0.7) * rows, rng.uniform(-0.25, 0.25) * length)
                patch, origin = markers.clip_stroke(rng, center, length, max(0.5 * px_mm, thick_min))
                if 0.2 <= markers.inside_share(img.shape, patch, origin) <= 0.9:
                    markers.stamp(img, patch, origin, markers.metal_value(rng))
                    outside, n = True, n + 1
                    break
        facts.update(n_clips=n, marker_partly_outside=outside)
        if not spec.mag and rng.random() < 0.2:
            target = _inside_points(rng, breast.mask, breast.r, (0, rows, 0, cols), 1)[0]
            entry = (0.0, rng.uniform(0.3, 0.9) * breast.nipple[1]) if spec.view == "CC" else (rows - 1.0, target[1])
            markers.draw_hook_wire(img, rng, entry, target, max(0.4 * px_mm, thick_min * 0.75))
            facts["hook_wire"] = True

    if spec.mag:
        magview.draw_collimation(img, rng, field)
    np.clip(img, 0.0, 1.0, out=img)
    if spec.laterality == "R":
        img = img[:, ::-1]
        field = (field[0], field[1], cols - field[3], cols - field[2])
    return np.ascontiguousarray(img), Drawn(field=field if spec.mag else None, **facts)  # type: ignore[arg-type]


def _shrink(box: tuple[int, int, int, int], frac: float) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = box
    dr, dc = int((r1 - r0) * frac), int((c1 - c0) * frac)
    return r0 + dr, r1 - dr, c0 + dc, c1 - dc
