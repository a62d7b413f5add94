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


def test_a_films_flare_band_cut_off_from_the_breast_by_the_air_is_no_place_for_a_candidate():
    """Strong scanner flare lifts a band of air along a film's clear border above the air's threshold; lead letters
    printed there sit in that band. The air cuts the band off from the breast and the band reaches the field's
    edge, so it is outside the body: nothing in it is away from the air (before: the letters were candidates)."""
    rng = np.random.default_rng(4)
    img, _ = _breast(rng, air=0.12, noise=0.004)
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot(yy - h / 2, xx) < 0.35 * h  # a smaller breast: air between it and the top strip's band
    img = np.where(inside, img, 0.12 + rng.normal(0, 0.004, img.shape))
    dist = np.minimum.reduce([yy - 6, h - 7 - yy, w - 7 - xx])  # px from the clear strips (negative: on them)
    img = np.where(inside, img, img + 0.2 * np.exp(-np.clip(dist, 0, None) / 15.0))
    img[dist < 0] = 0.95
    img[10:18, 150:176] = 0.95  # "LCC" in the band, 4-12 px from the top strip
    assert img[14, 140] > air_threshold(img)[0]  # the band beside the letters is brighter than the air's threshold
    keep = away_from_air(img, SKIN_DEPTH * max(h, w))
    assert not keep[10:18, 150:176].any()
    assert keep[128, 20] and keep[100:156, :40].all()  # the breast is kept


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


def test_a_coned_views_air_is_found_inside_a_wide_collimator_and_its_fatty_breast_is_not_air():
    """A spot or magnification view collimated on two sides: the bright, flat unexposed border covers more of the
    image than a fatty breast does. It is not breast (`unexposed_mask`), so the breast's median stays the
    breast's and the fat is not taken for air, and the air, fenced in by the border, reaches the field's edge
    there. (Before, the border's gray was the breast's median: the whole fatty breast was air, the true air none.)"""
    from mammo_pipeline.model.air import unexposed_mask

    rng = np.random.default_rng(5)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    field = (yy < 200) & (xx < 140)  # the exposed field (55 %); the rest is the collimator's shadow
    inside = (np.hypot(yy - 100, xx) < 110) & field
    fat = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img = np.where(inside, 0.22 + 0.06 * fat / fat.std(), 0.02 + rng.normal(0, 0.004, (h, w)))
    img = np.where(field, img, 0.92 + rng.normal(0, 0.002, (h, w)))
    img = np.clip(img, 0, 1)
    assert (~field).sum() > inside.sum()  # the border outweighs the breast
    border = unexposed_mask(img)
    assert (border & field).sum() == 0 and border.sum() > 0.9 * (~field).sum()
    found = air_mask(img)
    air = field & ~inside
    assert (found & air).sum() > 0.9 * air.sum()
    assert (found & inside).sum() <= 0.01 * inside.sum()
    assert away_from_air(img, 5)[100, 30]  # deep in the fatty breast: a clip there is still a candidate


@pytest.mark.parametrize("gray", [0.55, 0.85])
def test_a_bright_breast_is_not_an_unexposed_border(gray):
    """However dense (bright) the breast, its texture is never flat at millimetre scale: a contact view has no
    unexposed border, so nothing of the breast is dropped from its median."""
    from mammo_pipeline.model.air import unexposed_mask

    img, inside = _breast(np.random.default_rng(6))
    img = np.where(inside, img - 0.55 + gray, img)
    assert not unexposed_mask(np.clip(img, 0, 1)).any()


def test_air_crossed_by_a_grids_streaks_is_still_air_and_the_skin_line_is_skipped():
    """A dim display (the breast 0.2 above the air) with a malfunctioning grid's streaks: lines across the whole
    detector, brighter than a tenth of that contrast. The air's gray levels then spread more than the flatness
    allows, but the streaks are the same along whole rows, breast included (`_line_offsets`); once they are removed
    the air is flat. (Before, nothing was air and the skin line was a candidate.)"""
    rng = np.random.default_rng(7)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot(yy - h / 2, xx) < 0.45 * h
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 2)
    img = np.where(inside, 0.22 + 0.05 * texture / texture.std(), 0.01 + rng.normal(0, 0.003, (h, w)))
    img = np.clip(img + 0.025 * (np.sin(np.arange(h) * 2 * np.pi / 9.0) > 0.6)[:, None], 0, 1)
    found = air_mask(img)
    assert (found & ~inside).sum() > 0.98 * (~inside).sum() and (found & inside).sum() <= 0.01 * inside.sum()
    assert not away_from_air(img, SKIN_DEPTH * max(img.shape))[128, 112]  # on the skin line (radius 115 px)


def test_a_small_air_pocket_of_a_coned_view_full_of_fat_is_air_and_the_fat_is_not():
    """A magnification view coned on two sides whose field the fatty breast almost fills: the air is a pocket of
    3 % of the image and the fat fills the rest of the darker half. The most common gray of that half was the
    fat's, so the threshold sat in the fat, air and fat merged into one rough region and nothing was air. Each
    pixel's vote now counts inversely to its local spread: the air is flat, the fat never is."""
    from mammo_pipeline.model.air import background_level

    rng = np.random.default_rng(8)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    field = (yy >= 40) & (xx < 150)  # the collimator's shadow above and beside the field
    inside = (np.hypot(yy - h, xx) < 225) & field  # the breast fills all but the field's top corner
    fat = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img = np.where(inside, 0.3 + 0.06 * fat / fat.std(), 0.02 + rng.normal(0, 0.004, (h, w)))
    img = np.clip(np.where(field, img, 0.92 + rng.normal(0, 0.002, (h, w))), 0, 1)
    air = field & ~inside
    assert 0.02 < air.mean() < 0.05 and (inside & (img <= np.median(img))).sum() > 5 * air.sum()
    assert abs(background_level(img) - 0.02) < 0.01
    found = air_mask(img)
    assert (found & air).sum() > 0.9 * air.sum() and (found & inside).sum() <= 0.01 * inside.sum()


def test_a_small_pocket_of_air_cut_off_by_a_line_is_air():
    """A read-out line across the detector, brighter than the air threshold but darker than halfway to the breast,
    cuts a strip of air off along the top: too small to count as air on its own (AIR_MIN_SHARE), flat and joined
    to the rest of the air by the hysteresis through the line, so it is the same air. (Before, it was not air, and
    a pellet or the skin line where it meets the frame stayed a candidate.)"""
    img, inside = _breast(np.random.default_rng(9), shape=(400, 200))
    img[3] = np.clip(img[3] + 0.15, 0, 1)
    pocket = ~inside & (np.arange(img.shape[0]) < 3)[:, None]
    assert 0 < pocket.mean() < 0.01
    found = air_mask(img)
    assert found[pocket].mean() > 0.9 and (found & inside).sum() <= 0.001 * inside.sum()


def test_a_spot_views_collimator_covering_most_of_the_image_is_the_border_and_its_air_pocket_is_air():
    """A spot view coned to its paddle: the collimator's shadow covers 80 % of the image, so the image's darker
    half is mostly that shadow and it took the background level's vote. The border was then not found (nothing was
    brighter than the "background"), the field's real air was not air, and the breast's units and the air's
    contrast were the collimator's. The breast is brighter than the air but darker than the border: the shadow
    that took the vote, with the rest of the image darker than it, is the border, and the level is the field's."""
    from mammo_pipeline.model.air import background_level, unexposed_mask

    rng = np.random.default_rng(10)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    field = (yy >= 60) & (yy < 160) & (xx >= 40) & (xx < 140)  # a paddle-sized field: 20 % of the image
    inside = (np.hypot(yy - 110, xx - 40) < 75) & field  # the breast fills the field but its far corners
    tissue = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img = np.where(inside, 0.45 + 0.08 * tissue / tissue.std(), 0.02 + rng.normal(0, 0.004, (h, w)))
    img = np.clip(np.where(field, img, 0.92 + rng.normal(0, 0.002, (h, w))), 0, 1)
    air = field & ~inside
    assert (~field).mean() > 0.75 and air.mean() > 0.01
    assert abs(background_level(img) - 0.92) < 0.01  # the shadow takes the plain vote
    border = unexposed_mask(img)
    rim = field & ~ndimage.binary_erosion(field, iterations=4)  # where the spread's window straddles the edge
    assert not (border & field & ~rim).any() and border.sum() > 0.95 * (~field).sum()
    found = air_mask(img)
    assert (found & air).sum() > 0.9 * air.sum() and (found & inside).sum() <= 0.01 * inside.sum()
    assert away_from_air(img, 5)[110, 60]  # deep in the breast: a clip there is still a candidate


def test_a_spot_views_collimator_is_the_border_when_an_implant_makes_its_field_brighter_than_it():
    """A spot view over an implant: the field, filled by breast and a saturated implant, is brighter than the
    collimator's shadow that took the vote, so "the rest is darker than the border" cannot tell it from air. What
    that shadow leaves is a rectangle cut off from the frame's sides: a collimated field, so it is the border,
    the field holds no air, and a clip beside the implant stays a candidate."""
    from mammo_pipeline.model.air import unexposed_mask

    rng = np.random.default_rng(12)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    field = (yy >= 90) & (yy < 200) & (xx >= 4) & (xx < 100)  # the paddle's field, cut off from three sides
    implant = (((yy - 145) / 52.0) ** 2 + ((xx - 40) / 40.0) ** 2 < 1) & field
    tissue = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img = np.where(implant, 0.98, 0.35 + 0.1 * tissue / tissue.std())
    img = np.clip(np.where(field, img, 0.90 + rng.normal(0, 0.002, (h, w))), 0, 1)
    assert (~field).mean() > 0.75 and np.median(img[field]) > 0.9
    border = unexposed_mask(img)
    rim = field & ~ndimage.binary_erosion(field, iterations=4)
    assert not (border & field & ~rim).any() and border.sum() > 0.95 * (~field).sum()
    assert not air_mask(img).any()
    assert away_from_air(img, 5)[145, 88]  # in the tissue beside the implant


def test_an_implant_over_half_a_spot_views_field_does_not_take_the_air_level_from_its_air_pocket():
    """A spot view whose field is over half a saturated implant, with a small pocket of air at its far side: the
    implant's flat gray is then the field's median and the flattest thing in its "darker half", so it took the
    background level's vote; the threshold came out above 1 and the whole image was air (two clip images of held-out
    drops had no candidate at all). The air is darker than the breast: a level with nothing brighter than it is no
    air, and the level is voted again below it."""
    from mammo_pipeline.model.air import unexposed_mask

    rng = np.random.default_rng(13)
    h, w = 256, 200
    yy, xx = np.mgrid[0:h, 0:w]
    field = (yy >= 90) & (yy < 200) & (xx >= 4) & (xx < 100)
    implant = (((yy - 145) / 58.0) ** 2 + ((xx - 40) / 44.0) ** 2 < 1) & field
    pocket = field & (xx >= 88)  # air between the skin and the paddle's edge
    tissue = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img = np.where(implant, 0.98, 0.35 + 0.1 * tissue / tissue.std())
    img = np.where(pocket, 0.02 + rng.normal(0, 0.004, (h, w)), img)
    img = np.clip(np.where(field, img, 0.90 + rng.normal(0, 0.002, (h, w))), 0, 1)
    assert implant.sum() > 0.5 * field.sum() and np.median(img[field]) == 0.98  # the implant holds the median
    border = unexposed_mask(img)
    assert not (border & implant).any() and border.sum() > 0.95 * (~field).sum()
    threshold, _ = air_threshold(img, border)
    assert 0.02 < threshold < 0.3  # between the air and the tissue
    found = air_mask(img, border)
    assert (found & pocket).sum() > 0.9 * pocket.sum() and not (found & (implant | ~field)).any()
    assert away_from_air(img, 5)[145, 80]  # in the tissue beside the implant, 8 px from the air


def test_air_that_takes_the_background_vote_is_not_mistaken_for_a_border():
    """The other twin: in a contact view the air holds the background level and runs along the far side of the
    frame, but the rest of the image (the breast) is brighter than it, so it is air, not an unexposed border."""
    from mammo_pipeline.model.air import unexposed_mask

    img, inside = _breast(np.random.default_rng(11), shape=(256, 120))
    assert not unexposed_mask(img).any()
    assert (air_mask(img) == ~inside).mean() > 0.98


@pytest.mark.parametrize("tilt", [0, 8, 30])
def test_flat_bright_gland_touching_a_collimators_band_is_not_the_unexposed_border(tilt):
    """A film magnification view: the collimator's shadow is a straight band along the top (tilted by `tilt` px
    across the image, as a scanned film may be), and dense gland, cleared to the film base, is as bright and as
    flat as that shadow where it touches it. The border is the band up to its straight inner edge
    (`air._along_a_side`); before, the gland joined the band as one connected piece and was border, and a clip
    inside it had no candidate (stop 38). The tilted band stays border whole."""
    from mammo_pipeline.model.air import unexposed_mask

    rng = np.random.default_rng(9)
    img, _ = _breast(rng)
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    band = yy < 20 + tilt * xx / w  # the collimator's shadow along the top
    gland = np.hypot(yy - 45, xx - 30) < 40  # a flat bright gland at the chest wall, reaching up into the band
    img = np.where(band | gland, 0.95 + rng.normal(0, 0.002, (h, w)), img)
    border = unexposed_mask(np.clip(img, 0, 1))
    assert border[band].mean() > 0.99  # the band is border
    core = ndimage.binary_erosion(gland & ~band, iterations=12)
    assert core.any() and not border[core].any()  # the gland, beyond the border's rim, is not


def test_the_chest_wall_side_of_a_mirror_is_the_other_side_even_when_the_two_sides_tie():
    """`canonical` must give an image and its mirror the same pixels, so the chest-wall side of the mirror is always
    the other one: a tie of the two bands is broken by the pixels themselves, not by a fixed side."""
    from mammo_pipeline.model.air import canonical, chest_wall_side

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60)).astype(np.uint8)
    img[:, 30:] = img[:, :30][:, ::-1]  # the two bands tie ...
    img[5, 10], img[5, 49], img[6, 10], img[6, 49] = 200, 100, 100, 200  # ... but the image is not its mirror
    assert {chest_wall_side(img), chest_wall_side(img[:, ::-1])} == {0, -1}
    np.testing.assert_array_equal(canonical(img)[0], canonical(img[:, ::-1])[0])
    brighter_right = np.tile(np.linspace(0, 255, 61).astype(np.uint8), (30, 1))
    assert chest_wall_side(brighter_right) == -1 and chest_wall_side(brighter_right[:, ::-1]) == 0
    assert canonical(brighter_right)[1] and not canonical(brighter_right[:, ::-1])[1]
