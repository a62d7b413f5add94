"""The second look's second stage: a small patch CNN over an image's candidate crops, trained from image labels.

Multiple-instance learning: an image's biopsy logit is the maximum of the patch logits of its K candidates
(`candidates.candidates`), so image-level labels suffice and the flag means "at least one candidate is a clip".
The winning candidate is also the heat map: its box says where the clip is. Training backpropagates through a
smooth maximum instead (LSE pooling, `lse_pool`; Pinheiro & Collobert, CVPR 2015): through a hard maximum only
the crop the network already favours learns, so in a clip image whose clip it does not yet favour (a faint
unsaturated one) a tissue crop is taught to be a clip and the clip never is.

Each kept candidate has `candidates.CHANNELS` channels (native crop, wider context crop), in units of the image's
own tissue; the network reads both in units of the crop's own surroundings (`network_input`: minus the context's
median, over the context's 10th-90th percentile spread, at least LOCAL_FLOOR). What a dim clip in dense gland and a
bright one in fat have in common is how far they stand out from the tissue around them, which the image-wide units
hide (docs/history.md "Second look", stop 30); and a display curve (a vendor's SIGMOID window, a gamma VOI LUT),
which bends the image-wide units, is close to a straight line over the few gray levels of one context crop, so in
these units the crop reads nearly as under any other curve (stop 66: the image-wide channels dropped, p_biopsy
moved less under random display curves at the same cross-validated ROC-AUC). Training sees every crop
under the 8 symmetries of the square (flips and 90-degree turns: a clip, a BB or a letter has no preferred
orientation on the detector, and the context channel's skin line may run any way); a batch shares one symmetry
(one cheap tensor op per step). Prediction reads every crop under two of them (`READ_SYMMETRIES`) and averages the
patch logits (test-time augmentation): the network learnt no orientation, so its readings differ only by its
noise, which the mean reduces.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mammo_pipeline.model.candidates import CHANNELS

_log = logging.getLogger(__name__)

# A round's compute is bounded, as the global network's is (train.SCRATCH.image_passes): MAX_EPOCHS epochs while
# that stays within IMAGE_PASSES images, fewer beyond (30 up to 500 labels, 15 at 1000). Stop 14 measured, at 500
# labels, 12 epochs 0.961 in 35 s and 20 epochs 0.966 in 62 s and kept 6000 passes for the 2-minute round; on
# stop 25's install a whole round at 500 labels took 42 s, and 20 epochs gave 0.983 / 0.985 / 0.981 against 12
# epochs' 0.976 / 0.985 / 0.969 (seeds 0-2, docs/history.md "Second look"), so the budget became 10000 (a compute
# budget, not a constant fitted to data: 30 epochs gave 0.987 / 0.980 / 0.985, no better). Since contrast jitter
# (stop 41) made the task harder, 30 epochs beat 20 in all 4 paired cross-validations of stop 43, and stop 44 paid
# for them by ranking each image's crops every RANK_EVERY-th epoch only: scoring all K crops of every image took 43
# of the patch network's 61 s at 500 labels. 30 epochs ranked every other one against 20 ranked every one, same
# folds and seeds (bench_second_look_cv.py, held-out drops seed 1): 0.994 / 0.996 against 0.988 / 0.992, for the
# same training time (docs/history.md "Second look", stop 44). So the budget is 15000 passes (30 epochs up to 500
# labels, 15 at 1000).
# The patch network's input made from the kept crops (the crops' own meaning is candidates.SECOND_LOOK_VERSION; a
# model records both, `second_look_model.version`). 1: the crops as kept; 2: plus the crop in units of its own
# surroundings (module docstring); 3: the same input, read under READ_SYMMETRIES at prediction (the saved ONNX
# file holds the readings, so a model exported before reads once and is refused; since stop 47 two readings, not
# four: an exported file keeps its own, so no new version); 4: the same input, read by a
# network with a fourth block (`patch_network`: its receptive field spans the crop; a version-3 state dict
# does not fit it); 5: the same input, read by a network whose poolings are anti-aliased (`BLUR_TAPS`: the state
# dict is the same, the function another); 6: the native and the context crop both in units of the surroundings
# alone, the image-wide channels dropped (module docstring; a version-5 state dict has three input channels).
INPUT_VERSION = "6"
INPUT_CHANNELS = CHANNELS
# The surroundings' spread is at least 1/20 of the image's tissue range (set at stop 26, before running): flat
# fat must not turn a faint ripple into a clip-sized signal. Both channels are clipped to LOCAL_RANGE spreads, so
# metal (tens of spreads over fat) stands out without swamping the outline, and air (far below any tissue) reads
# as its floor.
LOCAL_FLOOR = 0.05
LOCAL_RANGE = (-4.0, 8.0)
IMAGE_PASSES = 15000
MAX_EPOCHS = 30
# After the warm-up, an image's crops to train through are the network's top ones at its last ranking, made in
# every RANK_EVERY-th epoch (and in the first epoch after the warm-up): between rankings the network moves little,
# and one ranking costs about three training passes (`training_crops`).
RANK_EVERY = 2
# Sharpness r of the training pool (1/r) log mean exp(r x): r -> infinity is the maximum, r -> 0 the mean. Set once
# to 5 and not tuned (docs/history.md "Second look": biopsy ROC-AUC at 500 labels 0.952-0.962 with the hard maximum,
# 0.960-0.970 with r = 5, four paired runs); prediction keeps the hard maximum (the same ranking within 0.001).
LSE_SHARPNESS = 5.0
# Share of a round's steps during which the one-cycle learning rate rises (OneCycleLR's pct_start, its default
# 0.3): while it does, the crops trained through are each image's strongest candidates by their score, not the
# network's own choice (`training_crops`; docs/history.md "Second look", stop 36).
WARMUP_SHARE = 0.3
# Contrast jitter in training (`contrast_jitter`): CONTRAST_SHARE of the crops a step trains through have every
# channel's deviation from its own median multiplied by a factor drawn log-uniformly from [CONTRAST_MIN, 1], so a
# clip is also seen as faintly as a hydrogel marker's core in dense gland, and a calcification or a skin marker as
# faintly as tissue: the network must tell them by their outline, not by how bright they are (issue 13's "sees the
# marker, not the brightness"). Both set once before measuring (†: a quarter is the contrast of the faintest
# unsaturated synthetic clips against the saturated ones; half the crops keep their own contrast) and not tuned.
# docs/history.md "Second look", stop 41: cross-validated biopsy ROC-AUC, held-out drops seed 1, seeds 0 / 1 / 2.
CONTRAST_MIN = 0.25
CONTRAST_SHARE = 0.5
# The symmetries of the square (`_symmetry`'s numbering) a prediction averages its patch logits over: the identity
# and the half turn, a subgroup (so no orientation is favoured, and the mean is invariant under both). Stop 37
# cross-validated read once / under four (these two and the two diagonal mirrors) / under all eight, with the same
# trained networks (docs/history.md "Second look"): held-out drops seed 1 0.954 / 0.960 / 0.960, seed 2 0.955 /
# 0.962 / 0.962, and kept four. Stop 47 measured two against four the same way on the product's network (version
# 11.4, `bench_second_look_cv.py`, three folds): seed 1's drops 0.9935 / 0.9929 and (training seed 1) 0.9945 /
# 0.9958, seed 2's 0.9845 / 0.9840, a mean difference of -0.0001 (the identity with a diagonal mirror instead:
# 0.9928, 0.9947, 0.9831). Two, since four bought nothing for twice the patch network's inference CPU, which
# had become most of an image's cost on the 2-core machine of stops 44-47 (about 14 of 28 ms).
READ_SYMMETRIES = (0, 3)
# Shift jitter in training (`shift_jitter`): each batch's crops are moved by up to SHIFT_JITTER px along each axis
# (edges repeated), so the network does not learn where in the crop an object sits to the pixel. A candidate's
# centre lies on the score's grid, 2 x 2 blocks of the 1024-px display (`candidates`), so the same clip falls one
# pixel or so differently in the crop of another alignment, a mirrored image or a shifted one: stop 57 moved the
# whole display of the real clip image by 0-3 px and its p_biopsy went 0.074-0.165 (`/work/scratch/s57/shift57.py`
# on a demo model of version 15.4), the other eight images 0.003-0.15. Set to the grid's step before measuring.
SHIFT_JITTER = 2
# Anti-aliased pooling (`blur_pool`; Zhang, "Making convolutional networks shift-invariant again", ICML 2019): each
# 2x2 max pooling of stride 2 becomes a max pooling of stride 1, then a binomial low-pass filter sampled at stride
# 2. A stride-2 pooling is not shift-invariant: the same object one display pixel away falls on the other phase of
# its grid, and its reading moves (stop 58: one candidate of the real clip image read 0.270 and 0.398 one to 1.3
# px apart, docs/history.md). The filter is Zhang's "Tri-3" ([1, 2, 1] / 4 on each axis, his best trade-off of
# accuracy and consistency for ResNets), the textbook one, not fitted to anything here.
BLUR_TAPS = (1.0, 2.0, 1.0)
# A training that falls apart is rolled back (`train_patch_mil`). At the one-cycle peak a round can diverge within
# one epoch: its loss jumps from below 0.5 to above its first epoch's (stop 59, held-out drops seed 2, fold 2: 0.47
# -> 0.85 at epoch 10 of 30, no gradient spike), the network's choice of each image's top crops becomes noise, and
# from then on it learns that three random crops are a clip (the trap `training_crops` avoids at the start): the
# fold ended at ROC-AUC 0.54 against 0.97-0.99 for the others. An epoch after the warm-up whose mean loss exceeds
# the first epoch's (a network worse than after one pass: no constant) is undone: the weights, BatchNorm statistics
# and optimizer state of the epoch with the lowest loss so far come back, the crops are ranked afresh, and the
# schedule goes on. Warm-up epochs are left alone: their crops are the candidates' own order, so the trap cannot
# start there, and with few labels their losses hover at the first epoch's (a demo round: 0.758 against 0.755).
# Rewinding past a loss spike is what large-model training does (Chowdhery et al., "PaLM", 2022, section 5.1).


def epochs_for(n_images: int) -> int:
    """Patch-network epochs for a round of `n_images` labelled images: MAX_EPOCHS, or IMAGE_PASSES / n_images."""
    return max(1, min(MAX_EPOCHS, -(-IMAGE_PASSES // max(n_images, 1))))


def network_input(crops: np.ndarray) -> np.ndarray:
    """The patch network's input [N, K, INPUT_CHANNELS, P, P] float32 (C-contiguous) from kept crops
    [N, K, CHANNELS, P, P] (`candidates`: native, context; tissue units): each channel minus the context's median,
    over the context's 10th-90th percentile spread (at least LOCAL_FLOOR), clipped to LOCAL_RANGE (module
    docstring), so an offset and a positive gain of the pair change nothing while the spread stays above its floor.
    Train, ONNX export and inference all go through here, so the network's input is defined once. Raises ValueError
    for crops of another layout.
    """
    x = np.asarray(crops, dtype=np.float32)
    if x.ndim != 5 or x.shape[2] != CHANNELS:
        raise ValueError(f"crops must be [N, K, {CHANNELS}, P, P] (native, context), not {list(x.shape)}")
    context = x[:, :, 1].reshape(*x.shape[:2], -1)
    p10, median, p90 = np.percentile(context, (10, 50, 90), axis=-1)[..., None, None, None]
    local = (x - median) / np.maximum(p90 - p10, np.float32(LOCAL_FLOOR))
    return np.ascontiguousarray(np.clip(local, *LOCAL_RANGE), dtype=np.float32)


def patch_network():
    """[N, K, INPUT_CHANNELS, P, P] (`network_input`) -> image logits [N] (max over K) and patch logits [N, K].

    Small on purpose (about 61 k weights, 3.4 M multiply-adds per crop): a clip's shape is a few strokes at 32 px,
    and CPU inference must stay far above the 67 images/s the pipeline needs at K crops per image. Four 3x3
    blocks, each after an anti-aliased 2x2 pooling (`blur_pool`) but the first, give a receptive field of 52 px
    on an 8-px grid (38 px with plain poolings, up to input version 4), so each unit of the last block sees the
    whole 32-px crop: a ring clip from a triangle skin marker, a "Z" clip from two crossing ligaments, are told
    apart by the whole outline. With three blocks (up to version 3, about 24 k weights) it was 18 px, about half
    a crop; the fourth block, at 4 x 4 px, adds a fifth of the cost (docs/history.md "Second look", stop 39).
    """
    import torch
    import torch.nn as nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    class PatchMIL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                block(INPUT_CHANNELS, 16),
                blur_pool(16),
                block(16, 32),
                blur_pool(32),
                block(32, 64),
                blur_pool(64),
                block(64, 64),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(),
                nn.Linear(64, 1),
            )

        def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
            n, k = x.shape[:2]
            return self.features(x.flatten(0, 1).contiguous(memory_format=torch.channels_last)).view(n, k)

        def read_logits(self, x: torch.Tensor) -> torch.Tensor:
            """Patch logits [N, K] as predictions read them: the mean over READ_SYMMETRIES."""
            return torch.stack([self.patch_logits(_symmetry(x, w)) for w in READ_SYMMETRIES]).mean(dim=0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.read_logits(x).max(dim=1).values

    # Channels-last (NHWC) memory: PyTorch's CPU convolutions with 3-64 channels at 8-32 px run faster than in NCHW
    # (`train_patch_mil`, 20 epochs on 500 images, 2 cores: 87.4 -> 62.4 s wall; most of a step is the
    # no-gradient scoring of all K crops); the same network and weights, only the memory layout differs.
    return PatchMIL().to(memory_format=torch.channels_last)


def blur_pool(channels: int):
    """Anti-aliased 2x2 max pooling of [B, `channels`, H, W] -> [B, channels, ceil(H / 2), ceil(W / 2)]: a max
    pooling of stride 1 (edge repeated, so the size holds), then the binomial filter BLUR_TAPS (outer product,
    normalized to sum 1) on each channel at stride 2, edges reflected (Zhang, ICML 2019; BLUR_TAPS above). No
    weights to learn: the filter is a non-persistent buffer, so the state dict is the plain pooling's."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    kernel = torch.outer(taps, taps) / taps.sum() ** 2

    class BlurPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
            pad = len(BLUR_TAPS) // 2
            return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), self.kernel, stride=2, groups=channels)

    return BlurPool()


def lse_pool(logits, sharpness: float = LSE_SHARPNESS):
    """Smooth maximum over the last axis of patch logits [N, k] -> [N]: (1/r) log((1/k) sum exp(r x)), between
    the mean and the maximum (LSE pooling, Pinheiro & Collobert, CVPR 2015); every crop gets gradient, the
    highest the most."""
    import torch

    return (torch.logsumexp(sharpness * logits, dim=-1) - math.log(logits.shape[-1])) / sharpness


def _symmetry(x, which: int):
    """One of the 8 symmetries of the square on the last two axes (0 = identity)."""
    if which & 4:
        x = x.transpose(-1, -2)
    if which & 2:
        x = x.flip(-1)
    if which & 1:
        x = x.flip(-2)
    return x


def contrast_jitter(xb, generator=None, low: float = CONTRAST_MIN, share: float = CONTRAST_SHARE):
    """Crops [B, k, C, P, P] (tensor) with CONTRAST_SHARE of them (each crop drawn on its own) brought closer to
    their own per-channel median by a factor log-uniform in [`low`, 1] (module constants): the same object at
    lower contrast over the same surroundings. The median and the ordering of every crop's values are kept, so
    the outline is unchanged; only how far it stands out shrinks. Draws from `generator` (torch's global one when
    None, seeded by `train_patch_mil`)."""
    import torch

    b, k = xb.shape[:2]
    draw = torch.rand(b, k, 2, generator=generator)
    factor = torch.exp(math.log(low) * draw[..., 0])
    factor = torch.where(draw[..., 1] < share, factor, torch.ones_like(factor))[..., None, None, None]
    median = xb.flatten(-2).median(dim=-1).values[..., None, None]
    return median + factor * (xb - median)


def shift_jitter(xb, generator=None, most: int = SHIFT_JITTER):
    """Crops [B, k, C, P, P] (tensor) all moved by one random (dy, dx), each in [-`most`, `most`] px, the pixels
    moved in from outside repeating the crop's edge (SHIFT_JITTER above). One shift per batch, as one symmetry:
    one cheap tensor op per step. Draws from `generator` (torch's global one when None)."""
    import torch
    import torch.nn.functional as F

    if most <= 0:
        return xb
    dy, dx = (int(v) for v in torch.randint(0, 2 * most + 1, (2,), generator=generator))
    shape = xb.shape
    flat = xb.reshape(-1, *shape[-3:])
    padded = F.pad(flat, (most, most, most, most), mode="replicate")
    return padded[..., dy : dy + shape[-2], dx : dx + shape[-1]].reshape(shape)


def training_crops(net, xb, top: int, warming_up: bool):
    """Indices [B, top] of the crops of a batch [B, K, ...] to train through: the `top` the network scores
    highest, or, while the learning rate warms up, the first `top` slots (the candidates come strongest score
    first). Why: until it has learnt something the network's ranking is noise, and a clip image then teaches that
    three random tissue crops are a clip; a round could stay there (stop 36: 2 of 6 seeds on one demo snapshot
    ended at audit ROC-AUC 0.49-0.55, the others 0.96-0.98). The candidates' score knows where the salient objects
    are from the first step, and a clip is most often the strongest candidate."""
    import torch

    if warming_up:
        return torch.arange(top).expand(len(xb), top)
    net.eval()  # choosing must not move BatchNorm's running statistics
    with torch.no_grad():
        best = net.patch_logits(xb).topk(top, dim=1).indices
    net.train()
    return best


def train_patch_mil(
    crops: np.ndarray,
    flags: np.ndarray,
    epochs: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    threads: int = 2,
    top: int = 3,
    contrast: tuple[float, float] = (CONTRAST_MIN, CONTRAST_SHARE),
    shift: int = SHIFT_JITTER,
    rollback: bool = True,
    notes: list[str] | None = None,
):
    """Train `patch_network` on crops [N, K, (C,) P, P] (float32) and image flags [N] (bool); return it in eval
    mode.

    `epochs` None: `epochs_for(N)`. One-cycle AdamW, a random square symmetry per batch (module docstring),
    `contrast_jitter` on the crops trained through (`contrast`: its lowest factor and share; (1, 0) turns it
    off), `shift_jitter` by up to `shift` px (0 turns it off), positives weighted by sqrt(negatives / positives).
    Each step trains on `top` crops per image through `lse_pool` (module docstring; this halves the cost of a
    round): the network's highest-scoring ones, scored without gradients in every RANK_EVERY-th epoch and reused
    in between, or while the learning rate warms up the strongest candidates (`training_crops`).
    With `rollback`, an epoch after the warm-up whose mean loss exceeds the first epoch's is undone (module
    constants: the weights, BatchNorm statistics and optimizer state of the lowest-loss epoch so far come back, and
    the crops are ranked afresh); each rollback is logged and appended to `notes` when given (the model's
    warnings).
    `threads` caps torch's CPU threads (the 2-core budget of the issue).
    """
    import copy

    import torch
    import torch.nn as nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = torch.from_numpy(network_input(crops))
    y = torch.from_numpy(np.asarray(flags, dtype=np.float32))
    epochs = epochs or epochs_for(len(x))
    net = patch_network()
    steps = epochs * max(1, (len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-2, fused=True)  # one kernel, not one per tensor
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=WARMUP_SHARE)
    pos = float(y.sum())
    weight = torch.tensor(np.sqrt((len(y) - pos) / pos) if 0 < pos < len(y) else 1.0, dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    chosen = torch.full((len(x), top), -1, dtype=torch.long)  # each image's crops at its last scoring

    def warming_up() -> bool:
        """Whether the next step is inside the warm-up (the scheduler counts the steps taken: the next is step
        last_epoch + 1 of `steps`)."""
        return sched.last_epoch + 1 <= WARMUP_SHARE * steps

    first = lowest = math.inf  # mean loss of the first epoch, and the lowest so far
    kept = None  # (epoch, weights, optimizer state) of the lowest-loss epoch
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x))
        total, seen = 0.0, 0
        warm_epoch = warming_up()  # it starts inside the warm-up
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two
                sched.step()
                continue
            xb = _symmetry(x[idx], int(torch.randint(0, 8, (1,))))
            if xb.shape[1] > top:  # only the top crops can win the max: backpropagate through those alone
                warming = warming_up()
                if warming or epoch % RANK_EVERY == 0 or bool((chosen[idx] < 0).any()):
                    best = training_crops(net, xb, top, warming)
                    if not warming:
                        chosen[idx] = best
                else:
                    best = chosen[idx]
                xb = xb[torch.arange(len(idx))[:, None], best]
            xb = shift_jitter(contrast_jitter(xb, None, *contrast), None, shift)
            loss = loss_fn(lse_pool(net.patch_logits(xb)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        mean = total / max(seen, 1)
        first = mean if epoch == 0 else first
        if mean <= lowest:
            lowest, kept = mean, (epoch, copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()))
        elif rollback and mean > first and not warm_epoch:
            scheduled = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            net.load_state_dict(kept[1])
            opt.load_state_dict(kept[2])
            for group, now in zip(opt.param_groups, scheduled, strict=True):
                group.update(now)  # the schedule is not rewound: rate and momentum stay where it is
            chosen.fill_(-1)
            note = (
                f"patch network: epoch {epoch}'s loss {mean:.3f} is above the first epoch's {first:.3f}: "
                f"rolled back to epoch {kept[0]} ({lowest:.3f})"
            )
            _log.warning(note)
            if notes is not None:
                notes.append(note)
    return net.eval()


def predict_patch_mil(net, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image probabilities [N], patch probabilities [N, K]) of crops [N, K, (C,) P, P], each crop read under
    READ_SYMMETRIES (`read_logits`)."""
    import torch

    with torch.no_grad():
        patch = net.read_logits(torch.from_numpy(network_input(crops)))
        prob = torch.sigmoid(patch)
    return prob.max(dim=1).values.numpy(), prob.numpy()
