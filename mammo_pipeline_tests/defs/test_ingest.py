"""The ingest assets materialize through Dagster and report their counts, paths and previews."""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pydicom

from mammo_pipeline.cache import read_manifest
from mammo_pipeline.defs.ingest import dicom_index, image_cache, metadata_completeness
from mammo_pipeline.defs.labels import label_store, labels
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.labels.store import LabelStore
from mammo_pipeline_tests.dicom.test_headers import PATIENT, code_item, write_mg


def _materialize(settings, assets, instance, partition_key=None):
    return dg.materialize(
        assets,
        partition_key=partition_key,
        resources={"mammo": MammoSettings(home=str(settings.home), workers=1)},
        instance=instance,
    )


def _metadata(result, asset):
    (event,) = result.asset_materializations_for_node(asset.op.name)
    return {key: value.value for key, value in event.metadata.items()}


def test_ingest_assets_materialize_per_hospital_then_completeness(settings):
    root = settings.landing / "h1" / "d1"
    first = write_mg(root / "a.dcm", modifiers=[code_item("R-102D6", "SNM3", "Magnification")])
    write_mg(root / "b.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1")  # For Processing: indexed, not cached
    (root / "junk.dcm").write_bytes(b"\x00" * 300)
    shutil.copy(first, root / "copy.dcm")
    write_mg(settings.landing / "h2" / "d1" / "c.dcm")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1", "h2"])

    result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    assert result.success
    index = _metadata(result, dicom_index)
    assert (index["dagster/row_count"], index["new"], index["quarantined"]) == (2, 2, 2)
    assert (index["quarantined_not_dicom"], index["quarantined_duplicate"]) == (1, 1)
    assert "HOLOGIC" in index["preview"] and index["path"].endswith("hospital=h1")
    assert "a.dcm" not in str(index) and "PAT-0042" not in str(index)  # no raw path or identifier in the metadata
    assert (index["image_kind_2d"], index["image_kind_for_processing"]) == (1, 1)
    cache = _metadata(result, image_cache)
    assert (cache["dagster/row_count"], cache["new"], cache["for_processing_skipped"]) == (1, 1, 1)
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("h1: 1 rendered, 0 unchanged, 1 For Processing skipped" in line for line in logs)  # said, not hidden
    assert cache["manifest_path"].endswith("hospital=h1/manifest.parquet")
    assert "model_png" in cache["preview"]

    again = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    assert (_metadata(again, dicom_index)["new"], _metadata(again, image_cache)["new"]) == (0, 0)
    assert _metadata(again, image_cache)["unchanged"] == 1

    assert _materialize(settings, [dicom_index], instance, partition_key="h2").success
    report = _materialize(settings, [metadata_completeness], instance)
    meta = _metadata(report, metadata_completeness)
    assert meta["heatmap"].startswith("![metadata completeness](data:image/png;base64,")
    assert meta["heatmap_path"].endswith("metadata_completeness.png")
    assert meta["dagster/row_count"] > 0 and meta["dagster/row_count"] % 2 == 0  # fields x 2 hospitals


def test_a_drop_refused_after_it_was_indexed_is_forgotten_by_the_chain(settings):
    """A patient-named drop indexed and cached before its name could be caught (its first file was someone
    else's), refused once its own files arrive: dicom_index removes what it wrote under the drop's name and says
    how many drops (not which), and image_cache drops the drop's manifest rows in the same run."""
    write_mg(settings.landing / "h1" / "d1" / "a.dcm")
    study = settings.landing / "h1" / PATIENT["PatientID"] / "s1"
    write_mg(study / "b.dcm", SOPInstanceUID="1.2.3.4.77", PatientID="someone-else", PatientName="Else^Some")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1"])
    first = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    assert _metadata(first, image_cache)["dagster/row_count"] == 2

    write_mg(study / "a.dcm", SOPInstanceUID="1.2.3.4.78")  # the patient's own file, sorting first
    result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    index, cache = _metadata(result, dicom_index), _metadata(result, image_cache)
    assert index["refused_drops_removed"] == 1 and PATIENT["PatientID"] not in str(index)
    assert cache["dagster/row_count"] == 1
    assert set(read_manifest(settings, "h1")["drop"]) == {"d1"}


def test_ingest_asset_graph():
    assert dicom_index.partitions_def is not None and image_cache.partitions_def is not None
    assert metadata_completeness.partitions_def is None
    assert dicom_index.key in image_cache.dependency_keys
    assert dicom_index.key in metadata_completeness.dependency_keys
    assert {dicom_index.group_names_by_key[dicom_index.key], image_cache.group_names_by_key[image_cache.key]} == {
        "ingest"
    }
    assert image_cache.code_versions_by_key[image_cache.key]


def test_data_versions_follow_the_rows_so_downstream_shows_stale_only_after_a_change(settings):
    """dicom_index and image_cache returned no data version, so theirs followed the code version alone: new images
    never marked image_cache or image_predictions stale in the UI (stop 62's probe). Their version is now their
    rows' content: the same after a run that changes nothing, another after a new file."""
    root = settings.landing / "h1" / "d1"
    write_mg(root / "a.dcm")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1"])

    def versions() -> tuple[str, ...]:
        result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
        return tuple(
            result.asset_materializations_for_node(asset.op.name)[0].tags["dagster/data_version"]
            for asset in (dicom_index, image_cache)
        )

    first = versions()
    assert versions() == first  # nothing changed: downstream stays fresh
    write_mg(root / "b.dcm")
    second = versions()
    assert second[0] != first[0] and second[1] != first[1]


def _labeled_drop(settings, drop) -> tuple[dg.DagsterInstance, list, LabelStore, int, str]:
    """a.dcm and b.dcm in `drop` (a drop folder of h1) indexed, cached and in the label store, b labeled by alice:
    (the instance, the assets a label sync materializes, the store, b's image id, b's SOP Instance UID)."""
    for name in ("a", "b"):
        write_mg(drop / f"{name}.dcm")
    sop = str(pydicom.dcmread(drop / "b.dcm", stop_before_pixels=True).SOPInstanceUID)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1"])
    specs = [dg.AssetSpec("image_cache", partitions_def=hospital_partitions), label_store, labels]
    _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    _materialize(settings, specs, instance)
    store = LabelStore(settings.labels_db)
    image = int(store.images().set_index("sop_instance_uid").loc[sop, "id"])
    store.record(image, 1, "alice")
    return instance, specs, store, image, sop


def test_a_file_deleted_from_its_drop_is_counted_as_withdrawn(settings):
    """Its rows went from dicom_index and image_cache without a word: both said only "0 new, N unchanged"
    (stop 63's nightly probe). Both now count it (`withdrawn`), in the log line and the metadata. Its PNGs and
    candidates stayed in the cache and its label kept training the model (a patient's opt-out ignored): they are
    deleted, and the `labels` asset's sync leaves the image out of the labels until the file is sent again, when it
    comes back with its label."""
    root = settings.landing / "h1" / "d1"
    for name in ("a", "b", "c"):
        write_mg(root / f"{name}.dcm")
    sop = str(pydicom.dcmread(root / "b.dcm", stop_before_pixels=True).SOPInstanceUID)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1"])

    def withdrawn() -> tuple[int, int, int]:
        result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
        meta = [result.asset_materializations_for_node(a.op.name)[0].metadata for a in (dicom_index, image_cache)]
        return meta[0]["withdrawn"].value, meta[1]["withdrawn"].value, meta[1]["dagster/row_count"].value

    def synced() -> tuple[int, int, int, int]:
        specs = [dg.AssetSpec("image_cache", partitions_def=hospital_partitions), label_store, labels]
        result = _materialize(settings, specs, instance).asset_materializations_for_node("labels")[0].metadata
        keys = ("new_images", "withdrawn_images", "restored_images", "dagster/row_count")
        return tuple(result[key].value for key in keys)

    assert withdrawn() == (0, 0, 3)
    assert synced() == (3, 0, 0, 0)
    store = LabelStore(settings.labels_db)
    image = int(store.images().set_index("sop_instance_uid").loc[sop, "id"])
    store.record(image, 1, "alice")
    assert synced() == (0, 0, 0, 1)
    sent = (root / "b.dcm").read_bytes()
    (root / "b.dcm").unlink()
    zoomed = settings.cache / "_zoom" / str(image) / "crop.png"  # a full-resolution crop the app kept of it
    zoomed.parent.mkdir(parents=True)
    zoomed.write_bytes(b"png")
    assert withdrawn() == (1, 1, 2)
    assert not [p for p in settings.cache.rglob(f"{sop}.*") if p.suffix in (".png", ".npz")]  # renditions gone
    assert not zoomed.parent.exists()  # and the app's crops of it, at once (they were left by this path)
    # image_cache withdrew it from the label store at once: a running app offers no card without its picture
    assert store.n_withdrawn() == 1 and store.totals()["train_labeled"] == 0 and store.current_labels().empty
    assert synced() == (0, 0, 0, 0)  # out of the labels the next model trains on (withdrawn before this sync)
    assert withdrawn() == (0, 0, 2)  # counted once, on the run that saw it go

    (root / "b.dcm").write_bytes(sent)  # sent again
    assert withdrawn() == (0, 0, 3)
    assert synced() == (0, 0, 1, 1)  # back with its label
    assert store.current_labels()["image_id"].tolist() == [image]


def test_a_file_overwritten_in_its_drop_by_one_that_cannot_be_read_is_not_withdrawn(settings):
    """A re-sent drop damaged in transfer overwrote a file with bytes the index cannot read: the image left the
    index, so image_cache withdrew it as if deleted (PNGs deleted, out of the label store and its queues) until a
    readable copy came. Now the image keeps its index row and rendition and stays in the label store with its
    label; the damaged file is quarantined with its reason and dicom_index counts it `replaced_unreadable`."""
    root = settings.landing / "h1" / "d1"
    instance, specs, store, image, sop = _labeled_drop(settings, root)
    pngs = read_manifest(settings, "h1").set_index("sop_instance_uid").loc[sop, ["display_png", "model_png"]]

    (root / "b.dcm").write_bytes(b"\x00half a file, the rest lost in transfer" * 40)
    result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    index_meta, cache_meta = _metadata(result, dicom_index), _metadata(result, image_cache)
    assert [index_meta[k] for k in ("replaced_unreadable", "withdrawn", "quarantined_not_dicom")] == [1, 0, 1]
    assert [cache_meta[k] for k in ("withdrawn", "withdrawn_from_labels", "dagster/row_count")] == [0, 0, 2]
    manifest = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert manifest.loc[sop, ["display_png", "model_png"]].tolist() == pngs.tolist()
    assert all((settings.cache / png).is_file() for png in pngs)
    synced = _metadata(_materialize(settings, specs, instance), labels)
    assert (synced["withdrawn_images"], synced["dagster/row_count"]) == (0, 1)
    assert store.n_withdrawn() == 0 and store.current_labels()["image_id"].tolist() == [image]


def test_a_cache_run_that_finds_the_label_store_busy_succeeds_and_the_next_sync_withdraws(settings):
    """image_cache marks a withdrawn image in the label store at once; a store held by another writer past SQLite's
    wait (a million-image sync takes about 20 s) failed the run after its renditions were deleted and its manifest
    written. The run now succeeds with a warning, and the next label sync withdraws the image."""
    import sqlite3

    root = settings.landing / "h1" / "d1"
    for name in ("a", "b"):
        write_mg(root / f"{name}.dcm")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1"])
    _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    specs = [dg.AssetSpec("image_cache", partitions_def=hospital_partitions), label_store, labels]
    _materialize(settings, specs, instance)
    (root / "b.dcm").unlink()
    holder = sqlite3.connect(settings.labels_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, for longer than the store waits
    try:
        result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.success
    meta = _metadata(result, image_cache)
    assert (meta["withdrawn"], meta["withdrawn_from_labels"]) == (1, 0)
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level >= 30 and "not yet marked in the label store" in (e.message or "")
    ]
    assert warnings
    assert LabelStore(settings.labels_db).n_withdrawn() == 0
    synced = _materialize(settings, specs, instance).asset_materializations_for_node("labels")[0].metadata
    assert synced["withdrawn_images"].value == 1 and LabelStore(settings.labels_db).n_withdrawn() == 1


def test_a_file_moved_to_another_drop_is_counted_moved_and_withdrawn_nowhere(settings):
    """A file moved to another drop of its hospital was counted `withdrawn` (and new) by dicom_index, though
    nothing was withdrawn. dicom_index now counts it `moved`, in its log line and metadata; image_cache withdraws
    nothing (its renditions stay, the label store is not told to withdraw it) and the label sync keeps the image
    in use with its label."""
    root = settings.landing / "h1"
    instance, specs, store, image, sop = _labeled_drop(settings, root / "d1")

    (root / "d2").mkdir()
    os.rename(root / "d1" / "b.dcm", root / "d2" / "b.dcm")
    result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    indexed, cached = _metadata(result, dicom_index), _metadata(result, image_cache)
    assert (cached["withdrawn"], cached["withdrawn_from_labels"], cached["dagster/row_count"]) == (0, 0, 2)
    assert (indexed["withdrawn"], indexed["new"], indexed["dagster/row_count"]) == (0, 0, 2)
    assert indexed["moved"] == 1
    lines = [e.message for e in instance.all_logs(result.run_id) if (e.message or "").startswith("h1: 0 new")]
    assert lines and "1 moved" in lines[0] and "withdrawn" not in lines[0]
    assert len([p for p in settings.cache.rglob(f"{sop}.*") if p.suffix in (".png", ".npz")]) == 3
    assert store.n_withdrawn() == 0 and store.current_labels()["image_id"].tolist() == [image]
    synced = _materialize(settings, specs, instance).asset_materializations_for_node("labels")[0].metadata
    keys = ("new_images", "withdrawn_images", "restored_images", "dagster/row_count")
    assert tuple(synced[key].value for key in keys) == (0, 0, 0, 1)


def test_a_whole_drop_moved_to_another_drop_is_counted_moved_and_withdrawn_nowhere(settings):
    """Moving every file of a drop into another drop (landing reorganized, the first folder deleted) left the
    first drop counted as cleaned out of landing: its rows were kept, naming files that are gone, and the moved
    files were quarantined as their `duplicate`s. They now take the rows over: dicom_index counts them `moved`,
    image_cache withdraws nothing (the label store keeps the image and its label) and its manifest names where the
    files are now."""
    root = settings.landing / "h1"
    instance, specs, store, image, sop = _labeled_drop(settings, root / "d1")

    os.rename(root / "d1", root / "d2")  # every file of d1 now in d2, d1 gone
    result = _materialize(settings, [dicom_index, image_cache], instance, partition_key="h1")
    indexed, cached = _metadata(result, dicom_index), _metadata(result, image_cache)
    assert (indexed["moved"], indexed["new"], indexed["withdrawn"], indexed["dagster/row_count"]) == (2, 0, 0, 2)
    assert not [key for key in indexed if key.startswith("quarantined_")]  # no `duplicate` rows
    assert (cached["withdrawn"], cached["withdrawn_from_labels"], cached["dagster/row_count"]) == (0, 0, 2)
    manifest = read_manifest(settings, "h1")
    assert set(manifest["drop"]) == {"d2"}
    assert len([p for p in settings.cache.rglob(f"{sop}.*") if p.suffix in (".png", ".npz")]) == 3
    assert store.n_withdrawn() == 0 and store.current_labels()["image_id"].tolist() == [image]
    synced = _materialize(settings, specs, instance).asset_materializations_for_node("labels")[0].metadata
    keys = ("new_images", "withdrawn_images", "restored_images", "dagster/row_count")
    assert tuple(synced[key].value for key in keys) == (0, 0, 0, 1)


def test_a_file_sent_to_two_hospitals_is_withdrawn_when_its_last_copy_goes(settings):
    """The same file sent to two hospitals is one image in the label store, named after one of them. Deleting that
    hospital's copy withdrew it at once though the other still held it (until the next label sync restored it),
    and deleting the other's copy afterwards was passed over (the store named the first). image_cache now
    withdraws an image only when no cached hospital holds it, as the sync judges."""
    for hospital in ("h1", "h2"):
        write_mg(settings.landing / hospital / "d1" / "other.dcm")
    shared = write_mg(settings.landing / "h1" / "d1" / "shared.dcm")
    shutil.copy(shared, settings.landing / "h2" / "d1" / "shared.dcm")
    sop = str(pydicom.dcmread(shared, stop_before_pixels=True).SOPInstanceUID)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1", "h2"])

    def cache(hospital: str) -> tuple[int, int]:
        meta = _metadata(
            _materialize(settings, [dicom_index, image_cache], instance, partition_key=hospital), image_cache
        )
        return meta["withdrawn"], meta["withdrawn_from_labels"]

    assert cache("h1") == cache("h2") == (0, 0)
    specs = [dg.AssetSpec("image_cache", partitions_def=hospital_partitions), label_store, labels]
    _materialize(settings, specs, instance)
    store = LabelStore(settings.labels_db)
    images = store.images().set_index("sop_instance_uid")
    named = images.loc[sop, "hospital"]  # the hospital the store names the image after
    other = ({"h1", "h2"} - {named}).pop()
    assert len(images) == 3
    store.record(int(images.loc[sop, "id"]), 1, "alice")

    (settings.landing / named / "d1" / "shared.dcm").unlink()
    assert cache(named) == (1, 0)  # its renditions there went; the other still holds the image: in use, labeled
    assert store.n_withdrawn() == 0 and len(store.current_labels()) == 1
    (settings.landing / other / "d1" / "shared.dcm").unlink()
    assert cache(other) == (1, 1)  # its last copy: withdrawn at once, though the store names the first
    assert store.n_withdrawn() == 1 and store.current_labels().empty
    synced = _materialize(settings, specs, instance).asset_materializations_for_node("labels")[0].metadata
    assert (synced["withdrawn_images"].value, synced["restored_images"].value) == (0, 0)  # the sync agrees
