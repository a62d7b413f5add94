"""A breast that looks like a vendor-processed ("For Presentation") mammogram, drawn from published parameters.

Research note: `../shared/research/realism.md` (§ numbers below). Parameters marked † there are reasonable
defaults, not facts; none is fitted to the real images in `../shared/realdata/` (those are only compared
against, by `mammo_pipeline.synth.realism`).

Layers, in the order a projection and a vendor's processing chain produce them (§1-§2):
1. **Shape.** A half-ellipse from the chest wall (column 0; callers flip right breasts), cut by the frame at the
   chest wall; MLO views get a wider upper part and a pectoral muscle.
2. **Fibroglandular tissue.** An anisotropic power-law (1/f^beta) field, beta ~ N(3.2, 0.25) clipped to 2.6-3.8,
   +0.1 on MLO (Chen et al., Med Phys 2012: CC 3.17 +- 0.23, MLO 3.30 +- 0.24; recipe §1.1), elongated 1.3x
   towards the nipple (PMC3189972), thresholded to the dense-area share of a BI-RADS density category a-d
   (population 10/40/40/10 %; the fibroglandular fraction mean 19 %, Yaffe 2009).
3. **Fat lobules and Cooper's ligaments.** Two layers of anisotropic Voronoi cells (the borders of adipose
   compartments are the ligaments: Bakic 2011, OpenVCT); a pixel is ligament near a cell border, width
   0.1-0.3 mm (VICTRE ligament thickness 0.1 mm, §1.3 "cheap 2-D approximation"). Cells are 8-14 and 16-26 mm
   (VICTRE fat lobule axes 20-30 mm), borders warped and faded at random (†).
4. **Vessels and ducts.** Long curved vessels from the chest wall (root radius 0.75 mm, VICTRE) and ducts
   converging on the nipple (root radius 0.5 mm, VICTRE), drawn as anti-aliased lines on a coarse grid.
5. **Projection through a compressed breast.** Compressed thickness T ~ N(59, 16) mm (Yaffe 2009); the margin
   is a half-cylinder of radius T/2 (§2 step 1), so the path through tissue falls to zero at the skin line and
   the path through the 0.75-1.5 mm skin (VICTRE skin 0.75 mm) peaks there: the bright skin line of real images.
6. **Vendor processing (§2).** Peripheral (thickness) equalization divides by the smoothed path length
   (k = 0.7-1.0 of full equalization, §2 step 2), multiscale enhancement (band gains 1.5-3 below 2 mm, the
   coarsest band compressed to 0.6-0.9, §2 step 3) adds overshoot at every edge, and a per-vendor tone curve
   maps to display values (§2 step 4).
   Digitized film (`film=True`) skips equalization and edge enhancement, uses Burgess's film beta (mean 2.8)
   and keeps the air at base + fog gray.
7. **Quantum noise**, white for a-Se detectors and blurred for CsI (GE; Borges 2019), with variance rising
   with the signal (affine variance), scaled to the pixel size so that a `--scale` < 1 image looks like an
   area-averaged full-size one.

Intensities are display values in [0, 1] (1 = white); tissue stays below TISSUE_MAX. Fields are computed on
grids of about WORK_MM (anatomy mm) and upsampled; thin lines are drawn at full size from an upsampled distance
field, so they stay one or two pixels wide. About 0.15 s for a 1024 x 832 image, 2-3 s at 4096 x 3328.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

TISSUE_MAX = 0.93
BACKGROUND = 0.0
WORK_MM = 0.25  # anatomy sampling of the fields (mm): Nyquist 2 cycles/mm, above the 0.2-1 cycles/mm beta band
VORONOI_MM = 1.2  # sampling of the Voronoi distance field (upsampled bilinearly: it is piecewise linear)
DENSITY_SHARE = {"a": (0.03, 0.12), "b": (0.12, 0.3), "c": (0.3, 0.55), "d": (0.55, 0.8)}  # dense area (†)
DENSITY_P = {"a": 0.1, "b": 0.4, "c": 0.4, "d": 0.1}  # BI-RADS 5th ed. population shares
# per-vendor tone (gamma, display of fat, display of dense gland) and noise blur (px): † (§2 step 4)
TONES: dict[str, tuple[float, float, float, float]] = {
    "H": (1.0, 0.10, 0.68, 0.0),  # Hologic: sigmoid baked into the pixels, one window
    "GE": (0.9, 0.12, 0.66, 0.7),  # GE: CsI, correlated noise (Borges 2019)
    "SIE": (1.1, 0.09, 0.70, 0.0),
    "FUJ": (0.95, 0.11, 0.66, 0.0),
    "PHI": (1.05, 0.08, 0.64, 0.0),  # photon counting: low noise
    "FILM": (1.3, 0.15, 0.70, 0.6),  # digitized film: no equalization, film's own characteristic curve
}
ENVELOPE_WEIGHT = 1.6  # gland gathers behind the nipple: weight of the central envelope against the field (†)
GLAND_SOFTNESS = 0.45  # sigmoid width of the dense/fat threshold, in field SDs (†)
GLAND_TEXTURE = 0.35  # share of the gland's density modulated by a FINE_BETA field: its fluffy look (†)
FINE_BETA = 2.7  # the fine texture field's exponent (†; within the literature's 1.5-4.0 span, realism.md §1.1)
NOISE_70UM = 0.045  # display SD of one 70-um pixel (†: no published figure; set after comparing, see README)


@dataclass
class Breast:
    """The drawn anatomy and the geometry later layers need (markers on the skin, clips inside)."""

    image: np.ndarray  # float32 display values, rows x cols
    mask: np.ndarray  # bool, inside the breast
    r: np.ndarray  # float32 normalised elliptic radius (1 = skin)
    nipple: tuple[int, int]  # (row, col), may lie outside the frame on mag views
    density: str = "b"  # BI-RADS category a-d


def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 field to `shape` (rows, cols)."""
    if a.shape == tuple(shape):
        return a.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.BILINEAR))


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on an area-downsampled copy and are upsampled (same look, far cheaper)."""
    d = int(sigma_px // 3)
    if d < 2:
        return ndimage.gaussian_filter(a, sigma_px)
    small_shape = (max(1, a.shape[0] // d), max(1, a.shape[1] // d))
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    small = np.asarray(img.resize((small_shape[1], small_shape[0]), Image.Resampling.BOX), dtype=np.float32)
    return upsample(ndimage.gaussian_filter(small, sigma_px / d), a.shape)


def power_law_field(
    rng: np.random.Generator, shape: tuple[int, int], px_mm: float, beta: float, stretch: float = 1.3
) -> np.ndarray:
    """Unit-SD Gaussian field with power spectrum ~ 1/f^beta (f in cycles/mm, clipped at 1/FOV).

    `stretch` > 1 elongates structures along the columns (chest wall -> nipple): the spectrum is evaluated at
    (fx * stretch, fy), so it falls faster along x (§1.1 step 3).
    """
    h, w = shape
    fy = np.fft.fftfreq(h, d=px_mm).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w, d=px_mm).astype(np.float32)[None, :]
    f = np.sqrt((fx * stretch) ** 2 + fy**2)
    f = np.maximum(f, 1.0 / (max(h, w) * px_mm))
    spec = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32)) * f ** np.float32(-beta / 2)
    spec[0, 0] = 0
    out = np.fft.irfft2(spec, s=shape).astype(np.float32)
    return out / (out.std() + 1e-12)


def voronoi_border_distance(
    rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, cell_mm: float, stretch: float
) -> np.ndarray:
    """Half the gap between the nearest and second-nearest seed (mm): 0 on a cell border, large in a cell.

    X, Y: anatomy coordinates (mm) of a grid. Seeds are uniform with mean spacing `cell_mm`; distances use a
    metric shrunk by `stretch` along x, so cells are elongated towards the nipple, and the grid is warped by a
    smooth random displacement (0.6 of a cell) so that borders curve like ligaments instead of being straight.
    """
    x0, x1, y0, y1 = X.min() - cell_mm, X.max() + cell_mm, Y.min() - cell_mm, Y.max() + cell_mm
    n = max(4, int((x1 - x0) * (y1 - y0) / cell_mm**2))
    seeds = np.column_stack([rng.uniform(x0, x1, n) / stretch, rng.uniform(y0, y1, n)])
    px = max(float(X[0, 1] - X[0, 0]) if X.shape[1] > 1 else 1.0, 1e-3)
    sig = 0.6 * cell_mm / px
    warp = [ndimage.gaussian_filter(rng.standard_normal(X.shape, dtype=np.float32), sig) for _ in range(2)]
    warp = [w / (w.std() + 1e-9) * cell_mm * 0.6 for w in warp]
    pts = np.column_stack([(X + warp[0]).ravel() / stretch, (Y + warp[1]).ravel()])
    d, _ = cKDTree(seeds).query(pts, k=2)
    return ((d[:, 1] - d[:, 0]) / 2).reshape(X.shape).astype(np.float32)


def _curve(rng: np.random.Generator, start: np.ndarray, direction: float, length: float, steps: int, wiggle: float):
    """A gently curved polyline (points in mm) from `start` heading `direction` (radians)."""
    pts = [start]
    ang = direction
    step = length / steps
    for _ in range(steps):
        ang += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.array([np.cos(ang), np.sin(ang)]))
    return np.array(pts)


def _draw_lines(shape: tuple[int, int], lines: list[tuple[np.ndarray, float, float]], px_mm: float) -> np.ndarray:
    """Polylines (points in mm (x, y), width mm, value) drawn on a float grid of `px_mm` pixels, slightly blurred."""
    canvas = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(canvas)
    for pts, width, value in lines:
        xy = [(float(x / px_mm), float(y / px_mm)) for x, y in pts]
        draw.line(xy, fill=float(value), width=max(1, round(width / px_mm)), joint="curve")
    return ndimage.gaussian_filter(np.asarray(canvas, dtype=np.float32), 0.7)


def draw_breast(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    spacing_mm: float,
    view: str,
    zoom: float = 1.0,
    noise: float = NOISE_70UM,
    vendor: str = "H",
    film: bool = False,
) -> Breast:
    """Draw one breast (chest wall at column 0). `zoom` > 1 gives a magnified spot of the same anatomy.

    `spacing_mm` is the detector pixel at this size; `noise` the display SD of a 70-um pixel (scaled to the
    actual pixel); `vendor` picks the tone curve (TONES key); `film` draws a digitized screen-film image.
    """
    mm_px = spacing_mm / zoom  # anatomy mm per output pixel
    step = max(1, round(WORK_MM / mm_px))
    hw, ww = -(-rows // step), -(-cols // step)
    wmm = mm_px * step  # anatomy mm per work pixel
    a = rng.uniform(0.4, 0.85) * cols  # chest wall to nipple, pixels of a contact view
    mlo = view == "MLO"
    b = rng.uniform(0.36, 0.45) * rows if not mlo else rng.uniform(0.40, 0.47) * rows
    cy = rows * (0.5 if not mlo else rng.uniform(0.52, 0.6))
    if zoom > 1.0:  # centre the spot somewhere inside the breast, chest wall left of the frame
        xc = max(cols / (2 * zoom), rng.uniform(0.35, 0.75) * a)
        yc = cy + rng.uniform(-0.4, 0.4) * b
        ox, oy = xc - cols / (2 * zoom), yc - rows / (2 * zoom)
    else:
        ox, oy = 0.0, 0.0

    # anatomy coordinates (contact-view pixels) of the work grid
    ys = (np.arange(hw, dtype=np.float32) + 0.5) * step / zoom + oy
    xs = (np.arange(ww, dtype=np.float32) + 0.5) * step / zoom + ox
    X, Y = np.meshgrid(xs, ys)
    wobble = upsample(ndimage.gaussian_filter(rng.standard_normal((24, 24), dtype=np.float32), 2.0), (hw, ww))
    wobble = wobble / (wobble.std() + 1e-6)
    bb = np.where(cy > Y, b * (1 + 0.7 * np.clip(1 - X / a, 0, 1)), b) if mlo else b
    r = np.sqrt((X / a) ** 2 + ((Y - cy) / bb) ** 2) * (1 + 0.02 * wobble)
    mask_w = r < 1.0
    # distance from the skin line in anatomy mm; the frame's edges (chest wall, mag field) are not skin
    ds = max(1, round(1.0 / wmm))  # a 1-mm grid is plenty for a distance in millimetres
    coarse = np.pad(mask_w[::ds, ::ds], 1, mode="edge")
    depth = upsample(ndimage.distance_transform_edt(coarse)[1:-1, 1:-1].astype(np.float32) * (wmm * ds), (hw, ww))
    depth = np.where(mask_w, np.maximum(depth, 0.5 * wmm), 0.0).astype(np.float32)

    # 2. fibroglandular tissue: power-law field under a central envelope, thresholded to the density category
    beta = float(np.clip(rng.normal(2.8 if film else 3.2, 0.25), 2.3 if film else 2.6, 3.8)) + (0.1 * mlo)
    field = power_law_field(rng, (hw, ww), wmm, beta)
    envelope = np.exp(-(((X / a - 0.35) / 0.5) ** 2) - (((Y - cy) / (0.8 * b)) ** 2)).astype(np.float32)
    density = str(rng.choice(list(DENSITY_P), p=list(DENSITY_P.values())))
    share = rng.uniform(*DENSITY_SHARE[density])
    g = field + ENVELOPE_WEIGHT * envelope
    inside = g[mask_w] if mask_w.any() else g.ravel()
    thr = float(np.quantile(inside, 1 - share))
    gland = (1 / (1 + np.exp(-(g - thr) / GLAND_SOFTNESS))).astype(np.float32)
    fine = power_law_field(rng, (hw, ww), wmm, FINE_BETA)  # texture inside the gland and the fat

    # 3. fat lobules and Cooper's ligaments (two Voronoi layers), on a coarser grid, upsampled
    vstep = max(1, round(VORONOI_MM / wmm))
    Xmm, Ymm = X[::vstep, ::vstep] * spacing_mm, Y[::vstep, ::vstep] * spacing_mm
    borders = [
        voronoi_border_distance(rng, Xmm, Ymm, rng.uniform(8, 14), 1.8),
        voronoi_border_distance(rng, Xmm, Ymm, rng.uniform(16, 26), 1.4),
    ]
    # which border segments show: a smooth random visibility per region (real ligaments fade in and out)
    show = [np.clip(power_law_field(rng, bd.shape, wmm * vstep, 2.0) * 0.8 + 0.6, 0, 1) for bd in borders]
    # 4. vessels from the chest wall, ducts to the nipple (mm on the work grid)
    nip = np.array([(a - ox) * spacing_mm, (cy - oy) * spacing_mm]) if zoom == 1.0 else None
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        start = np.array([0.0 - ox * spacing_mm, (cy - oy + rng.uniform(-0.8, 0.6) * b) * spacing_mm])
        lines.append(
            (_curve(rng, start, rng.normal(0, 0.25), a * spacing_mm * rng.uniform(0.5, 1), 30, 0.08), 1.5, 1.0)
        )
    nipple_mm = np.array([(a - ox) * spacing_mm, (cy - oy) * spacing_mm])
    for _ in range(int(rng.integers(4, 9))):
        lines.append((_curve(rng, nipple_mm, np.pi + rng.normal(0, 0.45), a * spacing_mm * 0.5, 15, 0.1), 1.0, 0.7))
    del nip
    linear = _draw_lines((hw, ww), lines, wmm) if lines else np.zeros((hw, ww), np.float32)

    # 5. projection: path through tissue and through the skin shell of a half-cylinder margin of radius T/2
    T = float(np.clip(rng.normal(59, 16), 25, 95))
    R = T / 2
    skin = rng.uniform(0.75, 1.5)
    d = np.minimum(depth, R)
    total = 2 * np.sqrt(np.clip(2 * R * d - d**2, 0, None))
    dc = np.minimum(d, R)
    inner = 2 * np.sqrt(np.clip((R - skin) ** 2 - (R - dc) ** 2, 0, None))
    tissue_path, skin_path = inner, np.clip(total - inner, 0, None)

    # tissue "density" (dense-equivalent share) on the work grid, without the thin lines
    dens = 0.12 + 0.62 * gland * (1 - GLAND_TEXTURE + GLAND_TEXTURE * np.tanh(fine)) + 0.12 * linear * (1 - 0.5 * gland)
    dens = dens + 0.04 * fine * (1 - gland)
    signal = tissue_path * dens + skin_path * 0.7
    if mlo:
        px, py = rng.uniform(0.25, 0.45) * cols, rng.uniform(0.45, 0.75) * rows
        pect = np.clip((1 - (np.clip(X / px, 0, None) ** 1.15 + np.clip(Y / py, 0, None))) * 4, 0, 1)
        signal = signal + pect * total * 0.3 * (0.9 + 0.05 * wobble)

    # 6. vendor processing: peripheral equalization (divide by the smoothed path) ...
    if film:
        eq = signal / T
    else:
        k = rng.uniform(0.7, 1.0)
        path = ndimage.gaussian_filter(np.maximum(total, 0.5), max(0.5, 1.0 / wmm))
        eq = signal / (T ** (1 - k) * np.maximum(path, 0.05 * T) ** k)
    # fat lobule: a shallow dome, darkest in the cell's middle (work grid: it is smooth)
    dome = upsample(np.clip(borders[0] / 3.0, 0, 1), (hw, ww))
    eq = eq - 0.05 * dome * (1 - gland)
    # ... then multiscale enhancement (§2 step 3): bands between Gaussians of 0.5, 1, 2, 4, 8 mm, gains 1.5-3
    # for the bands finer than 2 mm, 1 for the 2-8 mm bands, and the coarsest band compressed (gain < 1)
    fine_gain = 1.0
    if not film:
        eq = np.where(mask_w, eq, float(np.mean(eq[mask_w])) if mask_w.any() else 0.0)
        levels = [eq] + [_blur(eq, sig / wmm) for sig in (0.5, 1.0, 2.0, 4.0, 8.0)]
        gains = [*rng.uniform(1.5, 3.0, 3), 1.0, 1.0]
        fine_gain = float(gains[0])
        coarse = levels[-1]
        mean = float(coarse[mask_w].mean()) if mask_w.any() else 0.0
        eq = mean + rng.uniform(0.6, 0.9) * (coarse - mean)
        for g_, hi_, lo_ in zip(gains, levels[:-1], levels[1:], strict=True):
            eq = eq + g_ * (hi_ - lo_)
    eq = np.where(mask_w, eq, 0.0).astype(np.float32)
    full = (rows, cols)
    # thin ligaments at full size from the upsampled border distance (piecewise linear, so it stays exact);
    # their amplitude (visibility, fewer in dense tissue, fading into the skin line) is smooth: work grid
    vis = np.clip(depth / 3.0, 0, 1) * (1 - 0.5 * gland) * (0.1 if film else 0.15 * fine_gain)
    lw = rng.uniform(0.2, 0.36)  # exp(-(e/lw)^2): full width 0.3-0.6 mm, i.e. 2w with w = 0.2-0.3 mm (§1.3)
    img = upsample(eq, full)
    for k_, bd in enumerate(borders):
        amp = upsample(upsample(show[k_], (hw, ww)) * vis * (1.0 if k_ == 0 else 1.3), full)
        e = upsample(bd, full)
        img += np.minimum(np.exp(-((e / lw) ** 2)), 1.0) * amp
    r_full = upsample(r.astype(np.float32), full)
    mask = r_full < 1.0
    # ... and the tone curve: fat -> f0, dense gland -> g0
    gamma, f0, g0, nblur = TONES.get(vendor, TONES["H"]) if not film else TONES["FILM"]
    x = (img - 0.12) * np.float32(1 / 0.62)  # 0 = fat, 1 = dense gland; below 0 (enhanced dark edges): linear
    img = f0 + (g0 - f0) * (x if gamma == 1.0 else np.where(x > 0, np.abs(x) ** np.float32(gamma), x))
    air = BACKGROUND if not film else rng.uniform(0.06, 0.12)
    img = np.where(mask, img, np.float32(air)).astype(np.float32)
    _draw_calcifications(rng, img, mask, 1.0 / mm_px)

    # 7. quantum noise, scaled to the pixel size (a coarser pixel averages more quanta)
    sd = noise * 0.07 / spacing_mm * (0.1 if film else 1.0)  # film: fine grain, averaged by the scanner spot
    n = rng.standard_normal((rows, cols), dtype=np.float32)
    if nblur:  # CsI: correlated noise, same SD
        n = ndimage.gaussian_filter(n, nblur)
        n *= np.float32(1.0 / (n.std() + 1e-9))
    img += n * np.float32(sd) * (0.6 + 0.8 * img)
    np.clip(img, 0.02 if not film else air, TISSUE_MAX, out=img)
    img[~mask] = np.float32(air) + n[~mask] * np.float32(sd * 0.3)
    np.clip(img, 0.0, TISSUE_MAX, out=img)
    nipple = (int((cy - oy) * zoom), int((a - ox) * zoom))
    return Breast(image=img, mask=mask, r=r_full, nipple=nipple, density=density)


def _draw_calcifications(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, px_per_mm: float) -> None:
    """A few benign punctate calcifications (bright dots < 0.5 mm, below saturation); bigger on magnified views."""
    n = int(rng.integers(0, 12))
    if n == 0:
        return
    step = max(1, min(mask.shape) // 64)
    inside = np.flatnonzero(mask[::step, ::step])
    if inside.size == 0:
        return
    wc = mask[::step, ::step].shape[1]
    for k in rng.choice(inside, size=n):
        y, x = (k // wc) * step, (k % wc) * step
        rad = max(0.8, rng.uniform(0.12, 0.3) * px_per_mm)
        h = int(np.ceil(rad)) + 1
        yy, xx = np.ogrid[-h : h + 1, -h : h + 1]
        dot = np.clip(rad + 0.5 - np.sqrt(yy**2 + xx**2), 0, 1).astype(np.float32) * np.float32(0.22)
        y0, y1, x0, x1 = max(y - h, 0), min(y + h + 1, img.shape[0]), max(x - h, 0), min(x + h + 1, img.shape[1])
        img[y0:y1, x0:x1] += dot[y0 - (y - h) : y1 - (y - h), x0 - (x - h) : x1 - (x - h)]
