"""The `labels` asset and the `label_store` observable source, materialized in an ephemeral instance."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from mammo_pipeline import warehouse
from mammo_pipeline.defs.labels import COLUMNS, label_store, labels
from mammo_pipeline.defs.partitions import hospital_partitions
from mammo_pipeline.defs.resources import MammoSettings
from mammo_pipeline.labels.store import LabelStore

from .conftest import write_images

IMAGE_CACHE = dg.AssetSpec("image_cache", partitions_def=hospital_partitions)


def _materialize(settings) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("hospital", ["h1", "h2"])
    return dg.materialize(
        [IMAGE_CACHE, label_store, labels],
        selection=[labels.key],
        resources={"mammo": MammoSettings(home=str(settings.home))},
        instance=instance,
    )


def test_labels_asset_syncs_images_and_snapshots_current_labels(settings):
    for hospital, n in (("h1", 6), ("h2", 4)):
        manifest = write_images(settings.cache, n, hospital=hospital)
        warehouse.write_partition(settings, "image_cache", hospital, manifest, name="manifest.parquet")
    result = _materialize(settings)
    assert result.success
    store = LabelStore(settings.labels_db)
    assert len(store.images()) == 10
    empty = pd.read_parquet(settings.table_dir("labels") / "current.parquet")
    assert empty.empty and list(empty.columns) == COLUMNS

    ids = store.images().set_index("sop_instance_uid")["id"]
    store.record(int(ids.iloc[0]), 1, "alice")
    store.record(int(ids.iloc[7]), 4, "alice")
    result = _materialize(settings)
    mat = result.asset_materializations_for_node("labels")[0]
    df = pd.read_parquet(settings.table_dir("labels") / "current.parquet")
    sid = mat.metadata["snapshot_id"].value
    assert len(df) == 2 and set(df["snapshot_id"]) == {sid}
    assert df.set_index("hospital")["label"].to_dict() == {"h1": "biopsy", "h2": "both"}
    assert (settings.table_dir("labels") / "snapshots" / f"{sid}.parquet").exists()
    assert mat.metadata["dagster/row_count"].value == 2
    assert mat.metadata["label_counts"].value == {"biopsy": 1, "mag": 0, "neither": 0, "both": 1}
    assert "| h2 | 0 | 0 | 0 | 1 | 1 |" in mat.metadata["per_hospital"].value
    assert mat.metadata["images_train"].value + mat.metadata["images_audit"].value == 10
    assert df["model_png"].str.endswith(".png").all() and set(df["split"]) <= {"train", "audit"}
    assert warehouse.table_glob(settings, "labels") is not None


def test_label_store_version_changes_with_labels_and_undo(settings):
    assert _version(settings) == "empty"
    store = LabelStore(settings.labels_db)
    store.sync_images(write_images(settings.cache, 2), audit_fraction=0)
    v0 = _version(settings)
    store.record(int(store.images()["id"][0]), 2, "alice")
    v1 = _version(settings)
    store.undo("alice")
    assert len({v0, v1, _version(settings)}) == 3
    assert _version(settings) == _version(settings)


def _version(settings) -> str:
    """The data version the observable source reports when Dagster observes it."""
    result = dg.materialize(
        [label_store],
        selection=[label_store.key],
        resources={"mammo": MammoSettings(home=str(settings.home))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    (obs,) = [e.event_specific_data.asset_observation for e in result.all_events if e.is_asset_observation]
    return obs.tags["dagster/data_version"]


def test_labels_table_carries_the_adjudicated_audit_label_and_agreement_metadata(settings):
    manifest = write_images(settings.cache, 4, hospital="h1")
    warehouse.write_partition(settings, "image_cache", "h1", manifest, name="manifest.parquet")
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=1.0)  # all four in the audit set
    ids = store.images()["id"].tolist()
    for image_id, (a, b) in zip(ids, [(1, 1), (2, 3), (3, 3), (4, 4)], strict=True):
        store.record(image_id, a, "alice")
        store.record(image_id, b, "bob")
    store.record(ids[1], 2, "carol")  # the third read sides with alice
    sops = store.sop_uids(ids)
    store.set_predictions(  # the model contradicts the agreed "biopsy" of the first image only
        pd.DataFrame({"sop_instance_uid": [sops[i] for i in ids]}).assign(
            p_biopsy=[0.01, 0.01, 0.01, 0.9], p_mag=[0.01, 0.9, 0.01, 0.9], model_version="v1", out_of_sample=True
        )
    )
    result = _materialize(settings)
    df = pd.read_parquet(settings.table_dir("labels") / "current.parquet").set_index("image_id")
    assert list(df.reset_index().columns) == COLUMNS
    assert df.loc[ids[1], ["label", "is_mag_view", "label_source", "first_read", "n_reads"]].tolist() == [
        "mag",
        True,
        "adjudicated",
        "mag",
        2,
    ]
    assert df.loc[ids[0], "label_source"] == "agreed" and df["annotator"].loc[ids[1]] == "carol"
    meta = result.asset_materializations_for_node("labels")[0].metadata
    assert meta["audit_label_sources"].value == {"agreed": 3, "adjudicated": 1}
    assert 0 < meta["audit_kappa"].value < 1 and meta["audit_readers"].value["alice"]["agree_truth"] == 1.0
    assert "Cohen's κ" in meta["audit_agreement"].value
    assert meta["audit_recheck_due"].value == 1
