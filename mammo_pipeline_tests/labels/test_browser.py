"""The app in a real headless Chromium: a burst of keys labels consecutive images and none is lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mammo_pipeline.labels.app import create_app
from mammo_pipeline.labels.store import LabelStore

from .conftest import write_images
from .live_server import CHROMIUM, chromium, serve

# The README's picture; a test run writes its screenshot to a temporary folder instead, so `make test` leaves the
# checkout as it found it (`make pictures` sets MAMMO_UPDATE_PICTURES=1 to refresh the README's copy).
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "labeling_app.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture
def server(settings):
    """The app on a free loopback port, over a store of 8 mammogram-like images with model hints."""
    manifest = write_images(settings.cache, 8, size=(640, 512), synth=True)
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=0.0)
    hints = manifest[["sop_instance_uid"]].assign(
        p_biopsy=[0.91, 0.07, 0.12, 0.88, 0.86, 0.3, 0.2, 0.55],
        p_mag=[0.03, 0.94, 0.1, 0.81, 0.12, 0.62, 0.3, 0.7],
        model_version="20261127-demo",
        out_of_sample=True,
    )
    store.set_predictions(hints)
    app = create_app(settings, annotator="reader1", secret="browser-test")
    with serve(app) as url:
        yield url, store


def test_key_burst_labels_consecutive_images_and_undo(server, tmp_path):
    url, store = server
    shot = SCREENSHOT if os.environ.get("MAMMO_UPDATE_PICTURES") == "1" else tmp_path / SCREENSHOT.name
    order = store.queue("unlabeled", "reader1", limit=8)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        posts: list[str] = []
        done: list[int] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.on("response", lambda r: done.append(r.status) if r.request.method == "POST" else None)
        page.goto(url)
        page.wait_for_selector("#shot")
        assert page.input_value("#image_id") == str(order[0])

        page.keyboard.press("Alt+2")  # a modifier held: not a label
        page.evaluate("document.body.append(Object.assign(document.createElement('input'), {id: 'note'}))")
        page.type("#note", "12")  # typing in a field: not a label
        page.evaluate("document.getElementById('note').remove()")
        page.wait_for_timeout(200)
        assert posts == []
        for key in ("2", "3", "Numpad1", "4", "3"):  # the burst 2 3 1 4 3, no waits (the 1 on the numpad)
            page.keyboard.press(key)
        page.keyboard.press("z")
        page.wait_for_function("() => !document.querySelector('.htmx-request')", timeout=15000)
        deadline = time.monotonic() + 15
        while len(done) < 6 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert len(posts) == 6 and done == [200] * 6

        events = store.events()
        assert events["image_id"].tolist() == order[:5]
        assert events["label"].tolist() == ["mag", "neither", "biopsy", "both", "neither"]
        assert events["undone"].tolist() == [False, False, False, False, True]
        assert set(events["annotator"]) == {"reader1"}
        assert store.current_labels()["image_id"].tolist() == sorted(order[:4])
        # After the undo the card shows the undone image again, ready to relabel.
        assert page.input_value("#image_id") == str(order[4])
        assert page.locator("#recent li").count() == 4

        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        # The screenshot: an image with biopsy clips (conftest draws kinds in turn; the fifth has clips).
        page.locator("input[data-var='--contrast']").fill("1.15")
        clipped = int(store.images()["id"].iloc[4])
        page.goto(f"{url}/?image_id={clipped}")
        page.wait_for_function("() => document.getElementById('shot').complete")
        assert (
            page.evaluate("getComputedStyle(document.getElementById('stage')).getPropertyValue('--contrast')") == "1.15"
        )
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_stale_key_press_writes_nothing_and_refreshes_the_card(server):
    url, store = server
    with chromium() as browser:
        page = browser.new_page()
        page.goto(url)
        image = int(page.input_value("#image_id"))
        other = store.record(image, 4, "reader2")  # someone else labels the image on screen
        page.keyboard.press("1")
        page.wait_for_function(f"() => document.getElementById('seen_event').value === '{other}'", timeout=10000)
        assert "labeled both by reader2" in page.inner_text("#card")
        assert "relabeled meanwhile" in page.inner_text("#toast")
        assert len(store.events()) == 1
        page.keyboard.press("1")  # now an informed relabel
        # the page advances at once (optimistic) and posts behind it: wait for the server to have written it
        deadline = time.monotonic() + 10
        while len(store.events()) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert page.input_value("#image_id") != str(image)  # and moved on to the next image
        assert store.events()[["annotator", "label", "seen_event"]].values.tolist()[-1] == ["reader1", "biopsy", other]


# Records, at every key press, the image on screen before the app handles the key (window, capture phase) and
# the one on screen right after (window, bubble phase), and counts the server's answers as they arrive.
RECORDER = """
window.__presses = []; window.__answers = 0;
document.addEventListener('mammo:answered', () => { window.__answers += 1; });
const onScreen = () => {
  const s = document.getElementById('shot');
  if (!s) return {id: null, painted: false};
  const r = s.getBoundingClientRect();
  return {id: s.dataset.imageId, painted: s.complete && s.naturalWidth > 0 && r.width > 0 && r.height > 0};
};
window.addEventListener('keydown', (e) => {
  window.__presses.push({key: e.key, before: onScreen(), answers: window.__answers});
}, true);
window.addEventListener('keydown', () => {
  const last = window.__presses[window.__presses.length - 1];
  last.after = onScreen();
});
"""


def test_each_key_labels_the_image_on_screen_and_the_next_shows_before_the_server_answers(server, monkeypatch):
    url, store = server
    order = store.queue("unlabeled", "reader1", limit=8)
    slow = LabelStore.record

    def record_slowly(self, *args, **kwargs):  # a slow server: each answer takes at least a second
        time.sleep(1.0)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(LabelStore, "record", record_slowly)
    with chromium() as browser:
        page = browser.new_page()
        page.add_init_script(RECORDER)
        page.goto(url)
        page.wait_for_function("() => [...document.querySelectorAll('#card img.shot')].every(i => i.complete)")
        keys = ["2", "3", "1", "4", "3"]
        for key in keys:  # a burst, no waits
            page.keyboard.press(key)
        page.wait_for_function(f"() => window.__answers >= {len(keys)}", timeout=30000)
        presses = page.evaluate("window.__presses")

        assert [p["key"] for p in presses] == keys
        shown = [int(p["before"]["id"]) for p in presses]
        assert shown == order[:5]  # consecutive images, in queue order
        assert all(p["before"]["painted"] for p in presses)  # each was on screen (loaded, laid out) at its key
        # the next image was on screen as soon as the key was handled, before that key's answer (press i had
        # at most i answers back: its own was still out), and the first ones before any answer at all
        assert [int(p["after"]["id"]) for p in presses] == order[1:6]
        assert all(p["after"]["painted"] for p in presses)
        assert all(p["answers"] <= i for i, p in enumerate(presses)) and presses[0]["answers"] == 0
        events = store.events()
        assert events["image_id"].tolist() == shown  # the stored events are the images that were on screen
        assert events["label"].tolist() == ["mag", "neither", "biopsy", "both", "neither"]
        assert page.input_value("#image_id") == str(order[5])


def test_f_key_and_mouse_wheel_show_a_native_resolution_crop_around_the_pointer(settings):

    from mammo_pipeline_tests.dicom.crafted import breast, make_ds

    manifest = write_images(settings.cache, 2, size=(300, 240))
    rel = "h1/d1/p0/zoom.dcm"
    (settings.landing / rel).parent.mkdir(parents=True, exist_ok=True)
    make_ds(breast(1200, 960), WindowCenter=1800, WindowWidth=3000).save_as(
        settings.landing / rel, enforce_file_format=True
    )
    manifest["rel_path"] = [rel, rel]
    store = LabelStore(settings.labels_db)
    store.sync_images(manifest, audit_fraction=0.0)
    app = create_app(settings, annotator="reader1", secret="browser-test")
    with serve(app) as url:
        _zoom_in_the_browser(url)


def _zoom_in_the_browser(url: str) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        zooms: list[str] = []
        page.on("request", lambda r: zooms.append(r.url) if "/zoom/" in r.url else None)
        page.goto(f"{url}/")
        box = page.locator("#shot").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
        page.keyboard.press("f")
        page.wait_for_function("() => !document.getElementById('loupe').hidden", timeout=15000)
        page.wait_for_function("() => document.getElementById('loupe-img').naturalWidth > 0")
        # native resolution: a 512 x 512 crop of the 1200 x 960 DICOM, not of the 300 x 240 display PNG
        assert page.evaluate(
            "[document.getElementById('loupe-img').naturalWidth, document.getElementById('loupe-img').naturalHeight]"
        ) == [512, 512]
        x, y = (float(v.split("=")[1]) for v in zooms[-1].split("?")[1].split("&"))
        assert abs(x - 0.25) < 0.02 and abs(y - 0.75) < 0.02
        page.mouse.wheel(0, 200)  # wheel down closes it
        page.wait_for_function("() => document.getElementById('loupe').hidden")
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
        page.mouse.wheel(0, -200)  # wheel up opens it again, around the new pointer position
        page.wait_for_function("() => !document.getElementById('loupe').hidden", timeout=15000)
        assert len(zooms) == 2 and "x=0.5" in zooms[-1]
