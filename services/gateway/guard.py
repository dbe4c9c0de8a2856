"""The gateway's edge, in front of every route. Pure ASGI, so it runs before FastAPI reads
or parses anything:

1. `Host` must be one the gateway serves (config.allowed_hosts): a page of evil.example
   whose name is rebound to 127.0.0.1 still says `Host: evil.example` (DNS rebinding);
2. the token: writes (every method but GET and HEAD) need the write token; reads, when a
   read token is set, need it or the dashboard's session cookie, except /health and the
   dashboard's own page and files (they hold no data; the page asks for the token);
3. only then the body is read, and no more than [gateway] max_body_bytes of it (413),
   whether announced by Content-Length or streamed chunked.

`SecurityHeaders` puts the browser-facing headers on every response.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.bus import ApiError

from .config import allowed_hosts, split_host
from .context import SESSION_COOKIE, Gateway, error_response

READS = frozenset({"GET", "HEAD"})
# Hold no data: /health, the page and its files (so it can ask for the token), and the
# Prometheus counters of the gateway's own HTTP and bus traffic (Prometheus scrapes them).
OPEN_PATHS = frozenset({"/health", "/", "/metrics"})  # plus /static/...
SESSION_PATH = "/api/session"  # a POST that needs the read token, not the write token


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith("/static/")


class Guard:
    def __init__(self, app: ASGIApp, gw: Gateway) -> None:
        self.app = app
        self.gw = gw
        self.any_port, self.exact = allowed_hosts(gw.cfg)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            self.check_host(headers.get("host"), scope["scheme"])
            self.check_token(scope["method"], scope["path"], headers)
            receive = await self.read_body(scope["method"], headers, receive)
        except ApiError as e:
            if e.code in ("bad_host", "body_too_large"):
                self.gw.metrics.refused.labels(e.code).inc()
            return await error_response(e)(scope, receive, send)
        await self.app(scope, receive, send)

    def check_host(self, host: str | None, scheme: str) -> None:
        name, port = split_host((host or "").strip().lower())
        port = port or ("443" if scheme == "https" else "80")
        if not name or not port.isdigit() or (name not in self.any_port and f"{name}:{port}" not in self.exact):
            raise ApiError("bad_host", f"this gateway does not serve Host {host!r} (see [gateway] allowed_hosts)")

    def check_token(self, method: str, path: str, headers: Headers) -> None:
        authorization = headers.get("authorization")
        if method in READS and is_open(path):
            return
        if method in READS or path == SESSION_PATH:
            self.gw.check_read(authorization, cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE))
        else:
            self.gw.check_write(authorization)

    async def read_body(self, method: str, headers: Headers, receive: Receive) -> Receive:
        """The whole body, at most max_body_bytes, handed on as one message. Reads take no
        body: theirs is never read (only refused when it announces itself too large)."""
        limit = self.gw.cfg.max_body_bytes
        too_large = ApiError("body_too_large", f"the body is over {limit} bytes ([gateway] max_body_bytes)")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        if method in READS:
            return receive
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app sees it as is
                return _replay(message, receive)
            body += message.get("body", b"")
            if len(body) > limit:
                raise too_large
            if not message.get("more_body", False):
                return _replay({"type": "http.request", "body": bytes(body), "more_body": False}, receive)


def _replay(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


# The dashboard's page and files: its own scripts and styles only, no inline code, no frames.
DASHBOARD_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                 "form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON and event streams run nothing
# A backtest's report.html: its own inline SVG and <style>, still no script (backtests.py).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
# FastAPI's /docs and /redoc pages load their scripts from a CDN and run inline code.
DOCS_CSP = "frame-ancestors 'none'"
DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
COMMON = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
          (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
OURS = {name for name, _ in COMMON} | {b"content-security-policy", b"cache-control"}


def csp_for(path: str) -> str:
    if path in DOCS:
        return DOCS_CSP
    if path == "/" or path.startswith("/static/"):
        return DASHBOARD_CSP
    if path.startswith("/api/backtests/") and path.endswith("/report.html"):
        return REPORT_CSP
    return API_CSP


class SecurityHeaders:
    """nosniff, no framing, no referrer, same-origin resources, a CSP per kind of page;
    `Cache-Control: no-store` on all but the static files (the API's replies are live data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        extra = [*COMMON, (b"content-security-policy", csp_for(path).encode())]
        if not path.startswith("/static/"):
            extra.append((b"cache-control", b"no-store"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in OURS]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, with_headers)
