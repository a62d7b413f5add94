from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mammo_pipeline.model import candidate_store, candidates


def _display_png(path: Path, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (512, 400)), 3)
    img = np.clip(np.where(np.arange(400)[None, :] > 60, 120 + 10 * noise / noise.std(), 0), 0, 255)
    img[200:203, 150:163] = 250  # a ribbon clip
    gray = img.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray).save(path)
    return gray


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True)) and tuple(a[3]) == tuple(b[3])


def test_kept_candidates_are_the_ones_cut_from_the_png_and_are_read_back_not_cut_again(tmp_path, monkeypatch):
    png = tmp_path / "h" / "2" / "1024" / "abc.png"
    gray = _display_png(png)
    first = candidate_store.candidates_of_png(png)
    assert _same(first, (*candidates.candidates(gray), gray.shape))
    kept = candidate_store.store_path(png)
    assert kept.is_file() and kept.parent.name == f"candidates-v{candidates.SECOND_LOOK_VERSION}"
    assert [p.name for p in kept.parent.iterdir()] == ["abc.npz"]  # no temp file left behind

    def fail(_):
        raise AssertionError("cut again although kept")

    monkeypatch.setattr(candidate_store, "cut", fail)
    assert _same(candidate_store.candidates_of_png(png), first)
    assert kept.stat().st_size < first[0].nbytes / 2  # deflated: the crops alone take twice as much raw


def test_candidates_kept_raw_by_an_older_release_are_still_read(tmp_path, monkeypatch):
    png = tmp_path / "h" / "2" / "1024" / "old.png"
    gray = _display_png(png, seed=1)
    crops, centres, scores = candidates.candidates(gray)
    stat = png.stat()
    kept = candidate_store.store_path(png)
    kept.parent.mkdir(parents=True)
    np.savez(kept, crops=crops, centres=centres, scores=scores, shape=np.asarray(gray.shape, dtype=np.int64),
             png_mtime_ns=np.int64(stat.st_mtime_ns), png_size=np.int64(stat.st_size))  # fmt: skip

    def fail(_):
        raise AssertionError("cut again although kept")

    monkeypatch.setattr(candidate_store, "cut", fail)
    assert _same(candidate_store.candidates_of_png(png), (crops, centres, scores, gray.shape))


def test_a_png_rendered_again_or_a_damaged_file_gets_its_candidates_cut_again(tmp_path):
    png = tmp_path / "abc.png"
    _display_png(png, seed=0)
    candidate_store.candidates_of_png(png)
    gray = _display_png(png, seed=1)  # the cache rendered this image again: other pixels, other mtime
    stat = png.stat()
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _same(candidate_store.candidates_of_png(png), (*candidates.candidates(gray), gray.shape))
    candidate_store.store_path(png).write_bytes(b"PK\x03\x04 not a whole archive")
    assert _same(candidate_store.candidates_of_png(png), (*candidates.candidates(gray), gray.shape))
    assert np.load(candidate_store.store_path(png))["png_mtime_ns"] == png.stat().st_mtime_ns  # kept anew


def test_an_unwritable_cache_still_gives_the_candidates(tmp_path, monkeypatch):
    png = tmp_path / "abc.png"
    gray = _display_png(png)
    (tmp_path / "a-file").write_text("")  # a folder that cannot be made: its parent is a file
    monkeypatch.setattr(candidate_store, "store_path", lambda p: tmp_path / "a-file" / "cands" / "x.npz")
    assert _same(candidate_store.candidates_of_png(png), (*candidates.candidates(gray), gray.shape))


def test_candidates_kept_by_the_version_before_the_canonical_orientation_are_cut_again(tmp_path, monkeypatch):
    """Version 13 cut a breast stored mirrored as stored; its kept file must not be read by this version, which cuts
    the image with its chest wall at column 0 (a model trained on those crops is refused by the version too)."""
    png = tmp_path / "h" / "2" / "1024" / "right.png"
    gray = _display_png(png)  # air on the left: the chest wall is on the right, so the cut mirrors it
    with monkeypatch.context() as old:
        old.setattr(candidates, "SECOND_LOOK_VERSION", "13")
        stale = (np.zeros((candidates.K, candidates.CHANNELS, candidates.CROP, candidates.CROP), np.float32),)
        candidate_store.keep((*stale, np.zeros((candidates.K, 2), np.int64), np.zeros(candidates.K, np.float32),
                              gray.shape), png)  # fmt: skip
        assert candidate_store.store_path(png).is_file()
    found = candidate_store.candidates_of_png(png)
    assert _same(found, (*candidates.candidates(gray), gray.shape)) and found[0].any()
    mirror = candidates.candidates(np.ascontiguousarray(gray[:, ::-1]))
    kept = found[1][:, 0] >= 0
    assert np.array_equal(found[0], mirror[0])
    assert np.array_equal(found[1][kept, 1], gray.shape[1] - 1 - mirror[1][kept, 1])
