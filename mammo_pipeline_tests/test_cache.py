"""The image cache: both PNGs per usable image, quarantine of decode failures, incremental and crash-safe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from mammo_pipeline import cache as cache_module
from mammo_pipeline.cache import cache_hospital, read_manifest
from mammo_pipeline.dicom.headers import MG_FOR_PROCESSING
from mammo_pipeline.dicom.index import index_hospital
from mammo_pipeline.dicom.source_paths import pseudonymize_path
from mammo_pipeline.warehouse import read_partition
from mammo_pipeline_tests.dicom.test_headers import write_mg


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
    pngs = sorted((settings.cache / "h1").rglob("*.png"))
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    render_calls.clear()

    again = cache_hospital(settings, "h1")
    assert render_calls == []  # neither cached nor quarantined images are rendered again
    assert (again.new, again.unchanged, again.still_quarantined, again.rows) == (0, 3, 1, 3)
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes


def test_cache_hospital_after_a_crash_completes_the_rest(settings, render_calls):
    uids = _landing(settings)
    cache_hospital(settings, "h1")
    victim = uids[1]
    (settings.cache / "h1" / cache_module.NORM_VERSION / str(settings.model_size) / f"{victim}.png").unlink()
    stale = settings.cache / "h1" / cache_module.NORM_VERSION / "1024" / f".{uids[0]}.png.deadbeef.tmp"
    stale.write_bytes(b"half a png")
    render_calls.clear()

    result = cache_hospital(settings, "h1")
    assert not stale.exists()
    assert len(render_calls) == 1 and result.new == 1 and result.unchanged == 2
    assert (settings.cache / "h1" / cache_module.NORM_VERSION / str(settings.model_size) / f"{victim}.png").exists()
    assert not list((settings.cache / "h1").rglob("*.tmp"))


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


def test_cache_hospital_in_a_process_pool(settings):
    _landing(settings)
    seen: list[tuple[int, int]] = []
    result = cache_hospital(dataclasses.replace(settings, workers=2), "h1", progress=lambda d, t: seen.append((d, t)))
    assert result.new == 3 and sum(result.quarantined.values()) == 1
    assert seen[-1] == (4, 4) and result.images_per_s > 0


def test_cache_hospital_without_index_is_empty(settings):
    result = cache_hospital(settings, "nowhere")
    assert (result.images, result.new, result.rows) == (0, 0, 0)
    assert read_manifest(settings, "nowhere").empty
