"""Train-only framings and display curves: a contact view as an export cropped to the breast, or a vendor's display
curve, would show it.

Research exports and some archives crop each view to the breast (the NYU samples in `../shared/realdata/` are
cropped so), and the cache then renders that crop at the same long side as a whole detector. Such a contact view
has no air and its anatomy is drawn larger: both are what a coned magnification view looks like, so a network
trained only on whole-detector views learns "little air, large structures" as its mag cue and calls cropped
contact views magnified. Half of the training draws therefore take the view cut to the bounding box of its Otsu
tissue. A coned view's collimator shadow is as bright as dense tissue, so the box keeps it and most magnification
views come back whole (`benchmarks/bench_crops.py` counts them): the framings teach "no air is not magnified"
and leave the collimator and the magnified micro-structure as the mag cues. A magnification view exported cut
inside its collimator is outside what this was measured on (no such image in any data here); cutting the coned
views inside their shadow too was measured at stop 40 and flagged more cropped contact views (docs/history.md).
No constant here comes from data: the box is the image's own tissue, and the margin is drawn from a range given
in the image's own size.

**Display curves** (`display_curve`, since stop 58). A real file's display depends on its vendor's VOI: a
SIGMOID window, a gamma-like LUT, a curve that leaves the air gray. The synthetic drops have one curve per vendor
profile, and a global network trained on them read two breast-cropped real MLO views as magnified (p_mag 0.60-0.77
against 0.02-0.04) once a SIGMOID window or gray air was applied to them (stop 58, `bench_representations.py
--per-image` on a demo model). Half of the training draws therefore see the model PNG under a random monotone
curve: a gamma from GAMMA_RANGE or a SIGMOID centred in SIGMOID_CENTRE of the range with a width from
SIGMOID_WIDTH (PS3.3 C.11.2.1.3.1's form), and in half of those the black lifted to a gray from BLACK_LIFT (a
film's clear base, a curve that leaves the air gray). The ranges are set before measuring, as wide as display
curves go, not fitted: a curve keeps the order of gray levels, so what tells a mag view (magnified structure, the
collimator's edge) is kept and only how bright it is shown changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mammo_pipeline.model.preprocess import _as_gray_uint8, preprocess_batch, tissue_mask

CROP_MARGIN = (0.0, 0.05)  # share of each side's length kept around the tissue (a tight crop up to a loose one)
GAMMA_RANGE = (0.5, 2.0)  # output = input ** gamma, gamma log-uniform in this range (module docstring)
SIGMOID_CENTRE = (0.3, 0.7)  # share of the gray range
SIGMOID_WIDTH = (0.3, 1.0)  # share of the gray range (PS3.3's Window Width)
BLACK_LIFT = (0.0, 0.15)  # the gray the black is lifted to, share of the range


def breast_box(gray: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), px of `gray` (uint8 [H, W]), bottom and right exclusive: the bounding box of its
    tissue (`preprocess.tissue_mask`: Otsu foreground, so a collimator's bright shadow counts), widened by `margin`
    of each side and clipped to the image. The whole image when the tissue fills it or when there is none to find
    (a flat image)."""
    mask = tissue_mask(gray)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = gray.shape
    pad_r, pad_c = round(margin * h), round(margin * w)
    return (
        int(max(0, rows[0] - pad_r)),
        int(min(h, rows[-1] + 1 + pad_r)),
        int(max(0, cols[0] - pad_c)),
        int(min(w, cols[-1] + 1 + pad_c)),
    )


def crop_to_breast(gray: np.ndarray, margin: float = 0.0, source: np.ndarray | None = None) -> np.ndarray:
    """uint8 [h', w'] with the long side of `gray` (uint8 [H, W], the model PNG): the image cut to `breast_box`
    and rendered at that long side, as the cache would render an export cropped so. `source` (uint8, a larger
    rendering of the same image: the display PNG) gives the pixels, cut at the same place and reduced with BOX
    like the cache; without it `gray` itself is enlarged (Lanczos), which blurs what the cache would keep sharp.
    An image whose tissue fills it comes back unchanged."""
    h, w = gray.shape
    top, bottom, left, right = breast_box(gray, margin)
    if (top, bottom, left, right) == (0, h, 0, w):
        return gray
    pixels, k = gray, 1.0
    if source is not None:
        pixels, k = source, source.shape[0] / h
    crop = pixels[round(top * k) : round(bottom * k), round(left * k) : round(right * k)]
    scale = max(h, w) / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    resample = Image.Resampling.BOX if scale <= 1 else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(crop).resize(size, resample))


def display_curve(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W]: `gray` (uint8) under a random monotone display curve (module docstring): a gamma or a SIGMOID
    window with even odds, then, with even odds, black lifted to a gray from BLACK_LIFT."""
    x = np.arange(256, dtype=np.float64) / 255.0
    if rng.random() < 0.5:
        y = x ** np.exp(rng.uniform(*np.log(GAMMA_RANGE)))
    else:
        centre, width = rng.uniform(*SIGMOID_CENTRE), rng.uniform(*SIGMOID_WIDTH)
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))  # PS3.3 C.11.2.1.3.1
        y = (y - y[0]) / (y[-1] - y[0])
    if rng.random() < 0.5:
        lift = rng.uniform(*BLACK_LIFT)
        y = lift + (1.0 - lift) * y
    return np.rint(y * 255.0).astype(np.uint8)[gray]


@dataclass(frozen=True)
class TrainingViews:
    """float32 [N, 3, size, size] views of a training set for `train._datasets`: the model PNGs as they are
    (`plain`), cropped to the breast (`cropped`), and each under a random display curve (`toned`,
    `toned_cropped`); a view that is off is None."""

    plain: np.ndarray
    cropped: np.ndarray | None = None
    toned: np.ndarray | None = None
    toned_cropped: np.ndarray | None = None


def training_views(
    pngs: list[Path] | list[np.ndarray],
    size: int,
    seed: int,
    sources: list[Path] | list[np.ndarray] | None = None,
    *,
    crops: bool = True,
    tones: bool = True,
) -> TrainingViews:
    """Every view of `pngs` (model PNGs) at `size` (`preprocess`), each PNG and its display PNG in `sources`
    decoded once (a display PNG costs most of the time: about 14 ms each).

    `cropped`: each image cut by `crop_to_breast` (its pixels from the matching `sources` image when given) with
    a margin drawn from CROP_MARGIN. `toned`: `display_curve` of each image; `toned_cropped`: `display_curve` of a
    crop drawn afresh. Seeded, with a generator per view (`seed` for the crops' margins, (`seed`, 1) for each
    toned view), so turning one view on or off leaves the others' draws as they were.
    """
    margins = np.random.default_rng(seed)
    curves, curves_cropped = np.random.default_rng((seed, 1)), np.random.default_rng((seed, 1))
    plain, cropped, toned, toned_cropped = [], [], [], []  # uint8 images, each view preprocessed at the end
    for i, png in enumerate(pngs):
        gray = _as_gray_uint8(png)
        source = _as_gray_uint8(sources[i]) if sources is not None and crops else None
        plain.append(gray)
        if crops:
            cropped.append(crop_to_breast(gray, float(margins.uniform(*CROP_MARGIN)), source))
        if tones:
            toned.append(display_curve(gray, curves))
        if crops and tones:
            crop = crop_to_breast(gray, float(curves_cropped.uniform(*CROP_MARGIN)), source)
            toned_cropped.append(display_curve(crop, curves_cropped))
    return TrainingViews(
        preprocess_batch(plain, size),
        preprocess_batch(cropped, size) if crops else None,
        preprocess_batch(toned, size) if tones else None,
        preprocess_batch(toned_cropped, size) if crops and tones else None,
    )
