"""Team mode in a real headless Chromium: sign in through the form, label with a key, sign out (CSRF on)."""

from __future__ import annotations

import time

import pytest

from mammo_pipeline.labels.app import create_app, hash_password
from mammo_pipeline.labels.store import LabelStore

from .conftest import write_images
from .live_server import CHROMIUM, chromium, serve

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture
def team_server(settings):
    store = LabelStore(settings.labels_db)
    store.sync_images(write_images(settings.cache, 4), audit_fraction=0.0)
    app = create_app(settings, team=True, users={"bob": hash_password("builder")}, secret="browser-test")
    with serve(app) as url:
        yield url, store


def test_sign_in_label_and_sign_out_through_the_pages(team_server):
    url, store = team_server
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)  # redirected to the sign-in page
        page.fill("input[name=name]", "bob")
        page.fill("input[name=password]", "builder")
        page.click("button")
        page.wait_for_selector("#shot")
        statuses: list[int] = []
        page.on("response", lambda r: statuses.append(r.status) if r.request.method == "POST" else None)
        page.keyboard.press("3")
        page.wait_for_function("() => !document.querySelector('.htmx-request')", timeout=15000)
        deadline = time.monotonic() + 10
        while not statuses and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert statuses == [200]
        assert store.events()["annotator"].tolist() == ["bob"]
        cookie = next(c for c in context.cookies() if c["name"] == "mammo_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        page.click("text=Sign out")
        page.wait_for_url(f"{url}/login")
        replay = browser.new_context()
        replay.add_cookies([cookie])  # the cookie from before the sign-out
        again = replay.new_page()
        again.goto(url)
        assert again.url == f"{url}/login"
