"""The web app: server-rendered pages (fleet dashboard, asset pages, work orders), Server-Sent Events
for live updates, and a small JSON API. Every failure is a clear status: 404 for an unknown asset or
order, 400 for a bad form or query, 409 for an action the order's state forbids, 503 when a service
the page needs is down; never a stack trace.

Behind the Istio ingress gateway the pages live under a path prefix (``/manufacturing/``), which the
gateway does not strip; locally they are at ``/``. The app answers at both, and every link it writes
is relative to the prefix the request came in on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from apps import charts
from apps.web import (PathPrefix, answer_request_errors, base_path, local_target, moment_ms, number, pretty,
                      wants_json, when)
from apps.manufacturing import assets, pictures
from apps.manufacturing.fleet import Fleet, ServiceDown, summary
from apps.manufacturing.workorders import ACTIVE, STATES, InvalidTransition
from services.runtime.tensors import decode_tensor

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KEEPALIVE_S = 15.0
TELEMETRY_POINTS = 400
HISTORY_ROWS = 60
TREND_EVENTS = 500


def create_web_app(fleet: Fleet, path_prefix: str = "") -> "PathPrefix":
    app = FastAPI(title="modalmesh manufacturing", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=when, number=number, pretty=pretty)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_handlers(app, templates)

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"base": base_path(request), **context}, status_code=status_code)

    @app.get("/", response_class=HTMLResponse)
    async def dashboard(request: Request):
        return page(request, "dashboard.html", fleet=await asyncio.to_thread(fleet.snapshot))

    @app.get("/assets/{asset_id}", response_class=HTMLResponse)
    async def asset_page(request: Request, asset_id: str):
        twin = await asyncio.to_thread(fleet.twins.get, asset_id)
        context = await asyncio.to_thread(_asset_context, fleet, twin)
        try:
            telemetry, telemetry_error = await fleet.telemetry(asset_id, TELEMETRY_POINTS), None
        except (ServiceDown, LookupError) as error:
            telemetry, telemetry_error = None, str(error)
        return page(request, "asset.html", twin=twin, telemetry_charts=_telemetry_charts(telemetry),
                    telemetry_error=telemetry_error, outages=fleet.availability.outages(), **context)

    @app.get("/assets/{asset_id}/{kind}.png")
    async def asset_image(asset_id: str, kind: str):
        if kind not in (pictures.INSPECTION_IMAGE, pictures.SPECTROGRAM_IMAGE):
            raise HTTPException(404, f"no image kind {kind!r}")
        png = await asyncio.to_thread(fleet.images.get, asset_id, kind)
        if png is None:
            raise HTTPException(404, f"no {kind} image of {asset_id} yet")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/work-orders", response_class=HTMLResponse)
    async def work_orders_page(request: Request, state: str = ""):
        states = _states(state)
        orders = await asyncio.to_thread(fleet.orders.list, states=states)
        return page(request, "work_orders.html", orders=orders, state=state, states=STATES)

    @app.post("/work-orders/{order_id}/{action}")
    async def work_order_action(request: Request, order_id: int, action: str):
        form = await _form(request)
        if action == "schedule":
            start, end = _form_time(form, "window_start"), _form_time(form, "window_end")
            order = await fleet.schedule(order_id, start, end)
        elif action == "complete":
            order = await fleet.complete(order_id)
        elif action == "cancel":
            order = await fleet.cancel(order_id)
        else:
            raise HTTPException(404, f"no action {action!r}; schedule, complete or cancel")
        if wants_json(request):
            return JSONResponse(order.as_dict())
        return RedirectResponse(form.get("next") if local_target(form.get("next")) else f"{base_path(request)}/work-orders",
                                status_code=303)

    @app.get("/events")
    async def events(request: Request):
        return StreamingResponse(_fleet_stream(request, fleet), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/fleet")
    async def api_fleet():
        return await asyncio.to_thread(fleet.snapshot)

    @app.get("/api/assets/{asset_id}")
    async def api_asset(asset_id: str):
        twin = await asyncio.to_thread(fleet.twins.get, asset_id)
        return twin.as_dict()

    @app.get("/api/assets/{asset_id}/history")
    async def api_history(asset_id: str, from_revision: int | None = None, to_revision: int | None = None,
                          since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000):
        if not 1 <= limit <= 10_000:
            raise HTTPException(400, "limit is 1 to 10000")
        await asyncio.to_thread(fleet.twins.get, asset_id)   # 404 for an unknown asset
        found = await asyncio.to_thread(fleet.twins.history, asset_id, from_revision=from_revision,
                                        to_revision=to_revision, since_ms=since_ms, until_ms=until_ms, limit=limit)
        return [event.as_dict() for event in found]

    @app.get("/api/assets/{asset_id}/telemetry")
    async def api_telemetry(asset_id: str, max_points: int = 1000):
        if not 1 <= max_points <= 100_000:
            raise HTTPException(400, "max_points is 1 to 100000")
        reply = await fleet.telemetry(asset_id, max_points)
        times, values = _telemetry_arrays(reply)
        return {"asset_id": asset_id, "sensors": list(reply.sensors), "timestamps_ms": times.tolist(),
                "values": values.tolist(), "matched_rows": reply.matched_rows}

    @app.get("/api/work-orders")
    async def api_work_orders(state: str = "", asset_id: str | None = None):
        orders = await asyncio.to_thread(fleet.orders.list, asset_id=asset_id, states=_states(state))
        return [order.as_dict() for order in orders]

    return PathPrefix(app, path_prefix)


async def _fleet_stream(request: Request, fleet: Fleet):
    """A ``fleet`` event with the whole snapshot after every change; a comment now and then keeps the
    connection open through proxies."""
    seen = -1
    while not fleet.updates.closed and not await request.is_disconnected():
        version = await fleet.updates.wait_newer(seen, KEEPALIVE_S)
        if version == seen:
            yield ": keep-alive\n\n"
            continue
        seen = version
        snapshot = await asyncio.to_thread(fleet.snapshot)
        yield f"event: fleet\nid: {version}\ndata: {json.dumps(snapshot, separators=(',', ':'))}\n\n"


def _asset_context(fleet: Fleet, twin) -> dict:
    orders = fleet.orders.list(asset_id=twin.twin_id)
    recent = fleet.twins.history(twin.twin_id, newest_first=True, limit=HISTORY_ROWS)
    trend_events = fleet.twins.history(twin.twin_id, newest_first=True, limit=TREND_EVENTS)
    return {"summary": summary(twin, [o.as_dict() for o in orders if o.state in ACTIVE]), "orders": orders,
            "history": recent, "rul_chart": _rul_chart(reversed(trend_events)),
            "has_inspection": fleet.images.get(twin.twin_id, pictures.INSPECTION_IMAGE) is not None,
            "has_spectrogram": fleet.images.get(twin.twin_id, pictures.SPECTROGRAM_IMAGE) is not None}


def _rul_chart(events) -> str:
    """Remaining life with its interval over time, from the twin's history (every estimate it recorded)."""
    times, cycles, lower, upper = [], [], [], []
    for event in events:
        life = (event.patch.get("features") or {}).get(assets.REMAINING_LIFE) or {}
        properties = life.get("properties") or {}
        if properties.get("cycles") is not None:
            times.append(properties.get("asOfMs") or event.timestamp_ms)
            cycles.append(properties["cycles"])
            lower.append(properties.get("lowerCycles"))
            upper.append(properties.get("upperCycles"))
    return charts.line_chart(times, {"remaining life": cycles}, band=(lower, upper),
                             title="Remaining useful life", unit="cycles")


def _telemetry_arrays(reply) -> tuple[np.ndarray, np.ndarray]:
    return decode_tensor(reply.timestamps_ms, "timestamps_ms"), decode_tensor(reply.values, "values")


def _telemetry_charts(reply) -> list[str]:
    if reply is None:
        return []
    times, values = _telemetry_arrays(reply)
    return [charts.line_chart(times.tolist(), {name: values[:, i].tolist()}, title=name, width=420, height=130)
            for i, name in enumerate(reply.sensors)]


def _add_error_handlers(app: FastAPI, templates: Jinja2Templates) -> None:
    def error(request: Request, status: int, message: str):
        if wants_json(request) or request.url.path.startswith(f"{base_path(request)}/api/"):
            return JSONResponse({"error": message, "status": status}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"base": base_path(request), "status": status,
                                                                  "message": message}, status_code=status)

    answer_request_errors(app, error)

    @app.exception_handler(LookupError)   # an unknown twin, work order, or asset of the IoT service
    async def not_found(request, exc):
        return error(request, 404, f"not found: {exc}")

    @app.exception_handler(InvalidTransition)
    async def conflict(request, exc):
        return error(request, 409, str(exc))

    @app.exception_handler(ValueError)
    async def invalid(request, exc):
        return error(request, 400, str(exc))

    @app.exception_handler(ServiceDown)
    async def service_down(request, exc):
        return error(request, 503, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return error(request, 500, "internal error; the app's log has the details")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (or none): the last value of each field."""
    kind = request.headers.get("content-type", "")
    body = await request.body()
    if body and not kind.startswith("application/x-www-form-urlencoded"):
        raise HTTPException(400, "send the form as application/x-www-form-urlencoded")
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode(), strict_parsing=bool(body)).items()}
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid urlencoded text") from None


def _form_time(form: dict[str, str], name: str) -> int:
    """Milliseconds since the epoch from a datetime-local field (UTC) or a number of milliseconds."""
    text = (form.get(name) or "").strip()
    if not text:
        raise HTTPException(400, f"{name} is required")
    return moment_ms(text, name)


def _states(state: str) -> tuple[str, ...] | None:
    if not state:
        return None
    if state == "active":
        return ACTIVE
    if state not in STATES:
        raise HTTPException(400, f"state is one of {', '.join(STATES)} or active")
    return (state,)
