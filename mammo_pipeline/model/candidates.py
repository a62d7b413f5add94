"""The second look's first stage: bright compact objects at display resolution, cut out as small crops.

A clip is 2-4 mm: 10-15 px in the 1024-px display PNG of a 24-30 cm detector, where its shape (ribbon, coil,
barbell) is still visible, while it is 3-5 px in the 256-px model PNG and one pixel at the global network's
64 px.

**Where to look (the score).** A clip is made of metal *strokes*: a ribbon, a coil, a ring, a barbell's wire and
beads, a "T", an "X", a "+", 0.3-0.6 mm wide, all of them within a few millimetres. The image curves down across
every stroke, so the stroke energy max(0, -lambda_1) (lambda_1 the smaller eigenvalue of the Gaussian-smoothed
Hessian at STROKE_SCALE, a stroke's width: `_stroke_energy`, the measure behind Frangi's and Sato's line filters)
is high on all of a clip, and on a bead as on a ribbon. Tissue has strokes too (ligaments, vessels, the edges of
glandular lumps), but they run on for centimetres or lie scattered, while a clip's are packed into one compact
cluster. The score is therefore the Hessian blob measure max(0, -lambda_2) of the stroke energy at CLIP_SCALE,
a whole clip's size (lambda_2 the larger eigenvalue: strongly negative only where the energy falls off in
*every* direction, so a long line of energy, a vessel, a ligament, the skin line, a paddle's edge, scores only
at its end or where two lines cross), divided by its own 99th percentile inside the image's tissue (so the
units are "times the image's own texture", whatever the vendor's contrast or the tissue density; an
unsaturated clip in dense tissue still stands out against its own surroundings). A white top-hat with a
square, the first cut, lets thin lines through; this measure does not (tested).
The energy's enclosed holes are filled first (`fill_holes`): a ring clip ("O", "Venus", magnified in a
magnification view) is a closed ring of energy around an empty centre, whose blob measure peaks on the ring
rather than at the clip; filled, it is a disc of energy, centred.
Until version 10 the score was the blob measure of the top-hat itself, at three scales: a bead or a stroke's end
is a blob, but a "T" or an "X" is ridges, which that measure ignores by design; those clips scored 1.2-1.9 times
the tissue's 99th percentile, below the 24th candidate (docs/history.md "Second look", stop 38). Both scales are the
former blob scales' finest and coarsest (geometry, not measured on any data set).
It runs on the display PNG's 2x2 block means (STROKE_SCALE's Gaussian is still MIN_SIGMA px wide there), the
top-hat taken there too. `image_cache` cuts the candidates once per image and keeps them (`candidate_store.py`).

**Where not to look.** Nothing within `air.SKIN_DEPTH` of the image's air is a candidate: lead letters lie in
the air and nipple pellets and skin rings on the skin line, as bright and as compact as a clip, while a clip is
placed in the tissue (`air.py`). Their K slots go to objects inside the breast instead: on the synthetic drops
the clip became the first candidate of 128 of 186 clip images instead of 93 (docs/history.md "Second look").
A candidate is a local maximum of the score (the highest within half a crop) *before* that margin and the
frame's edge are masked: masking cuts a pellet's response at the margin, not at its foot, and the response's
flank just inside would otherwise be a candidate whose crop holds the pellet (version 7).

**The dome slots.** The stroke energy measures how sharply the image curves, not how bright an object is: an
unsaturated clip in dense gland (a polymer marker's core, a clip under thick tissue) can hold less of it than the
crossings and ends of the vessels and ligaments around it, and rank below the K-th candidate (two such coils of
the demo drops, blob measure 0.75-0.85 of the tissue's 99th percentile). What a reader sees there is a compact
object brighter than everything around it. So the last K // ONE_DOME_IN slots go to the strongest *domes*
(`_domes`, the top-hat of Bright & Steel, J Microsc 1987, on the Gaussian-smoothed image: the mean over a clip's
core minus the brightest such mean on the ring around it) at least half a crop from the blob candidates.

**What the classifier sees (the crops).** The K strongest local maxima, at least half a crop apart, each
give two CROP x CROP channels in units of the image's own tissue (1st percentile -> 0, 99th -> 1, clipped to
CHANNEL_RANGE; the tissue is the Otsu foreground without a coned view's unexposed border, `_grid`):
0. the native crop (shape: ribbon vs bead vs letter vs popcorn); 1. a CONTEXT-times wider crop, area-averaged to
CROP (where it is: in the breast, on the skin line, in the air beside the letters).

**One orientation.** The crops are cut from the image with its chest wall at column 0 (`air.canonical`, mirrored
when the stored image has it on the right, as some vendors store one side): the grid the score runs on, its
local maxima and the crops around them are not exactly mirror-symmetric (a 32-px crop's centre lies one pixel
off its mirror's), and the patch network reads each crop under `second_look.READ_SYMMETRIES`, a set not closed
under a left-right mirror, so a mirrored breast got another p_biopsy (the real images' clip 0.282 against 0.098,
stop 56). An image and its mirror now give the same crops and scores, whatever is read from them; the centres
are mapped back to the stored image's pixels, where every consumer draws them. No constant was added: which
side is the chest wall is `air.chest_wall_side`, made exactly mirror-consistent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo_pipeline.model.air import SKIN_DEPTH, away_from_air, canonical, unexposed_mask
from mammo_pipeline.model.preprocess import CHANNEL_RANGE, TISSUE_PERCENTILES, _as_gray_uint8, tissue_mask

# Bump whenever the crops' meaning or the patch network's input changes: saved second-look models record it
# and are refused when it differs. 1: two scales on the 2x2-averaged image; 2: three scales on a pyramid, tissue
# statistics from the 2x2-averaged image; 3: nothing within air.SKIN_DEPTH of the air, crops beyond the frame
# mirrored (black padding drew a false skin line where the frame cuts the breast); 4: the air of a scanned film
# too (inside its clear border, uneven: air.py); 5: holes filled before the blob measure (`fill_holes`: ring clips)
# and K = 24; 6: the air of a coned view too (a collimator's unexposed border is not breast: `air.unexposed_mask`);
# 7: a candidate is a local maximum of the blob measure before the air margin and the frame are masked (the
# flank of a nipple pellet's response, just inside the margin, was a candidate with the pellet in its crop); 8: the
# air of a display with line artefacts and a coned view's small air pocket too (`air.background_level`'s vote
# weighted by flatness, the flatness test also without the detector's lines, a small flat pocket joined to the air
# by the hysteresis: the skin line was a candidate) and of a spot view whose collimator covers most of the image
# (that shadow took the background level's vote: `air._border_that_took_the_vote`); 9: also of a spot view over an
# implant, whose field is brighter than its collimator (what the collimator leaves is a rectangle:
# `air._frames_a_rectangle`); 10: the score is the blob measure of the stroke energy, not of the top-hat (a clip
# of crossed or bent strokes, "T", "X", "+", is ridges, no blob), holes filled in that energy; 11: the unexposed
# border is a band along a side up to a straight inner edge (`air._along_a_side`: a film's flat bright gland
# touching the film's edge or a collimator's band was border, and a clip in it no candidate); 12: one slot in
# ONE_DOME_IN goes to a dome (`_domes`: an unsaturated clip in dense gland, brighter than all around it but with
# less stroke energy than the vessels there, was no candidate); 13: nor in a piece of the image the air cuts off
# from the breast along the field's edge (`air.cut_off_by_air`: a film's flare band along its clear border lifted
# above the air's threshold, and the lead letters in it, were candidates); 15: cut from the image with its chest
# wall at column 0 (`air.canonical`: a breast stored mirrored gets the same crops and scores), centres in the
# stored image's pixels (14 was stop 55's skin-slot branch, not taken: its kept candidates-v14 folders may exist);
# 16: on displays at one pitch (normalization version 6), the scales shares of the display size, not of the image's
# own long side (a 24 x 30 cm detector's clip was 20 % smaller in display px than an 18 x 24 cm one's); 17: the air
# of a spot view whose field is over half a saturated implant (its flat gray took the background level's vote and
# the whole field was air: `air.air_threshold`).
SECOND_LOOK_VERSION = "17"
# Gaussian scales as shares of the long side (0.2 % and 0.8 % of a 24-30 cm detector are 0.5-0.6 and 2-2.4 mm):
# a stroke's width (the 0.3-0.6 mm ribbon or wire, the 1-mm bead of a barbell; this scale was added in stop 27
# after the real clip of the evaluation images, a ~1.2 mm saturated bead, fell between the candidates of two
# coarser ones: disclosed in docs/history.md "Real images, run by run"), and about the half-size of a whole 4-5 mm
# (or magnified) clip, where the blob measure of its energy peaks.
STROKE_SCALE = 0.002
CLIP_SCALE = 0.008
MIN_SIGMA = 1.0  # grid px: the score runs on the coarsest power-of-two grid where STROKE_SCALE is still this wide
CROP = 32  # px at the display PNG: 3 % of its 1024-px size (7.5 mm at 0.234 mm per px), a 3-mm clip and surroundings
CONTEXT = 3  # the context channel covers CONTEXT * CROP px (9 % of the long side, 2-3 cm) at 1/CONTEXT resolution
CHANNELS = 2
# candidates per image: with the holes filled, recall of clip images at K = 12 / 24 0.952 / 0.989 (0.946 / 0.968
# without; docs/history.md "Second look", stop 27), and the cross-validated ROC-AUC follows at 24, not at 12
K = 24
# The stroke energy runs on the white top-hat with a square of TOPHAT_WINDOW of the long side (as preprocess's
# TOPHAT_SIZE: 2.7 %, 6-8 mm, wider than a clip): steps (the breast's edge against the air, the pectoral muscle)
# vanish, so where a bright line crosses such a step no false "corner blob" appears.
TOPHAT_WINDOW = 0.027
SCORE_PERCENTILE = 99.0  # the score is divided by its own tissue percentile (as preprocess's top-hat)
# One slot in ONE_DOME_IN (4 of K) goes to the strongest domes (`_domes`) away from the blob score's candidates:
# set once (a round number) and not tuned; 2 and 8 rescued the same clips of the demo drops (docs/history.md, stop
# 50).
ONE_DOME_IN = 6
# The dome's crown is the image's Gaussian mean over a clip's core (sigma half CLIP_SCALE); its brim the ring from
# twice CLIP_SCALE (beyond a 4-5 mm clip's edge) out to the context crop's edge (CONTEXT * CROP / 2 image px):
# geometry, as the scales above. 1.2x-3x CLIP_SCALE for the inner radius rescued the same clips (stop 50).
DOME_BRIM = 2 * CLIP_SCALE
DOME_BLOCK = 4  # grid px per block of the brim's grid: about the crown's width (2 sigma)


def _block_mean(gray: np.ndarray, f: int) -> np.ndarray:
    """float32 f x f block means of a 2-D image (the last rows/columns that do not fill a block are dropped)."""
    h, w = gray.shape[0] // f * f, gray.shape[1] // f * f
    out = np.zeros((h // f, w // f), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            out += gray[i:h:f, j:w:f]
    out *= np.float32(1.0 / (f * f))
    return out


def _opening(g: np.ndarray, width: int) -> np.ndarray:
    """Grey opening of a float image with a `width`-px square (scipy's separable min/max filters)."""
    from scipy import ndimage

    return ndimage.grey_dilation(ndimage.grey_erosion(g, size=(width, width)), size=(width, width))


def fill_holes(g: np.ndarray) -> np.ndarray:
    """float32 `g` (2-D) with every dark region that brighter values enclose raised to the lowest level of its rim
    (grey reconstruction by erosion from the frame, scikit-image's `reconstruction`; Soille, Morphological Image
    Analysis, 2nd ed. 2003, section 6.3.7). On the stroke energy: a ring clip's ring of energy, whose blob
    measure peaks on the ring and not at the clip's centre, becomes a disc, a blob at its own scale; a blob stays a
    blob. The troughs between tissue strokes fill too, up to the lowest pass between them."""
    from skimage.morphology import reconstruction

    seed = g.copy()
    seed[1:-1, 1:-1] = g.max()
    return reconstruction(seed, g, method="erosion").astype(np.float32)


def _hessian_eigenvalues(g: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_1, lambda_2), lambda_1 <= lambda_2, of the Hessian of `g` by Gaussian derivative filters of scale
    `sigma` (px), each the shape of `g`."""
    from scipy import ndimage

    rr = ndimage.gaussian_filter(g, sigma, order=(2, 0), mode="nearest")
    cc = ndimage.gaussian_filter(g, sigma, order=(0, 2), mode="nearest")
    rc = ndimage.gaussian_filter(g, sigma, order=(1, 1), mode="nearest")
    mean, half = 0.5 * (rr + cc), np.sqrt(0.25 * (rr - cc) ** 2 + rc**2)
    return mean - half, mean + half


def _blob_measure(g: np.ndarray, sigma: float) -> np.ndarray:
    """max(0, -lambda_2) of the Hessian of `g` at scale `sigma` (px): positive only where the image curves down in
    every direction (a blob), zero along a ridge or an edge."""
    return np.maximum(-_hessian_eigenvalues(g, sigma)[1], 0.0)


def _stroke_energy(g: np.ndarray, sigma: float) -> np.ndarray:
    """max(0, -lambda_1) of the Hessian of `g` at scale `sigma` (px): positive wherever the image curves down in
    at least one direction, across a stroke (a ridge) as on a blob; the measure of Frangi's and Sato's line
    filters (Frangi et al., MICCAI 1998; Sato et al., Med Image Anal 1998) without their ridge-only factor."""
    return np.maximum(-_hessian_eigenvalues(g, sigma)[0], 0.0)


def _grid_factor(sigma_px: float) -> int:
    """The coarsest power-of-two block size at which a Gaussian of `sigma_px` image px is still >= MIN_SIGMA px."""
    f = 1
    while sigma_px / (2 * f) >= MIN_SIGMA:
        f *= 2
    return f


def _finest_level(gray: np.ndarray, f: int) -> np.ndarray:
    """float32 f x f block means of `gray` (`gray` itself as float32 when f is 1): the score's grid."""
    return _block_mean(gray, f) if f > 1 else gray.astype(np.float32)


def _grid(gray: np.ndarray, f: int, long_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(f x f block means of `gray`, their white top-hat, their tissue mask, the unexposed border on `_air_grid`
    of them): the grid the score runs on. The top-hat's square is TOPHAT_WINDOW of the long side. The tissue is
    the Otsu foreground of what is not a coned view's unexposed border (`air.unexposed_mask`: a collimator's
    shadow is as bright as dense tissue but is none; `preprocess.tissue_mask`)."""
    image = _finest_level(gray, f)
    border = unexposed_mask(_air_grid(image, f)[0])
    fine = np.zeros(image.shape, dtype=bool)  # the border on this grid (the air grid is its 2 x 2 means)
    h, w = min(2 * border.shape[0], fine.shape[0]), min(2 * border.shape[1], fine.shape[1])
    fine[:h, :w] = border.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]
    mask = tissue_mask(np.rint(image).astype(np.uint8), exclude=fine)
    tophat = image - _opening(image, max(3, round(TOPHAT_WINDOW * long_side / f) | 1))
    return image, tophat, mask, border


def _air_grid(level: np.ndarray, f: int) -> tuple[np.ndarray, int]:
    """(2 x 2 means of the score's grid in 0..1, its step in image px): where `air.away_from_air` runs."""
    return _block_mean(level, 2) / np.float32(255), 2 * f


def air_grid(gray: Path | str | np.ndarray, long_side: int | None = None) -> tuple[np.ndarray, int]:
    """(float32 grid [H/s, W/s] in 0..1, step s in image px): the image the candidates look for air on (2 x 2 means
    of the score's grid), for callers that want the air the candidates avoid (`benchmarks/bench_air.py`)."""
    gray = _as_gray_uint8(gray)
    f0 = _grid_factor(STROKE_SCALE * (long_side or max(gray.shape)))
    return _air_grid(_finest_level(gray, f0), f0)


def _half_crop(crop: int, f: int) -> int:
    """Half a `crop` (image px) on a grid of f x f blocks, at least 1: how near two candidates may be."""
    return max(1, crop // 2 // f)


def _searchable(image: np.ndarray, border: np.ndarray, long_side: int, f: int) -> np.ndarray:
    """bool mask of the score's grid `image` (f image px per grid px) where a candidate may lie: not within
    2 CLIP_SCALE sigmas of the frame (the derivatives see the padding there: a line leaving the frame looks like an
    end), nor within air.SKIN_DEPTH of the air (letters in the air, pellets on the skin: never clips), nor as near
    a coned view's unexposed `border` (the exposed field's edge is a frame too)."""
    from scipy import ndimage

    keep = np.ones(image.shape, dtype=bool)
    edge = int(np.ceil(2 * CLIP_SCALE * long_side / f)) + 1
    if min(keep.shape) > 4 * edge:
        keep[:edge], keep[-edge:], keep[:, :edge], keep[:, -edge:] = False, False, False, False
    grid, step = _air_grid(image, f)
    inside = away_from_air(grid, SKIN_DEPTH * long_side / step, border)
    if border.any():
        inside &= ndimage.distance_transform_edt(~border) * (step / f) >= edge
    inside = inside.repeat(2, axis=0).repeat(2, axis=1)
    h, w = min(inside.shape[0], keep.shape[0]), min(inside.shape[1], keep.shape[1])
    keep[:h, :w] &= inside[:h, :w]
    return keep


def _local_maxima(values: np.ndarray, gap: int) -> np.ndarray:
    """`values` where each is the highest within `gap` grid px, else 0."""
    from scipy import ndimage

    return values * (values >= ndimage.maximum_filter(values, size=2 * gap + 1, mode="nearest"))


def _scores(gray: np.ndarray, long_side: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """(score on the grid, its block size f, that grid's image, its tissue mask, where a candidate may lie): module
    docstring. The score is everywhere; `_local_maxima` of it, masked by where a candidate may lie, are the
    candidates (a local maximum *before* the air margin and the frame are masked: version 7)."""
    f0 = _grid_factor(STROKE_SCALE * long_side)
    image, tophat, mask, border = _grid(gray, f0, long_side)
    strokes = fill_holes(_stroke_energy(tophat, STROKE_SCALE * long_side / f0))
    out = _blob_measure(strokes, CLIP_SCALE * long_side / f0)
    level = float(np.percentile(out[mask], SCORE_PERCENTILE)) if mask.any() else 0.0
    if level <= 1e-6:  # flat tissue: nothing to normalize by, an absolute blob still counts
        level = 1e-6 if out.max() > 1e-3 else np.inf
    out /= np.float32(level)
    return out, f0, image, mask, _searchable(image, border, long_side, f0)


def _domes(image: np.ndarray, searchable: np.ndarray, long_side: int, f: int, crop: int = CROP) -> np.ndarray:
    """float32 grid (the shape of `image`, the score's grid, f image px per grid px): how far the Gaussian mean over
    a clip's core (the crown) rises above the brightest such mean on the ring around it (the brim, DOME_BRIM out to
    the context crop's edge), where positive, at the highest within half a `crop` and `searchable`; else 0.

    The top-hat of Bright & Steel (J Microsc 1987; 146: 191-200) on the Gaussian-smoothed image: a compact object
    brighter than everything around it, however low its contrast and however smooth its outline. An unsaturated
    clip (a polymer marker's core, a clip in dense gland) is that, but its strokes may hold less stroke energy than
    the vessels and ligaments of the tissue around, so the blob score can rank it below K tissue crossings."""
    from scipy import ndimage

    crown = ndimage.gaussian_filter(image, CLIP_SCALE * long_side / f / 2, mode="nearest")
    q = DOME_BLOCK  # the brim's maximum on q x q means of the crown, about its width: 1/16 of the pixels and of the
    coarse = _block_mean(crown, q)  # ring's points (26 ms -> 1.4 ms at 1024 px); the same clips found (stop 50)
    outer, inner = CONTEXT * crop / 2 / f / q, DOME_BRIM * long_side / f / q
    yy, xx = np.mgrid[-int(outer) : int(outer) + 1, -int(outer) : int(outer) + 1]
    ring = (np.hypot(yy, xx) <= outer) & (np.hypot(yy, xx) >= inner)
    brim = ndimage.grey_dilation(coarse, footprint=ring, mode="nearest").repeat(q, axis=0).repeat(q, axis=1)
    brim = np.pad(brim, ((0, image.shape[0] - brim.shape[0]), (0, image.shape[1] - brim.shape[1])), mode="edge")
    dome = np.maximum(crown - brim, 0.0).astype(np.float32)
    return _local_maxima(dome, _half_crop(crop, f)) * searchable


def grid_centres(rows: np.ndarray, cols: np.ndarray, f: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) in image px of positions on a grid of f x f blocks: each block's centre, inside `shape`
    (the image the grid was made from: where `candidates` places a candidate)."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    return np.minimum(rows * f + f // 2, shape[0] - 1), np.minimum(cols * f + f // 2, shape[1] - 1)


def blob_score(gray: np.ndarray, long_side: int | None = None) -> tuple[np.ndarray, int]:
    """(score float32 [H/f, W/f], f): the self-normalized blob measure of the stroke energy (module docstring)
    of a uint8 image on its grid, f image px per grid px (STROKE_SCALE's block size); scales as `candidates`'."""
    gray = _as_gray_uint8(gray)
    score, f, _, _, searchable = _scores(gray, long_side or max(gray.shape))
    return _local_maxima(score, _half_crop(CROP, f)) * searchable, f


def _pick(values: np.ndarray, n: int, gap: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Grid positions (row, col) of up to `n` positive `values`, strongest first, each more than `gap` grid px
    (half a crop) from the others and from `taken`."""
    work = values.copy()
    for r, c in taken:
        work[max(0, r - gap) : r + gap + 1, max(0, c - gap) : c + gap + 1] = 0
    picked: list[tuple[int, int]] = []
    while len(picked) < n:
        flat = int(np.argmax(work))
        if not work.flat[flat] > 0:
            break
        r, c = divmod(flat, work.shape[1])
        picked.append((r, c))
        work[max(0, r - gap) : r + gap + 1, max(0, c - gap) : c + gap + 1] = 0
    return picked


def candidates(
    gray: Path | str | np.ndarray, k: int = K, crop: int = CROP, long_side: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops float32 [k, CHANNELS, crop, crop], centres int [k, 2] (row, col), scores float32 [k]) of a uint8
    image (or a PNG path: the display PNG, rendered at `AtPitch(settings.display_size)`); always k rows, an image
    with fewer than k candidates gets zero crops, score 0 and centre -1, and an image thinner than `crop` px none.
    The scales are shares of `long_side`: the display size the PNG was rendered for (`settings.display_size`),
    not its own long side, so they are the same millimetres on every display at one pitch (normalization
    version 6); None: the image's own long side (an image rendered to a long side, as before version 6).

    The first k - k // ONE_DOME_IN are the blob score's strongest local maxima, strongest first; the last
    k // ONE_DOME_IN the strongest domes (`_domes`) half a crop away from them (blob maxima again when there are
    fewer domes). Scores are the blob measure of the stroke energy at each centre, in units of the image's own
    tissue texture (module docstring), a dome's too. Cut from the image with its chest wall at column 0 (module
    docstring, "One orientation"); the centres are in the stored image's pixels.
    """
    stored = _as_gray_uint8(gray)
    gray, mirrored = canonical(stored)
    crops = np.zeros((k, CHANNELS, crop, crop), dtype=np.float32)
    centres = np.full((k, 2), -1, dtype=np.int64)
    scores = np.zeros(k, dtype=np.float32)
    if min(gray.shape) < crop:  # thinner than one crop: no breast to search (a 1 x 50000 object; 1024 x 31 at 1024)
        return crops, centres, scores
    long_side = long_side or max(gray.shape)
    score, f, small, mask, searchable = _scores(gray, long_side)
    gap = _half_crop(crop, f)
    blobs = _local_maxima(score, gap) * searchable
    domes = k // ONE_DOME_IN
    where = _pick(blobs, k - domes, gap, [])
    if domes:
        where += _pick(_domes(small, searchable, long_side, f, crop), domes, gap, where)
        where += _pick(blobs, k - len(where), gap, where)
    low, high = np.percentile(small[mask], TISSUE_PERCENTILES)
    span = float(max(high - low, 1.0))
    wide = crop * CONTEXT
    pad = wide // 2 + 1
    padded = np.pad(gray, pad, mode="reflect")  # the image mirrored: a breast cut by the frame goes on, air stays air
    if where:
        centres[: len(where)] = np.stack(grid_centres(*np.array(where).T, f, gray.shape), axis=1)
    for i, (r, c) in enumerate(where):
        scores[i] = score[r, c]
        r, c = (int(v) for v in centres[i])
        top, left = r + pad - crop // 2, c + pad - crop // 2
        crops[i, 0] = padded[top : top + crop, left : left + crop]
        top, left = r + pad - wide // 2, c + pad - wide // 2
        crops[i, 1] = _block_mean(padded[top : top + wide, left : left + wide], CONTEXT)
    found = len(where)
    crops[:found] -= np.float32(low)  # in units of the image's tissue range (empty rows stay 0)
    crops[:found] *= np.float32(1.0 / span)
    np.clip(crops, *CHANNEL_RANGE, out=crops)
    if mirrored:  # positions leave in the stored image's pixels (empty slots stay -1)
        centres[:found, 1] = stored.shape[1] - 1 - centres[:found, 1]
    return crops, centres, scores
