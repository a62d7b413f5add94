"""A digitized film's own marks: metal at base + fog, the clear film edge, dust specks, the scanner's uneven air."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mammo_pipeline.synth import film
from mammo_pipeline.synth.image import ImageSpec, draw_image
from mammo_pipeline.synth.markers import CLIP_MIN


def _film_spec(**kw) -> ImageSpec:
    base = dict(rows=600, cols=450, pixel_spacing=0.4, scale=0.125, view="CC", laterality="L", biopsy=True, mag=False)
    return ImageSpec(**{**base, "vendor": "FILM", "film": True, **kw})  # type: ignore[arg-type]


def test_display_and_density_are_the_scanners_linear_map_with_its_floor():
    od = np.array([0.2, 1.0, 3.0, 3.6, 4.0], dtype=np.float32)
    shown = film.to_display(od)
    assert np.allclose(film.to_od(shown[:4]), od[:4], atol=1e-5)  # invertible above the floor
    assert shown[4] == shown[3]  # beyond SCANNER_OD_MAX the scanner reads its floor
    assert 0.93 < film.clear_display(0.25) < film.clear_display(0.18) < 0.96


@pytest.mark.parametrize("seed", range(4))
def test_metal_on_film_is_exactly_as_bright_as_unexposed_film_never_brighter(seed):
    """Lead letters, pellets and clips stop the beam: the film stays at base + fog, the clear film edge's gray,
    below the detectors' CLIP_MIN; nothing on the film is brighter."""
    img, drawn = draw_image(_film_spec(force=("lead_letters", "nipple_marker")), np.random.default_rng(seed))
    clear = drawn.metal_gray
    assert 0.93 < clear < CLIP_MIN
    assert img.max() <= clear + 0.01  # the scanner's flare may lift it a little, never to metal on a detector
    metal = [b for kind, *b in drawn.boxes if kind in ("lead_letters", "nipple_marker", "clip")]
    assert metal
    for r0, r1, c0, c1 in metal:
        assert abs(float(img[r0:r1, c0:c1].max()) - clear) < 0.01


def test_a_detector_image_has_no_film_marks():
    _, drawn = draw_image(_film_spec(vendor="H", film=False), np.random.default_rng(0))
    assert drawn.film_edges == () and not drawn.film_dust and drawn.metal_gray == CLIP_MIN
    assert not any(kind.startswith("film_") for kind, *_ in drawn.boxes)


def test_the_film_edge_is_clear_film_and_the_air_beside_it_is_grainy_and_brightens_towards_it():
    """Air of OD 3.3 on a film with clear strips along all three free edges: the strips read base + fog, the air
    is noisy (read-out noise constant in transmittance) and flare lifts it near the strips."""
    rng = np.random.default_rng(3)
    rows, cols, spacing = 500, 400, 0.2
    img = film.to_display(np.full((rows, cols), 3.3, dtype=np.float32)).copy()
    img[:, :120] = film.to_display(np.float32(1.5))  # a breast against the chest wall (column 0)
    old = film.FILM_EDGE_P, film.DUST_P
    film.FILM_EDGE_P, film.DUST_P = 1.0, 0.0
    try:
        out = film.digitize(img, rng, 0.2, spacing)
    finally:
        film.FILM_EDGE_P, film.DUST_P = old
    assert out.edges == ("top", "bottom", "far")
    assert [k for k, _ in out.boxes] == ["film_edge"] * 3
    clear = film.clear_display(0.2)
    assert abs(float(np.median(img[:2])) - clear) < 0.01 and abs(float(np.median(img[:, -2:])) - clear) < 0.01
    mid = img[200:300, 200:260]  # air far from every strip
    near = img[200:300, cols - 70 : cols - 50]  # air 10-14 mm from the far strip
    grain = mid - ndimage.uniform_filter(mid, 9)  # read-out noise: 10^(OD - 3) x its SD at OD 3, per pixel area
    expected = film.NOISE_OD_AT_3 * 10 ** (3.3 - 3.0) * (film.SCANNER_PIXEL_MM / spacing) / film.OD_PER_DISPLAY
    assert 0.7 * expected < float(grain[5:-5, 5:-5].std()) < 1.3 * expected
    assert float(near.mean()) > float(mid.mean()) + 0.005  # flare from the clear strip


def test_dust_specks_are_small_sharp_and_boxed():
    rng = np.random.default_rng(5)
    img = film.to_display(np.full((400, 300), 1.6, dtype=np.float32)).copy()
    before = img.copy()
    old = film.FILM_EDGE_P, film.DUST_P
    film.FILM_EDGE_P, film.DUST_P = 0.0, 1.0
    try:
        out = film.digitize(img, rng, 0.2, 0.1)
    finally:
        film.FILM_EDGE_P, film.DUST_P = old
    specks = [b for k, b in out.boxes if k == "film_dust"]
    assert film.DUST_COUNT[0] <= len(specks) <= film.DUST_COUNT[1]
    for r0, r1, c0, c1 in specks:
        assert (r1 - r0) * 0.1 <= 1.0 and (c1 - c0) * 0.1 <= 1.0  # at most a millimetre across
        assert float(img[r0:r1, c0:c1].max()) > float(np.median(before)) + 0.1  # white on the tissue
