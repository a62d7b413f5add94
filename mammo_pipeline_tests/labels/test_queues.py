"""Queues read from maintained, indexed SQLite columns: their order, their fallbacks, and totals that always equal
a full recount."""

from __future__ import annotations

import contextlib
import random

import pandas as pd
import pytest

from mammo_pipeline.labels import queues
from mammo_pipeline.labels.store import LabelStore, NothingToUndo, _recount


def _manifest(n: int = 10, audit: tuple[int, ...] = (8, 9)) -> pd.DataFrame:
    """n images; the ones at positions `audit` get their own audit patients (audit_fraction 1 for them)."""
    return pd.DataFrame(
        {
            "sop_instance_uid": [f"1.2.{i}" for i in range(n)],
            "hospital": "h1",
            "patient_key": [f"p{i}" for i in range(n)],
            "display_png": "d.png",
            "model_png": "m.png",
            "meta_mag": [[True, False, None][i % 3] for i in range(n)],
        }
    )


@pytest.fixture
def qstore(tmp_path) -> tuple[LabelStore, list[int]]:
    """10 images: 8 training, 2 audit (split set directly, as a frozen sample would)."""
    s = LabelStore(tmp_path / "labels.sqlite")
    s.sync_images(_manifest(), audit_fraction=0.0)
    with s._write() as db:
        db.execute("UPDATE images SET split = 'audit' WHERE sop_instance_uid IN ('1.2.8', '1.2.9')")
        _recount(db)
    return s, s.images()["id"].tolist()


def _preds(ids_to_sop: dict[int, str], rows: list[tuple[int, float, float]], **extra) -> pd.DataFrame:
    return pd.DataFrame(
        {"sop_instance_uid": [ids_to_sop[r[0]] for r in rows], "p_biopsy": [r[1] for r in rows]}
    ).assign(p_mag=[r[2] for r in rows], **extra)


def test_unlabeled_is_train_only_seeded_and_stable_as_it_shrinks(qstore):
    store, ids = qstore
    q = store.queue("unlabeled", "alice")
    assert sorted(q) == ids[:8]  # no audit image
    store.record(q[3], 1, "bob")
    assert store.queue("unlabeled", "alice") == q[:3] + q[4:]  # each image keeps its rank
    assert store.queue("unlabeled", "bob") == store.queue("unlabeled", "alice")  # leases, not orders, separate people
    # the rank depends only on the seed and the SOP Instance UID
    assert queues.rank(0, "1.2.3") == queues.rank(0, "1.2.3") != queues.rank(1, "1.2.3")
    ranks = store.images().set_index("id")["rnd"]
    assert q[:3] + q[4:] == sorted(q[:3] + q[4:], key=lambda i: ranks[i])


def test_low_confidence_orders_by_smallest_margin_over_both_flags(qstore):
    store, ids = qstore
    assert store.queue_info("low_confidence").note == "no predictions: random order"
    sops = store.sop_uids(ids)
    store.set_predictions(_preds(sops, [(ids[0], 0.9, 0.1), (ids[1], 0.55, 0.9), (ids[2], 0.6, 0.42)]))
    q = store.queue_info("low_confidence", limit=10)
    assert q.ids[:3] == [ids[1], ids[2], ids[0]] and q.note == "smallest margin |p - 0.5| first"
    assert sorted(q.ids[3:]) == ids[3:8]  # images without a prediction come after, all of them
    store.record(ids[2], 3, "alice")
    assert store.queue("low_confidence", limit=1) == [ids[1]]


def test_disagreements_rank_contradicted_labels_by_self_confidence_out_of_sample_only(qstore):
    store, ids = qstore
    sops = store.sop_uids(ids)
    for i, code in zip(ids[:4], (1, 2, 3, 4), strict=True):  # biopsy, mag, neither, both
        store.record(i, code, "alice")
    note = store.queue_info("disagreements").note
    assert note.startswith("no out-of-sample predictions") and sorted(store.queue("disagreements")) == ids[:4]
    rows = [(ids[0], 0.2, 0.1), (ids[1], 0.1, 0.9), (ids[2], 0.6, 0.3), (ids[3], 0.9, 0.45)]
    store.set_predictions(_preds(sops, rows, out_of_sample=True))
    # ids[1] agrees; self-confidence: ids[0] 0.2*0.9=.18, ids[2] 0.4*0.7=.28, ids[3] 0.9*0.45=.405
    q = store.queue_info("disagreements")
    assert q.ids == [ids[0], ids[2], ids[3]] and (q.remaining, q.total) == (3, 3)
    store.record(ids[0], 2, "bob")  # reviewed after the prediction: leaves the queue, still contradicted
    q = store.queue_info("disagreements")
    assert q.ids == [ids[2], ids[3]] and (q.remaining, q.total) == (2, 3)
    store.set_predictions(_preds(sops, rows, out_of_sample=False))  # in-sample only: the spot-check fallback
    assert store.queue_info("disagreements").note.startswith("no out-of-sample")


def test_meta_conflicts_are_unlabeled_training_images_where_metadata_and_model_disagree(qstore):
    store, ids = qstore
    sops = store.sop_uids(ids)
    # meta_mag cycles True, False, None: ids[0] True, ids[1] False, ids[3] True, ids[4] False
    rows = [(ids[0], 0.5, 0.2), (ids[1], 0.5, 0.95), (ids[3], 0.5, 0.4), (ids[4], 0.5, 0.1)]
    store.set_predictions(_preds(sops, rows))
    assert store.queue("meta_conflicts") == [ids[1], ids[0], ids[3]]  # the model most sure first
    store.record(ids[1], 2, "alice")
    assert store.queue_counts()["meta_conflicts"] == (2, 3)


def test_needs_review_follows_the_latest_prediction_and_tolerates_its_absence(qstore):
    store, ids = qstore
    sops = store.sop_uids(ids)
    store.set_predictions(_preds(sops, [(ids[0], 0.5, 0.5), (ids[1], 0.5, 0.5)]))  # no needs_review column
    assert store.queue("needs_review") == [] and store.queue_counts()["needs_review"] == (0, 0)
    store.set_predictions(_preds(sops, [(ids[0], 0.5, 0.5), (ids[1], 0.5, 0.5)], needs_review=[True, False]))
    assert store.queue("needs_review") == [ids[0]]
    store.record(ids[0], 1, "alice")  # looked at after the flag
    assert store.queue("needs_review") == [] and store.queue_counts()["needs_review"] == (0, 1)


def test_audit_reads_are_blind_doubles_and_disagreements_go_to_a_third_reader(qstore):
    store, ids = qstore
    a1, a2 = ids[8], ids[9]
    assert sorted(store.queue("audit", "alice")) == [a1, a2]
    store.record(a1, 1, "alice")
    assert store.queue("audit", "alice") == [a2]  # never twice by one reader
    assert store.queue("audit", "bob") == [a1, a2]  # a read waiting for its pair comes first
    store.record(a1, 2, "bob")  # disagrees with alice
    assert store.queue("adjudication", "alice") == [] and store.queue("adjudication", "bob") == []
    assert store.queue("adjudication", "carol") == [a1]
    assert store.queue_counts()["adjudication"] == (1, 1)
    store.record(a1, 2, "carol")
    assert store.queue("adjudication", "carol") == [] and store.queue_counts()["adjudication"] == (0, 1)
    reads = store.audit_reads().set_index("image_id")
    assert reads.loc[a1, ["read1", "read2", "adjudicated", "truth"]].tolist() == ["biopsy", "mag", "mag", "mag"]
    store.record(a2, 3, "bob")
    store.record(a2, 3, "alice")  # agreement: no adjudication needed
    assert store.queue("adjudication", "carol") == []
    assert store.audit_reads().set_index("image_id").loc[a2, "truth"] == "neither"
    store.undo("carol")  # the adjudication undone: disputed again
    assert store.queue("adjudication", "dave") == [a1]


@pytest.mark.parametrize("head", [2, 256])
def test_the_audit_queue_is_the_same_whether_read_in_order_or_by_reader(tmp_path, monkeypatch, head):
    """Images with one read by someone else in random-rank order, then unread ones; never the annotator's own.
    With a head of 2 the annotator's own lone reads fill it and the queue is read by reader ranges instead:
    the answer must not change (a key press costs the same however far one reader is ahead)."""
    from mammo_pipeline.labels import store as store_module

    monkeypatch.setattr(store_module, "AUDIT_HEAD", head)
    store = LabelStore(tmp_path / "labels.sqlite")
    store.sync_images(_manifest(40), audit_fraction=1.0)
    ids = store.images()["id"].tolist()
    rng = random.Random(0)
    for iid in ids[:20]:
        store.record(iid, rng.choice([1, 2, 3]), rng.choice(["alice", "alice", "alice", "bob", "carol"]))
    images = store.images().set_index("id")
    for who in ("alice", "bob", "dave"):
        one = images[(images["audit_state"] == 1) & (images["reader1"] != who)].sort_values("rnd").index.tolist()
        none = images[images["audit_state"] == 0].sort_values("rnd").index.tolist()
        assert store.queue("audit", who, limit=50) == (one + none)[:50], who
        assert store.queue("audit", who, limit=3) == (one + none)[:3], who


def test_unknown_queue_name_is_refused(qstore):
    store, _ = qstore
    with pytest.raises(KeyError, match="unknown queue"):
        store.queue("nope")


def test_maintained_totals_always_equal_a_full_recount(qstore):
    """Random labels, relabels, undos, audit reads, predictions, withdrawals and returns: the incremental totals
    never drift."""
    from mammo_pipeline.labels.store import Withdrawn

    store, ids = qstore
    sops = store.sop_uids(ids)
    rng = random.Random(7)
    people = ["alice", "bob", "carol"]
    for step in range(160):
        move = rng.random()
        if move < 0.05:  # image_cache deleted some files (`LabelStore.withdraw`)
            store.withdraw(rng.sample(list(sops.values()), 2))
        elif move < 0.1:  # the sync: some files deleted from their drop, the others (back) in it
            store.sync_images(_manifest().sample(n=rng.randint(5, 10), random_state=step))
        elif move < 0.6:
            with contextlib.suppress(Withdrawn):
                store.record(rng.choice(ids), rng.randint(1, 4), rng.choice(people))
        elif move < 0.85:
            with contextlib.suppress(NothingToUndo, Withdrawn):
                store.undo(rng.choice(people))
        else:
            rows = [(i, rng.random(), rng.random()) for i in rng.sample(ids, 5)]
            oos = [rng.random() < 0.5 for _ in rows]
            store.set_predictions(
                _preds(sops, rows, out_of_sample=oos, needs_review=[rng.random() < 0.3 for _ in rows])
            )
        maintained = store.totals()
        with store._db() as db:
            _recount(db)
        assert store.totals() == maintained, f"step {step}"


def _heads(store: LabelStore) -> dict[tuple[str, str], list[int]]:
    """The head of every queue for a reader of none, one and both audit reads (queue, annotator) -> ids."""
    return {(q, who): store.queue(q, who, limit=50) for q in queues.QUEUES for who in ("alice", "bob", "dave")}


def test_a_withdrawn_image_leaves_every_queue_and_count_and_comes_back_with_its_labels(qstore):
    """A file deleted from its drop (a patient's opt-out) left the cache manifest but not the store: its image stayed
    in the queues, and its label still trained and measured the next model. The sync now withdraws it from every
    queue, count, label snapshot and audit figure, keeping what people did, and restores all of it when the same
    SOP Instance UID is sent again."""
    store, ids = qstore
    sops = store.sop_uids(ids)
    store.record(ids[0], 2, "alice")  # a training label the model will contradict
    store.record(ids[8], 1, "alice")
    store.record(ids[8], 2, "bob")  # two blind reads that disagree: adjudication
    store.record(ids[9], 3, "alice")  # one blind read
    with store._write() as db:  # a third audit image, read alike twice where the model says otherwise: recheck
        db.execute("UPDATE images SET split = 'audit' WHERE id = ?", (ids[7],))
        _recount(db)
    store.record(ids[7], 3, "alice")
    store.record(ids[7], 3, "bob")
    store.set_predictions(_preds(sops, [(i, 0.9, 0.1) for i in ids], out_of_sample=True, needs_review=True))
    before = store.totals(), _heads(store), store.current_labels(), store.audit_reads(), store.version()
    assert all(before[1][(q, "dave")] for q in queues.QUEUES)  # every queue holds an image to withdraw

    # labeled, a metadata conflict, an agreed audit label to recheck, disputed audit, one audit read
    gone = [ids[i] for i in (0, 3, 7, 8, 9)]
    synced = store.sync_images(_manifest().drop(index=[0, 3, 7, 8, 9]))
    assert all(not set(head) & set(gone) for head in _heads(store).values())
    assert (synced.new, synced.withdrawn, synced.restored) == (0, 5, 0) and store.withdrawn_among(ids) == gone
    assert store.queue("adjudication", "dave") == store.queue("audit", "dave") == store.queue("audit_recheck") == []
    totals = store.totals()
    with store._db() as db:
        _recount(db)
    assert store.totals() == totals and totals["audit"] == totals["adj_pool"] == totals["dis_pool"] == 0
    assert totals["rc_pool"] == totals["rc_todo"] == 0
    assert totals["train"] == totals["predicted"] == 5 and totals["mc_pool"] == 1  # 0, 3, 6 had one
    assert store.current_labels().empty and store.audit_reads().empty and store.audit_stats()["n_read"] == 0
    assert store.disagreements_between_annotators() == []
    assert (store.n_images(), store.n_withdrawn()) == (5, 5) and store.version() != before[4]
    from mammo_pipeline.labels.store import Withdrawn

    with pytest.raises(Withdrawn):
        store.record(ids[0], 1, "bob")
    assert store.sync_images(_manifest().drop(index=[0, 3, 7, 8, 9])).withdrawn == 0  # counted once
    synced_version = store.version()

    synced = store.sync_images(_manifest())  # the files are sent again
    assert (synced.new, synced.withdrawn, synced.restored) == (0, 0, 5)
    assert store.totals() == before[0] and _heads(store) == before[1]
    pd.testing.assert_frame_equal(store.current_labels(), before[2])  # labels, split, reads as they were
    pd.testing.assert_frame_equal(store.audit_reads(), before[3])
    assert store.version() != synced_version


def test_withdraw_takes_images_out_at_once_and_the_sync_brings_them_back(qstore):
    """What image_cache calls when it deletes a withdrawn image's files: the same as the next sync would do."""
    store, ids = qstore
    sops = store.sop_uids(ids)
    store.record(ids[0], 1, "alice")
    store.record(ids[8], 2, "bob")
    before, version = store.totals(), store.version()
    assert store.withdraw([sops[ids[0]], sops[ids[8]], "not-in-the-store"]) == 2
    assert store.withdraw([sops[ids[0]]]) == 0  # already withdrawn
    totals = store.totals()
    with store._db() as db:
        _recount(db)
    assert store.totals() == totals and (totals["train_labeled"], totals["audit"]) == (0, 1)
    assert ids[8] not in store.queue("audit", "dave") and store.current_labels().empty and store.version() != version
    assert store.sync_images(_manifest()).restored == 2 and store.totals() == before
