"""The anatomy's building blocks do what their docstrings promise: the power-law texture keeps its exponent after
the work grid is upsampled, the one-FFT multiscale enhancement acts band by band, and the ligaments fan out
from the nipple."""

import numpy as np
import pytest

from mammo_pipeline.synth import anatomy, realism
from mammo_pipeline.synth.anatomy import NipplePolar, _Frame, multiscale_enhance, power_law_field, upsample


@pytest.mark.parametrize("beta", [2.8, 3.3])
def test_pre_emphasis_keeps_beta_through_the_bilinear_upsampling(beta):
    """A field drawn on the 0.4-mm work grid and upsampled 2x measures like one drawn at the fine pixel directly
    when pre-emphasised; without the pre-emphasis the upsampling damps the high frequencies (beta steeper)."""
    work_mm, out_mm, shape = anatomy.WORK_MM, anatomy.WORK_MM / 2, (300, 300)

    def measured(field: np.ndarray) -> float:
        grid = realism.to_grid(field, out_mm)
        return realism.power_spectrum_beta(grid, np.ones(grid.shape, dtype=bool))[0]

    big = (shape[0] * 2, shape[1] * 2)
    direct = measured(power_law_field(np.random.default_rng(5), big, out_mm, beta, stretch=1.0))
    rng = np.random.default_rng(5)
    emphasised = measured(upsample(power_law_field(rng, shape, work_mm, beta, stretch=1.0, interp_mm=work_mm), big))
    plain = measured(upsample(power_law_field(np.random.default_rng(5), shape, work_mm, beta, stretch=1.0), big))
    assert emphasised == pytest.approx(direct, abs=0.12)
    assert plain > direct + 0.4


def test_power_law_field_is_float32_unit_sd_and_deterministic():
    a = power_law_field(np.random.default_rng(1), (123, 77), 0.4, 3.2)
    b = power_law_field(np.random.default_rng(1), (123, 77), 0.4, 3.2)
    assert a.dtype == np.float32 and a.shape == (123, 77)
    assert a.std() == pytest.approx(1.0, abs=1e-3) and abs(float(a.mean())) < 1e-3
    assert np.array_equal(a, b)


def test_multiscale_enhance_is_identity_at_unit_gains_and_boosts_only_its_band():
    rng = np.random.default_rng(2)
    img = (0.3 + 0.05 * rng.standard_normal((200, 160))).astype(np.float32)
    mean = float(img.mean())
    same = multiscale_enhance(img, 0.4, (1.0, 1.0, 1.0, 1.0, 1.0), 1.0, mean)
    assert np.allclose(same, img, atol=1e-4)
    # white noise lives in the finest band: boosting it x3 triples the pixel-to-pixel differences,
    # boosting only the 4-8 mm band barely touches them
    fine = multiscale_enhance(img, 0.4, (3.0, 1.0, 1.0, 1.0, 1.0), 1.0, mean)
    coarse = multiscale_enhance(img, 0.4, (1.0, 1.0, 1.0, 1.0, 3.0), 1.0, mean)
    step = float(np.diff(img, axis=1).std())
    assert float(np.diff(fine, axis=1).std()) > 2.5 * step
    assert float(np.diff(coarse, axis=1).std()) < 1.1 * step
    # the coarsest band is compressed around the mean
    ramp = np.tile(np.linspace(0, 1, 160, dtype=np.float32), (200, 1))
    flat = multiscale_enhance(ramp, 0.4, (1.0, 1.0, 1.0, 1.0, 1.0), 0.5, float(ramp.mean()))
    assert np.ptp(flat[:, 40:120]) < 0.7 * np.ptp(ramp[:, 40:120])


def test_ligaments_fan_out_from_the_nipple():
    """Most ligament pieces point at the nipple: |cos| of the angle between a piece and the radius is well above
    the 2/pi of random directions."""
    polar = NipplePolar((150.0, 120.0), 0.7 * 150.0, 1.8)
    frame = _Frame(0.0, 0.0, 1.0, 1.0, 1.0, 1.0)  # work grid = contact view, 1 mm pixels
    lines, _, _ = anatomy.voronoi_ligaments(
        np.random.default_rng(3), frame, polar, 200.0, 11.0, 1.0, lambda x, y: (x > 0) & (x < 150)
    )
    assert len(lines) > 50
    cosines = []
    for pts, _ in lines:
        seg = pts[-1] - pts[0]
        mid = pts[len(pts) // 2] - np.array([150.0 - 0.5, 120.0 - 0.5])
        if np.hypot(*seg) > 1 and np.hypot(*mid) > 20:
            cosines.append(abs(seg @ mid) / (np.hypot(*seg) * np.hypot(*mid)))
    assert np.mean(cosines) > 0.69


@pytest.mark.parametrize("out_shape", [(70, 60), (100, 86), (140, 120)])
def test_area_upsample_is_the_full_size_image_area_averaged(out_shape):
    """--scale 0.25 images must look like area-averaged full-size ones: below 2 output pixels per work pixel the
    work grid's bilinear interpolant is averaged over each output pixel, not sampled at its centre."""
    from PIL import Image

    from mammo_pipeline.synth.anatomy import area_upsample, upsample

    work = np.random.default_rng(0).standard_normal((70, 60)).astype(np.float32)
    step = out_shape[0] / work.shape[0]
    full = upsample(work, (work.shape[0] * 48, work.shape[1] * 48))  # "full size": bilinear, many pixels per sample
    truth = np.asarray(Image.fromarray(full, mode="F").resize(out_shape[::-1], Image.BOX), dtype=np.float32)
    got = area_upsample(work, out_shape, step)
    assert got.shape == out_shape

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(((a - truth)[2:-2, 2:-2] ** 2).mean()))

    assert rms(got) < 0.01  # of a unit-SD field
    if step < 2.0:  # plain bilinear resizing (sampling the interpolant at pixel centres) is far off there
        assert rms(upsample(work, out_shape)) > 0.09
    if step == 1.0:  # the [1/8, 3/4, 1/8] kernel per axis
        expect = 0.75 * work[5, 5] + 0.125 * (work[4, 5] + work[6, 5])
        col = 0.75 * expect + 0.125 * (
            (0.75 * work[5, 4] + 0.125 * (work[4, 4] + work[6, 4]))
            + (0.75 * work[5, 6] + 0.125 * (work[4, 6] + work[6, 6]))
        )
        assert got[5, 5] == pytest.approx(col, abs=1e-5)
