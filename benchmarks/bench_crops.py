"""The magnification flag on views cropped to the breast: the global network trained with and without two framings
(`TrainConfig.framings`, `model/augment.py`), or display curves (`--toggle tones`), paired on the same labels and
seeds.

Run:  .venv/bin/python benchmarks/bench_crops.py [--data DIR] [--drops-seed 0] [--studies 80] [--labels 500]
      [--seeds 0,1] [--threads 0] [--keep DIR] [--toggle framings|tones]

Why: research exports crop each view to the breast (the NYU samples in `../shared/realdata/` are), and a contact
view so cropped has no air and large anatomy, like a coned magnification view. A network trained on whole-detector
views only flagged such crops as magnified; `TrainConfig.framings` trains on both.

Builds (or reuses) the learning-curve data set (`bench_learning_curve.build_dataset`; `--drops-seed` other than 0
for held-out drops), labels every image from the synthetic truth, and for each seed trains the product's from-scratch
global network (`TrainConfig()`, second look off) on the same `--labels` train images twice, with the same initial
weights: the toggled option (`--toggle`, framings by default) off (the baseline) and on, every other at the product's
default. For each run it prints the magnification ROC-AUC on the audit images as they are and on the same images
cropped tight to their breast (`augment.crop_to_breast`, no margin, pixels from the display PNG as in training), the
model's magnification threshold (balanced point, chosen on the whole audit images), the share of the cropped
non-magnification audit images at or over it, and the same share with each cropped image under a display curve
(`augment.display_curve`, seeded: a gamma or a SIGMOID, the black lifted in half); then the mean over seeds of each,
on against off (the baseline, same run), and how much of each kind of audit view the tight box keeps. With `--keep
DIR` each run's model is exported (ONNX, as `onnx_model` does) into a home of its own, `DIR/framings-on-seed0` ...,
for `bench_real_samples.py --home` and `bench_representations.py --home` (the real images are scored there, never
here: nothing is chosen on them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
import torch
from bench_learning_curve import build_dataset, labels_frame

from mammo_pipeline.model.augment import breast_box, crop_to_breast, display_curve
from mammo_pipeline.model.evaluate import roc_auc
from mammo_pipeline.model.export import export_onnx
from mammo_pipeline.model.preprocess import _as_gray_uint8, preprocess_batch
from mammo_pipeline.model.train import TrainConfig, flip_reading, load_network, train_model
from mammo_pipeline.settings import Settings


def framed(pngs: list[Path], displays: list[Path]) -> list[np.ndarray]:
    """The model PNGs cropped tight to their breast (no margin), their pixels from the display PNGs."""
    return [crop_to_breast(_as_gray_uint8(p), 0.0, _as_gray_uint8(d)) for p, d in zip(pngs, displays, strict=True)]


def mag_probs(net: torch.nn.Module, images: list[Path] | list[np.ndarray], size: int) -> np.ndarray:
    """p_mag [N] as predictions read the network (`flip_reading`: four flips) of model PNGs or arrays."""
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(preprocess_batch(images, size)))).numpy()[:, 1]


def one_run(
    settings: Settings,
    labels: pd.DataFrame,
    cut: list[np.ndarray],
    toned: list[np.ndarray],
    option: dict[str, bool],
    seed: int,
    threads: int,
    keep: Path | None = None,
) -> dict:
    """Train in a throwaway models folder (or `keep`, exported to ONNX); mag ROC-AUC on the whole audit images and
    on `cut` (the same images cropped, `framed`, in the labels' audit order), threshold, cropped negatives over it,
    and `toned` (the cropped ones under display curves) negatives over it. `option`: the toggled TrainConfig field."""
    audit = labels[labels["split"] == "audit"]
    with tempfile.TemporaryDirectory() as tmp:
        home = keep or Path(tmp)
        scratch = dataclasses.replace(
            settings, models=home / "models", warehouse=home / "warehouse", reports=home / "reports"
        )
        for folder in (scratch.models, scratch.warehouse, scratch.reports):
            folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        config = TrainConfig(second_look=False, seed=seed, threads=threads, **option)
        result = train_model(scratch, labels, config)
        seconds = time.monotonic() - start
        net = flip_reading(load_network(scratch, result.ref)).eval()
        pngs = [settings.cache / p for p in audit["model_png"]]
        whole = mag_probs(net, pngs, result.ref.input_size)
        cropped = mag_probs(net, cut, result.ref.input_size)
        curved = mag_probs(net, toned, result.ref.input_size)
        if keep is not None:
            export_onnx(scratch, result.ref).save(scratch.models)
    truth = audit["is_mag_view"].to_numpy(bool)
    threshold = result.ref.thresholds()[1]
    return {
        "auc_whole": roc_auc(truth, whole),
        "auc_cropped": roc_auc(truth, cropped),
        "threshold": threshold,
        "over": float(np.mean(cropped[~truth] >= threshold)) if (~truth).any() else float("nan"),
        "over_toned": float(np.mean(curved[~truth] >= threshold)) if (~truth).any() else float("nan"),
        "seconds": seconds,
    }


def _f(x: float | None) -> str:
    """A ROC-AUC to 4 places, a dash when undefined."""
    return "  —  " if x is None else f"{x:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (built there if missing; default: a temp dir)")
    parser.add_argument("--drops-seed", type=int, default=0, help="synthetic drops' seed (0: development set)")
    parser.add_argument("--studies", type=int, default=80, help="studies per hospital when building")
    parser.add_argument("--labels", type=int, default=500, help="train labels (a seeded sample of the train split)")
    parser.add_argument("--seeds", default="0,1", help="training seeds (each trains the option off and on)")
    parser.add_argument("--toggle", choices=("framings", "tones"), default="framings", help="the option paired")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--keep", type=Path, help="keep each run's model as a home under this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = build_dataset(args.data or Path(tmp) / "data", args.studies, args.drops_seed)
        labels = labels_frame(settings)
        audit = labels[labels["split"] == "audit"]
        if audit["is_mag_view"].all() or not audit["is_mag_view"].any():
            raise SystemExit("the audit split lacks a magnification class: raise --studies")
        print(
            f"{len(audit)} audit images ({int(audit['is_mag_view'].sum())} magnification views), drops seed "
            f"{args.drops_seed}, {args.labels} train labels per run"
        )
        print(f"seed  {args.toggle:8}  mag ROC-AUC whole  cropped  threshold  cropped non-mag over it  toned  train s")
        # the audit images cut tight to their tissue, once: every run scores the same ones
        cut = framed(
            [settings.cache / p for p in audit["model_png"]], [settings.cache / p for p in audit["display_png"]]
        )
        rng = np.random.default_rng(0)
        toned = [display_curve(img, rng) for img in cut]  # the same curves for every run
        kept = []  # share of the image the tight box keeps (1.0: the view comes back whole)
        for png in audit["model_png"]:
            gray = _as_gray_uint8(settings.cache / png)
            top, bottom, left, right = breast_box(gray)
            kept.append((bottom - top) * (right - left) / gray.size)
        kept, mag = np.array(kept), audit["is_mag_view"].to_numpy(bool)
        print(
            f"share of the image the tight box keeps, median [p10-p90]: magnification views "
            f"{np.median(kept[mag]):.2f} [{np.percentile(kept[mag], 10):.2f}-{np.percentile(kept[mag], 90):.2f}], "
            f"others {np.median(kept[~mag]):.2f} [{np.percentile(kept[~mag], 10):.2f}-"
            f"{np.percentile(kept[~mag], 90):.2f}]"
        )
        pairs: dict[str, list[tuple[float, float]]] = {"auc_whole": [], "auc_cropped": [], "over": [], "over_toned": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            train = labels[labels["split"] == "train"].sample(frac=1.0, random_state=seed).head(args.labels)
            chosen = pd.concat([train, labels[labels["split"] == "audit"]])
            runs = {}
            for on in (False, True):
                keep = args.keep / f"{args.toggle}-{'on' if on else 'off'}-seed{seed}" if args.keep else None
                runs[on] = one_run(settings, chosen, cut, toned, {args.toggle: on}, seed, args.threads, keep)
            for on, r in runs.items():
                print(
                    f"{seed:>4}  {'on ' if on else 'off'}       {_f(r['auc_whole'])}           "
                    f"{_f(r['auc_cropped'])}   {r['threshold']:.3f}      {r['over']:.3f}"
                    f"                    {r['over_toned']:.3f}  {r['seconds']:.0f}"
                )
            for key, both in pairs.items():
                off, on = runs[False][key], runs[True][key]
                if off is not None and on is not None:
                    both.append((on, off))
    for key, name in (
        ("auc_whole", "mag ROC-AUC, whole"),
        ("auc_cropped", "mag ROC-AUC, cropped"),
        ("over", "cropped non-magnification images at or over the threshold"),
        ("over_toned", "the same under display curves at or over it"),
    ):
        on, off = (float(np.mean(v)) for v in zip(*pairs[key], strict=True))
        ratio = f"{on / off:.4f}x" if off else "—"
        print(f"{name}: {args.toggle} on {on:.4f} / off {off:.4f} = {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
