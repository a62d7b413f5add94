"""A TestClient that talks to the labeling app the way its own pages do in a browser."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

ORIGIN = "http://localhost:5001"
_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def page_token(html: str) -> str:
    """The CSRF token a page carries in its `<meta name="csrf-token">`."""
    match = _META.search(html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


class BrowserClient(TestClient):
    """Host `localhost:5001`, Origin on every state change, and the session's CSRF token in `X-CSRF-Token`.

    The token is read from a page (`/login`) before each state-changing request, as a page a browser just
    loaded would hold it.
    """

    def __init__(self, app, **kwargs) -> None:
        super().__init__(app, base_url=ORIGIN, **kwargs)

    def csrf_token(self) -> str:
        return page_token(super().request("GET", "/login").text)

    def request(self, method, url, *args, headers=None, **kwargs):
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
            headers = {"Origin": ORIGIN, "X-CSRF-Token": self.csrf_token(), **(headers or {})}
        return super().request(method, url, *args, headers=headers, **kwargs)
