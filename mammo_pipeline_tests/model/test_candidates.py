from __future__ import annotations

import numpy as np
import pytest

from mammo_pipeline.model.air import SKIN_DEPTH, away_from_air
from mammo_pipeline.model.candidates import (
    CHANNELS,
    CROP,
    ONE_DOME_IN,
    SECOND_LOOK_VERSION,
    K,
    air_grid,
    blob_score,
    candidates,
    fill_holes,
)
from mammo_pipeline.model.preprocess import CHANNEL_RANGE


def _tissue(rng: np.random.Generator, shape=(512, 400)) -> np.ndarray:
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3)
    img = np.where(np.arange(shape[1])[None, :] > 60, 120 + 10 * noise / noise.std(), 0)
    return np.clip(img, 0, 255)


def _ribbon(img: np.ndarray, where: tuple[int, int], value: float = 250) -> None:
    img[where[0] - 1 : where[0] + 2, where[1] - 6 : where[1] + 7] = value  # a 3 x 13 px ribbon


def test_the_strongest_candidate_is_the_stamped_clip_and_its_crop_is_centred_on_it():
    rng = np.random.default_rng(0)
    for where in [(100, 200), (400, 90), (260, 350)]:
        img = _tissue(rng)
        _ribbon(img, where)
        crops, centres, scores = candidates(img.astype(np.uint8), k=4)
        assert crops.shape == (4, CHANNELS, CROP, CROP) and crops.dtype == np.float32
        assert centres.shape == (4, 2) and scores.shape == (4,) and scores.dtype == np.float32
        assert np.hypot(*(centres[0] - np.array(where))) <= 7 and scores[0] == scores.max()
        assert crops[0, 0, CROP // 2 - 2 : CROP // 2 + 2].max() >= 1.5  # far above the tissue range in the middle
        assert scores[0] > 1.5 * scores[1]  # texture maxima score far lower


def test_a_bright_curved_skin_line_and_a_straight_wire_do_not_outrank_an_equally_bright_clip():
    """Lines of any curvature are ridges, not blobs: a clip as bright as they are comes first, far ahead."""
    img = _tissue(np.random.default_rng(2))
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    rim = np.abs(np.hypot(yy - 256, xx + 40) - 330) <= 1.5  # a 3-px bright arc, like an equalized skin rim
    img[rim & (img > 0)] = 255
    line = np.abs(yy * 80 - (xx - 70) * 511) / np.hypot(80, 511) <= 1.5  # a straight 3-px wire or vessel across
    img[line] = 255  # the tissue from edge to edge (a line's end or a crossing of two lines is a blob: docs/history.md)
    _ribbon(img, (300, 200), value=255)
    _, centres, scores = candidates(img.astype(np.uint8), k=3)
    assert np.hypot(*(centres[0] - np.array((300, 200)))) <= 7
    assert scores[0] > 1.5 * scores[1]


def test_the_context_channel_shows_the_skin_line_beside_a_bead_under_the_skin():
    img = _tissue(np.random.default_rng(3))
    img[250:256, 73:79] = 255  # a BB 15 px (3 % of the long side) inside the skin line at column 60
    crops, centres, _ = candidates(img.astype(np.uint8), k=1)
    assert np.hypot(*(centres[0] - np.array((253, 76)))) <= 3
    # cut with the chest wall at column 0 (this image's air is on the left, so it is cut mirrored): read back as
    # stored, context pixel j covers columns 76 - 48 + 3j .. + 2 (one off): air up to j = 10, tissue from 11
    context = crops[0, 1][:, ::-1]
    half = CROP // 2
    assert context[half, 1:10].max() < 0 < context[half, 12 : CROP - 1].min()  # air left, tissue right


def test_nothing_in_the_air_or_on_the_skin_line_is_a_candidate():
    """Lead letters in the air and a pellet on the skin line are as bright as a clip and rounder; a clip lies
    in the tissue, so only the clip is a candidate (air.py)."""
    img = _tissue(np.random.default_rng(5))
    img[100:110, 20:24], img[100:104, 20:30] = 255, 255  # an "L" in the air
    img[300:306, 57:63] = 255  # a pellet on the skin line (column 60)
    img[200:203, 240:248] = 200  # a fainter, thinner clip deep in the tissue
    _, centres, scores = candidates(img.astype(np.uint8), k=4)
    found = centres[scores > 0]
    assert np.hypot(*(found[0] - np.array((201, 244)))) <= 5
    assert (found[:, 1] >= 60 + SKIN_DEPTH * img.shape[0] - 2).all()


def test_the_flank_of_a_pellet_on_the_skin_line_is_no_candidate():
    """Masking the air margin cuts a pellet's blob response at the margin, not at its foot: the response's flank
    just inside was a candidate whose crop held the pellet (three real NYU views, docs/history.md). A candidate
    is a local maximum of the blob measure before the margin is masked, so nothing within half a crop of the
    pellet is one, while the clip still is."""
    for seed in range(3):
        img = _tissue(np.random.default_rng(20 + seed))
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        img[np.hypot(yy - 300, xx - 66) <= 4] = 255  # a 9-px (3 mm) pellet in the margin, its inner edge at 70
        _ribbon(img, (150, 250), value=220)
        _, centres, scores = candidates(img.astype(np.uint8), k=8)
        found = centres[scores > 0]
        assert np.hypot(*(found[0] - np.array((150, 250)))) <= 7
        assert (np.abs(found - np.array((300, 66))).max(axis=1) > CROP // 2).all()  # version 6: one at (300, 70)


def test_air_grid_is_the_air_the_candidates_avoid():
    """`air_grid` (what bench_air measures) finds the air left of the skin line, and every candidate lies where
    the skin band around that air is not."""
    img = _tissue(np.random.default_rng(6)).astype(np.uint8)
    img[300:306, 57:63] = 255  # a pellet on the skin line
    grid, step = air_grid(img)
    assert grid.shape == (img.shape[0] // step, img.shape[1] // step) and 0 <= grid.min() <= grid.max() <= 1
    inside = away_from_air(grid, SKIN_DEPTH * max(img.shape) / step)
    assert not inside[:, : 60 // step].any() and inside[:, (60 + 20) // step :].all()
    _, centres, scores = candidates(img, k=8)
    for r, c in centres[scores > 0]:
        assert inside[min(r // step, inside.shape[0] - 1), min(c // step, inside.shape[1] - 1)]


def test_candidates_are_half_a_crop_apart_and_a_flat_image_has_none():
    img = _tissue(np.random.default_rng(1)).astype(np.uint8)
    _, centres, _ = candidates(img, k=6)
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(centres[i] - centres[j]).max() >= CROP // 2
    crops, centres, scores = candidates(np.full((64, 64), 90, np.uint8), k=3)
    assert (scores == 0).all() and (centres == -1).all() and (crops == 0).all()
    score, f = blob_score(np.full((1024, 800), 90, np.uint8))  # STROKE_SCALE 2 px: scored on 2x2 block means
    assert f == 2 and score.shape == (512, 400)
    assert isinstance(SECOND_LOOK_VERSION, str)


def test_a_one_millimetre_bead_at_display_size_is_found_and_centred():
    """A barbell clip's metal bead is ~1 mm: 4-5 px of a 1024-px display PNG, under the 2-3 mm clips' scales."""
    rng = np.random.default_rng(4)
    for where in [(300, 500), (700, 250)]:
        img = _tissue(rng, shape=(1024, 800))
        img[where[0] - 2 : where[0] + 3, where[1] - 2 : where[1] + 3] = 180  # bright, not saturated
        _, centres, _ = candidates(img.astype(np.uint8), k=3)
        assert np.hypot(*(centres[0] - np.array(where))) <= 3


def test_a_crop_at_the_frame_shows_the_breast_going_on_beyond_it_not_air():
    """Where the frame cuts the breast (chest wall, a cropped image) the crop's missing part is mirrored: black
    padding would draw a skin line there and make the object look like a skin marker."""
    img = _tissue(np.random.default_rng(6))
    img[:, :61] = img[:, 61:122]  # tissue from edge to edge: no air
    img[28:34, 198:204] = 255  # a bead near the top of the frame
    crops, centres, _ = candidates(img.astype(np.uint8), k=1)
    assert np.hypot(*(centres[0] - np.array((31, 201)))) <= 3
    context = crops[0, 1]  # rows 0-5 of the context channel lie above the frame
    assert (context[:5] > CHANNEL_RANGE[0]).all()  # tissue, not black padding (air: the channel's floor)


def _ring(img: np.ndarray, where: tuple[int, int], radius: float, stroke: float, value: float = 250) -> None:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    img[np.abs(np.hypot(yy - where[0], xx - where[1]) - radius) <= stroke / 2] = value


def test_fill_holes_turns_a_ring_into_a_disc_and_leaves_an_open_arc_alone():
    ring = np.zeros((64, 64), np.float32)
    _ring(ring, (32, 32), 10, 3)
    assert fill_holes(ring)[32, 32] == 250  # the hole rises to its rim's lowest level
    arc = ring.copy()
    arc[:, :32] = 0  # half a ring encloses nothing
    assert (fill_holes(arc) == arc).all()


def test_a_magnified_ring_clip_among_small_specks_is_a_candidate():
    """A ring clip in a magnification view is a closed ridge about 6 mm across (24 px of a 1024-px display).
    Up to version 9, without the top-hat's hole filled, the blob measure ranked it below 3-px specks
    (microcalcifications, tissue dots) and it was no candidate at all; since version 10, with the hole of its
    stroke energy left open, the score peaks on the ring, 14 px from the clip's centre (this test fails either
    way)."""
    rng = np.random.default_rng(8)
    for where in [(400, 300), (600, 500)]:
        img = _tissue(rng, shape=(1024, 800))
        for r, c in rng.integers((100, 120), (1000, 780), size=(60, 2)):
            img[r - 1 : r + 2, c - 1 : c + 2] = 200
        _ring(img, where, 12, 4)
        _, centres, _ = candidates(img.astype(np.uint8))
        assert min(np.hypot(*(c - np.array(where))) for c in centres) <= 6


def test_a_coned_views_crops_are_in_units_of_its_breast_not_of_its_collimator():
    """A collimator's shadow is as bright as dense tissue but is none: cut from the same breast, a clip's crop reads
    the same with or without a wide unexposed border around the field (before, the border's gray set the 99th
    percentile, so a coned view's tissue and its clip read darker than a contact view's)."""
    rng = np.random.default_rng(8)
    img = _tissue(rng)
    img[:, :60] = 10 + rng.normal(0, 1, (img.shape[0], 60))  # air beside the breast, as a coned view's field has
    _ribbon(img, (260, 200), value=200)
    coned = img.copy()
    coned[400:], coned[:, 330:] = 235, 235  # the collimator's flat shadow below and beyond the field
    coned = np.clip(coned + rng.normal(0, 0.5, img.shape) * (coned == 235), 0, 255)
    plain, centres, _ = candidates(np.clip(img, 0, 255).astype(np.uint8), k=1)
    shaded, centres_coned, _ = candidates(coned.astype(np.uint8), k=1)
    assert np.hypot(*(centres[0] - np.array((260, 200)))) <= 7
    assert (centres_coned[0] == centres[0]).all()
    assert np.abs(shaded[0, 0] - plain[0, 0]).max() < 0.05  # the native crop in the same units


def _strokes(img: np.ndarray, where: tuple[int, int], shape: str, arm: int = 10, half_width: int = 2, value=170):
    """Stamp a clip of straight strokes centred on `where`: "T", "+" or "X", arms `arm` px, strokes 2 * half_width
    + 1 px wide (a 3-4 mm clip of 0.5-1 mm wire in a magnification view, at 1024 px)."""
    r, c, w = where[0], where[1], half_width
    if shape in ("T", "+"):
        img[r - arm : r + arm + 1, c - w : c + w + 1] = value
        top = r - arm if shape == "T" else r
        img[top - w : top + w + 1, c - arm : c + arm + 1] = value
    else:
        for i in range(-arm, arm + 1):
            img[r + i - w : r + i + w + 1, c + i - w : c + i + w + 1] = value
            img[r + i - w : r + i + w + 1, c - i - w : c - i + w + 1] = value


def test_a_clip_of_crossed_strokes_among_small_specks_is_the_first_candidate():
    """A "T", "+" or "X" clip is ridges, no blob: the blob measure of the top-hat (version 9) scored such clips
    1.2-1.9 times the tissue's 99th percentile, under the 24th candidate among specks; the blob measure of the
    stroke energy (version 10) sees the whole clip as one compact cluster of strokes, far ahead of the specks
    (this test fails on version 9)."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for shape, where in [("T", (400, 300)), ("+", (650, 520)), ("X", (300, 600))]:
        img = _tissue(rng, shape=(1024, 800))
        for r, c in rng.integers((100, 120), (1000, 780), size=(120, 2)):
            img[r - 1 : r + 2, c - 1 : c + 2] = 200
        clip = np.zeros(img.shape)
        _strokes(clip, where, shape, value=1)
        _strokes(img, where, shape)
        _, centres, scores = candidates(img.astype(np.uint8))
        assert ndimage.binary_dilation(clip > 0, iterations=2)[tuple(centres[0])], shape  # on the clip's strokes
        assert scores[0] > 1.5 * scores[1], shape


def _gland_with_vessels(rng: np.random.Generator, shape=(512, 400), n=60) -> np.ndarray:
    """Dense gland crossed by `n` short bright vessels: their crossings and ends are blobs of stroke energy."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(0, 1, shape), 3)
    img = np.where(np.arange(shape[1])[None, :] > 60, 170 + 8 * noise / noise.std(), 0.0)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _ in range(n):
        r, c, a = rng.uniform(0, shape[0]), rng.uniform(80, shape[1]), rng.uniform(0, np.pi)
        across = np.abs((yy - r) * np.cos(a) - (xx - c) * np.sin(a))
        along = np.abs((yy - r) * np.sin(a) + (xx - c) * np.cos(a))
        img[(across <= 1.0) & (along <= 40) & (xx > 60)] += 45
    return img


def _soft_core(shape: tuple[int, int], where: tuple[int, int], height: float) -> np.ndarray:
    """A 9 x 7 px marker core with a blurred outline (Gaussian sigma 1.5 px), peak `height` gray levels."""
    from scipy import ndimage

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    core = ((np.abs(yy - where[0]) <= 4) & (np.abs(xx - where[1]) <= 3)).astype(float)
    core = ndimage.gaussian_filter(core, 1.5)
    return height * core / core.max()


def test_a_dim_soft_marker_core_in_gland_full_of_vessels_is_a_candidate():
    """An unsaturated clip in dense gland (a polymer marker's core) is brighter than everything around it but
    holds less stroke energy than the vessels' crossings and ends: none of the 24 blob candidates of version 11
    lay on it (this test fails there); one slot in ONE_DOME_IN goes to such domes."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = _gland_with_vessels(rng)
        where = (int(rng.integers(150, 360)), int(rng.integers(150, 330)))
        img += _soft_core(img.shape, where, 60)
        _, centres, _ = candidates(np.clip(img, 0, 255).astype(np.uint8))
        assert np.hypot(*(centres - np.array(where)).T).min() <= CROP / 4  # a crop holds it, near its middle
    assert K // ONE_DOME_IN >= 1


def test_a_dome_must_be_brighter_than_everything_on_its_brim():
    """Of two soft cores a centimetre apart (within each other's brim) only the brighter is a dome; alone, the
    fainter is one."""
    from mammo_pipeline.model.candidates import STROKE_SCALE, _domes, _grid, _grid_factor, _searchable

    def dome_at(img: np.ndarray, where: tuple[int, int]) -> float:
        f = _grid_factor(STROKE_SCALE * max(img.shape))
        image, _, _, border = _grid(img.astype(np.uint8), f, max(img.shape))
        domes = _domes(image, _searchable(image, border, max(img.shape), f), max(img.shape), f)
        r, c = where[0] // f, where[1] // f
        return float(domes[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3].max())

    base = _tissue(np.random.default_rng(4))
    faint, bright = (250, 200), (250, 240)
    alone = base + _soft_core(base.shape, faint, 40)
    both = alone + _soft_core(base.shape, bright, 80)
    assert dome_at(alone, faint) > 10  # gray levels, after the crown's Gaussian mean
    assert dome_at(both, faint) == 0 and dome_at(both, bright) > 10


@pytest.mark.parametrize("shape", [(1, 1024), (4, 1024), (1024, 7), (31, 1024), (1, 1), (2, 2)])
def test_an_image_thinner_than_a_crop_has_no_candidates_and_raises_nothing(shape):
    """A 1 x 50000 object renders to 1 x 1024: the search's air and frame steps need rows to work on (they raised,
    and the raise failed a whole hospital's predictions); nothing that thin holds a breast."""
    gray = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    crops, centres, scores = candidates(gray)
    assert crops.shape == (K, CHANNELS, CROP, CROP) and not crops.any() and not scores.any() and (centres == -1).all()


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_a_breast_stored_mirrored_gets_the_same_crops_and_scores_and_mirrored_centres(laterality):
    """Some vendors store one side mirrored. The candidates of the mirror are the same crops and scores (cut with the
    chest wall at column 0), and their centres are the mirror of the stored image's, on the clip in both."""
    from mammo_pipeline.synth.image import ImageSpec, draw_image
    from mammo_pipeline.synth.profiles import PROFILES

    key, profile = sorted(PROFILES.items())[0]
    scale = 1024 / max(profile.rows, profile.columns)  # the display PNG's size
    rows, cols = round(profile.rows * scale), round(profile.columns * scale)
    spec = ImageSpec(rows, cols, profile.pixel_spacing / scale, scale, "CC", laterality, True, False,
                     screening=False, vendor=key.split("-")[0], film=profile.secondary_capture)  # fmt: skip
    display, drawn = draw_image(spec, np.random.default_rng(3))
    gray = np.rint(np.clip(display, 0, 1) * 255).astype(np.uint8)
    mirror = gray[:, ::-1]
    crops, centres, scores = candidates(gray)
    m_crops, m_centres, m_scores = candidates(mirror)
    np.testing.assert_array_equal(m_crops, crops)
    np.testing.assert_array_equal(m_scores, scores)
    kept = centres[:, 0] >= 0
    np.testing.assert_array_equal(m_centres[:, 0], centres[:, 0])
    np.testing.assert_array_equal(m_centres[kept, 1], cols - 1 - centres[kept, 1])
    clips = [b for kind, *b in drawn.boxes if kind.startswith("clip")]
    assert clips
    on_clip = lambda found, flip: any(  # noqa: E731
        r0 <= r <= r1 and (cols - 1 - c1 if flip else c0) <= c <= (cols - 1 - c0 if flip else c1)
        for r, c in found
        for r0, r1, c0, c1 in clips
    )
    assert on_clip(centres, False) and on_clip(m_centres, True)


def test_at_one_display_size_the_scales_are_the_same_on_a_larger_canvas():
    """Version 16: displays are rendered at one pitch, so a 24 x 30 cm detector's is longer than an 18 x 24 cm
    one's; the scales are shares of the display size (`long_side`), not of the image's own long side. The same
    breast and clip on a 1.25x longer canvas (air below: a larger detector, or a black border round air at the
    same value) then give the same candidates, crops and scores; by the canvas's own long side they did not."""
    img = _tissue(np.random.default_rng(8))
    _ribbon(img, (200, 220))
    tall = np.vstack([img, np.zeros((128, 400))])  # 640 x 400: the same breast, more air
    small = candidates(img.astype(np.uint8), k=3, long_side=512)
    large = candidates(tall.astype(np.uint8), k=3, long_side=512)
    own = candidates(tall.astype(np.uint8), k=3)  # long_side None: the canvas's own 640
    assert np.hypot(*(large[1][0] - np.array((200, 220)))) <= 3
    assert np.array_equal(small[1], large[1]) and np.allclose(small[0], large[0])
    ratio = large[2] / small[2]  # the same blob measure; its tissue percentile (the unit) moves with the air share
    assert np.allclose(ratio, ratio[0], rtol=1e-3) and 0.9 < ratio[0] < 1.1
    assert not np.array_equal(own[1], large[1])  # the canvas's own long side: other scales, other candidates


def test_a_clip_beside_an_implant_that_fills_most_of_a_spot_views_field_is_a_candidate():
    """A spot view whose field is over half a saturated implant, with a pocket of air at its far side: the
    implant's flat gray held the field's median and took the air's background vote, the whole field was air and the
    image had no candidate at all (second-look version 17; `test_air.py` has the rule itself)."""
    from scipy import ndimage

    rng = np.random.default_rng(14)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (512, 400)), 3)
    img = 120 + 10 * noise / noise.std()  # tissue from the chest wall (column 0) on
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    field = (yy >= 250) & (yy < 400) & (xx < 160)  # the paddle's field against the chest wall, an eighth of the image
    implant = (((yy - 325) / 75.0) ** 2 + (xx / 120.0) ** 2 < 1) & field
    img = np.where(implant, 252, img)
    img = np.where(field & (xx >= 145), 8 + rng.normal(0, 1, img.shape), img)  # air between skin and paddle edge
    img = np.where(field, img, 235 + rng.normal(0, 0.5, img.shape))  # the collimator's flat shadow
    assert implant.sum() > 0.5 * field.sum()
    clip = (275, 118)  # in the tissue between the implant and the air
    assert not implant[clip] and field[clip]
    _ribbon(img, clip, value=255)
    _, centres, _ = candidates(np.clip(img, 0, 255).astype(np.uint8))
    assert (centres[:, 0] >= 0).any()
    assert np.hypot(*(centres - np.array(clip)).T).min() <= 7
