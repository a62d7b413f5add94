"""The label store: sync, record/undo, refusals that write nothing, snapshots, export, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading

import pandas as pd
import pytest

from mammo_pipeline.labels.store import BadLabel, LabelStore, NothingToUndo, StaleSubmit, UnknownImage

from .conftest import event_count, write_images


def test_sync_is_idempotent_and_splits_are_frozen(settings, manifest):
    store = LabelStore(settings.labels_db)
    assert store.sync_images(manifest, seed=0, audit_fraction=0.5).new == 8
    first = store.images().set_index("sop_instance_uid")["split"]
    assert set(first) == {"train", "audit"}
    # Re-sync with another fraction: nothing new, nobody moves.
    assert store.sync_images(manifest, seed=0, audit_fraction=1.0).new == 0
    assert store.images().set_index("sop_instance_uid")["split"].equals(first)
    # A new image of a known patient joins that patient's side even though the fraction changed.
    extra = pd.concat([manifest, manifest.iloc[[0]].assign(sop_instance_uid="new-sop")])
    assert store.sync_images(extra, seed=0, audit_fraction=1.0 if first.iloc[0] == "train" else 0.0).new == 1
    assert store.images().set_index("sop_instance_uid").loc["new-sop", "split"] == first.iloc[0]


def test_sop_uids_maps_known_ids(store, manifest):
    ids = store.images()["id"].tolist()
    assert store.sop_uids([ids[0], 999]) == {ids[0]: manifest["sop_instance_uid"][0]}


def test_sync_refreshes_paths_and_refuses_a_manifest_without_paths(store, manifest):
    store.sync_images(manifest.assign(display_png="h1/elsewhere.png"))
    assert (store.images()["display_png"] == "h1/elsewhere.png").all()
    with pytest.raises(ValueError, match="display_png"):
        store.sync_images(manifest.drop(columns=["display_png"]))


def test_record_updates_current_labels_and_undo_restores_the_previous_one(store):
    a, b = store.queue("unlabeled", limit=2)
    e1 = store.record(a, 1, "alice")
    e2 = store.record(a, "both", "alice")
    store.record(b, "3", "alice")
    cur = store.current_labels().set_index("image_id")
    assert cur.loc[a, "label"] == "both" and cur.loc[a, "event_id"] == e2
    assert bool(cur.loc[a, "has_biopsy_marker"]) and bool(cur.loc[a, "is_mag_view"])
    assert store.undo("alice") == b  # latest event first
    assert b not in set(store.current_labels()["image_id"])
    assert store.undo("alice") == a
    cur = store.current_labels().set_index("image_id")
    assert cur.loc[a, "label"] == "biopsy" and cur.loc[a, "event_id"] == e1
    assert store.events()["undone"].tolist() == [False, True, True]
    assert [r["image_id"] for r in store.recent("alice")] == [a]


def test_refused_writes_write_nothing(store):
    image = store.queue("unlabeled", limit=1)[0]
    ev = store.record(image, 2, "alice")
    for bad in (0, 5, "1.5", "", "nope", True):
        with pytest.raises(BadLabel):
            store.record(image, bad, "alice")
    with pytest.raises(UnknownImage):
        store.record(9999, 1, "alice")
    with pytest.raises(StaleSubmit) as stale:
        store.record(image, 3, "bob", seen_event=0)  # bob saw it unlabeled; alice labeled it since
    assert stale.value.current_event == ev
    with pytest.raises(NothingToUndo):
        store.undo("bob")
    assert event_count(store) == 1
    assert store.record(image, 3, "bob", seen_event=ev) > ev


def test_disagreements_between_annotators(store):
    a, b = store.queue("unlabeled", limit=2)
    store.record(a, 1, "alice")
    store.record(a, 2, "bob")
    store.record(b, 3, "alice")
    store.record(b, 3, "bob")
    rows = store.disagreements_between_annotators()
    assert [(r["image_id"], r["labels"]) for r in rows] == [(a, {"alice": "biopsy", "bob": "mag"})]


def test_snapshot_id_is_a_content_hash(store):
    image = store.queue("unlabeled", limit=1)[0]
    store.record(image, 1, "alice")
    df, sid = store.snapshot()
    assert store.snapshot()[1] == sid and (df["snapshot_id"] == sid).all()
    store.record(image, 2, "alice")
    assert store.snapshot()[1] != sid
    store.undo("alice")
    assert store.snapshot()[1] == sid  # same labels again, same id


def test_predictions_feed_the_queues_and_counts(store, manifest):
    n = store.set_predictions(
        manifest[["sop_instance_uid"]].assign(
            p_biopsy=[0.1, 0.45, 0.9, 0.2, 0.6, 0.5, 0.3, 0.8], p_mag=0.0, model_version="v1", out_of_sample=True
        )
    )
    assert n == 8
    ids = store.images().set_index("sop_instance_uid")["id"]
    assert store.queue("low_confidence", limit=2) == [
        ids[manifest.sop_instance_uid[5]],
        ids[manifest.sop_instance_uid[1]],
    ]
    counts = store.queue_counts()
    assert counts["unlabeled"] == (8, 8) and set(counts) == {
        "unlabeled",
        "low_confidence",
        "disagreements",
        "meta_conflicts",
        "needs_review",
        "audit",
        "adjudication",
        "audit_recheck",
    }


def test_export_csv_and_jsonl_carry_provenance(store, tmp_path):
    image = store.queue("unlabeled", limit=1)[0]
    store.record(image, 4, "alice", source="import", round=2)
    store.undo("alice")
    assert store.export(tmp_path / "e.csv") == 1
    csv = pd.read_csv(tmp_path / "e.csv")
    assert csv.loc[0, ["label", "annotator", "source", "round", "undone"]].tolist() == [
        "both",
        "alice",
        "import",
        2,
        True,
    ]
    assert store.export(tmp_path / "e.jsonl", fmt="jsonl") == 1
    rec = json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])
    assert rec["sop_instance_uid"] and rec["hospital"] == "h1" and rec["undone"] is True
    with pytest.raises(ValueError, match="csv"):
        store.export(tmp_path / "e.xml", fmt="xml")


def _label_many(db_path: str, annotator: str, ids: list[int]) -> None:
    store = LabelStore(db_path)
    for i, image in enumerate(ids):
        store.record(image, 1 + i % 4, annotator)


def test_concurrent_threads_lose_nothing(settings, tmp_path):
    store = LabelStore(settings.labels_db)
    store.sync_images(write_images(tmp_path / "c", 100), audit_fraction=0.0)
    ids = store.images()["id"].tolist()
    threads = [threading.Thread(target=_label_many, args=(str(settings.labels_db), f"a{k}", ids)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert event_count(store) == 400
    assert store.version().startswith("400-0-")


def test_concurrent_processes_lose_nothing(settings, tmp_path):
    store = LabelStore(settings.labels_db)
    store.sync_images(write_images(tmp_path / "c", 100), audit_fraction=0.0)
    ids = store.images()["id"].tolist()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_label_many, args=(str(settings.labels_db), f"p{k}", ids)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert event_count(store) == 200 and store.last_event_id() == 200


def test_bad_predictions_are_refused_and_write_nothing(store, manifest):
    sops = manifest[["sop_instance_uid"]]
    with pytest.raises(ValueError, match="p_mag"):
        store.set_predictions(sops.assign(p_biopsy=0.5))
    with pytest.raises(ValueError, match="probabilities"):
        store.set_predictions(sops.assign(p_biopsy=1.5, p_mag=0.1))
    assert store.queue_info("low_confidence").note.startswith("no predictions")
    # Unknown images are skipped; version and out_of_sample are optional.
    assert (
        store.set_predictions(
            pd.DataFrame({"sop_instance_uid": ["nope", sops.iloc[0, 0]], "p_biopsy": [0.5, 0.5], "p_mag": [0.5, 0.5]})
        )
        == 1
    )


def test_queues_see_image_and_prediction_changes_made_by_another_process(store, manifest, settings):
    other = LabelStore(settings.labels_db)  # e.g. the `labels` asset while the app keeps `store` open
    preds = manifest[["sop_instance_uid"]].assign(p_biopsy=0.1, p_mag=0.9, out_of_sample=True)
    other.set_predictions(preds)
    before = store.queue("meta_conflicts")
    other.sync_images(manifest.assign(meta_mag=False))
    after = store.queue("meta_conflicts")
    assert len(after) == 8 and len(before) < 8
    other.set_predictions(preds.assign(p_mag=0.1))
    assert store.queue("meta_conflicts") == []


def test_a_hospital_the_cache_no_longer_has_keeps_its_images_and_an_empty_manifest_withdraws_them(settings):
    """The warehouse sync speaks for every hospital with a manifest. A partition gone (deleted, moved) withdraws
    nothing, as a drop folder gone from landing deletes nothing in dicom_index; an empty manifest, written when
    every file of the hospital was deleted from its drops, withdraws them all (read_image_cache leaves it out,
    so before it withdrew nothing). The labeling app's full-resolution crops of a withdrawn image go with it."""
    from mammo_pipeline import warehouse
    from mammo_pipeline.labels.store import sync_from_warehouse
    from mammo_pipeline.labels.zoom import ZOOM_FOLDER

    for hospital, n in (("h1", 3), ("h2", 2)):
        manifest = write_images(settings.cache, n, hospital=hospital)
        warehouse.write_partition(settings, "image_cache", hospital, manifest, name="manifest.parquet")
    store, _ = sync_from_warehouse(settings)
    assert store.n_images() == 5
    h1 = store.images().query("hospital == 'h1'")["id"].tolist()
    store.record(h1[0], 1, "alice")
    crop = settings.cache / ZOOM_FOLDER / str(h1[0]) / "0_0_64_64.png"
    crop.parent.mkdir(parents=True)
    crop.write_bytes(b"png")

    shutil.rmtree(settings.table_dir("image_cache", "h2"))  # no partition: not a deletion
    synced = sync_from_warehouse(settings)[1]
    assert store.n_images() == 5 and synced.withdrawn == 0

    empty = write_images(settings.cache, 3, hospital="h1").iloc[:0]
    warehouse.write_partition(settings, "image_cache", "h1", empty, name="manifest.parquet")
    synced = sync_from_warehouse(settings)[1]
    assert store.current_labels().empty and store.n_images() == 2 and not crop.parent.exists()
    assert (synced.withdrawn, store.n_withdrawn()) == (3, 3) and store.withdrawn_among(store.images()["id"]) == sorted(
        h1
    )


def test_a_store_made_before_withdrawals_opens_upgraded_with_its_labels_and_queues(settings, manifest):
    """A label store of queues.VERSION 3 (no withdrawn_at, queue indexes without it) gets the column, its indexes
    made again and its totals recounted when opened; its labels and queues are as they were."""
    from mammo_pipeline.labels import queues

    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=0.0)
    first, second = store.queue("unlabeled", limit=2)
    store.record(first, 1, "alice")
    totals, labels = store.totals(), store.current_labels()
    with store._write() as db:  # what queues.VERSION 3 left
        for name in queues.INDEXES:
            db.execute(f"DROP INDEX {name}")
        db.execute("ALTER TABLE images DROP COLUMN withdrawn_at")
        for name, spec in queues.INDEXES.items():
            db.execute(f"CREATE INDEX {name} ON {spec.removesuffix(' AND ' + queues.LIVE)}")
        db.execute("UPDATE meta SET value = 3 WHERE key = 'queues_version'")
        db.execute("UPDATE queue_totals SET n = 0")

    reopened = LabelStore(settings.labels_db)
    assert reopened.totals() == totals and reopened.queue("unlabeled", limit=1) == [second]
    pd.testing.assert_frame_equal(reopened.current_labels(), labels)
    with reopened._db() as db:
        made = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE name LIKE 'q_%'").fetchall())
        unlabeled = queues.PLANS["unlabeled"]
        plan = db.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM images WHERE {unlabeled.where} ORDER BY {unlabeled.order}"
        )
        assert "USING INDEX q_unlabeled" in plan.fetchall()[0][3]  # the queue still reads its index
    assert all(made[name].endswith(queues.LIVE) for name in queues.INDEXES)
    assert reopened.sync_images(manifest[manifest["sop_instance_uid"] != store.sop_uids([first])[first]]).withdrawn == 1
    assert reopened.current_labels().empty
