"""Fixed, untrained realism statistics of a mammogram's display image (pure functions, numpy + scipy only).

The same functions run on the synthetic drops and on the evaluation-only real images
(`../shared/realdata/`), so the two can be compared; nothing here is fitted to either. Research note:
`../shared/research/realism.md` §6.

Inputs are display images: float arrays in [0, 1] after the VOI step, white = dense (MONOCHROME1 already
inverted), as `mammo_pipeline.dicom.normalize` renders them. Statistics that depend on physical size take the
pixel spacing in mm and work on a common grid (`GRID_MM`), so images from detectors with different pixel
sizes (and synthetic images drawn at `--scale` < 1) are compared at the same sampling.

Statistics (one `ImageStats` per image):
- `beta`: tissue power-spectrum exponent (Chen et al., Med Phys 2012; recipe of SPIE 9412, 2015): 25.6 mm ROIs
  >= 15 mm inside the skin line, mean removed, 2-D Hann window, periodograms averaged, log-log least squares over
  every 2-D frequency sample in 0.2-1.0 cycles/mm (no radial binning), beta = -slope.
- `tophat_p99` / `tophat_p999`: percentiles of the 7-px white top-hat (the model's channel 1,
  `mammo_pipeline.model.preprocess.white_tophat`) of the uint8 256-px model rendition, in tissue (the breast
  mask eroded by `TISSUE_ERODE_PX` at 256 px, so the skin edge against air does not count).
- `hist_p05` / `hist_p50` / `hist_p95`: gray-level percentiles of the breast in the 256-px rendition (0..1).
- `skin_ratio`: mean gray 0.5-1.5 mm inside the skin line divided by the mean gray 9-11 mm inside
  (peripheral equalization lifts it towards 1 and beyond; without it the edge is darker: Tortajada 2014).
- `noise`: robust SD (central 98 %) of the image minus its 3 x 3 median on the `GRID_MM` grid, in tissue.
- `saturated_air` / `saturated_skin` / `saturated_inside`: whether the image has a connected object at display
  >= `SATURATED` in the air (lead letters, labels), within `SKIN_BAND_MM` of the skin line (nipple and skin
  markers) or deeper inside the breast (clips, coarse calcifications, wires); pieces of the saturated skin rim
  near the chest wall are not objects (`is_rim_piece`).

The breast mask (`breast_mask`) thresholds against the image's own background level (`background_level`) and
peels film border strips off the frame, so a digitized film's unexposed border, label cut-outs and scanner
background do not join the breast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from mammo_pipeline.model.air import air_threshold, chest_wall_side, peel_frame_strips

GRID_MM = 0.4  # common sampling for beta, noise and the skin profile: coarser than every --scale 0.25 pixel, and
# its Nyquist frequency (1.25 cycles/mm) stays above the 1.0 cycles/mm fit limit
ROI_MM = 25.6  # ROI side for beta (SPIE 9412)
SKIN_MARGIN_MM = 15.0  # ROIs keep this far from the skin line (realism.md §6.1, †)
FIT_BAND = (0.2, 1.0)  # cycles/mm fitted for beta (realism.md §6.1, †)
MODEL_SIZE = 256  # long side of the model rendition (Settings.model_size)
TOPHAT_PX = 7  # the model's top-hat square (model/preprocess.py TOPHAT_SIZE)
TISSUE_ERODE_PX = 3  # at 256 px (~3 mm): keeps the skin edge out of the tissue statistics
SATURATED = 0.97  # display level of a "saturated" object (metal, lead, coarse calcification)
SKIN_BAND_MM = 6.0  # objects whose centre lies within this distance of the skin line count as "skin"
OBJECT_MIN_MM2 = 0.3  # smallest saturated object counted (a 0.6 mm calcification)
OBJECT_MAX_MM = 15.0  # largest bounding box counted (a lead letter, a 3 mm clip with room to spare)


@dataclass
class ImageStats:
    """Realism statistics of one image (NaN where a statistic could not be measured, e.g. no 15 mm interior)."""

    beta: float
    n_rois: int
    tophat_p99: float
    tophat_p999: float
    hist_p05: float
    hist_p50: float
    hist_p95: float
    skin_ratio: float
    noise: float
    saturated_air: bool
    saturated_skin: bool
    saturated_inside: bool

    def as_dict(self) -> dict:
        return asdict(self)


STAT_NAMES: tuple[str, ...] = (
    "beta",
    "tophat_p99",
    "tophat_p999",
    "hist_p05",
    "hist_p50",
    "hist_p95",
    "skin_ratio",
    "noise",
)
SHARE_NAMES: tuple[str, ...] = ("saturated_air", "saturated_skin", "saturated_inside")


def resize_to(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area (BOX) resize of a float image to `shape` (rows, cols); bilinear when enlarging."""
    if img.shape == tuple(shape):
        return img.astype(np.float32, copy=False)
    down = shape[0] <= img.shape[0] and shape[1] <= img.shape[1]
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((shape[1], shape[0]), method), dtype=np.float32)


def to_grid(img: np.ndarray, spacing_mm: float, grid_mm: float = GRID_MM) -> np.ndarray:
    """Resample an image of pixel `spacing_mm` onto a `grid_mm` grid (area averaging)."""
    f = spacing_mm / grid_mm
    return resize_to(img, (max(1, round(img.shape[0] * f)), max(1, round(img.shape[1] * f))))


def model_rendition(img: np.ndarray, long_side: int = MODEL_SIZE) -> np.ndarray:
    """The uint8 image the model sees: area-resized to `long_side`, rounded to 0..255."""
    s = long_side / max(img.shape)
    small = resize_to(img, (max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))))
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def breast_mask(img: np.ndarray) -> np.ndarray:
    """The breast: the largest bright connected region (preferably touching the chest-wall side), holes filled.

    Threshold a fifth of the way from the background (`background_level`) to the median of what is brighter,
    found from the image itself; film border strips along the frame are peeled off first (`peel_frame_strips`)
    and the breast's own part of them is put back afterwards, so a breast touching the frame keeps its edge.
    """
    raw = img > air_threshold(img)[0]
    chest = chest_wall_side(img)
    fg, peeled = peel_frame_strips(raw, chest)
    fg = ndimage.binary_opening(fg, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    at_chest = np.unique(labels[:, chest])
    at_chest = at_chest[at_chest > 0]
    pool = at_chest if at_chest.size else np.arange(1, n + 1)
    best = int(pool[np.argmax(sizes[pool - 1])])
    mask = ndimage.binary_fill_holes(labels == best)
    h, w = mask.shape  # give back the breast's share of peeled lines: where the first kept line is breast
    for k in range(peeled["top"] - 1, -1, -1):
        mask[k, :] = raw[k, :] & mask[k + 1, :]
    for k in range(peeled["bottom"] - 1, -1, -1):
        mask[h - 1 - k, :] = raw[h - 1 - k, :] & mask[h - 2 - k, :]
    for k in range(peeled["far"] - 1, -1, -1):
        if chest == 0:
            mask[:, w - 1 - k] = raw[:, w - 1 - k] & mask[:, w - 2 - k]
        else:
            mask[:, k] = raw[:, k] & mask[:, k + 1]
    return mask


def tissue_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """`mask` eroded by `px` pixels (Euclidean), never touching the frame's edge except at the chest wall."""
    if px <= 0:
        return mask
    return ndimage.distance_transform_edt(np.pad(mask, 1)).__getitem__((slice(1, -1), slice(1, -1))) > px


def _hann2(n: int) -> np.ndarray:
    w = np.hanning(n).astype(np.float32)
    return np.outer(w, w)


def power_spectrum_beta(
    img: np.ndarray, mask: np.ndarray, grid_mm: float = GRID_MM, exclude: np.ndarray | None = None
) -> tuple[float, int]:
    """(beta, number of ROIs) of the tissue on a `grid_mm` grid; (nan, 0) when no ROI fits.

    ROIs of ROI_MM tile the image on a half-overlapping grid and are kept when they lie wholly
    SKIN_MARGIN_MM inside the skin line (distance transform of `mask`; the chest-wall edge counts as
    inside) and hold no pixel of `exclude` (saturated objects).
    """
    n = round(ROI_MM / grid_mm)
    ok = _depth_mm(mask, grid_mm) >= SKIN_MARGIN_MM
    if exclude is not None:
        ok &= ~ndimage.binary_dilation(exclude, iterations=2)
    win = _hann2(n)
    acc = np.zeros((n, n), dtype=np.float64)
    count = 0
    for r in range(0, img.shape[0] - n + 1, n // 2):
        for c in range(0, img.shape[1] - n + 1, n // 2):
            if not ok[r : r + n, c : c + n].all():
                continue
            roi = img[r : r + n, c : c + n].astype(np.float64)
            roi = roi - roi.mean()
            acc += np.abs(np.fft.fft2(roi * win)) ** 2
            count += 1
    if count == 0:
        return float("nan"), 0
    f = np.fft.fftfreq(n, d=grid_mm)
    fr = np.hypot(f[:, None], f[None, :])
    band = (fr >= FIT_BAND[0]) & (fr <= FIT_BAND[1])
    p = acc / count
    slope = np.polyfit(np.log(fr[band]), np.log(p[band] + 1e-30), 1)[0]
    return float(-slope), count


def skin_profile(img: np.ndarray, mask: np.ndarray, grid_mm: float = GRID_MM, max_mm: float = 15.0):
    """(distances in mm, mean gray at each distance inside the skin line), 0.5 mm bins; frame edges are not skin."""
    inside = _depth_mm(mask, grid_mm)
    edges = np.arange(0.0, max_mm + 0.5, 0.5)
    idx = np.digitize(inside[mask], edges) - 1
    vals = img[mask]
    keep = (idx >= 0) & (idx < len(edges) - 1)
    sums = np.bincount(idx[keep], weights=vals[keep], minlength=len(edges) - 1)
    counts = np.bincount(idx[keep], minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges[:-1] + 0.25, sums / counts


def skin_ratio(img: np.ndarray, mask: np.ndarray, grid_mm: float = GRID_MM) -> float:
    """Mean gray 0.5-1.5 mm inside the skin line / mean gray 9-11 mm inside."""
    d, prof = skin_profile(img, mask, grid_mm)
    near = np.nanmean(prof[(d >= 0.5) & (d <= 1.5)])
    far = np.nanmean(prof[(d >= 9) & (d <= 11)])
    return float(near / far) if far > 0 else float("nan")


TRIM_SD_FACTOR = 0.9346  # SD of a normal distribution's central 98 % / its SD (truncation at +-2.326 SD)


def noise_level(img: np.ndarray, tissue: np.ndarray) -> float:
    """Robust SD of the 3 x 3 median residual in `tissue` (display units): the SD of its central 98 %, divided
    by TRIM_SD_FACTOR so that Gaussian noise gives its SD.

    Not 1.4826 x MAD: on an 8-bit rendition (the synthetic drops are measured as the pipeline renders them) most
    residuals are whole gray levels, so the MAD jumps in steps of 1/255 (1.4826/255 = 0.0058) while the real
    16-bit images vary smoothly; a trimmed SD averages and does not jump.
    """
    if not tissue.any():
        return float("nan")
    resid = (img - ndimage.median_filter(img, size=3))[tissue].astype(np.float64)
    lo, hi = np.percentile(resid, [1, 99])
    core = resid[(resid >= lo) & (resid <= hi)]
    return float(core.std() / TRIM_SD_FACTOR) if core.size else float("nan")


def white_tophat(gray: np.ndarray, width: int = TOPHAT_PX) -> np.ndarray:
    """Image minus its grey opening with a `width` square (uint8 in, int16 out); the model's channel-1 operator."""
    opened = ndimage.grey_opening(gray, size=(width, width), mode="nearest")
    return gray.astype(np.int16) - opened.astype(np.int16)


def saturated_objects(
    grid: np.ndarray, mask: np.ndarray, grid_mm: float = GRID_MM, level: float = SATURATED
) -> tuple[bool, bool, bool]:
    """(in air, on the skin line, inside the breast): is there a compact object >= `level` there?

    Measured on the `grid_mm` image (a 2 mm marker survives there; area resizing to 256 px would dilute it).
    Objects are connected pixels >= `level` with an area >= OBJECT_MIN_MM2 and a bounding box <= OBJECT_MAX_MM,
    which keeps markers, clips, coarse calcifications and lead letters and drops long saturated skin rims.
    An object counts by its centre: farther than SKIN_BAND_MM outside the breast = air; within SKIN_BAND_MM of
    the skin line, inside or outside (a pellet on the nipple sticks out of the skin line) = skin; deeper = inside.
    Pieces of the skin rim itself are not objects (`is_rim_piece`): where the bright rim of an equalized image
    meets the chest-wall edge it saturates and breaks into pieces that are neither markers nor clips.
    """
    hot = grid >= level
    labels, n = ndimage.label(hot)
    if n == 0:
        return False, False, False
    depth = _depth_mm(mask, grid_mm)
    outside = ndimage.distance_transform_edt(~mask) * grid_mm if mask.any() else np.full(mask.shape, np.inf)
    chest = 0 if mask[:, 0].sum() >= mask[:, -1].sum() else -1
    air = skin = inside = False
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        size = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) * grid_mm
        obj = labels[sl] == k
        if obj.sum() * grid_mm**2 < OBJECT_MIN_MM2 or size > OBJECT_MAX_MM:
            continue
        rr, cc = np.nonzero(obj)
        r, c = int(rr.mean()) + sl[0].start, int(cc.mean()) + sl[1].start
        if not mask[r, c] and outside[r, c] > SKIN_BAND_MM:
            air = True
        elif is_rim_piece(depth[sl][obj], mask[sl][obj], c, mask.shape[1], chest, grid_mm):
            continue
        elif depth[r, c] <= SKIN_BAND_MM:
            skin = True
        else:
            inside = True
    return air, skin, inside


RIM_MM = 3.0  # the bright skin rim: skin (VICTRE 0.75 mm, the generator 0.75-1.5 mm) plus the equalized margin (†)
RIM_CHEST_MM = 10.0  # rim pieces lie this close to the chest-wall edge (†, set after seeing the NYU rims: README)


def is_rim_piece(depth_mm: np.ndarray, in_mask: np.ndarray, col: int, width: int, chest: int, grid_mm: float) -> bool:
    """Is a saturated piece part of the skin rim rather than an object on it?

    `depth_mm` / `in_mask`: depth inside the skin line and mask membership of the piece's pixels; `col` its centre
    column; `chest` 0 or -1 (the chest-wall column). Rim = mostly inside the breast, its pixels within RIM_MM of
    the skin line (median), and its centre within RIM_CHEST_MM of the chest-wall edge, where the skin line
    meets the frame and the rim is brightest. A marker on the skin there is counted as rim too (rare: nipple
    markers sit on the nipple, far from the chest wall).
    """
    from_chest = (col if chest == 0 else width - 1 - col) * grid_mm
    return bool(in_mask.mean() >= 0.5 and np.median(depth_mm) <= RIM_MM and from_chest <= RIM_CHEST_MM)


def _depth_mm(mask: np.ndarray, grid_mm: float) -> np.ndarray:
    """Distance (mm) of each mask pixel from the skin line; the frame's edges (chest wall, crops) are not skin."""
    return ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1] * grid_mm


def image_stats(img: np.ndarray, spacing_mm: float) -> ImageStats:
    """All statistics of one display image in [0, 1] (white = dense) with pixel spacing `spacing_mm`."""
    img = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    small = model_rendition(img)
    mask_s = breast_mask(small.astype(np.float32) / 255.0)
    tissue_s = tissue_mask(mask_s, TISSUE_ERODE_PX) & (small < round(SATURATED * 255))
    th = white_tophat(small)
    tvals = th[tissue_s] if tissue_s.any() else np.zeros(1)
    gvals = small[mask_s].astype(np.float32) / 255.0 if mask_s.any() else np.zeros(1)

    grid = to_grid(img, spacing_mm)
    mask_g = resize_to(mask_s.astype(np.float32), grid.shape) > 0.5
    sat_g = grid >= SATURATED
    beta, n_rois = power_spectrum_beta(grid, mask_g, exclude=sat_g)
    tissue_g = tissue_mask(mask_g, round(5.0 / GRID_MM)) & ~sat_g
    air, skin, inside = saturated_objects(grid, mask_g)
    return ImageStats(
        beta=beta,
        n_rois=n_rois,
        tophat_p99=float(np.percentile(tvals, 99)),
        tophat_p999=float(np.percentile(tvals, 99.9)),
        hist_p05=float(np.percentile(gvals, 5)),
        hist_p50=float(np.percentile(gvals, 50)),
        hist_p95=float(np.percentile(gvals, 95)),
        skin_ratio=skin_ratio(grid, mask_g),
        noise=noise_level(grid, tissue_g),
        saturated_air=air,
        saturated_skin=skin,
        saturated_inside=inside,
    )
