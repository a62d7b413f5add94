from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammo_pipeline.model.evaluate import evaluate, expected_calibration_error, miss_reason, three_class_correct


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
