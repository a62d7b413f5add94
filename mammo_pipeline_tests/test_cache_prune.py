"""Pruning the image cache: only what nothing names goes, an earlier normalization's PNG in use stays."""

from __future__ import annotations

import pandas as pd
import pytest

from mammo_pipeline import cache as cache_module
from mammo_pipeline import cache_prune
from mammo_pipeline.atomic import run_owner
from mammo_pipeline.cache import cache_hospital, manifest_path, read_manifest
from mammo_pipeline.labels.store import sync_from_warehouse
from mammo_pipeline.model.candidates import SECOND_LOOK_VERSION
from mammo_pipeline.model.ref import ModelRef
from mammo_pipeline_tests.test_cache import _landing, dead_owner

CURRENT = f"candidates-v{SECOND_LOOK_VERSION}"


def upgraded_cache(settings, monkeypatch) -> list[str]:
    """h1 cached by NORM_VERSION 2, then upgraded to 3, which changed the VOI step of the first image only: it is
    rendered again into version 3's folder, the other two keep their PNGs in version 2's, named by their rows."""
    uids = _landing(settings)
    monkeypatch.setattr(cache_module, "NORM_VERSION", "2")
    cache_hospital(settings, "h1")
    rows = read_manifest(settings, "h1")
    rows.loc[rows["sop_instance_uid"] == uids[0], "voi_method"] = "percentile"  # a fallback version 3 changed
    rows.to_parquet(manifest_path(settings, "h1"))
    monkeypatch.setattr(cache_module, "NORM_VERSION", "3")
    assert cache_hospital(settings, "h1").new == 1
    return uids


def small_cache(settings, hospital: str = "h1") -> dict[str, object]:
    """A hand-made cache folder of the current NORM_VERSION: one image its manifest names, one PNG nothing names."""
    folder = settings.cache / hospital / cache_module.NORM_VERSION
    rel = f"{hospital}/{cache_module.NORM_VERSION}"
    named = {"display_png": [f"{rel}/1024/1.2.3.png"], "model_png": [f"{rel}/256/1.2.3.png"]}
    for path in (folder / "1024" / "1.2.3.png", folder / "256" / "1.2.3.png", folder / "256" / "1.2.4.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"p" * 1500)
    manifest_path(settings, hospital).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sop_instance_uid": ["1.2.3"], **named}).to_parquet(manifest_path(settings, hospital))
    return {"orphan": folder / "256" / "1.2.4.png", "named": [settings.cache / p[0] for p in named.values()]}


def _files(root) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_prune_deletes_what_nothing_names_and_keeps_an_earlier_versions_png_in_use(settings, monkeypatch):
    uids = upgraded_cache(settings, monkeypatch)
    first, second, _ = uids
    h1 = settings.cache / "h1"
    old_display, old_model = h1 / "2" / "1024" / f"{first}.png", h1 / "2" / "256" / f"{first}.png"
    assert old_display.is_file() and old_model.is_file()  # the upgrade rendered it again beside them
    orphan = h1 / "3" / "256" / "1.2.826.0.1.999.png"  # a run killed before it journaled it
    orphan.write_bytes(b"o" * 1000)
    old_store = h1 / "2" / "1024" / "candidates-v1" / f"{second}.npz"  # an earlier SECOND_LOOK_VERSION's
    old_store.parent.mkdir()
    old_store.write_bytes(b"c" * 100)
    gone_version = [h1 / "1" / "256" / f"{second}.png", h1 / "1" / "1024" / "candidates-v1" / f"{second}.npz"]
    for path in gone_version:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 10)
    in_flight = h1 / "3" / "256" / f".{first}.png.{run_owner()}.tmp"  # a live run's temp file
    in_flight.write_bytes(b"being written")
    unknown = h1 / "3" / "1024" / "notes.txt"
    unknown.write_text("not the cache's")
    zoom = settings.cache / "_zoom" / "1" / "crop.png"  # the labeling app's own
    zoom.parent.mkdir(parents=True)
    zoom.write_bytes(b"z")
    before = _files(settings.cache)

    plan = cache_prune.prune_plan(settings, "h1")
    assert _files(settings.cache) == before  # a dry run deletes nothing
    assert {k: sorted(v) for k, v in plan.files.items()} == {
        "old_version_png": sorted(map(str, [old_display, old_model, gone_version[0]])),
        "orphan_png": [str(orphan)],
        "stale_candidates": sorted(
            map(str, [h1 / "2" / "1024" / CURRENT / f"{first}.npz", old_store, gone_version[1]])
        ),
    }
    assert plan.bytes["orphan_png"] == 1000 and plan.bytes["stale_candidates"] > 110
    assert plan.folders == [str(p) for p in (h1 / "1" / "1024" / "candidates-v1", h1 / "1" / "1024")] + [
        str(h1 / "1" / "256"),
        str(h1 / "1"),
        str(old_store.parent),
    ]

    done = cache_prune.prune(settings, "h1")
    assert (done.files, done.bytes, done.folders) == (plan.files, plan.bytes, plan.folders)  # the plan, done
    deleted = {p for paths in plan.files.values() for p in paths}
    assert {str(p) for p in set(before) - set(_files(settings.cache))} == deleted
    assert not (h1 / "1").exists() and not old_store.parent.exists()
    assert in_flight.exists() and unknown.exists() and zoom.exists()
    manifest = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert manifest.loc[second, "norm_version"] == "2"  # kept in the earlier version's folder ...
    for rel in [*manifest["display_png"], *manifest["model_png"]]:
        assert (settings.cache / rel).is_file()  # ... and every rendition in use is still there
    for display in manifest["display_png"]:  # with its current candidates
        assert (settings.cache / display).parent.joinpath(CURRENT, (settings.cache / display).stem + ".npz").is_file()
    again = cache_hospital(settings, "h1")
    assert (again.new, again.unchanged) == (0, 3)  # nothing the cache needed was deleted
    assert cache_prune.prune(settings, "h1").report() == "h1: nothing to delete"


def test_a_png_only_the_label_store_names_is_kept_until_the_store_syncs(settings, monkeypatch):
    """The labeling app serves the PNG its store names until the store's next sync, even after the manifest moved
    on to a new rendition."""
    monkeypatch.setattr(cache_module, "NORM_VERSION", "2")
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    sync_from_warehouse(settings)  # the store names version 2's PNGs
    rows = read_manifest(settings, "h1")
    rows.loc[rows["sop_instance_uid"] == uids[0], "voi_method"] = "percentile"
    rows.to_parquet(manifest_path(settings, "h1"))
    monkeypatch.setattr(cache_module, "NORM_VERSION", "3")
    assert cache_hospital(settings, "h1").new == 1
    old = settings.cache / "h1" / "2" / "1024" / f"{uids[0]}.png"

    result = cache_prune.prune(settings, "h1")
    assert result.n_files == 0 and old.is_file()  # the store still names it

    sync_from_warehouse(settings)  # now it names version 3's
    result = cache_prune.prune(settings, "h1")
    assert len(result.files["old_version_png"]) == 2 and not old.exists()


def test_a_png_named_only_by_a_journal_not_folded_yet_is_kept(settings):
    """A killed run's journal names PNGs its manifest does not yet: the next cache run folds them in."""
    made = small_cache(settings)
    rel = str(made["orphan"].relative_to(settings.cache))
    row = {"sop_instance_uid": "1.2.4", "display_png": None, "model_png": rel}
    journal = cache_module._Journal(manifest_path(settings, "h1").parent / f".journal-{dead_owner()}.jsonl")
    journal.append("manifest", row)
    journal.close()
    assert cache_prune.prune(settings, "h1").n_files == 0 and made["orphan"].exists()
    journal.path.unlink()
    assert cache_prune.prune(settings, "h1").files["orphan_png"] == [str(made["orphan"])]
    assert not made["orphan"].exists() and all(p.exists() for p in made["named"])


def _labels_table(settings):
    return settings.table_dir("labels") / "current.parquet"


def _newest_models_audit(settings):
    ModelRef("m1", "snap", "m1", 64, (0.5,) * 3, (0.25,) * 3).save(settings.models)
    return settings.models / "m1" / "audit_predictions.parquet"


@pytest.mark.parametrize("table", [_labels_table, _newest_models_audit])
def test_a_png_the_next_training_or_the_newest_models_export_reads_is_kept(settings, table):
    """`trained_model` reads the labels snapshot's PNGs, and `onnx_model` the newest model's audit PNGs, whatever
    the manifest names by then."""
    made = small_cache(settings)
    path = table(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"model_png": [str(made["orphan"].relative_to(settings.cache))]}).to_parquet(path)
    assert cache_prune.prune(settings, "h1").n_files == 0 and made["orphan"].exists()
    path.unlink()
    assert cache_prune.prune(settings, "h1").n_files == 1 and not made["orphan"].exists()


def test_a_hospital_a_cache_run_holds_is_skipped_and_nothing_is_deleted(settings):
    made = small_cache(settings)
    with cache_module.run_lock_now(settings, "h1"):  # as a cache run holds it
        result = cache_prune.prune(settings, "h1")
    assert result.skipped == cache_prune.BUSY and result.n_files == 0 and made["orphan"].exists()
    assert "skipped: a cache run holds it" in result.report()
    assert cache_prune.prune(settings, "h1").n_files == 1 and not made["orphan"].exists()  # once it is done


def test_a_hospital_without_a_manifest_is_skipped_and_no_name_leaves_the_cache(settings):
    """Without a manifest nothing tells what is in use (a hospital never cached, or a warehouse elsewhere)."""
    made = small_cache(settings)
    manifest_path(settings, "h1").unlink()
    result = cache_prune.prune(settings, "h1")
    assert result.skipped == cache_prune.NO_MANIFEST and made["orphan"].exists()
    (settings.cache / "_zoom").mkdir()
    assert cache_prune.hospitals(settings) == ["h1"]
    for name, error in (("_zoom", ValueError), ("..", ValueError), ("h1/../h1", ValueError), ("h9", LookupError)):
        with pytest.raises(error):
            cache_prune.prune(settings, name)


def test_human_bytes_in_decimal_units():
    assert [cache_prune.human_bytes(n) for n in (0, 999, 1000, 86_000, 1_234_000_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "86.0 kB",
        "1.2 GB",
    ]
