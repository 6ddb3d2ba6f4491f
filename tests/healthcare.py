"""Test harness of the healthcare app: the app as a real process (mutual TLS to the services, its own
users file), a signed-in HTTP client, and phantom studies as the files a clinician would upload."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from services.vision.phantoms import make_phantom
from services.vision.volumes import nifti_bytes
from tests.support import free_port, start_service, wait_for

USER = "clinician"


class Http:
    """urllib with one session cookie and no redirects followed (tests look at the 303s themselves)."""

    def __init__(self, port: int):
        self.root = f"http://127.0.0.1:{port}"
        self.cookie = ""

    def sign_in(self, user: str, password: str) -> None:
        status, _, _, headers = self.request("POST", "/sign-in", urllib.parse.urlencode(
            {"user": user, "password": password, "next": "/"}).encode(), "application/x-www-form-urlencoded")
        assert status == 303, status
        self.cookie = headers["set-cookie"].split(";", 1)[0]

    def get(self, path: str, accept: str = "text/html") -> tuple[int, str, bytes]:
        return self.request("GET", path, accept=accept)[:3]

    def post(self, path: str, body: bytes | dict | None = None, content_type: str = "",
             accept: str = "application/json", timeout: float = 300) -> tuple[int, str, bytes]:
        if isinstance(body, dict):
            body, content_type = urllib.parse.urlencode(body).encode(), "application/x-www-form-urlencoded"
        return self.request("POST", path, body, content_type, accept, timeout)[:3]

    def json(self, path: str):
        status, _, body = self.get(path, accept="application/json")
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "",
                accept: str = "text/html", timeout: float = 60):
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        if self.cookie:
            headers["Cookie"] = self.cookie
        request = urllib.request.Request(self.root + path, data=body, method=method, headers=headers)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=timeout) as reply:
                return reply.status, reply.headers.get("content-type", ""), reply.read(), reply.headers
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("content-type", ""), error.read(), error.headers


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def start_app(pki, tmp: Path, services: dict, **settings):
    """The app on free ports with its data under ``tmp/app-data``; ``services``: name → ServiceProcess."""
    http_port = free_port()
    addresses = {f"{name}_address": process.target for name, process in services.items()}
    data_dir = settings.pop("data_dir", tmp / "app-data")
    app = start_service("apps.healthcare", pki, tmp, "healthcare", http_port=http_port, data_dir=data_dir,
                        drain_grace_s=5, **addresses, **settings)
    http = Http(http_port)
    try:
        wait_for(lambda: _answers(http), timeout=30)
        http.sign_in(USER, (Path(data_dir) / "initial-password").read_text().strip())
    except BaseException:
        app.stop(5)
        raise
    return app, http


def _answers(http: Http) -> bool:
    try:
        return http.get("/sign-in")[0] == 200
    except OSError:
        return False


def phantom_study(anatomy_seed: int, lesion_radius_mm: float, **options) -> tuple[bytes, dict[str, float]]:
    """A NIfTI-gz study of a phantom, and its true structure volumes in mL."""
    phantom = make_phantom(anatomy_seed, lesion_radius_mm=lesion_radius_mm, **options)
    voxel_ml = float(abs(np.linalg.det(phantom.volume.affine[:3, :3]))) / 1000
    truth = {name: float((phantom.labels == label).sum()) * voxel_ml for label, name in ((1, "organ"), (2, "lesion"))}
    return nifti_bytes(phantom.volume.voxels, phantom.volume.affine), truth


@dataclass
class Stack:
    """The services, the app with the demo seeded, and a signed-in client of it."""

    tmp: Path
    services: dict
    app: object
    http: Http

    def wait_for_demo(self, timeout: float = 300) -> list[dict]:
        """The demo's three patients once each has its three studies and its notes."""
        def seeded():
            listed = [p for p in self.http.json("/api/patients") if p["synthetic"]]
            return len(listed) == 3 and all(p["studies"] == 3 for p in listed) and all(
                self.http.json(f"/api/patients/{p['patient_id']}")["features"].get("notes") for p in listed)
        try:
            wait_for(seeded, timeout=timeout, interval=1)
        except TimeoutError:
            raise AssertionError(f"the demo was not seeded:\n{self.app.log_tail(4000)}") from None
        return [p for p in self.http.json("/api/patients") if p["synthetic"]]

    def new_patient(self, sex: str = "female", birth_year: int = 1970) -> str:
        status, _, body = self.http.post("/api/patients", json.dumps({"sex": sex, "birth_year": birth_year}).encode(),
                                         "application/json")
        assert status == 201, body
        return json.loads(body)["twinId"]

    def upload(self, patient_id: str, data: bytes, acquired: str = "", wait: bool = True):
        query = urllib.parse.urlencode({"acquired": acquired, "wait": str(wait).lower()})
        status, _, body = self.http.post(f"/api/patients/{patient_id}/studies?{query}", data,
                                         "application/octet-stream")
        return status, json.loads(body)


_SHARED: dict[str, Stack] = {}


@pytest.fixture(scope="session")
def healthcare_stack(pki, tmp_path_factory, request) -> Stack:
    """Vision (the packaged segmentation model), IoT (the vitals anomaly model), text and audio services,
    and the app seeding the demo: each a real process over mutual TLS. Started once per session for every
    healthcare test module (each imports this fixture, so the stack is kept here) and stopped at its end."""
    if "stack" not in _SHARED:
        _SHARED["stack"] = _start_stack(pki, tmp_path_factory.mktemp("healthcare"), request.config)
    return _SHARED["stack"]


def _start_stack(pki, tmp: Path, config) -> Stack:
    started = []

    def stop():
        for process in reversed(started):
            process.stop(20)
        _SHARED.clear()

    config.add_cleanup(stop)
    services = {}
    for name, settings in (("vision", {}), ("iot", IOT_SETTINGS | {"data_dir": tmp / "iot"}), ("text", {}),
                           ("audio", {})):
        services[name] = start_service(f"services.{name}", pki, tmp, name, **settings)
        started.append(services[name])
    app, http = start_app(pki, tmp, services, seed_demo="true", vitals_interval_s=1, demo_vitals_interval_s=1,
                          max_study_bytes=MAX_STUDY_BYTES)
    started.append(app)
    return Stack(tmp, services, app, http)


IOT_SETTINGS = {"anomaly_model": "", "remaining_life_model": ""}   # the pumps' models: not needed here
MAX_STUDY_BYTES = 8 * 2**20
