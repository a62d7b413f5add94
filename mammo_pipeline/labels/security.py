"""The labeling app on a hospital network: Host allow-list, body limit, CSRF, sessions, login throttling.

Two ASGI middlewares and a few helpers, installed by `install(app, ...)` so the routes stay as they are:

- `HostAndBodyLimit` (outermost): refuses a Host header not in the allow-list (400; stops DNS rebinding from
  reading `/export.csv`), refuses a body larger than `max_body` bytes (413) before reading it (Content-Length) or
  as soon as a chunked body passes the limit, and marks every cookie `Secure` when the request came over HTTPS
  (directly, or through a reverse proxy that uvicorn trusts for X-Forwarded-Proto).
- `CsrfProtect` (inside the session middleware): every POST/PUT/PATCH/DELETE needs an Origin (or, without
  one, a Referer) equal to the app's own origin (scheme, host and port: a page on the same host at another port is
  another origin) and the session's CSRF token in the `X-CSRF-Token` header or a `csrf_token` form field (403).
- `csrf_before`: a FastHTML Beforeware that makes the per-session token and puts it in every page, as
  `<meta name="csrf-token">` and as `hx-headers` on `<body>`, so every htmx request sends it; `static/csrf.js`
  adds it to plain form posts (sign in, sign out).
- `SessionRegistry`: team sessions are valid only while the server knows them (at most SESSION_HOURS; sign-out
  ends them), so a copied cookie is worthless after logout. Held in memory: restarting the app signs everyone out.
- `LoginThrottle` and `verify_login`: at most LOGIN_FAILURES_PER_USER wrong passwords per name and
  LOGIN_FAILURES_PER_ADDRESS per client address in LOGIN_WINDOW_S (then 429 with Retry-After), and a login check
  that costs one PBKDF2 whatever the name, so timing does not tell which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fasthtml import common as fh
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024  # the app's forms are a few hundred bytes
SESSION_HOURS = 8  # one working day; the cookie's Max-Age and the server-side lifetime
LOGIN_WINDOW_S = 15 * 60
LOGIN_FAILURES_PER_USER = 5
LOGIN_FAILURES_PER_ADDRESS = 20
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SESSION_KEY = "csrf"
_SID_KEY = "sid"


# -- hosts ---------------------------------------------------------------------------------------------
def allowed_hosts(bind_host: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Host names the app answers to: loopback, the bind address (unless a wildcard) and MAMMO_ALLOWED_HOSTS.

    MAMMO_ALLOWED_HOSTS is a comma-separated list (e.g. `labels.hospital.nhs.uk,10.1.2.3`); `*.example.org`
    allows subdomains. Ports are not part of the names.
    """
    env = dict(os.environ) if env is None else env
    hosts = list(LOOPBACK_HOSTS)
    if bind_host and bind_host not in ("0.0.0.0", "::", ""):
        hosts.append(bind_host)
    hosts += [h.strip().lower() for h in env.get("MAMMO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return list(dict.fromkeys(h.strip("[]").lower() for h in hosts))


def host_name(host_header: str) -> str:
    """The name part of a Host header (`[::1]:5001` -> `::1`, `Example.org:80` -> `example.org`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str, allowed: Sequence[str]) -> bool:
    name = host_name(host_header)
    if not name:
        return False
    return any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _reply(send: Send, status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class HostAndBodyLimit:
    """ASGI middleware: Host allow-list, body-size limit before reading, `Secure` cookies over HTTPS."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str], max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.allowed, self.max_body = app, list(allowed), max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if not host_allowed(headers.get("host", ""), self.allowed):
            await _reply(send, 400, "unknown Host; add it to MAMMO_ALLOWED_HOSTS")
            return
        length = headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request body over {self.max_body} bytes", [(b"connection", b"close")])
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def secure_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if scope.get("scheme") == "https":
                    message["headers"] = [_secure_cookie(k, v) for k, v in message.get("headers", [])]
            await send(message)

        try:
            await self.app(scope, limited_receive, secure_send)
        except _TooLarge:
            if not started:
                await _reply(send, 413, f"request body over {self.max_body} bytes", [(b"connection", b"close")])


def _secure_cookie(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    if key.lower() == b"set-cookie" and b"secure" not in value.lower():
        value += b"; secure"
    return key, value


# -- CSRF ----------------------------------------------------------------------------------------------
def csrf_token(session: dict[str, Any]) -> str:
    """The session's CSRF token (made on first use; lives as long as the session)."""
    token = session.get(_SESSION_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = session[_SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def csrf_before(req, session) -> None:  # no annotations: FastHTML injects these by name only without them
    """FastHTML Beforeware: put the session's CSRF token in the page head and in htmx's request headers."""
    token = csrf_token(session)
    req.hdrs.append(fh.Meta(name="csrf-token", content=token))
    req.bodykw["hx_headers"] = json.dumps({"X-CSRF-Token": token})


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = parts.port or default
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{port}"


async def _form_field(scope: Scope, body: bytes, name: str) -> str | None:
    """One text field of a buffered form body (urlencoded or multipart), parsed by Starlette; None if absent."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
    except Exception:  # not a form, or a malformed one: no token
        return None
    try:
        value = form.get(name)
        return value if isinstance(value, str) else None
    finally:
        await form.close()


class CsrfProtect:
    """ASGI middleware (inside SessionMiddleware): same-origin check and per-session token on unsafe methods."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        own = _origin_of(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}/")
        claimed = headers.get("origin") or headers.get("referer")
        if claimed is not None and (claimed == "null" or _origin_of(claimed) != own):
            await _reply(send, 403, "cross-origin request refused")
            return
        expected = (scope.get("session") or {}).get(_SESSION_KEY)
        given = headers.get(CSRF_HEADER)
        body = b""
        if given is None:  # a plain form post (urlencoded or multipart): the token is a form field
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            given = await _form_field(scope, body, CSRF_FIELD)
        # bytes: compare_digest refuses str holding anything but ASCII (a token "é" was a 500, not a 403)
        same = isinstance(expected, str) and bool(given) and hmac.compare_digest(_bytes(expected), _bytes(given))
        if not same:
            await _reply(send, 403, "missing or wrong CSRF token; reload the page")
            return
        if given is not None and body:
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


# -- sessions and logins ---------------------------------------------------------------------------------
class SessionRegistry:
    """Server-side record of signed-in team sessions: id -> (annotator, expiry). Thread-safe, in memory."""

    def __init__(self, hours: float = SESSION_HOURS) -> None:
        self.lifetime_s = hours * 3600
        self._live: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def start(self, session: dict[str, Any], annotator: str) -> None:
        """Begin a session for `annotator` (a fresh id: a session fixed before sign-in is not reused)."""
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._live = {k: v for k, v in self._live.items() if v[1] > now}
            self._live[sid] = (annotator, now + self.lifetime_s)
        session[_SID_KEY] = sid

    def valid(self, session: dict[str, Any], annotator: str) -> bool:
        with self._lock:
            entry = self._live.get(str(session.get(_SID_KEY)))
        return entry is not None and entry[0] == annotator and entry[1] > time.time()

    def end(self, session: dict[str, Any]) -> None:
        with self._lock:
            self._live.pop(str(session.get(_SID_KEY)), None)


class LoginThrottle:
    """Sliding-window counts of failed sign-ins per name and per client address."""

    def __init__(
        self,
        per_user: int = LOGIN_FAILURES_PER_USER,
        per_address: int = LOGIN_FAILURES_PER_ADDRESS,
        window_s: float = LOGIN_WINDOW_S,
        max_keys: int = 10_000,
    ) -> None:
        self.limits = {"user": per_user, "addr": per_address}
        self.window_s, self.max_keys = window_s, max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, name: str, address: str, now: float | None = None) -> float:
        """Seconds until `name` from `address` may try again (0 = now)."""
        now = time.time() if now is None else now
        wait = 0.0
        with self._lock:
            for key in (("user", name), ("addr", address)):
                times = self._recent(key, now)
                if len(times) >= self.limits[key[0]]:
                    wait = max(wait, times[-self.limits[key[0]]] + self.window_s - now)
        return wait

    def failure(self, name: str, address: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            if len(self._failures) >= self.max_keys:  # bounded memory under a spray of names
                oldest = min(self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0)
                del self._failures[oldest]
            for key in (("user", name), ("addr", address)):
                times = self._failures.setdefault(key, self._recent(key, now))
                times.append(now)

    def success(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("user", name), None)


_DUMMY_SALT = secrets.token_hex(16)


def verify_login(users: dict[str, str], name: str, password: str) -> bool:
    """Whether `name`/`password` match; one PBKDF2 of the password however the name turns out.

    The name is compared with every known name (constant time each), and a plain secret or an unknown name still
    costs the same PBKDF2 as a stored hash, so response time does not reveal which names exist.
    """
    from mammo_pipeline.labels.app import _HASH, _ITERATIONS, check_password

    stored = None
    for known, secret in users.items():
        if hmac.compare_digest(known.encode(), name.encode()):
            stored = secret
    if stored is not None and stored.startswith(f"{_HASH}$"):
        return check_password(stored, password)
    hashlib.pbkdf2_hmac("sha256", password.encode(), _DUMMY_SALT.encode(), _ITERATIONS)  # the same work
    return stored is not None and check_password(stored, password)


def client_address(req: Any) -> str:
    return req.client.host if getattr(req, "client", None) else ""


# -- wiring ----------------------------------------------------------------------------------------------
def install(app: Any, allowed: Sequence[str], max_body: int = MAX_BODY_BYTES) -> None:
    """Add the middlewares (Host/body outermost, CSRF inside the session), csrf.js, a session registry and a
    login throttle (`app.state.sessions`, `app.state.login_throttle`) to a FastHTML app before it serves."""
    app.user_middleware.insert(0, Middleware(HostAndBodyLimit, allowed=list(allowed), max_body=max_body))
    app.user_middleware.append(Middleware(CsrfProtect))
    app.hdrs.append(fh.Script(src="/static/csrf.js"))
    app.state.sessions = SessionRegistry()
    app.state.login_throttle = LoginThrottle()


def _bytes(text: str) -> bytes:
    """UTF-8 bytes of any str, lone surrogates included (compared, never decoded again)."""
    return text.encode("utf-8", "surrogatepass")
