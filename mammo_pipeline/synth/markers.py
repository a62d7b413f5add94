"""Metal in the breast and its look-alikes: biopsy clips (ribbon, coil, X, O, T, barbell, heart), hook wires, and
the hard negatives that are just as bright - nipple pellets, skin rings, triangles and scar wires, lead letters,
coarse ("popcorn") and vascular calcifications, implants and pacemakers/ports - plus grid-line streaks and bright
stripes, and the soft-tissue lumps below clip brightness that a screening view carries (masses, lymph nodes).

Sizes and shapes: research note realism.md §4 (clips about 3 mm titanium; BB nipple markers < 3 mm, GE 2000D
manual; skin-marker code pellet = nipple, circle = mole, triangle = palpable mass, line = scar, Beekley;
coarse benign calcifications > 2 mm; devices at the upper edge of MLO views). Confounders are drawn at
>= CLIP_MIN like metal clips, so no gray-level threshold separates them; a share of clips is drawn below
saturation (`unsaturated_contrast`: a polymer/hydrogel marker's small core in dense tissue, Pinkney BJR 2016),
drawn *on top of* the tissue (`add`: attenuation adds along the ray, so the tissue's texture shows through it) and
lifted until it stands above the tissue around it, never as a flat gray shape. Every
stamp returns its bounding box so the truth table can be checked on geometry.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLIP_MIN = 0.975  # saturated metal, and every confounder, is drawn at or above this display level
METAL_TOLERANCE = 0.005  # a gray this near metal's reads as metal (about one step of an 8-bit display; †)
DISTRACTOR_MAX = 0.955  # the old ceiling of hard negatives; only grid streaks and stripes stay below it now
UNSATURATED_CLIP_SHARE = 0.25  # clips drawn below saturation (†: realism.md §4 gives no rate)
# ... and only in dense tissue (realism.md §4: "a 1 mm core that falls below saturation in dense tissue"): where
# the tissue within a centimetre is brighter than the breast's median gray, about DENSE_SHARE of the breast by
# construction, so a clip there is unsaturated with UNSATURATED_CLIP_SHARE / DENSE_SHARE and the overall share
# stays UNSATURATED_CLIP_SHARE
DENSE_SHARE = 0.5
MIN_UNSATURATED_LIFT = 0.06  # an unsaturated clip needs this much room below its ceiling over the tissue around (†)
# the shapes realism.md section 4 names (awareness ribbon, barbell, heart, ring or "Venus"), plus a coil, an X and a
# T; "barbell" and "heart" joined at stop 39: until then a short two-lobed saturated object inside the breast was
# drawn only as a popcorn calcification, a negative (docs/history.md "Second look", stop 39)
CLIP_SHAPES = ("ribbon", "coil", "x", "o", "t", "barbell", "heart")


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
    elif shape == "barbell":  # a wire with a solid bead at each end, from a long wire to two beads touching
        r = rng.uniform(0.1, 0.25)
        u = np.linspace(0, 2 * np.pi, 13)
        parts = [np.array([[[-0.5 + r, 0.0], [0.5 - r, 0.0]]])]  # the wire, end to end through both beads
        for x in (-0.5 + r, 0.5 - r):  # each bead: concentric loops a quarter of its radius apart, which the
            for q in (r, 0.75 * r, 0.5 * r, 0.25 * r):  # thinnest stroke (0.075 of the length, image.py) fills
                loop = np.stack([x + q * np.cos(u), q * np.sin(u)], axis=1)
                parts.append(np.stack([loop[:-1], loop[1:]], axis=1))
        return np.concatenate(parts).astype(np.float32)
    elif shape == "heart":  # the heart curve, scaled to the unit square
        u = np.linspace(0, 2 * np.pi, 25)
        x = 16 * np.sin(u) ** 3
        y = -(13 * np.cos(u) - 5 * np.cos(2 * u) - 2 * np.cos(3 * u) - np.cos(4 * u))
        pts = np.stack([x / 34, (y - 2.5) / 34], axis=1)  # y spans -11.9 .. 17: centred
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


Box = tuple[int, int, int, int]  # (row0, row1, col0, col1), end-exclusive, clipped to the frame


def patch_box(shape: tuple[int, int], patch: np.ndarray, origin: tuple[int, int]) -> Box | None:
    """The frame-clipped bounding box of a patch's covered pixels (None when nothing is inside)."""
    rr, cc = np.nonzero(patch > 0.5)
    if rr.size == 0:
        return None
    r0, r1 = max(0, origin[0] + int(rr.min())), min(shape[0], origin[0] + int(rr.max()) + 1)
    c0, c1 = max(0, origin[1] + int(cc.min())), min(shape[1], origin[1] + int(cc.max()) + 1)
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _overlap(
    shape: tuple[int, int], patch: np.ndarray, origin: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """(the frame window a patch placed at `origin` covers, the part of the patch inside it); None when it misses
    the frame of `shape` entirely."""
    r0, c0 = origin
    y0, y1 = max(r0, 0), min(r0 + patch.shape[0], shape[0])
    x0, x1 = max(c0, 0), min(c0 + patch.shape[1], shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), patch[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]


def stamp(img: np.ndarray, patch: np.ndarray, origin: tuple[int, int], value: float) -> float:
    """Paint `patch` (coverage 0..1) at `origin` with max-compositing; return the covered share inside the frame."""
    hit = _overlap(img.shape, patch, origin)
    if hit is None:
        return 0.0
    window, part = hit
    region = img[window]
    painted = region + (np.float32(value) - region) * part  # sharp: coverage is 1 except a 1-px rim
    np.maximum(region, np.where(part > 0.5, np.float32(value), painted), out=region)
    return float(part.sum()) / (float(patch.sum()) or 1.0)


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
    hit = _overlap(shape, patch, origin)
    return 0.0 if hit is None else float(hit[1].sum()) / (float(patch.sum()) or 1.0)


def covered_share(img: np.ndarray, patch: np.ndarray, origin: tuple[int, int], level: float) -> float:
    """Share of a patch's coverage inside the frame that would land on pixels already at or above `level`."""
    hit = _overlap(img.shape, patch, origin)
    if hit is None:
        return 0.0
    window, part = hit
    return float((part * (img[window] >= level)).sum()) / (float(part.sum()) or 1.0)


def metal_value(rng: np.random.Generator) -> float:
    """Brightness of a clip or wire: near saturation."""
    return float(rng.uniform(CLIP_MIN + 0.005, 1.0))


def draw_clip(
    img: np.ndarray,
    rng: np.random.Generator,
    center: tuple[float, float],
    length_px: float,
    thickness_px: float,
    contrast: float | None = None,
) -> tuple[float, Box | None, bool]:
    """One clip of a random shape and angle: saturated metal, or `contrast` (`unsaturated_contrast`) above the
    tissue around it and below CLIP_MIN (`add`); (share inside, box, saturated). Where the tissue around leaves
    no room below saturation the clip is drawn as saturated metal (and reported so)."""
    patch, origin = clip_stroke(rng, center, length_px, thickness_px)
    if contrast is not None and add(img, patch, origin, contrast, CLIP_MIN - 0.03, max(3, int(np.ceil(thickness_px)))):
        return inside_share(img.shape, patch, origin), patch_box(img.shape, patch, origin), False
    share = stamp(img, patch, origin, metal_value(rng))
    return share, patch_box(img.shape, patch, origin), True


def draw_hook_wire(
    img: np.ndarray, rng: np.random.Generator, entry: tuple[float, float], target: tuple[float, float], width: float
) -> Box | None:
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
    return patch_box(img.shape, patch, origin)


def unsaturated_contrast(rng: np.random.Generator, dense: bool) -> float | None:
    """None for a titanium clip (saturated metal, most of them, and every clip outside dense tissue); in dense
    tissue (`dense`), for UNSATURATED_CLIP_SHARE / DENSE_SHARE of clips (a polymer marker's small core, a clip in
    dense gland), the display contrast it adds over its tissue, 0.12-0.3."""
    u = rng.random()  # drawn whatever `dense` says, so the tissue does not shift the rest of the random stream
    if not dense or u >= UNSATURATED_CLIP_SHARE / DENSE_SHARE:
        return None
    return float(rng.uniform(0.12, 0.3))


def in_dense_tissue(img: np.ndarray, center: tuple[float, float], half: int, breast_median: float) -> bool:
    """Whether the tissue within `half` px of `center` (its mean) is brighter than the breast's median gray."""
    r, c = int(center[0]), int(center[1])
    window = img[max(0, r - half) : r + half + 1, max(0, c - half) : c + half + 1]
    return bool(window.size) and float(window.mean()) > breast_median


def add(
    img: np.ndarray, patch: np.ndarray, origin: tuple[int, int], contrast: float, ceiling: float, reach: int = 3
) -> bool:
    """Lift the tissue under `patch` by one offset x coverage, so that the marker's dim end (p10 of the tissue under
    its stroke, plus the offset) stands `contrast` above the bright end (p90) of the tissue within `reach` px
    around it, rolled off softly below `ceiling` (not saturated). One offset for the whole stroke: the tissue's
    texture shows through it (attenuations add along the ray). Returns False, drawing nothing, when the tissue
    around is within MIN_UNSATURATED_LIFT of `ceiling` (an implant, the densest gland): no unsaturated marker
    shows there.

    Why not `contrast` alone: the tissue under a stroke is often darker than the tissue a millimetre away (fat
    between gland, the enhancement's dark rims), and a 0.12-0.3 lift over it stayed below that tissue: a flat
    gray shape that reads as darker than its surroundings, in the drawn image and every rendering of it.
    """
    # the patch's coverage on the window `reach` px around it (zero there), clipped to the frame
    hit = _overlap(img.shape, np.pad(patch.astype(np.float32), reach), (origin[0] - reach, origin[1] - reach))
    if hit is None:
        return True
    window, part = hit
    region = img[window]
    stroke = part > 0.5
    ring = ndimage.binary_dilation(part > 0, iterations=reach) & (part == 0)
    lift, around = float(contrast), float(region.min())
    if stroke.any() and ring.any():
        around = float(np.percentile(region[ring], 90))
        if around + MIN_UNSATURATED_LIFT > ceiling:
            return False
        lift += max(0.0, around - float(np.percentile(region[stroke], 10)))
    # above a knee, a soft shoulder (slope 1 at the knee, tanh towards the ceiling) instead of a hard clip: the
    # stroke over the brightest tissue keeps its texture, compressed, rather than a flat plateau at the ceiling
    knee = np.float32(min(around + contrast, (around + ceiling) / 2))
    room = np.float32(ceiling) - knee
    lifted = region + np.float32(lift) * part
    over = lifted > knee
    lifted[over] = knee + room * np.tanh((lifted[over] - knee) / room)
    np.maximum(region, np.where(part > 0, lifted, region), out=region)
    return True


def _disc(radius: float, ring: float | None = None) -> np.ndarray:
    h = int(np.ceil(radius)) + 2
    yy, xx = np.ogrid[-h : h + 1, -h : h + 1]
    d = np.sqrt(yy**2 + xx**2).astype(np.float32)
    if ring is None:
        return np.clip(radius + 0.5 - d, 0, 1)
    return np.clip(ring / 2 + 0.5 - np.abs(d - radius + ring / 2), 0, 1)


def _stamp_centered(img: np.ndarray, patch: np.ndarray, center: tuple[float, float], value: float) -> Box | None:
    origin = (int(center[0]) - patch.shape[0] // 2, int(center[1]) - patch.shape[1] // 2)
    stamp(img, patch, origin, value)
    return patch_box(img.shape, patch, origin)


def draw_skin_marker(
    img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], radius: float, ring: bool | None = None
) -> Box | None:
    """A metal pellet (nipple marker, `ring=False`) or a hollow circle (mole marker, `ring=True`), clip-bright."""
    ring = bool(rng.random() < 0.5) if ring is None else ring
    patch = _disc(radius, max(1.0, radius * 0.3) if ring else None)
    return _stamp_centered(img, patch, center, metal_value(rng))


def draw_triangle_marker(img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], side: float):
    """A palpable-lump triangle (outline), as bright as a clip."""
    ang = rng.uniform(0, 2 * np.pi)
    pts = [
        (
            center[1] + side / np.sqrt(3) * np.cos(ang + k * 2 * np.pi / 3),
            center[0] + side / np.sqrt(3) * np.sin(ang + k * 2 * np.pi / 3),
        )
        for k in range(4)
    ]
    seg = np.array([[pts[k], pts[k + 1]] for k in range(3)], dtype=np.float32)
    patch, origin = render_segments(seg, max(1.0, side * 0.12))
    stamp(img, patch, origin, metal_value(rng))
    return patch_box(img.shape, patch, origin)


def draw_polyline(
    img: np.ndarray, rng: np.random.Generator, points: np.ndarray, width: float, broken: bool = False
) -> Box | None:
    """A metal wire along `points` ((row, col) pairs): scar markers (broken when `broken`), device leads."""
    xy = points[:, ::-1].astype(np.float32)
    seg = np.stack([xy[:-1], xy[1:]], axis=1)
    if broken:
        seg = seg[::2] if len(seg) > 2 else seg
    patch, origin = render_segments(seg, width)
    stamp(img, patch, origin, metal_value(rng))
    return patch_box(img.shape, patch, origin)


def _lift(img: np.ndarray, patch: np.ndarray, origin: tuple[int, int], lift: float) -> bool:
    """Add `lift` x `patch` (coverage 0..1) at `origin` over the tissue, so its texture shows through, never above
    DISTRACTOR_MAX (soft tissue is never clip-bright); False when the patch misses the frame."""
    hit = _overlap(img.shape, patch, origin)
    if hit is None:
        return False
    region, part = img[hit[0]], hit[1]
    np.maximum(region, np.minimum(region + np.float32(lift) * part, DISTRACTOR_MAX), out=region)
    return True


def _lump(rng: np.random.Generator, radius: float, offset: tuple[float, float], h: int) -> np.ndarray:
    """Coverage (2h+1 x 2h+1) of one coarse calcium chunk: a disc of `radius` px at `offset` from the middle whose
    edge wanders (harmonics 2-4 of up to a quarter of the radius each), so no two chunks share an outline."""
    yy, xx = np.ogrid[-h : h + 1, -h : h + 1]
    dy, dx = yy - offset[0], xx - offset[1]
    theta = np.arctan2(dy, dx)
    edge = np.full(theta.shape, radius, dtype=np.float64)
    for k in (2, 3, 4):
        edge = edge + radius * rng.uniform(0, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.clip(edge + 0.5 - np.sqrt(dy**2 + dx**2), 0, 1).astype(np.float32)


def draw_popcorn(img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], size: float) -> Box | None:
    """A coarse ("popcorn-like") calcification of an involuting fibroadenoma, `size` px across: 4-9 coarse chunks
    of calcium with wandering outlines, clustered and partly touching, saturated, inside the faint oval mass of the
    fibroadenoma (1.2-1.6 times the cluster, at most DISTRACTOR_MAX). BI-RADS (5th ed.) and realism.md §4: "classic
    calcifications produced by an involuting fibroadenoma", each > 2-3 mm. Until stop 50 it was 3-6 overlapping
    smooth discs: a two- or three-lobed disc cluster, the shape of a barbell or heart clip, which the second look
    could not tell from one (docs/history.md, stop 50). Counts and shares are † (the look of published cases)."""
    h, hm = int(0.8 * size) + 3, int(1.5 * size) + 3
    mass = ndimage.gaussian_filter(_lump(rng, rng.uniform(0.6, 0.8) * size, (0.0, 0.0), hm), max(1.0, 0.1 * size))
    lift = np.float32(rng.uniform(0.04, 0.10))
    _lift(img, mass / np.float32(max(float(mass.max()), 1e-6)), (int(center[0]) - hm, int(center[1]) - hm), lift)
    patch = np.zeros((2 * h + 1, 2 * h + 1), dtype=np.float32)
    for _ in range(int(rng.integers(4, 10))):
        offset = tuple(np.clip(rng.normal(0, 0.2 * size, 2), -0.35 * size, 0.35 * size))
        np.maximum(patch, _lump(rng, max(rng.uniform(0.1, 0.22) * size, 1.0), offset, h), out=patch)
    return _stamp_centered(img, patch, center, metal_value(rng))


def draw_mass(
    img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], size: float, hilum: bool = False
) -> Box | None:
    """A benign soft-tissue lump `size` px long, added over the tissue (its texture shows through) and never
    clip-bright (at most DISTRACTOR_MAX): an oval, slightly lobulated, circumscribed mass (a cyst or fibroadenoma:
    BI-RADS "oval", "circumscribed"), or with `hilum` an intramammary lymph node, a reniform oval whose fatty hilum
    is a darker notch in one flank. Both are what a dome slot of the second look also finds (a compact object
    brighter than all around it, as an unsaturated clip is); only outline and size tell them from a clip. Lift
    0.08-0.2 of display contrast and a soft edge (sigma 3-8 % of the size) are †, from the look of published
    cases; the box is the lump's."""
    h = int(0.8 * size) + 3
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    along = yy * np.cos(angle) + xx * np.sin(angle)
    across = -yy * np.sin(angle) + xx * np.cos(angle)
    a, b = 0.5 * size, 0.5 * size * rng.uniform(0.55, 0.9)
    theta = np.arctan2(across / b, along / a)
    wander = 1.0 + sum(rng.uniform(0, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    lump = (np.hypot(along / a, across / b) <= wander).astype(np.float32)
    if hilum:  # the fatty hilum: a notch a third of the node's width deep in one flank
        notch = np.hypot(along / (0.3 * a), (across - b) / (0.45 * b)) <= 1.0
        lump[notch] = 0.0
    lump = ndimage.gaussian_filter(lump, max(1.0, rng.uniform(0.03, 0.08) * size))
    origin = (int(center[0]) - h, int(center[1]) - h)
    if not _lift(img, lump, origin, np.float32(rng.uniform(0.08, 0.2))):
        return None
    return patch_box(img.shape, lump, origin)


def draw_tram_track(
    img: np.ndarray, rng: np.random.Generator, start: tuple[float, float], length: float, gap: float, width: float
) -> Box | None:
    """A vascular calcification: two parallel, slightly broken lines (the vessel's calcified walls), saturated."""
    ang = rng.uniform(0, np.pi)
    d = np.array([np.sin(ang), np.cos(ang)])  # (row, col) direction
    nrm = np.array([d[1], -d[0]])
    ts = np.linspace(0, length, 9)
    base = np.array(start)[None, :] + ts[:, None] * d[None, :]
    base += np.cumsum(rng.normal(0, 0.03 * length / 8, (9, 2)), axis=0)
    segs = []
    for side in (-0.5, 0.5):
        line = (base + side * gap * nrm)[:, ::-1].astype(np.float32)
        segs += [[line[k], line[k + 1]] for k in range(8) if rng.random() < 0.8]
    if not segs:
        segs = [[base[0, ::-1], base[-1, ::-1]]]
    patch, origin = render_segments(np.array(segs, dtype=np.float32), width)
    stamp(img, patch, origin, metal_value(rng))
    return patch_box(img.shape, patch, origin)


def draw_lead_letters(img: np.ndarray, rng: np.random.Generator, text: str, corner: tuple[int, int], height: float):
    """Burned-in lead letters / orientation label ("LCC", "R MLO") at `corner` (row, col of the top-left)."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(8, round(height))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    canvas = Image.new("L", (size * (len(text) + 1), size * 2), 0)
    ImageDraw.Draw(canvas).text((size // 4, size // 4), text, fill=255, font=font)
    patch = (np.asarray(canvas, dtype=np.float32) / 255.0 > 0.4).astype(np.float32)
    stamp(img, patch, corner, metal_value(rng))
    return patch_box(img.shape, patch, corner)


def draw_implant(
    img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], radii: tuple[float, float]
) -> Box | None:
    """A breast implant: a large, smooth, saturated oval behind the gland (silicone stops the beam)."""
    ry, rx = radii
    h, w = int(ry) + 2, int(rx) + 2
    yy, xx = np.ogrid[-h : h + 1, -w : w + 1]
    r = np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2).astype(np.float32)
    patch = np.clip((1.0 - r) * max(ry, rx) + 0.5, 0, 1)
    return _stamp_centered(img, patch, center, metal_value(rng))


def draw_device(img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], size: float) -> Box | None:
    """A pacemaker or port: a rounded can (`size` px across) with a lead, saturated; may run off the frame."""
    ry, rx = size * rng.uniform(0.35, 0.5), size * rng.uniform(0.5, 0.7)
    box = draw_implant(img, rng, center, (ry, rx))
    lead = np.array(center)[None, :] + np.cumsum(rng.normal([0.0, 1.0], 0.4, (6, 2)) * size * 0.35, axis=0)
    wire = draw_polyline(img, rng, np.vstack([np.array(center)[None, :], lead]), max(1.0, size * 0.04))
    boxes = [b for b in (box, wire) if b]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


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
