"""Honest numbers for a model: computed on the frozen audit split only, from two flag probabilities.

The network predicts two independent flags (p >= 0.5 sets a flag). From them we report:

- **4-class accuracy**: the derived class (biopsy / mag / neither / both, `labels.codes.label_of`) equals
  the true one, i.e. both flags right.
- **3-class accuracy** (the seed project's figure, which had no 'both' class): the predicted 3-class label is
  'neither' when no flag reaches its threshold, the flag that does when one does, and the flag with the larger
  probability when both do ('biopsy' on a tie).
  An image whose true label is biopsy/mag/neither is correct when that predicted label equals its label; an
  image whose true label is 'both' is correct when both flags are right.
- per-flag precision / recall / F1, 4-class accuracy per hospital, a 4x4 confusion matrix (rows true,
  columns predicted, order CLASSES), and the expected calibration error over both flags pooled
  (10 equal-width bins of p; ECE = sum over bins of n_bin / N * |mean(y) - mean(p)|).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_pipeline.labels.agreement import cohen_kappa
from mammo_pipeline.labels.codes import label_of
from mammo_pipeline.model.intervals import roc_auc_interval, wilson_interval

CLASSES: tuple[str, ...] = ("biopsy", "mag", "neither", "both")
THRESHOLD = 0.5


def classes_of(biopsy: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """The 4-class names for arrays of flags."""
    return np.array([label_of(b, m) for b, m in zip(biopsy, mag, strict=True)], dtype=object)


def three_class_correct(
    true_b: np.ndarray, true_m: np.ndarray, probs: np.ndarray, thresholds: tuple[float, float] = (THRESHOLD, THRESHOLD)
) -> np.ndarray:
    """Per-image correctness under the 3-class rule in the module docstring."""
    pb, pm = probs[:, 0], probs[:, 1]
    pred_b, pred_m = pb >= thresholds[0], pm >= thresholds[1]
    larger = np.where(pb >= pm, "biopsy", "mag")
    pred3 = np.where(pred_b & pred_m, larger, np.where(pred_b, "biopsy", np.where(pred_m, "mag", "neither")))
    true4 = classes_of(true_b, true_m)
    both = true4 == "both"
    return np.where(both, (pred_b == true_b) & (pred_m == true_m), pred3 == true4)


def precision_recall_f1(truth: np.ndarray, pred: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """P, R, F1 of one flag; None where undefined (no predicted / no true positives)."""
    tp = int(np.sum(truth & pred))
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    precision = tp / n_pred if n_pred else None
    recall = tp / n_true if n_true else None
    if precision is None or recall is None:
        return precision, recall, None
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Binary ECE over all flag probabilities pooled (see module docstring)."""
    p, y = probs.ravel().astype(float), truth.ravel().astype(float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def confusion(true4: np.ndarray, pred4: np.ndarray) -> np.ndarray:
    """4x4 counts, rows true, columns predicted, in CLASSES order."""
    index = {c: i for i, c in enumerate(CLASSES)}
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for t, p in zip(true4, pred4, strict=True):
        cm[index[t], index[p]] += 1
    return cm


def evaluate(audit: pd.DataFrame, probs: np.ndarray, thresholds: tuple[float, float] = (THRESHOLD, THRESHOLD)) -> dict:
    """Metrics for `audit` (columns has_biopsy_marker, is_mag_view, hospital) and probs [N, 2], a flag set
    when its probability >= its threshold (the model's operating points; 0.5 by default).

    With no audit rows every metric is None (the caller warns); the confusion matrix is all zeros.
    """
    n = len(audit)
    empty = {
        "n_audit": 0,
        "accuracy": None,
        "accuracy_3class": None,
        "ece": None,
        "per_hospital_accuracy": {},
        "confusion": np.zeros((4, 4), dtype=int).tolist(),
    }
    for flag in ("biopsy", "mag"):
        empty.update({f"{flag}_precision": None, f"{flag}_recall": None, f"{flag}_f1": None})
    if n == 0:
        return empty
    probs = np.asarray(probs, dtype=float).reshape(n, 2)
    true_b = audit["has_biopsy_marker"].to_numpy(bool)
    true_m = audit["is_mag_view"].to_numpy(bool)
    pred_b, pred_m = probs[:, 0] >= thresholds[0], probs[:, 1] >= thresholds[1]
    true4, pred4 = classes_of(true_b, true_m), classes_of(pred_b, pred_m)
    correct4 = true4 == pred4
    out = dict(empty, n_audit=n)
    out["accuracy"] = float(correct4.mean())
    out["accuracy_3class"] = float(three_class_correct(true_b, true_m, probs, thresholds).mean())
    for flag, t, p in (("biopsy", true_b, pred_b), ("mag", true_m, pred_m)):
        out[f"{flag}_precision"], out[f"{flag}_recall"], out[f"{flag}_f1"] = precision_recall_f1(t, p)
    out["ece"] = expected_calibration_error(probs, np.stack([true_b, true_m], axis=1))
    by_h = pd.Series(correct4).groupby(audit["hospital"].to_numpy()).mean()
    out["per_hospital_accuracy"] = {str(h): float(a) for h, a in by_h.items()}
    out["confusion"] = confusion(true4, pred4).tolist()
    return out


def miss_reason(
    true_b: bool, true_m: bool, p_biopsy: float, p_mag: float, thresholds: tuple[float, float] = (THRESHOLD, THRESHOLD)
) -> str:
    """Why an audit image counts as a false negative ('' when it does not)."""
    reasons = []
    if true_b and p_biopsy < thresholds[0]:
        reasons.append("missed marker")
    if true_m and p_mag < thresholds[1]:
        reasons.append("missed mag")
    return " + ".join(reasons)


def false_alarm_reason(
    true_b: bool, true_m: bool, p_biopsy: float, p_mag: float, thresholds: tuple[float, float] = (THRESHOLD, THRESHOLD)
) -> str:
    """Why an audit image counts as a false positive ('' when it does not)."""
    reasons = []
    if not true_b and p_biopsy >= thresholds[0]:
        reasons.append("false marker")
    if not true_m and p_mag >= thresholds[1]:
        reasons.append("false mag")
    return " + ".join(reasons)


# ---------------------------------------------------------------------------------------------------------
# Operating points and per-flag metrics (ROC-AUC, sensitivity/specificity, balanced accuracy, Cohen's kappa)
# ---------------------------------------------------------------------------------------------------------

FLAGS: tuple[str, ...] = ("biopsy", "mag")
TRUTH_COLUMNS = {"biopsy": "has_biopsy_marker", "mag": "is_mag_view"}
BIOPSY_MIN_SENSITIVITY = 0.98  # a missed clip costs more than a second look: sensitivity first
REVIEW_SENSITIVITY = 0.995  # the review band's low edge keeps (at least) this share of the audit positives above it
REVIEW_SPECIFICITY = 0.995  # ... and its high edge this share of the audit negatives below it
DEFAULT_POINT = {"threshold": 0.5, "review_low": 0.25, "review_high": 0.75, "rule": "default (no audit labels)"}


def _sens_spec(truth: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    pred = probs >= threshold
    pos, neg = truth.sum(), (~truth).sum()
    sens = float((pred & truth).sum() / pos) if pos else None
    spec = float((~pred & ~truth).sum() / neg) if neg else None
    return sens, spec


def _candidates(probs: np.ndarray) -> np.ndarray:
    """Every threshold that changes a decision: the distinct probabilities (and one above the largest)."""
    values = np.unique(probs.astype(float))
    return np.append(values, np.nextafter(values[-1], np.inf) if len(values) else 1.0)


def _logit_midpoint(low: float, high: float) -> float:
    """The probability halfway between `low` and `high` (low < high) in logits, strictly inside (low, high]."""
    from scipy.special import expit, logit

    a, b = np.clip([low, high], 1e-7, 1 - 1e-7)
    mid = float(expit((logit(a) + logit(b)) / 2))
    return mid if low < mid <= high else high


def operating_point(truth: np.ndarray, probs: np.ndarray, rule: str) -> dict:
    """Threshold and review band of one flag on the audit set. Rules:

    - 'sensitivity': the best specificity that keeps sensitivity >= BIOPSY_MIN_SENSITIVITY, with the threshold in
      the middle (in logits) of the gap between the weakest positive kept and the next lower probability, not at
      that positive's score (an unseen positive just below it would be missed);
    - 'balanced': the threshold with the best balanced accuracy ((sens + spec) / 2; ties: the one nearest 0.5,
      any threshold between two adjacent audit probabilities counting, not only the probabilities themselves).

    The review band [review_low, review_high) holds the uncertain predictions: review_low is the highest
    threshold keeping REVIEW_SENSITIVITY of the positives at or above it, review_high the lowest keeping
    REVIEW_SPECIFICITY of the negatives below it, widened to contain the threshold's whole gap, from the
    nearest audit probability below it to the nearest at or above it: the audit set decides nothing inside
    that gap (every threshold in it makes the same audit decisions), so a prediction there is one it cannot
    vouch for, on either side of the threshold. Before, the band of the sensitivity rule began at the
    threshold, so an unseen clip scored just under it was neither flagged nor reviewed. Without both classes
    the DEFAULT_POINT is returned. Raises ValueError when a probability is not finite.
    """
    truth = np.asarray(truth, dtype=bool)
    probs = np.asarray(probs, dtype=float)
    if not np.isfinite(probs).all():
        raise ValueError(f"{int((~np.isfinite(probs)).sum())} audit probabilities are not finite (NaN or inf)")
    if truth.all() or not truth.any():
        return dict(DEFAULT_POINT)
    cands = _candidates(probs)
    stats = [(t, *_sens_spec(truth, probs, t)) for t in cands]
    if rule == "sensitivity":
        edge = max(t for t, se, _ in stats if se >= BIOPSY_MIN_SENSITIVITY)  # the weakest positive kept
        # every threshold in (the next lower probability, edge] makes the same audit decisions: take the gap's
        # middle (in logits, the scale the network's scores are spread on) rather than its upper end, where an
        # unseen positive scored just below the weakest audit one would be missed
        lower = cands[cands < edge]
        threshold = _logit_midpoint(float(lower[-1]), edge) if len(lower) else edge
        name = f"sensitivity >= {BIOPSY_MIN_SENSITIVITY} at the best specificity (middle of the gap below)"
    elif rule == "balanced":
        best = max((se + sp) / 2 for _, se, sp in stats)
        # a candidate's decisions hold for every threshold in (the next lower probability, candidate]: the tie
        # rule looks at those whole intervals, not only at their upper ends, so where the audit set leaves a gap
        # between its classes the threshold is 0.5 when the gap holds it, not the lowest positive's edge
        lower = np.concatenate(([-np.inf], cands[:-1]))
        options = [
            min(max(0.5, float(np.nextafter(lo, np.inf))), t)
            for (t, se, sp), lo in zip(stats, lower, strict=True)
            if (se + sp) / 2 >= best - 1e-12
        ]
        threshold = min(options, key=lambda t: abs(t - 0.5))
        name = "best balanced accuracy"
    else:
        raise ValueError(f"operating-point rule must be 'sensitivity' or 'balanced', not {rule!r}")
    low = max(t for t, se, _ in stats if se >= REVIEW_SENSITIVITY)
    high = min(t for t, _, sp in stats if sp >= REVIEW_SPECIFICITY)
    # the threshold's gap (gap_low, gap_high]: every threshold in it decides the audit alike; with no audit score
    # below (above) the threshold, every unseen score below (above) it is one the audit set cannot vouch for
    below, above = probs[probs < threshold], probs[probs >= threshold]
    gap_low = float(below.max()) if len(below) else 0.0
    gap_high = float(above.min()) if len(above) else float(np.nextafter(1.0, 2.0))
    return {
        "threshold": float(threshold),
        "review_low": float(min(low, threshold, gap_low)),
        "review_high": float(max(high, threshold, gap_high)),
        "rule": name,
    }


def study_scores(studies: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth bool [S], score float [S]) per study: ANY of its images true, the MAX of their probabilities (a
    study is flagged when its most probable image reaches the study threshold, i.e. when ANY image does)."""
    frame = pd.DataFrame({"study": studies, "truth": np.asarray(truth, bool), "p": np.asarray(probs, float)})
    per_study = frame.groupby("study", sort=True).agg(truth=("truth", "any"), p=("p", "max"))
    return per_study["truth"].to_numpy(bool), per_study["p"].to_numpy(float)


def operating_points(audit: pd.DataFrame, probs: np.ndarray) -> dict[str, dict]:
    """{'biopsy': point, 'mag': point} chosen on the audit set (rules: biopsy 'sensitivity', mag 'balanced').

    With a `study_instance_uid` column each point also holds `study`: the same rule applied to the audit studies
    (truth = ANY image, score = the MAX over its labeled audit images). An image-level threshold must reach the
    faintest clip image on its own; a study's clip usually shows in a second view too, so its study threshold
    can sit higher and raise fewer clip-free studies. Where the audit studies lack a class, `study` is a copy of
    the image point (the study flag is then ANY image flagged, as for models made before study points).
    """
    probs = np.asarray(probs, dtype=float).reshape(len(audit), 2)
    if len(audit) == 0:
        return {flag: dict(DEFAULT_POINT) for flag in FLAGS}
    points = {}
    for k, (flag, rule) in enumerate(zip(FLAGS, ("sensitivity", "balanced"), strict=True)):
        truth = audit[TRUTH_COLUMNS[flag]].to_numpy(bool)
        point = operating_point(truth, probs[:, k], rule)
        if "study_instance_uid" in audit:
            s_truth, s_score = study_scores(audit["study_instance_uid"].to_numpy(), truth, probs[:, k])
            if 0 < s_truth.sum() < len(s_truth):
                study = operating_point(s_truth, s_score, rule)
            else:
                study = {**point, "rule": f"{point['rule']} (the image point: the audit studies lack a class)"}
            point["study"] = {**study, "n_studies": len(s_truth), "positives": int(s_truth.sum())}
        points[flag] = point
    return points


def study_point(points: dict, flag: str) -> dict | None:
    """The study-level operating point of `flag` in a model's `operating_points`; None for a model made before
    them (its study flag is ANY image flagged at the image threshold)."""
    return (points.get(flag) or {}).get("study")


def needs_review(probs: np.ndarray, points: dict[str, dict]) -> np.ndarray:
    """Bool [N]: any flag's probability inside its review band [review_low, review_high)."""
    probs = np.asarray(probs, dtype=float).reshape(-1, 2)
    out = np.zeros(len(probs), dtype=bool)
    for k, flag in enumerate(FLAGS):
        p = points[flag]
        out |= (probs[:, k] >= p["review_low"]) & (probs[:, k] < p["review_high"])
    return out


def roc_auc(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC (ties count one half); None without both classes."""
    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, probs))


def flag_metrics(truth: np.ndarray, probs: np.ndarray, threshold: float, groups: np.ndarray | None = None) -> dict:
    """ROC-AUC, sensitivity, specificity, balanced accuracy and kappa of one flag at `threshold`, each of the
    first three with its 95 % interval (`*_low`, `*_high`; `intervals.py`: ROC-AUC bootstrapped over whole
    `groups`, e.g. patients, None: images; the rates by Wilson's score interval); None where a class is missing."""
    truth, probs = np.asarray(truth, bool), np.asarray(probs, float)
    sens, spec = _sens_spec(truth, probs, threshold) if len(truth) else (None, None)
    balanced = (sens + spec) / 2 if sens is not None and spec is not None else None
    pred = probs >= threshold
    return {
        "n": len(truth),
        "positives": int(truth.sum()),
        "roc_auc": roc_auc(truth, probs),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": balanced,
        "kappa": cohen_kappa(truth, pred),
        **_interval("roc_auc", roc_auc_interval(truth, probs, groups) if len(truth) else None),
        **_interval("sensitivity", wilson_interval(int((pred & truth).sum()), int(truth.sum()))),
        **_interval("specificity", wilson_interval(int((~pred & ~truth).sum()), int((~truth).sum()))),
    }


def _interval(name: str, bounds: tuple[float, float] | None) -> dict[str, float | None]:
    low, high = bounds if bounds is not None else (None, None)
    return {f"{name}_low": low, f"{name}_high": high}


def resampling_groups(audit: pd.DataFrame) -> np.ndarray | None:
    """What the ROC-AUC bootstrap resamples whole: each image's patient, else its study, else None (images).
    An image without a patient key stands for its study (or itself)."""
    for column in ("patient_key", "study_instance_uid"):
        if column in audit and audit[column].notna().any():
            own = audit.get("sop_instance_uid", pd.Series(audit.index, index=audit.index)).astype(str)
            return audit[column].fillna(own).astype(str).to_numpy()
    return None


def study_metrics(
    studies: np.ndarray, truth: np.ndarray, probs: np.ndarray, point: dict, groups: np.ndarray | None = None
) -> dict:
    """The study flag of one flag at its study threshold (`point['study']`, else the image threshold):
    n_studies, study_positives, study_roc_auc (of the MAX per study) with its 95 % interval (bootstrapped over
    `groups`, each image's patient, as the image figure; studies alone without it), study_sensitivity,
    study_specificity and study_fp_rate (the share of studies without the finding that the study flag raises:
    1 - specificity)."""
    threshold = (point.get("study") or point)["threshold"]
    s_truth, s_score = study_scores(studies, truth, probs)
    s_groups = None
    if groups is not None:  # a study's patient (study_scores orders studies as groupby does: sorted)
        s_groups = pd.Series(np.asarray(groups)).groupby(pd.Series(studies), sort=True).first().to_numpy()
    sens, spec = _sens_spec(s_truth, s_score, threshold)
    flagged = s_score >= threshold
    return {
        "n_studies": len(s_truth),
        "study_positives": int(s_truth.sum()),
        "study_threshold": float(threshold),
        "study_roc_auc": roc_auc(s_truth, s_score),
        **_interval("study_roc_auc", roc_auc_interval(s_truth, s_score, s_groups) if len(s_truth) else None),
        "study_sensitivity": sens,
        "study_specificity": spec,
        "study_fp_rate": float(flagged[~s_truth].mean()) if (~s_truth).any() else None,
        **_interval("study_sensitivity", wilson_interval(int((flagged & s_truth).sum()), int(s_truth.sum()))),
        **_interval("study_specificity", wilson_interval(int((~flagged & ~s_truth).sum()), int((~s_truth).sum()))),
    }


def detailed_metrics(audit: pd.DataFrame, probs: np.ndarray, points: dict[str, dict], groups=("hospital",)) -> dict:
    """Per flag at its operating point: overall, per study (`study_metrics`) and per value of each `groups` column.

    {'biopsy': {'roc_auc': .., 'sensitivity': .., ..., 'study_fp_rate': .., 'by_hospital': {h: {...}}}, 'mag': ...}
    """
    probs = np.asarray(probs, dtype=float).reshape(len(audit), 2)
    units = resampling_groups(audit) if len(audit) else None  # what the ROC-AUC bootstrap resamples
    out: dict[str, dict] = {}
    for k, flag in enumerate(FLAGS):
        truth = audit[TRUTH_COLUMNS[flag]].to_numpy(bool) if len(audit) else np.zeros(0, bool)
        threshold = points[flag]["threshold"]
        m = flag_metrics(truth, probs[:, k], threshold, units)
        m["threshold"] = threshold
        if "study_instance_uid" in audit and len(audit):
            m.update(study_metrics(audit["study_instance_uid"].to_numpy(), truth, probs[:, k], points[flag], units))
        for column in groups:
            if column in audit and len(audit):
                m[f"by_{column}"] = {
                    str(value): flag_metrics(
                        truth[idx], probs[idx, k], threshold, None if units is None else units[idx]
                    )
                    for value, idx in audit.groupby(audit[column].fillna("unknown").astype(str)).indices.items()
                }
        out[flag] = m
    return out
