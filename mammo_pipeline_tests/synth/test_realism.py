"""Realism statistics measure what they claim, and the report compares real and synthetic images (skipping
cleanly without the evaluation-only real images)."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import ndimage

from mammo_pipeline.cli.synth import command
from mammo_pipeline.model.air import background_level
from mammo_pipeline.synth import realism
from mammo_pipeline.synth.anatomy import power_law_field
from mammo_pipeline.synth.realism_report import RealdataMissing, compare, load_real, realdata_dir


@pytest.mark.parametrize("beta", [2.5, 3.0, 3.5])
def test_power_spectrum_beta_recovers_the_exponent_of_a_power_law_field(beta):
    field = power_law_field(np.random.default_rng(0), (400, 400), realism.GRID_MM, beta, stretch=1.0)
    estimate, n_rois = realism.power_spectrum_beta(field, np.ones(field.shape, dtype=bool))
    assert n_rois >= 9 and estimate == pytest.approx(beta, abs=0.25)


def test_power_spectrum_beta_needs_tissue_far_from_the_skin():
    field = power_law_field(np.random.default_rng(0), (100, 100), realism.GRID_MM, 3.0)
    mask = np.zeros(field.shape, dtype=bool)
    mask[40:60, 40:60] = True  # an 8 mm island: no ROI 15 mm inside the skin
    beta, n = realism.power_spectrum_beta(field, mask)
    assert n == 0 and np.isnan(beta)


def _disc_breast(shape=(300, 200), rim: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = ((yy - shape[0] / 2) / (0.45 * shape[0])) ** 2 + (xx / (0.8 * shape[1])) ** 2 < 1  # chest wall at col 0
    depth = realism._depth_mm(mask, realism.GRID_MM)
    img = np.where(mask, 0.3 + rim * np.exp(-depth / 1.0), 0.0).astype(np.float32)
    return img, mask


def test_skin_ratio_sees_a_bright_rim_and_a_flat_edge():
    flat, mask = _disc_breast()
    rimmed, _ = _disc_breast(rim=0.4)
    assert realism.skin_ratio(flat, mask) == pytest.approx(1.0, abs=0.02)
    assert realism.skin_ratio(rimmed, mask) > 1.5


def test_saturated_objects_are_told_apart_by_where_they_are():
    img, mask = _disc_breast()
    assert realism.saturated_objects(img, mask) == (False, False, False)
    air, skin, inside = img.copy(), img.copy(), img.copy()
    air[10:16, 185:191] = 1.0  # a lead letter in the air
    skin[148:154, 156:160] = 1.0  # a pellet on the skin line (the edge is at column ~160 on the middle row)
    inside[140:146, 40:46] = 1.0  # a clip deep inside
    assert realism.saturated_objects(air, mask) == (True, False, False)
    assert realism.saturated_objects(skin, mask) == (False, True, False)
    assert realism.saturated_objects(inside, mask) == (False, False, True)


def test_saturated_skin_rim_at_the_chest_wall_is_not_an_object_but_a_pellet_off_the_skin_is_on_the_skin():
    img, mask = _disc_breast()
    depth = realism._depth_mm(mask, realism.GRID_MM)
    rim = img.copy()
    rim[(depth > 0) & (depth <= 1.6) & (np.arange(img.shape[1])[None, :] < 12)] = 1.0  # rim at the chest wall
    assert realism.saturated_objects(rim, mask) == (False, False, False)
    far_rim = img.copy()
    far_rim[148:152, 150:160] = 1.0  # the same brightness on the skin line far from the chest wall: an object
    assert realism.saturated_objects(far_rim, mask) == (False, True, False)
    pellet = img.copy()
    pellet[147:153, 163:169] = 1.0  # a nipple pellet just outside the skin line (edge at column ~160)
    assert realism.saturated_objects(pellet, mask) == (False, True, False)
    assert realism.saturated_objects(np.fliplr(rim), np.fliplr(mask)) == (False, False, False)


def test_compare_counts_saturated_shares_on_synthetic_images_without_clips_only():
    real = pd.DataFrame({"kind": ["FFDM"] * 4})
    synth = pd.DataFrame({"kind": ["FFDM"] * 4, "label": ["neither", "neither", "biopsy", "both"]})
    for name in realism.STAT_NAMES:
        real[name], synth[name] = 1.0, 1.0
    for name in realism.SHARE_NAMES:
        real[name], synth[name] = False, False
    synth["saturated_inside"] = [False, False, True, True]  # clips only on the biopsy images
    table = compare(real, synth).set_index(["kind", "statistic"])
    row = table.loc[("FFDM", "share saturated_inside")]
    assert row["synthetic_median"] == 0.0 and row["n_synthetic"] == 2 and row["inside"]


def test_image_stats_of_a_textured_breast_are_finite_and_tophat_sees_small_bright_detail():
    img, _ = _disc_breast((800, 600), rim=0.3)
    texture = power_law_field(np.random.default_rng(1), img.shape, 0.2, 3.0)
    smooth = realism.image_stats(np.where(img > 0, img + 0.02 * texture, 0), 0.2)
    dotted = np.where(img > 0, img + 0.02 * texture, 0)
    for y in range(200, 600, 40):
        for x in range(60, 400, 40):
            dotted[y : y + 8, x : x + 8] += 0.4  # bright specks 1.6 mm wide
    specks = realism.image_stats(dotted, 0.2)
    for value in (smooth.beta, smooth.skin_ratio, smooth.noise, smooth.hist_p50):
        assert np.isfinite(value)
    assert specks.tophat_p999 > smooth.tophat_p999 + 20


def test_compare_calls_a_statistic_inside_the_real_range_or_within_20_percent_of_one_value():
    real = pd.DataFrame({"kind": ["FFDM", "FFDM", "FILM"], "beta": [2.8, 3.2, 3.0]})
    synth = pd.DataFrame({"kind": ["FFDM"] * 3 + ["FILM"] * 2, "beta": [3.0, 3.1, 3.3, 3.7, 3.8]})
    for name in realism.STAT_NAMES[1:]:
        real[name], synth[name] = 1.0, 1.0
    for name in realism.SHARE_NAMES:
        real[name], synth[name] = False, False
    table = compare(real, synth).set_index(["kind", "statistic"])
    assert table.loc[("FFDM", "beta"), "inside"]  # median 3.1 in [2.8, 3.2]
    assert not table.loc[("FILM", "beta"), "inside"]  # median 3.75 > 3.0 * 1.2


def test_realism_report_is_skipped_with_a_message_without_real_images(tmp_path):
    with pytest.raises(RealdataMissing):
        load_real(tmp_path / "nowhere")
    args = [str(tmp_path / "landing"), "--hospitals", "1", "--studies-per-hospital", "1", "--scale", "0.05"]
    args += ["--workers", "1", "-s", "--realism-report", str(tmp_path / "r.png"), "--realdata", str(tmp_path / "no")]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert "realism report skipped" in result.output and not (tmp_path / "r.png").exists()


@pytest.mark.skipif(not realdata_dir().is_dir(), reason="evaluation-only real images absent (../shared/realdata)")
def test_real_images_load_for_evaluation_and_the_undecodable_one_is_skipped():
    messages: list[str] = []
    real = load_real(echo=messages.append)
    assert sum(m.kind == "FFDM" for m in real) == 8 and sum(m.kind == "FILM" for m in real) == 1
    assert any("MG1_JPLY" in m for m in messages)
    for m in real:
        assert m.image.min() >= 0.0 and m.image.max() <= 1.0


def test_noise_level_does_not_jump_with_8_bit_quantization():
    """The synthetic drops are measured on 8-bit renditions, the real images on 16-bit ones: the noise estimate of
    the same noise must agree on both (a MAD would snap to multiples of 1.4826/255 on the 8-bit copy)."""
    rng = np.random.default_rng(4)
    tissue = np.ones((200, 200), dtype=bool)
    for sd in (0.004, 0.007, 0.011):
        img = (0.4 + sd * rng.standard_normal(tissue.shape)).astype(np.float32)
        fine = realism.noise_level(img, tissue)
        coarse = realism.noise_level(np.rint(img * 255) / 255, tissue)
        assert coarse == pytest.approx(fine, rel=0.12)
        assert fine == pytest.approx(realism.noise_level(img * 2, tissue) / 2, rel=1e-6)


def _film_like(laterality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic digitized-film MLO (the FILM profile's anatomy and film physics) with what a scanned film has
    around the breast: a bright unexposed border (film base + fog) along the top, bottom and far edges, a black
    cut-out darker than the air and a scanner fall-off across the film. Returns (display image, truth breast
    mask, the part of the truth that stands 0.1 (0.4 OD) above the air: a film's burned-out periphery sits at the
    scanner's floor like the air, and no threshold can tell the two apart)."""
    from mammo_pipeline.synth.anatomy import draw_breast

    rows, cols, spacing = 1200, 900, 0.2
    breast = draw_breast(np.random.default_rng(3), rows, cols, spacing, "MLO", vendor="FILM", film=True)
    img, mask = breast.image.copy(), breast.mask.copy()
    floor = float(np.median(img[~mask]))
    visible = mask & (ndimage.uniform_filter(img, 9) > floor + 0.1)
    img += np.linspace(0.0, 0.06, cols, dtype=np.float32)[None, :]  # scanner fall-off
    img[300:520, 820:860] = 0.0  # a black cut-out in the air
    border = np.zeros_like(mask)
    border[:12, :], border[-18:, :], border[:, -10:] = True, True, True  # 2.4-3.6 mm unexposed film edge
    img[border] = 0.9
    mask &= ~border
    visible &= ~border
    if laterality == "R":
        img, mask, visible = img[:, ::-1], mask[:, ::-1], visible[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(mask), np.ascontiguousarray(visible)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_breast_mask_of_a_digitized_film_ignores_its_border_cut_outs_and_background(laterality):
    img, truth, visible = _film_like(laterality)
    small = realism.model_rendition(img).astype(np.float32) / 255.0
    truth_s = realism.resize_to(truth.astype(np.float32), small.shape) > 0.5
    visible_s = realism.resize_to(visible.astype(np.float32), small.shape) > 0.5
    mask = realism.breast_mask(small)
    assert (mask & visible_s).sum() >= 0.95 * visible_s.sum()  # all of the breast that shows
    assert (mask & ~truth_s).sum() <= 0.02 * mask.sum()  # none of the border, the cut-out or the air
    assert background_level(small) == pytest.approx(float(np.median(small[~truth_s])), abs=0.05)
    assert realism.chest_wall_side(small) == (0 if laterality == "L" else -1)
