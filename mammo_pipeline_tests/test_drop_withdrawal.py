"""Withdrawing the images of a drop whose every file was deleted from landing (`mammo drops withdraw`)."""

from __future__ import annotations

import shutil

import pydicom
import pytest
from click.testing import CliRunner

from mammo_pipeline.cache import cache_hospital, read_manifest
from mammo_pipeline.cli import cli
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.drop_withdrawal import NotWithdrawable, cleaned_out_drops, withdraw_drop
from mammo_pipeline.labels.store import sync_from_warehouse
from mammo_pipeline_tests.dicom.test_headers import write_mg


def _uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _ingested(settings) -> dict[str, str]:
    """h1 with drops d1 (a, b) and d2 (c, d, and a copy of d1's a), indexed, cached and in the label store;
    file name -> SOP Instance UID."""
    uids = {}
    for drop, name in (("d1", "a"), ("d1", "b"), ("d2", "c"), ("d2", "d")):
        path = write_mg(settings.landing / "h1" / drop / f"{name}.dcm")
        uids[name] = _uid(path)
    shutil.copy(settings.landing / "h1" / "d1" / "a.dcm", settings.landing / "h1" / "d2" / "copy-of-a.dcm")
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    sync_from_warehouse(settings)
    return uids


def test_a_drop_whose_files_were_deleted_keeps_its_images_until_it_is_withdrawn(settings):
    """Deleting every file of a drop looks like archiving it after ingest, so its images stay in use (the index
    keeps its rows; one another drop holds a copy of is taken over by that copy, counted moved). `withdraw_drop`
    takes the rest out: renditions deleted, withdrawn in the label store; the other drop's images stay."""
    uids = _ingested(settings)
    before = read_manifest(settings, "h1").set_index("sop_instance_uid")
    shutil.rmtree(settings.landing / "h1" / "d1")
    (settings.landing / "h1" / "d1").mkdir()  # emptied, as `rsync --remove-source-files` leaves it
    dry = withdraw_drop(settings, "h1", "d1", dry_run=True)  # before any index run: a's copy is still a duplicate
    assert (dry.images, dry.elsewhere, dry.withdrawn) == (2, 1, 0)
    assert len(read_manifest(settings, "h1")) == 4  # a dry run changes nothing

    assert index_hospital(settings, "h1").moved == 1  # a: d2's copy took its row over
    assert cache_hospital(settings, "h1").withdrawn == 0  # a cleaned-out drop: nothing withdrawn on its own
    assert cleaned_out_drops(settings, "h1") == ["d1"]
    done = withdraw_drop(settings, "h1", "d1")
    assert (done.images, done.elsewhere, done.withdrawn, done.from_labels) == (1, 0, 1, 1)
    manifest = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert set(manifest.index) == {uids["a"], uids["c"], uids["d"]}  # b withdrawn; a kept through d2's copy
    assert manifest.loc[uids["a"], "drop"] == "d2"
    assert not (settings.cache / before.loc[uids["b"], "display_png"]).exists()
    store, _ = sync_from_warehouse(settings)
    withdrawn = store.images().set_index("sop_instance_uid")["withdrawn_at"].notna()
    assert withdrawn[withdrawn].index.tolist() == [uids["b"]]
    assert cleaned_out_drops(settings, "h1") == []
    assert index_hospital(settings, "h1").withdrawn == 0 and cache_hospital(settings, "h1").withdrawn == 0  # stable


def test_a_drop_withdrawn_before_the_index_saw_it_go_keeps_the_image_another_drop_holds(settings):
    """Withdrawn straight after its files were deleted: the copy in the other drop, still a `duplicate`, takes its
    image back into the index in the same step, so only the image no file holds is withdrawn."""
    uids = _ingested(settings)
    shutil.rmtree(settings.landing / "h1" / "d1")
    done = withdraw_drop(settings, "h1", "d1")
    assert (done.images, done.elsewhere, done.withdrawn, done.from_labels) == (2, 1, 1, 1)
    assert set(read_manifest(settings, "h1")["sop_instance_uid"]) == {uids["a"], uids["c"], uids["d"]}


def test_a_drop_landing_still_holds_or_the_index_never_held_is_refused(settings):
    _ingested(settings)
    with pytest.raises(NotWithdrawable, match="still holds files"):
        withdraw_drop(settings, "h1", "d1")
    shutil.rmtree(settings.landing / "h1" / "d1")
    with pytest.raises(NotWithdrawable, match=r"no drop 'd9'; drops cleaned out of landing with rows kept: d1"):
        withdraw_drop(settings, "h1", "d9")
    with pytest.raises(NotWithdrawable, match="no drop"):
        withdraw_drop(settings, "h1", "../h1/d1")
    assert len(read_manifest(settings, "h1")) == 4  # nothing withdrawn by a refusal


def test_mammo_drops_withdraw_says_what_it_did_and_refuses_with_one_line(settings):
    _ingested(settings)
    shutil.rmtree(settings.landing / "h1" / "d1")
    runner = CliRunner()
    listed = runner.invoke(cli, ["drops", "cleaned-out", "h1"])
    assert listed.exit_code == 0 and listed.output.split() == ["d1"]
    dry = runner.invoke(cli, ["drops", "withdraw", "h1", "d1", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "h1/d1: would withdraw 1 of its 2 image(s); 1 stay, another file of the hospital holds them" in dry.output
    done = runner.invoke(cli, ["drops", "withdraw", "h1", "d1"])
    assert done.exit_code == 0, done.output
    assert "1 image(s) withdrawn from the cache (renditions deleted), 1 from the label store" in done.output
    again = runner.invoke(cli, ["drops", "withdraw", "h1", "d1"])
    assert again.exit_code == 1 and "Error: h1: the index holds no drop 'd1'" in again.output
