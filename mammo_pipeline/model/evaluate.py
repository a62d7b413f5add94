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
from mammo_pipeline.model.intervals import LEVEL, RESAMPLES, bootstrap_weights, roc_auc_interval, wilson_interval

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


def _logit_midpoints(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The probabilities halfway between `low` and `high` (low < high) in logits, each strictly inside (low, high]."""
    from scipy.special import expit, logit

    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    mid = expit((logit(np.clip(low, 1e-7, 1 - 1e-7)) + logit(np.clip(high, 1e-7, 1 - 1e-7))) / 2)
    return np.where((low < mid) & (mid <= high), mid, high)


def _rates(truth: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each weighting's (row of `weights` [R, N]) candidate thresholds and the audit rates at them, [R, U + 1]:
    the U distinct probabilities, then one just above the largest drawn (`cands`), `present` (drawn at all:
    a threshold of that weighting), `lower` (its next lower candidate, -inf for none), `sens`, `spec`; `ok` [R]:
    both classes drawn. Weights of ones give the audit set itself."""
    order = np.argsort(probs, kind="stable")
    ranked = probs[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # each distinct value's first row
    values = ranked[starts]
    ranked_weights = weights[:, order]
    pos = np.add.reduceat(ranked_weights * truth[order], starts, axis=1)  # [R, U]: drawn weight per distinct value
    neg = np.add.reduceat(ranked_weights * ~truth[order], starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    present = (pos + neg) > 0
    cols = np.arange(len(values))
    top = np.where(present, cols, -1).max(axis=1)  # the largest value drawn
    above = np.nextafter(values[top], np.inf)[:, None]
    cands = np.concatenate([np.broadcast_to(values, pos.shape), above], axis=1)
    present = np.concatenate([present, np.ones((len(pos), 1), bool)], axis=1)
    last = np.maximum.accumulate(np.where(present, np.arange(len(values) + 1), -1), axis=1)  # last drawn <= j
    prev = np.concatenate([np.full((len(pos), 1), -1), last[:, :-1]], axis=1)
    lower = np.where(prev >= 0, np.take_along_axis(cands, np.maximum(prev, 0), axis=1), -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):  # a weighting without a class: `ok` is False
        kept = np.concatenate([np.cumsum(pos[:, ::-1], axis=1)[:, ::-1], np.zeros((len(pos), 1))], axis=1)
        below = np.concatenate([np.cumsum(neg, axis=1) - neg, n_neg], axis=1)
        sens, spec = kept / n_pos, below / n_neg
    ok = (n_pos[:, 0] > 0) & (n_neg[:, 0] > 0)
    return {"cands": cands, "present": present, "lower": lower, "sens": sens, "spec": spec, "ok": ok}


def _rule_thresholds(rates: dict[str, np.ndarray], rule: str) -> np.ndarray:
    """[R]: the threshold `rule` (see `operating_point`) picks for each weighting of `_rates` (NaN where a class
    is missing). One implementation for the audit set and for its bootstrap resamples, so they cannot drift."""
    cands, present, lower, sens, spec = (rates[k] for k in ("cands", "present", "lower", "sens", "spec"))
    rows = np.arange(len(cands))
    if rule == "sensitivity":
        eligible = present & (sens >= BIOPSY_MIN_SENSITIVITY)
        j = np.where(eligible, np.arange(cands.shape[1]), -1).max(axis=1)  # the weakest positive kept
        j = np.maximum(j, 0)  # rows with no eligible candidate lack positives: NaN below
        edge, below = cands[rows, j], lower[rows, j]
        # every threshold in (the next lower probability, edge] makes the same audit decisions: take the gap's
        # middle (in logits, the scale the network's scores are spread on) rather than its upper end, where an
        # unseen positive scored just below the weakest audit one would be missed
        threshold = np.where(np.isfinite(below), _logit_midpoints(np.where(np.isfinite(below), below, 0.0), edge), edge)
    elif rule == "balanced":
        balanced = np.where(present, (sens + spec) / 2, -np.inf)
        tied = balanced >= balanced.max(axis=1, keepdims=True) - 1e-12
        # a candidate's decisions hold for every threshold in (the next lower probability, candidate]: the tie
        # rule looks at those whole intervals, not only at their upper ends, so where the audit set leaves a gap
        # between its classes the threshold is 0.5 when the gap holds it, not the lowest positive's edge
        options = np.minimum(np.maximum(0.5, np.nextafter(lower, np.inf)), cands)
        j = np.where(tied, np.abs(options - 0.5), np.inf).argmin(axis=1)  # ties: the lowest, as min() did
        threshold = options[rows, j]
    else:
        raise ValueError(f"operating-point rule must be 'sensitivity' or 'balanced', not {rule!r}")
    return np.where(rates["ok"], threshold, np.nan)


RULE_NAMES = {
    "sensitivity": f"sensitivity >= {BIOPSY_MIN_SENSITIVITY} at the best specificity (middle of the gap below)",
    "balanced": "best balanced accuracy",
}


def operating_point(
    truth: np.ndarray,
    probs: np.ndarray,
    rule: str,
    groups: np.ndarray | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """Threshold and review band of one flag on the audit set. Rules:

    - 'sensitivity': the best specificity that keeps sensitivity >= BIOPSY_MIN_SENSITIVITY, with the threshold in
      the middle (in logits) of the gap between the weakest positive kept and the next lower probability, not at
      that positive's score (an unseen positive just below it would be missed);
    - 'balanced': the threshold with the best balanced accuracy ((sens + spec) / 2; ties: the one nearest 0.5,
      any threshold between two adjacent audit probabilities counting, not only the probabilities themselves).

    The review band [review_low, review_high) holds the predictions whose decision the audit set cannot vouch
    for. It is the union of three ranges:

    - review_low the highest threshold keeping REVIEW_SENSITIVITY of the positives at or above it, review_high
      the lowest keeping REVIEW_SPECIFICITY of the negatives below it;
    - the threshold's whole gap, from the nearest audit probability below it to the nearest at or above it
      (every threshold in it makes the same audit decisions; since stop 49);
    - the central LEVEL (95 %, the level of every interval in `intervals.py`) of the thresholds the same rule
      picks on `resamples` bootstrap resamples of the audit set, whole `groups` (patients; None: images) drawn
      with replacement, seeded (`threshold_low`, `threshold_high`; since stop 57): a score between one of them
      and the threshold is decided the other way by at least 2.5 % of the resampled audit sets. The gap alone
      said nothing about that: one audit score just under the threshold made it 0.0009 wide on a real model.
      LEVEL is not fitted to anything: it is the project's one confidence level. The resamples are one
      weighting of the audit rows each, all run through `_rule_thresholds` at once (1000 x 150 scores: ~0.02 s).

    What the band still cannot say: a bootstrap redraws audit scores and invents none, so the sensitivity
    rule's resampled thresholds stay near the weakest audit positives; how far below them an unseen clip may
    score is beyond any audit set of this size (none of 46 clips below a score still allows 7.7 % below it:
    Clopper-Pearson's 95 % bound, 1 - 0.025 ** (1 / 46)).

    Without both classes the DEFAULT_POINT is returned. Raises ValueError when a probability is not finite.
    """
    truth = np.asarray(truth, dtype=bool)
    probs = np.asarray(probs, dtype=float)
    if not np.isfinite(probs).all():
        raise ValueError(f"{int((~np.isfinite(probs)).sum())} audit probabilities are not finite (NaN or inf)")
    if truth.all() or not truth.any():
        return dict(DEFAULT_POINT)
    if rule not in RULE_NAMES:
        raise ValueError(f"operating-point rule must be 'sensitivity' or 'balanced', not {rule!r}")
    rates = _rates(truth, probs, np.ones((1, len(probs))))
    threshold = float(_rule_thresholds(rates, rule)[0])
    cands, sens, spec = rates["cands"][0], rates["sens"][0], rates["spec"][0]
    low = float(cands[sens >= REVIEW_SENSITIVITY].max())
    high = float(cands[spec >= REVIEW_SPECIFICITY].min())
    # the threshold's gap (gap_low, gap_high]: every threshold in it decides the audit alike; with no audit score
    # below (above) the threshold, every unseen score below (above) it is one the audit set cannot vouch for
    below, above = probs[probs < threshold], probs[probs >= threshold]
    gap_low = float(below.max()) if len(below) else 0.0
    gap_high = float(above.min()) if len(above) else float(np.nextafter(1.0, 2.0))
    resampled = _rule_thresholds(_rates(truth, probs, bootstrap_weights(len(probs), groups, resamples, seed)), rule)
    resampled = resampled[np.isfinite(resampled)]  # resamples that drew one class only have no threshold
    tail = 100 * (1 - LEVEL) / 2
    t_low, t_high = (
        (
            float(np.percentile(resampled, tail, method="lower")),
            float(np.percentile(resampled, 100 - tail, method="higher")),
        )
        if len(resampled)
        else (threshold, threshold)
    )
    return {
        "threshold": threshold,
        "review_low": float(min(low, threshold, gap_low, t_low)),
        "review_high": float(max(high, threshold, gap_high, t_high)),
        "rule": RULE_NAMES[rule],
        "threshold_low": t_low,
        "threshold_high": t_high,
        "band_rule": (
            f"review edges, the threshold's audit gap and the central {LEVEL:.0%} of {len(resampled)} "
            f"bootstrap thresholds ({'whole groups' if groups is not None else 'images'} resampled)"
        ),
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
    Each band's bootstrap resamples whole patients (`resampling_groups`), as the audit figures' intervals do.
    """
    probs = np.asarray(probs, dtype=float).reshape(len(audit), 2)
    if len(audit) == 0:
        return {flag: dict(DEFAULT_POINT) for flag in FLAGS}
    units = resampling_groups(audit)
    points = {}
    for k, (flag, rule) in enumerate(zip(FLAGS, ("sensitivity", "balanced"), strict=True)):
        truth = audit[TRUTH_COLUMNS[flag]].to_numpy(bool)
        point = operating_point(truth, probs[:, k], rule, units)
        if "study_instance_uid" in audit:
            studies = audit["study_instance_uid"].to_numpy()
            s_truth, s_score = study_scores(studies, truth, probs[:, k])
            if 0 < s_truth.sum() < len(s_truth):
                study = operating_point(s_truth, s_score, rule, _study_groups(studies, units))
            else:
                study = {**point, "rule": f"{point['rule']} (the image point: the audit studies lack a class)"}
            point["study"] = {**study, "n_studies": len(s_truth), "positives": int(s_truth.sum())}
        points[flag] = point
    return points


def _study_groups(studies: np.ndarray, groups: np.ndarray | None) -> np.ndarray | None:
    """Each study's group (its patient), in `study_scores`' order (sorted, as groupby gives); None for None."""
    if groups is None:
        return None
    return pd.Series(np.asarray(groups)).groupby(pd.Series(studies), sort=True).first().to_numpy()


def study_point(points: dict, flag: str) -> dict | None:
    """The study-level operating point of `flag` in a model's `operating_points`; None for a model made before
    them (its study flag is ANY image flagged at the image threshold)."""
    return (points.get(flag) or {}).get("study")


def in_review_band(scores: np.ndarray, point: dict) -> np.ndarray:
    """Bool [N]: each score inside `point`'s review band [review_low, review_high), compared in float64 (against
    a float32 array NumPy would round a bound to float32, and a bound one float64 step above a score, `nextafter`,
    would then equal it)."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores >= point["review_low"]) & (scores < point["review_high"])


def needs_review(probs: np.ndarray, points: dict[str, dict]) -> np.ndarray:
    """Bool [N]: any flag's probability inside its review band [review_low, review_high) (`in_review_band`)."""
    probs = np.asarray(probs, dtype=float).reshape(-1, 2)
    out = np.zeros(len(probs), dtype=bool)
    for k, flag in enumerate(FLAGS):
        out |= in_review_band(probs[:, k], points[flag])
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
    s_groups = _study_groups(studies, groups)
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
