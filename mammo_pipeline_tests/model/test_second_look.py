from __future__ import annotations

import numpy as np

from mammo_pipeline.model.candidates import CHANNELS
from mammo_pipeline.model.evaluate import roc_auc
from mammo_pipeline.model.second_look import network_input, patch_network, predict_patch_mil, train_patch_mil

P, K = 32, 3


def _crops(
    rng: np.random.Generator, clip: bool, bead: float = 2.0, clip_level: float = 2.0, first: bool = False
) -> np.ndarray:
    """K tissue crops [K, CHANNELS, P, P]; each holds a round bead (a skin-marker look-alike) at level `bead`, one
    holds a ribbon at `clip_level` if `clip`, in a random slot or, with `first`, the first (the candidates come
    strongest first); the context channel is plain tissue."""
    crops = rng.normal(0.5, 0.15, (K, CHANNELS, P, P)).astype(np.float32)
    yy, xx = np.mgrid[0:P, 0:P]
    for k in range(K):
        crops[k, 0][(yy - 16) ** 2 + (xx - 16) ** 2 <= 9] = bead
    if clip:
        k = 0 if first else int(rng.integers(K))
        crops[k, 0] = rng.normal(0.5, 0.15, (P, P))
        crops[k, 0][14:17, 8:24] = clip_level  # by default as bright as the beads: only the shape differs
        crops[k, 0][10:21, 8:11] = clip_level
    return crops


def test_patch_classifier_tells_a_clip_from_equally_bright_beads_by_shape():
    rng = np.random.default_rng(0)
    flags = np.arange(96) % 2 == 1
    crops = np.stack([_crops(rng, f) for f in flags])
    net = train_patch_mil(crops, flags, epochs=8, seed=0)
    test_flags = np.arange(40) % 2 == 1
    probs, patch = predict_patch_mil(net, np.stack([_crops(rng, f) for f in test_flags]))
    assert patch.shape == (40, K) and np.allclose(probs, patch.max(axis=1))
    assert roc_auc(test_flags, probs) >= 0.95


def test_patch_network_shapes_and_onnx_export_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort
    import torch

    net = patch_network().eval()
    x = torch.from_numpy(network_input(np.random.default_rng(1).normal(0, 1, (2, K, CHANNELS, P, P))))
    with torch.no_grad():
        logits, patch = net(x), net.read_logits(x)
    assert logits.shape == (2,) and patch.shape == (2, K) and torch.allclose(logits, patch.max(dim=1).values)
    path = tmp_path / "second_look.onnx"
    torch.onnx.export(
        net,
        (x,),
        str(path),
        opset_version=17,
        input_names=["crops"],
        output_names=["logit"],
        dynamic_axes={"crops": {0: "n"}, "logit": {0: "n"}},
        dynamo=False,
    )
    x5 = network_input(np.random.default_rng(2).normal(0, 1, (5, K, CHANNELS, P, P)))
    out = ort.InferenceSession(str(path)).run(None, {"crops": x5})[0]
    with torch.no_grad():
        assert np.allclose(out, net(torch.from_numpy(x5)).numpy(), atol=1e-4)


def test_one_unit_of_the_last_block_sees_the_whole_crop():
    """A unit must see a whole clip with its surroundings to tell a ring clip from a triangle skin marker by the
    outline: the last block's receptive field is 52 px (38 px with plain poolings, 18 px with three blocks)."""
    import torch

    net = patch_network().eval()
    trunk = net.features[: [type(m).__name__ for m in net.features].index("AdaptiveMaxPool2d")]
    x = torch.from_numpy(network_input(np.random.default_rng(3).normal(0.5, 0.3, (8, 1, CHANNELS, P, P)))[:, 0])
    x.requires_grad_(True)
    out = trunk(x)
    assert out.shape[-2:] == (P // 8, P // 8)
    out[:, :, 1, 1].sum().backward()  # a unit next to the centre; unit j sees input rows 8j-22 .. 8j+29
    seen = (x.grad.abs().sum(dim=(0, 1)) > 0).numpy()
    assert seen.all()


def test_the_pooling_moves_its_output_half_a_cell_for_each_pixel_an_object_moves():
    """Anti-aliased pooling (`blur_pool`): a bright point moved by one pixel moves the pooled map's centroid by
    half a cell, the same at either phase of the stride-2 grid; a plain 2x2 max pooling of stride 2 moves it by 0
    or 1 cell by the phase, so a reading depends on where on the grid an object falls."""
    import torch
    import torch.nn.functional as F

    from mammo_pipeline.model.second_look import blur_pool

    pool = blur_pool(1)

    def centroid(pooled: torch.Tensor) -> float:
        w = pooled[0, 0].sum(dim=0)
        return float((w * torch.arange(len(w))).sum() / w.sum())

    def moves(fn) -> np.ndarray:
        at = []
        for col in range(10, 18):
            x = torch.zeros(1, 1, 32, 32)
            x[0, 0, 16, col] = 1.0
            at.append(centroid(fn(x)))
        return np.diff(at)

    assert np.allclose(moves(pool), 0.5, atol=0.01)
    plain = moves(lambda x: F.max_pool2d(x, 2))
    assert sorted(set(np.round(plain, 3))) == [0.0, 1.0]
    assert pool(torch.zeros(2, 1, 31, 32)).shape == (2, 1, 16, 16)
    flat = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(pool(flat), torch.full((1, 1, 4, 4), 0.7))  # the filter sums to one


def test_a_prediction_reads_each_crop_under_a_group_of_symmetries_so_it_cannot_tell_them_apart():
    import torch

    from mammo_pipeline.model.second_look import READ_SYMMETRIES, _symmetry

    # the identity and the half turn (module docstring): a group, so the mean is invariant
    assert READ_SYMMETRIES == (0, 3)
    torch.manual_seed(0)
    net = patch_network().eval()
    x = torch.from_numpy(network_input(np.random.default_rng(3).normal(0, 1, (2, K, CHANNELS, P, P))))
    with torch.no_grad():
        read = net.read_logits(x)
        once = [net.patch_logits(_symmetry(x, w)) for w in (0, 3)]
        assert torch.allclose(read, torch.stack(once).mean(dim=0), atol=1e-6)
        assert not torch.allclose(once[0], once[1], atol=1e-3)  # a single reading does depend on the orientation
        for w in READ_SYMMETRIES:  # the mean over a group is invariant under each of its members
            assert torch.allclose(net.read_logits(_symmetry(x, w)), read, atol=1e-5)
    probs, patch = predict_patch_mil(net, x.numpy()[:, :, :CHANNELS])
    assert np.allclose(patch, torch.sigmoid(read).numpy(), atol=1e-6) and np.allclose(probs, patch.max(axis=1))


def test_a_rounds_patch_epochs_stay_within_the_image_pass_budget():
    from mammo_pipeline.model.second_look import IMAGE_PASSES, MAX_EPOCHS, epochs_for

    assert epochs_for(50) == MAX_EPOCHS  # few labels: the full schedule
    for n in (300, 500, 2000, 100_000):
        assert 1 <= epochs_for(n) <= MAX_EPOCHS
        assert (epochs_for(n) - 1) * n < IMAGE_PASSES  # one epoch fewer would leave budget unused
        assert epochs_for(n) == 1 or epochs_for(n) * n <= IMAGE_PASSES + n


def test_the_training_pool_is_a_smooth_maximum_that_teaches_every_crop():
    """lse_pool lies between the mean and the maximum, tends to the maximum as it sharpens, and (unlike the max,
    which teaches only the crop already favoured) passes gradient to every crop, the highest the most."""
    import torch

    from mammo_pipeline.model.second_look import lse_pool

    logits = torch.tensor([[2.0, 1.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    pooled = lse_pool(logits)
    assert (logits.mean(dim=1) <= pooled).all() and (pooled <= logits.max(dim=1).values).all()
    assert torch.allclose(pooled[1], torch.tensor(0.0))  # equal crops: the pool is their value
    assert torch.allclose(lse_pool(logits, sharpness=200.0), logits.max(dim=1).values, atol=0.01)
    pooled[0].backward()
    grad = logits.grad[0]
    assert (grad > 0).all() and grad[0] > grad[1] > grad[2] and torch.isclose(grad.sum(), torch.tensor(1.0))


def test_the_network_reads_each_crop_in_units_of_its_own_surroundings():
    """A dim bar in bright, contrasty gland and a bright bar in dark, flat fat read alike (the same shape over its
    surroundings), though their kept tissue-unit crops differ by the tissue's level; an offset and a gain of the
    crop pair change nothing (a display curve is nearly that over one context crop's gray levels), the context
    channel is in the same units, empty slots stay zero, and flat surroundings do not blow a faint ripple up (the
    spread's floor)."""
    from mammo_pipeline.model.second_look import INPUT_CHANNELS, LOCAL_FLOOR, LOCAL_RANGE

    rng = np.random.default_rng(3)
    texture = rng.normal(0, 1, (P, P)).astype(np.float32)
    bar = np.zeros((P, P), np.float32)
    bar[14:18, 6:26] = 1
    crops = np.zeros((1, 3, CHANNELS, P, P), np.float32)
    for k, (level, spread) in enumerate(((0.85, 0.08), (0.2, 0.02))):  # dense gland, fat
        crops[0, k, 0] = level + spread * texture + 3 * spread * bar  # the bar: 3 SD over its surroundings
        crops[0, k, 1] = level + spread * rng.normal(0, 1, (P, P))
    x = network_input(crops)
    assert x.shape == (1, 3, INPUT_CHANNELS, P, P) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    (gland, gland_context), (fat, fat_context), empty = x[0]
    assert abs(gland[bar > 0].mean() - fat[bar > 0].mean()) < 0.35 * gland[bar > 0].mean()
    # 3 SD over the median is 3 / 2.56 = 1.17 of a normal p10-p90 spread
    assert gland[bar > 0].mean() > 0.9 and (crops[0, 0, 0][bar > 0].mean() - crops[0, 1, 0][bar > 0].mean()) > 0.5
    for context in (gland_context, fat_context):  # the context about its own median, over about 2.56 SD
        assert abs(float(np.median(context))) < 1e-6 and 0.3 < context.std() < 0.5
    np.testing.assert_allclose(network_input(0.3 + 2 * crops[:, :2]), x[:, :2], atol=1e-4)
    assert not empty.any()
    flat = np.full((1, 1, CHANNELS, P, P), 0.5, np.float32)
    flat[0, 0, 0] += 0.01 * bar  # a 1 %-of-tissue-range ripple over perfectly flat surroundings
    ripple = network_input(flat)[0, 0, 0]
    np.testing.assert_allclose(ripple[bar > 0], 0.01 / LOCAL_FLOOR, rtol=1e-4)
    metal = crops.copy()
    metal[0, 1, 0] += 10 * bar  # far brighter than any tissue: at the range's ceiling, not beyond
    assert network_input(metal)[0, 1, 0][bar > 0].max() == LOCAL_RANGE[1]


def test_crops_of_another_layout_are_refused():
    import pytest

    with pytest.raises(ValueError, match="native, context"):
        network_input(np.zeros((2, K, P, P), np.float32))


def test_while_the_learning_rate_warms_up_the_strongest_candidates_are_trained_then_the_networks_choice():
    """Until it has learnt something the network's ranking of an image's crops is noise, so the warm-up trains
    through the first slots (the candidates come strongest blob first); afterwards the network's own top crops."""
    import torch

    from mammo_pipeline.model.second_look import training_crops

    torch.manual_seed(0)
    net = patch_network()
    xb = torch.from_numpy(network_input(np.random.default_rng(0).normal(size=(4, 8, CHANNELS, 32, 32))))
    warm = training_crops(net, xb, 3, warming_up=True)
    assert warm.tolist() == [[0, 1, 2]] * 4
    with torch.no_grad():
        net.eval()
        expected = net.patch_logits(xb).topk(3, dim=1).indices
    chosen = training_crops(net, xb, 3, warming_up=False)
    assert torch.equal(chosen, expected) and net.training


def test_after_the_warm_up_each_images_crops_are_ranked_again_every_rank_every_epochs(monkeypatch):
    """Scoring all K crops of every image is most of a step's cost; the choice made at an image's last scoring is
    reused in between. Every image is scored in its first epoch after the warm-up, then in every RANK_EVERY-th."""
    from mammo_pipeline.model import second_look

    calls: list[tuple[int, bool]] = []  # (batch size, warming up) per call
    real = second_look.training_crops

    def spy(net, xb, top, warming_up):
        calls.append((len(xb), warming_up))
        return real(net, xb, top, warming_up)

    monkeypatch.setattr(second_look, "training_crops", spy)
    monkeypatch.setattr(second_look, "RANK_EVERY", 2)
    rng = np.random.default_rng(1)
    flags = np.arange(16) % 2 == 1
    crops = np.stack([_crops(rng, f) for f in flags])
    train_patch_mil(crops, flags, epochs=10, batch_size=8, seed=0, top=2)  # 2 steps per epoch, 20 in all
    warm = [c for c in calls if c[1]]
    assert len(warm) == int(second_look.WARMUP_SHARE * 20)  # steps 1-6: the candidates' own order
    # steps 7-20 are epochs 3-9: epoch 3 scores every image (none has a choice yet), then epochs 4, 6 and 8
    assert [n for n, w in calls if not w] == [8] * 8


def test_contrast_jitter_lowers_a_share_of_crops_contrast_keeping_median_and_outline():
    import torch

    from mammo_pipeline.model.second_look import contrast_jitter

    rng = np.random.default_rng(5)
    xb = torch.from_numpy(rng.normal(0.5, 0.2, (64, 3, 3, P, P)).astype(np.float32))
    xb[:, :, 0, 12:20, 12:20] = 2.0  # a bright object in the native channel
    out = contrast_jitter(xb, torch.Generator().manual_seed(0), low=0.25, share=0.5)
    median = xb.flatten(-2).median(dim=-1).values
    assert torch.allclose(out.flatten(-2).median(dim=-1).values, median, atol=1e-5)
    # each crop: one factor for all its channels, in [low, 1]; about half the crops keep their own contrast
    factor = (out[:, :, 0, 16, 16] - median[:, :, 0]) / (xb[:, :, 0, 16, 16] - median[:, :, 0])
    assert (factor >= 0.25 - 1e-5).all() and (factor <= 1 + 1e-5).all()
    kept = torch.isclose(factor, torch.ones_like(factor))
    assert 0.35 < kept.float().mean() < 0.65 and factor[~kept].max() < 1
    deviation = xb - median[..., None, None]
    big = deviation.abs() > 1e-2  # every channel of a crop by the same factor
    ratio = (out - median[..., None, None])[big] / deviation[big]
    assert torch.allclose(ratio, factor[..., None, None, None].expand_as(xb)[big], atol=1e-3)
    # the ordering of a crop's values is kept (an increasing map): the outline does not change
    order = xb.flatten(-2).argsort(dim=-1)
    assert (out.flatten(-2).gather(-1, order).diff(dim=-1) >= -1e-6).all()
    # seeded: the same generator state draws the same factors
    again = contrast_jitter(xb, torch.Generator().manual_seed(0), low=0.25, share=0.5)
    assert torch.equal(out, again)


def test_trained_on_bright_clips_it_still_finds_a_clip_as_faint_as_the_beads():
    """The brightness shortcut: in training every clip is brighter than every bead, so "bright" alone separates
    them; a faint clip (a hydrogel marker's core in dense gland) must still be told from a bead by its outline.
    Without `contrast_jitter` one of these three seeds scored the faint test set at ROC-AUC 0.39 (stop 41) and,
    since the network reads crops in units of their surroundings (input version 6), 0.84 (stop 66). The training
    clips lie in the first slot, where the strongest candidate is (in training the brightest object): in a
    random slot, 1 seed in 11 of either input version never learnt even the bright clips, whatever the jitter
    (the warm-up trains through the first slots), which says nothing about the shortcut."""
    rng = np.random.default_rng(0)
    flags = np.arange(96) % 2 == 1
    train = np.stack([_crops(rng, f, bead=1.0, clip_level=2.0, first=True) for f in flags])
    test_flags = np.arange(60) % 2 == 1
    faint = np.stack([_crops(rng, f, bead=1.0, clip_level=1.0) for f in test_flags])
    for seed in (0, 1, 2):
        net = train_patch_mil(train, flags, epochs=8, seed=seed)
        assert roc_auc(test_flags, predict_patch_mil(net, faint)[0]) >= 0.95


def test_shift_jitter_moves_all_crops_of_a_batch_by_one_offset_of_at_most_two_pixels_repeating_the_edge():
    """Training moves a batch's crops by one (dy, dx) in [-SHIFT_JITTER, SHIFT_JITTER]^2, the pixels moved in
    repeating the crop's edge: a candidate's centre lies a grid step or so off its object's, in another
    alignment or a mirrored image, and the network must not care (stop 57)."""
    import torch

    from mammo_pipeline.model.second_look import SHIFT_JITTER, shift_jitter

    xb = torch.arange(2 * 3 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 3, 8, 8)
    idx = np.arange(8)
    seen = set()
    for seed in range(60):
        out = shift_jitter(xb, torch.Generator().manual_seed(seed)).numpy()
        matches = [
            (oy, ox)
            for oy in range(-SHIFT_JITTER, SHIFT_JITTER + 1)
            for ox in range(-SHIFT_JITTER, SHIFT_JITTER + 1)
            if np.array_equal(out, xb.numpy()[..., np.clip(idx + oy, 0, 7)[:, None], np.clip(idx + ox, 0, 7)[None, :]])
        ]
        assert len(matches) == 1  # one offset for every crop and channel of the batch
        seen.add(matches[0])
    assert len(seen) >= 15  # of the 25 offsets
    assert shift_jitter(xb, most=0) is xb


def test_an_epoch_that_falls_apart_is_rolled_back_and_the_training_goes_on(monkeypatch, caplog):
    """A blow-up of the weights in the middle of a round (what a divergence at the one-cycle peak does) makes its
    epoch's loss worse than the first epoch's: the next epoch starts from the weights of the best epoch so far,
    and the round ends with a network that tells clips from beads."""
    import logging
    import re

    import torch

    from mammo_pipeline.model import second_look

    before: list[list[torch.Tensor]] = []  # the weights before each step, and after it
    after: list[list[torch.Tensor]] = []
    step = torch.optim.AdamW.step

    def blowing_up(self, *args, **kwargs):
        before.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        out = step(self, *args, **kwargs)
        if len(before) == 31:  # the first step of epoch 5 of 12 (6 steps per epoch)
            with torch.no_grad():
                for p in self.param_groups[0]["params"]:
                    p.copy_(torch.randn_like(p) * 5.0)
        after.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", blowing_up)
    rng = np.random.default_rng(0)
    flags = np.arange(96) % 2 == 1
    crops = np.stack([_crops(rng, f) for f in flags])
    test_flags = np.arange(40) % 2 == 1
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger=second_look.__name__):
        net = train_patch_mil(crops, flags, epochs=12, batch_size=16, seed=0, notes=notes)
    assert len(before) == 72
    (message,) = [r.getMessage() for r in caplog.records]
    assert notes == [message]  # the model's warnings name it
    kept = int(
        re.search(r"epoch 5's loss [0-9.]+ is above the first epoch's [0-9.]+: rolled back to epoch (\d)", message)[1]
    )
    assert kept < 5
    assert all(
        torch.equal(a, b) for a, b in zip(before[36], after[6 * (kept + 1) - 1], strict=True)
    )  # epoch 6 starts from it
    probs = predict_patch_mil(net, np.stack([_crops(rng, f) for f in test_flags]))[0]
    assert roc_auc(test_flags, probs) >= 0.95
    before.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=second_look.__name__):
        train_patch_mil(crops, flags, epochs=12, batch_size=16, seed=0, rollback=False)
    assert not caplog.records and len(before) == 72
    # an epoch inside the warm-up is left alone (its crops are the candidates' own order)
    monkeypatch.setattr(second_look, "WARMUP_SHARE", 0.5)  # epochs 0-5 (steps 1-36) warm up
    before.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=second_look.__name__):
        train_patch_mil(crops, flags, epochs=12, batch_size=16, seed=0)
    assert not any("epoch 5's" in r.getMessage() for r in caplog.records)
