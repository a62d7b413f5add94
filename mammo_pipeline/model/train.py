"""Train the two-flag ResNet18 on the labeled train split; measure it on the audit split; save everything.

fastai `vision_learner` (resnet18, two outputs, BCEWithLogits: has_biopsy_marker and is_mag_view learned
independently). The train images go through `augment.training_views` once, so PyTorch, the ONNX parity
check and ONNX inference all see the very same tensors; besides its framings and display curves (training
draws only), the only augmentation is a train-only random flip (from scratch). num_workers=0, seeded: one
seed and one label snapshot give one set of weights, and so one `model_version`.

Out-of-sample probabilities for the train images (the labeling app's disagreement queue) come from a
K-fold logistic regression on the *untrained* body's pooled features (ImageNet features when pretrained,
random ones otherwise): cheap (one forward pass) and honest, since those features never saw a label.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_pipeline.atomic import write_bytes, write_parquet, write_text
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.model import plots, registry
from mammo_pipeline.model import second_look_model as second_look
from mammo_pipeline.model.augment import training_views
from mammo_pipeline.model.evaluate import (
    detailed_metrics,
    evaluate,
    false_alarm_reason,
    miss_reason,
    needs_review,
    operating_points,
    roc_auc,
)
from mammo_pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, describe, preprocess_batch
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.model.weights import load_imagenet_state
from mammo_pipeline.progress import ProgressFn
from mammo_pipeline.settings import Settings

REQUIRED_COLUMNS = ("sop_instance_uid", "hospital", "label", "has_biopsy_marker", "is_mag_view", "split", "model_png")
PICTURES = {
    "confusion": "confusion_matrix.png",
    "missed": "missed_audit.png",
    "false_positives": "false_positive_audit.png",
    "rounds": "accuracy_by_round.png",
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; a field left at None takes the default of its path (`SCRATCH` or `PRETRAINED`).

    From scratch the network must learn its own features from a few hundred images, so it gets a longer
    one-cycle schedule at a higher learning rate, train-only random flips (markers and mag views look the
    same mirrored), train-only framings (half the draws cropped to the breast, `model/augment.py`: a cropped
    export is not a coned view) and positive-class weights for the rarer flags. Fine-tuning ImageNet features needs a
    frozen head epoch and a gentle learning rate instead. Both fit the demo (5 retrains on 2 CPU cores).
    """

    size: int | None = None  # square side the network sees (model/preprocess.py: area, top-hat and max channels)
    epochs: int | None = None  # unfrozen epochs (all epochs when training from scratch); 0: from image_passes
    image_passes: int | None = None  # when epochs == 0: epochs = ceil(image_passes / n_train), at most 40
    freeze_epochs: int | None = None  # head-only epochs first, when pretrained
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None  # AdamW decoupled weight decay
    flips: bool | None = None  # train-only random horizontal + vertical flips (seeded)
    framings: bool | None = None  # train-only: half the draws see the view cropped to its breast (model/augment.py)
    tones: bool | None = None  # train-only: half the draws see the view under a random display curve (augment.py)
    pos_weight: bool | None = None  # weight each flag's positives by sqrt(negatives / positives) in the loss
    seed: int | None = None  # None: settings.seed
    pretrained: str | None = None  # None: settings.pretrained ('imagenet' | 'none')
    oof_folds: int = 3
    second_look: bool = True  # biopsy flag from the second look (needs display_png); False: the global network's
    threads: int = 0  # torch intra-op threads while training; 0 = torch's default (one per core)

    def resolved(self, pretrained: bool) -> TrainConfig:
        """This config with every None field taken from the defaults of the path."""
        defaults = PRETRAINED if pretrained else SCRATCH
        return replace(self, **{k: v for k, v in asdict(defaults).items() if getattr(self, k) is None})

    def epochs_for(self, n_train: int) -> int:
        """The epochs to run on `n_train` images: `epochs`, or (epochs == 0) enough to see `image_passes` images."""
        if self.epochs:
            return self.epochs
        return max(1, min(MAX_EPOCHS, math.ceil((self.image_passes or 0) / max(n_train, 1))))


MAX_EPOCHS = 40


@dataclass(frozen=True)
class PathDefaults:
    size: int
    epochs: int
    image_passes: int
    freeze_epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    flips: bool
    framings: bool
    tones: bool
    pos_weight: bool


# The input side both paths use by default (ImageNet fine-tuning included): see the README's learning curves.
INPUT_SIZE = 64

# Chosen with benchmarks/bench_learning_curve.py (synthetic drops, 50..410 train labels, 2 shared CPU cores).
# PRETRAINED is the schedule measured by benchmarks/bench_train.py; SCRATCH learns with far fewer labels
# than the same schedule from random weights (which stayed at 0.2-0.6 audit accuracy).
SCRATCH = PathDefaults(
    size=INPUT_SIZE,  # the global view answers the mag flag (the second look answers biopsy); 64 px learns it
    epochs=0,  # from image_passes: 40 (the cap) at 50 labels, 5 at 500, so every round gets about the same compute
    # 2400 passes: mag ROC-AUC 0.986 vs 0.989 at 4800, for 0.61x the CPU (500 labels of the realistic drops, 368 vs
    # 602 CPU-s on the loaded 2-core machine: train_model(second_look=False) on bench_learning_curve.py's data set)
    image_passes=2400,
    freeze_epochs=0,
    lr=5e-3,
    batch_size=16,
    weight_decay=1e-2,
    flips=True,
    framings=True,  # a contact view cropped to the breast is not a mag view (model/augment.py)
    tones=True,  # nor one shown under another display curve (model/augment.py, since stop 58)
    pos_weight=True,
)
PRETRAINED = PathDefaults(
    size=INPUT_SIZE,  # fine-tune at the size chosen by measurement (was 160 px)
    epochs=2,
    image_passes=0,
    freeze_epochs=1,
    lr=2e-3,
    batch_size=32,
    weight_decay=1e-2,
    flips=False,
    framings=True,  # real archives, what this path is for, hold cropped exports too (unmeasured: no weights here)
    tones=True,  # and every vendor's display curve (unmeasured here too)
    pos_weight=False,
)


@dataclass(frozen=True)
class TrainResult:
    ref: ModelRef
    metrics: dict
    row: dict  # the registry row
    pictures: dict[str, Path]  # name -> PNG in the model folder
    train_seconds: float
    warnings: list[str] = field(default_factory=list)


def weights_version(state_dict: dict) -> str:
    """Content hash of the weights: sha256 over (name, bytes) in key order, first 12 hex."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _check_labels(labels: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels table lacks columns {missing}; expected warehouse/labels/current.parquet")
    bad = set(labels["split"]) - {"train", "audit"}
    if bad:
        raise ValueError(f"labels.split must be 'train' or 'audit', found {sorted(bad)}")
    if (labels["split"] == "train").sum() < 2:
        raise ValueError("fewer than 2 labels with split == 'train': label some images first")


def _datasets(
    images: np.ndarray,
    flags: np.ndarray,
    cropped: np.ndarray | None = None,
    seed: int = 0,
    toned: tuple[np.ndarray, np.ndarray | None] | None = None,
):
    """fastai Datasets over row numbers of `images` (preprocess() output, computed once) and their flags; with
    `cropped` (the same images cropped to the breast, `augment.training_views`) each draw takes either framing with
    p = 1/2 (an even split: neither framing is the rarer one), from a generator of its own seeded with `seed`, so
    turning the framings on leaves the network's initial weights and the flips' draws as they were. With `toned`
    (the images, and the cropped ones, under a display curve: `augment.training_views`) each draw then takes the
    toned one of its framing with p = 1/2, drawn after the framing. Training draws only: evaluation, out-of-fold
    features and export read the images themselves, and the valid split is empty."""
    import torch
    from fastai.data.core import Datasets
    from fastai.torch_core import TensorImage
    from fasttransform import Transform

    pixels = torch.from_numpy(images)
    crops = torch.from_numpy(cropped) if cropped is not None else None
    tones = None if toned is None else tuple(None if t is None else torch.from_numpy(t) for t in toned)
    draws = torch.Generator().manual_seed(seed)
    targets = torch.tensor(flags, dtype=torch.float32)

    class PreprocessedImage(Transform):
        def encodes(self, i):
            framing = int(crops is not None and bool(torch.rand((), generator=draws) < 0.5))
            if tones is not None and tones[framing] is not None and torch.rand((), generator=draws) < 0.5:
                return TensorImage(tones[framing][i])
            return TensorImage((crops if framing else pixels)[i])

    class Flags(Transform):
        def encodes(self, i):
            return targets[i]

    return Datasets(list(range(len(images))), tfms=[[PreprocessedImage()], [Flags()]], splits=None)


def _random_flips():
    """Callback, training batches only: each image flipped left-right and/or up-down with p = 1/2 (torch RNG)."""
    import torch
    from fastai.callback.core import Callback

    class RandomFlips(Callback):
        order = 5

        def before_batch(self) -> None:
            if not self.training:
                return
            x = self.learn.xb[0]
            n = x.shape[0]
            lr = (torch.rand(n) < 0.5).view(n, 1, 1, 1).to(x.device)
            ud = (torch.rand(n) < 0.5).view(n, 1, 1, 1).to(x.device)
            x = torch.where(lr, x.flip(-1), x)
            self.learn.xb = (torch.where(ud, x.flip(-2), x),)

    return RandomFlips()


def positive_weights(flags: np.ndarray) -> np.ndarray:
    """Per-flag loss weight of positives: sqrt(negatives / positives), clipped to [1, 4] (1 with no positives)."""
    pos = flags.sum(axis=0).astype(float)
    neg = len(flags) - pos
    ratio = np.divide(neg, pos, out=np.ones_like(pos), where=pos > 0)
    return np.clip(np.sqrt(ratio), 1.0, 4.0)


def _pooled(net, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The body's average-pooled features [N, 512] of preprocessed images, in eval mode."""
    import torch

    net.eval()
    with torch.no_grad():
        out = [
            net[0](torch.from_numpy(images[i : i + batch_size])).mean(dim=(2, 3)).numpy()
            for i in range(0, len(images), batch_size)
        ]
    return np.concatenate(out) if out else np.zeros((0, 512), dtype=np.float32)


def flip_reading(net):
    """`net` as every prediction reads it: its logits [N, n_out] for images [N, 3, S, S] averaged over the image
    and its left-right, up-down and double flips (test-time augmentation, one batched pass of 4N).

    Why: a breast's side and a view's up-down orientation carry no class (the from-scratch path trains under the
    same flips, `_random_flips`), so the four readings differ only by the network's noise, which the mean reduces:
    magnification ROC-AUC of five demo-round models on their audit set 0.972 / 0.994 / 0.994 / 0.986 / 0.958 read
    once, 0.968 / 0.999 / 0.997 / 0.994 / 0.994 read four times (docs/history.md, stop 37). The audit evaluation
    after training (so the operating points), the ONNX export (so int8 inference) and the parity check all read
    through this; the heat maps explain the plain reading. The ImageNet fine-tuning path, which trains without
    flips, is read the same way (unmeasured: no ImageNet weights on the machines this was built on).
    """
    import torch

    class FlipReading(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.inner(torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]))
            return logits.reshape(4, -1, logits.shape[-1]).mean(dim=0)

    return FlipReading(net)


def _predict(net, paths: list[Path], size: int, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities [N, 2] as `flip_reading` reads them, in eval mode."""
    import torch

    net.eval()
    reader = flip_reading(net)
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            x = torch.from_numpy(preprocess_batch(paths[i : i + batch_size], size))
            out.append(torch.sigmoid(reader(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def out_of_fold(features: np.ndarray, flags: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """[N, 2] probabilities, each from a logistic regression that never saw that image (K-fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(features)
    probs = np.zeros((n, 2), dtype=float)
    if n < 2:
        probs[:] = flags.mean(axis=0) if n else 0.5
        return probs
    splitter = KFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    for fit_idx, held_idx in splitter.split(features):
        for k in range(2):
            y = flags[fit_idx, k]
            if y.min() == y.max():  # one class in this fold: its frequency is all we know
                probs[held_idx, k] = float(y[0])
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            clf.fit(features[fit_idx], y)
            probs[held_idx, k] = clf.predict_proba(features[held_idx])[:, 1]
    return probs


def _progress_callback(progress: ProgressFn | None, total: int):
    from fastai.callback.core import Callback

    class Report(Callback):
        order = 90

        def __init__(self) -> None:
            self.done = 0

        def after_batch(self) -> None:
            if self.training and progress is not None:
                self.done += 1
                progress(min(self.done, total), total)

    return Report()


def _label_counts(labels: pd.DataFrame) -> dict:
    return {
        split: {str(k): int(v) for k, v in part["label"].value_counts().sort_index().items()}
        for split, part in labels.groupby("split")
    }


LAYOUT_TRIALS = 3  # timed passes per memory layout in `fastest_memory_format` (the first one also warms up)


def fastest_memory_format(model, sample, device) -> tuple:
    """(the faster memory layout, {layout name: best seconds}) of a forward and backward pass of `model` on `sample`
    [B, C, H, W] float32 (a training batch, NCHW as the data loader gives it): `torch.channels_last` or
    `torch.contiguous_format`, each timed LAYOUT_TRIALS times, alternately, the best time kept.

    Why measured rather than fixed: oneDNN's CPU convolutions ran a ResNet18 step at 64 px (batch 16) 2.4x faster
    channels-last on stop 44's AMD EPYC with AVX2, and 15 % slower on stop 46's (a whole 500-label round of the
    global network 91 against 75 s wall, two interleaved pairs), which reports the same instruction set. So the
    layout is tried, as cuDNN's benchmark mode (`torch.backends.cudnn.benchmark`) tries convolution algorithms.
    The passes run in eval mode, so no BatchNorm statistic or dropout draw changes, and the gradients are cleared
    after: training starts from the same state whichever layout wins, and only its speed differs (the same
    weights up to float rounding). The model is left in the faster layout.
    """
    import torch

    was_training = model.training
    best: dict = {}
    model.eval()
    try:
        x = sample.to(device)
        for _ in range(LAYOUT_TRIALS):  # alternately, so a neighbour's burst of work costs both layouts alike
            for layout in (torch.channels_last, torch.contiguous_format):
                model.to(device, memory_format=layout)
                start = time.perf_counter()
                model(x).float().sum().backward()
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                best[layout] = min(best.get(layout, math.inf), time.perf_counter() - start)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    faster = min(best, key=best.get)
    model.to(device, memory_format=faster)
    return faster, {str(k).removeprefix("torch."): v for k, v in best.items()}


LAYOUT_RECORD = "memory_layout.json"  # beside the models: the layout measured for each machine and batch shape
_LAYOUTS: dict[str, dict] = {}  # ... and as this process has read or measured it


def training_layout(model, sample, device, folder: Path) -> tuple:
    """(the memory layout to train `model` in, {layout name: best seconds} of the measurement that chose it):
    `fastest_memory_format`, measured once per machine, torch version, device and batch shape, then kept, in this
    process and in `folder`/LAYOUT_RECORD, and reused. Why: the two layouts round differently, so the same labels
    and seed trained different weights (another model version) whenever the faster layout changed between two
    trainings, as it did under load (CI of stop 57: `test_same_seed_same_weights_other_seed_other_weights`). The
    model is left in the chosen layout."""
    import platform

    import torch

    key = f"{platform.node()} | torch {torch.__version__} | {device.type} | {tuple(sample.shape)}"
    record = folder / LAYOUT_RECORD
    if key not in _LAYOUTS:
        _LAYOUTS.update({k: v for k, v in _read_layouts(record).items() if k not in _LAYOUTS})
    kept = _LAYOUTS.get(key)
    if not (isinstance(kept, dict) and kept.get("layout") in ("channels_last", "contiguous_format")):
        layout, seconds = fastest_memory_format(model, sample, device)
        kept = _LAYOUTS[key] = {"layout": str(layout).removeprefix("torch."), "probe_seconds": seconds}
        write_text(record, json.dumps({**_read_layouts(record), key: kept}, indent=2, sort_keys=True))
    layout = getattr(torch, kept["layout"])
    model.to(device, memory_format=layout)
    return layout, kept["probe_seconds"]


def _read_layouts(record: Path) -> dict:
    """The layouts kept in `record` (`training_layout`); {} when there is none or it cannot be read."""
    try:
        kept = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def train_model(
    settings: Settings, labels: pd.DataFrame, hyper: TrainConfig | None = None, progress: ProgressFn | None = None
) -> TrainResult:
    """Train on split == 'train', evaluate on split == 'audit', save models/<v>/, the registry row, current.json."""
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle, fine_tune)
    import torch
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai.optimizer import OptimWrapper
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner
    from torchvision.models import resnet18

    from mammo_pipeline.model.weights import load_body

    hyper = hyper or TrainConfig()
    seed = settings.seed if hyper.seed is None else hyper.seed
    mode = hyper.pretrained or settings.pretrained
    if mode not in ("imagenet", "none"):
        raise ValueError(f"pretrained must be 'imagenet' or 'none', not {mode!r}")
    _check_labels(labels)
    imagenet_state, pretrained_source = load_imagenet_state(replace(settings, pretrained=mode))
    pretrained = imagenet_state is not None
    hyper = hyper.resolved(pretrained)
    notes: list[str] = []

    labels = labels.sort_values("sop_instance_uid", kind="stable").reset_index(drop=True)
    train = labels[labels["split"] == "train"].reset_index(drop=True)
    audit = labels[labels["split"] == "audit"].reset_index(drop=True)
    missing = [p for p in labels["model_png"] if not (settings.cache / p).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} model PNGs missing under {settings.cache}, e.g. {missing[0]}")
    if audit.empty:
        notes.append("no audit labels: metrics are null; label some audit images to measure the model")

    was_deterministic, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if hyper.threads:
        torch.set_num_threads(hyper.threads)  # on a shared machine, 1 thread avoids spinning on busy cores
    set_seed(seed, reproducible=True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.monotonic()
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        train_paths = [settings.cache / p for p in train["model_png"]]
        flags = train[["has_biopsy_marker", "is_mag_view"]].to_numpy(bool)
        # a crop's pixels come from the display PNG when there is one (`augment.crop_to_breast`)
        displays = [settings.cache / p for p in train["display_png"]] if "display_png" in train else None
        views = training_views(train_paths, hyper.size, seed, displays, crops=hyper.framings, tones=hyper.tones)
        images, cropped = views.plain, views.cropped
        toned = (views.toned, views.toned_cropped) if hyper.tones else None
        dsets = _datasets(images, flags, cropped, seed, toned)
        # fastai drops the last partial train batch (a batch of 1 breaks BatchNorm); keep >= 1 batch per epoch
        batch_size = max(2, min(hyper.batch_size, len(train)))
        dls = dsets.dataloaders(bs=batch_size, num_workers=0, device=device)
        pos_weight = torch.tensor(positive_weights(flags), dtype=torch.float32) if hyper.pos_weight else None
        learn = vision_learner(
            dls,
            resnet18,
            n_out=2,
            pretrained=False,
            normalize=False,
            loss_func=BCEWithLogitsLossFlat(pos_weight=pos_weight),
            # torch's fused AdamW: one kernel over all weights; on CPU torch's default is a loop over every tensor
            opt_func=partial(OptimWrapper, opt=partial(torch.optim.AdamW, fused=True)),
            wd=hyper.weight_decay,
        )
        if pretrained:
            load_body(learn.model, imagenet_state)
        learn.model.cpu()
        features = _pooled(learn.model, images)
        oof = out_of_fold(features, flags.astype(int), hyper.oof_folds, seed)
        # The layout that trains fastest on this machine (`training_layout`, measured once). Back to the default layout
        # after, so the saved weights, their version hash and the ONNX export are the same whichever it was.
        layout, probe = training_layout(learn.model, torch.from_numpy(images[:batch_size]), device, settings.models)
        memory_format = {"layout": str(layout).removeprefix("torch."), "probe_seconds": probe}

        hyper = replace(hyper, epochs=hyper.epochs_for(len(train)))
        epochs_total = hyper.epochs + (hyper.freeze_epochs if pretrained else 0)
        cbs = [_progress_callback(progress, epochs_total * len(dls.train))] + ([_random_flips()] if hyper.flips else [])
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if pretrained:
                learn.fine_tune(hyper.epochs, base_lr=hyper.lr, freeze_epochs=hyper.freeze_epochs, cbs=cbs)
            else:
                learn.fit_one_cycle(hyper.epochs, hyper.lr, cbs=cbs)
        net = learn.model.to("cpu", memory_format=torch.contiguous_format).eval()
        audit_probs = _predict(net, [settings.cache / p for p in audit["model_png"]], hyper.size)
        look = _second_look(settings, train, audit, flags[:, 0], hyper, seed, notes)
        global_biopsy_auc = roc_auc(audit["has_biopsy_marker"].to_numpy(bool), audit_probs[:, 0])
        if look is not None:
            audit_probs[:, 0] = look.audit_probs
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)
    train_seconds = time.monotonic() - start

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    version = weights_version(state)
    folder = settings.models / version
    points = operating_points(audit, audit_probs)
    cut = (points["biopsy"]["threshold"], points["mag"]["threshold"])
    metrics = evaluate(audit, audit_probs, cut)
    audit_groups = _with_vendor(settings, audit)
    flags_detail = detailed_metrics(audit_groups, audit_probs, points, groups=("hospital", "manufacturer"))
    metrics["operating_points"] = points
    metrics["flags"] = flags_detail
    metrics["biopsy_source"] = "second_look" if look is not None else "global_network"
    metrics["global_network_biopsy_roc_auc"] = global_biopsy_auc

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(folder / "model.pth", buf.getvalue())
    second_look_info = None
    if look is not None:
        second_look.save(look.net, folder)
        second_look_info = second_look.describe(settings.display_size)
    keep = ["sop_instance_uid", "hospital", "label", "has_biopsy_marker", "is_mag_view", "model_png"]
    # each image's patient and study: the next model's hold-back check resamples the shared audit images by them
    keep += [c for c in ("study_instance_uid", "patient_key") if c in audit]
    audit_out = audit[keep + (["display_png"] if "display_png" in audit else [])].copy()
    audit_out["p_biopsy"], audit_out["p_mag"] = audit_probs[:, 0], audit_probs[:, 1]
    audit_out["predicted_class"] = [label_of(b >= cut[0], m >= cut[1]) for b, m in audit_probs]
    audit_out["needs_review"] = needs_review(audit_probs, points)
    audit_out["model_version"] = version
    write_parquet(audit_out, folder / "audit_predictions.parquet")
    oof_out = pd.DataFrame(
        {
            "sop_instance_uid": train["sop_instance_uid"],
            "p_biopsy": oof[:, 0],
            "p_mag": oof[:, 1],
            "out_of_sample": True,
            "model_png": train["model_png"],
            **({"display_png": train["display_png"]} if "display_png" in train else {}),
            "model_version": version,
        }
    )
    write_parquet(oof_out, folder / "oof.parquet")

    snapshot = ",".join(sorted(map(str, labels["snapshot_id"].dropna().unique()))) if "snapshot_id" in labels else ""
    hyperparameters = {**asdict(hyper), "seed": seed, "pretrained": mode}
    row = {
        "model_version": version,
        "created_at": _first_created(settings, version),
        "label_snapshot_id": snapshot,
        "n_train": len(train),
        "n_audit": len(audit),
        "label_counts": _label_counts(labels),
        "hyperparameters": hyperparameters,
        "seed": seed,
        "pretrained": mode,
        "pretrained_source": pretrained_source,
        "per_hospital_accuracy": metrics["per_hospital_accuracy"],
        "train_seconds": train_seconds,
        "operating_points": points,
        "per_hospital_metrics": {f: flags_detail[f].get("by_hospital", {}) for f in flags_detail},
        "per_vendor_metrics": {f: flags_detail[f].get("by_manufacturer", {}) for f in flags_detail},
        **{
            f"{flag}_{key}": flags_detail[flag].get(key)
            for flag in flags_detail
            for key in (*registry.METRICS, *registry.STUDY_METRICS, *registry.INTERVALS)
        },
        **{k: metrics[k] for k in registry.FLOAT_COLUMNS if k in metrics},
        "biopsy_source": metrics["biopsy_source"],
    }

    rows = list(
        zip(audit_out.has_biopsy_marker, audit_out.is_mag_view, audit_probs[:, 0], audit_probs[:, 1], strict=True)
    )
    missed = audit_out.assign(reason=[miss_reason(b, m, pb, pm, cut) for b, m, pb, pm in rows])
    missed = missed[missed["reason"] != ""]
    false_pos = audit_out.assign(reason=[false_alarm_reason(b, m, pb, pm, cut) for b, m, pb, pm in rows])
    false_pos = false_pos[false_pos["reason"] != ""]
    pictures = {name: folder / file for name, file in PICTURES.items()}
    plots.confusion_png(metrics["confusion"], [pictures["confusion"], settings.reports / PICTURES["confusion"]])
    heat = partial(_gallery_heatmaps, net, settings.cache, hyper.size, look.gallery(audit) if look else {})
    plots.missed_gallery_png(
        missed, settings.cache, [pictures["missed"], settings.reports / PICTURES["missed"]], heatmaps=heat
    )
    plots.missed_gallery_png(
        false_pos,
        settings.cache,
        [pictures["false_positives"], settings.reports / PICTURES["false_positives"]],
        heatmaps=heat,
        title="False-positive audit images",
    )
    plots.accuracy_by_round_png(
        registry.with_row(settings, row), [pictures["rounds"], settings.reports / PICTURES["rounds"]]
    )

    ref = ModelRef(
        model_version=version,
        label_snapshot_id=snapshot,
        folder=version,
        input_size=hyper.size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=pretrained,
        extra={
            "model_file": "model.pth",
            "pretrained_source": pretrained_source,
            "seed": seed,
            "operating_points": points,
            "preprocessing": describe(),
            **({"second_look": second_look_info} if second_look_info else {}),
        },
    )
    meta = {
        "ref": asdict(ref),
        "hyperparameters": hyperparameters,
        "pretrained": mode,
        "pretrained_source": pretrained_source,
        "metrics": metrics,
        "n_train": len(train),
        "n_audit": len(audit),
        "label_counts": row["label_counts"],
        "train_seconds": train_seconds,
        "preprocessing": describe(),
        "second_look": second_look_info,
        "operating_points": points,
        "oof_method": f"{hyper.oof_folds}-fold logistic regression on the untrained body's pooled features",
        "memory_format": memory_format,  # the global network's while training (`training_layout`)
        "warnings": notes,
    }
    write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True, default=str))
    ref.save(settings.models)
    registry.write_row(settings, row)  # last: a listed model is a complete one (a run killed before never lists it)
    return TrainResult(
        ref=ref, metrics=metrics, row=row, pictures=pictures, train_seconds=train_seconds, warnings=notes
    )


def _with_vendor(settings: Settings, audit: pd.DataFrame) -> pd.DataFrame:
    """`audit` plus a `manufacturer` column (the vendor profile) from the dicom_index, 'unknown' where absent."""
    out = audit.copy()
    out["manufacturer"] = "unknown"
    files = sorted(settings.table_dir("dicom_index").glob("hospital=*/*.parquet"))
    if not files or audit.empty:
        return out
    index = pd.concat(pd.read_parquet(f, columns=["sop_instance_uid", "manufacturer"]) for f in files)
    vendor = index.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")["manufacturer"]
    out["manufacturer"] = out["sop_instance_uid"].map(vendor).fillna("unknown").replace("", "unknown")
    return out


@dataclass(frozen=True)
class _SecondLook:
    net: object
    audit: second_look.Candidates
    audit_probs: np.ndarray  # [N_audit]
    audit_patch_probs: np.ndarray  # [N_audit, k]

    def gallery(self, audit: pd.DataFrame) -> dict[str, tuple]:
        """model_png -> (p_biopsy, centres, patch probabilities, display shape) of each audit image (the
        arguments of explain.with_candidates), for the galleries."""
        found = self.audit
        return {
            png: (float(self.audit_probs[i]), found.centres[i], self.audit_patch_probs[i], tuple(found.shapes[i]))
            for i, png in enumerate(audit["model_png"])
        }


def _second_look(
    settings: Settings,
    train: pd.DataFrame,
    audit: pd.DataFrame,
    biopsy: np.ndarray,
    hyper: TrainConfig,
    seed: int,
    notes: list[str],
) -> _SecondLook | None:
    """Fit the biopsy flag's second look on the train images' display PNGs; None (with a note) when disabled
    or when the labels carry no display_png column."""
    if not hyper.second_look:
        notes.append("second look disabled (TrainConfig.second_look=False): biopsy flag from the global network")
        return None
    if "display_png" not in train.columns:
        notes.append("labels have no display_png column: biopsy flag from the global network, no second look")
        return None
    threads = hyper.threads or settings.n_threads
    found = second_look.candidates_of(
        [settings.cache / p for p in train["display_png"]], threads, settings.display_size
    )
    net = second_look.fit(found, biopsy, seed, notes)
    audit_found = second_look.candidates_of(
        [settings.cache / p for p in audit["display_png"]], threads, settings.display_size
    )
    probs, patch = second_look.torch_probs(net, audit_found)
    return _SecondLook(net, audit_found, probs, patch)


def _gallery_heatmaps(net, cache: Path, size: int, looks: dict[str, tuple], model_png: str) -> np.ndarray:
    """[2, H, W] heat maps of one gallery image: the second look's candidates for the biopsy flag when the model
    has one, explain.image_heatmaps for the rest."""
    from mammo_pipeline.model.explain import image_heatmaps, with_candidates

    explanation = image_heatmaps(net, cache / model_png, size, occlude=model_png not in looks)
    if model_png in looks:
        explanation = with_candidates(explanation, *looks[model_png])
    return explanation.maps


def load_second_look(settings: Settings, ref: ModelRef):
    """The second look of `ref` (eval mode, CPU), or None for a model without one; SecondLookMismatch when it was
    made for other crops than this code cuts."""
    info = ref.extra.get("second_look")
    if not info:
        return None
    second_look.check(info, settings.display_size)
    return second_look.load(ref.path(settings.models))


def _first_created(settings: Settings, version: str) -> datetime:
    """When model `version` was first made: now, or the time its registry row holds already. The same labels and
    settings train the same weights, hence the same version: training it again must not move its `created_at` past
    its own promotions and predictions (lineage and `mammo model list` then read as if it came after them)."""
    try:
        return pd.Timestamp(registry.read_row(settings, version)["created_at"]).to_pydatetime()
    except (FileNotFoundError, KeyError, ValueError):
        return datetime.now(UTC)


def load_network(settings: Settings, ref: ModelRef):
    """The trained network of `ref` (eval mode, CPU), from models/<v>/model.pth."""

    from mammo_pipeline.model.weights import build_network, read_weights

    net = build_network()
    path = ref.path(settings.models, ref.extra.get("model_file", "model.pth"))
    net.load_state_dict(read_weights(path))
    return net.eval()
