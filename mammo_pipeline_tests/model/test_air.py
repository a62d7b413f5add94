from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mammo_pipeline.model.air import SKIN_DEPTH, air_mask, air_threshold, away_from_air


def _breast(
    rng: np.random.Generator, shape=(256, 200), air: float = 0.02, noise: float = 0.004
) -> tuple[np.ndarray, np.ndarray]:
    """(image, breast mask): a textured half-disc breast against the left frame edge, in noisy air of gray `air`
    (display 0..1)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    inside = np.hypot(yy - shape[0] / 2, xx) < 0.45 * shape[0]
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2)
    img = np.where(inside, 0.55 + 0.15 * texture / texture.std(), air + rng.normal(0, noise, shape))
    return np.clip(img, 0, 1), inside


@pytest.mark.parametrize("air", [0.0, 0.02, 0.15])
def test_the_air_is_the_flat_dark_background_around_the_breast(air):
    img, inside = _breast(np.random.default_rng(0), air=air)
    found = air_mask(img)
    assert (found == ~inside).mean() > 0.98


def test_dark_fat_touching_the_frame_is_not_air_nor_is_a_bright_collimator():
    rng = np.random.default_rng(1)
    img, inside = _breast(rng)
    fat = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5)
    coned = np.where(inside, img, 0.05 + 0.06 * fat / fat.std())  # textured dark tissue instead of flat air
    assert not air_mask(np.clip(coned, 0, 1)).any()
    collimator = np.where(inside, img, 0.9)  # a coned view: the breast inside a bright collimator frame
    assert not air_mask(collimator).any()
    assert away_from_air(collimator, 10).all()


def test_a_scanned_films_uneven_air_inside_its_clear_edge_is_air():
    """A digitized film: clear strips along the top, bottom and far edge, so the air never touches the frame, and
    air that is grainy and brightens towards the strips (scanner flare): still air; the breast is not."""
    img, inside = _breast(np.random.default_rng(4), air=0.12, noise=0.004)
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.minimum.reduce([yy - 6, h - 7 - yy, w - 7 - xx])  # px from the clear strips (negative: on them)
    img = np.where(inside, img, img + 0.15 * np.exp(-np.clip(dist, 0, None) / 15.0))
    img[dist < 0] = 0.95
    found = air_mask(img)
    dark_air = ~inside & (dist >= 0) & (img <= air_threshold(img)[0])  # the flare's brightest rim is not dark
    assert dark_air.sum() > 0.6 * (~inside & (dist >= 0)).sum()
    assert (found & dark_air).sum() / dark_air.sum() > 0.98 and (found & inside).sum() <= 0.001 * inside.sum()


def test_away_from_air_keeps_what_lies_deeper_than_the_skin_depth():
    img, inside = _breast(np.random.default_rng(2))
    depth = SKIN_DEPTH * max(img.shape)
    keep = away_from_air(img, depth)
    truth = ndimage.distance_transform_edt(inside) >= depth
    assert (keep == truth).mean() > 0.98
    assert keep[128, 20] and not keep[128, 112]  # deep in the breast; on its skin line (radius 115 px)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_on_drawn_mammograms_of_every_profile_no_candidate_sits_on_a_nipple_pellet_or_a_lead_letter(laterality):
    """The synthetic drops' pellets on the nipple and letters in the air are clip-bright; none may take a
    candidate slot, on any vendor profile (film included), while the breast's own blobs still fill them."""
    from mammo_pipeline.model.candidates import candidates
    from mammo_pipeline.synth.image import ImageSpec, draw_image
    from mammo_pipeline.synth.profiles import PROFILES

    for i, (key, profile) in enumerate(sorted(PROFILES.items())):
        scale = 1024 / max(profile.rows, profile.columns)  # the display PNG's size
        rows, cols = round(profile.rows * scale), round(profile.columns * scale)
        spec = ImageSpec(
            rows, cols, profile.pixel_spacing / scale, scale, "CC", laterality, False, False, screening=True,
            vendor=key.split("-")[0], film=profile.secondary_capture, force=("nipple_marker", "lead_letters"),
        )  # fmt: skip
        display, drawn = draw_image(spec, np.random.default_rng(i))
        _, centres, scores = candidates(np.rint(np.clip(display, 0, 1) * 255).astype(np.uint8))
        assert (scores > 0).sum() >= 6, key  # the breast still offers blobs
        boxes = [b for kind, *b in drawn.boxes if kind in ("nipple_marker", "lead_letters")]
        assert boxes, key
        for r0, r1, c0, c1 in boxes:
            on = [(r, c) for r, c in centres if r0 - 3 <= r <= r1 + 3 and c0 - 3 <= c <= c1 + 3]
            assert not on, f"{key}: candidate {on} on a {drawn.boxes}"
