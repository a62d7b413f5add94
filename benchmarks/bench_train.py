"""Training time for 500 labels with the default TrainConfig, against the same schedule at 224 px.

Run:  nice .venv/bin/python benchmarks/bench_train.py [--n 500] [--threads 0] [--skip-baseline]

Images are 256-px-long-side synthetic model PNGs (the labels contract; markers = bright blobs, mag views =
dark band + lines). Without torchvision's ImageNet file the pretrained schedule (1 frozen epoch + fine-tune)
runs on a random stand-in state dict: the timing is the same, the accuracy means nothing then.
Target: <= 5 minutes for 500 labels on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torchvision.models import resnet18

from mammo_pipeline.model import weights
from mammo_pipeline.model.train import TrainConfig, train_model
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.toy_labels import make_labels


def _weights_source(settings: Settings, tmp: Path) -> Settings:
    """Real ImageNet weights when installed, else a random stand-in that passes the hash check."""
    try:
        weights.find_weights(settings)
        print("weights: ImageNet file found")
        return settings
    except weights.PretrainedWeightsError:
        stand_in = tmp / "resnet18-standin.pth"
        torch.save(resnet18(weights=None).state_dict(), stand_in)
        weights.WEIGHTS_SHA256_PREFIX = weights.sha256_file(stand_in)[:8]
        print("weights: no ImageNet file; random stand-in (timing valid, accuracy meaningless)")
        return dataclasses.replace(settings, pretrained_weights=str(stand_in))


def _run(settings: Settings, labels, config: TrainConfig, name: str) -> float:
    start = time.monotonic()
    result = train_model(settings, labels, config)
    seconds = time.monotonic() - start
    acc = result.metrics["accuracy"]
    print(f"{name:34} {seconds:7.1f} s  (train loop {result.train_seconds:.1f} s, audit accuracy {acc})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="labels (3/4 train, 1/4 audit)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        settings = Settings.under(tmp / "home", pretrained="imagenet", salt="bench").ensure_dirs()
        settings = _weights_source(settings, tmp)
        labels = make_labels(settings, n=args.n, seed=0, height=256)
        default = dataclasses.replace(TrainConfig(), threads=args.threads).resolved(pretrained=True)
        print(f"{args.n} labels, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, config {default}")
        ours = _run(settings, labels, default, f"default (size {default.size})")
        print(f"TIME default: {ours:.1f} s = {ours / 60:.2f} min (target <= 5 min)")
        if not args.skip_baseline:
            base = _run(settings, labels, dataclasses.replace(default, size=224), "baseline: same schedule at 224 px")
            print(f"RATIO baseline/default: {base / ours:.2f}x faster than 224 px")


if __name__ == "__main__":
    main()
