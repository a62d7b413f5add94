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
3. **Fat lobules and Cooper's ligaments.** Two layers of Voronoi cells (the borders of adipose compartments
   are the ligaments: Bakic 2011, OpenVCT) in nipple-centred polar coordinates, so the cells are elongated
   along the radius and their borders fan out from the nipple (structure points to the nipple: PMC3189972).
   The ridges are drawn as continuous lines carrying the projected amount of a 0.3-0.6 mm wide ligament
   (§1.3 "cheap 2-D approximation"; VICTRE ligament thickness 0.1 mm), before the vendor processing, so it
   gives them the light/dark overshoot of §2. Cells are 8-14 and 16-26 mm (VICTRE fat lobule axes 20-30 mm),
   borders warped and faded at random (†).
4. **Vessels and ducts.** Long curved vessels from the chest wall (root radius 0.75 mm, VICTRE) and ducts
   converging on the nipple (root radius 0.5 mm, VICTRE), drawn as lines on the work grid.
5. **Projection through a compressed breast.** Compressed thickness T ~ N(59, 16) mm (Yaffe 2009); the margin
   is a half-cylinder of radius T/2 (§2 step 1), so the path through tissue falls to zero at the skin line and
   the path through the 0.75-1.5 mm skin (VICTRE skin 0.75 mm) peaks there: the bright skin line of real images.
6. **Vendor processing (§2).** Peripheral (thickness) equalization divides by the smoothed path length
   (k = 0.7-1.0 of full equalization, §2 step 2), multiscale enhancement as §2 step 3 writes it
   (s += sum g_i (G_sigma_i - G_sigma_i+1) s, g = 1.5-3 for the bands of sigma 0.5, 1, 2 mm, so their gain is
   1 + g; finer detail gets the 0.5 mm band's gain; the coarsest band compressed to 0.6-0.9) adds overshoot at
   every edge, and a per-vendor tone curve with a sigmoid toe maps to display values (§2 step 4).
   Digitized film (`film=True`) skips equalization and edge enhancement, uses Burgess's film beta (mean 2.8)
   and replaces the tone curve by film physics (`film_display`: attenuation, exposure control, the film's
   characteristic curve), so its air is the darkest gray; the film's edge, dust and the scanner are drawn by
   `film.digitize` after the objects (metal leaves film at base + fog: `Breast.film_dmin`).
7. **Quantum noise**, white for a-Se detectors and blurred for CsI (GE; Borges 2019), with variance rising
   with the signal (affine variance), scaled to the pixel size so that a `--scale` < 1 image looks like an
   area-averaged full-size one.

Intensities are display values in [0, 1] (1 = white); tissue stays below TISSUE_MAX. Everything but the noise
and the calcifications is computed on a work grid of about WORK_MM (0.4 mm: the texture is band-limited there,
the power-law spectrum pre-emphasised against the bilinear upsampling) and upsampled once; the multiscale
enhancement is one FFT filter whose Gaussian transfer functions are cached per grid (so per vendor profile),
and the power-law fields are drawn directly in the Fourier domain. About 0.15 CPU-s for a 1024 x 832 image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import Voronoi, cKDTree

TISSUE_MAX = 0.93
BACKGROUND = 0.0
WORK_MM = 0.4  # anatomy sampling of the smooth fields (mm): Nyquist 1.25 cycles/mm, above the 0.2-1 cycles/mm beta
# band (the bilinear upsampling's damping is pre-compensated in power_law_field); finer pixels get thin lines,
# ligaments and noise at full size
ENHANCE_SIGMAS_MM = (0.5, 1.0, 2.0, 4.0, 8.0)  # Gaussians of the multiscale enhancement (realism.md §2 step 3)
DENSITY_SHARE = {"a": (0.03, 0.12), "b": (0.12, 0.3), "c": (0.3, 0.55), "d": (0.55, 0.8)}  # dense area (†)
DENSITY_P = {"a": 0.1, "b": 0.4, "c": 0.4, "d": 0.1}  # BI-RADS 5th ed. population shares
# per-vendor tone (gamma, display of fat, display of dense gland) and noise blur (px): † (§2 step 4)
TONES: dict[str, tuple[float, float, float, float]] = {
    "H": (1.0, 0.10, 0.68, 0.0),  # Hologic: sigmoid baked into the pixels, one window
    "GE": (0.9, 0.12, 0.66, 0.7),  # GE: CsI, correlated noise (Borges 2019)
    "SIE": (1.1, 0.09, 0.70, 0.0),
    "FUJ": (0.95, 0.11, 0.66, 0.0),
    "PHI": (1.05, 0.08, 0.64, 0.0),  # photon counting: low noise
    "FILM": (1.3, 0.15, 0.70, 0.6),  # digitized film: only the noise blur is used (film_display draws the tones)
}
ENVELOPE_WEIGHT = 1.6  # gland gathers behind the nipple: weight of the central envelope against the field (†)
GLAND_SOFTNESS = 0.45  # sigmoid width of the dense/fat threshold, in field SDs (†)
GLAND_TEXTURE = 0.35  # share of the gland's density modulated by a second field of the image's beta: fluffy look (†)
LIGAMENT_CONTRAST = 0.15  # ligament contrast after processing, per unit of the fine bands' gain (†, see README)
NOISE_70UM = 0.045  # display SD of one 70-um pixel (†: no published figure; set after comparing, see README)


@dataclass
class Breast:
    """The drawn anatomy and the geometry later layers need (markers on the skin, clips inside)."""

    image: np.ndarray  # float32 display values, rows x cols
    mask: np.ndarray  # bool, inside the breast
    r: np.ndarray  # float32 normalised elliptic radius (1 = skin)
    nipple: tuple[int, int]  # (row, col), may lie outside the frame on mag views
    density: str = "b"  # BI-RADS category a-d
    film_dmin: float = 0.0  # digitized film: base + fog (OD), the density of unexposed film (film.digitize)


def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 field to `shape` (rows, cols)."""
    if a.shape == tuple(shape):
        return a.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.BILINEAR))


_AREA: dict[tuple[int, int], object] = {}  # per (n_in, n_out): sparse area-of-bilinear resampling matrix


def _area_matrix(n_in: int, n_out: int):
    """(n_out, n_in) sparse matrix: the mean of the 1-D bilinear interpolant of n_in samples over each of n_out
    equal output pixels (PIL's pixel-centre convention, edge samples held), from 16 sub-samples per pixel; cached.
    """
    key = (n_in, n_out)
    hit = _AREA.get(key)
    if hit is None:
        from scipy import sparse

        m = 16
        x = (np.arange(n_out)[:, None] + (np.arange(m)[None, :] + 0.5) / m) * (n_in / n_out) - 0.5
        x = np.clip(x, 0.0, n_in - 1.0)
        i0 = np.minimum(np.floor(x).astype(np.intp), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        t = x - i0
        rows = np.repeat(np.arange(n_out), m)
        data = np.concatenate([(1 - t).ravel(), t.ravel()]) / m
        hit = sparse.csr_matrix(
            (data, (np.concatenate([rows, rows]), np.concatenate([i0.ravel(), i1.ravel()]))), shape=(n_out, n_in)
        ).astype(np.float32)
        if len(_AREA) > 64:
            _AREA.clear()
        _AREA[key] = hit
    return hit


def area_upsample(a: np.ndarray, shape: tuple[int, int], step: float) -> np.ndarray:
    """`a` on the grid of `shape` as a full-size image area-averaged to that grid would show it.

    The full-size image is `a` upsampled bilinearly by a large factor; area-averaging it back over an output pixel
    of 1 / `step` work pixels (step < 2: --scale 0.25 of most detectors) gives the mean of the bilinear interpolant
    over the pixel, not its value at the pixel's centre (plain bilinear resizing leaves the output samples that
    fall on work-grid samples unsmoothed and smooths those between them: a periodic pattern that adds fine
    texture). Below step 2 that mean is taken exactly (one sparse matrix per axis; at step 1 it is the
    [1/8, 3/4, 1/8] kernel); at step >= 2 plain bilinear resizing is close enough.
    """
    if step >= 2.0:
        return upsample(a, shape)
    my, mx = _area_matrix(a.shape[0], shape[0]), _area_matrix(a.shape[1], shape[1])
    return np.ascontiguousarray((mx @ (my @ a).T).T, dtype=np.float32)


def _fast_shape(shape: tuple[int, int], pad: int = 0) -> tuple[int, int]:
    """An FFT-friendly shape at least `pad` pixels larger than `shape` in each dimension."""
    return (scipy.fft.next_fast_len(shape[0] + pad, real=True), scipy.fft.next_fast_len(shape[1] + pad, real=True))


_SPECTRA: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # per (fft shape, pixel, stretch, interp): see _spectrum_grid


def _spectrum_grid(
    shape: tuple[int, int], px_mm: float, stretch: float, interp_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """(-0.5 * ln f, ln of the bilinear-interpolation pre-emphasis) on the rfft2 grid of `shape`, cached.

    f is the radial frequency in cycles/mm with x scaled by `stretch` and clipped at 1/FOV. When the field is
    later upsampled bilinearly from `interp_mm` pixels, its spectrum is damped by sinc^2(f_x d) sinc^2(f_y d)
    (the triangle kernel); the pre-emphasis is the inverse (capped at x4 in amplitude), so the texture keeps its
    power law up to the work grid's Nyquist frequency. All grids of one vendor profile share an entry.
    """
    key = (shape, round(px_mm, 6), round(stretch, 4), round(interp_mm, 6))
    hit = _SPECTRA.get(key)
    if hit is not None:
        return hit
    h, w = shape
    fy = np.fft.fftfreq(h, d=px_mm)[:, None]
    fx = np.fft.rfftfreq(w, d=px_mm)[None, :]
    f = np.maximum(np.sqrt((fx * stretch) ** 2 + fy**2), 1.0 / (max(h, w) * px_mm))
    half_log_f = (-0.5 * np.log(f)).astype(np.float32)
    emph = np.zeros((1, 1), np.float32)
    if interp_mm > 0:
        damp = (np.sinc(fy * interp_mm) * np.sinc(fx * interp_mm)) ** 2
        emph = np.minimum(-np.log(np.maximum(damp, 1e-6)), np.log(4.0)).astype(np.float32)
    if len(_SPECTRA) > 64:
        _SPECTRA.clear()
    _SPECTRA[key] = (half_log_f, emph)
    return half_log_f, emph


def power_law_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    px_mm: float,
    beta: float,
    stretch: float = 1.3,
    interp_mm: float = 0.0,
) -> np.ndarray:
    """Unit-SD Gaussian field with power spectrum ~ 1/f^beta (f in cycles/mm, clipped at 1/FOV); float32.

    `stretch` > 1 elongates structures along the columns (chest wall -> nipple): the spectrum is evaluated at
    (fx * stretch, fy), so it falls faster along x (§1.1 step 3). The white noise is drawn directly in the
    Fourier domain (one inverse FFT, no forward one) on an FFT-friendly grid and cropped. `interp_mm` > 0:
    pre-emphasise for a later bilinear upsampling from pixels of that size (`_spectrum_grid`).
    """
    fshape = _fast_shape(shape)
    half_log_f, emph = _spectrum_grid(fshape, px_mm, stretch, interp_mm)
    amp = np.exp(half_log_f * np.float32(beta) + emph)
    amp[0, 0] = 0
    white = rng.standard_normal((*amp.shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    out = scipy.fft.irfft2(white * amp, s=fshape, workers=1)[: shape[0], : shape[1]]
    out = out - np.float32(out.mean(dtype=np.float64))  # float32 scalars: a float64 one would promote the array
    out *= np.float32(1.0 / (float(out.std(dtype=np.float64)) + 1e-12))
    return out


_BANDS: dict[tuple, np.ndarray] = {}  # per (fft shape, pixel): Gaussian transfer functions of ENHANCE_SIGMAS_MM


def _gauss_transfer(shape: tuple[int, int], px_mm: float) -> np.ndarray:
    """(len(ENHANCE_SIGMAS_MM), h, w//2+1) float32: exp(-2 pi^2 sigma^2 f^2) of each band's Gaussian, cached."""
    key = (shape, round(px_mm, 6))
    hit = _BANDS.get(key)
    if hit is None:
        f2 = np.fft.fftfreq(shape[0], d=px_mm)[:, None] ** 2 + np.fft.rfftfreq(shape[1], d=px_mm)[None, :] ** 2
        hit = np.stack([np.exp(-2 * np.pi**2 * s**2 * f2) for s in ENHANCE_SIGMAS_MM]).astype(np.float32)
        if len(_BANDS) > 32:
            _BANDS.clear()
        _BANDS[key] = hit
    return hit


def multiscale_enhance(eq: np.ndarray, px_mm: float, gains: tuple[float, ...], coarse: float, mean: float):
    """Vendor multiscale enhancement (§2 step 3) in one FFT pass; returns float32 of eq's shape.

    Bands are differences of Gaussians of ENHANCE_SIGMAS_MM (the finest band is eq minus the first Gaussian);
    band i is multiplied by gains[i] and what is coarser than the last Gaussian is compressed around `mean` by
    `coarse` (< 1). The sum of bands is linear, so its transfer function is
    H = g0 + sum_i (g_i - g_{i-1}) G_i + (coarse - g_last) G_last, applied once in the Fourier domain of a
    reflect-padded copy (reflection stands in for the Gaussian filters' border handling).
    """
    pad = int(np.ceil(2 * ENHANCE_SIGMAS_MM[-1] / px_mm))
    fshape = _fast_shape(eq.shape, 2 * pad)
    padded = np.pad(
        eq - np.float32(mean),
        ((pad, fshape[0] - eq.shape[0] - pad), (pad, fshape[1] - eq.shape[1] - pad)),
        mode="reflect",
    )
    g = _gauss_transfer(fshape, px_mm)
    h = np.full(g.shape[1:], np.float32(gains[0]), dtype=np.float32)
    for i in range(1, len(gains)):
        h += np.float32(gains[i] - gains[i - 1]) * g[i - 1]
    h += np.float32(coarse - gains[-1]) * g[-1]
    spec = scipy.fft.rfft2(padded, workers=1)
    spec *= h
    out = scipy.fft.irfft2(spec, s=fshape, workers=1)[pad : pad + eq.shape[0], pad : pad + eq.shape[1]]
    return (out + np.float32(mean)).astype(np.float32, copy=False)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-SD Gaussian-filtered white noise (float32): a smooth random field on a small grid."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px, mode="wrap")
    return f * np.float32(1.0 / (f.std() + 1e-9))


class _Frame:
    """Where anatomy lies on the work grid: contact-view pixels <-> work-grid pixels, and mm."""

    def __init__(self, ox: float, oy: float, zoom: float, sx: float, sy: float, spacing_mm: float):
        self.ox, self.oy, self.zoom, self.sx, self.sy, self.spacing_mm = ox, oy, zoom, sx, sy, spacing_mm

    def to_work(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contact-view pixel coordinates -> work-grid pixel coordinates (PIL's: pixel j spans j-0.5..j+0.5)."""
        return (x - self.ox) * (self.zoom / self.sx) - 0.5, (y - self.oy) * (self.zoom / self.sy) - 0.5


class NipplePolar:
    """Coordinates in which Cooper's ligaments converge on the nipple (realism.md §1.1: structure points to it).

    (p, q) = (rho / stretch, theta * rho_m): rho is the distance from the nipple (mm), theta the angle from the
    direction of the chest wall. Voronoi cells of uniform seeds in (p, q) are elongated along rho by `stretch`
    and narrow towards the nipple (an arc of theta * rho shrinks with rho), so their borders fan out from it.
    """

    def __init__(self, nipple_mm: tuple[float, float], rho_m: float, stretch: float):
        self.nx, self.ny, self.rho_m, self.stretch = nipple_mm[0], nipple_mm[1], max(rho_m, 1.0), stretch

    def to_pq(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = self.nx - x, y - self.ny
        return np.column_stack([np.hypot(dx, dy).ravel() / self.stretch, np.arctan2(dy, dx).ravel() * self.rho_m])

    def to_xy(self, p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rho, theta = p * self.stretch, q / self.rho_m
        return self.nx - rho * np.cos(theta), self.ny + rho * np.sin(theta)


def voronoi_ligaments(
    rng: np.random.Generator,
    frame: _Frame,
    polar: NipplePolar,
    rho_max: float,
    cell_mm: float,
    value: float,
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[list[tuple[np.ndarray, float]], cKDTree, Callable]:
    """The borders of one layer of adipose compartments (Cooper's ligaments), as polylines on the work grid.

    Seeds are uniform in `polar`'s (p, q) space out to `rho_max` mm from the nipple, with mean spacing
    `cell_mm`. Each Voronoi ridge is cut into four pieces, mapped back to the image (curving) and displaced by a
    smooth random warp (0.4 of a cell, †), and drawn with `value` times a smooth random visibility (real
    ligaments fade in and out). Returns the polylines ((k, 2) work-grid points, value), the seeds' tree and the
    warp, so `border_distance` can shade the lobules consistently.
    """
    p1 = rho_max / polar.stretch + cell_mm
    q1 = (np.pi / 2 + 0.35) * polar.rho_m + cell_mm
    n = max(4, int(p1 * 2 * q1 / cell_mm**2))
    p0 = 0.3 * polar.rho_m / polar.stretch  # no seeds right at the nipple: the first cells reach into it
    seeds = np.column_stack([rng.uniform(p0, p1, n), rng.uniform(-q1, q1, n)])
    # smooth warp and visibility on an image-space grid of half a cell around the nipple
    g = cell_mm / 2
    x0, y0 = polar.nx - rho_max - cell_mm, polar.ny - rho_max - cell_mm
    gshape = (int(2 * (rho_max + cell_mm) / g) + 2, int((rho_max + 2 * cell_mm) / g) + 2)
    warp = np.stack([_smooth_noise(rng, gshape, 1.2) for _ in range(2)]) * np.float32(0.4 * cell_mm)
    show = np.clip(_smooth_noise(rng, gshape, 1.5) * 0.8 + 0.6, 0, 1)

    def warp_at(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coords = np.stack([(y - y0) / g, (x - x0) / g])
        return tuple(ndimage.map_coordinates(w, coords, order=1, mode="nearest") for w in warp)  # type: ignore[return-value]

    vor = Voronoi(seeds)
    ridges = np.array([rv for rv in vor.ridge_vertices if rv[0] >= 0 and rv[1] >= 0], dtype=np.intp).reshape(-1, 2)
    lines: list[tuple[np.ndarray, float]] = []
    if len(ridges):
        t = np.linspace(0.0, 1.0, 5)[None, :, None]
        v = vor.vertices
        pq = v[ridges[:, 0]][:, None, :] * (1 - t) + v[ridges[:, 1]][:, None, :] * t  # (m, 5, 2)
        pq = pq[(np.abs(pq[:, 0] - pq[:, -1]).max(axis=1) < 4 * cell_mm) & (pq[..., 0].min(axis=1) >= 0)]
        xs, ys = polar.to_xy(pq[..., 0], pq[..., 1])
        keep = inside(xs[:, 2], ys[:, 2])
        xs, ys = xs[keep], ys[keep]
        if len(xs):
            # a pixel p lies on a warped border when p + warp(p) lies on the straight one: move points by -warp
            wx, wy = warp_at(xs.ravel(), ys.ravel())
            xs, ys = xs - wx.reshape(xs.shape), ys - wy.reshape(ys.shape)
            vis = ndimage.map_coordinates(show, np.stack([(ys[:, 2] - y0) / g, (xs[:, 2] - x0) / g]), order=1)
            wx_, wy_ = frame.to_work(xs / frame.spacing_mm, ys / frame.spacing_mm)
            for k in np.flatnonzero(vis > 0.05):
                lines.append((np.column_stack([wx_[k], wy_[k]]), float(value * vis[k])))
    return lines, cKDTree(seeds), warp_at


def border_distance(tree: cKDTree, polar: NipplePolar, warp_at: Callable, xmm: np.ndarray, ymm: np.ndarray):
    """Half the gap between the nearest and second-nearest seed (in (p, q) mm) at warped points: 0 on a ligament."""
    wx, wy = warp_at(xmm.ravel(), ymm.ravel())
    d, _ = tree.query(polar.to_pq(xmm.ravel() + wx, ymm.ravel() + wy), k=2)
    return ((d[:, 1] - d[:, 0]) / 2).reshape(xmm.shape).astype(np.float32)


def _curve(rng: np.random.Generator, start: np.ndarray, direction: float, length: float, steps: int, wiggle: float):
    """A gently curved polyline (points in contact-view pixels) from `start` heading `direction` (radians)."""
    pts = [start]
    ang = direction
    step = length / steps
    for _ in range(steps):
        ang += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.array([np.cos(ang), np.sin(ang)]))
    return np.array(pts)


def _draw_lines(shape: tuple[int, int], lines: list[tuple[np.ndarray, float, int]]) -> np.ndarray:
    """Polylines ((k, 2) work-grid points (x, y), value, width in pixels) on a float32 canvas of `shape`."""
    canvas = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(canvas)
    for pts, value, width in lines:
        draw.line(
            pts.ravel().tolist(), fill=float(value), width=max(1, int(width)), joint="curve" if width > 2 else None
        )
    return np.asarray(canvas, dtype=np.float32)


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
    # work grid: about WORK_MM per pixel (the output grid itself when its pixels are as coarse: --scale 0.25 of a
    # 0.1 mm detector); output pixels between WORK_MM / 2 and WORK_MM are area-averaged (area_upsample)
    step = WORK_MM / mm_px if mm_px < WORK_MM else 1.0
    hw, ww = max(8, round(rows / step)), max(8, round(cols / step))
    sy, sx = rows / hw, cols / ww  # output pixels per work pixel along each axis
    wmm = mm_px * (sy + sx) / 2  # anatomy mm per work pixel
    # fields are upsampled bilinearly from wmm pixels: pre-emphasise. Also when the output grid is itself the work
    # grid (pixels >= WORK_MM / 1.2, e.g. --scale 0.25 of a 0.085-0.1 mm detector): area_upsample then damps it as
    # area-averaging the full-size image would, so every scale shows the full-size image area-averaged
    interp = wmm
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
    frame = _Frame(ox, oy, zoom, sx, sy, spacing_mm)

    # 1. shape: anatomy coordinates (contact-view pixels) of the work grid, as a column and a row
    Y = ((np.arange(hw, dtype=np.float32) + 0.5) * np.float32(sy / zoom) + np.float32(oy))[:, None]
    X = ((np.arange(ww, dtype=np.float32) + 0.5) * np.float32(sx / zoom) + np.float32(ox))[None, :]
    wobble = upsample(_smooth_noise(rng, (24, 24), 2.0), (hw, ww))
    xa = X / np.float32(a)
    if mlo:
        bb = np.where(cy > Y, b * (1 + 0.7 * np.clip(1 - xa, 0, 1)), np.float32(b)).astype(np.float32)
        r = np.sqrt(xa**2 + ((Y - np.float32(cy)) / bb) ** 2)
    else:
        r = np.sqrt(xa**2 + ((Y - np.float32(cy)) / np.float32(b)) ** 2)
    r *= 1 + np.float32(0.02) * wobble
    mask_w = r < 1.0
    # distance from the skin line in anatomy mm; the frame's edges (chest wall, mag field) are not skin
    ds = max(1, round(1.0 / wmm))  # a 1-mm grid is plenty for a distance in millimetres
    coarse = np.pad(mask_w[::ds, ::ds], 1, mode="edge")
    depth = upsample(ndimage.distance_transform_edt(coarse)[1:-1, 1:-1].astype(np.float32) * (wmm * ds), (hw, ww))
    depth = np.where(mask_w, np.maximum(depth, np.float32(0.5 * wmm)), np.float32(0.0))

    # 2. fibroglandular tissue: power-law field under a central envelope, thresholded to the density category
    beta = float(np.clip(rng.normal(2.8 if film else 3.2, 0.25), 2.3 if film else 2.6, 3.8)) + (0.1 * mlo)
    field = power_law_field(rng, (hw, ww), wmm, beta, interp_mm=interp)
    envelope = np.exp(-(((xa - 0.35) / 0.5) ** 2)) * np.exp(-(((Y - np.float32(cy)) / np.float32(0.8 * b)) ** 2))
    density = str(rng.choice(list(DENSITY_P), p=list(DENSITY_P.values())))
    share = rng.uniform(*DENSITY_SHARE[density])
    g = field + np.float32(ENVELOPE_WEIGHT) * envelope
    sub = mask_w[::2, ::2]
    thr = float(np.quantile(g[::2, ::2][sub] if sub.any() else g.ravel(), 1 - share))
    gland = np.float32(1) / (1 + np.exp((g - np.float32(thr)) * np.float32(-1 / GLAND_SOFTNESS)))
    fine = power_law_field(rng, (hw, ww), wmm, beta, interp_mm=interp)  # texture in the gland and the fat (one beta
    # per image, as Chen et al. measure one per image)

    # 3. fat lobules and Cooper's ligaments: borders of two layers of Voronoi cells fanning out from the nipple
    a_mm, b_mm, cy_mm = a * spacing_mm, 1.3 * b * spacing_mm, cy * spacing_mm
    rho_max = float(np.hypot(a_mm, max(cy_mm, rows * spacing_mm - cy_mm)))

    def in_breast(xm: np.ndarray, ym: np.ndarray) -> np.ndarray:
        return ((xm / a_mm) ** 2 + ((ym - cy_mm) / b_mm) ** 2 < 1.1) & (xm > ox * spacing_mm - 5)

    lw = rng.uniform(0.2, 0.36)  # exp(-(e/lw)^2): full width 0.3-0.6 mm, i.e. 2w with w = 0.2-0.3 mm (§1.3)
    # a 1-px line on the work grid carries the same projected amount as the exp profile: value x wmm = sqrt(pi) lw
    # the lines are drawn before the vendor processing, whose fine-band gain 1 + g (mean 3.25) now acts on them;
    # before, 0.15 x g (g mean 2.25) was added after it: 0.15 x 2.25 / 3.25 keeps their contrast (film: 0.1, no gain)
    lig_value = (0.1 if film else LIGAMENT_CONTRAST * 2.25 / 3.25) * np.sqrt(np.pi) * lw / wmm
    layers = []
    lig_lines: list[tuple[np.ndarray, float, int]] = []
    for cell, stretch, weight in ((rng.uniform(8, 14), 1.8, 1.0), (rng.uniform(16, 26), 1.4, 1.3)):
        polar = NipplePolar((a_mm, cy_mm), 0.7 * a_mm, stretch)
        lines_k, tree, warp_at = voronoi_ligaments(rng, frame, polar, rho_max, cell, lig_value * weight, in_breast)
        lig_lines += [(p, v, 1) for p, v in lines_k]
        layers.append((tree, polar, warp_at))
    # 4. vessels from the chest wall, ducts to the nipple (contact-view pixels)
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        start = np.array([0.0, cy + rng.uniform(-0.8, 0.6) * b])
        lines.append((_curve(rng, start, rng.normal(0, 0.25), a * rng.uniform(0.5, 1), 30, 0.08), 1.0, 1.5))
    nipple_c = np.array([a, cy])
    for _ in range(int(rng.integers(4, 9))):
        lines.append((_curve(rng, nipple_c, np.pi + rng.normal(0, 0.45), a * 0.5, 15, 0.1), 0.7, 1.0))
    work_lines = []
    for pts, value, width_mm in lines:
        px, py = frame.to_work(pts[:, 0], pts[:, 1])
        work_lines.append((np.column_stack([px, py]), value, max(1, round(width_mm / wmm))))
    linear = ndimage.gaussian_filter(_draw_lines((hw, ww), work_lines), 0.7 * 0.25 / wmm)

    # 5. projection: path through tissue and through the skin shell of a half-cylinder margin of radius T/2
    T = float(np.clip(rng.normal(59, 16), 25, 95))
    R = np.float32(T / 2)
    skin = np.float32(rng.uniform(0.75, 1.5))
    d = np.minimum(depth, R)
    total = 2 * np.sqrt(np.clip(2 * R * d - d**2, 0, None))
    inner = 2 * np.sqrt(np.clip((R - skin) ** 2 - (R - d) ** 2, 0, None))
    tissue_path, skin_path = inner, np.clip(total - inner, 0, None)

    # tissue "density" (dense-equivalent share) on the work grid
    dens = 0.12 + 0.62 * gland * (1 - GLAND_TEXTURE + GLAND_TEXTURE * np.tanh(fine)) + 0.12 * linear * (1 - 0.5 * gland)
    dens += np.float32(0.04) * fine * (1 - gland)
    signal = tissue_path * dens + skin_path * np.float32(0.7)
    if mlo:
        px, py = rng.uniform(0.25, 0.45) * cols, rng.uniform(0.45, 0.75) * rows
        pect = np.clip(
            (1 - (np.clip(X / np.float32(px), 0, None) ** 1.15 + np.clip(Y / np.float32(py), 0, None))) * 4, 0, 1
        )
        signal += pect * total * (np.float32(0.27) + np.float32(0.015) * wobble)

    # 6. vendor processing: peripheral equalization (divide by the smoothed path) ...
    if film:
        eq = signal / np.float32(T)
    else:
        k = rng.uniform(0.7, 1.0)
        path = ndimage.gaussian_filter(np.maximum(total, np.float32(0.5)), max(0.5, 1.0 / wmm))
        eq = signal / (np.float32(T ** (1 - k)) * np.maximum(path, np.float32(0.05 * T)) ** np.float32(k))
    # fat lobule: a shallow dome, darkest in the cell's middle (smooth: a 2.5-mm grid is plenty)
    tree, polar, warp_at = layers[0]
    gy = max(2, round(2.5 / wmm))
    xm = (X[:, ::gy] * spacing_mm).astype(np.float64)
    ym = (Y[::gy, :] * spacing_mm).astype(np.float64)
    xm, ym = np.broadcast_arrays(xm, ym)
    dome = upsample(np.clip(border_distance(tree, polar, warp_at, xm, ym) / 3.0, 0, 1), (hw, ww))
    eq -= np.float32(0.05) * dome * (1 - gland)
    # thin ligaments (fewer in dense tissue, fading into the skin line), anti-aliased by half a pixel
    vis = np.clip(depth * np.float32(1 / 3.0), 0, 1) * (1 - np.float32(0.5) * gland)
    eq += ndimage.gaussian_filter(_draw_lines((hw, ww), lig_lines), 0.5) * vis
    # ... then multiscale enhancement (§2 step 3): bands between Gaussians of 0.5, 1, 2, 4, 8 mm, gains 1.5-3
    # for the bands finer than 2 mm, 1 for the 2-8 mm bands, and the coarsest band compressed (gain < 1)
    if not film:
        eq = np.where(mask_w, eq, np.float32(eq[mask_w].mean()) if mask_w.any() else np.float32(0.0))
        # s += sum_i g_i (G_sigma_i - G_sigma_i+1) s: the bands of sigma 0.5, 1 and 2 mm get 1 + g, g = 1.5-3,
        # and so does what is finer than 0.5 mm (the 0.5 mm band's gain); the 4-8 mm band keeps gain 1
        g_ = [1.0 + float(v) for v in rng.uniform(1.5, 3.0, 3)]
        gains = (g_[0], *g_, 1.0)
        mean = float(eq[mask_w].mean()) if mask_w.any() else 0.0
        eq = multiscale_enhance(eq.astype(np.float32), wmm, gains, float(rng.uniform(0.6, 0.9)), mean)
    # ... and the tone curve: fat -> f0, dense gland -> g0
    gamma, f0, g0, nblur = TONES.get(vendor, TONES["H"]) if not film else TONES["FILM"]
    if film:  # exposure -> film density -> scanner: the film's own characteristic curve, no vendor tone curve
        tone, air, dmin = film_display(rng, eq * np.float32(T), tissue_path, skin_path, mask_w)
    else:
        x = (eq - np.float32(0.12)) * np.float32(1 / 0.62)  # 0 = fat, 1 = dense
        if gamma != 1.0:
            x = np.where(x > 0, np.abs(x) ** np.float32(gamma), x)
        tone = np.float32(f0) + np.float32(g0 - f0) * x
        # below fat (the enhancement's dark overshoots) the curve has the toe of a sigmoid (§2 step 4: vendors bake
        # a sigmoid into the pixels): f0 + f0 tanh(slope x / f0) meets the line at fat with the same slope and
        # flattens towards black instead of clipping at it
        toe = np.float32(f0) * (1 + np.tanh(np.float32((g0 - f0) / f0) * x))
        tone = np.where(x < 0, toe, tone)
        air, dmin = BACKGROUND, 0.0
    full = (rows, cols)
    img = area_upsample(tone.astype(np.float32), full, step)
    r_full = upsample(r.astype(np.float32), full)
    mask = r_full < 1.0
    img[~mask] = np.float32(air)
    _draw_calcifications(rng, img, mask, 1.0 / mm_px)

    # 7. quantum noise, scaled to the pixel size (a coarser pixel averages more quanta)
    sd = noise * 0.07 / spacing_mm * (0.1 if film else 1.0)  # film: fine grain, averaged by the scanner spot
    n = rng.standard_normal((rows, cols), dtype=np.float32)
    if nblur:  # CsI: correlated noise, same SD
        n = ndimage.gaussian_filter(n, nblur)
        n *= np.float32(1.0 / (n.std() + 1e-9))
    gain = img * np.float32(0.8 * sd)  # affine variance: SD sd x (0.6 + 0.8 img), in place to spare copies
    gain += np.float32(0.6 * sd)
    gain *= n
    img += gain
    np.clip(img, 0.02 if not film else air, TISSUE_MAX, out=img)
    n *= np.float32(sd * 0.3)  # the air: faint noise around its gray
    n += np.float32(air)
    np.copyto(img, n, where=~mask)
    np.clip(img, 0.0, TISSUE_MAX, out=img)
    nipple = (int((cy - oy) * zoom), int((a - ox) * zoom))
    return Breast(image=img, mask=mask, r=r_full, nipple=nipple, density=density, film_dmin=dmin)


# Digitized screen film (film=True). Sources are outside realism.md (which gives only the film beta): see README.
MU_FAT_MM, MU_GLAND_MM = 0.0456, 0.0802  # linear attenuation at 20 keV, 1/mm (Johns & Yaffe, PMB 1987)
FILM_GRADIENT = (3.77, 4.38)  # average gradient, net OD 0.25-2.0: Kodak Min-R 2000, Fuji AD-M (Young, BJR 2001)
FILM_DMIN = (0.18, 0.25)  # base + fog (†; regulators allow up to 0.25-0.30: Dickerson, Carestream)
FILM_DMAX = 4.0  # maximum density of mammography film (†; medical film 3-5)
FILM_TARGET_OD = (1.3, 1.9)  # AEC: the breast's median density (†; screening ODs peak at the AEC target)
# volumetric gland per unit of dense area: the population means, 19 % volumetric (Yaffe 2009, realism.md §1.3) over
# the 33 % dense area that DENSITY_SHARE and DENSITY_P give on average
FILM_VOLUME_PER_AREA = 0.19 / sum(DENSITY_P[k] * sum(DENSITY_SHARE[k]) / 2 for k in DENSITY_P)
FILM_SPR_NO_GRID = (0.40, 0.85)  # scatter / primary without a grid, clinical fields and thicknesses (Barnes 1978)
GRID_TRANSMISSION = (0.73, 0.13)  # primary, scatter transmission of a mammography grid (Xia, Lo & Floyd, SPIE 2005)
# the DDSM scanners' linear map (DDSM calibration notes): pixel = SCANNER_FULL_SCALE - SCANNER_PER_OD x OD, display =
# pixel / SCANNER_FULL_SCALE (film.py adds the scanner's floor, flare and noise on top)
SCANNER_FULL_SCALE, SCANNER_PER_OD = 4095.0, 1000.0
OD_PER_DISPLAY = SCANNER_FULL_SCALE / SCANNER_PER_OD  # OD = OD_PER_DISPLAY x (1 - display)


def film_display(
    rng: np.random.Generator, dense_path: np.ndarray, tissue_path: np.ndarray, skin_path: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """(display image, air display, base + fog OD) of a screen-film mammogram before the scanner's floor.

    `dense_path` is the breast's dense-equivalent path (mm; the generator's `signal`: 0.12 per mm of fat, 0.74
    per mm of gland, 0.7 per mm of skin), `tissue_path` / `skin_path` the paths through tissue and skin (mm).
    The generator's gland share is an area share (BI-RADS dense area); film blackening depends on the volume of
    gland along the ray, so the gland path is scaled by FILM_VOLUME_PER_AREA. Attenuation A = mu_fat tissue +
    (mu_gland - mu_fat) gland + mu_gland skin; grid-filtered scatter adds a uniform exposure; the exposure is set
    (automatic exposure control) so the breast's median density is FILM_TARGET_OD; density follows a logistic
    characteristic curve in log exposure (the "logit" film model: de Almeida, Sobol & Barnes, Med Phys 1999) from
    base + fog to FILM_DMAX with the average gradient of mammography film; density maps linearly to gray as the
    DDSM scanner maps it (`film.to_display`), whose floor, flare and noise `film.digitize` adds once every object
    is drawn. The directly exposed air is the darkest gray, and only a breast's burned-out periphery gets as dark.
    """
    gland = (dense_path - np.float32(0.12) * tissue_path - np.float32(0.7) * skin_path) * np.float32(1 / 0.62)
    gland = np.clip(gland, 0, None) * np.float32(FILM_VOLUME_PER_AREA)
    attenuation = np.float32(MU_FAT_MM) * tissue_path + np.float32(MU_GLAND_MM - MU_FAT_MM) * gland
    attenuation += np.float32(MU_GLAND_MM) * skin_path
    primary = np.exp(-attenuation)  # exposure relative to the unattenuated beam
    # scatter: a uniform background (the constant-bias model) of SPR x the breast's mean primary, the SPR without a
    # grid times the grid's scatter / primary transmission
    spr = float(rng.uniform(*FILM_SPR_NO_GRID)) * GRID_TRANSMISSION[1] / GRID_TRANSMISSION[0]
    scatter = np.float32(spr * (float(primary[mask].mean()) if mask.any() else 1.0))
    log_e = np.log10(primary + scatter)
    dmin = float(rng.uniform(*FILM_DMIN))
    span = FILM_DMAX - dmin
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    slope = float(rng.uniform(*FILM_GRADIENT)) * (logit(2.0 / span) - logit(0.25 / span)) / 1.75
    target = float(rng.uniform(*FILM_TARGET_OD))
    u0 = logit((target - dmin) / span) / slope - float(np.median(log_e[mask])) if mask.any() else 0.0

    def to_display(le: np.ndarray) -> np.ndarray:
        od = np.float32(dmin) + np.float32(span) / (1 + np.exp(-np.float32(slope) * (le + np.float32(u0))))
        return (SCANNER_FULL_SCALE - SCANNER_PER_OD * od) * np.float32(1 / SCANNER_FULL_SCALE)

    air = np.full(1, np.log10(1 + scatter), np.float32)
    return to_display(log_e).astype(np.float32), float(to_display(air)[0]), dmin


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
