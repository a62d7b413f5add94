from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from mammo_pipeline import promotions
from mammo_pipeline.atomic import write_parquet
from mammo_pipeline.cli import cli
from mammo_pipeline.model.explain import heatmap_png, image_heatmaps
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.train import TrainConfig, load_network, train_model
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.toy_labels import make_labels, synthetic_image


def _one_clip_image(seed: int, where: tuple[int, int] | None) -> np.ndarray:
    """A synthetic 'neither' image (80 x 64) with one clip-sized (5 px) bright blob at `where` (None: no clip)."""
    img = synthetic_image(np.random.default_rng(seed), biopsy=False, mag=False)
    if where is not None:
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        img[(yy - where[0]) ** 2 + (xx - where[1]) ** 2 <= 4] = 255
    return img


def _clip_at(i: int) -> tuple[int, int]:
    rng = np.random.default_rng(1000 + i)
    return int(rng.integers(22, 58)), int(rng.integers(4, 30))


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    """A small from-scratch network that learned 'one clip or none' (the heat-map test's subject)."""
    settings = Settings.under(tmp_path_factory.mktemp("clip") / "home", pretrained="none").ensure_dirs()
    labels = make_labels(settings, n=48, seed=0, write=False)
    for i, row in labels.iterrows():  # redraw every image: half carry one clip, none is a mag view
        clip = i % 2 == 1
        Image.fromarray(_one_clip_image(i, _clip_at(i) if clip else None)).save(settings.cache / row["model_png"])
        labels.loc[i, ["has_biopsy_marker", "is_mag_view", "label"]] = [clip, False, "biopsy" if clip else "neither"]
    labels.loc[labels.index[-4:], "is_mag_view"] = True  # both classes on the mag flag, for the loss weights
    # 60 epochs: fewer leave the network half-trained on some CPUs (p_biopsy about 0.6 on a clip image), as the
    # kernels round otherwise: at 20 on a 2-core AVX2 machine of 2026-12 (0.97-0.99 at 30), at 30 on a 2-core
    # AVX-512 one (0.57-0.64; 0.96-1.00 at 60, training seeds 0-2); an undecided network's heat map says nothing,
    # so the test checks that precondition below.
    # Framings off: half the draws cropped to the toy breast slow this 40-image run (p 0.77 at 30 epochs), and where
    # the map peaks is what is tested, not the framing (model/augment.py has its own tests)
    config = TrainConfig(
        size=64, epochs=60, lr=3e-3, batch_size=8, pretrained="none", threads=1, oof_folds=2, framings=False
    )
    result = train_model(settings, labels, config)
    return settings, result


@pytest.mark.parametrize("where", [(30, 14), (50, 25), (40, 8), (25, 20), (55, 10)])
def test_heat_map_of_one_stamped_clip_peaks_on_it(clip_model, where):
    settings, result = clip_model
    net = load_network(settings, result.ref)
    explanation = image_heatmaps(net, _one_clip_image(5, where), result.ref.input_size)
    assert explanation.probs[0] >= 0.8, "precondition: the network learned to see the clip"
    assert explanation.maps.shape == (2, 80, 64) and explanation.maps.max() <= 1.0
    assert explanation.probs[0] > image_heatmaps(net, _one_clip_image(5, None), result.ref.input_size).probs[0]
    peak = np.unravel_index(int(np.argmax(explanation.maps[0])), explanation.maps[0].shape)
    assert np.hypot(peak[0] - where[0], peak[1] - where[1]) <= 4, f"biopsy heat map peaks at {peak}, clip at {where}"


@pytest.mark.parametrize("where", [(30, 14), (50, 25)])
def test_a_mirrored_image_gets_the_same_probabilities_and_its_maps_in_stored_pixels(clip_model, where):
    """Some vendors store one side mirrored. The network reads the image with its chest wall at column 0, so the
    mirror gets the same probabilities; its maps are in the stored image's pixels: the biopsy map peaks on the
    mirrored clip and the magnification map (Grad-CAM of the same input) is the stored map mirrored."""
    settings, result = clip_model
    net = load_network(settings, result.ref)
    img = _one_clip_image(5, where)
    stored = image_heatmaps(net, img, result.ref.input_size)
    mirrored = image_heatmaps(net, np.ascontiguousarray(img[:, ::-1]), result.ref.input_size)
    np.testing.assert_allclose(mirrored.probs, stored.probs, atol=1e-6)
    peak = np.unravel_index(int(np.argmax(mirrored.maps[0])), mirrored.maps[0].shape)
    clip = (where[0], img.shape[1] - 1 - where[1])
    assert np.hypot(peak[0] - clip[0], peak[1] - clip[1]) <= 4, f"biopsy heat map peaks at {peak}, clip at {clip}"
    np.testing.assert_allclose(mirrored.maps[1], stored.maps[1][:, ::-1], atol=1e-5)


def test_the_occlusion_removes_each_object_once_so_a_dimmer_clip_among_brighter_markers_is_weighed(clip_model):
    from mammo_pipeline.model import explain

    settings, result = clip_model
    net = load_network(settings, result.ref)
    img = _one_clip_image(7, (40, 20))
    img[(img == 255)] = 235  # the clip, a little dimmer than ...
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    for r, c in ((15, 40), (60, 45), (30, 50)):  # ... three saturated plateaus, each many equal maxima
        img[(yy - r) ** 2 + (xx - c) ** 2 <= 4] = 255
    seen = []
    real = explain.preprocess

    def counting(gray, size):  # each removal is one preprocess call: record where the image changed
        changed = np.argwhere(gray != img)
        if len(changed):
            seen.append(tuple(changed.mean(axis=0)))
        return real(gray, size)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(explain, "preprocess", counting)
        explain.object_occlusion(net, img, result.ref.input_size)
    near = lambda r, c: sum(np.hypot(a - r, b - c) <= 3 for a, b in seen)  # noqa: E731
    assert [near(15, 40), near(60, 45), near(30, 50)] == [1, 1, 1]
    assert near(40, 20) == 1


def test_heatmap_png_and_mammo_explain_write_a_picture(trained, monkeypatch, tmp_path):
    settings = trained.settings
    row = trained.labels.iloc[0]
    manifest = pd.DataFrame([row[["sop_instance_uid", "model_png", "display_png"]].to_dict()])
    write_parquet(manifest, settings.table_dir("image_cache", "alpha") / "manifest.parquet")
    png = heatmap_png(settings, "alpha", row["sop_instance_uid"])
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.width > 100
    with pytest.raises(KeyError):
        heatmap_png(settings, "alpha", "1.2.3.not.cached")

    monkeypatch.setenv("MAMMO_HOME", str(settings.home))
    out = tmp_path / "explain.png"
    result = CliRunner().invoke(cli, ["explain", row["sop_instance_uid"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = CliRunner().invoke(cli, ["explain", "1.2.3.not.cached"])
    assert missing.exit_code != 0 and "no hospital's image cache" in missing.output


def test_explain_refuses_a_model_trained_at_another_display_size_in_one_line(trained, monkeypatch):
    """A user's report: with MAMMO_DISPLAY_SIZE changed since training, `mammo explain` gave the right refusal
    ("retrain or set MAMMO_DISPLAY_SIZE back") as a 30-line traceback instead of the CLI's one-line error."""
    settings = trained.settings
    row = trained.labels.iloc[0]
    manifest = pd.DataFrame([row[["sop_instance_uid", "model_png", "display_png"]].to_dict()])
    write_parquet(manifest, settings.table_dir("image_cache", "alpha") / "manifest.parquet")
    trained_at = ModelRef.load(settings.models).extra["second_look"]["display_size"]
    monkeypatch.setenv("MAMMO_HOME", str(settings.home))
    monkeypatch.setenv("MAMMO_DISPLAY_SIZE", str(trained_at // 2))
    result = CliRunner().invoke(cli, ["explain", row["sop_instance_uid"], "--hospital", "alpha"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: the model's second look was trained on ")
    assert result.output.endswith("retrain or set MAMMO_DISPLAY_SIZE back\n") and result.output.count("\n") == 1


def test_explain_draws_with_the_model_promoted_for_the_hospital(trained, monkeypatch, tmp_path):
    """A hand roll back for a hospital holds for its heat maps too, not only for its predictions: explain follows
    the promotion, even when current.json (the newest model) names a model whose files are gone."""
    settings = Settings.under(tmp_path / "home", pretrained="none").ensure_dirs()
    ref = ModelRef.load(trained.settings.models)
    shutil.copytree(trained.settings.models / ref.folder, settings.models / ref.folder)
    row = trained.labels.iloc[0]
    for column in ("model_png", "display_png"):
        (settings.cache / row[column]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(trained.settings.cache / row[column], settings.cache / row[column])
    manifest = pd.DataFrame([row[["sop_instance_uid", "model_png", "display_png"]].to_dict()])
    write_parquet(manifest, settings.table_dir("image_cache", "alpha") / "manifest.parquet")
    promotions.save_ref(settings, ref)
    promotions.promote(settings, ref.model_version, hospital="alpha", reason="rollback")
    ref.with_(model_version="newer", folder="newer").save(settings.models)  # newest model: its files are gone

    png = heatmap_png(settings, "alpha", row["sop_instance_uid"])
    assert png == heatmap_png(settings, "alpha", row["sop_instance_uid"], ref)
    monkeypatch.setenv("MAMMO_HOME", str(settings.home))
    out = tmp_path / "explain.png"
    result = CliRunner().invoke(cli, ["explain", row["sop_instance_uid"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == png


def test_when_no_grad_cam_cell_is_positive_the_map_is_the_attribution_alone():
    """All of layer4's cells weighing against the flag (Grad-CAM all zero) must not blank the map: it falls back to
    the saliency (the input gradient's magnitude), which still peaks on the object that raised the logit."""
    import torch
    import torch.nn as nn

    from mammo_pipeline.model.explain import heatmaps
    from mammo_pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    object_zero = float((0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1])  # channel 1's value where the top-hat is 0

    class Head(nn.Module):  # logit = the strongest cell minus twice the mean: every cell's Grad-CAM weight < 0
        def forward(self, feats):
            v = feats.flatten(1)
            logit = v.max(dim=1).values - 2 * v.mean(dim=1)
            return torch.stack([logit, logit], dim=1)

    body = nn.Conv2d(3, 1, 1)
    with torch.no_grad():  # the feature map is the object channel's top-hat units, > 0 everywhere
        body.weight[:] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
        body.bias[:] = -object_zero
    x = np.zeros((3, 32, 32), np.float32)
    x[1] = object_zero + 0.1
    x[1, 10:13, 20:23] = object_zero + 2.0  # one bright object, brightest at (11, 21)
    x[1, 11, 21] = object_zero + 3.0
    _, maps = heatmaps(nn.Sequential(body, Head()), x)
    peak = np.unravel_index(int(np.argmax(maps[0])), maps[0].shape)
    assert maps[0].max() == pytest.approx(1.0) and abs(peak[0] - 11) <= 1 and abs(peak[1] - 21) <= 1
