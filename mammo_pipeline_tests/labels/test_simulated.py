"""The simulated radiologist answers from the ground truth through the label store's own API."""

import pandas as pd
import pytest

from mammo_pipeline.labels.codes import LABELS
from mammo_pipeline.labels.simulated import SimulatedAnnotator, load_truth
from mammo_pipeline.labels.store import LabelStore
from mammo_pipeline_tests.labels.conftest import write_images


def _store_with_truth(settings, n: int, audit_fraction: float) -> tuple[LabelStore, pd.DataFrame]:
    """A store of `n` images and their truth, the four labels in turn."""
    manifest = write_images(settings.cache, n)
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, seed=0, audit_fraction=audit_fraction)
    names = list(LABELS.values())
    truth = pd.DataFrame({"sop_instance_uid": manifest["sop_instance_uid"], "label": [names[i % 4] for i in range(n)]})
    return store, truth


@pytest.fixture
def big_store(settings):
    return _store_with_truth(settings, 40, audit_fraction=0.0)


def test_careful_reader_is_always_right(big_store):
    store, truth = big_store
    reader = SimulatedAnnotator(store, truth, error_rate=0.5)
    ids = store.images()["id"].tolist()
    assert reader.label(ids, round=1, careful=True) == len(ids)
    assert reader.wrong_labels() == 0
    current = store.current_labels().merge(truth, on="sop_instance_uid", suffixes=("", "_true"))
    assert (current["label"] == current["label_true"]).all()
    assert set(store.events()["source"]) == {"human"}


def test_busy_reader_slips_deterministically_and_a_review_fixes_it(big_store):
    store, truth = big_store
    ids = store.images()["id"].tolist()
    reader = SimulatedAnnotator(store, truth, error_rate=0.3)
    reader.label(ids, round=1)
    wrong = reader.wrong_labels()
    assert 0 < wrong < len(ids) and wrong == reader.slips
    again = SimulatedAnnotator(store, truth, error_rate=0.3)
    assert [again._read(sop, careful=False) for sop in truth["sop_instance_uid"]] == [
        reader._read(sop, careful=False) for sop in truth["sop_instance_uid"]
    ]
    reader.label(ids, round=2, careful=True)
    assert reader.wrong_labels() == 0


def test_load_truth_needs_synth_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="_truth"):
        load_truth(tmp_path)


def test_two_readers_and_an_adjudicator_make_the_audit_truth(settings):
    from mammo_pipeline.labels.simulated import double_read_audit

    store, truth = _store_with_truth(settings, 60, audit_fraction=1.0)  # every image in the audit set
    busy = SimulatedAnnotator(store, truth, name="reader-a", error_rate=0.3)
    careful = SimulatedAnnotator(store, truth, name="reader-b", error_rate=0.1)
    judge = SimulatedAnnotator(store, truth, name="adjudicator")
    done = double_read_audit(store, (busy, careful), judge)
    assert done["reader-a"] == done["reader-b"] == 60
    stats = store.audit_stats()
    assert stats["n_double"] == 60 and stats["n_disputed"] == 0
    assert done["adjudicated"] == stats["n_adjudicated"] > 0  # the readers slipped on different images
    # the audit truth is wrong only where both readers slipped to the same wrong label
    current = store.current_labels().merge(truth, on="sop_instance_uid", suffixes=("", "_true"))
    first = (current["first_read"] == current["label_true"]).mean()
    adjudicated = (current["label"] == current["label_true"]).mean()
    assert adjudicated > first and adjudicated >= 0.95
    assert set(current["label_source"]) <= {"agreed", "adjudicated"}
    per = stats["per_reader"]
    assert per["reader-b"]["agree_truth"] > per["reader-a"]["agree_truth"]
    assert -1 <= stats["kappa"] < 1


def test_the_adjudicator_rechecks_the_agreed_audit_labels_the_model_contradicts_and_fixes_alike_slips(settings):
    """Two readers who slip alike agree, so the double read keeps their wrong label; a model that contradicts it
    sends it to the audit_recheck queue, and the adjudicator's careful re-read there makes the audit truth right."""
    from mammo_pipeline.labels.simulated import double_read_audit, recheck_audit

    store, truth = _store_with_truth(settings, 60, audit_fraction=1.0)
    readers = tuple(SimulatedAnnotator(store, truth, name=f"reader-{k}", error_rate=0.6) for k in "ab")
    judge = SimulatedAnnotator(store, truth, name="adjudicator")
    double_read_audit(store, readers, judge)
    wrong = judge.wrong_labels()
    assert wrong > 0  # at these slip rates some images got the same wrong label twice
    flags = {"biopsy": (1, 0), "mag": (0, 1), "neither": (0, 0), "both": (1, 1)}
    true_flags = truth["label"].map(flags)
    store.set_predictions(  # a model that is right everywhere
        truth[["sop_instance_uid"]].assign(
            p_biopsy=[0.9 if b else 0.1 for b, _ in true_flags], p_mag=[0.9 if m else 0.1 for _, m in true_flags],
            model_version="v1", out_of_sample=True,
        )
    )  # fmt: skip
    assert store.queue_counts()["audit_recheck"][0] == wrong
    assert recheck_audit(store, judge, limit=100, round=1) == wrong
    assert judge.wrong_labels() == 0 and store.queue_counts()["audit_recheck"][0] == 0
