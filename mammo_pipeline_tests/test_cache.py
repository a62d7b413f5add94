"""The image cache: both PNGs per usable image, quarantine of decode failures, incremental and crash-safe."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from mammo_pipeline import cache as cache_module
from mammo_pipeline.atomic import atomic_path, run_owner
from mammo_pipeline.cache import cache_hospital, cache_quarantine_path, manifest_path, read_manifest
from mammo_pipeline.dicom.headers import MG_FOR_PROCESSING
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.dicom.normalize import NORM_VERSION
from mammo_pipeline.dicom.source_paths import pseudonymize_path, resolve
from mammo_pipeline.warehouse import read_partition
from mammo_pipeline_tests.dicom.test_headers import write_damaged_mg, write_mg


def _landing(settings, n_good: int = 3) -> list[str]:
    """`n_good` presentation images, one For Processing image and one whose pixels are cut short."""
    root = settings.landing / "h1" / "d1"
    uids = [generate_uid() for _ in range(n_good)]
    for i, uid in enumerate(uids):
        silent = {"ViewPosition": None, "ImageLaterality": None} if i == 0 else {}  # missing text columns
        write_mg(root / f"p{i}" / "img.dcm", SOPInstanceUID=uid, **silent)
    write_mg(root / "raw" / "img.dcm", SOPClassUID=MG_FOR_PROCESSING)
    write_mg(root / "bad" / "img.dcm", pixel_bytes=b"\x00\x01" * 100)  # well-formed, far fewer pixels than 64x48
    index_hospital(settings, "h1")
    return uids


def dead_owner() -> str:
    """The owner tag of a process of this host that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "from mammo_pipeline.atomic import run_owner; print(run_owner())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


@pytest.fixture
def render_calls(monkeypatch) -> list[str]:
    """Names of the sources render() was asked for (workers=1 runs it in this process)."""
    calls: list[str] = []
    real = cache_module.render

    def counting(source, sizes):
        calls.append(str(source))
        return real(source, sizes)

    monkeypatch.setattr(cache_module, "render", counting)
    return calls


def test_cache_hospital_writes_both_pngs_and_the_manifest(settings, render_calls):
    uids = _landing(settings)
    result = cache_hospital(settings, "h1")

    assert (result.images, result.for_processing, result.new, result.unchanged) == (4, 1, 3, 0)
    assert sum(result.quarantined.values()) == 1
    assert len(render_calls) == 4  # the For Processing image is never rendered
    manifest = read_manifest(settings, "h1")
    assert sorted(manifest["sop_instance_uid"]) == sorted(uids)
    for row in manifest.itertuples():
        display = Image.open(settings.cache / row.display_png)
        model = Image.open(settings.cache / row.model_png)
        assert max(display.size) == settings.display_size and max(model.size) == settings.model_size
        assert display.mode == "L" and np.asarray(model).dtype == np.uint8
        assert row.display_png.startswith(f"h1/{cache_module.NORM_VERSION}/{settings.display_size}/")
        assert (row.width, row.height) == (64, 48)
    assert set(manifest["norm_version"]) == {cache_module.NORM_VERSION}
    assert (settings.warehouse / "image_cache" / "hospital=h1" / "manifest.parquet").exists()


def test_cache_hospital_quarantines_decode_failures(settings):
    _landing(settings)
    result = cache_hospital(settings, "h1")
    quarantine = read_partition(settings, "quarantine", "h1")
    cached = quarantine[quarantine["stage"] == "cache"]
    rel = pseudonymize_path(settings.pseudonym_salt(), "h1/d1/bad/img.dcm")
    assert list(cached["rel_path"]) == [rel]
    assert cached["reason"].iloc[0] in {"undecodable", "truncated"}
    assert rel in cached["message"].iloc[0] and "bad/img.dcm" not in cached["message"].iloc[0]
    assert result.quarantined == {cached["reason"].iloc[0]: 1} and result.new == 3


def test_cache_hospital_second_run_renders_nothing(settings, render_calls):
    _landing(settings)
    cache_hospital(settings, "h1")
    tables = [manifest_path(settings, "h1"), cache_quarantine_path(settings, "h1")]
    pngs = sorted((settings.cache / "h1").rglob("*.png"))
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    written = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in tables]
    render_calls.clear()

    again = cache_hospital(settings, "h1")
    assert render_calls == []  # neither cached nor quarantined images are rendered again
    assert (again.new, again.unchanged, again.still_quarantined, again.rows) == (0, 3, 1, 3)
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in tables] == written  # nothing new: no table rewritten


def test_cache_hospital_after_a_crash_completes_the_rest(settings, render_calls):
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    victim = uids[1]
    (settings.cache / "h1" / cache_module.NORM_VERSION / str(settings.model_size) / f"{victim}.png").unlink()
    folder = settings.cache / "h1" / cache_module.NORM_VERSION / "1024"
    stale = folder / f".{uids[0]}.png.{dead_owner()}.tmp"  # left by a killed run
    stale.write_bytes(b"half a png")
    old = folder / f".{uids[0]}.png.deadbeef.tmp"  # owner unknown: stale by age
    old.write_bytes(b"half a png")
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    in_flight = folder / f".{uids[2]}.png.{run_owner()}.tmp"  # a live run's file: never touched
    in_flight.write_bytes(b"being written")
    render_calls.clear()

    result = cache_hospital(settings, "h1")
    assert not stale.exists() and not old.exists() and in_flight.exists()
    assert len(render_calls) == 1 and result.new == 1 and result.unchanged == 2
    assert (settings.cache / "h1" / cache_module.NORM_VERSION / str(settings.model_size) / f"{victim}.png").exists()
    assert [p.name for p in (settings.cache / "h1").rglob("*.tmp")] == [in_flight.name]


def test_cache_hospital_killed_mid_run_resumes_without_redoing(settings, monkeypatch):
    _landing(settings, n_good=5)
    monkeypatch.setattr(cache_module, "MANIFEST_EVERY", 1)
    real = cache_module.render
    rendered: list[str] = []

    def dies_after_three(source, sizes):
        if len(rendered) == 3:
            raise KeyboardInterrupt  # like a kill: not an image problem, so nothing catches it
        rendered.append(str(source))
        return real(source, sizes)

    def counting(source, sizes):
        rendered.append(str(source))
        return real(source, sizes)

    monkeypatch.setattr(cache_module, "render", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        cache_hospital(settings, "h1")
    first = set(rendered)
    rendered.clear()
    monkeypatch.setattr(cache_module, "render", counting)
    result = cache_hospital(settings, "h1")
    assert result.rows == 5 and len(first) == 3
    assert not set(rendered) & first  # nothing finished before the kill is rendered again
    assert len(rendered) == 6 - 3  # 5 good + 1 bad, minus the three the first run finished
    assert not list((settings.cache / "h1").rglob("*.tmp"))


def test_cache_hospital_new_norm_version_renders_again_beside_the_old(settings, monkeypatch, render_calls):
    _landing(settings)
    cache_hospital(settings, "h1")
    monkeypatch.setattr(cache_module, "NORM_VERSION", "next-version")
    render_calls.clear()
    result = cache_hospital(settings, "h1")
    assert len(render_calls) == 4 and result.new == 3  # the quarantined image is retried too
    assert set(read_manifest(settings, "h1")["norm_version"]) == {"next-version"}
    assert (settings.cache / "h1" / "next-version" / str(settings.model_size)).is_dir()


def test_an_upgrade_renders_again_only_the_images_whose_voi_step_it_changed(settings, monkeypatch, render_calls):
    """Version 3 changed only the fallback window: version 2's windowed renditions stand where they are, a
    percentile one is rendered again (on a million-image archive, a few files instead of all)."""
    uids = _landing(settings)
    monkeypatch.setattr(cache_module, "NORM_VERSION", "2")  # a cache made by version 2 ...
    cache_hospital(settings, "h1")
    manifest = cache_module.read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert set(manifest["voi_method"]) == {"window:LINEAR"} and set(manifest["norm_version"]) == {"2"}
    table = settings.table_dir("image_cache", "h1") / "manifest.parquet"
    rows = manifest.reset_index()
    rows.loc[rows["sop_instance_uid"] == uids[0], "voi_method"] = "percentile"  # ... that fell back on one image
    rows.to_parquet(table)

    monkeypatch.setattr(cache_module, "NORM_VERSION", "3")  # ... upgraded
    render_calls.clear()
    result = cache_hospital(settings, "h1")
    assert (result.new, result.unchanged) == (1, 2) and len(render_calls) == 2  # + the quarantined image's retry
    after = cache_module.read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert after.loc[uids[0], "norm_version"] == "3" and "/3/" in after.loc[uids[0], "display_png"]
    for sop in uids[1:]:
        assert after.loc[sop, "norm_version"] == "2" and (settings.cache / after.loc[sop, "display_png"]).exists()
    monkeypatch.setattr(cache_module, "NORM_VERSION", "next-version")  # a version that declares nothing unchanged
    assert cache_hospital(settings, "h1").new == 3


def test_cache_hospital_in_a_process_pool(settings):
    _landing(settings)
    seen: list[tuple[int, int]] = []
    result = cache_hospital(dataclasses.replace(settings, workers=2), "h1", progress=lambda d, t: seen.append((d, t)))
    assert result.new == 3 and sum(result.quarantined.values()) == 1
    assert seen[-1] == (4, 4) and result.images_per_s > 0


def test_cache_hospital_without_an_index_refuses_and_writes_no_manifest(settings):
    """A cache run racing ahead of a hospital's first index wrote an empty manifest, which then passed for a
    hospital without images (image_predictions wrote an empty slice); it now says what is missing."""
    with pytest.raises(FileNotFoundError, match="no dicom_index yet"):
        cache_hospital(settings, "nowhere")
    assert not manifest_path(settings, "nowhere").exists()


# -- hostile values, kills and overlapping runs (issue 14) ----------------------------------------------
def test_safe_key_keeps_valid_uids_and_hashes_the_rest():
    assert cache_module.safe_key("h1", "1.2.840.10008.1") == "1.2.840.10008.1"
    for bad in ["../../../../../../escaped-1", "1.2/3", "1.02.3", "1..2", "", "1." * 40 + "1", "１.２"]:
        key = cache_module.safe_key("h1", bad)
        assert key.startswith("h-") and len(key) == 34 and key[2:].isalnum()
    assert cache_module.safe_key("h1", "../x") != cache_module.safe_key("h2", "../x")  # per hospital


def _files_under(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


def test_traversal_uid_writes_nothing_outside_the_hospital_cache(settings, tmp_path):
    before = _files_under(tmp_path)
    evil = "../../../../../../escaped-1"
    write_mg(settings.landing / "h1" / "d1" / "p0" / "img.dcm", SOPInstanceUID=evil)
    write_mg(settings.landing / "h1" / "d1" / "p1" / "img.dcm")
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")

    new = _files_under(tmp_path) - before
    allowed = (
        settings.landing,
        settings.warehouse,
        settings.cache / "h1",
        settings.home / ".salt",
        settings.home / "private",
    )
    assert all(any(p.is_relative_to(root) for root in allowed) for p in new), sorted(map(str, new))
    assert not list(tmp_path.rglob("escaped-1*")) and not (settings.home.parent / "escaped-1.png").exists()
    manifest = read_manifest(settings, "h1")
    for rel in [*manifest["display_png"], *manifest["model_png"]]:
        assert "/../" not in rel and (settings.cache / rel).resolve().is_relative_to(settings.cache / "h1")
    if evil in set(manifest["sop_instance_uid"]):  # before issue 17's invalid_uid quarantine: rendered, hashed
        row = manifest[manifest["sop_instance_uid"] == evil].iloc[0]
        assert row.display_png.rsplit("/", 1)[1] == cache_module.safe_key("h1", evil) + ".png"


def test_another_hospitals_file_cannot_replace_a_png(settings, render_calls):
    victim = generate_uid()
    write_mg(settings.landing / "h2" / "d1" / "p0" / "img.dcm", SOPInstanceUID=victim)
    index_hospital(settings, "h2")
    cache_hospital(settings, "h2")
    target = settings.cache / cache_module.png_path("h2", victim, settings.display_size)
    original = target.read_bytes()
    evil = f"../../../h2/{cache_module.NORM_VERSION}/{settings.display_size}/{victim}"
    write_mg(settings.landing / "h1" / "d1" / "p0" / "img.dcm", SOPInstanceUID=evil, Rows=32)
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    assert target.read_bytes() == original


def test_a_replaced_png_is_rendered_again_not_reported_unchanged(settings, render_calls):
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    target = settings.cache / cache_module.png_path("h1", uids[0], settings.display_size)
    target.write_bytes(b"not our png")
    render_calls.clear()
    result = cache_hospital(settings, "h1")
    assert (result.new, result.unchanged) == (1, 2) and len(render_calls) == 1
    assert target.read_bytes().startswith(b"\x89PNG")


def test_a_moved_source_is_rendered_again(settings, render_calls):
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    src = settings.landing / "h1" / "d1" / "p1" / "img.dcm"
    moved = settings.landing / "h1" / "d1" / "p1b" / "img.dcm"
    moved.parent.mkdir()
    os.rename(src, moved)  # same size and mtime, another file
    index_hospital(settings, "h1")
    render_calls.clear()
    cache_hospital(settings, "h1")
    assert render_calls == [str(moved)]
    assert uids[1] in set(read_manifest(settings, "h1")["sop_instance_uid"])


_SLOW_CACHE = """
import sys, time
from mammo_pipeline import cache
from mammo_pipeline.settings import Settings
real = cache.render
def slow(source, sizes):
    time.sleep(float(sys.argv[2]))
    return real(source, sizes)
cache.render = slow
result = cache.cache_hospital(Settings.under(sys.argv[1], workers=1, salt="test-salt"), "h1")
print(result.new, result.waited_s)
"""


def _journal_sops(settings) -> set[str]:
    sops = set()
    for path in settings.table_dir("image_cache", "h1").glob(".journal-*.jsonl"):
        sops |= {row["sop_instance_uid"] for _, row in cache_module._read_journal(path)}
    return sops


def test_kill_9_mid_cache_then_a_rerun_renders_only_the_rest(settings, render_calls):
    uids = _landing(settings, n_good=8)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CACHE, str(settings.home), "0.25"])
    deadline = time.monotonic() + 60
    while len(_journal_sops(settings)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no finally, no atexit
    proc.wait()
    finished = _journal_sops(settings)
    assert 3 <= len(finished) < 9, "the killed run should have finished some images, not all"
    render_calls.clear()

    result = cache_hospital(settings, "h1")
    rendered = {p.split("/")[-2] for p in render_calls}  # landing/h1/d1/<folder>/img.dcm
    by_folder = {f"p{i}": uid for i, uid in enumerate(uids)} | {"bad": "bad"}
    assert not {by_folder[f] for f in rendered} & finished  # nothing the killed run finished is rendered again
    assert len(render_calls) == 9 - len(finished)
    assert result.rows == 8 and set(read_manifest(settings, "h1")["sop_instance_uid"]) == set(uids)
    assert not list(settings.table_dir("image_cache", "h1").glob(".journal-*"))  # folded in and removed
    assert not list((settings.cache / "h1").rglob("*.tmp"))


def test_two_overlapping_cache_runs_lose_nothing_and_render_each_image_once(settings):
    uids = _landing(settings, n_good=8)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SLOW_CACHE, str(settings.home), "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        new, waited = out.decode().split()
        done.append((int(new), float(waited)))
    # one run at a time: the second waits for the first, then finds every image current (before stop 63 both
    # rendered all of them, and the PNG of one run could end up under the other's manifest row)
    assert sorted(new for new, _ in done) == [0, len(uids)]
    assert max(waited for _, waited in done) > 0
    manifest = read_manifest(settings, "h1")
    assert set(manifest["sop_instance_uid"]) == set(uids)
    quarantine = read_partition(settings, "quarantine", "h1")
    bad = list(quarantine[quarantine["stage"] == "cache"]["rel_path"])
    assert [resolve(settings, "h1", p) for p in bad] == [settings.landing / "h1/d1/bad/img.dcm"]
    for row in manifest.itertuples():
        assert Image.open(settings.cache / row.display_png).size[0] > 0
    assert not list((settings.cache / "h1").rglob("*.tmp"))
    assert not list(settings.table_dir("image_cache", "h1").glob(".journal-*"))


def test_a_run_starting_while_another_writes_a_png_leaves_its_temp_alone(settings, monkeypatch):
    """The overlap that dropped a good image: run B starts (and cleans temps) while run A's PNG is in flight.
    Since stop 63 run B waits for run A (the run lock); this is where the lock does not hold (a file system
    without working flock), so B runs inside A."""
    monkeypatch.setattr(cache_module, "_one_run_at_a_time", lambda *_: contextlib.nullcontext())
    uids = _landing(settings, n_good=4)
    real_write = cache_module._write_png
    started_b: list[int] = []

    def write_then_overlap(pixels, path, owner):
        with atomic_path(path, owner) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
            if not started_b:  # run A holds an in-flight temp file right now
                started_b.append(1)
                monkeypatch.setattr(cache_module, "_write_png", real_write)
                cache_hospital(settings, "h1")  # run B, start to end
                monkeypatch.setattr(cache_module, "_write_png", write_then_overlap)
            assert tmp.exists(), "run B deleted run A's in-flight temp file"

    monkeypatch.setattr(cache_module, "_write_png", write_then_overlap)
    result = cache_hospital(settings, "h1")  # run A
    assert started_b and sum(result.quarantined.values()) == 1  # only the bad file, no good image lost
    assert set(read_manifest(settings, "h1")["sop_instance_uid"]) == set(uids)
    quarantine = read_partition(settings, "quarantine", "h1")
    bad = list(quarantine[quarantine["stage"] == "cache"]["rel_path"])
    assert [resolve(settings, "h1", p) for p in bad] == [settings.landing / "h1/d1/bad/img.dcm"]
    assert not list(settings.table_dir("image_cache", "h1").glob(".journal-*"))


def test_the_image_kind_of_the_index_reaches_the_manifest(settings):
    """Synthesized 2D images are kept but flagged: the flag travels with the rendition to training and inference."""
    root = settings.landing / "h1" / "d1"
    plain, cview = generate_uid(), generate_uid()
    write_mg(root / "p0" / "a.dcm", SOPInstanceUID=plain)
    write_mg(root / "p0" / "b.dcm", SOPInstanceUID=cview, SeriesDescription="L CC C-View")
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    kinds = read_manifest(settings, "h1").set_index("sop_instance_uid")["image_kind"].to_dict()
    assert kinds == {plain: "2d", cview: "synthesized_2d"}


def test_the_cache_keeps_each_display_pngs_second_look_candidates_as_cut_from_the_png(settings, monkeypatch):
    from mammo_pipeline.model import candidate_store

    _landing(settings)
    cache_hospital(settings, "h1")
    manifest = read_manifest(settings, "h1")
    assert len(manifest) == 3
    kept = {}
    for row in manifest.itertuples():
        png = settings.cache / row.display_png
        assert candidate_store.store_path(png).is_file()
        kept[row.display_png] = candidate_store.candidates_of_png(png)  # read back (checked against the PNG's stat)
    monkeypatch.setattr(candidate_store, "store_path", lambda png: png.parent / "elsewhere" / f"{png.stem}.npz")
    for rel, found in kept.items():  # cut afresh from the PNG on disk: the same crops as from the rendered pixels
        fresh = candidate_store.candidates_of_png(settings.cache / rel)
        assert all(np.array_equal(a, b) for a, b in zip(found[:3], fresh[:3], strict=True)) and found[3] == fresh[3]


def test_a_hospital_and_a_file_linked_in_from_a_mount_are_rendered(settings, tmp_path):
    """Linking each hospital's SFTP or NFS area into landing/ (instead of copying terabytes) is a normal
    deployment: the index follows such links, so the cache must read what it indexed (it used to resolve the
    link, call the file outside landing/ and quarantine every image as undecodable)."""
    mount = tmp_path / "sftp" / "h1"
    write_mg(mount / "d1" / "a.dcm", SOPInstanceUID="1.2.3.4.1")
    elsewhere = write_mg(tmp_path / "elsewhere" / "b.dcm", SOPInstanceUID="1.2.3.4.2")
    (settings.landing).mkdir(parents=True, exist_ok=True)
    (settings.landing / "h1").symlink_to(mount, target_is_directory=True)
    (mount / "d1" / "b.dcm").symlink_to(elsewhere)
    write_mg(tmp_path / "nfs" / "study9" / "c.dcm", SOPInstanceUID="1.2.3.4.3")
    (mount / "d1" / "study9").symlink_to(tmp_path / "nfs" / "study9", target_is_directory=True)  # a linked study
    index_hospital(settings, "h1")
    result = cache_hospital(settings, "h1")
    assert result.quarantined == {}
    assert set(read_manifest(settings, "h1")["sop_instance_uid"]) == {"1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"}


def test_a_rel_path_climbing_out_of_its_hospital_is_never_read(settings, tmp_path):
    """The check is on the path as written: a lookup entry with `..` in it (tampered with, say) is refused even
    though no symlink is involved."""
    from mammo_pipeline.dicom.source_paths import write_lookup

    rel = pseudonymize_path(settings.pseudonym_salt(), "h1/d1/x.dcm")
    write_lookup(settings, "h1", "d1", {rel: "h1/d1/../../h2/d1/x.dcm"})
    with pytest.raises(ValueError, match="not inside"):
        cache_module.source_path(settings, "h1", rel)


def test_a_rendition_whose_source_left_landing_is_kept_when_it_would_be_rendered_again(settings, monkeypatch):
    """Landing is often cleaned up after ingest; a later NORM_VERSION upgrade (or a touched PNG) must not turn
    the images it can no longer read into quarantine rows and drop their manifest rows."""
    uids = _landing(settings, n_good=2)
    cache_hospital(settings, "h1")
    gone = settings.landing / "h1" / "d1" / "p1" / "img.dcm"
    gone.unlink()
    monkeypatch.setattr(cache_module, "NORM_VERSION", cache_module.NORM_VERSION + "-next")
    result = cache_hospital(settings, "h1")
    assert result.kept_without_source == 1 and result.quarantined == {"truncated": 1}  # _landing's short file
    manifest = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert set(uids) <= set(manifest.index)
    assert manifest.loc[uids[1], "norm_version"] != cache_module.NORM_VERSION  # the old rendition, as it was
    assert manifest.loc[uids[0], "norm_version"] == cache_module.NORM_VERSION  # its source is there: rendered again


def test_a_rendition_whose_source_was_overwritten_is_kept_when_it_would_be_rendered_again(
    settings, monkeypatch, render_calls
):
    """A file overwritten by one the index cannot read keeps its index row (`dicom_index`: replaced_unreadable), so
    its rendition stays current; at a NORM_VERSION upgrade it was rendered again from the damaged file, which
    failed, and the quarantine row took the place of a good rendition. It is now kept as it is, like one whose
    source left landing; so is one whose file was replaced by another readable image that the index has not read
    yet, until it has (then that image is rendered, and the one it replaced is withdrawn)."""
    root = settings.landing / "h1" / "d1"
    uids = [generate_uid() for _ in range(3)]
    for name, uid in zip("abc", uids, strict=True):
        write_mg(root / f"{name}.dcm", SOPInstanceUID=uid)
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    (root / "a.dcm").write_bytes(b"\x00garbage" * 300)  # damaged: the index keeps the image's row
    assert index_hospital(settings, "h1").replaced_unreadable == 1
    pixels = (np.arange(96 * 72, dtype=np.uint16) % 4096).tobytes()
    other = write_mg(root / "other.tmp", Rows=96, Columns=72, pixel_bytes=pixels)
    os.replace(other, root / "b.dcm")  # another image, not indexed yet
    render_calls.clear()
    monkeypatch.setattr(cache_module, "NORM_VERSION", cache_module.NORM_VERSION + "-next")
    result = cache_hospital(settings, "h1")
    assert (result.kept_without_source, result.new, result.withdrawn, result.quarantined) == (2, 1, 0, {})
    assert render_calls == [str(root / "c.dcm")]
    manifest = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert manifest.loc[uids[:2], "norm_version"].tolist() == [NORM_VERSION, NORM_VERSION]  # as they were
    assert all(
        (settings.cache / manifest.loc[uid, key]).is_file() for uid in uids for key in ("display_png", "model_png")
    )
    index_hospital(settings, "h1")  # reads b.dcm's new image
    again = cache_hospital(settings, "h1")
    assert (again.kept_without_source, again.new, again.withdrawn) == (1, 1, 1)
    manifest = read_manifest(settings, "h1")
    assert uids[1] not in set(manifest["sop_instance_uid"]) and uids[0] in set(manifest["sop_instance_uid"])


def test_a_file_gone_after_indexing_is_quarantined_without_its_path_and_tried_again(settings):
    """A patient folder in latin-1 (not UTF-8) whose file leaves landing between the index and the cache: the
    quarantine row says so under the pseudonymized path (the OSError spells the real path with `\\udcXX`
    escapes, which a plain replace missed), and the image is rendered once the file is back."""
    folder = settings.landing / "h1" / "d1" / os.fsdecode(b"M\xfcller_Anna_19610203")
    path = write_mg(folder / "IMG0001.dcm")
    write_mg(folder / "IMG0002.dcm")
    index_hospital(settings, "h1")
    kept, indexed = path.read_bytes(), os.stat(path).st_mtime_ns
    path.unlink()
    assert cache_hospital(settings, "h1").quarantined == {"source_missing": 1}
    quarantine = read_partition(settings, "quarantine", "h1")
    text = " ".join(map(str, quarantine.to_numpy().ravel()))
    assert "Anna" not in text and "19610203" not in text and "udcfc" not in text
    assert "no longer where the index found it" in text
    path.write_bytes(kept)
    os.utime(path, ns=(indexed, indexed))  # moved back as it was
    again = cache_hospital(settings, "h1")
    assert again.new == 1 and again.quarantined == {}
    assert len(read_manifest(settings, "h1")) == 2 and read_partition(settings, "quarantine", "h1").empty


def test_an_image_whose_kept_copy_cannot_render_is_rendered_from_another_copy(settings):
    """A file damaged in transfer in drop d1, re-sent intact in drop d2: the index keeps d1's copy (first wins) and
    quarantines d2's as `duplicate`; the cache falls back on d2's copy instead of losing the image, records that
    copy as the rendition's source, and the next run finds it current."""
    uid, study = generate_uid(), generate_uid()
    good = write_mg(settings.landing / "h1" / "d2" / "img.dcm", SOPInstanceUID=uid, StudyInstanceUID=study)
    write_damaged_mg(settings.landing / "h1" / "d1" / "img.dcm", SOPInstanceUID=uid, StudyInstanceUID=study)
    index_hospital(settings, "h1")
    quarantine = read_partition(settings, "quarantine", "h1")
    assert list(quarantine["reason"]) == ["duplicate"] and list(quarantine["drop"]) == ["d2"]
    first = cache_hospital(settings, "h1")
    assert (first.new, first.quarantined) == (1, {})
    manifest = read_manifest(settings, "h1")
    assert list(manifest["drop"]) == ["d2"] and resolve(settings, "h1", manifest["rel_path"].iloc[0]) == good
    again = cache_hospital(settings, "h1")
    assert (again.new, again.unchanged) == (0, 1)
    good.unlink()  # no copy renders: the kept copy's failure is the image's, and says the other one failed too
    write_mg(settings.landing / "h1" / "d3" / "other.dcm")  # something for the index to do
    index_hospital(settings, "h1")
    (settings.cache / manifest["model_png"].iloc[0]).unlink()  # the rendition must be made again
    last = cache_hospital(settings, "h1")
    assert last.quarantined == {"undecodable": 1}, last
    message = read_partition(settings, "quarantine", "h1").query("stage == 'cache'")["message"].iloc[0]
    assert "nor did the 1 other copy" in message


def test_a_file_replaced_after_indexing_is_not_rendered_under_the_indexed_images_uid(settings):
    """A landing file replaced by another image between dicom_index and image_cache: its pixels were cached under
    the indexed image's SOP Instance UID, with the index's size and mtime recorded, so even later runs called it
    unchanged (before stop 54). Now it is quarantined `source_changed`, and rendered once the index has read it."""
    path = write_mg(settings.landing / "h1" / "d1" / "IMG0001.dcm")
    index_hospital(settings, "h1")
    indexed = read_partition(settings, "dicom_index", "h1")["sop_instance_uid"].iat[0]
    pixels = (np.arange(96 * 72, dtype=np.uint16) % 4096).tobytes()
    other = write_mg(settings.landing / "h1" / "d1" / "other.tmp", Rows=96, Columns=72, pixel_bytes=pixels)
    os.replace(other, path)  # another image under the indexed name
    result = cache_hospital(settings, "h1")
    assert result.new == 0 and result.quarantined == {"source_changed": 1}
    assert "changed since it was indexed" in " ".join(read_partition(settings, "quarantine", "h1")["message"])
    assert cache_hospital(settings, "h1").quarantined == {"source_changed": 1}  # tried again, still refused
    index_hospital(settings, "h1")
    again = cache_hospital(settings, "h1")
    assert again.new == 1 and again.quarantined == {}
    manifest = read_manifest(settings, "h1")
    assert indexed not in set(manifest["sop_instance_uid"]) and manifest["height"].tolist() == [96]


def test_an_upgrade_to_the_frame_cut_renders_again_only_images_whose_display_shows_a_frame(
    settings, monkeypatch, render_calls
):
    """Version 5 cuts a frame of padding away (`normalize.content_box`). A version-4 cache is rendered again only
    where its display has an edge line of one gray level: the framed image, not the others (on a million-image
    archive, the framed files instead of all). The manifest says what was cut."""
    from mammo_pipeline.dicom import normalize

    cut_frame = normalize.content_box
    uids = _landing(settings)
    framed = np.zeros((48, 64), np.uint16)
    framed[8:40, 6:58] = (np.arange(32 * 52, dtype=np.uint16).reshape(32, 52) % 4000) + 50
    uid = generate_uid()
    write_mg(settings.landing / "h1" / "d1" / "framed" / "img.dcm", SOPInstanceUID=uid, pixel_bytes=framed.tobytes())
    index_hospital(settings, "h1")
    monkeypatch.setattr(cache_module, "NORM_VERSION", "4")  # a cache made by version 4, which cut no frame
    monkeypatch.setattr(normalize, "content_box", lambda *args: None)
    cache_hospital(settings, "h1")
    before = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert set(before["norm_version"]) == {"4"}

    monkeypatch.setattr(cache_module, "NORM_VERSION", "5")  # ... upgraded (version 6 renders every image again)
    monkeypatch.setattr(normalize, "content_box", cut_frame)
    render_calls.clear()
    result = cache_hospital(settings, "h1")
    assert (result.new, result.unchanged) == (1, 3) and len(render_calls) == 2  # + the quarantined image's retry
    after = read_manifest(settings, "h1").set_index("sop_instance_uid")
    assert after.loc[uid, "norm_version"] == "5"
    assert after.loc[uid, "padding_trimmed"] == "top 8, left 6, bottom 8, right 6 px of padding cut"
    for sop in uids:
        assert after.loc[sop, "norm_version"] == "4" and pd.isna(after.loc[sop, "padding_trimmed"])


def test_a_file_that_states_its_pixel_spacing_gets_a_display_at_one_pitch(settings):
    """Version 6: a display shows 24 cm across `display_size` px where the file states its pitch (Imager Pixel
    Spacing first), so a 48 x 64 image of 2.5-mm pixels (a 16-cm field) gets a 683-px display, and the manifest
    says what a display pixel spans; without a spacing, or with one that makes an implausible field, the long side
    is `display_size`, as before, and no mm per pixel is recorded (since version 7: before, the refused spacing's
    was). The kept
    candidates are the second look's of that display, cut with the display size's scales (`long_side`)."""
    from mammo_pipeline.dicom.normalize import REFERENCE_FIELD_MM
    from mammo_pipeline.model import candidate_store
    from mammo_pipeline.model.candidates import candidates

    root = settings.landing / "h1" / "d1"
    spaced, plain = generate_uid(), generate_uid()
    write_mg(root / "spaced" / "img.dcm", SOPInstanceUID=spaced, ImagerPixelSpacing=["2.5", "2.5"])
    write_mg(root / "plain" / "img.dcm", SOPInstanceUID=plain, PixelSpacing=None)
    tiny = generate_uid()  # Pixel Spacing 0.07 on 48 x 64 px: a 4.5-mm field, outside PITCH_RANGE (an error)
    write_mg(root / "tiny" / "img.dcm", SOPInstanceUID=tiny)
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    rows = read_manifest(settings, "h1").set_index("sop_instance_uid")
    long_side = round(64 * 2.5 / REFERENCE_FIELD_MM * settings.display_size)
    shape = (round(long_side * 0.75), long_side)  # 48 rows, 64 columns
    assert (rows.loc[spaced, "display_height"], rows.loc[spaced, "display_width"]) == shape
    assert rows.loc[spaced, "display_mm_per_px"] == pytest.approx(REFERENCE_FIELD_MM / settings.display_size, rel=1e-3)
    assert rows.loc[plain, "display_width"] == settings.display_size and pd.isna(rows.loc[plain, "display_mm_per_px"])
    assert rows.loc[tiny, "display_width"] == settings.display_size
    assert pd.isna(rows.loc[tiny, "display_mm_per_px"])  # the spacing is refused: no mm per pixel is claimed
    assert cache_module.displays_at_pitch(rows, settings.display_size) == 1
    png = settings.cache / rows.loc[spaced, "display_png"]
    with Image.open(png) as img:
        gray = np.asarray(img)
    assert gray.shape == shape
    kept = candidate_store._read(candidate_store.store_path(png), png.stat())
    assert kept is not None
    assert np.array_equal(kept[1], candidates(gray, long_side=settings.display_size)[1])


def _renditions(settings, sop: str) -> set:
    """Every file of one image in its hospital's cache folder: PNGs of any version and size, kept candidates."""
    return set((settings.cache / "h1").rglob(f"{sop}.png")) | set((settings.cache / "h1").rglob(f"{sop}.npz"))


def test_a_withdrawn_images_pngs_and_candidates_are_deleted_and_no_other_file(settings):
    """A file deleted from its drop (a patient's opt-out) lost its manifest row but kept its PNGs and second-look
    candidates in the cache. They are deleted with the row; every other image's files stay as they were, and a
    run after it rewrites nothing."""
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    victim, *others = uids
    assert all(len(_renditions(settings, sop)) == 3 for sop in uids)  # display, model, candidates
    earlier_size = settings.cache / "h1" / cache_module.NORM_VERSION / "512" / f"{victim}.png"
    earlier_size.parent.mkdir()
    earlier_size.write_bytes(b"a display of an earlier MAMMO_DISPLAY_SIZE")
    kept = {p: p.stat().st_mtime_ns for sop in others for p in _renditions(settings, sop)}

    (settings.landing / "h1" / "d1" / "p0" / "img.dcm").unlink()
    index_hospital(settings, "h1")
    result = cache_hospital(settings, "h1")
    assert result.withdrawn == 1 and set(read_manifest(settings, "h1")["sop_instance_uid"]) == set(others)
    assert _renditions(settings, victim) == set()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert not (settings.table_dir("image_cache", "h1") / cache_module.WITHDRAWN_FILES).exists()

    tables = [manifest_path(settings, "h1"), cache_quarantine_path(settings, "h1")]
    written = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in tables]
    again = cache_hospital(settings, "h1")
    assert (again.withdrawn, again.unchanged) == (0, 2)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in tables] == written
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_a_run_killed_before_deleting_leaves_the_list_to_the_next_which_spares_an_image_sent_again(
    settings, monkeypatch
):
    """The manifest without the row is written first (no row ever names a deleted PNG), then the files go; a run
    killed in between leaves their list, and the next run deletes them, unless the file was sent again meanwhile."""
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    source = settings.landing / "h1" / "d1" / "p1" / "img.dcm"
    sent = source.read_bytes()
    source.unlink()
    index_hospital(settings, "h1")
    real = cache_module._delete_renditions

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_delete_renditions", killed)
    with pytest.raises(KeyboardInterrupt):
        cache_hospital(settings, "h1")
    assert uids[1] not in set(read_manifest(settings, "h1")["sop_instance_uid"]) and _renditions(settings, uids[1])
    monkeypatch.setattr(cache_module, "_delete_renditions", real)

    source.write_bytes(sent)  # sent again before the next run
    index_hospital(settings, "h1")
    result = cache_hospital(settings, "h1")
    assert result.new == 1 and len(_renditions(settings, uids[1])) == 3  # rendered again, not deleted
    assert not (settings.table_dir("image_cache", "h1") / cache_module.WITHDRAWN_FILES).exists()

    source.unlink()
    index_hospital(settings, "h1")
    monkeypatch.setattr(cache_module, "_delete_renditions", killed)
    with pytest.raises(KeyboardInterrupt):
        cache_hospital(settings, "h1")
    monkeypatch.setattr(cache_module, "_delete_renditions", real)
    recovered = cache_hospital(settings, "h1")
    assert recovered.withdrawn == 0 and _renditions(settings, uids[1]) == set()
    # ... and its image still reaches the label store (stop 64's probe: the list's images stayed in every queue)
    assert recovered.withdrawn_sops == [uids[1]]


def test_an_image_another_live_run_holds_is_neither_withdrawn_nor_deleted(settings):
    """A row a live overlapping run journaled stays (`_fold`), and so do its files."""
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    row = read_manifest(settings, "h1").set_index("sop_instance_uid").loc[uids[2]].to_dict()
    (settings.landing / "h1" / "d1" / "p2" / "img.dcm").unlink()
    index_hospital(settings, "h1")
    other = cache_module._Journal(settings.table_dir("image_cache", "h1") / f".journal-{run_owner()}.jsonl")
    other.append("manifest", row | {"sop_instance_uid": uids[2]})  # this process: alive
    other.close()
    assert cache_hospital(settings, "h1").withdrawn == 0 and len(_renditions(settings, uids[2])) == 3


def test_an_image_moved_to_another_drop_keeps_its_renditions_and_is_withdrawn_nowhere(settings):
    """dicom_index counted a file moved to another drop of its hospital as withdrawn (and new); it is now
    `moved`. The cache keys its manifest by SOP Instance UID, so it never took the move for a withdrawal: the image
    is rendered again from its new path (its source changed), its manifest row names the new drop, no rendition is
    deleted and nothing goes to the label store to withdraw."""
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    moved = settings.landing / "h1" / "d2" / "p1" / "img.dcm"
    moved.parent.mkdir(parents=True)
    os.rename(settings.landing / "h1" / "d1" / "p1" / "img.dcm", moved)
    indexed = index_hospital(settings, "h1")
    result = cache_hospital(settings, "h1")
    assert (result.withdrawn, result.withdrawn_sops, result.new, result.unchanged) == (0, [], 1, 2)
    assert len(_renditions(settings, uids[1])) == 3  # display, model, candidates
    row = read_manifest(settings, "h1").set_index("sop_instance_uid").loc[uids[1]]
    assert (row["drop"], row["rel_path"]) == ("d2", pseudonymize_path(settings.pseudonym_salt(), "h1/d2/p1/img.dcm"))
    assert not (settings.table_dir("image_cache", "h1") / cache_module.WITHDRAWN_FILES).exists()
    assert (indexed.withdrawn, indexed.new) == (0, 0) and indexed.moved == 1  # and the index says so
