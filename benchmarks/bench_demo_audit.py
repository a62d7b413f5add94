"""Where a demo model's biopsy ROC-AUC goes on its own audit set: clip images whose clip is no candidate.

Run:  .venv/bin/python benchmarks/bench_demo_audit.py --home MAMMO_HOME [--home ANOTHER ...] [--top 8]

For each home made by `mammo demo` (synthetic drops, so `landing/_truth/` knows every image and where each clip
lies): the current model's `image_predictions` on the audit split, scored against the synthetic truth (diagnosis
only). Prints the `--top` lowest-scored clip images, each with its kind of view, vendor profile, whether a clip of
the truth's boxes is among the second look's kept candidates (`candidate_store`, as inference read them) and the
share of clip-free audit images scored above it; then every clip image without a candidate on its clip, by SOP
Instance UID and display PNG, with why (`bench_candidate_recall.why_missed`: in the air margin, or its rank among
the blob score's maxima); then the RATIO of the misordered (clip image, clip-free image)
pairs made by clip images without a candidate on their clip to all misordered pairs, per home and pooled: what
finding those clips could at most buy, against the whole loss (1 - ROC-AUC). A model without a second look is
refused (its biopsy flag has no candidates).

First, per home, each flag's review band: the one stored with the model (made by the code that trained it) and the
one `evaluate.operating_points` makes now from the model's `audit_predictions.parquet` (its audit truth and
probabilities, patients from the labels), with how many audit images and how many of the model's
`image_predictions` fall inside each; the RATIO is the share of predicted images sent to review now / before.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd
from bench_candidate_recall import why_missed
from bench_learning_curve import clip_among, misordered, view_kind

from mammo_pipeline import promotions, warehouse
from mammo_pipeline.model.candidate_store import candidates_of_png
from mammo_pipeline.model.evaluate import FLAGS, in_review_band, needs_review, operating_points, roc_auc
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.drops import read_truth


def audit_scores(home: Path) -> tuple[str, pd.DataFrame]:
    """(model version, one row per audit image: p_biopsy, the truth's flags, boxes and view, display PNG path and
    the display / stored height ratio). p_biopsy is the model's image_predictions, or, for a model that made none
    (held back from promotion), the audit predictions its training wrote. Raises SystemExit for a model without a
    second look."""
    settings = Settings.under(home)
    ref = ModelRef.load(settings.models)
    if not ref.extra.get("second_look"):
        raise SystemExit(f"{home}: model {ref.model_version} has no second look, so no candidates to diagnose")
    preds = warehouse.query(
        settings,
        "SELECT sop_instance_uid, p_biopsy FROM image_predictions WHERE model_version = ?",
        [ref.model_version],
    )
    if preds.empty:  # a model promoted_model held back predicts nothing: the audit predictions its training wrote
        own = promotions.read_audit(settings, ref.model_version)
        if own is None:
            raise SystemExit(f"{home}: model {ref.model_version} has neither image_predictions nor audit predictions")
        print(f"{home}: model {ref.model_version} made no image_predictions (held back?): its audit predictions")
        preds = own[["sop_instance_uid", "p_biopsy"]]
    labels = pd.read_parquet(settings.warehouse / "labels" / "current.parquet")
    audit = labels.loc[labels["split"] == "audit", ["sop_instance_uid"]].merge(preds, on="sop_instance_uid")
    truth = read_truth(settings.landing).drop_duplicates("sop_instance_uid")
    cols = ["sop_instance_uid", "has_biopsy_marker", "is_mag_view", "is_spot_view", "vendor_profile", "boxes"]
    manifest = warehouse.query(
        settings, "SELECT sop_instance_uid, display_png, height, display_height FROM image_cache"
    )
    out = audit.merge(truth[cols], on="sop_instance_uid").merge(manifest, on="sop_instance_uid")
    out["display_png"] = [str(settings.cache / p) for p in out["display_png"]]
    out["scale"] = out["display_height"] / out["height"]
    return ref.model_version, out


def review_bands(home: Path) -> float:
    """Print each flag's stored and recomputed review band (image and study) and the audit images, predicted
    images and predicted studies (the MAX of each flag over its images) inside; return the share of predicted
    images sent to review now / before (1.0 when none were)."""
    settings = Settings.under(home)
    ref = ModelRef.load(settings.models)
    stored = ref.extra.get("operating_points") or {}
    audit = pd.read_parquet(settings.models / ref.model_version / "audit_predictions.parquet")
    labels = pd.read_parquet(settings.warehouse / "labels" / "current.parquet")
    missing = [c for c in ("patient_key", "study_instance_uid") if c not in audit.columns]  # older models' tables
    audit = audit.merge(labels[["sop_instance_uid", *missing]], on="sop_instance_uid")
    audit_probs = audit[["p_biopsy", "p_mag"]].to_numpy(float)
    start = time.perf_counter()
    now = operating_points(audit, audit_probs)
    seconds = time.perf_counter() - start
    preds = warehouse.query(
        settings,
        "SELECT study_instance_uid, p_biopsy, p_mag FROM image_predictions WHERE model_version = ?",
        [ref.model_version],
    )
    probs = preds[["p_biopsy", "p_mag"]].to_numpy(float)
    studies = preds.groupby("study_instance_uid")[["p_biopsy", "p_mag"]].max().to_numpy(float)
    print(
        f"{home}: model {ref.model_version}, {len(audit)} audit images of {audit['patient_key'].nunique()} "
        f"patients, {len(probs)} predicted images in {len(studies)} studies; operating_points took {seconds:.3f} s"
    )
    for k, flag in enumerate(FLAGS):
        for name, points in (("stored", stored), ("now", now)):
            point = points[flag]
            study = point.get("study") or point
            resampled = (
                f" (resampled thresholds [{point['threshold_low']:.4f}, {point['threshold_high']:.4f}])"
                if "threshold_low" in point
                else ""
            )
            print(
                f"  {flag:<6} {name:<6} threshold {point['threshold']:.4f} band [{point['review_low']:.4f}, "
                f"{point['review_high']:.4f}){resampled}: {in_review_band(audit_probs[:, k], point).sum()} audit, "
                f"{in_review_band(probs[:, k], point).sum()} predicted images; study band [{study['review_low']:.4f}, "
                f"{study['review_high']:.4f}): {in_review_band(studies[:, k], study).sum()} predicted studies"
            )
    before, after = (int(needs_review(probs, points).sum()) for points in (stored, now))
    audit_before, audit_after = (int(needs_review(audit_probs, points).sum()) for points in (stored, now))
    share = [n / max(len(probs), 1) for n in (before, after)]
    print(
        f"  needs_review (either flag): audit images {audit_before} -> {audit_after} of {len(audit)}, "
        f"predicted images {before} ({share[0]:.1%}) -> {after} ({share[1]:.1%}) of {len(probs)}"
    )
    return after / before if before else 1.0


def diagnose(frame: pd.DataFrame) -> pd.DataFrame:
    """The clip images of `frame` with `found` (a clip among their kept candidates), `kind` and `pairs`."""
    truth = frame["has_biopsy_marker"].astype(bool).to_numpy()
    clips = frame[truth].copy()
    clips["found"] = [
        clip_among(row.boxes, row.scale, candidates_of_png(Path(row.display_png))[1])  # (crops, centres, ...)
        for row in clips.itertuples()
    ]
    clips["kind"] = [view_kind(row) for row in clips.itertuples()]
    clips["pairs"] = misordered(clips["p_biopsy"].to_numpy(float), frame.loc[~truth, "p_biopsy"].to_numpy(float))
    return clips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, action="append", required=True, help="a demo's MAMMO_HOME (repeatable)")
    parser.add_argument("--top", type=int, default=8, help="lowest-scored clip images listed per home")
    args = parser.parse_args()
    for home in args.home:
        ratio = review_bands(home)
        print(f"RATIO predicted images in a review band, now / stored band: {ratio:.2f}x")
    lost = missed = 0.0
    for home in args.home:
        version, frame = audit_scores(home)
        clips = diagnose(frame)
        n_neg = int((~frame["has_biopsy_marker"].astype(bool)).sum())
        print(f"{home}: model {version}, {len(frame)} audit images, {len(clips)} with a clip, {n_neg} without")
        for row in clips.sort_values("p_biopsy").head(args.top).itertuples():
            print(
                f"  p {row.p_biopsy:.3f}  {row.kind:<13} {row.vendor_profile:<8} clip among candidates: "
                f"{'yes' if row.found else 'NO '}  clip-free images above: {row.pairs / max(n_neg, 1):.2f}"
            )
        display_size = Settings.under(home).display_size
        for row in clips.loc[~clips["found"].astype(bool)].sort_values("p_biopsy").itertuples():  # every miss, and why
            why = why_missed(Path(row.display_png), row.boxes, row.scale, display_size)
            print(f"  missed: {row.sop_instance_uid} ({row.kind}, {row.vendor_profile}): {row.display_png}\n    {why}")
        home_lost, home_missed = float(clips["pairs"].sum()), float(clips.loc[~clips["found"], "pairs"].sum())
        kinds = clips.loc[~clips["found"], "kind"].value_counts()
        auc = roc_auc(frame["has_biopsy_marker"].astype(bool), frame["p_biopsy"])  # None without both classes
        figures = (
            "ROC-AUC n/a (no clip image or no clip-free image)"
            if auc is None
            else f"ROC-AUC {auc:.3f}, of which they cost {home_missed / (len(clips) * n_neg):.3f}"
        )
        print(
            f"  {int((~clips['found']).sum())} clip images without a candidate on their clip ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items())
            + f"); {figures}"
        )
        lost, missed = lost + home_lost, missed + home_missed
    share = missed / lost if lost else 0.0
    print(f"RATIO misordered pairs from clips no candidate found / all misordered pairs: {share:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
