"""What the labeling app hides on blind audit reads, and the queues that must not hand out audit images: each case
from a review that found the app leaking a read, a heat map or an export, or overwriting an adjudicated truth."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest

from mammo_pipeline.labels.app import create_app
from mammo_pipeline.labels.store import LabelStore, NothingToUndo
from mammo_pipeline_tests.labels.clients import BrowserClient

from .conftest import write_images

HX = {"HX-Request": "true"}


def _store(settings, n_train: int = 2, n_audit: int = 4) -> tuple[LabelStore, list[int]]:
    store = LabelStore(settings.labels_db)
    store.sync_images(write_images(settings.cache, n_train), seed=0, audit_fraction=0.0)
    store.sync_images(write_images(settings.cache, n_audit, hospital="h9"), audit_fraction=1.0)
    return store, store.images().query("split == 'audit'")["id"].tolist()


def _team(settings, *names: str) -> dict[str, BrowserClient]:
    app = create_app(settings, team=True, users={n: n for n in names}, secret="s")
    clients = {}
    for name in names:
        client = BrowserClient(app)
        assert client.post("/login", data={"name": name, "password": name}, follow_redirects=False).status_code == 303
        clients[name] = client
    return clients


def test_a_second_reader_never_sees_the_first_read_through_the_adjudication_queue(settings):
    store, audit = _store(settings)
    store.record(audit[0], 1, "alice")
    bob = _team(settings, "alice", "bob", "carol")["bob"]
    for route in ("/card", "/"):
        page = bob.get(route, params={"image_id": audit[0], "q": "adjudication"}, headers=HX).text
        assert "(alice)" not in page and "blind read" in page
    store.record(audit[0], 2, "bob")  # now disputed: the third annotator sees both reads
    carol = _team(settings, "alice", "bob", "carol")["carol"]
    page = carol.get("/card", params={"image_id": audit[0], "q": "adjudication"}, headers=HX).text
    assert "read 1: biopsy (alice)" in page and "read 2: mag (bob)" in page


def test_no_heat_map_on_an_audit_image_or_with_blind_on_and_no_server_path_in_its_errors(settings, monkeypatch):
    store, audit = _store(settings)
    train = store.images().query("split == 'train'")["id"].tolist()

    def no_cache(settings, hospital, sop_instance_uid):
        raise FileNotFoundError(f"{settings.warehouse}/image_cache/hospital={hospital}: no image cache")

    monkeypatch.setitem(sys.modules, "mammo_pipeline.model.explain", types.SimpleNamespace(heatmap_png=no_cache))
    client = BrowserClient(create_app(settings, annotator="alice", secret="s"))
    assert client.get(f"/heatmap/{audit[0]}").status_code == 403
    r = client.get(f"/heatmap/{train[0]}")
    assert r.status_code == 404 and str(settings.home) not in r.text and "$MAMMO_HOME/warehouse" in r.text
    blind = BrowserClient(create_app(settings, annotator="alice", secret="s", blind=True))
    assert blind.get(f"/heatmap/{train[0]}").status_code == 403


def test_the_team_export_leaves_out_a_read_still_waiting_for_its_second(settings):
    store, audit = _store(settings)
    store.record(audit[0], 4, "alice")
    store.record(audit[1], 1, "alice")
    store.record(audit[1], 1, "carol")  # both reads in: no longer hidden
    bob = _team(settings, "alice", "bob", "carol")["bob"]
    rows = pd.read_csv(__import__("io").StringIO(bob.get("/export.csv").text))
    assert audit[0] not in set(rows["image_id"]) and list(rows["image_id"]).count(audit[1]) == 2


def test_needs_review_serves_training_images_only(settings):
    store, audit = _store(settings, n_train=2, n_audit=2)
    sops = store.images().set_index("id")["sop_instance_uid"]
    for who, code in (("alice", 1), ("bob", 2), ("carol", 2)):
        store.record(audit[0], code, who)  # adjudicated: mag
    flagged = pd.DataFrame({"sop_instance_uid": sops.tolist(), "p_biopsy": 0.9, "p_mag": 0.1, "needs_review": True})
    store.set_predictions(flagged)
    queued = store.queue("needs_review", "dave", limit=10)
    assert queued and not set(queued) & set(audit)
    assert store.queue_counts()["needs_review"][0] == len(queued)
    truth = store.current_labels().set_index("image_id").loc[audit[0]]
    assert (truth["label"], truth["label_source"]) == ("mag", "adjudicated")


def test_an_adjudicated_read_cannot_be_undone_by_its_reader(settings):
    store, audit = _store(settings)
    for who, code in (("alice", 1), ("bob", 2), ("carol", 1)):
        store.record(audit[0], code, who)
    with pytest.raises(NothingToUndo, match="adjudicated"):
        store.undo("alice")
    assert store.undo("carol") == audit[0]  # the adjudicator may take back the decision


def test_the_disagreements_fallback_moves_on_after_each_key(settings):
    store, _ = _store(settings, n_train=6, n_audit=0)
    for iid in store.queue("unlabeled", limit=4):
        store.record(iid, 3, "bob")  # labeled, no predictions yet: the queue falls back on labeled images
    client = BrowserClient(create_app(settings, annotator="alice", secret="s"))
    shown = []
    card = client.get("/card", params={"q": "disagreements"}, headers=HX).text
    for _ in range(4):
        iid = int(card.split('name="image_id" value="', 1)[1].split('"', 1)[0])
        seen = card.split('name="seen_event" value="', 1)[1].split('"', 1)[0]
        shown.append(iid)
        data = {"label": "1", "image_id": iid, "seen_event": seen, "q": "disagreements"}
        card = client.post("/label", data=data, headers=HX).text
    assert len(set(shown)) == 4


def test_a_csrf_token_that_is_not_ascii_is_refused_not_a_server_error(settings):
    from starlette.testclient import TestClient

    _store(settings)
    app = create_app(settings, team=True, users={"alice": "a"}, secret="s")
    client = TestClient(app, base_url="http://localhost:5001", raise_server_exceptions=False)
    client.get("/login")
    origin = {"Origin": "http://localhost:5001"}
    as_header = {**origin, "X-CSRF-Token": "é".encode("latin-1")}
    assert client.post("/login", data={"name": "alice", "password": "a"}, headers=as_header).status_code == 403
    in_form = {"name": "alice", "password": "a", "csrf_token": "ü"}
    assert client.post("/login", data=in_form, headers=origin).status_code == 403
    assert client.post("/label", data={"label": "1", "csrf_token": "ü"}, headers=origin).status_code == 403


def test_a_sign_in_with_a_lone_surrogate_is_refused_not_a_server_error(settings):
    _store(settings)
    client = BrowserClient(create_app(settings, team=True, users={"alice": "a"}, secret="s"))
    for body in ('{"name": "\\ud800", "password": "a"}', '{"name": "alice", "password": "\\udfff"}'):
        r = client.post("/login", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401, r.text


def test_after_an_undo_no_audit_image_is_handed_to_a_third_reader(settings):
    """Opening an image by id (undo, the recent list) picked the images after it without the lease rule, so a
    third reader was handed audit images two others held, and the third read was wasted."""
    import re

    _store(settings, n_train=2, n_audit=8)
    clients = _team(settings, "alice", "bob", "carol")
    slides = re.compile(r'data-image-id="(\d+)"[^>]*class="slide"')
    for name in ("bob", "carol"):
        clients[name].get("/card", params={"q": "audit"}, headers=HX)
    card = clients["alice"].get("/card", params={"q": "audit"}, headers=HX).text
    iid = int(card.split('name="image_id" value="', 1)[1].split('"', 1)[0])
    seen = card.split('name="seen_event" value="', 1)[1].split('"', 1)[0]
    clients["alice"].post("/label", data={"label": "1", "image_id": iid, "seen_event": seen, "q": "audit"}, headers=HX)
    card = clients["alice"].post("/undo", data={"q": "audit"}, headers=HX).text
    assert slides.findall(card)
    holders = LabelStore(settings.labels_db).leases().groupby("image_id")["annotator"].nunique()
    assert holders.max() <= 2, holders.to_dict()


def _agreed(store: LabelStore, audit: list[int], labels: list[int]) -> pd.DataFrame:
    """Both readers read each audit image alike; every image then gets a prediction of no flag at all."""
    for iid, code in zip(audit, labels, strict=True):
        store.record(iid, code, "alice")
        store.record(iid, code, "bob")
    images = store.images().set_index("id")
    store.set_predictions(
        pd.DataFrame({"sop_instance_uid": images.loc[audit, "sop_instance_uid"]}).assign(
            p_biopsy=[0.02, 0.3, 0.03, 0.04], p_mag=0.01, model_version="v1", out_of_sample=True
        )
    )
    return store.current_labels().set_index("image_id")


def test_an_agreed_audit_label_the_model_contradicts_is_rechecked_blind_and_the_recheck_decides(settings):
    """Two readers who slip alike on one image agree, so no adjudication catches the slip: the audit_recheck
    queue hands the agreed labels the model contradicts to a third reader, lowest model probability first, and
    that read becomes the audit truth."""
    store, audit = _store(settings)
    _agreed(store, audit, [4, 1, 3, 3])  # image 0: both read "both"; image 1 "biopsy" at p 0.3; 2-3 agree with it
    assert store.queue("audit_recheck", "carol") == [audit[0], audit[1]]  # p(both) 0.0002 before p(biopsy) 0.3
    assert store.queue("audit_recheck", "alice") == []  # never to one of its two readers
    assert store.queue_counts()["audit_recheck"] == (2, 4)
    carol = _team(settings, "alice", "bob", "carol")["carol"]
    card = carol.get("/card", params={"q": "audit_recheck"}, headers=HX).text
    assert "blind read" in card and "(alice)" not in card and "(bob)" not in card
    seen = card.split('name="seen_event" value="', 1)[1].split('"', 1)[0]
    data = {"label": "3", "image_id": audit[0], "seen_event": seen, "q": "audit_recheck"}
    assert carol.post("/label", data=data, headers=HX).status_code == 200
    truth = store.current_labels().set_index("image_id").loc[audit[0]]
    assert (truth["label"], truth["label_source"]) == ("neither", "adjudicated")
    assert store.queue("audit_recheck", "carol") == [audit[1]] and store.queue_counts()["audit_recheck"] == (1, 3)
    store.record(audit[1], 1, "carol", recheck=True)  # a recheck that confirms the label settles it too
    assert store.queue_counts()["audit_recheck"] == (0, 2)
    assert store.current_labels().set_index("image_id").loc[audit[1], "label"] == "biopsy"


def test_a_third_read_of_an_agreed_audit_label_outside_the_recheck_queue_decides_nothing(settings):
    store, audit = _store(settings)
    _agreed(store, audit, [4, 1, 3, 3])
    store.record(audit[0], 3, "carol")  # e.g. opened by id while it was still in the audit queue
    truth = store.current_labels().set_index("image_id").loc[audit[0]]
    assert (truth["label"], truth["label_source"]) == ("both", "agreed")
    # carol's read stays one that counts nowhere, so the queue hands the image to someone else, never to her again
    assert audit[0] in store.queue("audit_recheck", "dave") and audit[0] not in store.queue("audit_recheck", "carol")


def test_training_images_and_disputed_audit_images_are_never_rechecked(settings):
    store, audit = _store(settings, n_train=2, n_audit=4)
    train = store.images().query("split == 'train'")["id"].tolist()
    store.record(train[0], 4, "alice")
    store.record(audit[0], 4, "alice")
    store.record(audit[0], 1, "bob")  # disputed: the adjudication queue's
    images = store.images().set_index("id")
    ids = [train[0], audit[0]]
    store.set_predictions(
        pd.DataFrame({"sop_instance_uid": images.loc[ids, "sop_instance_uid"]}).assign(
            p_biopsy=0.01, p_mag=0.01, model_version="v1", out_of_sample=True
        )
    )
    assert store.queue("audit_recheck", "carol") == [] and store.queue_counts()["audit_recheck"][0] == 0
