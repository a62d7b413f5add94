"""Queues as pure functions over small DataFrames."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_pipeline.labels import queues


def _images(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(1, n + 1),
            "split": ["audit" if i in (9, 10) else "train" for i in range(1, n + 1)],
            "meta_mag": [True, False, None, True, False, None, True, False, None, True][:n],
        }
    )


def _labels(rows: list[tuple[int, int]], ts: str = "2026-01-01T00:00:00") -> pd.DataFrame:
    return pd.DataFrame({"image_id": [r[0] for r in rows], "label": [r[1] for r in rows], "ts": ts})


def _preds(rows: list[tuple[int, float, float]], oos: bool = True, ts: str = "2026-02-01T00:00:00") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["image_id", "p_biopsy", "p_mag"])
    return df.assign(out_of_sample=oos, updated_at=ts)


NO_PREDS = _preds([])


def test_unlabeled_is_train_only_seeded_and_stable_as_it_shrinks():
    q = queues.unlabeled(_images(), _labels([(2, 1)]), NO_PREDS, seed=0)
    assert sorted(q.ids) == [1, 3, 4, 5, 6, 7, 8] and q.total == 8
    again = queues.unlabeled(_images(), _labels([(2, 1), (q.ids[0], 3)]), NO_PREDS, seed=0)
    assert again.ids == q.ids[1:]  # labeling the head does not reshuffle the rest
    assert (
        queues.unlabeled(_images(), _labels([]), NO_PREDS, seed=0, annotator="bob").ids
        != queues.unlabeled(_images(), _labels([]), NO_PREDS, seed=0, annotator="alice").ids
    )


def test_low_confidence_orders_by_smallest_margin_over_both_flags():
    preds = _preds([(1, 0.9, 0.1), (3, 0.52, 0.99), (4, 0.7, 0.45), (5, 0.01, 0.01)])
    q = queues.low_confidence(_images(), _labels([(5, 3)]), preds)
    assert q.ids[:3] == [3, 4, 1]  # margins .02, .05, .1; image 5 is labeled
    assert sorted(q.ids[3:]) == [2, 6, 7, 8]  # no prediction: after, at random
    assert "margin" in q.note


def test_queues_without_predictions_fall_back_to_random_and_say_so():
    for name in ("low_confidence", "disagreements", "meta_conflicts"):
        q = queues.build(name, _images(), _labels([(1, 1)]), NO_PREDS)
        assert "random" in q.note and "no" in q.note


def test_disagreements_rank_contradicted_labels_by_self_confidence_out_of_sample_only():
    labels = _labels([(1, 1), (2, 2), (3, 3), (4, 4), (9, 1)])  # 9 is audit: never in this queue
    preds = pd.concat(
        [
            _preds([(1, 0.05, 0.1)]),  # says neither, label biopsy: self-confidence .05*.9 = .045
            _preds([(2, 0.1, 0.3)]),  # says neither, label mag: .9*.3 = .27
            _preds([(3, 0.1, 0.1)]),  # agrees
            _preds([(4, 0.9, 0.1)], oos=False),  # contradicts, but in-sample: ignored
            _preds([(9, 0.0, 0.0)]),
        ]
    )
    q = queues.disagreements(_images(), labels, preds)
    assert q.ids == [1, 2] and q.total == 2
    relabeled = labels.assign(ts=["2026-03-01T00:00:00" if i == 1 else "2026-01-01T00:00:00" for i in labels.image_id])
    assert queues.disagreements(_images(), relabeled, preds).ids == [2]  # reviewed after the prediction


def test_meta_conflicts_are_unlabeled_images_where_metadata_and_model_disagree():
    preds = _preds([(1, 0.1, 0.2), (2, 0.1, 0.9), (4, 0.1, 0.4), (5, 0.1, 0.1), (3, 0.1, 0.9)])
    q = queues.meta_conflicts(_images(), _labels([(4, 2)]), preds)
    assert q.ids == [2, 1] and q.total == 3  # model surest first; 4 is labeled; 3 has no metadata flag


def test_audit_queue_is_unlabeled_audit_images():
    q = queues.audit(_images(), _labels([(9, 1)]), NO_PREDS)
    assert q.ids == [10] and q.total == 2


def test_unknown_queue_name_is_refused():
    with pytest.raises(KeyError, match="unknown queue"):
        queues.build("nope", _images(), _labels([]), NO_PREDS)
