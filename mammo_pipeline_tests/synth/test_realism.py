"""Realism statistics measure what they claim, and the report compares real and synthetic images (skipping
cleanly without the evaluation-only real images)."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mammo_pipeline.cli.synth import command
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
