"""The labeling app on a network (issue 14): each attack a page, a neighbour or a guesser could try is refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.testclient import TestClient

from mammo_pipeline.labels import security
from mammo_pipeline.labels.app import create_app, hash_password
from mammo_pipeline_tests.labels.clients import ORIGIN, BrowserClient, page_token
from mammo_pipeline_tests.labels.conftest import event_count

HX = {"HX-Request": "true"}
USERS = {"alice": "wonderland", "bob": hash_password("builder")}


@pytest.fixture
def solo(settings, store):
    return create_app(settings, annotator="alice", secret="test-secret")


@pytest.fixture
def team_app(settings, store):
    return create_app(settings, team=True, users=dict(USERS), secret="test-secret")


def _signed_in(app, name: str = "bob", password: str = "builder") -> BrowserClient:
    client = BrowserClient(app)
    assert client.post("/login", data={"name": name, "password": password}, follow_redirects=False).status_code == 303
    return client


def raw_post(client: TestClient, path: str, **kwargs):
    """A POST with exactly the headers given (no Origin or token added by BrowserClient)."""
    return TestClient.request(client, "POST", path, **kwargs)


def _label_form(store) -> dict[str, str]:
    return {"label": "1", "image_id": str(store.queue("unlabeled", "alice")[0]), "q": "unlabeled"}


# -- CSRF --------------------------------------------------------------------------------------------
def test_cross_site_form_post_cannot_label_in_single_user_mode(solo, store):
    victim = BrowserClient(solo)
    token = page_token(victim.get("/").text)
    # A page on evil.example posts a form to the app: the browser adds Origin, and (SameSite=Strict) no cookie.
    attacker = TestClient(solo, base_url=ORIGIN)
    r = attacker.post("/label", data=_label_form(store), headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    # Even with the victim's cookie and a stolen token, a foreign Origin or Referer is refused.
    for header in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}, {"Origin": "null"}):
        r = raw_post(victim, "/label", data=_label_form(store), headers={**header, "X-CSRF-Token": token})
        assert r.status_code == 403, header
    assert event_count(store) == 0


def test_same_host_other_port_cannot_label_as_the_signed_in_user(team_app, store):
    victim = _signed_in(team_app)
    token = page_token(victim.get("/").text)
    other_port = {"Origin": "http://localhost:8080"}  # a page served on the same host at another port
    r = raw_post(victim, "/label", data=_label_form(store), headers={**other_port, **HX})
    assert r.status_code == 403
    r = raw_post(victim, "/label", data=_label_form(store), headers={**other_port, "X-CSRF-Token": token})
    assert r.status_code == 403
    assert event_count(store) == 0


def test_a_state_change_without_the_session_token_is_refused(team_app, store):
    client = _signed_in(team_app)
    form = _label_form(store)
    same_origin = {"Origin": ORIGIN, **HX}
    assert raw_post(client, "/label", data=form, headers=same_origin).status_code == 403
    wrong = {**same_origin, "X-CSRF-Token": "x" * 43}
    assert raw_post(client, "/label", data=form, headers=wrong).status_code == 403
    for path in ("/skip", "/undo", "/blind", "/logout"):
        assert raw_post(client, path, data=form, headers=same_origin).status_code == 403, path
    assert event_count(store) == 0
    # The page's token works as a header (htmx) and as a form field (plain forms).
    token = page_token(client.get("/").text)
    ok = raw_post(client, "/label", data=form, headers={**same_origin, "X-CSRF-Token": token})
    assert ok.status_code == 200 and event_count(store) == 1
    multipart = {"data": {"csrf_token": token}, "files": {"f": ("f.txt", b"x")}}  # FastHTML's Form default
    assert raw_post(client, "/blind", headers={"Origin": ORIGIN}, **multipart).status_code == 204
    as_field = raw_post(
        client, "/logout", data={"csrf_token": token}, headers={"Origin": ORIGIN}, follow_redirects=False
    )
    assert as_field.status_code == 303


def test_pages_carry_the_token_for_htmx_and_forms(solo):
    html = BrowserClient(solo).get("/").text
    token = page_token(html)
    assert f'hx-headers=\'{{"X-CSRF-Token": "{token}"}}\'' in html or "X-CSRF-Token" in html.split("<body", 1)[1]
    assert 'src="/static/csrf.js"' in html


# -- Host ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:5001", "localhost.evil.example", ""])
def test_a_foreign_host_header_is_refused(team_app, solo, host):
    for app in (solo, team_app):
        client = TestClient(app, base_url=ORIGIN)
        r = client.get("/export.csv", headers={"Host": host})
        assert r.status_code == 400 and "label_events" not in r.text


def test_allowed_hosts_from_the_bind_address_and_the_environment():
    hosts = security.allowed_hosts("10.0.0.5", {"MAMMO_ALLOWED_HOSTS": "labels.example.org, *.ward.example"})
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.5", "labels.example.org"} <= set(hosts)
    assert security.host_allowed("labels.example.org:443", hosts)
    assert security.host_allowed("a.ward.example", hosts) and not security.host_allowed("ward.example.evil", hosts)
    assert security.host_allowed("[::1]:5001", hosts)
    assert "0.0.0.0" not in security.allowed_hosts("0.0.0.0", {})


# -- sessions ------------------------------------------------------------------------------------------
def test_a_replayed_cookie_after_logout_is_refused(team_app, store):
    client = _signed_in(team_app)
    stolen = client.cookies.get("mammo_session")
    assert client.get("/", follow_redirects=False).status_code == 200
    assert client.post("/logout", follow_redirects=False).status_code == 303

    replay = BrowserClient(team_app)
    replay.cookies.set("mammo_session", stolen)
    assert replay.get("/", follow_redirects=False).status_code == 303  # back to the sign-in page
    assert replay.get("/export.csv").status_code == 401
    form = _label_form(store)
    assert replay.post("/label", data=form, headers=HX).status_code in (401, 403)
    assert event_count(store) == 0


def test_session_cookie_is_httponly_strict_hours_and_secure_over_https(team_app):
    client = _signed_in(team_app)
    login = client.post("/login", data={"name": "bob", "password": "builder"}, follow_redirects=False)
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    max_age = int(cookie.split("max-age=", 1)[1].split(";", 1)[0])
    assert 3600 <= max_age <= 12 * 3600
    https = BrowserClient(team_app)
    https.base_url = https.base_url.copy_with(scheme="https")
    page = https.get("/login", headers={"Host": "localhost:5001"})
    assert "secure" in page.headers["set-cookie"].lower()


def test_sessions_expire_on_the_server():
    registry = security.SessionRegistry(hours=1 / 3600)  # one second
    session: dict = {}
    registry.start(session, "bob")
    assert registry.valid(session, "bob") and not registry.valid(session, "alice")
    time.sleep(1.1)
    assert not registry.valid(session, "bob")


# -- logins --------------------------------------------------------------------------------------------
def test_a_burst_of_wrong_passwords_is_throttled_per_user(team_app):
    client = BrowserClient(team_app)
    codes = [client.post("/login", data={"name": "bob", "password": f"guess{i}"}).status_code for i in range(8)]
    assert codes[: security.LOGIN_FAILURES_PER_USER] == [401] * security.LOGIN_FAILURES_PER_USER
    assert set(codes[security.LOGIN_FAILURES_PER_USER :]) == {429}
    locked = client.post("/login", data={"name": "bob", "password": "builder"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0  # even the right one, for now
    assert _signed_in(team_app, "alice", "wonderland")  # another user is not locked out


def test_a_burst_of_names_from_one_address_is_throttled():
    throttle = security.LoginThrottle(per_user=5, per_address=20, window_s=60)
    for i in range(20):
        assert throttle.retry_after(f"user{i}", "10.0.0.9", now=1000.0) == 0
        throttle.failure(f"user{i}", "10.0.0.9", now=1000.0)
    assert throttle.retry_after("user99", "10.0.0.9", now=1001.0) == pytest.approx(59.0)
    assert throttle.retry_after("user99", "10.0.0.10", now=1001.0) == 0  # another address
    assert throttle.retry_after("user99", "10.0.0.9", now=1061.0) == 0  # the window slid past


def test_login_costs_the_same_for_known_and_unknown_names(monkeypatch):
    """One PBKDF2 of the same iterations whatever the name: a stored hash, a plain secret or an unknown name, so
    response time does not reveal which names exist. Counted, not timed: a timing ratio failed on a loaded machine
    (stop 58's CI, 0.4998 against a bound of 0.5) although the work was the same."""
    import hashlib

    from mammo_pipeline.labels.app import _ITERATIONS

    users = {"alice": "wonderland", "bob": hash_password("builder")}
    real, calls = hashlib.pbkdf2_hmac, []

    def counted(name, password, salt, iterations, *rest):
        calls.append(iterations)
        return real(name, password, salt, iterations, *rest)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
    for name in ("bob", "mallory", "alice"):
        calls.clear()
        assert not security.verify_login(users, name, "wrong")
        assert calls == [_ITERATIONS], name
    assert security.verify_login(users, "bob", "builder") and security.verify_login(users, "alice", "wonderland")
    assert not security.verify_login(users, "mallory", "builder")


def _chunked_post(app, path: str, chunks: int, size: int) -> tuple[int, list[dict]]:
    """POST a chunked body (no Content-Length) straight through ASGI; (chunks the app pulled, messages sent)."""
    served = 0
    sent: list[dict] = []

    async def receive():
        nonlocal served
        served += 1
        return {"type": "http.request", "body": b"a" * size, "more_body": served < chunks}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost:5001"), (b"content-type", b"application/x-www-form-urlencoded")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5001),
    }
    asyncio.run(app(scope, receive, send))
    return served, sent


# -- body size -----------------------------------------------------------------------------------------
def test_an_oversized_body_is_refused_before_it_is_read(team_app, solo, store):
    client = BrowserClient(solo)
    big = "x" * (security.MAX_BODY_BYTES + 1)
    r = client.post("/label", data={"label": "1", "image_id": "1", "pad": big}, headers=HX)
    assert r.status_code == 413
    anonymous = TestClient(team_app, base_url=ORIGIN)
    assert anonymous.post("/login", content=b"a" * 10_000_000).status_code == 413
    served, sent = _chunked_post(team_app, "/login", chunks=1000, size=16_384)
    assert sent[0]["status"] == 413
    assert served * 16_384 <= security.MAX_BODY_BYTES + 16_384  # the app stopped asking for more at the limit
    assert event_count(store) == 0
