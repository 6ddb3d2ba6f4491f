"""Test harness of the media studio: the text, audio and vision services and the app, each a real process over
mutual TLS, with the app small and fast (640x360 video at 12 fps), and a client of its JSON API.

``media_stack`` is started once per session for every media test module; a test that must stop, kill or
restart the app (or point it elsewhere) starts its own with ``start_media_app``, so the shared one is never
disturbed."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modalmesh.launch import launch
from tests.support import ServiceProcess, free_port, serving, start_service, wait_for

FINISHED = ("done", "failed", "cancelled")
# Small and fast: a job of two or three scenes takes seconds of video work, not minutes.
APP_SETTINGS = {"video_width": 640, "video_height": 360, "video_fps": 12, "picture_width": 640,
                "picture_height": 360, "call_timeout_s": 60, "drain_grace_s": 5}
VISION_SETTINGS = {"segmentation_model": ""}   # the 3D segmentation model is not needed here
SERVICE_SETTINGS = {"model_threads": 2, "drain_grace_s": 20}   # as tests/support.py start_service


@dataclass
class MediaApp:
    """One app process and a client of its JSON API."""

    app: ServiceProcess
    root: str            # http://127.0.0.1:port
    data_dir: Path

    def api(self, method: str, path: str, body=None, timeout: float = 60) -> tuple[int, object]:
        """``/api`` + path; ``body`` is sent as JSON (bytes as they are). (status, decoded JSON or text)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.root}/api{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                status, raw, kind = reply.status, reply.read(), reply.headers.get("content-type", "")
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get("content-type", "")
        return status, json.loads(raw) if kind.startswith("application/json") else raw.decode(errors="replace")

    def submit(self, **options) -> dict:
        status, job = self.api("POST", "/jobs", options)
        assert status == 202, (status, job)
        return job

    def job(self, job_id: str) -> dict:
        status, job = self.api("GET", f"/jobs/{job_id}")
        assert status == 200, (status, job)
        return job

    def wait_job(self, job_id: str, timeout: float = 180, until=lambda job: job["state"] in FINISHED) -> dict:
        """The job once ``until(job)`` (by default: once it is done, failed or cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job['steps']}\n"
                                     f"{self.app.log_tail(3000)}")
            time.sleep(0.1)

    def file(self, job_id: str, name: str) -> Path:
        return self.data_dir / "jobs" / job_id / name

    def answers(self) -> bool:
        try:
            return self.api("GET", "/jobs", timeout=5)[0] == 200
        except OSError:
            return False


@dataclass
class MediaStack(MediaApp):
    """The shared services and app of the session."""

    tmp: Path = Path()
    services: dict[str, ServiceProcess] = field(default_factory=dict)


def service_addresses(services: dict[str, ServiceProcess]) -> dict[str, str]:
    return {f"{name}_address": process.target for name, process in services.items()}


def start_media_app(pki, tmp: Path, services: dict[str, ServiceProcess], **settings) -> MediaApp:
    """The app on free ports with its data under ``tmp/media-data`` (or ``data_dir``), talking to ``services``."""
    http_port = free_port()
    data_dir = Path(settings.pop("data_dir", tmp / "media-data"))
    app = start_service("apps.media", pki, tmp, "media", http_port=http_port, data_dir=data_dir,
                        **(service_addresses(services) | APP_SETTINGS | settings))
    media = MediaApp(app, f"http://127.0.0.1:{http_port}", data_dir)
    try:
        wait_for(media.answers, timeout=30, interval=0.1)
    except BaseException:
        app.stop(5)
        raise
    return media


def start_service_on_port(port: int, module: str, pki, tmp: Path, workload: str, **settings) -> ServiceProcess:
    """A service on a given port: one started again where its clients already look for it."""
    service = launch(module, pki, tmp, workload, **(SERVICE_SETTINGS | settings | {"grpc_port": port}))
    service.port = port   # launch picked another free port; the process listens on this one
    return serving(service)


_SHARED: dict[str, MediaStack] = {}


@pytest.fixture(scope="session")
def media_stack(pki, tmp_path_factory, request) -> MediaStack:
    """Text (the storyteller), audio (espeak-ng) and vision (the picture library) services and the app, each a
    real process over mutual TLS. Started once per session for every media test module (each imports this
    fixture, so the stack is kept here) and stopped at its end."""
    if "stack" not in _SHARED:
        _SHARED["stack"] = _start_stack(pki, tmp_path_factory.mktemp("media"), request.config)
    return _SHARED["stack"]


def start_media_services(pki, tmp: Path, started: list) -> dict[str, ServiceProcess]:
    """The three services, started together (each loads its models while the others do)."""
    services = {name: launch(f"services.{name}", pki, tmp, name, **(SERVICE_SETTINGS | settings))
                for name, settings in (("text", {}), ("audio", {}), ("vision", VISION_SETTINGS))}
    started.extend(services.values())
    for service in services.values():
        service.wait_serving()
    return services


def _start_stack(pki, tmp: Path, config) -> MediaStack:
    started = []

    def stop():
        for process in reversed(started):
            process.stop(20)
        _SHARED.clear()

    config.add_cleanup(stop)
    services = start_media_services(pki, tmp, started)
    media = start_media_app(pki, tmp, services)
    started.append(media.app)
    return MediaStack(media.app, media.root, media.data_dir, tmp, services)
