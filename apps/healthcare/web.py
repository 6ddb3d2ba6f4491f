"""The web app: server-rendered pages (patient list, patient page with the slice viewer, plots, notes and
findings), study upload with progress over Server-Sent Events, NIfTI downloads, and a JSON API. Every
route is behind sign-in (apps/healthcare/auth.py). Failures are clear statuses (400 with the vision
service's field violations, 404, 413, 503), never a stack trace; nothing about a patient is logged.

Like every app, the pages answer under the gateway's path prefix (``/healthcare/``) and at ``/``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from apps import charts
from apps.healthcare import patients, slices
from apps.healthcare.auth import Sessions, Users, install_sign_in
from apps.healthcare.clinic import SYNTHETIC, Clinic
from apps.healthcare.ingest import IngestError
from apps.healthcare.jobs import FINISHED
from apps.healthcare.monitoring import VITALS_ASSET, anomaly_periods
from apps.healthcare.notes import MAX_VOICE_BYTES, NoteRefused, NoteServiceDown
from apps.healthcare.privacy import error_fields
from apps.healthcare.studies import IMAGE, LABELS
from apps.twins import now_ms
from apps.web import (PathPrefix, answer_request_errors, base_path, moment_ms, number, pretty, wants_json,
                      when)
from modalmesh.v1 import iot_pb2
from services.iot.vitals import PATIENT_VITALS
from services.runtime.tensors import decode_tensor

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
KEEPALIVE_S = 15.0
VITALS_HOURS = 8
VITALS_POINTS = 480
HISTORY_ROWS = 40
MAX_FORM_BYTES = 64 * 1024


def create_web_app(clinic: Clinic, users: Users, sessions: Sessions, path_prefix: str = "",
                   secure_cookies: bool = False) -> PathPrefix:
    app = FastAPI(title="modalmesh healthcare", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=when, number=number, pretty=pretty, day=_day)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_handlers(app, templates)
    install_sign_in(app, users, sessions, templates, secure_cookies=secure_cookies)
    background: set[asyncio.Task] = set()

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"base": base_path(request),
                                                          "user": request.state.user, **context})

    # -- pages -----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def patient_list(request: Request):
        twins = await asyncio.to_thread(clinic.patient_list)
        return page(request, "patients.html", patients=[_summary(clinic, t) for t in twins],
                    outages=clinic.availability.outages())

    @app.post("/patients")
    async def admit(request: Request):
        form = await _body_fields(request)
        twin = await asyncio.to_thread(clinic.admit, form.get("sex", ""), _int(form.get("birth_year"), "birth_year"))
        if wants_json(request) or _is_api(request):
            return JSONResponse(twin.as_dict(), status_code=201)
        return RedirectResponse(f"{base_path(request)}/patients/{twin.twin_id}", status_code=303)

    @app.get("/patients/{patient_id}", response_class=HTMLResponse)
    async def patient_page(request: Request, patient_id: str, study: str = ""):
        twin = await asyncio.to_thread(clinic.patient, patient_id)
        context = await asyncio.to_thread(_patient_context, clinic, twin, study)
        vitals_charts, vitals_error = await _vitals_charts(clinic, twin)
        return page(request, "patient.html", twin=twin, vitals_charts=vitals_charts, vitals_error=vitals_error,
                    jobs=clinic.jobs.active(patient_id), outages=clinic.availability.outages(), **context)

    @app.get("/patients/{patient_id}/studies/{study_id}/slices/{plane}/{index}.png")
    async def slice_image(patient_id: str, study_id: str, plane: str, index: int, overlay: int = 1):
        if plane not in slices.PLANES:
            raise HTTPException(404, f"no plane {plane!r}; {', '.join(slices.PLANES)}")
        volume = await asyncio.to_thread(clinic.slice_volume, patient_id, study_id)
        if not 0 <= index < slices.slice_count(volume, plane):
            raise HTTPException(404, f"the {plane} slices are 0 to {slices.slice_count(volume, plane) - 1}")
        png = await asyncio.to_thread(slices.render_slice, volume, plane, index, overlay=bool(overlay))
        return Response(png, media_type="image/png")   # no-store, as all patient data (auth.py)

    @app.get("/patients/{patient_id}/studies/{study_id}/{kind}.nii.gz")
    async def download(patient_id: str, study_id: str, kind: str):
        if kind not in (IMAGE, LABELS):
            raise HTTPException(404, f"no file {kind!r}; {IMAGE} or {LABELS}")
        path = await asyncio.to_thread(clinic.study_file, patient_id, study_id, kind)
        return FileResponse(path, media_type="application/gzip", filename=f"{study_id}-{kind}.nii.gz")

    @app.post("/patients/{patient_id}/notes")
    async def add_note(request: Request, patient_id: str):
        form = await _body_fields(request)
        note = await clinic.notes.add_text(patient_id, form.get("text", ""))
        if wants_json(request) or _is_api(request):
            return JSONResponse(note, status_code=201)
        return RedirectResponse(f"{base_path(request)}/patients/{patient_id}#notes", status_code=303)

    @app.post("/patients/{patient_id}/voice-notes")
    async def add_voice_note(request: Request, patient_id: str):
        await asyncio.to_thread(clinic.patient, patient_id)
        wav = await _limited_body(request, MAX_VOICE_BYTES)
        note = await clinic.notes.add_voice(patient_id, wav)
        return JSONResponse(note, status_code=201)

    @app.post("/patients/{patient_id}/findings/{finding_id}/acknowledge")
    async def acknowledge(request: Request, patient_id: str, finding_id: str):
        twin = await asyncio.to_thread(clinic.patient, patient_id)
        if finding_id not in twin.reported(patients.FINDINGS).get("items", {}):
            raise HTTPException(404, "no such finding")
        patch = {"features": {patients.FINDINGS: {"properties": {"items": {finding_id: {
            "status": "acknowledged", "acknowledgedBy": request.state.user, "acknowledgedMs": now_ms()}}}}}}
        await asyncio.to_thread(clinic.twins.modify, patient_id, patch, kind="finding-acknowledged")
        if wants_json(request) or _is_api(request):
            return JSONResponse({"findingId": finding_id, "status": "acknowledged"})
        return RedirectResponse(f"{base_path(request)}/patients/{patient_id}#findings", status_code=303)

    @app.post("/patients/{patient_id}/studies")
    async def upload_study(request: Request, patient_id: str, acquired: str = "", wait: bool = True):
        """The study file is the request body (NIfTI or a zip of a DICOM series). ``wait``: answer once
        it is ingested (201), or at once with the job to follow (202)."""
        await asyncio.to_thread(clinic.patient, patient_id)
        acquired_ms = _acquired_ms(acquired)
        declared = _content_length(request)
        if declared > clinic.ingestor.max_study_bytes:
            raise IngestError(413, f"the study is {declared} bytes, over the limit of "
                                   f"{clinic.ingestor.max_study_bytes}")
        job = clinic.jobs.create(patient_id, declared)
        upload = await clinic.ingestor.receive(job, _upload(request))
        work = asyncio.ensure_future(clinic.ingestor.ingest(job, upload, acquired_ms))
        if wait:
            study = await work
            return JSONResponse({"job": job.as_dict(), "study": study}, status_code=201)
        background.add(work)
        work.add_done_callback(_finished(background))
        return JSONResponse({"job": job.as_dict(), "events": f"{base_path(request)}/jobs/{job.job_id}/events"},
                            status_code=202)

    @app.get("/jobs/{job_id}")
    async def job_state(job_id: str):
        return clinic.jobs.get(job_id).as_dict()

    @app.get("/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str):
        job = clinic.jobs.get(job_id)
        return StreamingResponse(_job_stream(request, clinic, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- JSON API ----------------------------------------------------------------------------------

    @app.get("/api/patients")
    async def api_patients():
        twins = await asyncio.to_thread(clinic.patient_list)
        return [_summary(clinic, t) for t in twins]

    @app.post("/api/patients")
    async def api_admit(request: Request):
        return await admit(request)

    @app.get("/api/patients/{patient_id}")
    async def api_patient(patient_id: str):
        return (await asyncio.to_thread(clinic.patient, patient_id)).as_dict()

    @app.get("/api/patients/{patient_id}/history")
    async def api_history(patient_id: str, from_revision: int | None = None, to_revision: int | None = None,
                          since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000):
        if not 1 <= limit <= 10_000:
            raise HTTPException(400, "limit is 1 to 10000")
        await asyncio.to_thread(clinic.patient, patient_id)
        found = await asyncio.to_thread(clinic.twins.history, patient_id, from_revision=from_revision,
                                        to_revision=to_revision, since_ms=since_ms, until_ms=until_ms, limit=limit)
        return [event.as_dict() for event in found]

    @app.post("/api/patients/{patient_id}/studies")
    async def api_upload_study(request: Request, patient_id: str, acquired: str = "", wait: bool = True):
        return await upload_study(request, patient_id, acquired, wait)

    @app.post("/api/patients/{patient_id}/notes")
    async def api_add_note(request: Request, patient_id: str):
        return await add_note(request, patient_id)

    @app.post("/api/patients/{patient_id}/voice-notes")
    async def api_add_voice_note(request: Request, patient_id: str):
        return await add_voice_note(request, patient_id)

    @app.get("/api/jobs/{job_id}")
    async def api_job(job_id: str):
        return clinic.jobs.get(job_id).as_dict()

    return PathPrefix(app, path_prefix)


# -- what the pages show ---------------------------------------------------------------------------

def _summary(clinic: Clinic, twin) -> dict:
    return {**patients.summary(twin, clinic.watched), "synthetic": bool(twin.attributes.get(SYNTHETIC))}


def _patient_context(clinic: Clinic, twin, selected: str) -> dict:
    ordered = patients.studies_in_order(twin)
    study_ids = [sid for sid, _ in ordered]
    selected = selected if selected in study_ids else (study_ids[-1] if study_ids else "")
    viewer = _viewer(clinic, twin.twin_id, selected) if selected else None
    times, series = patients.volume_series(twin)
    notes = sorted(twin.reported(patients.NOTES).get("items", {}).items(), key=lambda n: -n[1].get("atMs", 0))
    findings = sorted(twin.reported(patients.FINDINGS).get("items", {}).items(),
                      key=lambda f: -f[1].get("raisedMs", 0))
    return {"summary": _summary(clinic, twin), "studies": list(reversed(ordered)), "selected": selected,
            "viewer": viewer, "volume_charts": _volume_charts(times, series),
            "notes": notes, "findings": findings, "anomalies": anomaly_periods(twin),
            "history": clinic.twins.history(twin.twin_id, newest_first=True, limit=HISTORY_ROWS)}


def _volume_charts(times: list[int], series: dict[str, list]) -> list[str]:
    """One plot per structure, each on its own scale: a lesion of a few mL beside an organ of a litre
    would otherwise look flat."""
    return [charts.line_chart(times, {name: values}, dots=True, title=f"{name} volume", unit="mL",
                              width=360, height=150) for name, values in series.items()]


def _viewer(clinic: Clinic, patient_id: str, study_id: str) -> dict | None:
    try:
        volume = clinic.slice_volume(patient_id, study_id)
    except (OSError, ValueError) as error:   # files unreadable: the page says so, the rest still shows
        log.warning("study files unreadable", extra=error_fields(error))
        return None
    lesion = next((int(k) for k, v in clinic.study(patient_id, study_id)["labelNames"].items()
                   if v in clinic.watched), None)
    return {plane: {"count": slices.slice_count(volume, plane), "index": slices.middle_index(volume, plane, lesion),
                    "size": slices.display_size(volume, plane)} for plane in slices.PLANES}


async def _vitals_charts(clinic: Clinic, twin) -> tuple[list[str], str | None]:
    asset_id = twin.attributes.get(VITALS_ASSET)
    latest = twin.reported(patients.VITALS).get("latestMs")
    if not asset_id or not latest:
        return [], None
    try:
        reply = await clinic.iot.QueryTelemetry(iot_pb2.QueryTelemetryRequest(
            # to the newest row (end 0): the twin's reading is refreshed only every 15 monitored minutes
            asset_id=asset_id, start_ms=max(0, latest - VITALS_HOURS * 3600_000), end_ms=0, max_points=VITALS_POINTS),
            timeout=clinic.call_timeout_s)
    except grpc.aio.AioRpcError as error:
        return [], f"vitals unavailable ({error.code().name})"
    times, values = decode_tensor(reply.timestamps_ms).tolist(), decode_tensor(reply.values)
    spans = [(p["startMs"], p["endMs"]) for p in anomaly_periods(twin)]
    return [charts.line_chart(times, {name: values[:, i].tolist()}, spans=spans, title=name, unit=unit,
                              width=420, height=130)
            for i, (name, unit) in enumerate(zip(PATIENT_VITALS.sensors, PATIENT_VITALS.units))], None


async def _job_stream(request: Request, clinic: Clinic, job):
    """A ``job`` event with the job's state after every change, until it is done or failed."""
    seen = -1
    while not clinic.jobs.closed and not await request.is_disconnected():
        version = await clinic.jobs.wait_newer(job, seen, KEEPALIVE_S)
        if version == seen:
            yield ": keep-alive\n\n"
            continue
        seen = version
        yield f"event: job\nid: {version}\ndata: {json.dumps(job.as_dict(), separators=(',', ':'))}\n\n"
        if job.state in FINISHED:
            return


def _finished(tasks: set):
    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()   # retrieved: the job already carries the error
    return done


# -- requests --------------------------------------------------------------------------------------

def _add_error_handlers(app: FastAPI, templates: Jinja2Templates) -> None:
    def error(request: Request, status: int, message: str, violations=()):
        if wants_json(request) or _is_api(request) or "text/html" not in request.headers.get("accept", ""):
            body = {"error": message, "status": status}
            if violations:
                body["violations"] = [{"field": f, "description": d} for f, d in violations]
            return JSONResponse(body, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"base": base_path(request), "status": status,
                                                                  "message": message, "violations": violations,
                                                                  "user": getattr(request.state, "user", None)},
                                          status_code=status)

    answer_request_errors(app, error)

    @app.exception_handler(IngestError)
    async def refused_study(request, exc):
        return error(request, exc.status, exc.message, exc.violations)

    @app.exception_handler(NoteRefused)
    async def refused_note(request, exc):
        return error(request, 400, exc.message, exc.violations)

    @app.exception_handler(NoteServiceDown)
    async def note_service_down(request, exc):
        return error(request, 503, str(exc))

    @app.exception_handler(LookupError)   # an unknown patient, study, job or finding
    async def not_found(request, exc):
        return error(request, 404, "not found")

    @app.exception_handler(ValueError)
    async def invalid(request, exc):
        return error(request, 400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.error("request failed", extra=error_fields(exc))
        return error(request, 500, "internal error; the app's log has the details")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(f"{base_path(request)}/api/")


async def _upload(request: Request):
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise IngestError(400, "the upload was interrupted") from None


async def _limited_body(request: Request, limit: int) -> bytes:
    if _content_length(request) > limit:
        raise HTTPException(413, f"the body is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the body is over the limit of {limit} bytes")
    return bytes(body)


async def _body_fields(request: Request) -> dict:
    """A urlencoded form or a JSON object: the fields as strings."""
    kind = request.headers.get("content-type", "")
    body = await _limited_body(request, MAX_FORM_BYTES)
    if kind.startswith("application/json"):
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        if not isinstance(fields, dict):
            raise HTTPException(400, "send a JSON object")
        return {k: str(v) for k, v in fields.items()}
    if body and not kind.startswith("application/x-www-form-urlencoded"):
        raise HTTPException(400, "send a form (application/x-www-form-urlencoded) or JSON")
    try:
        return {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid urlencoded text") from None


def _content_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        raise HTTPException(400, "Content-Length is not a number") from None


def _int(text: str | None, name: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise HTTPException(400, f"{name} is a whole number") from None


def _acquired_ms(text: str) -> int:
    """When the study was acquired: a date (YYYY-MM-DD, UTC midnight), a date and time, or milliseconds;
    empty: now."""
    return moment_ms(text, "acquired", "a date (YYYY-MM-DD)") if text.strip() else now_ms()


def _day(ms) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")

