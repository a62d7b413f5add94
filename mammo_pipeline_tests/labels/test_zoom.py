"""Full-resolution zoom: native-resolution crops of the DICOM through the display pipeline, cached, PNG only;
bad coordinates and unknown images get 4xx. And the heat-map route's graceful answers without a model."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest
from PIL import Image

from mammo_pipeline.dicom.normalize import render
from mammo_pipeline.labels.app import create_app
from mammo_pipeline.labels.store import LabelStore
from mammo_pipeline.labels.zoom import GRID, crop_box
from mammo_pipeline_tests.dicom.crafted import breast, make_ds
from mammo_pipeline_tests.labels.clients import BrowserClient

from .conftest import write_images

ROWS, COLS = 600, 420


@pytest.fixture
def zoomed(settings):
    """A store whose first image has a real DICOM (12-bit, windowed) under the landing folder."""
    manifest = write_images(settings.cache, 3)
    rel = "h1/drop-1/p0/one.dcm"
    path = settings.landing / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_ds(breast(ROWS, COLS), WindowCenter=1800, WindowWidth=3000)
    ds.save_as(path, enforce_file_format=True)
    manifest["rel_path"] = [rel, None, "../../outside.dcm"]
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=0.0)
    ids = store.images()["id"].tolist()
    return BrowserClient(create_app(settings, annotator="alice", secret="s")), ids, path


def _png(r) -> np.ndarray:
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_crop_is_native_resolution_through_the_display_pipeline_and_cached(zoomed, settings):
    client, ids, path = zoomed
    r = client.get(f"/zoom/{ids[0]}", params={"x": 0.5, "y": 0.25, "size": 128})
    crop = _png(r)
    full = render(path, (max(ROWS, COLS),)).images[max(ROWS, COLS)]
    assert full.shape == (ROWS, COLS)  # native size: no resampling
    top, left, bottom, right = crop_box((ROWS, COLS), 0.5, 0.25, 128)
    assert crop.shape == (128, 128) and np.array_equal(crop, full[top:bottom, left:right])
    assert abs((top + bottom) / 2 - 0.25 * (ROWS - 1)) <= GRID and abs((left + right) / 2 - 0.5 * (COLS - 1)) <= GRID
    cached = list((settings.cache / "_zoom" / str(ids[0])).glob("*.png"))
    assert len(cached) == 1
    # served from the cached file afterwards (a nearby pointer snaps to the same crop)
    assert client.get(f"/zoom/{ids[0]}", params={"x": 0.501, "y": 0.2501, "size": 128}).content == r.content
    assert len(list((settings.cache / "_zoom" / str(ids[0])).glob("*.png"))) == 1


def test_crops_at_the_edges_stay_inside_the_image(zoomed):
    client, ids, _ = zoomed
    for x, y in ((0, 0), (1, 1), (0, 1), (1, 0)):
        assert _png(client.get(f"/zoom/{ids[0]}", params={"x": x, "y": y})).shape == (512, 420)  # size 512 > 420 cols
    assert crop_box((ROWS, COLS), 1.0, 1.0, 256) == (ROWS - 256, COLS - 256, ROWS, COLS)
    assert crop_box((ROWS, COLS), 0.0, 0.0, 256) == (0, 0, 256, 256)


@pytest.mark.parametrize(
    "params",
    [
        {"x": "-0.1", "y": "0.5"},
        {"x": "1.5", "y": "0.5"},
        {"x": "abc", "y": "0.5"},
        {"x": "nan", "y": "0.5"},
        {"x": "inf", "y": "0.5"},
        {"x": "0.5"},
        {},
        {"x": "0.5", "y": "0.5", "size": "5000"},
        {"x": "0.5", "y": "0.5", "size": "-3"},
        {"x": "0.5", "y": "0.5", "size": "1e3"},
    ],
)
def test_bad_coordinates_are_422(zoomed, params):
    client, ids, _ = zoomed
    r = client.get(f"/zoom/{ids[0]}", params=params)
    assert r.status_code == 422 and "must be" in r.text


def test_unknown_image_or_missing_dicom_is_404(zoomed):
    client, ids, _ = zoomed
    ok = {"x": 0.5, "y": 0.5}
    assert client.get("/zoom/999999", params=ok).status_code == 404
    assert client.get("/zoom/-1", params=ok).status_code == 404
    assert client.get("/zoom/..%2f..%2fetc", params=ok).status_code == 404
    r = client.get(f"/zoom/{ids[1]}", params=ok)  # no DICOM known
    assert r.status_code == 404 and "no DICOM" in r.text
    assert client.get(f"/zoom/{ids[2]}", params=ok).status_code == 404  # a path outside the landing folder


def test_a_dicom_that_cannot_be_rendered_is_404_without_its_real_path(zoomed):
    """The landing path names the patient's folder (p0 here): the reason is told, the path is not."""
    client, ids, path = zoomed
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the pixel data ends early
    r = client.get(f"/zoom/{ids[0]}", params={"x": 0.5, "y": 0.5})
    assert r.status_code == 404 and "cannot be rendered" in r.text and "Pixel Data" in r.text
    assert "one.dcm" not in r.text and "/p0/" not in r.text and "drop-1" not in r.text


def test_heat_map_without_the_explain_module_or_a_model_is_a_clear_503_or_404(zoomed, monkeypatch):
    client, ids, _ = zoomed
    monkeypatch.setitem(sys.modules, "mammo_pipeline.model.explain", None)  # not installed: import fails
    r = client.get(f"/heatmap/{ids[0]}")
    assert r.status_code == 503 and "explain" in r.text
    assert client.get("/heatmap/999999").status_code == 404

    def no_model(settings, hospital, sop_instance_uid):
        raise FileNotFoundError("no trained model in MAMMO_MODELS")

    monkeypatch.setitem(sys.modules, "mammo_pipeline.model.explain", types.SimpleNamespace(heatmap_png=no_model))
    r = client.get(f"/heatmap/{ids[0]}")
    assert r.status_code == 404 and "no trained model" in r.text


def test_zoom_finds_the_dicom_behind_a_pseudonymized_path(settings):
    """The store holds the index's pseudonymized rel_path; the zoom resolves it through the private lookup."""
    from mammo_pipeline.cache import cache_hospital, read_manifest
    from mammo_pipeline.dicom.index import index_hospital
    from mammo_pipeline_tests.dicom.test_headers import write_mg

    write_mg(settings.landing / "h1" / "d1" / "PATIENT123" / "img.dcm")
    index_hospital(settings, "h1")
    cache_hospital(settings, "h1")
    manifest = read_manifest(settings, "h1")
    assert "PATIENT123" not in manifest["rel_path"].iloc[0]
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=0.0)
    client = BrowserClient(create_app(settings, annotator="alice", secret="s"))
    crop = _png(client.get(f"/zoom/{store.images()['id'].iloc[0]}", params={"x": 0.5, "y": 0.5, "size": 64}))
    assert crop.shape == (48, 64)  # the whole 64 x 48 image: a crop is never larger than its source


def test_crops_of_a_framed_image_land_on_the_pixels_the_display_shows_and_survive_a_restart(settings, monkeypatch):
    """The display cuts a frame of padding away (`normalize.content_box`), so the app's fractions are fractions of
    the image inside it: (0, 0) is the image's corner, not the frame's. After a restart, a crop cached on disk is
    served without rendering the file again."""
    from mammo_pipeline.labels.zoom import ZoomCache

    inner = breast(ROWS, COLS).astype(np.int32) + 300  # gray air: nothing at the darkest value
    framed = np.zeros((ROWS + 200, COLS + 100), np.uint16)
    framed[120 : 120 + ROWS, 40 : 40 + COLS] = inner
    path = settings.landing / "h1" / "d1" / "framed.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_ds(framed, WindowCenter=1800, WindowWidth=3000).save_as(path, enforce_file_format=True)
    expected = render(make_ds(inner.astype(np.uint16), WindowCenter=1800, WindowWidth=3000), (ROWS,)).images[ROWS]

    zoom = ZoomCache(settings.landing, settings.cache / "_zoom")
    crop = np.asarray(Image.open(io.BytesIO(zoom.crop_png(7, "h1/d1/framed.dcm", 0.0, 0.0, 128))))
    np.testing.assert_array_equal(crop, expected[:128, :128])
    assert zoom.shape(path, 7) == (ROWS, COLS)

    restarted = ZoomCache(settings.landing, settings.cache / "_zoom")
    monkeypatch.setattr(ZoomCache, "full", lambda self, p: pytest.fail("rendered again"))
    again = np.asarray(Image.open(io.BytesIO(restarted.crop_png(7, "h1/d1/framed.dcm", 0.0, 0.0, 128))))
    np.testing.assert_array_equal(again, crop)


def test_a_heat_map_of_an_image_pil_cannot_read_is_a_clear_503(zoomed, monkeypatch):
    """A corrupt or empty model PNG made PIL raise UnidentifiedImageError (an OSError) inside the heat map: a bare
    500 (stop 62's probe). It is a heat map the model cannot draw, as the README says: 503 with the reason."""
    from PIL import UnidentifiedImageError

    client, ids, _ = zoomed

    def corrupt(settings, hospital, sop_instance_uid):
        raise UnidentifiedImageError("cannot identify image file 'x.png'")

    monkeypatch.setitem(sys.modules, "mammo_pipeline.model.explain", types.SimpleNamespace(heatmap_png=corrupt))
    r = client.get(f"/heatmap/{ids[0]}")
    assert r.status_code == 503 and "no heat map: cannot identify image file" in r.text
