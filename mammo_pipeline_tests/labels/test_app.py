"""Every route of the labeling app, and every bad request refused with a 4xx that writes nothing."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient

from mammo_pipeline.labels.app import check_password, create_app, hash_password, load_annotators
from mammo_pipeline_tests.labels.clients import BrowserClient

from .conftest import event_count, write_images

HX = {"HX-Request": "true"}


@pytest.fixture
def client(settings, store) -> TestClient:
    return BrowserClient(create_app(settings, annotator="alice", secret="test-secret"))


@pytest.fixture
def team(settings, store) -> TestClient:
    users = {"alice": "wonderland", "bob": hash_password("builder")}
    return BrowserClient(create_app(settings, team=True, users=users, secret="test-secret"))


def _card_state(html: str) -> tuple[int, int]:
    """(image_id, seen_event) from a card's hidden inputs."""

    def value(name: str) -> int:
        return int(html.split(f'name="{name}" value="', 1)[1].split('"', 1)[0])

    return value("image_id"), value("seen_event")


def _slides(html: str) -> list[tuple[int, bool]]:
    """(image id, hidden) of a card's slides in page order."""
    return [
        (int(m[1]), bool(m[0])) for m in re.findall(r'<div (hidden )?data-image-id="(\d+)"[^>]*class="slide"', html)
    ]


def _label(client: TestClient, label: str, image_id: int | str, seen: int | str | None = 0, **extra):
    data = {"label": label, "image_id": str(image_id), "q": "unlabeled", **extra}
    if seen is not None:
        data["seen_event"] = str(seen)
    return client.post("/label", data=data, headers=HX)


def test_page_has_key_hints_local_htmx_and_the_first_image(client, store):
    r = client.get("/")
    assert r.status_code == 200
    for hint in ("biopsy marker", "magnification view", "neither", "both", "skip", "undo"):
        assert hint in r.text
    assert '<script src="/static/htmx.min.js">' in r.text and "cdn" not in r.text.lower()
    # the image on screen plus the next ones already in the page (hidden), in queue order
    order = store.queue("unlabeled", "alice", limit=6)
    assert _slides(r.text) == [(order[0], False)] + [(i, True) for i in order[1:]]
    assert _card_state(r.text) == (order[0], 0)
    assert client.get("/static/htmx.min.js").status_code == 200
    assert "0BSD" in client.get("/static/htmx.min.js").text[:200]
    for path in ("/pyproject.toml", "/static/../app.py", "/static/%2e%2e/app.py", "/app.py"):
        assert client.get(path).status_code == 404


def test_label_records_as_the_app_annotator_and_returns_the_next_card(client, store):
    first, second = store.queue("unlabeled", "alice", limit=2)
    r = _label(client, "2", first)
    assert r.status_code == 200
    assert _card_state(r.text) == (second, 0)
    assert 'id="recent"' in r.text and 'hx-swap-oob="true"' in r.text
    cur = store.current_labels()
    assert cur[["image_id", "label", "annotator"]].values.tolist() == [[first, "mag", "alice"]]


@pytest.mark.parametrize("label", ["0", "5", "1.5", "neither", "", "-1", "１"])
def test_bad_label_is_422_and_writes_nothing(client, store, label):
    r = _label(client, label, store.queue("unlabeled", "alice")[0])
    assert r.status_code == 422
    assert event_count(store) == 0


@pytest.mark.parametrize("image_id", ["999", "-1", "../../etc/passwd", "..%2f..%2fetc", "1.5", "", "9" * 30])
def test_unknown_or_pathlike_image_id_is_404_and_writes_nothing(client, store, image_id):
    assert _label(client, "1", image_id).status_code == 404
    assert event_count(store) == 0


def test_label_without_image_id_field_is_404(client, store):
    assert client.post("/label", data={"label": "1"}, headers=HX).status_code == 404
    assert client.post("/label", data={}, headers=HX).status_code == 422
    assert event_count(store) == 0


def test_forged_annotator_is_ignored(client, store):
    image = store.queue("unlabeled", "alice")[0]
    client.cookies.set("annotator", "mallory")
    client.cookies.set("auth", "mallory")
    r = client.post(
        "/label?annotator=mallory",
        data={"label": "1", "image_id": str(image), "annotator": "mallory", "auth": "mallory"},
        headers={**HX, "annotator": "mallory", "auth": "mallory"},
    )
    assert r.status_code == 200
    assert store.events()["annotator"].tolist() == ["alice"]


def test_stale_submit_is_409_with_seen_event_and_writes_nothing(client, store):
    image = store.queue("unlabeled", "alice")[0]
    ev = store.record(image, 3, "bob")  # someone else labels it after alice's card was rendered
    r = _label(client, "1", image, seen=0)
    assert r.status_code == 409 and "you saw event 0" in r.text and str(ev) in r.text
    assert event_count(store) == 1
    assert _label(client, "1", image, seen="abc").status_code == 422
    assert _label(client, "1", image, seen=ev).status_code == 200
    assert event_count(store) == 2


def test_undo_returns_the_undone_image_and_409_when_nothing_is_left(client, store):
    assert client.post("/undo", headers=HX).status_code == 409
    image = store.queue("unlabeled", "alice")[0]
    _label(client, "4", image)
    r = client.post("/undo", data={"q": "unlabeled"}, headers=HX)
    assert r.status_code == 200 and _card_state(r.text) == (image, 0)
    assert store.events()["undone"].tolist() == [True]
    assert client.post("/undo", headers=HX).status_code == 409
    assert store.events()["undone"].tolist() == [True]


def test_a_withdrawn_image_asked_for_by_id_is_a_clear_410_and_takes_no_label(client, store, manifest):
    """An image withdrawn (its file deleted from its drop, its PNGs with it) opened from an old link or the recent
    list showed a broken card; a key press on it saved a label nothing would use. Both now say why they refuse."""
    (image,) = store.queue("unlabeled", "alice", limit=1)
    _label(client, "4", image)
    store.sync_images(manifest[manifest["sop_instance_uid"] != store.sop_uids([image])[image]])
    for r in (
        client.get("/", params={"image_id": image}),
        client.get("/card", params={"image_id": image}, headers=HX),
        client.get(f"/img/{image}"),
        client.get(f"/img/{image}/model"),
        client.get(f"/zoom/{image}", params={"x": "0.5", "y": "0.5"}),
        client.get(f"/heatmap/{image}"),
        _label(client, "1", image, seen=store.current_event(image)),
    ):
        assert r.status_code == 410 and f"image {image} was withdrawn" in r.text, r.text
    assert event_count(store) == 1
    # undo would erase unseen the label kept for the image's return (stop 64's probe): refused, nothing undone
    r = client.post("/undo", data={"q": "unlabeled"}, headers=HX)
    assert r.status_code == 410 and f"your last label was on image {image}" in r.text and "nothing undone" in r.text
    assert store.events()["undone"].tolist() == [False]
    store.sync_images(manifest)  # sent again: back with its label
    assert store.current_labels()["image_id"].tolist() == [image]
    assert _card_state(client.post("/undo", data={"q": "unlabeled"}, headers=HX).text) == (image, 0)


@pytest.mark.parametrize("path", ["/label", "/undo", "/skip", "/blind", "/logout"])
def test_get_on_a_write_route_is_405(client, store, path):
    assert client.get(path).status_code == 405
    assert event_count(store) == 0


def test_skip_moves_on_without_writing(client, store):
    first, second = store.queue("unlabeled", "alice", limit=2)
    r = client.post("/skip", data={"image_id": str(first), "q": "unlabeled"}, headers=HX)
    assert r.status_code == 200 and _card_state(r.text)[0] == second
    assert _card_state(client.get("/").text)[0] == second  # the skip sticks for this session
    assert client.post("/skip", data={"image_id": "999"}, headers=HX).status_code == 404
    assert event_count(store) == 0


def test_a_queue_emptied_by_skips_says_so_and_offers_them_again(client, store):
    """Skipping every image left said "Nothing left" while the queue bar counted them, and only a new session
    brought them back (stop 62's probe); the empty card now says how many were skipped and brings them back."""
    left = store.queue("unlabeled", "alice")
    for image in left:
        r = client.post("/skip", data={"image_id": str(image), "q": "unlabeled"}, headers=HX)
    assert "Nothing left" in r.text and f"You skipped {len(left)} image(s)" in r.text and 'hx-post="/unskip"' in r.text
    assert client.post("/unskip", headers=HX).status_code == 204
    page = client.get("/").text
    assert _card_state(page)[0] == left[0] and "You skipped" not in page
    assert event_count(store) == 0


def test_card_route_shows_a_chosen_image_for_relabeling(client, store):
    image = store.queue("unlabeled", "alice")[-1]
    ev = store.record(image, 1, "alice")
    r = client.get(f"/card?image_id={image}", headers=HX)
    assert r.status_code == 200 and _card_state(r.text) == (image, ev) and "labeled biopsy by alice" in r.text
    for bad in ("999", "abc", "-1"):
        assert client.get(f"/card?image_id={bad}", headers=HX).status_code == 404
    assert client.get("/?image_id=999").status_code == 404


def test_queue_switcher_counts_and_model_hint_and_blind_mode(client, store, manifest):
    store.set_predictions(
        manifest[["sop_instance_uid"]].assign(p_biopsy=0.83, p_mag=0.1, model_version="v1", out_of_sample=True)
    )
    r = client.get("/?q=low_confidence")
    assert "Low confidence" in r.text and "8/8" in r.text and "queue active" in r.text
    assert "p(biopsy) 0.83" in r.text
    assert client.post("/blind").status_code == 204
    assert "p(biopsy)" not in client.get("/").text
    assert "unlabeled" in client.get("/?q=../../bogus").text  # unknown queue: the default one


def test_images_are_served_by_id_only_with_cache_headers(client, store, settings):
    image = store.queue("unlabeled", "alice")[0]
    r = client.get(f"/img/{image}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "max-age" in r.headers["cache-control"] and r.content[:4] == b"\x89PNG"
    assert client.get(f"/img/{image}/model").status_code == 200
    for bad in ("999", "abc", "-1", "..%2f..%2fetc%2fpasswd", "1%2f..%2f..", "1.png"):
        assert client.get(f"/img/{bad}").status_code == 404
    # A path in the database that climbs out of the cache is never served.
    (settings.cache.parent / "secret.png").write_bytes(b"\x89PNG secret")
    evil = pd.DataFrame(
        [
            {
                "hospital": "h1",
                "sop_instance_uid": "evil",
                "patient_key": "p",
                "study_instance_uid": "s",
                "display_png": "../secret.png",
                "model_png": "/etc/passwd",
                "meta_mag": None,
            }
        ]
    )
    store.sync_images(evil)
    evil_id = int(store.images().set_index("sop_instance_uid").loc["evil", "id"])
    assert client.get(f"/img/{evil_id}").status_code == 404
    assert client.get(f"/img/{evil_id}/model").status_code == 404


def test_review_lists_images_annotators_disagree_on(client, store):
    a, b = store.queue("unlabeled", limit=2)
    store.record(a, 1, "alice")
    store.record(a, 4, "bob")
    store.record(b, 2, "alice")
    r = client.get("/review")
    assert r.status_code == 200 and "alice: biopsy, bob: both" in r.text and f"/?image_id={a}" in r.text
    assert f"/?image_id={b}" not in r.text


def test_export_routes_carry_provenance(client, store):
    image = store.queue("unlabeled", "alice")[0]
    _label(client, "2", image)
    csv = client.get("/export.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    header, row = csv.text.splitlines()[:2]
    assert "sop_instance_uid" in header and "annotator" in header and "source" in header and ",alice," in row
    jsonl = client.get("/export.jsonl")
    assert jsonl.status_code == 200 and '"annotator":"alice"' in jsonl.text


def test_team_mode_requires_a_signed_session(team, store):
    image = store.queue("unlabeled")[0]
    r = team.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert _label(team, "1", image).status_code == 401
    assert team.post("/undo").status_code == 401
    assert team.get(f"/img/{image}").status_code == 401
    assert team.get("/export.csv").status_code == 401
    assert team.get("/login").status_code == 200
    assert team.post("/login", data={"name": "alice", "password": "nope"}).status_code == 401
    assert team.post("/login", data={"name": "mallory", "password": "x"}).status_code == 401
    # A forged session cookie (not signed with the secret) is no session.
    assert _label(team, "1", image, annotator="alice", **{"session": "alice"}).status_code == 401
    team.cookies.set("mammo_session", "eyJhbm5vdGF0b3IiOiAiYWxpY2UifQ==.forged.sig")
    assert _label(team, "1", image).status_code == 401
    assert event_count(store) == 0


def test_team_mode_identity_comes_from_the_session_only(team, store):
    r = team.post("/login", data={"name": "bob", "password": "builder"}, follow_redirects=False)
    assert r.status_code == 303
    image = team.get("/").text
    image_id, seen = _card_state(image)
    assert _label(team, "3", image_id, seen, annotator="alice").status_code == 200
    assert store.events()["annotator"].tolist() == ["bob"]
    assert team.post("/logout", follow_redirects=False).status_code == 303
    assert _label(team, "3", image_id).status_code == 401
    assert event_count(store) == 1


def test_two_annotators_labeling_at_once_lose_nothing_and_never_meet(settings, store):
    """Two sessions label what the app hands them, at once: every image once, none labeled by both (leases)."""
    users = {"alice": "a", "bob": "b"}
    app = create_app(settings, team=True, users=users, secret="s")
    failures: list[int] = []
    done: dict[str, list[int]] = {name: [] for name in users}
    both_hold_a_card = threading.Barrier(len(users), timeout=60)  # else one fast session may label all 8 alone

    def work(name: str) -> None:
        with BrowserClient(app) as c:
            c.post("/login", data={"name": name, "password": users[name]})
            html = c.get("/card", params={"q": "unlabeled"}, headers=HX).text
            both_hold_a_card.wait()
            while 'name="image_id" value=""' not in html:
                image_id, seen = _card_state(html)
                r = _label(c, "3", image_id, seen)
                if r.status_code != 200:
                    failures.append(r.status_code)
                    break
                done[name].append(image_id)
                html = r.text

    threads = [threading.Thread(target=work, args=(n,)) for n in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert not set(done["alice"]) & set(done["bob"]) and done["alice"] and done["bob"]
    assert sorted(done["alice"] + done["bob"]) == sorted(store.images()["id"].tolist())
    assert len(store.events()) == 8


def test_leases_keep_an_image_from_the_other_session_until_they_expire(settings, store):
    users = {"alice": "a", "bob": "b"}
    app = create_app(settings, team=True, users=users, secret="s", lease_seconds=1.0)
    alice, bob = BrowserClient(app), BrowserClient(app)
    alice.post("/login", data={"name": "alice", "password": "a"})
    bob.post("/login", data={"name": "bob", "password": "b"})
    a_card = alice.get("/card", params={"q": "unlabeled"}, headers=HX).text
    a_ids = [i for i, _ in _slides(a_card)]
    b_ids = [i for i, _ in _slides(bob.get("/card", params={"q": "unlabeled"}, headers=HX).text)]
    assert a_ids and b_ids and not set(a_ids) & set(b_ids)  # 8 images: alice holds 6, bob gets the other 2
    r = _label(bob, "1", a_ids[0], 0)  # bob forces alice's image
    assert r.status_code == 409 and "leased to alice" in r.text and event_count(store) == 0
    time.sleep(1.2)  # alice's lease runs out: the image is free again
    assert _label(bob, "1", a_ids[0], 0).status_code == 200
    assert store.events()["annotator"].tolist() == ["bob"]
    with pytest.raises(ValueError, match="lease_seconds"):
        create_app(settings, team=True, users=users, secret="s", lease_seconds=0)


def test_annotators_from_env_and_file(tmp_path, settings):
    assert load_annotators({"MAMMO_ANNOTATORS": "alice:pw1, bob:pw2"}) == {"alice": "pw1", "bob": "pw2"}
    f = tmp_path / "users"
    f.write_text(f"# annotators\ncarol:{hash_password('secret')}\n")
    users = load_annotators({"MAMMO_ANNOTATORS_FILE": str(f)})
    assert check_password(users["carol"], "secret") and not check_password(users["carol"], "Secret")
    assert "secret" not in f.read_text()
    with pytest.raises(ValueError, match="name:password"):
        load_annotators({"MAMMO_ANNOTATORS": "alice"})
    with pytest.raises(ValueError, match="team mode needs annotators"):
        create_app(settings, team=True, users={})


def test_session_secret_is_kept_in_mammo_home(settings, store, monkeypatch):
    monkeypatch.delenv("MAMMO_SECRET", raising=False)
    create_app(settings, annotator="alice")
    secret = settings.home / ".session_secret"
    assert secret.exists() and oct(secret.stat().st_mode)[-3:] == "600"
    text = secret.read_text()
    create_app(settings, annotator="alice")
    assert secret.read_text() == text


@pytest.fixture
def audit_team(settings, store):
    """Team mode over the store plus 4 audit images (a hospital whose patients all fall in the audit set)."""
    store.sync_images(write_images(settings.cache, 4, hospital="h9"), audit_fraction=1.0)
    hints = store.images()[["sop_instance_uid"]].assign(p_biopsy=0.93, p_mag=0.04, model_version="v1")
    store.set_predictions(hints)
    users = {"alice": "a", "bob": "b", "carol": "c"}
    app = create_app(settings, team=True, users=users, secret="s")
    clients = {}
    for name, pw in users.items():
        clients[name] = BrowserClient(app)
        clients[name].post("/login", data={"name": name, "password": pw})
    return clients, store.images().query("split == 'audit'")["id"].tolist()


def test_audit_reads_are_blind_and_a_disagreement_goes_to_a_third_reader(audit_team, store):
    clients, audit_ids = audit_team
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    card = alice.get("/card", params={"q": "audit"}, headers=HX).text
    first, _ = _card_state(card)
    assert first in audit_ids and "blind read" in card and "model:" not in card  # no model hint on audit reads
    assert _label(alice, "1", first, 0, q="audit").status_code == 200
    card = bob.get("/card", params={"q": "audit"}, headers=HX).text
    assert _card_state(card)[0] == first  # the second read of alice's image comes first for bob ...
    assert "biopsy" not in card.split('class="info"')[1].split("</div>")[0]  # ... without alice's label
    seen = _card_state(card)[1]
    assert _label(bob, "2", first, seen, q="audit").status_code == 200  # bob disagrees
    # neither reader adjudicates their own disagreement; carol sees both reads and decides
    assert 'value=""' in alice.get("/card", params={"q": "adjudication"}, headers=HX).text
    card = carol.get("/card", params={"q": "adjudication"}, headers=HX).text
    assert _card_state(card)[0] == first and "read 1: biopsy (alice)" in card and "read 2: mag (bob)" in card
    assert _label(carol, "2", first, _card_state(card)[1], q="adjudication").status_code == 200
    truth = store.current_labels().set_index("image_id").loc[first]
    assert (truth["label"], truth["label_source"], truth["first_read"]) == ("mag", "adjudicated", "biopsy")
    page = alice.get("/review").text
    assert "1 adjudicated" in page and 'id="kappa"' in page and "alice" in page and "bob" in page


def test_a_reader_who_opens_their_own_disputed_image_in_the_adjudication_queue_stays_blind(audit_team, store):
    """The queue name comes from the browser: alice, on the Adjudication tab, opens her own read from her recent
    list. Only a third annotator sees both reads."""
    clients, audit_ids = audit_team
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    first = audit_ids[0]
    store.record(first, 1, "alice")
    store.record(first, 2, "bob")
    for reader in (alice, bob):
        card = reader.get("/card", params={"image_id": first, "q": "adjudication"}, headers=HX).text
        assert "read 1:" not in card and "read 2:" not in card and "blind read" in card
    card = carol.get("/card", params={"image_id": first, "q": "adjudication"}, headers=HX).text
    assert "read 1: biopsy (alice)" in card and "read 2: mag (bob)" in card


def test_two_readers_on_one_audit_image_at_once_both_have_their_blind_read_recorded(audit_team, store):
    """Team mode hands an audit image to two readers at once; the second key press is no stale submit, since a
    blind read saw no one's label. A third annotator's decision still is, if the reads changed under it."""
    clients, _ = audit_team
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    a_image, a_seen = _card_state(alice.get("/card", params={"q": "audit"}, headers=HX).text)
    b_image, b_seen = _card_state(bob.get("/card", params={"q": "audit"}, headers=HX).text)
    assert a_image == b_image
    assert _label(alice, "1", a_image, a_seen, q="audit").status_code == 200
    assert _label(bob, "2", b_image, b_seen, q="audit").status_code == 200
    row = store.images().set_index("id").loc[a_image]
    assert (row["reader1"], row["reader2"]) == ("alice", "bob")
    c_image, c_seen = _card_state(carol.get("/card", params={"q": "adjudication"}, headers=HX).text)
    assert c_image == a_image
    store.record(a_image, 4, "bob")  # bob changes his read while carol looks at the old one
    assert _label(carol, "2", c_image, c_seen, q="adjudication").status_code == 409


def test_opening_an_image_on_another_screen_by_id_leaves_its_lease_alone(settings, store):
    """Alice opens (by id, from her recent list) the training image on bob's screen: no second lease, so bob
    can still label it, and what follows it on alice's card is no one else's."""
    users = {"alice": "a", "bob": "b"}
    app = create_app(settings, team=True, users=users, secret="s")
    alice, bob = BrowserClient(app), BrowserClient(app)
    alice.post("/login", data={"name": "alice", "password": "a"})
    bob.post("/login", data={"name": "bob", "password": "b"})
    b_card = bob.get("/card", params={"q": "unlabeled"}, headers=HX).text
    b_ids = [i for i, _ in _slides(b_card)]
    a_card = alice.get("/card", params={"image_id": b_ids[0], "q": "unlabeled"}, headers=HX).text
    assert _card_state(a_card)[0] == b_ids[0] and not set(i for i, _ in _slides(a_card)[1:]) & set(b_ids)
    leases = store.leases()
    assert leases.query("image_id == @b_ids[0]")["annotator"].tolist() == ["bob"]
    assert _label(alice, "1", b_ids[0], 0).status_code == 409  # on bob's screen
    assert _label(bob, "1", b_ids[0], 0).status_code == 200


def test_review_shows_kappa_and_each_readers_agreement(audit_team, store):
    clients, audit_ids = audit_team
    for image_id, (a, b) in zip(audit_ids, [(1, 1), (2, 2), (3, 4), (4, 4)], strict=True):
        store.record(image_id, a, "alice")
        store.record(image_id, b, "bob")
    store.record(audit_ids[2], 4, "carol")  # adjudicates for bob
    stats = store.audit_stats()
    # p_o = 3/4; alice: 1,2,3,4 and bob: 1,2,4,4 -> p_e = (1*1 + 1*1 + 1*0 + 1*2) / 16 = 0.25; κ = 0.5 / 0.75
    assert stats["kappa"] == pytest.approx(2 / 3)
    assert stats["per_reader"]["alice"]["agree_truth"] == 0.75 and stats["per_reader"]["bob"]["agree_truth"] == 1.0
    assert stats["per_reader"]["alice"]["agree_adjudicated"] == 0.0
    page = clients["carol"].get("/review").text
    assert ">0.667<" in page and "75.0%" in page and "100.0%" in page


def test_review_page_shows_an_undefined_kappa_as_not_available(audit_team, store):
    clients, audit_ids = audit_team
    # every pair of readers says "neither" throughout: p_e = 1, so kappa is 0/0 (two pairs: the page lists them)
    for image_id, second in zip(audit_ids[:3], ["bob", "bob", "carol"], strict=True):
        store.record(image_id, 3, "alice")
        store.record(image_id, 3, second)
    stats = store.audit_stats()
    assert stats["kappa"] is None and stats["kappa_by_pair"] == {"alice|bob": None, "alice|carol": None}
    page = clients["carol"].get("/review").text
    assert "alice vs bob: κ = n/a" in page and "alice vs carol: κ = n/a" in page


def test_a_label_store_locked_past_its_wait_refuses_the_key_press_and_saves_nothing(client, store, settings):
    """Another process holding the store's write lock past SQLite's 5-s wait gave a bare 500, which the key
    press's toast showed as 'Internal Server Error' while the next image was on screen, so the labeler moved on
    without the label (stop 62's probe). Now a 503 that says nothing was saved, with Retry-After."""
    import sqlite3

    first = store.queue("unlabeled", "alice", limit=1)[0]
    before = event_count(store)
    holder = sqlite3.connect(settings.labels_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        r = _label(client, "1", first)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "nothing was saved" in r.text and "Traceback" not in r.text
    assert event_count(store) == before
    assert _label(client, "1", first).status_code == 200 and event_count(store) == before + 1


def test_a_label_store_deleted_while_the_app_runs_is_refused_not_written_into_nothing(client, store, settings):
    """Deleting the store's file while the app ran: a thread's open connection wrote the label into the unlinked
    file and answered 200 (the label lost), and a new thread's connection made an empty database in its place.
    Now every write checks it still holds the file it opened, and an existing store is never re-created."""
    first, second = store.queue("unlabeled", "alice", limit=2)
    assert _label(client, "1", first).status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.labels_db}{suffix}").unlink(missing_ok=True)
    r = _label(client, "2", second)
    assert r.status_code == 503 and "nothing was saved" in r.text
    assert not settings.labels_db.exists()
