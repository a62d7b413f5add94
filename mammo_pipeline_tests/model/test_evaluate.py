from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_pipeline.model.evaluate import (
    DEFAULT_POINT,
    cohen_kappa,
    detailed_metrics,
    evaluate,
    expected_calibration_error,
    flag_metrics,
    miss_reason,
    needs_review,
    operating_point,
    operating_points,
    roc_auc,
    study_metrics,
    three_class_correct,
)


def _audit(rows):
    return pd.DataFrame(rows, columns=["has_biopsy_marker", "is_mag_view", "hospital"])


def test_evaluate_counts_four_and_three_class_accuracy():
    audit = _audit(
        [
            (True, False, "a"),  # biopsy, predicted both with p_b > p_m: 3-class right, 4-class wrong
            (False, True, "a"),  # mag, predicted mag: both right
            (False, False, "b"),  # neither, predicted biopsy: both wrong
            (True, True, "b"),  # both, predicted both: both right
        ]
    )
    probs = np.array([[0.9, 0.6], [0.1, 0.8], [0.7, 0.2], [0.6, 0.7]])
    m = evaluate(audit, probs)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_3class"] == pytest.approx(0.75)
    assert m["per_hospital_accuracy"] == {"a": 0.5, "b": 0.5}
    # biopsy flag: predicted on rows 0, 2, 3; true on 0, 3
    assert (m["biopsy_precision"], m["biopsy_recall"]) == (pytest.approx(2 / 3), 1.0)
    assert m["mag_precision"] == pytest.approx(2 / 3) and m["mag_recall"] == 1.0
    cm = np.array(m["confusion"])
    assert cm.sum() == 4 and cm[0, 3] == 1 and cm[2, 0] == 1 and np.trace(cm) == 2


def test_three_class_prediction_is_the_flag_that_reached_its_own_threshold():
    """Thresholds (0.5, 0.1): p_mag 0.2 raises the mag flag, p_biopsy 0.3 raises nothing, so the prediction is mag,
    though p_biopsy is the larger probability; when both flags are raised, the larger one."""
    probs = np.array([[0.3, 0.2], [0.15, 0.2], [0.6, 0.7]])
    true_b, true_m = np.array([False, True, False]), np.array([True, False, True])
    assert three_class_correct(true_b, true_m, probs, (0.5, 0.1)).tolist() == [True, False, True]
    assert three_class_correct(np.array([True]), np.array([False]), np.array([[0.15, 0.2]]), (0.1, 0.3))[0]


def test_three_class_both_needs_both_flags():
    true_b, true_m = np.array([True]), np.array([True])
    assert not three_class_correct(true_b, true_m, np.array([[0.9, 0.4]]))[0]
    assert three_class_correct(true_b, true_m, np.array([[0.9, 0.6]]))[0]


def test_ece_zero_when_calibrated_and_known_value_otherwise():
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == pytest.approx(0.0)
    # all at p=0.75 in one bin, half positive: |0.5 - 0.75| = 0.25
    assert expected_calibration_error(np.full(4, 0.75), np.array([1, 0, 1, 0])) == pytest.approx(0.25)


def test_evaluate_without_audit_rows_is_all_null():
    m = evaluate(_audit([]), np.zeros((0, 2)))
    assert m["accuracy"] is None and m["ece"] is None and m["biopsy_f1"] is None and m["n_audit"] == 0


def test_miss_reason():
    assert miss_reason(True, True, 0.2, 0.1) == "missed marker + missed mag"
    assert miss_reason(True, False, 0.7, 0.9) == ""
    assert miss_reason(False, True, 0.9, 0.3) == "missed mag"


def test_biopsy_operating_point_keeps_98_percent_sensitivity_at_the_best_specificity():
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(100, bool), np.zeros(300, bool)]
    probs = np.r_[rng.uniform(0.3, 1.0, 100), rng.uniform(0.0, 0.6, 300)]
    point = operating_point(truth, probs, "sensitivity")
    pred = probs >= point["threshold"]
    assert pred[truth].mean() >= 0.98
    # one step higher (the next distinct probability) would drop below 98 %: it is the best specificity
    higher = np.unique(probs)[np.searchsorted(np.unique(probs), point["threshold"]) + 1]
    assert (probs[truth] >= higher).mean() < 0.98
    assert point["review_low"] <= point["threshold"] <= point["review_high"]


def test_the_biopsy_threshold_sits_in_the_middle_of_the_gap_below_the_weakest_positive_kept():
    """40 positives must all be kept (39 of 40 is under 0.98): any threshold in the gap (0.6, 0.985] makes the same
    audit decisions. The weakest positive's own score (the old choice) would miss an unseen clip at 0.98; the
    middle of the gap in logits (0.91) keeps it and still leaves every audit negative below."""
    truth = np.r_[np.ones(40, bool), np.zeros(50, bool)]
    probs = np.r_[np.linspace(0.985, 0.999, 40), np.linspace(0.01, 0.6, 50)]
    point = operating_point(truth, probs, "sensitivity")
    logit = np.log(probs / (1 - probs))
    assert point["threshold"] == pytest.approx(1 / (1 + np.exp(-(logit[0] + logit[-1]) / 2)))
    assert 0.6 < point["threshold"] < 0.98
    assert flag_metrics(truth, probs, point["threshold"])["balanced_accuracy"] == 1.0
    # no gap to speak of: adjacent scores leave the threshold between them, at most the weakest positive
    dense = operating_point(truth, np.r_[np.linspace(0.5, 0.99, 40), np.linspace(0.0, 0.5, 50)], "sensitivity")
    assert dense["threshold"] <= 0.5 and dense["review_low"] <= dense["threshold"] <= dense["review_high"]


def test_mag_operating_point_is_the_best_balanced_accuracy_and_perfect_separation_is_found():
    truth = np.array([False, False, False, True, True])
    probs = np.array([0.05, 0.2, 0.3, 0.35, 0.9])
    point = operating_point(truth, probs, "balanced")
    assert 0.3 < point["threshold"] <= 0.35  # separates perfectly although below 0.5
    assert flag_metrics(truth, probs, point["threshold"])["balanced_accuracy"] == 1.0
    assert operating_point(np.zeros(3, bool), np.zeros(3), "balanced")["rule"].startswith("default")


def test_a_gap_between_the_classes_puts_the_balanced_threshold_at_one_half_not_at_the_lowest_positive():
    """Every threshold in the gap (0.07, 0.89] separates the audit set; the one nearest 0.5 is 0.5 itself. The
    lowest positive's edge (0.89, the old choice) would miss any unseen positive just below it."""
    truth = np.array([False, False, False, True, True, True])
    probs = np.array([0.01, 0.04, 0.07, 0.89, 0.95, 0.99])
    assert operating_point(truth, probs, "balanced")["threshold"] == 0.5
    high = operating_point(truth, probs * 0.4 + 0.6, "balanced")["threshold"]  # gap (0.628, 0.956]: its lower end
    assert 0.6 + 0.4 * 0.07 < high < 0.6 + 0.4 * 0.89 and high == pytest.approx(0.628)
    one = operating_point(truth, probs, "balanced")
    assert one["review_low"] <= one["threshold"] <= one["review_high"]


def test_the_review_band_spans_the_thresholds_whole_gap_on_both_sides():
    """The audit set decides nothing between its nearest scores around the threshold, so an unseen prediction
    there needs review on either side of it: before, the sensitivity rule's band began at the threshold, and a
    clip scored just under it (0.8 here, under the threshold 0.91) was neither flagged nor reviewed."""
    truth = np.r_[np.ones(40, bool), np.zeros(50, bool)]
    probs = np.r_[np.linspace(0.985, 0.999, 40), np.linspace(0.01, 0.6, 50)]
    points = {"biopsy": operating_point(truth, probs, "sensitivity"), "mag": dict(DEFAULT_POINT)}
    assert points["biopsy"]["review_low"] == pytest.approx(0.6) and points["biopsy"]["review_high"] >= 0.985
    unseen = np.array([[0.8, 0.0], [0.95, 0.0], [0.55, 0.0], [0.999, 0.0]])
    assert needs_review(unseen, points).tolist() == [True, True, False, False]
    balanced = operating_point(
        np.array([0, 0, 0, 1, 1, 1], bool), np.array([0.01, 0.04, 0.07, 0.89, 0.95, 0.99]), "balanced"
    )
    assert (balanced["review_low"], balanced["threshold"], balanced["review_high"]) == (0.07, 0.5, 0.89)


def test_needs_review_marks_exactly_the_band():
    points = {
        "biopsy": {"threshold": 0.5, "review_low": 0.2, "review_high": 0.7},
        "mag": {"threshold": 0.5, "review_low": 0.4, "review_high": 0.6},
    }
    probs = np.array([[0.1, 0.1], [0.2, 0.1], [0.69, 0.9], [0.7, 0.9], [0.0, 0.5], [0.9, 0.6]])
    assert needs_review(probs, points).tolist() == [False, True, True, False, True, False]


def test_one_cohens_kappa_serves_labels_and_flags_and_is_none_where_undefined():
    # Cohen 1960 by hand: 10 paired reads, p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.2 / 0.5
    a = ["biopsy"] * 5 + ["neither"] * 5
    b = ["biopsy"] * 4 + ["neither"] + ["biopsy"] * 2 + ["neither"] * 3
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    as_flags = np.array(a) == "biopsy"
    assert cohen_kappa(as_flags, np.array(b) == "biopsy") == pytest.approx(0.4)  # the same figure on booleans
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["neither"] * 4, ["neither"] * 4) is None  # p_e = 1: 0/0, not "perfect agreement"
    assert cohen_kappa(np.zeros(3, bool), np.zeros(3, bool)) is None
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa(["a"], ["a", "b"])


def test_kappa_auc_and_study_false_positive_rate():
    truth = np.array([True, True, False, False])
    assert cohen_kappa(truth, truth) == pytest.approx(1.0)
    assert cohen_kappa(truth, ~truth) == pytest.approx(-1.0)
    assert roc_auc(truth, np.array([0.9, 0.8, 0.1, 0.85])) == pytest.approx(0.75)
    assert roc_auc(np.ones(3, bool), np.zeros(3)) is None
    studies = np.array(["a", "a", "b", "b", "c"])
    # study a is truly positive; b negative with one false alarm; c negative and clean
    pred = np.array([0, 0, 0, 1, 0], float)  # the study flag at threshold 0.5: ANY image at or above it
    rate = study_metrics(studies, np.array([1, 0, 0, 0, 0], bool), pred, {"threshold": 0.5})["study_fp_rate"]
    assert rate == pytest.approx(0.5)


def test_study_roc_auc_has_its_interval_bootstrapped_over_patients():
    rng = np.random.default_rng(0)
    studies = np.repeat([f"s{i}" for i in range(40)], 2)
    truth = np.repeat(np.arange(40) < 15, 2)
    probs = np.clip(truth * 0.3 + rng.uniform(0, 0.7, len(truth)), 0, 1)
    patients = np.repeat([f"p{i // 2}" for i in range(40)], 2)  # two studies per patient
    m = study_metrics(studies, truth, probs, {"threshold": 0.5}, patients)
    assert m["study_roc_auc_low"] <= m["study_roc_auc"] <= m["study_roc_auc_high"]
    assert m["study_roc_auc_high"] - m["study_roc_auc_low"] > 0.01


def test_detailed_metrics_per_group():
    audit = _audit([(True, False, "a"), (False, True, "a"), (False, False, "b"), (True, True, "b")])
    audit["study_instance_uid"] = ["s1", "s1", "s2", "s2"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.2], [0.8, 0.9]])
    points = {f: {"threshold": 0.5, "review_low": 0.5, "review_high": 0.5} for f in ("biopsy", "mag")}
    d = detailed_metrics(audit, probs, points)
    assert d["biopsy"]["roc_auc"] == 1.0 and d["biopsy"]["kappa"] == pytest.approx(1.0)
    assert set(d["mag"]["by_hospital"]) == {"a", "b"} and d["mag"]["by_hospital"]["a"]["n"] == 2


def _studies_audit(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """An audit set of 20 clip studies (two views: the clip clear in one, p 0.6-1.0, and faint in the other, p
    0.02-0.5) and 40 clip-free studies (four views, p 0.0-0.55), no magnification views."""
    rows, probs = [], []
    for s in range(20):
        for p in (rng.uniform(0.6, 1.0), rng.uniform(0.02, 0.5)):
            rows.append((True, False, "h", f"clip{s}"))
            probs.append((p, 0.1))
    for s in range(40):
        for _ in range(4):
            rows.append((False, False, "h", f"clean{s}"))
            probs.append((rng.uniform(0.0, 0.55), 0.1))
    audit = pd.DataFrame(rows, columns=["has_biopsy_marker", "is_mag_view", "hospital", "study_instance_uid"])
    return audit, np.array(probs)


def test_study_operating_point_reaches_each_clip_study_through_its_clearest_view():
    audit, probs = _studies_audit(np.random.default_rng(1))
    point = operating_points(audit, probs)["biopsy"]
    study = point["study"]
    assert study["n_studies"] == 60 and study["positives"] == 20
    # the image threshold must reach the faint views; the study threshold only each study's clearest one
    assert point["threshold"] <= 0.05 < 0.55 < study["threshold"]
    d = detailed_metrics(audit, probs, operating_points(audit, probs))["biopsy"]
    assert d["study_threshold"] == study["threshold"]
    assert d["study_sensitivity"] >= 0.98 and d["study_specificity"] == 1.0 and d["study_fp_rate"] == 0.0
    assert d["study_roc_auc"] == 1.0 and d["n_studies"] == 60 and d["study_positives"] == 20
    # at the image threshold nearly every clip-free study would have been flagged (the ANY rule)
    studies, truth = audit["study_instance_uid"].to_numpy(), audit["has_biopsy_marker"].to_numpy(bool)
    at_image = study_metrics(studies, truth, probs[:, 0], {"threshold": point["threshold"]})
    assert at_image["study_fp_rate"] > 0.9


def test_study_point_is_the_image_point_when_the_audit_studies_lack_a_class():
    audit, probs = _studies_audit(np.random.default_rng(2))
    points = operating_points(audit, probs)
    mag = points["mag"]  # no audit study holds a magnification view
    assert mag["study"]["threshold"] == mag["threshold"] and "lack a class" in mag["study"]["rule"]
    without = operating_points(audit.drop(columns="study_instance_uid"), probs)
    assert "study" not in without["biopsy"] and without["biopsy"]["threshold"] == points["biopsy"]["threshold"]


def test_with_no_audit_score_below_the_threshold_the_band_reaches_zero():
    """When the weakest positive kept is the lowest audit score, nothing below the threshold was ever seen: an
    unseen score just under it needs review (the gap's lower end fell back to the threshold itself)."""
    truth = np.array([True, True, True, False, False])
    point = operating_point(truth, np.array([0.3, 0.8, 0.9, 0.5, 0.95]), "sensitivity")
    assert point["threshold"] == 0.3 and point["review_low"] == 0.0
    same = operating_point(np.array([True, False, True]), np.full(3, 0.4), "sensitivity")
    assert same["review_low"] == 0.0 and same["review_high"] > 0.4


def test_an_audit_probability_that_is_not_finite_is_refused():
    with pytest.raises(ValueError, match="not finite"):
        operating_point(np.array([True, False, True]), np.array([0.9, np.nan, 0.8]), "sensitivity")


def _tiny_gap_audit() -> pd.DataFrame:
    """20 patients, 3 images each, no magnification view. Patient 0 holds the one weak clip image (0.50), patient 1
    a clip-free image just under it (0.499), patients 2-4 clip-free ones at 0.47, 0.44, 0.41; every other clip
    scores 0.9 or more, every other clip-free image 0.2 or less."""
    rows = []
    for patient in range(20):
        for view in range(3):
            clip = patient % 2 == 0
            p = 0.9 + 0.004 * patient + 0.001 * view if clip else 0.05 + 0.005 * patient + 0.001 * view
            rows.append((clip, False, "h", f"p{patient}", f"s{patient}", p))
    rows[0] = (True, False, "h", "p0", "s0", 0.50)
    rows[3], rows[6], rows[9], rows[12] = (
        (False, False, "h", f"p{k}", f"s{k}", p) for k, p in ((1, 0.499), (2, 0.47), (3, 0.44), (4, 0.41))
    )
    columns = ["has_biopsy_marker", "is_mag_view", "hospital", "patient_key", "study_instance_uid", "p"]
    return pd.DataFrame(rows, columns=columns)


def test_a_threshold_in_a_tiny_gap_gets_a_band_holding_the_scores_a_resample_would_flip():
    """The biopsy threshold sits between the weak clip (0.50) and the clip-free image at 0.499: the gap is 0.001
    wide, the band before stop 57 began at 0.499, and an unseen clip at 0.49 was neither flagged nor reviewed.
    Yet a patient bootstrap leaves patient 1 out about a third of the time, and the same rule on the audit set
    without him puts the threshold under 0.49: the audit set cannot vouch for 0.49's decision."""
    audit = _tiny_gap_audit()
    probs = np.c_[audit["p"], np.full(len(audit), 0.1)]
    point = operating_points(audit, probs)["biopsy"]
    assert 0.499 < point["threshold"] <= 0.5
    without = audit["patient_key"] != "p1"
    moved = operating_point(audit["has_biopsy_marker"][without].to_numpy(bool), audit["p"][without], "sensitivity")
    assert moved["threshold"] < 0.49
    unseen = np.array([[0.49, 0.1], [0.4995, 0.1], [0.3, 0.1]])
    points = {"biopsy": point, "mag": {"threshold": 0.5, "review_low": 0.5, "review_high": 0.5}}
    assert needs_review(unseen, points).tolist() == [True, True, False]
    assert point["review_low"] <= point["threshold_low"] < 0.49 and point["threshold_high"] <= point["review_high"]


def _patient_resample_thresholds(truth, probs, patients, rule, n, seed) -> np.ndarray:
    """The rule's threshold on `n` patient-bootstrap resamples drawn here, independently of evaluate.py."""
    rng = np.random.default_rng(seed)
    names = np.unique(patients)
    out = []
    for _ in range(n):
        drawn = rng.choice(names, size=len(names))
        idx = np.concatenate([np.flatnonzero(patients == name) for name in drawn])
        if 0 < truth[idx].sum() < len(idx):
            out.append(operating_point(truth[idx], probs[idx], rule)["threshold"])
    return np.array(out)


def test_the_band_holds_the_threshold_and_most_thresholds_of_independent_patient_resamples():
    """30 patients of 2-4 images; a third of them have clip images (p 0.45-1.0; the first one 0.2, alone among
    the clip-free images, p 0-0.55), magnification views are random. Each flag's rule, applied to patient
    resamples the test draws itself, picks a threshold inside the flag's band at least 90 % of the time (the band
    holds the central 95 % of 1000 of its own; the band of the review edges and the gap alone held 73 % of the
    biopsy ones: a resample without the clip-free images just under the weak clip puts the threshold below the
    gap). The band holds the threshold and its whole audit gap, and is the same on a second call and with the
    rows shuffled (the bootstrap draws patients, not rows)."""
    rng = np.random.default_rng(3)
    patients = np.repeat([f"p{i}" for i in range(30)], rng.integers(2, 5, 30))
    with_clips = (rng.random(30) < 0.35)[[int(p[1:]) for p in patients]]
    truth = np.c_[with_clips & (rng.random(len(patients)) < 0.7), rng.random(len(patients)) < 0.3]
    probs = np.where(truth, rng.uniform(0.45, 1.0, truth.shape), rng.uniform(0.0, 0.55, truth.shape))
    probs[np.flatnonzero(truth[:, 0])[0], 0] = 0.2
    audit = pd.DataFrame({"has_biopsy_marker": truth[:, 0], "is_mag_view": truth[:, 1], "patient_key": patients})
    points = operating_points(audit, probs)
    for k, (flag, rule) in enumerate((("biopsy", "sensitivity"), ("mag", "balanced"))):
        low, t, high = points[flag]["review_low"], points[flag]["threshold"], points[flag]["review_high"]
        assert low <= t <= high
        assert low <= probs[probs[:, k] < t, k].max() and high >= probs[probs[:, k] >= t, k].min()
        resampled = _patient_resample_thresholds(truth[:, k], probs[:, k], patients, rule, 60, seed=11)
        assert ((resampled >= low) & (resampled <= high)).mean() >= 0.9, flag
    order = rng.permutation(len(audit))
    assert operating_points(audit, probs) == points
    assert operating_points(audit.iloc[order].reset_index(drop=True), probs[order]) == points


def test_a_large_separated_audit_set_keeps_the_band_of_its_gap():
    """300 clip-free images under 0.1 and 200 clip images over 0.9: every resample separates them, the balanced
    threshold is 0.5 in each, so the bootstrap adds nothing to the band of the gap (0.1, 0.9)."""
    rng = np.random.default_rng(3)
    truth = np.r_[np.zeros(300, bool), np.ones(200, bool)]
    probs = np.r_[rng.uniform(0.0, 0.1, 300), rng.uniform(0.9, 1.0, 200)]
    point = operating_point(truth, probs, "balanced")
    assert point["threshold_low"] == point["threshold"] == point["threshold_high"] == 0.5
    assert (point["review_low"], point["review_high"]) == (probs[:300].max(), probs[300:].min())
