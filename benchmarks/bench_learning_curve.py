"""Audit ROC-AUC vs number of train labels at several input sizes (from scratch), with seconds and images/s.

Run:  .venv/bin/python benchmarks/bench_learning_curve.py [--data DIR] [--counts 50,150,300,500]
      [--sizes 64,128] [--baseline] [--studies 80] [--threads 0] [--second-look]

Builds a realistic dataset once with the real pipeline (synthetic drops -> dicom_index -> image_cache, 3
hospitals, `--studies` studies each, scale 0.25; reused when DIR already holds it), labels every image from
the synthetic truth, puts ~20% of patients in the audit split (labels.audit.assign_splits) and trains from
scratch (pretrained 'none') on the first N of a seeded shuffle of the train split, for each N in --counts
(capped at the train images there are), for each size in --sizes. Prints labels, 4-class accuracy, per-flag
ROC-AUC, biopsy sensitivity/specificity at its operating point, Cohen's kappa per flag, wall and CPU seconds
(time.process_time: the CPU is shared) and PyTorch eager images/s (preprocessing included) on audit images.
Each schedule is the product's from-scratch default (TrainConfig: SCRATCH, image_passes) with only the size, seed
and threads set, and the second look off: these rows measure the global network, whose biopsy ROC-AUC is its own
(the product answers the biopsy flag with the second look; measure that with --second-look).
With --product the product's whole round also runs (`TrainConfig()`: the global network and the second look on
the candidates image_cache kept, as `trained_model` trains it; its biopsy columns are the second look's), the
figure to hold against the 2-minute round.
With --baseline the old default schedule (160 px, 2 epochs, lr 2e-3, batch 32, no flips, no class weights)
runs on the same labels and the ratios of final accuracy and time against it are printed.
With --second-look only the biopsy flag's second look runs: candidates from the display PNGs
(model/candidates.py, extracted once per image and timed apart, as the product caches them per image), a patch
CNN trained on their crops from image labels (model/second_look.py, two torch threads); it prints candidate
recall (diagnosis from the synthetic truth's boxes), biopsy ROC-AUC, sensitivity/specificity at the
sensitivity >= 0.98 operating point, wall/CPU seconds per round, what limits the last round's ROC-AUC (the
clip images with negatives scored above them, their share of the misordered pairs and whether a clip was among
their candidates; the most probable negatives and what their winning candidate sits on: diagnosis from the
truth), and the ratio of the final ROC-AUC against the candidate score alone (no learning) in the same run.
The audit split is the same in every run (a fixed pseudonym salt: synthetic patients only).
Target: per-flag ROC-AUC >= 0.99 at <= 500 labels; <= 120 s per training at 500 labels on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import torch

from mammo_pipeline.cache import cache_hospital
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.labels.audit import assign_splits
from mammo_pipeline.model.evaluate import roc_auc
from mammo_pipeline.model.preprocess import preprocess_batch
from mammo_pipeline.model.train import TrainConfig, flip_reading, load_network, train_model
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth import generate_drops
from mammo_pipeline.synth.profiles import PROFILES

OLD_DEFAULT = TrainConfig(
    size=160, epochs=2, freeze_epochs=1, lr=2e-3, batch_size=32, weight_decay=1e-2, flips=False, pos_weight=False
)
LABEL_COLUMNS = [
    "image_id",
    "sop_instance_uid",
    "hospital",
    "study_instance_uid",
    "patient_key",
    "label",
    "has_biopsy_marker",
    "is_mag_view",
    "split",
    "model_png",
    "display_png",
]


def build_dataset(home: Path, studies: int, drops_seed: int = 0, corrupt_fraction: float = 0.0) -> Settings:
    """Synthetic drops, indexed and cached under `home` (each step skips work already done).

    `drops_seed` 0 is the development data set every second-look change since stop 12 was measured on; other seeds
    draw fresh drops that no decision has seen (held-out). `home` records its seed and refuses another one.
    `corrupt_fraction`: the share of files `generate_drops` damages (the demo's drops: `DemoConfig`).
    """
    marker = Path(home) / "drops-seed.txt"
    held = marker.read_text().strip() if marker.exists() else str(drops_seed)
    if held != str(drops_seed):
        raise SystemExit(f"{home} holds the drops of seed {held}, not {drops_seed}: use another --data")
    # synthetic patients only: a fixed pseudonym salt gives the same patient keys, so the same audit split, every run
    settings = Settings.under(home, workers=2, pretrained="none", salt="bench-learning-curve").ensure_dirs()
    generate_drops(
        settings.landing,
        hospitals=3,
        studies_per_hospital=studies,
        seed=drops_seed,
        scale=0.25,
        drop="drop-20261101",
        corrupt_fraction=corrupt_fraction,
    )
    marker.write_text(f"{drops_seed}\n")
    for hospital in sorted(p.name for p in settings.landing.iterdir() if p.is_dir() and not p.name.startswith("_")):
        index_hospital(settings, hospital)
        cache_hospital(settings, hospital)
    return settings


def labels_frame(settings: Settings) -> pd.DataFrame:
    """Every cached image labeled from the synthetic truth, in the labels contract (docs/architecture.md)."""
    truth = pd.concat(pd.read_parquet(f) for f in sorted(glob.glob(str(settings.landing / "_truth" / "*.parquet"))))
    manifests = sorted(glob.glob(str(settings.warehouse / "image_cache" / "hospital=*" / "manifest.parquet")))
    cached = pd.concat(pd.read_parquet(f) for f in manifests)
    df = cached.merge(truth[["sop_instance_uid", "label", "has_biopsy_marker", "is_mag_view"]], on="sop_instance_uid")
    df["image_id"] = df["sop_instance_uid"]
    df["split"] = assign_splits(df, seed=0)
    return df[LABEL_COLUMNS].sort_values("sop_instance_uid").reset_index(drop=True)


def truth_and_scale(settings: Settings, labels: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """(the synthetic truth's rows of `labels`' images, in their order; display px per stored px of each): what
    `clip_among` needs (diagnosis only)."""
    uids = labels["sop_instance_uid"]
    truth = pd.concat(pd.read_parquet(f) for f in sorted((settings.landing / "_truth").glob("*.parquet")))
    truth = truth.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid").loc[uids]
    manifests = sorted(settings.table_dir("image_cache").glob("hospital=*/manifest.parquet"))
    columns = ["sop_instance_uid", "height", "display_height"]
    display = pd.concat(pd.read_parquet(f, columns=columns) for f in manifests)
    display = display.drop_duplicates("sop_instance_uid").set_index("sop_instance_uid")
    return truth, (display["display_height"] / display["height"]).loc[uids].to_numpy()


def box_kinds_at(boxes: str, scale: float, row: int, col: int) -> list[str]:
    """The kinds (clip, lead_letters, ...) of the truth's boxes (JSON, source pixels) that hold display pixel
    (row, col), `scale` display px per source px, with 4 px of slack (diagnosis only)."""
    return [
        kind
        for kind, r0, r1, c0, c1 in json.loads(boxes)
        if r0 * scale - 4 <= row <= r1 * scale + 4 and c0 * scale - 4 <= col <= c1 * scale + 4
    ]


def clip_among(boxes: str, scale: float, centres: np.ndarray) -> bool:
    """Whether any candidate centre (display px, row -1 for an empty slot) lies in one of the truth's clip boxes."""
    return any(k.startswith("clip") for r, c in centres if r >= 0 for k in box_kinds_at(boxes, scale, r, c))


def view_kind(row) -> str:
    """'magnification', 'film', 'spot' or 'contact' of a truth row (a film's magnification view counts as
    magnification): how the diagnoses group clip images (diagnosis only)."""
    if bool(row.is_mag_view):
        return "magnification"
    if PROFILES[row.vendor_profile].secondary_capture:
        return "film"
    return "spot" if bool(row.is_spot_view) else "contact"


def misordered(scores: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Per clip image score: the clip-free scores above it, ties counted half (its misordered pairs; 1 - ROC-AUC
    is their sum over positives x negatives)."""
    negatives = np.sort(negatives)
    above = len(negatives) - np.searchsorted(negatives, scores, side="right")
    ties = np.searchsorted(negatives, scores, side="right") - np.searchsorted(negatives, scores, side="left")
    return above + 0.5 * ties


def by_clip_kind(truth: np.ndarray, unsaturated: np.ndarray, probs: np.ndarray):
    """(name, clip images of that kind, their ROC-AUC against all negatives) for the clip images holding an
    unsaturated clip and those whose every clip is saturated, each kind that occurs."""
    for name, part in (
        ("with an unsaturated clip", truth & unsaturated),
        ("with every clip saturated", truth & ~unsaturated),
    ):
        if part.any():
            keep = part | ~truth
            yield name, part, roc_auc(truth[keep], probs[keep])


def train_once(settings: Settings, labels: pd.DataFrame, config: TrainConfig) -> dict:
    """Train in a throwaway models/warehouse folder; the metrics, the seconds and PyTorch eager images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = dataclasses.replace(
            settings, models=Path(tmp) / "models", warehouse=Path(tmp) / "warehouse", reports=Path(tmp) / "reports"
        )
        cpu, wall = time.process_time(), time.monotonic()
        result = train_model(scratch, labels, config)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        net = flip_reading(load_network(scratch, result.ref)).eval()  # as predictions read it
        pngs = [settings.cache / p for p in labels.loc[labels["split"] == "audit", "model_png"]][:128]
        start = time.monotonic()
        with torch.no_grad():
            for i in range(0, len(pngs), 64):
                net(torch.from_numpy(preprocess_batch(pngs[i : i + 64], result.ref.input_size)))
        ips = len(pngs) / (time.monotonic() - start)
        return {**result.metrics, "wall": wall, "cpu": cpu, "eager_ips": ips}


def second_look(
    settings: Settings, labels: pd.DataFrame, order: pd.DataFrame, counts: list[int], seed: int, epochs: int = 0
) -> None:
    """The second look (model/candidates.py + model/second_look.py) on the biopsy flag, per label count.

    Candidates are extracted once per image (the cache a product run keeps per image: they depend on the PNG
    only), timed apart; each round's wall/CPU seconds are the patch CNN's training alone. The baseline in the
    same run is the candidate score alone (image probability = its strongest candidate score, nothing learned).
    Candidate recall (share of audit+train clip images with a clip among the K candidates) uses the synthetic
    truth's boxes for diagnosis only; training sees image labels only.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mammo_pipeline.model.candidates import K, candidates
    from mammo_pipeline.model.evaluate import operating_point
    from mammo_pipeline.model.second_look import predict_patch_mil, train_patch_mil

    manifests = sorted(settings.table_dir("image_cache").glob("hospital=*/manifest.parquet"))
    columns = ["sop_instance_uid", "display_png", "height", "display_height"]
    display = pd.concat(pd.read_parquet(f, columns=columns) for f in manifests).set_index("sop_instance_uid")
    audit = labels[labels["split"] == "audit"]
    uids = list(order["sop_instance_uid"]) + list(audit["sop_instance_uid"])
    start, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(2) as pool:
        found = dict(
            zip(
                uids,
                pool.map(
                    lambda uid: candidates(
                        settings.cache / display.at[uid, "display_png"], long_side=settings.display_size
                    ),
                    uids,
                ),
                strict=True,
            )
        )
    print(
        f"second look: candidates (K={K}) of {len(found)} display PNGs in {time.monotonic() - start:.0f} s wall, "
        f"{(time.process_time() - cpu) / len(found) * 1000:.0f} CPU ms/image (cached per image, not in a round)"
    )
    truth_files = sorted(glob.glob(str(settings.landing / "_truth" / "*.parquet")))
    facts = ["sop_instance_uid", "boxes", "vendor_profile", "view_position", "n_clips_unsaturated"]
    truth_table = pd.concat(pd.read_parquet(f, columns=facts) for f in truth_files).set_index("sop_instance_uid")

    def scale(uid: str) -> float:
        return display.at[uid, "display_height"] / display.at[uid, "height"]

    clip_found = {
        uid: clip_among(truth_table.at[uid, "boxes"], scale(uid), found[uid][1])
        for uid in uids
        if any(b[0].startswith("clip") for b in json.loads(truth_table.at[uid, "boxes"]))
    }
    hit, clip_images = sum(clip_found.values()), len(clip_found)
    print(
        f"candidate recall (diagnosis, from the truth's boxes): {hit}/{clip_images} clip images "
        f"= {hit / max(clip_images, 1):.3f}"
    )

    def limits(audit: pd.DataFrame, n_labels: int, probs: np.ndarray, patch: np.ndarray, shown: int = 6) -> None:
        """Which audit images cost the last round its ROC-AUC (diagnosis, from the truth): each clip image with
        the negatives scored above it (its share of the misordered pairs, whether a clip was among its
        candidates), how many negatives score above the lowest clip image that had one, and the most probable
        negatives (above it or not) with what their winning candidate sits on ('-': tissue)."""
        ids = audit["sop_instance_uid"].to_numpy()
        neg = np.sort(probs[~truth])
        above = {u: int((neg > p).sum()) for u, p, t in zip(ids, probs, truth, strict=True) if t}
        pairs = sum(above.values())
        print(f"what limits the ROC-AUC at {n_labels} labels (diagnosis, from the truth): "
              f"{pairs} misordered pairs of {truth.sum() * (~truth).sum()}")  # fmt: skip
        unsat = np.array(
            [bool(t) and (truth_table.loc[u].n_clips_unsaturated or 0) > 0 for u, t in zip(ids, truth, strict=True)]
        )
        for name, part, auc in by_clip_kind(truth, unsat, probs):  # the two kinds of clip image
            print(f"  {part.sum()} clip images {name}: ROC-AUC {_f(auc)} "
                  f"against all negatives, {sum(above[u] for u in ids[part])} of the misordered pairs")  # fmt: skip
        for u, n in sorted(above.items(), key=lambda kv: -kv[1])[:shown]:
            if n:
                t = truth_table.loc[u]
                print(f"  clip image ...{u[-8:]} p={probs[ids == u][0]:.3f}: {n} negatives above ({n / pairs:.0%}); "
                      f"clip among candidates: {clip_found.get(u)}; {t.vendor_profile} {t.view_position}, "
                      f"{t.n_clips_unsaturated} unsaturated")  # fmt: skip
        floor = min((p for u, p, t in zip(ids, probs, truth, strict=True) if t and clip_found.get(u)), default=1.0)
        negatives = [i for i in np.argsort(-probs) if not truth[i]]
        print(f"  {sum(probs[i] > floor for i in negatives)} negatives above the lowest clip image with its clip "
              f"among the candidates (p={floor:.3f}); the most probable negatives:")  # fmt: skip
        for i in negatives[:shown]:
            r, c = found[ids[i]][1][int(np.argmax(patch[i]))]
            kinds = ",".join(box_kinds_at(truth_table.at[ids[i], "boxes"], scale(ids[i]), int(r), int(c))) or "-"
            kinds = kinds if r >= 0 else "no candidate"  # an empty slot (an image with fewer than K objects)
            t = truth_table.loc[ids[i]]
            print(f"  negative ...{ids[i][-8:]} p={probs[i]:.3f}: winning candidate on {kinds}; "
                  f"{t.vendor_profile} {t.view_position}")  # fmt: skip

    audit_crops = np.stack([found[u][0] for u in audit["sop_instance_uid"]])
    truth = audit["has_biopsy_marker"].to_numpy(bool)
    base = roc_auc(truth, np.stack([found[u][2] for u in audit["sop_instance_uid"]]).max(axis=1))
    print(f"{'second look':12} {'labels':>6} {'bAUC':>6} {'bSens':>6} {'bSpec':>6} {'wall s':>7} {'cpu s':>7}")
    auc = None
    for count in counts:
        part = order.head(min(count, len(order)))
        crops = np.stack([found[u][0] for u in part["sop_instance_uid"]])
        wall, cpu = time.monotonic(), time.process_time()
        net = train_patch_mil(crops, part["has_biopsy_marker"].to_numpy(bool), epochs=epochs or None, seed=seed)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        probs, patch = predict_patch_mil(net, audit_crops)
        auc = roc_auc(truth, probs)
        point = operating_point(truth, probs, "sensitivity")
        pred = probs >= point["threshold"]
        sens, spec = float(pred[truth].mean()), float((~pred[~truth]).mean())
        print(
            f"{'second look':12} {len(part):6d} {_f(auc):>6} {sens:6.3f} {spec:6.3f} {wall:7.1f} {cpu:7.1f}",
            flush=True,
        )
    if auc is not None:
        limits(audit, len(part), probs, patch)
    print(
        f"RATIO second look / candidate score alone: biopsy ROC-AUC {_f(auc)} / {_f(base)} = "
        f"{(auc or 0) / max(base or 0, 1e-9):.2f}x (target ROC-AUC >= 0.99, <= 120 s wall per round at 500 labels)"
    )


def _f(value: float | None) -> str:
    return "    -" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (built there if missing; default: a temp dir)")
    parser.add_argument("--studies", type=int, default=80, help="studies per hospital when building")
    parser.add_argument("--counts", default="50,150,300,500", help="train label counts")
    parser.add_argument("--sizes", default="", help="input sizes to compare (default: the from-scratch default)")
    parser.add_argument("--baseline", action="store_true", help="also run the old default schedule")
    parser.add_argument("--second-look", action="store_true", help="only the second look (candidates + patch CNN)")
    parser.add_argument(
        "--product", action="store_true", help="also the product's whole round: global network + second look"
    )
    parser.add_argument(
        "--patch-epochs", type=int, default=0, help="second look: patch CNN epochs (0: the product's epochs_for)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--seed", type=int, default=0, help="label sampling and training seed")
    parser.add_argument("--drops-seed", type=int, default=0, help="synthetic drops' seed (0: development set)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        start = time.monotonic()
        settings = build_dataset(args.data or Path(tmp_dir) / "data", args.studies, args.drops_seed)
        labels = labels_frame(settings)
        train, audit = labels[labels["split"] == "train"], labels[labels["split"] == "audit"]
        order = train.sample(frac=1.0, random_state=args.seed)
        print(
            f"dataset: {len(train)} train / {len(audit)} audit images ({time.monotonic() - start:.0f} s), "
            f"audit positives: biopsy {int(audit.has_biopsy_marker.sum())}, mag {int(audit.is_mag_view.sum())}; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )
        if audit.has_biopsy_marker.nunique() < 2 or audit.is_mag_view.nunique() < 2:
            sys.exit(f"the audit split needs images with and without each flag to measure ROC-AUC; raise --studies "
                     f"(it has {args.studies} per hospital)")  # fmt: skip
        if args.second_look:
            second_look(settings, labels, order, [int(c) for c in args.counts.split(",")], args.seed, args.patch_epochs)
            return
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [None]
        configs = {
            f"size {z or 'default'}": TrainConfig(size=z, seed=args.seed, threads=args.threads, second_look=False)
            for z in sizes
        }
        if args.product:  # what trained_model runs: the default size and the second look on the kept candidates
            configs["product"] = TrainConfig(seed=args.seed, threads=args.threads)
        if args.baseline:
            configs["old default"] = dataclasses.replace(
                OLD_DEFAULT, seed=args.seed, threads=args.threads, second_look=False
            )
        print(
            f"{'schedule':12} {'labels':>6} {'acc4':>5} {'bAUC':>5} {'mAUC':>5} {'bSens':>5} {'bSpec':>5} "
            f"{'bKappa':>6} {'mKappa':>6} {'wall s':>7} {'cpu s':>7} {'img/s':>6}"
        )
        last: dict[str, dict] = {}
        for count in [int(c) for c in args.counts.split(",")]:
            n = min(count, len(train))
            subset = pd.concat([order.head(n), audit])
            for name, config in configs.items():
                m = train_once(settings, subset, config)
                last[name] = m
                b, g = m["flags"]["biopsy"], m["flags"]["mag"]
                print(
                    f"{name:12} {n:6d} {m['accuracy']:5.2f} {_f(b['roc_auc'])} {_f(g['roc_auc'])} "
                    f"{_f(b['sensitivity'])} {_f(b['specificity'])} {_f(b['kappa']):>6} {_f(g['kappa']):>6} "
                    f"{m['wall']:7.1f} {m['cpu']:7.1f} {m['eager_ips']:6.0f}",
                    flush=True,
                )
        for name, m in last.items():
            b, g = m["flags"]["biopsy"], m["flags"]["mag"]
            print(
                f"FINAL {name}: ROC-AUC biopsy {_f(b['roc_auc'])}, mag {_f(g['roc_auc'])} (target >= 0.99); "
                f"{m['wall']:.1f} s wall (target <= 120)"
            )
        if args.baseline:
            ours, base = last[next(iter(configs))], last["old default"]
            print(
                f"RATIO default/old: accuracy {ours['accuracy'] / max(base['accuracy'], 1e-9):.2f}x, "
                f"wall time {ours['wall'] / base['wall']:.2f}x, cpu time {ours['cpu'] / base['cpu']:.2f}x"
            )


if __name__ == "__main__":
    main()
