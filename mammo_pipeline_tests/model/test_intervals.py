"""95 % intervals of the audit figures (model/intervals.py): Wilson for rates, a grouped bootstrap for ROC-AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_pipeline.model.evaluate import detailed_metrics, flag_metrics, resampling_groups
from mammo_pipeline.model.intervals import bootstrap_interval, newcombe_interval, roc_auc_interval, wilson_interval

Z2 = 1.959963984540054**2


def test_wilson_interval_matches_its_closed_forms_at_the_extremes_and_the_middle():
    # all n right: the lower bound is n / (n + z^2) (34 of 34 clip images caught is compatible with a true 0.90)
    assert wilson_interval(34, 34) == (pytest.approx(34 / (34 + Z2)), 1.0)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z2 / (10 + Z2)))
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.2366, abs=1e-4)  # symmetric about 1/2
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    return truth, rng.normal(size=n) + 1.2 * truth


def test_roc_auc_interval_holds_the_estimate_narrows_with_more_data_and_is_reproducible():
    from sklearn.metrics import roc_auc_score

    small, large = _scores(60, 1), _scores(600, 1)
    lo_s, hi_s = roc_auc_interval(*small)
    lo_l, hi_l = roc_auc_interval(*large)
    assert lo_s < roc_auc_score(*small) < hi_s and lo_l < roc_auc_score(*large) < hi_l
    assert hi_l - lo_l < 0.6 * (hi_s - lo_s)  # about 1 / sqrt(10) of the width
    assert roc_auc_interval(*small) == roc_auc_interval(*small)
    assert roc_auc_interval(*small, seed=1) != roc_auc_interval(*small)
    assert roc_auc_interval(np.ones(5, bool), np.arange(5.0)) is None


def test_the_bootstrap_resamples_whole_groups_so_copied_views_add_no_evidence():
    # each patient's image shown four times: resampling patients gives exactly the one-image interval, while
    # treating the 4 x N images as independent would claim a twice narrower one
    truth, probs = _scores(80, 2)
    patients = np.array([f"p{i}" for i in range(80)])
    one = bootstrap_interval(truth, probs, patients)
    four = bootstrap_interval(np.repeat(truth, 4), np.repeat(probs, 4), np.repeat(patients, 4))
    assert four == pytest.approx(one)
    naive = bootstrap_interval(np.repeat(truth, 4), np.repeat(probs, 4))
    assert naive[1] - naive[0] < 0.7 * (one[1] - one[0])
    assert roc_auc_interval(np.repeat(truth, 4), np.repeat(probs, 4), np.repeat(patients, 4))[1] >= four[1]


def test_a_perfect_ranking_still_gets_an_interval_below_one():
    # the bootstrap of a perfect ranking is (1, 1); Newcombe's score interval is not, and narrows with the sample
    truth = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    probs = np.r_[np.linspace(1, 2, 10), np.linspace(0, 0.9, 10)]
    assert bootstrap_interval(truth, probs) == (1.0, 1.0)
    low, high = roc_auc_interval(truth, probs)
    assert high == 1.0 and 0.75 < low < 0.9
    assert low < newcombe_interval(1.0, 40, 100)[0] < 0.99
    assert newcombe_interval(0.0, 10, 10) == pytest.approx((0.0, 1 - low))  # mirror images
    lo, hi = newcombe_interval(0.5, 40, 100)
    assert lo == pytest.approx(1 - hi) and lo < 0.5 < hi
    with pytest.raises(ValueError):
        newcombe_interval(0.7, 0, 5)


def test_flag_metrics_and_the_detailed_metrics_carry_the_intervals():
    truth, probs = _scores(120, 3)
    m = flag_metrics(truth, probs, 0.5)
    for key in ("roc_auc", "sensitivity", "specificity"):
        assert m[f"{key}_low"] <= m[key] <= m[f"{key}_high"], key
    audit = pd.DataFrame(
        {
            "sop_instance_uid": [f"1.{i}" for i in range(120)],
            "study_instance_uid": [f"2.{i // 2}" for i in range(120)],
            "patient_key": [f"p{i // 4}" for i in range(120)],
            "hospital": ["a", "b"] * 60,
            "has_biopsy_marker": truth,
            "is_mag_view": np.roll(truth, 7),
        }
    )
    points = {flag: {"threshold": 0.5} for flag in ("biopsy", "mag")}
    d = detailed_metrics(audit, np.stack([probs, np.roll(probs, 7)], axis=1), points)
    biopsy = d["biopsy"]
    assert biopsy["roc_auc_low"] < biopsy["roc_auc"] < biopsy["roc_auc_high"]
    assert biopsy["study_sensitivity_low"] <= biopsy["study_sensitivity"] <= biopsy["study_sensitivity_high"]
    assert biopsy["by_hospital"]["a"]["roc_auc_low"] < biopsy["by_hospital"]["a"]["roc_auc_high"]
    # the bootstrap's unit is the patient (four images), not the image
    assert (biopsy["roc_auc_low"], biopsy["roc_auc_high"]) == pytest.approx(
        roc_auc_interval(truth, probs, audit["patient_key"].to_numpy())
    )


def test_resampling_groups_prefer_the_patient_then_the_study_then_the_image():
    audit = pd.DataFrame({"sop_instance_uid": ["a", "b", "c"], "study_instance_uid": ["s", "s", "t"]})
    assert list(resampling_groups(audit)) == ["s", "s", "t"]
    audit["patient_key"] = ["p", None, "q"]
    assert list(resampling_groups(audit)) == ["p", "b", "q"]  # an image without a patient key stands alone
    assert resampling_groups(pd.DataFrame({"sop_instance_uid": ["a"]})) is None
