from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mammo_pipeline.model.augment import (
    BLACK_LIFT,
    CROP_MARGIN,
    breast_box,
    crop_to_breast,
    display_curve,
    training_views,
)
from mammo_pipeline.model.preprocess import preprocess
from mammo_pipeline.model.train import _datasets


def _view(h: int = 256, w: int = 200) -> np.ndarray:
    """Black air with a textured gray 'breast' (rows 40..199, cols 0..119) holding a bright dot at (100, 60)."""
    gray = np.zeros((h, w), dtype=np.uint8)
    gray[40:200, :120] = np.random.default_rng(0).integers(100, 140, (160, 120), dtype=np.uint8)
    gray[100, 60] = 250
    return gray


def test_a_crop_keeps_the_long_side_and_leaves_no_air_around_the_breast():
    gray = _view()
    out = crop_to_breast(gray)
    assert max(out.shape) == max(gray.shape) == 256
    assert out.shape == (256, 192)  # the 160 x 120 breast scaled by 256 / 160
    edge = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
    assert edge.min() > 60  # every border pixel is breast, none is air
    dot = np.unravel_index(np.argmax(out), out.shape)  # the dot moved where the crop and the scale take it
    assert abs(dot[0] - (100 - 40) * 1.6) <= 2 and abs(dot[1] - 60 * 1.6) <= 2


def test_a_margin_keeps_that_share_of_each_side_around_the_breast():
    assert breast_box(_view(), margin=0.05) == (40 - 13, 200 + 13, 0, 120 + 10)  # 0.05 of 256 rows, of 200 columns
    out = crop_to_breast(_view(), margin=0.05)
    assert max(out.shape) == 256 and abs(out.shape[1] - round(130 * 256 / 186)) <= 1
    assert out[0].max() < 10 and out[:, -1].max() < 10  # air above and on the far side


def test_a_coned_view_keeps_its_collimator_shadow_and_comes_back_whole():
    """The shadow is as bright as dense tissue, so the tissue's box holds it: the framings take the air from
    contact views and leave a magnification view its collimator (module docstring)."""
    gray = np.full((256, 200), 240, dtype=np.uint8)  # the unexposed border: flat, bright, along the frame
    gray[50:210, 30:170] = 20  # the exposed field's air
    gray[60:200, 30:140] = np.random.default_rng(1).integers(90, 150, (140, 110), dtype=np.uint8)  # the breast
    assert breast_box(gray) == (0, 256, 0, 200)
    assert crop_to_breast(gray) is gray


def test_the_display_png_gives_the_pixels_where_the_model_png_gives_the_box():
    gray = _view()
    display = np.asarray(Image.fromarray(gray).resize((800, 1024), Image.Resampling.NEAREST))
    display = display.copy()
    display[400:404, 240:244] = 255  # a detail only the larger rendering has (beside the dot at (400, 240))
    out = crop_to_breast(gray, source=display)
    assert out.shape == crop_to_breast(gray).shape == (256, 192)
    np.testing.assert_array_equal(out, crop_to_breast(gray, source=display))  # deterministic
    assert out.max() == 255  # reduced with BOX from the display's pixels, so its brightest detail survives


def test_a_view_whose_tissue_fills_it_and_a_flat_one_come_back_unchanged():
    filled = np.random.default_rng(0).integers(80, 200, (256, 180), dtype=np.uint8)
    filled[:, :90] = np.random.default_rng(1).integers(150, 220, (256, 90), dtype=np.uint8)  # dense beside fat
    assert breast_box(filled) == (0, 256, 0, 180)
    assert crop_to_breast(filled) is filled
    for flat in (np.zeros((256, 180), np.uint8), np.full((256, 180), 128, np.uint8)):  # no tissue to find
        assert crop_to_breast(flat) is flat


def test_training_views_are_the_preprocessed_crop_and_seeded(tmp_path):
    Image.fromarray(_view()).save(tmp_path / "a.png")
    views = training_views([tmp_path / "a.png"], 32, seed=3, tones=False)
    assert views.cropped.shape == (1, 3, 32, 32) and views.cropped.dtype == np.float32
    assert views.toned is None and views.toned_cropped is None
    np.testing.assert_array_equal(views.plain[0], preprocess(_view(), 32))
    np.testing.assert_array_equal(views.cropped, training_views([tmp_path / "a.png"], 32, seed=3).cropped)
    margin = np.random.default_rng(3).uniform(*CROP_MARGIN)
    np.testing.assert_array_equal(views.cropped[0], preprocess(crop_to_breast(_view(), margin), 32))


def test_a_crop_takes_its_pixels_from_the_display_when_given(tmp_path):
    """The crop is cut from the larger display PNG (`sources`), as the cache would render a cropped export."""
    small, large = _view(), np.kron(_view(), np.ones((4, 4), np.uint8))
    large[::2] = 255 - large[::2]  # a pattern only the display holds: the crop must differ from a Lanczos zoom
    with_source = training_views([small], 32, seed=3, sources=[large], tones=False).cropped[0]
    margin = np.random.default_rng(3).uniform(*CROP_MARGIN)
    np.testing.assert_array_equal(with_source, preprocess(crop_to_breast(small, margin, large), 32))
    assert not np.array_equal(with_source, training_views([small], 32, seed=3, tones=False).cropped[0])


def test_training_draws_see_both_framings_reproducibly_and_keep_the_flags():
    images, cropped = np.zeros((4, 3, 8, 8), np.float32), np.ones((4, 3, 8, 8), np.float32)
    flags = np.array([[1, 0], [0, 1], [0, 0], [1, 1]], dtype=bool)

    def framings(seed: int) -> list[bool]:
        dsets = _datasets(images, flags, cropped, seed)
        draws = [dsets[i % 4] for i in range(200)]
        assert all(y.tolist() == flags[i % 4].tolist() for i, (_, y) in enumerate(draws))
        return [float(x.mean()) == 1.0 for x, _ in draws]

    first = framings(seed=0)
    assert 0.35 < np.mean(first) < 0.65  # p = 1/2 per draw
    assert framings(seed=0) == first and framings(seed=1) != first  # seeded
    plain = _datasets(images, flags)  # framings off: only the whole image
    assert all(float(plain[i][0].mean()) == 0.0 for i in range(4))


def test_the_framing_draws_leave_the_global_torch_generator_alone():
    """So a run with framings on starts from the same weights and flips as one with them off (bench_crops pairs)."""
    images, cropped = np.zeros((4, 3, 8, 8), np.float32), np.ones((4, 3, 8, 8), np.float32)
    flags = np.zeros((4, 2), dtype=bool)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dsets = _datasets(images, flags, cropped, seed=5)
    _ = [dsets[i % 4] for i in range(50)]
    assert torch.equal(torch.rand(3), expected)


def test_a_display_curve_keeps_the_order_of_gray_levels_and_sometimes_lifts_the_black():
    """A vendor's display curve changes how bright things are shown, never their order: what tells a mag view
    (magnified structure, the collimator's edge) is kept. Some curves lift the air to a gray (BLACK_LIFT)."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rng = np.random.default_rng(0)
    curves = [display_curve(ramp, rng).ravel().astype(int) for _ in range(200)]
    assert all((np.diff(c) >= 0).all() and c[-1] >= 250 for c in curves)  # monotone, white stays white
    blacks = np.array([c[0] for c in curves])
    assert (blacks == 0).mean() > 0.3 and 0 < blacks.max() <= round(255 * BLACK_LIFT[1])
    mids = np.array([c[128] for c in curves])
    assert mids.min() < 80 and mids.max() > 175  # dark and bright middles: gammas and sigmoids both ways
    assert len({tuple(c) for c in curves}) > 190  # drawn afresh each time (two may round alike)


def test_toned_views_are_seeded_and_differ_from_the_plain_view(tmp_path):
    Image.fromarray(_view()).save(tmp_path / "a.png")
    views = training_views([tmp_path / "a.png"] * 3, 32, seed=3)
    again, other = training_views([tmp_path / "a.png"] * 3, 32, seed=3), training_views([tmp_path / "a.png"] * 3, 32, 4)
    np.testing.assert_array_equal(views.toned, again.toned)
    np.testing.assert_array_equal(views.toned_cropped, again.toned_cropped)
    assert not np.array_equal(views.toned, other.toned)
    assert all(not np.array_equal(b, views.plain[0]) for b in views.toned)
    black = views.toned_cropped[0, 0] == views.toned_cropped[0, 0].min()
    assert float(black.mean()) < float((views.toned[0, 0] == views.toned[0, 0].min()).mean())  # less air
    # each view draws from its own generator: turning the crops off leaves the toned view as it was
    np.testing.assert_array_equal(training_views([tmp_path / "a.png"] * 3, 32, seed=3, crops=False).toned, views.toned)


def test_training_draws_take_the_toned_view_of_their_framing_half_the_time():
    images, cropped = np.zeros((4, 3, 8, 8), np.float32), np.ones((4, 3, 8, 8), np.float32)
    toned = (np.full((4, 3, 8, 8), 2, np.float32), np.full((4, 3, 8, 8), 3, np.float32))
    flags = np.zeros((4, 2), dtype=bool)
    dsets = _datasets(images, flags, cropped, seed=0, toned=toned)
    seen = np.array([float(dsets[i % 4][0].mean()) for i in range(400)])
    shares = [float((seen == v).mean()) for v in (0, 1, 2, 3)]
    assert all(0.17 < share < 0.33 for share in shares), shares  # framing and curve: 1/2 each, independent
    only_plain = _datasets(images, flags, None, seed=0, toned=(toned[0], None))
    seen = {float(only_plain[i % 4][0].mean()) for i in range(100)}
    assert seen == {0.0, 2.0}
