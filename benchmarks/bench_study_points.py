"""Study flags at the study operating point against the ANY rule at the image operating point, on studies no
label touched.

Run:  .venv/bin/python benchmarks/bench_study_points.py --home MAMMO_HOME [--home ANOTHER ...]

For each home made by `mammo demo` (synthetic drops, so `landing/_truth/` knows every image): the current
model's `image_predictions`, its image and study operating points chosen again from them on the audit split's
labels (`model/evaluate.py::operating_points`, what `trained_model` does), and both study rules scored against
the synthetic truth on the *held-out* studies: those none of whose images is labeled (never trained on, not
audit; the fourth hospital's drop among them). Baseline, in the same run: a study flagged when ANY image reaches
the image threshold (the rule before study points). Prints per home and pooled sensitivity / specificity of
each rule and the RATIO of the pooled study specificity, study rule over the ANY rule, per flag; and, for the study
rule, how many held-out studies its review band [review_low, review_high) sends to review and how many of the
studies it gets wrong are among them (`needs_review` catches a wrong study flag only when it is in the band).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.model.evaluate import FLAGS, TRUTH_COLUMNS, in_review_band, operating_points, study_scores
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline.settings import Settings
from mammo_pipeline.synth.drops import read_truth

PROBS = {"biopsy": "p_biopsy", "mag": "p_mag"}


def held_out_scores(home: Path) -> tuple[str, dict, pd.DataFrame]:
    """(model version, its operating points re-chosen on the audit labels, held-out images with truth)."""
    settings = Settings.under(home)
    version = ModelRef.load(settings.models).model_version
    preds = warehouse.query(
        settings,
        "SELECT sop_instance_uid, study_instance_uid, p_biopsy, p_mag FROM image_predictions WHERE model_version = ?",
        [version],
    )
    labels = pd.read_parquet(settings.warehouse / "labels" / "current.parquet")
    audit = labels[labels["split"] == "audit"].merge(preds, on=["sop_instance_uid", "study_instance_uid"])
    points = operating_points(audit, audit[["p_biopsy", "p_mag"]].to_numpy(float))
    truth = read_truth(settings.landing).drop_duplicates("sop_instance_uid")
    truth = truth[["sop_instance_uid", *TRUTH_COLUMNS.values()]]
    touched = set(labels["study_instance_uid"])
    held = preds[~preds["study_instance_uid"].isin(touched)].merge(truth, on="sop_instance_uid")
    return version, points, held


def rates(truth: np.ndarray, flagged: np.ndarray) -> tuple[int, int, int, int]:
    """(true positives, positives, true negatives, negatives)."""
    return int((flagged & truth).sum()), int(truth.sum()), int((~flagged & ~truth).sum()), int((~truth).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, action="append", required=True, help="a MAMMO_HOME made by mammo demo")
    args = parser.parse_args()
    pooled = {(flag, rule): np.zeros(4, int) for flag in FLAGS for rule in ("any", "study")}
    reviewed = {flag: np.zeros(4, int) for flag in FLAGS}  # in the band, studies, wrong ones in the band, wrong
    for home in args.home:
        version, points, held = held_out_scores(home)
        line = [f"{home}: model {version}, {held['study_instance_uid'].nunique()} held-out studies"]
        for flag in FLAGS:
            point = points[flag]
            truth, score = study_scores(
                held["study_instance_uid"].to_numpy(), held[TRUTH_COLUMNS[flag]].to_numpy(bool), held[PROBS[flag]]
            )
            for rule, threshold in (("any", point["threshold"]), ("study", point["study"]["threshold"])):
                counts = rates(truth, score >= threshold)
                pooled[flag, rule] += counts
                tp, pos, tn, neg = counts
                line.append(
                    f"  {flag} {rule:5} (threshold {threshold:.3f}): sensitivity {tp}/{pos}, specificity {tn}/{neg}"
                )
            study = point["study"]
            band = in_review_band(score, study)
            wrong = (score >= study["threshold"]) != truth
            counts = np.array([band.sum(), len(band), (band & wrong).sum(), wrong.sum()])
            reviewed[flag] += counts
            line.append(
                f"  {flag} study review band [{study['review_low']:.3f}, {study['review_high']:.3f}): "
                f"{counts[0]} of {counts[1]} studies, {counts[2]} of the {counts[3]} wrong ones"
            )
        print("\n".join(line), flush=True)
    print("pooled over the homes:")
    for flag in FLAGS:
        spec = {}
        for rule in ("any", "study"):
            tp, pos, tn, neg = pooled[flag, rule]
            spec[rule] = tn / neg if neg else float("nan")
            name = "ANY image at the image threshold" if rule == "any" else "MAX at the study threshold"
            print(f"  {flag} {name}: sensitivity {tp}/{pos} = {tp / max(pos, 1):.3f}, specificity {tn}/{neg} = "
                  f"{spec[rule]:.3f}")  # fmt: skip
        band, n, caught, wrong = reviewed[flag]
        print(f"  {flag} study review band: {band}/{n} studies to review, {caught}/{wrong} wrong study flags in it")
        print(f"RATIO {flag} held-out study specificity, study point / ANY rule: {spec['study']:.3f} / "
              f"{spec['any']:.3f} = {spec['study'] / spec['any'] if spec['any'] else float('inf'):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
