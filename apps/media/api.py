"""The studio's JSON API: jobs, their live progress (Server-Sent Events) and their files.

    POST /jobs                   a JSON object of options → 202 and the job; 400 naming the fields; 429 queue full
    GET  /jobs                   newest first (?limit=1..200)
    GET  /jobs/{id}              the job
    POST /jobs/{id}/cancel       → the job (cancelled); 409 when it has finished
    POST /jobs/{id}/retry        → 202 and the job (queued again); 409 unless it failed or was cancelled
    DELETE /jobs/{id}            → 204: the job and its files are gone; 409 while it is queued or running
    GET  /jobs/{id}/events       `event: job` with the job after every change, until it finishes
    GET  /jobs/{id}/files/{name} story.txt, scene-NN.wav, scene-NN.png, music.wav, video.mp4 (Range), subtitles.vtt

Errors are JSON: {"error": message} (and "violations": [[field, description]] for bad options), whatever
the app around the router does with its own errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from apps.media.options import InvalidJob, job_options
from apps.media.studio import JobStateError, QueueFull, Studio

KEEPALIVE_S = 15.0
MAX_BODY_BYTES = 64 * 1024
MAX_LIST = 200
MEDIA_TYPES = {".mp4": "video/mp4", ".vtt": "text/vtt; charset=utf-8", ".png": "image/png", ".wav": "audio/wav",
               ".txt": "text/plain; charset=utf-8"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, violations: list | None = None):
        super().__init__(message)
        self.status, self.message, self.violations = status, message, violations

    def response(self) -> JSONResponse:
        body = {"error": self.message}
        if self.violations is not None:
            body["violations"] = [list(v) for v in self.violations]
        return JSONResponse(body, status_code=self.status, headers={"Cache-Control": "no-store"})


def api_router(studio: Studio) -> APIRouter:
    router = APIRouter(route_class=AnsweringErrors)

    @router.post("/jobs", status_code=202)
    async def submit(request: Request):
        options = job_options(await _json_object(request))
        return (await studio.submit(options)).as_dict()

    @router.get("/jobs")
    async def jobs(limit: str = "50"):
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST:
            raise ApiError(400, f"limit: give 1 to {MAX_LIST}", [("limit", f"1 to {MAX_LIST}")])
        return [job.as_dict() for job in await studio.list(int(limit))]

    @router.get("/jobs/{job_id}")
    async def job(job_id: str):
        return (await studio.get(job_id)).as_dict()

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        return (await studio.cancel(job_id)).as_dict()

    @router.post("/jobs/{job_id}/retry", status_code=202)
    async def retry(job_id: str):
        return (await studio.retry(job_id)).as_dict()

    @router.delete("/jobs/{job_id}", status_code=204)
    async def delete(job_id: str):
        await studio.delete(job_id)
        return Response(status_code=204)

    @router.get("/jobs/{job_id}/events")
    async def events(request: Request, job_id: str):
        await studio.get(job_id)   # 404 before the stream starts
        return StreamingResponse(job_events(request, studio, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.get("/jobs/{job_id}/files/{name}")
    async def file(job_id: str, name: str):
        await studio.get(job_id)
        path = studio.file(job_id, name)
        # FileResponse answers Range requests (206), so a browser can seek in the video.
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    return router


async def job_events(request: Request, studio: Studio, job_id: str) -> AsyncIterator[str]:
    """A ``job`` event after every change until the job finishes (or the studio closes); a comment line as
    keep-alive when nothing changed for ``KEEPALIVE_S``."""
    seen = -1
    while not studio.closed and not await request.is_disconnected():
        job = await studio.watch(job_id, seen, KEEPALIVE_S)
        if job.version <= seen:
            yield ": keep-alive\n\n"
            continue
        seen = job.version
        yield f"event: job\nid: {job.version}\ndata: {json.dumps(job.as_dict(), separators=(',', ':'))}\n\n"
        if job.finished:
            return


async def _json_object(request: Request) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        values = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body is not JSON; send a JSON object of the job's options") from None
    if not isinstance(values, dict):
        raise ApiError(400, "send a JSON object of the job's options, e.g. {\"prompt\": \"a fox in a forest\"}")
    return values


class AnsweringErrors(APIRoute):
    """Routes that answer the studio's exceptions as JSON themselves: the router carries its errors with it,
    whichever app includes it."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def answer(request: Request):
            try:
                return await handler(request)
            except ApiError as error:
                return error.response()
            except InvalidJob as error:
                return ApiError(400, str(error), error.violations).response()
            except QueueFull as error:
                return ApiError(429, str(error)).response()
            except JobStateError as error:
                return ApiError(409, str(error)).response()
            except LookupError as error:
                return ApiError(404, str(error).strip("'\"")).response()

        return answer
