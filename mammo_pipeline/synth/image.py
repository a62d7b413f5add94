"""Compose one synthetic mammogram (display values in [0, 1]) and record what was drawn on it, and where.

Layer order: anatomy (already vendor-processed), detector artefacts, a clamp to the tissue ceiling, then the
bright objects - confounders (markers, letters, calcifications, implant, device), clips and wires - and on
mag/spot views the collimator border last (clips are placed in the field, clear of anything already
metal-white). Every bright object's bounding box (after the laterality flip) goes into `Drawn.boxes`, so the
truth can be checked on geometry: confounders are as bright as clips now, so no brightness threshold can.

Rates per image (research note realism.md §4, counted from 22,012 EMBED images of mammo-artifacts; that set
is enriched for non-negative exams, so these are upper ends): circle markers 22.3 % (split here into nipple
pellets, mole rings and palpable-lump pellets), triangles 5.4 %, implants 8.2 %, devices 1.3 % (89 % on MLO).
Scar wires, lead letters and coarse/vascular calcifications have no published rate (†). Spot-compression views without
magnification: realism.md §5 (same sampling, a small paddle outline, collimated field).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mammo_pipeline.synth import film, magview, markers
from mammo_pipeline.synth.anatomy import NOISE_70UM, TISSUE_MAX, draw_breast

# confounder -> probability per contact image (†: see the module docstring)
CONFOUNDER_RATES: dict[str, float] = {
    "nipple_marker": 0.12,
    "skin_marker": 0.05,
    "lump_marker": 0.05,
    "triangle_marker": 0.054,
    "scar_marker": 0.03,
    "lead_letters": 0.45,
    "popcorn_calc": 0.05,
    "vascular_calc": 0.06,
    "implant": 0.06,
    "device": 0.013,
}
CONFOUNDERS: tuple[str, ...] = tuple(CONFOUNDER_RATES)
# soft-tissue lumps per contact image, below clip brightness (`markers.draw_mass`; since stop 50: until then a
# compact bright lump that is not metal never appeared among the negatives, and a real film's mass scored as a
# clip). † rates: intramammary lymph nodes are commonly reported on about 5 % of mammograms; benign masses (cysts,
# fibroadenomas) set at 8 %. Sizes: masses 8-20 mm, nodes 5-10 mm (†, published cases).
LESION_RATES: dict[str, float] = {"mass": 0.08, "lymph_node": 0.05}
LESIONS: tuple[str, ...] = tuple(LESION_RATES)
# A palpable-lump marker (a BB pellet or a triangle taped over the lump) lies over a drawn mass when the image has
# one, and brings its own mass in this share of the images that have none (†: a palpable lump is often but not
# always visible as a mass, dense breasts hide it). Until stop 51 pellets lay only on the nipple, so a solid metal
# disc inside the breast was never a negative; the digitized DDSM film carries one over its mass.
PALPABLE_MASS_SHARE = 0.5
PALPABLE = ("lump_marker", "triangle_marker")


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
    spot: bool = False  # spot compression (with `mag`: spot magnification; alone: no magnification)
    vendor: str = "H"  # anatomy.TONES key
    film: bool = False  # digitized screen-film
    force: tuple[str, ...] = ()  # confounders drawn whatever the rates say (coverage of small drops)


@dataclass(frozen=True)
class Drawn:
    """Facts about a drawn image, for the truth table."""

    n_clips: int = 0
    n_clips_unsaturated: int = 0
    n_clips_hidden: int = 0  # clips drawn on metal-white (the whole field under an implant): invisible
    hook_wire: bool = False
    marker_partly_outside: bool = False
    subtle_mag: bool = False
    mag_factor: float = 1.0
    distractor: bool = False
    grid_streaks: bool = False
    bright_stripes: bool = False
    density: str = ""
    field: tuple[int, int, int, int] | None = None  # exposed field of a mag/spot view, after the laterality flip
    confounders: tuple[str, ...] = ()
    lesions: tuple[str, ...] = ()  # LESIONS drawn (soft-tissue lumps below clip brightness)
    film_edges: tuple[str, ...] = ()  # digitized film: unexposed strips along 'top', 'bottom', 'far' (film.py)
    film_dust: bool = False  # digitized film: dust specks printed white (film.py)
    metal_gray: float = markers.CLIP_MIN  # the display gray metal reaches: CLIP_MIN, or a film's base + fog
    # (kind, row0, row1, col0, col1) of every clip ('clip' saturated, 'clip_unsaturated'), wire, confounder and
    # film artefact ('film_edge', 'film_dust')
    boxes: tuple[tuple[str, int, int, int, int], ...] = ()


def _inside_points(
    rng: np.random.Generator,
    mask: np.ndarray,
    r: np.ndarray,
    box: tuple[int, int, int, int],
    n: int,
    avoid: np.ndarray | None = None,
    clearance: float = 0.0,
):
    """n random (row, col) points well inside the breast and inside `box`, at least `clearance` px from every
    True pixel of `avoid` (when it leaves any such point)."""
    r0, r1, c0, c1 = box
    step = max(1, min(mask.shape) // 128)
    sub = (mask & (r < 0.85))[r0:r1:step, c0:c1:step]
    if avoid is not None and avoid.any():
        near = ndimage.distance_transform_edt(~avoid[r0:r1:step, c0:c1:step]) * step < clearance
        if (sub & ~near).any():
            sub = sub & ~near
    idx = np.flatnonzero(sub)
    if idx.size == 0:
        idx = np.arange(sub.size)
    pick = rng.choice(idx, size=n)
    return [(r0 + (k // sub.shape[1]) * step, c0 + (k % sub.shape[1]) * step) for k in pick]


def _inside_point(rng: np.random.Generator, breast) -> tuple[int, int]:
    """One random (row, col) well inside the breast, anywhere in the frame (`_inside_points`)."""
    rows, cols = breast.mask.shape
    return _inside_points(rng, breast.mask, breast.r, (0, rows, 0, cols), 1)[0]


def _skin_point(rng: np.random.Generator, r: np.ndarray, lo: float = 0.96, hi: float = 1.0) -> tuple[int, int]:
    """A random point on the skin line (elliptic radius in [lo, hi))."""
    skin = np.flatnonzero((r[::4, ::4] > lo) & (r[::4, ::4] < hi))
    k = int(rng.choice(skin)) if skin.size else 0
    w4 = r[::4, ::4].shape[1]
    return (k // w4) * 4, (k % w4) * 4


def draw_image(spec: ImageSpec, rng: np.random.Generator) -> tuple[np.ndarray, Drawn]:
    """Draw one image; right breasts come out mirrored (chest wall on the right)."""
    rows, cols = spec.rows, spec.cols
    subtle = spec.mag and rng.random() < 0.3
    zoom = float(rng.uniform(1.5, 1.8)) if spec.mag else 1.0  # realism.md §5: x1.5 and x1.8 set-ups
    if subtle:
        zoom = float(rng.uniform(1.5, 1.6))
    noise = 0.6 if spec.mag else 1.0  # mag views: 2-3x the dose, no grid (§5)
    breast = draw_breast(
        rng,
        rows,
        cols,
        spec.pixel_spacing,
        spec.view,
        zoom,
        noise=NOISE_70UM * noise,
        vendor=spec.vendor,
        film=spec.film,
    )
    img = breast.image
    facts: dict[str, object] = {
        "subtle_mag": subtle,
        "mag_factor": round(zoom, 2) if spec.mag else 1.0,
        "density": breast.density,
    }
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []

    coned = spec.mag or spec.spot
    field_box = (0, rows, 0, cols)
    if coned:
        if spec.mag:
            field_box = magview.collimated_field(rng, (rows, cols), subtle)
        else:  # spot compression at 1x: coned down to the small paddle, over a point of the breast
            centre = _inside_points(rng, breast.mask, breast.r, field_box, 1)[0]
            field_box = magview.spot_field(rng, (rows, cols), spec.pixel_spacing, centre)
        magview.draw_mag_artifacts(img, rng, field_box, subtle)
    else:
        if rng.random() < 0.08 and not spec.film:
            markers.draw_grid_streaks(img, rng)
            facts["grid_streaks"] = True
        if rng.random() < 0.06 and not spec.film:  # detector read-out stripes
            markers.draw_bright_stripes(img, rng)
            facts["bright_stripes"] = True
    np.clip(img, 0.0, TISSUE_MAX, out=img)

    small = spec.scale < 0.5  # keep metal visible in the 256-px model rendition
    px_mm = 1.0 / spec.pixel_spacing
    long_side = max(rows, cols)
    confounders: list[str] = []
    lesions: list[str] = []

    def draw_lesion(kind: str) -> None:
        centre = _inside_point(rng, breast)
        mm = rng.uniform(8.0, 20.0) if kind == "mass" else rng.uniform(5.0, 10.0)
        size = max(mm * px_mm, 4.0 * floor_of(long_side, small))
        box = markers.draw_mass(img, rng, centre, size, hilum=kind == "lymph_node")
        if box is not None:
            boxes.append((kind, box))
            lesions.append(kind)

    if not spec.mag:
        for kind, rate in LESION_RATES.items():  # tissue first: markers and clips lie over it
            if kind in spec.force or rng.random() < rate:
                draw_lesion(kind)
        for kind, rate in CONFOUNDER_RATES.items():
            if kind == "device" and spec.view != "MLO" and kind not in spec.force:
                continue
            if kind == "lead_letters" and spec.spot:
                continue
            if kind in spec.force or rng.random() < rate:
                if kind in PALPABLE and "mass" not in lesions and rng.random() < PALPABLE_MASS_SHARE:
                    draw_lesion("mass")  # the palpable lump, under its marker
                lumps = tuple(b for k, b in boxes if k == "mass")
                box = _draw_confounder(kind, img, rng, breast, spec, px_mm, small, long_side, lumps)
                if box is not None:
                    boxes.append((kind, box))
                    confounders.append(kind)

    if spec.biopsy:
        n = int(rng.choice([1, 1, 2, 3]))  # clips per image, one of them maybe cut off at the chest wall
        want_outside = not coned and rng.random() < 0.25
        n_inside = n - 1 if want_outside and n > 1 else n
        # below scale 0.5 a clip keeps the thickness the 1024-px display needs to show it (0.45 % of the long side,
        # about 1 mm on a 24-cm detector: true 0.3-0.6 mm clips lost the second look 0.01-0.05 of ROC-AUC, stops 16
        # and 52) and a length of at least 1.3 % (about 3 mm, the middle of realism.md's 2-4 mm; 2.2 %, about 5 mm,
        # until stop 67: larger than any real clip)
        length_min = 0.013 * long_side if small else 0.0
        thick_min = max(2.0, 0.0045 * long_side) if small else 2.0
        n_unsat = 0
        # not over what is already metal-white (an implant, a marker): a clip there cannot be seen, and the labels
        # are visual (a reader who sees no clip labels the view 'neither'; clips behind an implant are shown by
        # implant-displaced views); clearance = the longest clip's half-length
        white = img >= markers.CLIP_MIN
        reach = max(4.0 * px_mm * zoom, length_min) / 2
        centers = _inside_points(rng, breast.mask, breast.r, _shrink(field_box, 0.1), n_inside, white, reach)
        if any(white[c] for c in centers):  # no free point inside the field's inner part (a spot view over an
            centers = _inside_points(rng, breast.mask, breast.r, field_box, n_inside, white, reach)  # implant)
        n_hidden = 0  # clips on metal-white still: drawn, but no reader can see them
        median = float(np.median(img[breast.mask])) if breast.mask.any() else 1.0
        for center in centers:
            length = max(rng.uniform(2.0, 4.0) * px_mm * zoom, length_min)  # about 3 mm (§4)
            thick = max(rng.uniform(0.3, 0.6) * px_mm * zoom, thick_min)
            dense = markers.in_dense_tissue(img, center, max(1, round(10 * px_mm * zoom)), median)
            contrast = markers.unsaturated_contrast(rng, dense)
            hidden = bool(white[center])
            _, box, saturated = markers.draw_clip(img, rng, center, length, thick, contrast)
            if box:
                boxes.append(("hidden_clip" if hidden else "clip" if saturated else "clip_unsaturated", box))
            n_unsat += not saturated and not hidden
            n_hidden += hidden
        outside, n = False, n_inside
        if want_outside:
            length = max(rng.uniform(2.0, 4.0) * px_mm, length_min)
            for _ in range(8):
                center = (rng.uniform(0.3, 0.7) * rows, rng.uniform(-0.25, 0.25) * length)
                patch, origin = markers.clip_stroke(rng, center, length, max(0.5 * px_mm, thick_min))
                if (
                    0.2 <= markers.inside_share(img.shape, patch, origin) <= 0.9
                    and markers.covered_share(img, patch, origin, markers.CLIP_MIN) < 0.5  # not on an implant
                ):
                    markers.stamp(img, patch, origin, markers.metal_value(rng))
                    box = markers.patch_box(img.shape, patch, origin)
                    if box:
                        boxes.append(("clip", box))
                    outside, n = True, n + 1
                    break
        facts.update(n_clips=n, marker_partly_outside=outside, n_clips_unsaturated=n_unsat, n_clips_hidden=n_hidden)
        if not coned and (rng.random() < 0.2 or "hook_wire" in spec.force):
            target = _inside_point(rng, breast)
            entry = (0.0, rng.uniform(0.3, 0.9) * breast.nipple[1]) if spec.view == "CC" else (rows - 1.0, target[1])
            box = markers.draw_hook_wire(img, rng, entry, target, max(0.4 * px_mm, thick_min * 0.75))
            if box:
                boxes.append(("hook_wire", box))
            facts["hook_wire"] = True

    if coned:
        magview.draw_collimation(img, rng, field_box)
        # the collimator covers what lies outside the field: keep only boxes that still show
        boxes = [(k, b) for k, b in ((k, _intersect(b, field_box)) for k, b in boxes) if b]
    # the truth says only what shows (a spot view's small field hides most of what the breast carries elsewhere)
    facts["confounders"] = tuple(k for k in confounders if any(kind == k for kind, _ in boxes))
    facts["lesions"] = tuple(k for k in lesions if any(kind == k for kind, _ in boxes))
    facts["distractor"] = any(k.endswith("_marker") for k in facts["confounders"])
    np.clip(img, 0.0, 1.0, out=img)
    if spec.film:  # metal at base + fog, the film's edge, dust, the scanner (film.py)
        metal_gray = film.clear_display(breast.film_dmin)
        digitized = film.digitize(img, rng, breast.film_dmin, spec.pixel_spacing)
        # the film caps every gray at its clear level: an unsaturated clip whose core, as scanned (flare and noise
        # included), comes within markers.METAL_TOLERANCE of it reads as metal (since stop 50 decided on the scan:
        # a clip over a mass came within it after the scan, not before)
        printed = [
            k == "clip_unsaturated"
            and img[b[0] : b[1] + 1, b[2] : b[3] + 1].max() >= metal_gray - markers.METAL_TOLERANCE
            for k, b in boxes
        ]
        boxes = [("clip" if p else k, b) for p, (k, b) in zip(printed, boxes, strict=True)]
        boxes += list(digitized.boxes)
        facts.update(
            film_edges=digitized.edges,
            film_dust=any(k == "film_dust" for k, _ in digitized.boxes),
            metal_gray=metal_gray,
            n_clips_unsaturated=facts.get("n_clips_unsaturated", 0) - sum(printed),
        )
    if spec.laterality == "R":
        img = img[:, ::-1]
        field_box = (field_box[0], field_box[1], cols - field_box[3], cols - field_box[2])
        boxes = [(k, (b[0], b[1], cols - b[3], cols - b[2])) for k, b in boxes]
    facts["boxes"] = tuple((k, *b) for k, b in boxes)
    return np.ascontiguousarray(img), Drawn(field=field_box if coned else None, **facts)  # type: ignore[arg-type]


def floor_of(long_side: int, small: bool) -> float:
    """The least size (px) of a drawn object at small scales, so it stays a few pixels wide at 256 px."""
    return 0.006 * long_side if small else 0.0


def _draw_confounder(
    kind: str,
    img: np.ndarray,
    rng: np.random.Generator,
    breast,
    spec: ImageSpec,
    px_mm: float,
    small: bool,
    long_side: int,
    lumps: tuple[tuple[int, int, int, int], ...] = (),
) -> tuple[int, int, int, int] | None:
    """Draw one confounder of `kind` (a CONFOUNDERS key); its bounding box, or None if it fell off the frame.
    `lumps` are the boxes of the masses drawn so far: a palpable-lump marker (PALPABLE) is taped over one."""
    rows, cols = img.shape
    floor = floor_of(long_side, small)
    if kind == "nipple_marker":  # BB pellet < 3 mm on the nipple (GE 2000D manual)
        center = breast.nipple
        if not (0 <= center[0] < rows and 0 <= center[1] < cols):
            center = _skin_point(rng, breast.r)
        return markers.draw_skin_marker(img, rng, center, max(rng.uniform(0.5, 1.5) * px_mm, floor), ring=False)
    if kind == "skin_marker":  # mole ring, 2-4 mm, anywhere on the skin
        center = _skin_point(rng, breast.r, 0.5, 1.0) if rng.random() < 0.5 else _skin_point(rng, breast.r)
        return markers.draw_skin_marker(img, rng, center, max(rng.uniform(1.0, 2.0) * px_mm, floor), ring=True)
    if kind == "lump_marker":  # BB pellet, 1-3 mm, taped over a palpable lump: inside the breast
        center = _lump_point(rng, breast, lumps)
        return markers.draw_skin_marker(img, rng, center, max(rng.uniform(0.5, 1.5) * px_mm, floor), ring=False)
    if kind == "triangle_marker":  # palpable lump, over the breast
        center = _lump_point(rng, breast, lumps)
        return markers.draw_triangle_marker(img, rng, center, max(rng.uniform(4.0, 8.0) * px_mm, 2.5 * floor))
    if kind == "scar_marker":  # a wire along the scar, often crossing the breast
        p0 = np.array(_inside_point(rng, breast), dtype=np.float64)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(20, 50) * px_mm
        pts = p0[None, :] + np.linspace(0, 1, 9)[:, None] * length * np.array([np.sin(ang), np.cos(ang)])[None, :]
        pts += np.cumsum(rng.normal(0, 0.02 * length, (9, 2)), axis=0)
        return markers.draw_polyline(img, rng, pts, max(0.5 * px_mm, 0.4 * floor), broken=True)
    if kind == "lead_letters":  # in the air, away from the chest wall (realism.md §4: NYU labels at the top)
        text = f"{'R' if spec.laterality == 'R' else 'L'}{'' if rng.random() < 0.5 else ' '}{spec.view}"
        height = max(rng.uniform(4.0, 9.0) * px_mm, 8.0)
        width = height * (len(text) + 1)
        c0 = int(np.clip(rng.uniform(0.55, 0.85) * cols, 0, max(0, cols - width)))
        r0 = int(rng.uniform(0.02, 0.1) * rows)
        if spec.laterality == "R":  # flipped at the end: draw mirrored, in the air on the final image's left
            return _draw_letters_flipped(img, rng, text, r0, int(max(0, cols - c0 - width)), height)
        return markers.draw_lead_letters(img, rng, text, (r0, c0), height)
    if kind == "popcorn_calc":  # coarse benign calcification > 2 mm
        center = _inside_point(rng, breast)
        return markers.draw_popcorn(img, rng, center, max(rng.uniform(4.0, 10.0) * px_mm, 1.5 * floor))
    if kind == "vascular_calc":  # tram-track arterial calcification
        start = _inside_point(rng, breast)
        length = rng.uniform(10, 30) * px_mm
        gap = max(rng.uniform(1.0, 2.0) * px_mm, 0.6 * floor)
        return markers.draw_tram_track(img, rng, start, length, gap, max(0.3 * px_mm, 0.3 * floor))
    if kind == "implant":  # behind the gland, towards the chest wall
        center = (breast.nipple[0] + rng.uniform(-0.05, 0.05) * rows, rng.uniform(0.12, 0.3) * cols)
        radii = (rng.uniform(0.2, 0.3) * rows, rng.uniform(0.15, 0.25) * cols)
        return markers.draw_implant(img, rng, center, radii)
    if kind == "device":  # pacemaker/port at the upper edge, near the chest wall
        center = (rng.uniform(-0.02, 0.06) * rows, rng.uniform(0.02, 0.2) * cols)
        return markers.draw_device(img, rng, center, rng.uniform(30, 50) * px_mm)
    raise ValueError(f"unknown confounder {kind!r}; expected one of {CONFOUNDERS}")


def _lump_point(rng: np.random.Generator, breast, lumps: tuple[tuple[int, int, int, int], ...]) -> tuple[int, int]:
    """Where a palpable-lump marker goes: the middle half of a drawn mass's box (the lump felt under the skin),
    else anywhere well inside the breast (a lump the image does not show)."""
    if not lumps:
        return _inside_point(rng, breast)
    r0, r1, c0, c1 = lumps[int(rng.integers(len(lumps)))]
    return int(rng.uniform(0.75 * r0 + 0.25 * r1, 0.25 * r0 + 0.75 * r1)), int(
        rng.uniform(0.75 * c0 + 0.25 * c1, 0.25 * c0 + 0.75 * c1)
    )


def _draw_letters_flipped(img: np.ndarray, rng: np.random.Generator, text: str, r0: int, c0: int, height: float):
    """Lead letters on a right breast's unflipped canvas, mirrored, so they read normally after the final flip."""
    mirror = np.zeros_like(img)
    box = markers.draw_lead_letters(mirror, rng, text, (r0, c0), height)
    mirror = mirror[:, ::-1]
    np.maximum(img, mirror, out=img)
    if box is None:
        return None
    cols = img.shape[1]
    return (box[0], box[1], cols - box[3], cols - box[2])


def _intersect(b: tuple[int, int, int, int], f: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    r0, r1, c0, c1 = max(b[0], f[0]), min(b[1], f[1]), max(b[2], f[2]), min(b[3], f[3])
    return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _shrink(box: tuple[int, int, int, int], frac: float) -> tuple[int, int, int, int]:
    r0, r1, c0, c1 = box
    dr, dc = int((r1 - r0) * frac), int((c1 - c0) * frac)
    return r0 + dr, r1 - dr, c0 + dc, c1 - dc
