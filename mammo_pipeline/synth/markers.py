"""Metal in the breast and its look-alikes: biopsy clips (ribbon, coil, X, O, T), hook wires, and the hard
negatives - skin and nipple markers, grid-line streaks, bright horizontal stripes.

Clips and wires are near-saturated (>= CLIP_MIN) with sharp edges; distractors stay at or below
DISTRACTOR_MAX, so the ground truth can be checked on the pixels.
"""

from __future__ import annotations

import numpy as np

CLIP_MIN = 0.975
DISTRACTOR_MAX = 0.955
CLIP_SHAPES = ("ribbon", "coil", "x", "o", "t")


def _shape_segments(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Line segments (k, 2, 2) of a clip shape in unit coordinates ([-0.5, 0.5], x then y)."""
    if shape == "ribbon":  # a zig-zag band
        n = int(rng.integers(3, 6))
        xs = np.linspace(-0.5, 0.5, n + 1)
        ys = np.where(np.arange(n + 1) % 2 == 0, -0.18, 0.18)
        pts = np.stack([xs, ys], axis=1)
    elif shape == "coil":  # projected helix
        u = np.linspace(0, 1, 25)
        pts = np.stack([u - 0.5, 0.22 * np.sin(u * 2 * np.pi * rng.uniform(2.5, 4))], axis=1)
    elif shape == "o":
        u = np.linspace(0, 2 * np.pi, 17)
        pts = np.stack([0.4 * np.cos(u), 0.4 * np.sin(u)], axis=1)
    elif shape == "x":
        return np.array([[[-0.5, -0.5], [0.5, 0.5]], [[-0.5, 0.5], [0.5, -0.5]]], dtype=np.float32)
    elif shape == "t":
        return np.array([[[-0.5, -0.5], [0.5, -0.5]], [[0.0, -0.5], [0.0, 0.5]]], dtype=np.float32)
    else:
        raise ValueError(f"unknown clip shape {shape!r}; expected one of {CLIP_SHAPES}")
    return np.stack([pts[:-1], pts[1:]], axis=1).astype(np.float32)


def render_segments(segments: np.ndarray, thickness: float, pad: int = 2) -> tuple[np.ndarray, tuple[int, int]]:
    """Rasterise pixel-coordinate segments as a sharp-edged stroke; return (patch in [0,1], (row0, col0))."""
    lo = np.floor(segments.reshape(-1, 2).min(axis=0) - thickness - pad).astype(int)
    hi = np.ceil(segments.reshape(-1, 2).max(axis=0) + thickness + pad).astype(int)
    yy, xx = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32)
    dist = np.full(yy.shape, np.inf, dtype=np.float32)
    for (x0, y0), (x1, y1) in segments:
        dx, dy = x1 - x0, y1 - y0
        u = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        np.minimum(dist, np.hypot(xx - (x0 + u * dx), yy - (y0 + u * dy)), out=dist)
    return np.clip(thickness / 2 + 0.5 - dist, 0, 1), (int(lo[1]), int(lo[0]))


def stamp(img: np.ndarray, patch: np.ndarray, origin: tuple[int, int], value: float) -> float:
    """Paint `patch` (coverage 0..1) at `origin` with max-compositing; return the covered share inside the frame."""
    r0, c0 = origin
    h, w = patch.shape
    y0, y1 = max(r0, 0), min(r0 + h, img.shape[0])
    x0, x1 = max(c0, 0), min(c0 + w, img.shape[1])
    total = float(patch.sum()) or 1.0
    if y0 >= y1 or x0 >= x1:
        return 0.0
    part = patch[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
    region = img[y0:y1, x0:x1]
    painted = region + (np.float32(value) - region) * part  # sharp: coverage is 1 except a 1-px rim
    np.maximum(region, np.where(part > 0.5, np.float32(value), painted), out=region)
    return float(part.sum()) / total


def clip_stroke(
    rng: np.random.Generator, center: tuple[float, float], length_px: float, thickness_px: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """The coverage patch of one clip of a random shape and angle, and its (row, col) origin."""
    seg = _shape_segments(str(rng.choice(CLIP_SHAPES)), rng)
    angle = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=np.float32)
    pts = seg.reshape(-1, 2) @ rot.T * length_px + np.array([center[1], center[0]], dtype=np.float32)
    return render_segments(pts.reshape(-1, 2, 2), thickness_px)


def inside_share(shape: tuple[int, int], patch: np.ndarray, origin: tuple[int, int]) -> float:
    """Share of a patch's coverage that falls inside an image of `shape`."""
    r0, c0 = origin
    y0, y1 = max(r0, 0), min(r0 + patch.shape[0], shape[0])
    x0, x1 = max(c0, 0), min(c0 + patch.shape[1], shape[1])
    if y0 >= y1 or x0 >= x1:
        return 0.0
    return float(patch[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0].sum()) / (float(patch.sum()) or 1.0)


def metal_value(rng: np.random.Generator) -> float:
    """Brightness of a clip or wire: near saturation."""
    return float(rng.uniform(CLIP_MIN + 0.005, 1.0))


def draw_clip(
    img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], length_px: float, thickness_px: float
) -> float:
    """One clip of a random shape and angle; returns the share of it inside the frame."""
    patch, origin = clip_stroke(rng, center, length_px, thickness_px)
    return stamp(img, patch, origin, metal_value(rng))


def draw_hook_wire(
    img: np.ndarray, rng: np.random.Generator, entry: tuple[float, float], target: tuple[float, float], width: float
) -> None:
    """A localisation wire from the skin (`entry`) to `target`, ending in a small hook."""
    (y0, x0), (y1, x1) = entry, target
    n = 6
    ts = np.linspace(0, 1, n + 1)
    bend = rng.uniform(-0.04, 0.04) * np.hypot(y1 - y0, x1 - x0)
    xs = x0 + (x1 - x0) * ts - bend * np.sin(np.pi * ts) * (y1 - y0) / max(np.hypot(y1 - y0, x1 - x0), 1)
    ys = y0 + (y1 - y0) * ts + bend * np.sin(np.pi * ts) * (x1 - x0) / max(np.hypot(y1 - y0, x1 - x0), 1)
    hook = 12 * width
    dx, dy = (x1 - x0), (y1 - y0)
    norm = max(np.hypot(dx, dy), 1)
    hx, hy = x1 - hook * (dx / norm) + hook * 0.6 * (-dy / norm), y1 - hook * (dy / norm) + hook * 0.6 * (dx / norm)
    pts = np.stack([np.append(xs, hx), np.append(ys, hy)], axis=1).astype(np.float32)
    patch, origin = render_segments(np.stack([pts[:-1], pts[1:]], axis=1), width)
    stamp(img, patch, origin, metal_value(rng))


def draw_skin_marker(img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], radius: float) -> None:
    """A skin or nipple marker: a metal bead or a ring, bright but below clip level (a hard negative)."""
    h = int(np.ceil(radius)) + 2
    yy, xx = np.ogrid[-h : h + 1, -h : h + 1]
    d = np.sqrt(yy**2 + xx**2).astype(np.float32)
    if rng.random() < 0.5:
        patch = np.clip(radius + 0.5 - d, 0, 1)
    else:
        ring = max(1.0, radius * 0.3)
        patch = np.clip(ring / 2 + 0.5 - np.abs(d - radius + ring / 2), 0, 1)
    stamp(img, patch, (int(center[0]) - h, int(center[1]) - h), rng.uniform(0.9, DISTRACTOR_MAX))


def draw_grid_streaks(img: np.ndarray, rng: np.random.Generator) -> None:
    """Linear streaks of a malfunctioning anti-scatter grid (contact views only: mag views have no grid)."""
    rows, cols = img.shape
    period = rng.uniform(6, 14)
    amp = np.float32(rng.uniform(0.015, 0.035))
    if rng.random() < 0.5:
        wave = (np.sin(np.arange(cols) * 2 * np.pi / period) > 0.6).astype(np.float32) * amp
        img += wave[None, :]
    else:
        wave = (np.sin(np.arange(rows) * 2 * np.pi / period) > 0.6).astype(np.float32) * amp
        img += wave[:, None]


def draw_bright_stripes(img: np.ndarray, rng: np.random.Generator) -> None:
    """Two bright horizontal stripes across the detector (a known artefact, not a mag view)."""
    rows = img.shape[0]
    for _ in range(2):
        y = int(rng.uniform(0.1, 0.9) * rows)
        h = max(2, int(rng.uniform(0.004, 0.01) * rows))
        img[y : y + h] += np.float32(rng.uniform(0.08, 0.15))
