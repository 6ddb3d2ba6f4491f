"""The media studio's web app: the studio page (the prompt form and the gallery of past jobs), a page per job
whose steps, story, scenes and video follow the job live (Server-Sent Events of the JSON API), and the JSON
API itself (apps/media/api.py) under /api. Every failure is a clear status: 400 with the form again and the
messages beside its fields, 404 for an unknown job, 409 for an action its state forbids, 413 for a form past
the limit, 429 when the queue is full; never a stack trace. A finished job's page can delete it (its files
too), which leads back to the studio page.

Like every app, it answers under the gateway's path prefix (``/media/``) and at ``/``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from apps.media.api import api_router
from apps.media import options
from apps.media.jobs import FINISHED, UNFINISHED
from apps.media.options import FIELDS, STYLES, VOICE_LABELS, InvalidJob, JobOptions, job_options
from apps.media.studio import JobStateError, QueueFull, Studio
from apps.web import PathPrefix, answer_request_errors, base_path, form_fields, number, wants_json, when

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
GALLERY_JOBS = 48
# Far above any valid form (a prompt is at most a few thousand characters), so an over-long prompt is
# answered beside its field, and only a body that is no form at all is refused whole.
MAX_FORM_BYTES = 256 * 1024
RETRYABLE = tuple(state for state in FINISHED if state != "done")
# What the form's inputs allow, so the browser says at once what the server would answer.
LIMITS = {"prompt_chars": options.MAX_PROMPT_CHARS, "scenes": (options.MIN_SCENES, options.MAX_SCENES),
          "words_per_minute": (options.MIN_WORDS_PER_MINUTE, options.MAX_WORDS_PER_MINUTE), "seed": options.MAX_SEED}


def create_web_app(studio: Studio, path_prefix: str = "/media") -> PathPrefix:
    app = FastAPI(title="modalmesh media studio", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.trim_blocks = templates.env.lstrip_blocks = True
    templates.env.filters.update(when=when, number=number, minutes=minutes)
    templates.env.globals.update(scene_file=scene_file, ACTIVE=UNFINISHED, RETRYABLE=RETRYABLE, FINISHED=FINISHED)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api_router(studio), prefix="/api")
    _add_error_handlers(app, templates)

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"base": base_path(request),
                                                          "outages": studio.availability.outages(), **context},
                                          status_code=status_code)

    async def studio_page(request: Request, values: dict, errors: dict[str, list[str]], status_code: int = 200):
        jobs = [job.as_dict() for job in await studio.list(GALLERY_JOBS)]
        return page(request, "studio.html", status_code, values=values, errors=errors, jobs=jobs,
                    voices=VOICE_LABELS, styles=STYLES, limits=LIMITS)

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request):
        return await studio_page(request, _default_values(), {})

    @app.post("/jobs")
    async def submit(request: Request):
        form = await form_fields(request, MAX_FORM_BYTES)
        try:
            job = await studio.submit(job_options(_options_fields(form)))
        except InvalidJob as invalid:
            if wants_json(request):
                return _json_error(400, str(invalid), invalid.violations)
            return await studio_page(request, _kept_values(form), _errors_by_field(invalid.violations), 400)
        if wants_json(request):
            return JSONResponse(job.as_dict(), status_code=202)
        return RedirectResponse(f"{base_path(request)}/jobs/{job.job_id}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: str):
        job = await studio.get(job_id)
        return page(request, "job.html", job=job.as_dict())

    @app.post("/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: str):
        return _after_action(request, await studio.cancel(job_id))

    @app.post("/jobs/{job_id}/retry")
    async def retry(request: Request, job_id: str):
        return _after_action(request, await studio.retry(job_id))

    @app.post("/jobs/{job_id}/delete")
    async def delete(request: Request, job_id: str):
        await studio.delete(job_id)
        if wants_json(request):
            return Response(status_code=204)
        return RedirectResponse(f"{base_path(request)}/", status_code=303)   # the gallery, without it

    return PathPrefix(app, path_prefix)


def _after_action(request: Request, job):
    if wants_json(request):
        return JSONResponse(job.as_dict())
    return RedirectResponse(f"{base_path(request)}/jobs/{job.job_id}", status_code=303)


# -- the form ------------------------------------------------------------------------------------------

def _default_values() -> dict[str, str]:
    """The form as it first shows: JobOptions' own defaults, so the page never disagrees with the API."""
    defaults = {f.name: f.default for f in dataclasses.fields(JobOptions) if f.default is not dataclasses.MISSING}
    return {name: _field_text(defaults.get(name)) for name in FIELDS}


def _field_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else ""
    return str(value)


def _options_fields(form: dict[str, str]) -> dict[str, object]:
    """What the form sent, as job_options reads it: an unchecked box is absent from a form, so music is
    whether it was there; what is not a field of a job (a button's name) is left out."""
    fields: dict[str, object] = {k: v for k, v in form.items() if k in FIELDS and k != "music"}
    fields["music"] = "music" in form
    return fields


def _kept_values(form: dict[str, str]) -> dict[str, str]:
    """The form again as it was sent, so a correction does not mean typing it all again."""
    return {name: form.get(name, "") for name in FIELDS}


def _errors_by_field(violations) -> dict[str, list[str]]:
    """Each message beside its field; those of no field of the form under the key "" (shown above it)."""
    errors: dict[str, list[str]] = {}
    for field, description in violations:
        errors.setdefault(field if field in FIELDS else "", []).append(description)
    return errors


# -- what the pages show -------------------------------------------------------------------------------

def scene_file(index: int, suffix: str) -> str:
    """A scene's file name in the job's folder: scene-01.png, scene-01.wav."""
    return f"scene-{index:02d}.{suffix}"


def minutes(seconds) -> str:
    """A duration as m:ss."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


# -- errors --------------------------------------------------------------------------------------------

def _json_error(status: int, message: str, violations=()) -> JSONResponse:
    body: dict = {"error": message, "status": status}
    if violations:
        body["violations"] = [list(v) for v in violations]
    return JSONResponse(body, status_code=status)


def _add_error_handlers(app: FastAPI, templates: Jinja2Templates) -> None:
    def error(request: Request, status: int, message: str, violations=()):
        if wants_json(request) or request.url.path.startswith(f"{base_path(request)}/api/"):
            return _json_error(status, message, violations)
        return templates.TemplateResponse(request, "error.html", {"base": base_path(request), "status": status,
                                                                  "message": message, "violations": violations},
                                          status_code=status)

    answer_request_errors(app, error)

    @app.exception_handler(LookupError)   # an unknown job or file
    async def not_found(request, exc):
        return error(request, 404, f"not found: {exc.args[0] if exc.args else 'no such job'}")

    @app.exception_handler(JobStateError)
    async def conflict(request, exc):
        return error(request, 409, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc):
        return error(request, 429, str(exc) or "the studio's queue is full; try again when a job has finished")

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return error(request, 500, "internal error; the app's log has the details")
