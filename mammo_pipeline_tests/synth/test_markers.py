"""Clips are near-saturated and sharp (a share below saturation); look-alike confounders are just as bright."""

import numpy as np
import pytest
from scipy import ndimage

from mammo_pipeline.synth import markers


@pytest.mark.parametrize("shape", markers.CLIP_SHAPES)
def test_each_clip_shape_is_near_saturated_with_a_sharp_edge(shape):
    img = np.full((80, 80), 0.4, dtype=np.float32)
    segments = markers._shape_segments(shape, np.random.default_rng(0)) * 30 + 40
    patch, origin = markers.render_segments(segments, thickness=4)
    share = markers.stamp(img, patch, origin, markers.metal_value(np.random.default_rng(0)))
    metal = img >= markers.CLIP_MIN
    assert share == 1.0 and 20 < metal.sum() < 900
    rim = (img > 0.41) & ~metal  # antialiased rim: at most one pixel around the stroke
    assert rim.sum() <= metal.sum()


@pytest.mark.parametrize("shape", markers.CLIP_SHAPES)
def test_each_clip_shape_is_centred_in_the_unit_square(shape):
    """`_shape_segments` draws in [-0.5, 0.5]: scaled by the clip's length, the clip is centred where it is placed."""
    for seed in range(20):
        segments = markers._shape_segments(shape, np.random.default_rng(seed))
        assert np.abs(segments).max() <= 0.5
        lo, hi = segments.reshape(-1, 2).min(axis=0), segments.reshape(-1, 2).max(axis=0)
        assert np.all(np.abs(lo + hi) <= 0.2)  # the bounding box's centre near the origin


class _Upper:
    """A generator stand-in whose uniform draws return the upper bound (the largest bead)."""

    def uniform(self, low: float, high: float) -> float:
        return high


@pytest.mark.parametrize(("rng", "length", "stroke"), [(np.random.default_rng(s), 43, 4) for s in range(4)]
                         + [(_Upper(), 43, 4), (_Upper(), 57, 4.3), (_Upper(), 86, 6.4)])  # fmt: skip
def test_a_barbells_beads_are_solid_and_wider_than_its_wire(rng, length, stroke):
    """A barbell clip is two solid metal beads on a wire (realism.md section 4), not two rings: a 3-4 mm clip at
    0.07 mm per px (43-57 px) down to the thinnest stroke the generator draws (0.3 mm over 4 mm, 0.075 of the
    length: `synth.image`), the beads from their smallest to their largest radius."""
    segments = markers._shape_segments("barbell", rng)
    radius = float(segments[1:, :, 1].max())  # the beads' outer loop; segment 0 is the wire along y = 0
    patch, origin = markers.render_segments(segments * length + 60, thickness=stroke)
    yy, xx = np.mgrid[: patch.shape[0], : patch.shape[1]]
    for end in (-0.5 + radius, 0.5 - radius):
        centre = (60 - origin[0], end * length + 60 - origin[1])
        bead = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (radius * length) ** 2
        assert patch[bead].min() > 0.5  # no hole
    wire = patch[:, patch.shape[1] // 2] > 0.5
    assert wire.sum() < 2 * radius * length  # the middle is the wire (or the beads' waist), narrower than a bead


def test_inside_share_counts_what_the_frame_keeps():
    patch, origin = markers.clip_stroke(np.random.default_rng(1), (50, 0), 20, 3)
    share = markers.inside_share((100, 100), patch, origin)
    assert 0.2 < share < 0.8  # centred on the left edge: about half is cut off
    far = markers.inside_share((100, 100), patch, (origin[0], origin[1] - 500))
    assert far == 0.0


@pytest.mark.parametrize(
    "draw",
    [
        lambda img, rng: markers.draw_skin_marker(img, rng, (30, 30), radius=6, ring=False),
        lambda img, rng: markers.draw_skin_marker(img, rng, (30, 30), radius=6, ring=True),
        lambda img, rng: markers.draw_triangle_marker(img, rng, (30, 30), side=20),
        lambda img, rng: markers.draw_popcorn(img, rng, (30, 30), size=12),
        lambda img, rng: markers.draw_tram_track(img, rng, (20, 20), length=30, gap=5, width=2),
        lambda img, rng: markers.draw_polyline(img, rng, np.array([[10, 10], [30, 40], [50, 50]]), 2, broken=True),
        lambda img, rng: markers.draw_lead_letters(img, rng, "LCC", (5, 5), height=12),
        lambda img, rng: markers.draw_implant(img, rng, (30, 30), (20, 15)),
        lambda img, rng: markers.draw_device(img, rng, (5, 20), size=30),
    ],
)
def test_confounders_reach_clip_level_inside_their_box(draw):
    img = np.full((60, 60), 0.3, dtype=np.float32)
    box = draw(img, np.random.default_rng(0))
    assert box is not None
    r0, r1, c0, c1 = box
    inside = np.zeros(img.shape, dtype=bool)
    inside[r0:r1, c0:c1] = True
    assert img[inside].max() >= markers.CLIP_MIN  # as bright as metal clips
    assert (img[~inside] <= 0.3 + 0.5).all() and (img[~inside] < markers.CLIP_MIN).all()  # nothing outside its box


def test_most_clips_saturate_and_an_unsaturated_one_stands_above_the_tissue_around_it():
    rng = np.random.default_rng(0)
    contrasts = [markers.unsaturated_contrast(rng, dense=i % 2 == 0) for i in range(800)]
    assert all(c is None for c in contrasts[1::2])  # outside dense tissue a clip saturates
    unsaturated = [c for c in contrasts if c is not None]
    assert 0.15 < len(unsaturated) / len(contrasts) < 0.35 and all(0.12 <= c <= 0.3 for c in unsaturated)
    tissue = np.clip(0.5 + 0.25 * np.sin(np.arange(80)[:, None] / 3.0) * np.cos(np.arange(80)[None, :] / 4.0), 0, 1)
    for contrast in (None, 0.15):  # saturated metal, then a marker over strongly varying tissue
        img = tissue.astype(np.float32).copy()
        _, _, saturated = markers.draw_clip(img, np.random.default_rng(1), (40.0, 40.0), 30.0, 3.0, contrast)
        assert saturated == (contrast is None)
        covered = img > tissue + 1e-6
        assert covered.sum() > 30
        if contrast is None:
            assert (img[covered] >= markers.CLIP_MIN).mean() > 0.5  # the blended 1-px rim aside, at saturation
        else:
            lift = img - tissue
            core = lift > 0.5 * lift.max()
            assert core.sum() > 20 and img.max() < markers.CLIP_MIN  # visible everywhere, never saturated
            # one lift for the whole stroke, rolled off below the ceiling (not clipped): the tissue's texture shows
            # through it, in the same order ...
            inner = ndimage.binary_erosion(core)
            order = np.argsort(tissue[inner], kind="stable")
            assert inner.sum() > 20 and (np.diff(img[inner][order]) >= -1e-6).all()
            assert img[inner].std() > 0.25 * tissue[inner].std() and img.max() < markers.CLIP_MIN - 0.03
            # ... and the stroke stands `contrast` above the bright end of the tissue around it
            ring = ndimage.binary_dilation(covered, iterations=3) & ~covered
            assert np.median(img[core]) >= np.percentile(img[ring], 90) + contrast


def test_an_unsaturated_clip_over_an_implant_is_drawn_as_metal():
    """Tissue around at or above the unsaturated ceiling (an implant) leaves no room: the clip is saturated metal."""
    img = np.full((80, 80), 0.99, dtype=np.float32)
    _, box, saturated = markers.draw_clip(img, np.random.default_rng(1), (40.0, 40.0), 30.0, 3.0, 0.2)
    assert saturated and box is not None
    assert not markers.add(np.full((40, 40), 0.92, np.float32), np.ones((5, 5), np.float32), (10, 10), 0.2, 0.945)


def test_unknown_clip_shape_is_rejected():
    with pytest.raises(ValueError, match="unknown clip shape 'star'"):
        markers._shape_segments("star", np.random.default_rng(0))


def test_clips_are_placed_off_what_is_already_metal_white():
    """A clip over an implant (or a marker) cannot be seen, and the labels are visual: clip centres keep clear of
    every pixel already at metal brightness, so no clip is drawn inside an implant."""
    from mammo_pipeline.synth.image import ImageSpec, _inside_points, draw_image

    mask, r = np.ones((200, 200), bool), np.zeros((200, 200), np.float32)
    avoid = np.zeros((200, 200), bool)
    avoid[:, :120] = True
    points = _inside_points(np.random.default_rng(0), mask, r, (0, 200, 0, 200), 50, avoid, 20.0)
    assert min(c for _, c in points) >= 120 + 20 - 2  # (the grid step of the search is 1 px here)

    inside = 0
    for seed in range(12):
        spec = ImageSpec(rows=480, cols=360, pixel_spacing=0.5, scale=0.125, view="CC", laterality="L",
                         biopsy=True, mag=False, vendor="H", force=("implant",))  # fmt: skip
        _, drawn = draw_image(spec, np.random.default_rng(seed))
        implants = [b for kind, *b in drawn.boxes if kind == "implant"]
        clips = [b for kind, *b in drawn.boxes if kind.startswith("clip")]
        for r0, r1, c0, c1 in implants:  # the oval holds the middle half of its box in each direction
            dr, dc = (r1 - r0) / 4, (c1 - c0) / 4
            for q0, q1, p0, p1 in clips:
                cr, cc = (q0 + q1) / 2, (p0 + p1) / 2
                assert not (r0 + dr < cr < r1 - dr and c0 + dc < cc < c1 - dc), (seed, (cr, cc))
        inside += bool(implants and clips)
    assert inside >= 6  # the check ran on images holding both


def test_dense_tissue_is_where_the_centimetre_around_is_brighter_than_the_breasts_median():
    img = np.full((60, 60), 0.3, np.float32)
    img[:, 30:] = 0.7  # fat on the left, gland on the right
    median = float(np.median(img))
    assert markers.in_dense_tissue(img, (30.0, 50.0), 5, median)
    assert not markers.in_dense_tissue(img, (30.0, 10.0), 5, median)


def test_a_spot_view_is_coned_to_its_paddle_and_a_magnification_view_keeps_most_of_the_detector():
    # realism.md §5: a 7-10 cm spot paddle at 1x spans about a third of a 24-30 cm detector; the magnification
    # views' field (1-3 sides collimated by at most a fifth each) keeps at least 0.6 x 0.8 of it
    from mammo_pipeline.synth.image import ImageSpec, draw_image

    base = dict(rows=600, cols=480, pixel_spacing=0.5, scale=0.125, view="CC", laterality="L", biopsy=True)
    for seed in range(6):
        _, spot = draw_image(ImageSpec(**base, mag=False, spot=True), np.random.default_rng(seed))
        _, mag = draw_image(ImageSpec(**base, mag=True, spot=True), np.random.default_rng(seed))
        (r0, r1, c0, c1), (m0, m1, n0, n1) = spot.field, mag.field
        for side_px in (r1 - r0, c1 - c0):
            assert 80 / 0.5 - 1 <= side_px <= 130 / 0.5 + 1, (seed, spot.field)  # paddle + margins, in mm
        assert 0 <= r0 < r1 <= 600 and 0 <= c0 < c1 <= 480
        assert (r1 - r0) * (c1 - c0) < 0.25 * 600 * 480 < 0.45 * 600 * 480 < (m1 - m0) * (n1 - n0), seed
        clips = [b for kind, *b in spot.boxes if kind.startswith("clip")]
        assert clips and all(r0 <= q0 and q1 <= r1 and c0 <= p0 and p1 <= c1 for q0, q1, p0, p1 in clips), seed


def test_a_clip_with_nowhere_visible_to_go_is_recorded_hidden_and_its_view_is_labeled_without_a_marker(
    monkeypatch, tmp_path
):
    """A spot view over an implant can leave no free point in its field: before, the clip was drawn on the
    implant, invisible, and the truth still called the view a biopsy-marker view. Now the field's whole breast is
    searched; a clip still drawn on metal-white is counted hidden (box `hidden_clip`), and a view whose every
    marker is hidden is labeled without one (the labels are visual)."""
    from mammo_pipeline.synth import drops, image
    from mammo_pipeline.synth.image import ImageSpec, draw_image

    def metal_everywhere(kind, img, *args):  # an 'implant' over the whole frame
        img[:] = 1.0
        return (0, img.shape[0] - 1, 0, img.shape[1] - 1)

    monkeypatch.setattr(image, "_draw_confounder", metal_everywhere)
    spec = ImageSpec(rows=480, cols=360, pixel_spacing=0.5, scale=0.125, view="CC", laterality="L",
                     biopsy=True, mag=False, spot=True, vendor="H", force=("implant",))  # fmt: skip
    for seed in range(4):
        _, drawn = draw_image(spec, np.random.default_rng(seed))
        clips = [kind for kind, *_ in drawn.boxes if "clip" in kind]
        assert drawn.n_clips_hidden == drawn.n_clips >= 1 and clips and set(clips) == {"hidden_clip"}

    hidden = image.Drawn(n_clips=1, n_clips_hidden=1)
    monkeypatch.setattr(drops, "draw_image", lambda spec, rng: (np.zeros((spec.rows, spec.cols), np.float32), hidden))
    drops.generate_drops(tmp_path, hospitals=1, studies_per_hospital=4, seed=3, scale=0.125, drop="d", workers=1)
    truth = drops.read_truth(tmp_path)
    assert (truth["n_clips_hidden"] == 1).all() and not truth["has_biopsy_marker"].any()
    assert set(truth["label"]) <= {"neither", "mag"}


def test_the_chest_wall_clip_is_not_stamped_on_an_implant():
    """The clip cut by the chest wall was stamped without the metal-white check of the clips inside: with an
    implant against the chest wall it often landed wholly on it, invisible, and the truth kept it as a clip."""
    from mammo_pipeline.synth.image import ImageSpec, draw_image
    from mammo_pipeline.synth.profiles import PROFILES

    p, seen = PROFILES["H-DIM"], 0
    for seed in range(60):
        spec = ImageSpec(round(p.rows / 8), round(p.columns / 8), p.pixel_spacing * 8, 0.125, "CC", "L", True, False,
                         force=("implant",))  # fmt: skip
        img, drawn = draw_image(spec, np.random.default_rng(seed))
        edge = [b for kind, *b in drawn.boxes if kind == "clip" and b[2] == 0]  # at the chest wall (L: column 0)
        seen += bool(drawn.marker_partly_outside and edge)
        for r0, r1, c0, c1 in edge:
            assert not (img[r0 : r1 + 1, c0 : c1 + 1] >= markers.CLIP_MIN).all(), seed
    assert seen >= 5  # the check ran


def test_a_film_clip_drawn_unsaturated_that_prints_at_the_films_clear_level_is_recorded_saturated():
    """A film caps every gray at its clear level (base + fog), which lies below the unsaturated clips' ceiling:
    a fifth of the film's 'unsaturated' clips printed exactly as white as metal."""
    from mammo_pipeline.synth.image import ImageSpec, draw_image
    from mammo_pipeline.synth.profiles import PROFILES

    p, n = PROFILES["FILM-DF"], 0
    for seed in range(30):
        for mag, spot in ((False, False), (False, True), (True, True)):
            spec = ImageSpec(round(p.rows / 8), round(p.columns / 8), p.pixel_spacing * 8, 0.125, "CC", "L", True,
                             mag, spot=spot, vendor="FILM", film=True)  # fmt: skip
            img, drawn = draw_image(spec, np.random.default_rng(seed))
            unsaturated = [b for kind, *b in drawn.boxes if kind == "clip_unsaturated"]
            assert len(unsaturated) == drawn.n_clips_unsaturated
            for r0, r1, c0, c1 in unsaturated:
                n += 1
                assert np.percentile(img[r0 : r1 + 1, c0 : c1 + 1], 98) < drawn.metal_gray - 2e-4, seed
    assert n >= 10


def test_a_popcorn_calcification_is_coarse_chunks_in_a_faint_mass_not_smooth_lobes():
    """Popcorn calcium is clustered coarse chunks with ragged outlines (BI-RADS), so its saturated area fills its
    convex hull far less than the 3-6 overlapping smooth discs drawn before stop 50 (median solidity 0.93, the
    outline of a barbell or heart clip); the fibroadenoma around it is lifted, never to clip level."""
    from skimage.morphology import convex_hull_image

    rng = np.random.default_rng(0)
    solidity, lifted = [], []
    for _ in range(40):
        img = np.full((120, 120), 0.4, dtype=np.float32)
        markers.draw_popcorn(img, rng, (60, 60), 30)
        hot = img >= markers.CLIP_MIN
        solidity.append(hot.sum() / convex_hull_image(hot).sum())
        around = ~ndimage.binary_dilation(hot, iterations=2) & (np.hypot(*np.mgrid[-60:60, -60:60]) < 20)
        lifted.append(float(img[around].mean()) - 0.4)
        assert img[~hot].max() <= markers.DISTRACTOR_MAX
    assert np.median(solidity) < 0.85
    assert min(lifted) > 0.01


def test_a_mass_or_lymph_node_is_a_lump_over_the_tissue_never_clip_bright():
    """A soft-tissue lump is added over the tissue (its texture shows through), stays below DISTRACTOR_MAX, and
    its box holds it; a lymph node's fatty hilum is a darker notch in its flank: the same draw with a hilum lifts
    less of the same lump."""
    tissue = 0.5 + 0.05 * np.random.default_rng(2).standard_normal((120, 120)).astype(np.float32)
    for seed in range(10):
        lifts = []
        for hilum in (False, True):
            img = tissue.copy()
            r0, r1, c0, c1 = markers.draw_mass(img, np.random.default_rng(seed), (60, 60), 40, hilum=hilum)
            lifted = img - tissue
            assert img.max() <= markers.DISTRACTOR_MAX + 1e-6 and lifted.min() >= 0
            assert lifted[r0:r1, c0:c1].max() > 0.07
            assert lifted.sum() > 0.9 * lifted[max(0, r0 - 3) : r1 + 3, max(0, c0 - 3) : c1 + 3].sum()
            assert np.corrcoef(img[55:65, 55:65].ravel(), tissue[55:65, 55:65].ravel())[0, 1] > 0.8  # texture
            lifts.append(lifted.sum())
        assert lifts[1] < 0.95 * lifts[0]


def test_a_palpable_lump_marker_is_a_solid_pellet_inside_the_breast_over_its_mass():
    """A BB taped over a palpable lump projects inside the breast, not only on the nipple or the skin line: a solid
    metal disc over the middle of a drawn mass when the image has one (the digitized DDSM film has one), and it
    often brings its own mass (image.PALPABLE_MASS_SHARE). The triangle marks the same kind of lump."""
    from mammo_pipeline.synth.image import ImageSpec, draw_image

    with_mass = 0
    for seed in range(16):
        kind = ("lump_marker", "triangle_marker")[seed % 2]
        spec = ImageSpec(rows=480, cols=360, pixel_spacing=0.5, scale=0.125, view="CC", laterality="L",
                         biopsy=False, mag=False, vendor="H", force=(kind,))  # fmt: skip
        img, drawn = draw_image(spec, np.random.default_rng(seed))
        (marker,) = [b for k, *b in drawn.boxes if k == kind]
        masses = [b for k, *b in drawn.boxes if k == "mass"]
        assert kind in drawn.confounders and bool(masses) == ("mass" in drawn.lesions)
        r0, r1, c0, c1 = marker
        centre = ((r0 + r1) / 2, (c0 + c1) / 2)
        if masses:
            with_mass += 1
            assert any(q0 < centre[0] < q1 and p0 < centre[1] < p1 for q0, q1, p0, p1 in masses), seed
        if kind == "lump_marker":  # solid: its middle is metal, and round
            core = img[r0 : r1 + 1, c0 : c1 + 1] >= markers.CLIP_MIN
            assert core[core.shape[0] // 2, core.shape[1] // 2] and core.mean() > 0.6, seed
            assert abs((r1 - r0) - (c1 - c0)) <= 1
    assert 3 <= with_mass <= 14  # some lumps show as a mass, not all


def test_at_the_demos_scale_a_clip_is_about_as_long_as_a_real_one():
    """realism.md §4: clips are 2-4 mm. Below scale 0.5 a clip keeps about 1 mm of thickness (the 1024-px display's
    floor), but until stop 67 also at least 5 mm of length, larger than any real clip (every box's long side 5.0-8.1
    mm here, median 5.6); now at least about 3 mm on a 24-cm detector's matrix."""
    from mammo_pipeline.synth.image import ImageSpec, draw_image

    sides = []
    for seed in range(16):  # the NYU matrix at scale 0.25: 832 x 640 px at 0.28 mm
        spec = ImageSpec(rows=832, cols=640, pixel_spacing=0.28, scale=0.25, view="CC", laterality="L",
                         biopsy=True, mag=False, vendor="H")  # fmt: skip
        _, drawn = draw_image(spec, np.random.default_rng(seed))
        sides += [max(r1 - r0, c1 - c0) * 0.28 for kind, r0, r1, c0, c1 in drawn.boxes if kind.startswith("clip")]
    assert len(sides) >= 16
    assert min(sides) >= 2.0 and np.median(sides) <= 5.0, np.round(sorted(sides), 1)
