"""What every app's web server shares: uvicorn inside a served process, the path prefix the ingress
gateway forwards, and the small helpers of pages (links relative to the prefix, times, numbers)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a served process: the runtime owns SIGTERM and drains everything together."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve_web_app(app, host: str, port: int, on_drain: Callable[[], Awaitable[None]]) -> None:
    """Serve ``app`` until the task is cancelled; then ``on_drain`` (which ends long-lived streams), and
    uvicorn closes. No access log: paths can name what the app keeps private."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off")
    server = EmbeddedServer(config)
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:   # draining: end the event streams, then let uvicorn close
        await on_drain()
        server.should_exit = True
        await serving
        raise


class PathPrefix:
    """Serves the app both under ``prefix`` (as the ingress gateway forwards it) and at the root."""

    def __init__(self, app, prefix: str):
        self.app, self.prefix = app, prefix.rstrip("/")

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if self.prefix and scope["type"] in ("http", "websocket") and (
                path == self.prefix or path.startswith(self.prefix + "/")):
            scope = dict(scope, root_path=scope.get("root_path", "") + self.prefix)
            if path == self.prefix:   # /manufacturing → /manufacturing/
                scope["path"] = path + "/"
        await self.app(scope, receive, send)


def base_path(request: Request) -> str:
    """The prefix the request came in on ('' at the root): every link a page writes starts with it."""
    return request.scope.get("root_path", "").rstrip("/")


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def local_target(target: str | None) -> bool:
    """Only paths on this site (never another host) are followed after a form."""
    return bool(target) and target.startswith("/") and not target.startswith("//")


def when(ms) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def pretty(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True)


def moment_ms(text: str, field: str, expected: str = "a date and time (YYYY-MM-DDTHH:MM)") -> int:
    """Milliseconds since the epoch from a form's ISO date or date and time (UTC unless it says), or a number of
    milliseconds; 400 naming the field otherwise."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"{field}: {text!r} is not {expected}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1000)


async def form_fields(request: Request, max_bytes: int = 64 * 1024) -> dict[str, str]:
    """An urlencoded form (or none): the last value of each field, blank ones kept (an empty field is an
    answer the form's validation names). 413 past ``max_bytes``, 400 for anything that is not such a form."""
    kind = request.headers.get("content-type", "")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"the form is over the limit of {max_bytes} bytes")
    if body and not kind.startswith("application/x-www-form-urlencoded"):
        raise HTTPException(400, "send the form as application/x-www-form-urlencoded")
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid urlencoded text") from None


def answer_request_errors(app: FastAPI, error: Callable[[Request, int, str], object]) -> None:
    """HTTP errors a route raises, and requests that do not validate, answered by the app's own `error`
    (its error page, or JSON for scripts)."""
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error(request, 400, problems or "bad request")
