"""The labeling app (FastHTML + HTMX): label images with the keyboard, one key per class.

Single-user on a laptop by default; with `team=True` annotators sign in and their identity comes only
from the signed session cookie, never from a form field, query, cookie or header. No CDN: htmx is served
from labels/static/, and images are served by database id only (their path comes from the store).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import importlib
import os
import secrets
import sqlite3
from pathlib import Path

from fasthtml import common as fh
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from mammo_pipeline.atomic import atomic_path
from mammo_pipeline.dicom.source_paths import resolve as resolve_source
from mammo_pipeline.labels import components as ui
from mammo_pipeline.labels import security
from mammo_pipeline.labels.queues import QUEUES
from mammo_pipeline.labels.store import LabelStore, Leased, NothingToUndo, StaleSubmit, UnknownImage, Withdrawn
from mammo_pipeline.labels.zoom import ZOOM_FOLDER, BadCrop, NoSource, ZoomCache
from mammo_pipeline.settings import Settings

STATIC = Path(__file__).parent / "static"
_HASH = "pbkdf2_sha256"
_ITERATIONS = 200_000
_MAX_SKIPPED = 100  # kept in the session cookie, which must stay under 4 kB
AHEAD = 5  # images sent ahead of the one on screen (loaded, hidden), so a burst of keys never waits
LEASE_SECONDS = 600.0  # team mode: how long an image handed to one annotator is kept from the others


# -- annotators and secrets ---------------------------------------------------------------------------
def hash_password(password: str, salt: str | None = None, iterations: int = _ITERATIONS) -> str:
    """A salted PBKDF2 hash for MAMMO_ANNOTATORS_FILE lines (`name:<hash>`)."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{_HASH}${iterations}${salt}${digest}"


def check_password(stored: str, given: str) -> bool:
    """Compare a password with a stored hash or plain secret in constant time."""
    if stored.startswith(f"{_HASH}$"):
        _, iterations, salt, _ = stored.split("$", 3)
        return hmac.compare_digest(stored.encode(), hash_password(given, salt, int(iterations)).encode())
    return hmac.compare_digest(stored.encode(), given.encode())


def load_annotators(env: dict[str, str] | None = None) -> dict[str, str]:
    """Annotators from MAMMO_ANNOTATORS="alice:pw,bob:pw" or MAMMO_ANNOTATORS_FILE (lines `name:<hash>`)."""
    env = dict(os.environ) if env is None else env
    users: dict[str, str] = {}
    pairs = [p for p in env.get("MAMMO_ANNOTATORS", "").split(",") if p.strip()]
    if env.get("MAMMO_ANNOTATORS_FILE"):
        lines = Path(env["MAMMO_ANNOTATORS_FILE"]).read_text().splitlines()
        pairs += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    for pair in pairs:
        name, sep, secret = pair.strip().partition(":")
        if not sep or not name or not secret:
            raise ValueError("annotators must be given as name:password (or name:<hash> in the file)")
        users[name] = secret
    return users


def session_secret(home: Path) -> str:
    """MAMMO_SECRET, else a random secret kept in MAMMO_HOME/.session_secret (made once, mode 600)."""
    if os.environ.get("MAMMO_SECRET"):
        return os.environ["MAMMO_SECRET"]
    path = home / ".session_secret"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
    return path.read_text().strip()


def _int(value: object) -> int | None:
    text = str(value or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


# -- the app -------------------------------------------------------------------------------------------
def create_app(
    settings_or_db_path: Settings | Path | str,
    *,
    team: bool = False,
    users: dict[str, str] | None = None,
    annotator: str | None = None,
    cache: Path | None = None,
    blind: bool = False,
    seed: int | None = None,
    secret: str | None = None,
    allowed_hosts: list[str] | None = None,
    lease_seconds: float = LEASE_SECONDS,
    landing: Path | None = None,
) -> fh.FastHTML:
    """The labeling app over one label store.

    `settings_or_db_path`: Settings (store at settings.labels_db, images under settings.cache) or the path
    of a label database (images under `cache`, default the database's folder / "cache"; DICOM files for the
    full-resolution zoom under `landing`, default settings.landing or the database's folder / "landing").
    `allowed_hosts`: Host names served (default `security.allowed_hosts()`: loopback + MAMMO_ALLOWED_HOSTS).
    `lease_seconds`: in team mode, how long the images shown to one annotator are kept from the others.
    """
    settings = settings_or_db_path if isinstance(settings_or_db_path, Settings) else None
    if settings is not None:
        s = settings
        db_path, cache_root, home, seed = s.labels_db, cache or s.cache, s.home, s.seed if seed is None else seed
        landing = landing or s.landing
    else:
        db_path = Path(settings_or_db_path)
        cache_root, home, seed = cache or db_path.parent / "cache", db_path.parent, seed or 0
        landing = landing or db_path.parent / "landing"
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
    cache_root = Path(cache_root).resolve()
    store = LabelStore(db_path, seed=seed)
    resolve = None
    if settings is not None:  # rel_path in the store is pseudonymized: <hospital>/<drop>/<hash>

        def resolve(rel: str) -> Path:
            return resolve_source(settings, rel.split("/", 1)[0], rel)

    zoom = ZoomCache(Path(landing), cache_root / ZOOM_FOLDER, resolve)
    if team:
        users = load_annotators() if users is None else users
        if not users:
            raise ValueError("team mode needs annotators: set MAMMO_ANNOTATORS or MAMMO_ANNOTATORS_FILE")
    solo = annotator or getpass.getuser()

    def before(req, sess):
        if not team:
            req.scope["auth"] = solo
            return None
        who = sess.get("annotator")
        if who in users and app.state.sessions.valid(sess, who):  # signed cookie and a live server-side session
            req.scope["auth"] = who
            return None
        if req.method == "GET" and req.url.path in ("/", "/review"):
            return RedirectResponse("/login", status_code=303)
        return Response("sign in first", status_code=401)

    app = fh.FastHTML(
        default_hdrs=False,
        hdrs=[
            fh.Meta(charset="utf-8"),
            fh.Meta(name="viewport", content="width=device-width, initial-scale=1"),
            fh.Link(rel="stylesheet", href="/static/app.css"),
            fh.Script(src="/static/htmx.min.js"),
            fh.Script(src="/static/app.js", defer=True),
        ],
        secret_key=secret or session_secret(home),
        session_cookie="mammo_session",
        same_site="strict",
        max_age=security.SESSION_HOURS * 3600,
        before=[security.csrf_before, fh.Beforeware(before, skip=[r"/login", r"/static/.*", r"/favicon\.ico"])],
        htmlkw={"data-theme": "dark", "lang": "en"},
        title="mammo · labeling",
        canonical=False,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def store_unavailable(request, exc: sqlite3.DatabaseError) -> Response:
        """The label store busy past its 5-s wait, read-only, or its file gone: a clear refusal the key press's
        toast shows, not a bare 500 the labeler takes for a saved label."""
        refusal = fail(503, f"the label store cannot be written ({exc}): nothing was saved; press the key again")
        refusal.headers["Retry-After"] = "5"
        return refusal

    app.add_exception_handler(sqlite3.DatabaseError, store_unavailable)
    security.install(app, security.allowed_hosts() if allowed_hosts is None else allowed_hosts)
    app.state.store = store
    rt = app.route

    def fail(status: int, message: str) -> Response:
        return HTMLResponse(fh.to_xml(fh.Span(message)), status_code=status)

    def gone(image_id: int) -> Response:
        """410 for an image withdrawn from the store (its file deleted from its drop, its PNGs with it): asked for
        by id, from an old link or the recent list, it gets this message, not a broken image."""
        why = (
            "its file left its drop (deleted, or replaced by one that cannot be read): no longer shown, labeled or used"
        )
        return fail(410, f"image {image_id} was withdrawn: {why}")

    def withdrawn(image: dict | None) -> Response | None:
        """`gone` for a withdrawn image's row, None for any other."""
        return None if image is None or image["withdrawn_at"] is None else gone(image["id"])

    def opened(image_id: int | None, raw: object) -> Response | None:
        """The refusal for an image asked for by id (`raw` as given) that cannot be shown; None when it can."""
        image = store.image(image_id) if image_id is not None else None
        return fail(404, f"no image {raw}") if image is None else withdrawn(image)

    def queue_name(data: dict, sess) -> str:
        q = str(data.get("q") or sess.get("queue") or "unlabeled")
        return q if q in QUEUES else "unlabeled"

    def screen(sess, who: str, q: str, image_id: int | None = None) -> tuple[fh.FT, dict[str, tuple[int, int]]]:
        """The card for `image_id` (or the head of queue `q`), the next AHEAD images, and every queue's counts.

        Reads only indexed rows and maintained totals (no scan); in team mode the images shown are leased.
        """
        skipped = [int(i) for i in sess.get("skipped", [])]
        exclude = skipped if image_id is None else [*skipped, image_id]
        lease = lease_seconds if team else None  # what follows an image opened by id is picked by the lease rule too
        info, counts = store.next_cards(q, who, AHEAD + (image_id is None), exclude, lease)
        ids = info.ids if image_id is None else [image_id, *info.ids]
        if team and image_id is not None:  # opened by id: no second lease on what is on someone else's screen
            held = store.lease_free(ids, who, lease_seconds)
            ids = [i for i in ids if i == image_id or i not in held]
        images = [img for i in ids[: AHEAD + 1] if (img := store.image(i)) is not None]
        head, upcoming = (images[0], images[1:]) if images else (None, [])
        card = ui.card(head, q, info.note, info.remaining, upcoming, sess.get("blind", blind), who, len(skipped))
        return card, counts

    def next_screen(sess, who: str, q: str, image_id: int | None = None) -> tuple:
        """The new card plus the queue counts and recent list, swapped out of band."""
        card, counts = screen(sess, who, q, image_id)
        return card, ui.queue_nav(counts, q, oob=True), ui.recent_list(store.recent(who), oob=True)

    @rt("/")
    def index(auth, session, data: dict):
        q = queue_name(data, session)
        session["queue"] = q
        image_id = _int(data.get("image_id"))
        if image_id is not None and (refusal := opened(image_id, image_id)):
            return refusal
        card, counts = screen(session, auth, q, image_id)
        return ui.label_page(auth, counts, q, session.get("blind", blind), team, card, store.recent(auth))

    @rt("/card", methods=["get"])
    def get_card(auth, session, data: dict):
        q = queue_name(data, session)
        raw = data.get("image_id")
        image_id = _int(raw)
        if raw not in (None, "") and (refusal := opened(image_id, raw)):
            return refusal
        return screen(session, auth, q, image_id)[0]

    @rt("/label", methods=["post"])
    def label(auth, session, data: dict):
        """Label the image whose id the key press carried (the one on screen), then answer the next card."""
        code = str(data.get("label", "")).strip()
        if code not in {"1", "2", "3", "4"}:
            return fail(422, f"label must be 1, 2, 3 or 4, not {code!r}")
        image_id = _int(data.get("image_id"))
        if image_id is None:
            return fail(404, "no such image")
        seen_raw = data.get("seen_event")
        seen = _int(seen_raw)
        if seen_raw not in (None, "") and seen is None:
            return fail(422, f"seen_event must be an event id, not {seen_raw!r}")
        try:
            recheck = queue_name(data, session) == "audit_recheck"
            store.record(
                image_id, int(code), auth, source="human", seen_event=seen, respect_leases=team, recheck=recheck
            )
        except UnknownImage:
            return fail(404, f"no image {image_id}")
        except Withdrawn:
            return gone(image_id)
        except StaleSubmit as e:
            msg = f"image {image_id} was relabeled meanwhile (you saw event {e.seen_event}, now {e.current_event})"
            return fail(409, msg)
        except Leased as e:
            return fail(409, f"{e}: it is someone else's for now")
        return next_screen(session, auth, queue_name(data, session))

    @rt("/skip", methods=["post"])
    def skip(auth, session, data: dict):
        image_id = _int(data.get("image_id"))
        if image_id is None or not store.exists(image_id):
            return fail(404, "no such image")
        session["skipped"] = [*session.get("skipped", []), image_id][-_MAX_SKIPPED:]
        return next_screen(session, auth, queue_name(data, session))

    @rt("/unskip", methods=["post"])
    def unskip(session):
        """Bring back the images this session skipped (an empty queue offers it: they were gone till it ended)."""
        session.pop("skipped", None)
        return Response(status_code=204, headers={"HX-Refresh": "true"})

    @rt("/undo", methods=["post"])
    def undo(auth, session, data: dict):
        try:
            image_id = store.undo(auth)
        except NothingToUndo:
            return fail(409, "nothing to undo")
        except Withdrawn as e:
            return fail(410, str(e))
        return next_screen(session, auth, queue_name(data, session), image_id)

    @rt("/blind", methods=["post"])
    def toggle_blind(session):
        session["blind"] = not session.get("blind", blind)
        return Response(status_code=204, headers={"HX-Refresh": "true"})

    def image_file(image_id: str, column: str) -> Response:
        iid = _int(image_id)
        image = store.image(iid) if iid is not None else None
        rel = image.get(column) if image else None
        if not rel:
            return fail(404, "no such image")
        if refusal := withdrawn(image):
            return refusal
        path = (cache_root / rel).resolve()
        if not path.is_relative_to(cache_root) or not path.is_file():
            return fail(404, "no such image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @rt("/img/{image_id}", methods=["get"])
    def display_image(image_id: str):
        return image_file(image_id, "display_png")

    @rt("/img/{image_id}/model", methods=["get"])
    def model_image(image_id: str):
        return image_file(image_id, "model_png")

    @rt("/review", methods=["get"])
    def review(auth):
        train = [r for r in store.disagreements_between_annotators() if r["split"] == "train"]
        return ui.review_page(auth, train, store.audit_stats())

    @rt("/zoom/{image_id}", methods=["get"])
    def zoom_crop(image_id: str, data: dict):
        """A native-resolution crop (PNG) of the DICOM around (x, y), fractions of the width and height."""
        iid = _int(image_id)
        image = store.image(iid) if iid is not None else None
        if image is None:
            return fail(404, "no such image")
        if refusal := withdrawn(image):
            return refusal
        try:
            png = zoom.crop_png(iid, image.get("dicom_path"), data.get("x"), data.get("y"), data.get("size"))
        except BadCrop as e:
            return fail(422, str(e))
        except NoSource as e:
            return fail(404, str(e))
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @rt("/heatmap/{image_id}", methods=["get"])
    def heat_map(image_id: str, session):
        """The model's heat map of the image (PNG) from mammo_pipeline.model.explain, when it and a model exist;
        refused where the card hides the model's hint: audit images (blind reads) and sessions with Blind on."""
        iid = _int(image_id)
        image = store.image(iid) if iid is not None else None
        if image is None:
            return fail(404, "no such image")
        if refusal := withdrawn(image):
            return refusal
        if image["split"] == "audit" or session.get("blind", blind):
            return fail(403, "no heat map on a blind read (an audit image, or Blind on)")
        if settings is None:
            return fail(503, "heat maps need the pipeline settings (start the app with `mammo label`)")
        try:
            explain = importlib.import_module("mammo_pipeline.model.explain")  # lazy: torch only when asked
        except ImportError:
            return fail(503, "heat maps are not available: mammo_pipeline.model.explain is not installed")
        try:
            png = explain.heatmap_png(settings, image["hospital"], image["sop_instance_uid"])
        except FileNotFoundError as e:
            return fail(404, f"no heat map: {_without_paths(e, settings)}")
        except (LookupError, OSError, RuntimeError, ValueError) as e:  # OSError: a PNG PIL cannot read
            return fail(503, f"no heat map: {_without_paths(e, settings)}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    def export(fmt: str) -> Response:
        df = store.events()
        if team:  # a reader must not read another's blind audit read before giving their own
            df = df[~df["image_id"].isin(store.open_audit_images())]
        if fmt == "csv":
            body, media = df.to_csv(index=False), "text/csv"
        else:
            body, media = df.to_json(orient="records", lines=True), "application/x-ndjson"
        disposition = f'attachment; filename="label_events.{fmt}"'
        return Response(body, media_type=media, headers={"Content-Disposition": disposition})

    @rt("/export.csv", methods=["get"])
    def export_csv():
        return export("csv")

    @rt("/export.jsonl", methods=["get"])
    def export_jsonl():
        return export("jsonl")

    @rt("/login", methods=["get"])
    def login_form():
        return ui.login_page()

    @rt("/login", methods=["post"])
    def login(req, session, data: dict):
        name, password = _text(data.get("name", ""))[:200], _text(data.get("password", ""))[:1000]
        throttle, address = app.state.login_throttle, security.client_address(req)
        wait = throttle.retry_after(name, address)
        if wait:
            page = ui.login_page(f"Too many failed sign-ins; try again in {int(wait) + 1} s.")
            return fh.FtResponse(page, status_code=429, headers={"Retry-After": str(int(wait) + 1)})
        if not team or not security.verify_login(users or {}, name, password):  # same cost for any name
            throttle.failure(name, address)
            return fh.FtResponse(ui.login_page("Wrong name or password."), status_code=401)
        throttle.success(name)
        session.clear()
        app.state.sessions.start(session, name)
        session["annotator"] = name
        return RedirectResponse("/", status_code=303)

    @rt("/logout", methods=["post"])
    def logout(session):
        app.state.sessions.end(session)  # a copy of the cookie is refused from now on
        session.clear()
        return RedirectResponse("/login" if team else "/", status_code=303)

    return app


def _without_paths(error: BaseException, settings: Settings) -> str:
    """An error's text for a browser: the server's MAMMO_HOME (and every path under it) written `$MAMMO_HOME`."""
    return str(error).replace(str(settings.home), "$MAMMO_HOME")


def _text(value: object) -> str:
    """A form or JSON value as text that encodes as UTF-8: a lone surrogate ("\\ud800" in a JSON body) becomes
    U+FFFD, so it fails to sign in instead of failing the request."""
    return str(value).encode("utf-8", "replace").decode("utf-8")
