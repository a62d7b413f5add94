"""Honest numbers for a model: computed on the frozen audit split only, from two flag probabilities.

The network predicts two independent flags (p >= 0.5 sets a flag). From them we report:

- **4-class accuracy**: the derived class (biopsy / mag / neither / both, `labels.codes.label_of`) equals
  the true one, i.e. both flags right.
- **3-class accuracy** (the seed project's figure, which had no 'both' class): the predicted 3-class label is
  'neither' when both probabilities are < 0.5, else the flag with the larger probability ('biopsy' on a tie).
  An image whose true label is biopsy/mag/neither is correct when that predicted label equals its label; an
  image whose true label is 'both' is correct when both flags are right.
- per-flag precision / recall / F1, 4-class accuracy per hospital, a 4x4 confusion matrix (rows true,
  columns predicted, order CLASSES), and the expected calibration error over both flags pooled
  (10 equal-width bins of p; ECE = sum over bins of n_bin / N * |mean(y) - mean(p)|).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mammo_pipeline.labels.codes import label_of

CLASSES: tuple[str, ...] = ("biopsy", "mag", "neither", "both")
THRESHOLD = 0.5


def classes_of(biopsy: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """The 4-class names for arrays of flags."""
    return np.array([label_of(b, m) for b, m in zip(biopsy, mag, strict=True)], dtype=object)


def three_class_correct(true_b: np.ndarray, true_m: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-image correctness under the 3-class rule in the module docstring."""
    pb, pm = probs[:, 0], probs[:, 1]
    pred_b, pred_m = pb >= THRESHOLD, pm >= THRESHOLD
    pred3 = np.where(~pred_b & ~pred_m, "neither", np.where(pb >= pm, "biopsy", "mag"))
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


def evaluate(audit: pd.DataFrame, probs: np.ndarray) -> dict:
    """Metrics for `audit` (columns has_biopsy_marker, is_mag_view, hospital) and probs [N, 2].

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
    pred_b, pred_m = probs[:, 0] >= THRESHOLD, probs[:, 1] >= THRESHOLD
    true4, pred4 = classes_of(true_b, true_m), classes_of(pred_b, pred_m)
    correct4 = true4 == pred4
    out = dict(empty, n_audit=n)
    out["accuracy"] = float(correct4.mean())
    out["accuracy_3class"] = float(three_class_correct(true_b, true_m, probs).mean())
    for flag, t, p in (("biopsy", true_b, pred_b), ("mag", true_m, pred_m)):
        out[f"{flag}_precision"], out[f"{flag}_recall"], out[f"{flag}_f1"] = precision_recall_f1(t, p)
    out["ece"] = expected_calibration_error(probs, np.stack([true_b, true_m], axis=1))
    by_h = pd.Series(correct4).groupby(audit["hospital"].to_numpy()).mean()
    out["per_hospital_accuracy"] = {str(h): float(a) for h, a in by_h.items()}
    out["confusion"] = confusion(true4, pred4).tolist()
    return out


def miss_reason(true_b: bool, true_m: bool, p_biopsy: float, p_mag: float) -> str:
    """Why an audit image counts as a false negative ('' when it does not)."""
    reasons = []
    if true_b and p_biopsy < THRESHOLD:
        reasons.append("missed marker")
    if true_m and p_mag < THRESHOLD:
        reasons.append("missed mag")
    return " + ".join(reasons)
