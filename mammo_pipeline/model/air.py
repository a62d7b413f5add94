"""The air of a mammogram: the directly exposed background around the breast, found from the image itself.

Nothing that lies in the air or on the skin line can be a biopsy marker: a clip is placed in the breast's
tissue, under skin 0.5-2.4 mm thick (Huang et al., Med Phys 2008), while lead letters, nipple pellets and skin
rings lie on or outside it. The second look (`candidates.py`) therefore ignores blobs within `SKIN_DEPTH` of
the air.

Air is recognised by three properties that need no constant measured on any data set: it is the darkest large flat
region (`background_level`: the most common gray level of the image's darker half, each pixel's vote weighted by the
inverse of its local spread), it reaches the edge of the exposed field (the breast never fills the detector;
`exposed_edge`: the frame, or the inner side of a scanned film's clear border, through what is darker than halfway
to the breast: `AIR_REACH`, since scanner flare brightens the air next to that border), and it is flat: X-rays that
passed nothing carry only noise, no anatomy, so once its centimetre-scale trend (scanner flare, the heel effect, a
film's fall-off) is removed, the central 80 % of its gray levels span at most `AIR_FLATNESS` of the breast's
contrast; or do so once the detector's lines are removed as well (`_line_offsets`: a grid's streaks, read-out
stripes and a paddle's rim run along whole rows of the field, air and breast alike). A flat pocket smaller than
`AIR_MIN_SHARE` counts when the hysteresis joins it to air that does (a line between the threshold and halfway to
the breast cut it off). Fatty tissue can be as dark as air in some renderings (magnified, coned views) but is never
flat at millimetre scale; a coned view's collimator is bright, not dark. An image without such a region (a breast
cropped to the frame) has no air, and nothing is ignored. What the air cuts off from the breast along the field's
edge is no breast either (`cut_off_by_air`, version 13 of the second look: a scanned film's flare band lifted
above the air's threshold along its clear border, with the lead letters in it).

The unexposed border (`unexposed_mask`: a coned view's collimator shadow, a film's clear edge) is the air's
bright twin: flat, along a whole side of the frame. It is neither breast nor the frame: the breast's median is
taken without it, and the air reaches the exposed field's edge where it meets it. (Version 6 of the second look:
before, a border wider than a fatty breast set the breast's median, so the fat was taken for air and the true
air, fenced in by the border, was not found.) When the border covers most of the image (a spot view coned to its
paddle) it takes the background level's vote itself; the breast is brighter than the air but darker than the
border, so a flat region at the background level along a side, with the rest of the image darker than it, is
the border (`_border_that_took_the_vote`), and the level is taken again without it. So is such a region when some
of the rest is darker than it (air is the darkest region, a collimator is not) and it leaves only a rectangle cut
off from a side of the frame (`_frames_a_rectangle`: a collimated field; a spot view over an implant, whose field
is brighter than its collimator on the whole, since stop 37).

Disclosed (docs/history.md "Second look"): this rule was written after the evaluation-only real images showed nipple BBs
and lead letters outranking their clip; SKIN_DEPTH is anatomy (skin plus a marker, the realism report's 6-mm skin
band); the flatness test was added when the synthetic magnification views' dark fat was taken for air, with
AIR_FLATNESS chosen before it was run (a tenth of the breast's contrast), not tuned on either data set. Version 4
(the film border, the reach through flare and the trend removal over SKIN_DEPTH) followed the realism work on
digitized film (synth/film.py): the synthetic films' air, like the real WG04 film's, was found by version 3 on
none of them. AIR_REACH (halfway) and the trend's width (SKIN_DEPTH, no new length) were set before measuring.
Version 6 (the unexposed border) came from a miss on fresh synthetic drops (a GE spot view's three clips, its whole
fatty breast taken for air) and reuses AIR_REACH, AIR_FLATNESS, AIR_MIN_SHARE, SKIN_DEPTH and FRAME_STRIP_FG; no
constant was added or tuned.
Version 8 came from the clip-free images a demo model scored highest (stop-35 home 14), whose top candidate sat
on the skin line because no air was found there: a dim display whose air a grid's streaks made rough (its
spread 0.025 against 0.019 allowed), and coned magnification views whose small air pocket lost the background
level's vote to the dark fat (the level 0.29 and 0.13, in the fat). The flatness test is now also taken with
the lines removed (the smaller spread counts: the lines are measured along whole rows, mostly outside the
region, so a fat patch keeps its texture), and the vote is weighted by the inverse local spread, floored at
the 8-bit display's rounding (QUANTUM_SD); and a flat pocket under AIR_MIN_SHARE that the hysteresis joins to
counted air is air (the right, lower threshold let a paddle's thin line cut one off). No constant was added beyond
that floor, and none was tuned. Also in version 8, found while measuring it: the spot views coned to their
paddle since stop 34 had lost their border and their air altogether (above; `_border_that_took_the_vote`, no new
constant). `python benchmarks/bench_air.py --per-kind 10`, version 7 -> 8: FFDM spot views precision 0.005 ->
0.652 and recall 0.011 -> 0.839 (one spot view over an implant, brighter than the collimator, still gave its
collimator to the air: version 9, `_frames_a_rectangle`, precision 0.999 at recall 0.837, nothing else moved),
film spot views 0 / 0 -> 0.634 / 0.285, FFDM magnification recall 0.955 -> 0.957 at precision 0.999, film
magnification precision 0.661 -> 0.655 (its dark breast periphery, already taken); contact views and the real
images' air shares unchanged. Second-look version 17 (stop 60) came from two clip images of held-out drops with no
candidate at all: spot views whose field is over half a saturated implant, whose flat gray then took the vote
inside the field; a level with less than AIR_MIN_SHARE of the image brighter than it is voted again below it
(`air_threshold`); no constant added, `bench_air.py`'s table and the real images' air shares unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

AIR_LEVEL = 0.2  # air is darker than a fifth of the way from the background level to the breast's median
AIR_REACH = 0.5  # ... and reaches the edge of the exposed field through what is darker than halfway to the median
AIR_MIN_SHARE = 0.01  # a dark region touching the frame counts only if it covers this share of the image
AIR_FLATNESS = 0.1  # p90 - p10 of an air region is at most this share of (breast median - background level)
SKIN_DEPTH = 0.02  # share of the long side: 5-6 mm on a 24-30 cm detector, the skin (<= 2.4 mm) plus a marker
QUANTUM_SD = 1 / (255 * 12**0.5)  # sd of an 8-bit display's rounding (a step / sqrt 12): nothing is measured flatter
P10_P90_PER_SD = 2.563  # p90 - p10 of Gaussian noise, in standard deviations (2 x 1.2816)
VOTE_BINS = 64  # the background level's vote: equal gray-level bins over 0..1
# A collimated field is a rectangle, so the part of the image a collimator leaves fills its bounding box but for
# the rim where the vote's bin and the display's rounding fray it (set before running, †); a breast, whose skin
# line curves, fills about pi/4 of its box (a quarter ellipse), never this much.
RECTANGLE_FILL = 0.95


def chest_wall_side(img: np.ndarray) -> int:
    """0 when the chest wall is at column 0, -1 when it is at the last column: the brighter side of the image.

    Compared on the column bands 3-15 % in from each side, so a film's bright border strips do not count.
    Exactly mirror-consistent, so that `canonical` gives an image and its mirror the same pixels: each column is
    summed on its own (the same additions wherever it lies) and the bands' totals exactly (`math.fsum`, the order
    of the columns does not count); on a tie the image whose first differing pixel, row by row, is brighter than
    its mirror's keeps its side (an image equal to its mirror is the same image either way).
    """
    w = img.shape[1]
    if w < 8:
        return 0
    a, b = max(1, round(0.03 * w)), max(2, round(0.15 * w))
    columns = np.asarray(img, dtype=np.float64).sum(axis=0)
    near, far = math.fsum(columns[a:b].tolist()), math.fsum(columns[w - b : w - a].tolist())
    if near != far:
        return 0 if near > far else -1
    differs = np.flatnonzero(img != img[:, ::-1])
    if not differs.size:
        return 0
    first = int(differs[0])
    return 0 if img.flat[first] > img[:, ::-1].flat[first] else -1


def canonical(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """(`img` with its chest wall at column 0, C-contiguous; whether it was mirrored for that). An image and its
    left-right mirror give the same pixels (`chest_wall_side` is exactly mirror-consistent), so whatever is computed
    from them is the same too: the model's orientation in `candidates.candidates` and `preprocess.preprocess`."""
    mirrored = chest_wall_side(img) == -1
    return np.ascontiguousarray(img[:, ::-1] if mirrored else img), mirrored


FRAME_STRIP_FG = 0.9  # a line along a frame edge this full of foreground is a film border, not breast
FRAME_STRIP_MAX = 0.05  # peel at most this share of the rows / columns from each edge


def peel_frame_strips(fg: np.ndarray, chest: int) -> tuple[np.ndarray, dict[str, int]]:
    """`fg` without the strips along the top, bottom and far edges that are (almost) wholly foreground.

    A digitized film's unexposed border (film base + fog) and a bright scanner background run along the frame and
    would join everything bright into one ring. A breast never fills a whole line along the top, bottom or the
    side opposite the chest wall, so such lines (at most FRAME_STRIP_MAX of the frame, outermost first) are
    removed. Returns the peeled foreground and how many lines went from each edge.
    """
    fg = fg.copy()
    h, w = fg.shape
    peeled = {"top": 0, "bottom": 0, "far": 0}
    for edge, n_max in (("top", h), ("bottom", h), ("far", w)):
        for k in range(max(1, round(FRAME_STRIP_MAX * n_max))):
            if edge == "top":
                line = fg[k, :]
            elif edge == "bottom":
                line = fg[h - 1 - k, :]
            else:
                line = fg[:, w - 1 - k] if chest == 0 else fg[:, k]
            if line.mean() <= FRAME_STRIP_FG:
                break
            line[:] = False
            peeled[edge] = k + 1
    return fg, peeled


def background_level(img: np.ndarray, bins: int = VOTE_BINS, exclude: np.ndarray | None = None) -> float:
    """Gray level of the unattenuated background (air, or a film's directly exposed region), display units.

    The most common gray level (`_mode`) of the image's darker half, each pixel's vote weighted by the inverse of its
    local spread (`_local_spread`, floored at QUANTUM_SD). Not the darkest pixels: a digitized film also holds
    things darker than its air (label cut-outs, scanner background beyond the film's edge; WG04's MG1 has a black
    patch), and its unexposed border (film base + fog) is brighter than the breast; the air, as flat and far larger,
    outvotes them. Not an unweighted vote: in a coned spot or magnification view the air may be a pocket of a few
    per cent of the image while fat, as dark, fills the rest of that half, and the plain mode was the fat's gray.
    Fat is never flat at millimetre scale, so its votes count for little. The background is the largest flat dark
    region either way. `img`: float in [0, 1]; `exclude`: pixels that take no part (a known unexposed border).
    """
    keep = np.ones(img.shape, dtype=bool) if exclude is None or exclude.all() else ~exclude
    dark = keep & (img <= np.median(img[keep]))
    weight = 1.0 / np.maximum(_local_spread(img)[dark], QUANTUM_SD)
    return _mode(img[dark], bins, weight)


def _mode(vals: np.ndarray, bins: int, weight: np.ndarray | None = None) -> float:
    """The mean of `vals` (gray levels in [0, 1]) in the fullest (by `weight`) of `bins` equal bins."""
    hist, edges = np.histogram(vals, bins=bins, range=(0.0, 1.0), weights=weight)
    k = int(np.argmax(hist))
    sel = vals[(vals >= edges[k]) & (vals <= edges[k + 1])]
    return float(sel.mean()) if sel.size else float(edges[k])


def _above(img: np.ndarray, lo: float, exclude: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: what is brighter than the background level `lo` (by more than 0.02) and not in `exclude`: the
    breast, as far as the background level can tell."""
    above = img > lo + 0.02
    if exclude is not None:
        above &= ~exclude
    return above


def _median_above(img: np.ndarray, lo: float, exclude: np.ndarray | None = None) -> float | None:
    """Median gray of `_above`: the breast's gray, against which air and border are judged; None when nothing is."""
    above = _above(img, lo, exclude)
    return float(np.percentile(img[above], 50)) if above.any() else None


def _skin_window(shape: tuple[int, ...]) -> int:
    """Odd width in px of SKIN_DEPTH of the long side (at least 3): the border's flatness window, and its rim."""
    return max(3, round(SKIN_DEPTH * max(shape)) | 1)


def _local_spread(img: np.ndarray) -> np.ndarray:
    """float64 [H, W]: the standard deviation of `img`'s gray levels over a `_skin_window`-wide square."""
    width = _skin_window(img.shape)
    x = img.astype(np.float64)
    mean = ndimage.uniform_filter(x, width, mode="nearest")
    return np.sqrt(np.maximum(ndimage.uniform_filter(x * x, width, mode="nearest") - mean * mean, 0.0))


def unexposed_mask(img: np.ndarray) -> np.ndarray:
    """bool [H, W]: the unexposed border of a display image (float in [0, 1]): a coned view's collimator shadow, a
    scanned film's clear edge. Like the air it carries only noise (no X-rays reached it), so it is recognised the
    same way: a region along a whole side of the frame (FRAME_STRIP_FG of it) that is brighter than halfway to the
    breast (`AIR_REACH`) and flat, its gray levels' local spread (standard deviation over SKIN_DEPTH of the long
    side, times P10_P90_PER_SD) at most AIR_FLATNESS of the contrast, and at least AIR_MIN_SHARE of the image.
    Anatomy is never flat at millimetre scale, so the breast is not taken, however dense; a saturated implant is
    flat but meets the frame along part of the chest wall only. Empty when there is none (a detector's contact
    view).

    Why it matters: when the border is large (a spot or magnification view collimated on two or three sides) it
    outweighed a fatty breast, so the breast's median was the border's gray, the fat fell below the air threshold
    and was taken for air, and the true air, fenced in by the border, never reached the frame.
    """
    lo = background_level(img)
    border = _border_that_took_the_vote(img, lo)
    if border.any():  # the background level is the field's, not the collimator's
        lo = background_level(img, exclude=border)
    hi = _median_above(img, lo, border)
    if hi is None:
        return border
    contrast = hi - lo
    bright = img > lo + AIR_REACH * contrast
    width = _skin_window(img.shape)
    flat = bright & (P10_P90_PER_SD * _local_spread(img) <= AIR_FLATNESS * contrast)
    border |= _along_a_side(flat)
    if border.any():  # its rim, where the window straddles the border's edge and reads a spread, is border if bright
        border |= ndimage.binary_dilation(border, iterations=width // 2 + 1) & bright
    return border


def _along_a_side(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the bands of `mask` along the sides of the frame, each from the outermost line it fills to
    FRAME_STRIP_FG (within FRAME_STRIP_MAX of the side: a scanned film's edge strips may lie outside it), where
    together they cover AIR_MIN_SHARE of the image. A band is each line's run of `mask` from its side, cut at
    a straight inner edge: a collimator blade and a film's edge are straight (possibly tilted), so most lines' runs
    follow one straight line (fitted from their median, then again on the runs within `_skin_window` of it, twice),
    and a run reaching more than half a window beyond it is cut there. Flat bright tissue that touches the band (a
    film's dense gland, cleared to the film base) is such a reach and stays out, as does anything not joined to the
    side along its line (a saturated clip inside a spot view's field); a saturated implant against the chest wall
    fills part of that side only. A (nearly) whole line is a band along a perpendicular side, seen from this one,
    and stays whole. Why: taken as one connected piece with the band, a film's dense gland was border and the clip
    in it had no candidate (stop 38; docs/history.md "Second look")."""
    tol = _skin_window(mask.shape)
    out = np.zeros(mask.shape, dtype=bool)
    for axis in (0, 1):
        lines = mask if axis == 0 else mask.T  # depth from the side along axis 0, position along the side axis 1
        for from_end in (False, True):
            m = lines[::-1] if from_end else lines
            strip = max(1, round(FRAME_STRIP_MAX * m.shape[0]))  # a film's edge strips may lie outside the band
            full = np.flatnonzero(m[:strip].mean(axis=1) >= FRAME_STRIP_FG)
            if not len(full):
                continue
            m = m[full[0] :]
            run = np.where(m.all(axis=0), m.shape[0], np.argmin(m, axis=0)).astype(float)  # each line's, from the side
            across = run >= m.shape[0] - tol
            if not across.all():
                x = np.arange(len(run))
                edge = np.full(len(run), np.median(run[~across]))
                for _ in range(3):  # the straight edge of most lines, refitted without those off it
                    ok = ~across & (np.abs(run - edge) <= tol)
                    edge = np.polyval(np.polyfit(x[ok], run[ok], 1), x) if ok.sum() > 1 else edge
                run = np.where(across, run, np.minimum(run, edge + tol / 2))
            band = np.zeros(lines.shape, dtype=bool)
            band[full[0] :] = np.arange(m.shape[0])[:, None] < run[None, :]
            band = band[::-1] if from_end else band
            out |= band if axis == 0 else band.T
    return out if out.sum() >= AIR_MIN_SHARE * mask.size else np.zeros(mask.shape, dtype=bool)


def _border_that_took_the_vote(img: np.ndarray, lo: float, bins: int = VOTE_BINS) -> np.ndarray:
    """bool [H, W]: the unexposed border when it, not the air, holds the background level `lo`; else empty.

    A spot view coned to its 7-10 cm paddle leaves the collimator's shadow over most of the image (70-90 % of
    the synthetic spot views): the image's darker half is then mostly that shadow, flat and uniform, and it wins
    `background_level`'s vote. Air and border are told apart by what they border: the breast is brighter than
    the air but darker than the unexposed border. So the pixels within one vote bin of `lo`, where they run along
    a side of the frame (`_along_a_side`), are the border when the rest of the image is darker than `lo`.
    """
    near = _along_a_side(np.abs(img - lo) <= 1.0 / bins)
    if not near.any() or near.all():
        return np.zeros(img.shape, dtype=bool)
    if np.median(img[~near]) < lo:
        return near
    # a field brighter than its collimator on the whole (an implant) still holds tissue darker than it, as air never
    # does, and what a collimator leaves is a rectangle (`_frames_a_rectangle`)
    darker = (~near & (img < lo - 1.0 / bins)).sum() >= AIR_MIN_SHARE * img.size
    return near if darker and _frames_a_rectangle(near) else np.zeros(img.shape, dtype=bool)


def _frames_a_rectangle(region: np.ndarray) -> bool:
    """Whether `region` (bool [H, W]) is what a collimator leaves: the whole image but an axis-aligned rectangle
    that it cuts off from at least one side of the frame, the rest filling RECTANGLE_FILL of its bounding box.
    The air around a breast leaves the breast, whose skin line curves, or a whole-image bounding box when the air
    lies in corners. Why: a spot view over an implant has its field brighter than its collimator, so the
    brightness test above cannot tell that collimator from air (stop 37: its 80 % of the image was taken for air
    and a clip beside the implant lost its candidate)."""
    rows, cols = np.flatnonzero((~region).any(axis=1)), np.flatnonzero((~region).any(axis=0))
    if not len(rows):
        return False
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (r0, r1, c0, c1) == (0, region.shape[0], 0, region.shape[1]):
        return False
    return float((~region[r0:r1, c0:c1]).mean()) >= RECTANGLE_FILL


def air_threshold(img: np.ndarray, unexposed: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, contrast) of a display image (float in [0, 1]): air is at or below the threshold, AIR_LEVEL of
    the way from the background level (`background_level`) to the median of what is brighter and not the unexposed
    border (`unexposed_mask`, computed when not given); contrast is that median minus the background level. The
    breast is what lies above it (`synth.realism.breast_mask`).

    The air is darker than the breast, so a level with less than AIR_MIN_SHARE of the image brighter than it is
    no air but the brightest flat region: a saturated implant filling half a spot view's field outvotes a small air
    pocket in the darker half. The level is then voted again among what is darker than it (since stop 60: the
    threshold came out above 1, the whole field was air, and the clip beside such an implant had no candidate)."""
    if unexposed is None:
        unexposed = unexposed_mask(img)
    lo = background_level(img, exclude=unexposed)
    if _above(img, lo, unexposed).sum() < AIR_MIN_SHARE * img.size:  # no breast brighter than the level
        lo = background_level(img, exclude=unexposed | (img >= lo - 1.0 / VOTE_BINS))
    hi = _median_above(img, lo, unexposed)
    hi = lo + 0.1 if hi is None else hi
    return lo + AIR_LEVEL * (hi - lo), hi - lo


def exposed_edge(img: np.ndarray, threshold: float, unexposed: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: the edge of the exposed field, 3 px wide: the frame, moved inwards past the unexposed strips
    (a digitized film's clear border) that run along the top, the bottom and the edge far from the chest wall
    (`peel_frame_strips` on what is brighter than `threshold`), and the inner rim of the unexposed border
    (`unexposed_mask`: a collimator's shadow, however wide; the rim is the mask's window wide)."""
    h, w = img.shape
    chest = chest_wall_side(img)
    _, peeled = peel_frame_strips(img > threshold, chest)
    top, bottom, far = peeled["top"], peeled["bottom"], peeled["far"]
    if chest == 0:
        far_cols, chest_cols = slice(max(0, w - 3 - far), w - far), slice(None, 3)
    else:
        far_cols, chest_cols = slice(far, far + 3), slice(-3, None)
    edge = np.zeros((h, w), dtype=bool)
    edge[top : top + 3], edge[max(0, h - 3 - bottom) : h - bottom] = True, True
    edge[:, far_cols], edge[:, chest_cols] = True, True
    if unexposed is not None and unexposed.any():
        # the local spread straddles the border's own edge for half a window on either side: a window-wide rim
        edge |= ndimage.binary_dilation(unexposed, iterations=_skin_window(img.shape)) & ~unexposed
    return edge


def air_mask(img: np.ndarray, unexposed: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: the air of a display image `img` (float in [0, 1], white = dense); module docstring.
    `unexposed`: its `unexposed_mask` when the caller has it already."""
    if unexposed is None:
        unexposed = unexposed_mask(img)
    return _air(img, unexposed)[0]


def _air(img: np.ndarray, unexposed: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(`air_mask`, the air's threshold (`air_threshold`), the exposed field's edge (`exposed_edge`)): the air and
    what `cut_off_by_air` needs of its making, computed once."""
    threshold, contrast = air_threshold(img, unexposed)
    edge = exposed_edge(img, threshold, unexposed)
    dark = ndimage.binary_opening(img <= threshold)
    labels, _ = ndimage.label(dark)
    # does it reach the edge of the exposed field? Through what is darker than halfway to the breast (hysteresis):
    # a scanned film's air brightens towards its clear border (scanner flare) before the border itself
    reach, _ = ndimage.label(ndimage.binary_opening(img <= threshold + (AIR_REACH - AIR_LEVEL) * contrast) | dark)
    edge_reach = np.unique(reach[edge])
    touching = np.unique(labels[dark & np.isin(reach, edge_reach[edge_reach > 0])])
    sigma = SKIN_DEPTH * max(img.shape)
    lines = _line_offsets(img, ~unexposed, sigma)
    touching = touching[touching > 0]
    large = ndimage.sum(dark, labels, touching) >= AIR_MIN_SHARE * img.size

    def flat(k: int) -> bool:
        return _residual_spread(img, labels == k, sigma, lines) <= AIR_FLATNESS * contrast

    found = np.isin(labels, [k for k in touching[large] if flat(k)])
    # a flat pocket too small to count on its own is the same air when the hysteresis joins it to air that counts
    # (a line or a stripe between the threshold and halfway to the breast split them); each pocket lies within one
    # hysteresis region, so only the joined ones need the flatness test
    joined = np.unique(reach[found])
    small = touching[~large]
    pockets = small[np.isin(ndimage.maximum(reach, labels, small), joined[joined > 0])] if len(small) else small
    return found | np.isin(labels, [k for k in pockets if flat(k)]), threshold, edge


def _line_offsets(img: np.ndarray, exposed: np.ndarray, sigma: float) -> np.ndarray:
    """float64 [H, W]: the detector's line artefacts in `img`, a value per row plus a value per column.

    A malfunctioning grid's streaks, read-out stripes and a magnification paddle's rim run along whole rows or
    columns of the exposed field, across air and breast alike; noise and anatomy do not. So each row's median,
    over the `exposed` field (not the unexposed border), of the image's millimetre-scale detail (`img` minus its
    Gaussian mean of `sigma` px over that field) is that row's line, and then each column's median of what is
    left is that column's: near zero where no line runs, as a whole row's median of texture and noise is.
    """
    x = np.where(exposed, img, 0.0).astype(np.float64)
    weight = ndimage.gaussian_filter(exposed.astype(np.float64), sigma)
    detail = np.where(exposed, x - ndimage.gaussian_filter(x, sigma) / np.maximum(weight, 1e-6), np.nan)
    rows = _median_along(detail, axis=1)
    cols = _median_along(detail - rows[:, None], axis=0)
    return rows[:, None] + cols[None, :]


def _median_along(a: np.ndarray, axis: int) -> np.ndarray:
    """float64: the median of `a` along `axis` ignoring NaN, 0 for a line wholly NaN (wholly unexposed: no line).
    Only lines holding a value are passed to `np.nanmedian`, so nothing warns (no global warning filter: the
    candidates are cut in threads)."""
    has = ~np.isnan(a).all(axis=axis)
    out = np.zeros(a.shape[1 - axis])
    if has.any():
        out[has] = np.nanmedian(a[has] if axis == 1 else a[:, has], axis=axis)
    return out


def _residual_spread(img: np.ndarray, region: np.ndarray, sigma: float, lines: np.ndarray) -> float:
    """p90 - p10 of `img` over `region` once its smooth trend is removed, or, when smaller, once the detector's
    lines (`_line_offsets`) are removed too. The trend (a Gaussian mean over the region only, `sigma` px): scanner
    flare, the heel effect and a film's fall-off towards its edge vary over centimetres, anatomy at millimetres.
    The lines are measured along whole rows and columns of the field, mostly outside the region, so removing them
    does not flatten a dark patch of fat (its texture stays; the lines' own noise only adds to it)."""
    weight = ndimage.gaussian_filter(region.astype(np.float32), sigma)
    trend = ndimage.gaussian_filter(np.where(region, img, 0).astype(np.float32), sigma)
    resid = img[region] - trend[region] / np.maximum(weight[region], np.float32(1e-6))
    return float(min(np.ptp(np.percentile(r, (10, 90))) for r in (resid, resid - lines[region])))


def cut_off_by_air(
    img: np.ndarray, air: np.ndarray, unexposed: np.ndarray, threshold: float, edge: np.ndarray
) -> np.ndarray:
    """bool [H, W]: what is neither `air` nor `unexposed` but lies cut off from the breast by the air and touches
    the exposed field's `edge` (`exposed_edge`): a scanned film's flare band along its clear border, brightened
    above the air's `threshold` (`air_threshold`), and the lead letters in it.

    The breast is one piece of what is neither air nor border, the one holding the most tissue (the sum of its
    grays above the air's threshold: a flare band along three sides of a film can cover more pixels than a small
    breast, but it is barely brighter than the air); a clip lies in it. A piece the air separates from it and that
    reaches the field's edge is outside the body's outline, however bright the flare makes it (a gland island among
    fat taken for air would not reach the edge)."""
    rest = ~air & ~unexposed
    labels, n = ndimage.label(rest)
    if n <= 1:
        return np.zeros(img.shape, dtype=bool)
    breast = 1 + int(np.argmax(ndimage.sum(np.clip(img - threshold, 0, None), labels, range(1, n + 1))))
    pieces = np.unique(labels[edge & rest])
    return np.isin(labels, pieces[(pieces > 0) & (pieces != breast)])


def away_from_air(img: np.ndarray, depth_px: float, unexposed: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: pixels at least `depth_px` from the air (`air_mask`) and from what it cuts off from the breast
    along the field's edge (`cut_off_by_air`); all True when the image has no air."""
    if unexposed is None:
        unexposed = unexposed_mask(img)
    air, threshold, edge = _air(img, unexposed)
    if not air.any():
        return np.ones(img.shape, dtype=bool)
    air |= cut_off_by_air(img, air, unexposed, threshold, edge)
    return ndimage.distance_transform_edt(~air) >= depth_px
