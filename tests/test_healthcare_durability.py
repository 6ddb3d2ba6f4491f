"""kill -9 of the healthcare app while several studies are being ingested, then a restart on the same data:
every twin holds whole updates only (its state is its event log replayed, each study entry complete, one
revision per event), every study the twin lists has its files, files no twin lists are cleared, and every
ingest the client saw acknowledged is there."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import nibabel as nib
import pytest

from apps.twins import TwinStore, open_database
from tests.healthcare import healthcare_stack, phantom_study, start_app  # noqa: F401 - a fixture
from tests.support import wait_for

pytestmark = pytest.mark.slow

PATIENTS, STUDIES_PER_PATIENT = 3, 3
STUDY_KEYS = {"acquiredMs", "ingestedMs", "source", "structures", "labelNames", "geometry", "model"}


def ingest_until_killed(app, http, patients: list[str], studies: list[bytes], kill_after_acks: int):
    """Every (patient, study) uploaded at once from its own thread; the app is killed with SIGKILL once
    ``kill_after_acks`` uploads were acknowledged. Returns the acknowledged study ids per patient."""
    acknowledged: dict[str, list[str]] = {p: [] for p in patients}
    lock, enough = threading.Lock(), threading.Event()

    def upload(patient: str, data: bytes, day: int):
        try:
            status, _, body = http.post(f"/api/patients/{patient}/studies?acquired=2026-01-{day:02d}", data,
                                        "application/octet-stream")
        except OSError:   # the app died under the request: not acknowledged
            return
        if status == 201:
            with lock:
                acknowledged[patient].append(json.loads(body)["study"]["studyId"])
                if sum(map(len, acknowledged.values())) >= kill_after_acks:
                    enough.set()

    threads = [threading.Thread(target=upload, args=(p, data, day + 1))
               for p in patients for day, data in enumerate(studies)]
    for thread in threads:
        thread.start()
    enough.wait(timeout=240)
    app.process.kill()   # SIGKILL: no drain, no flush
    app.process.wait()
    for thread in threads:
        thread.join(timeout=60)
    return acknowledged


def test_kill_9_during_ingests_leaves_whole_updates_and_loses_nothing_acknowledged(healthcare_stack, tmp_path):
    stack = healthcare_stack
    data_dir = tmp_path / "data"
    app, http = start_app(_pki(stack), tmp_path, stack.services, data_dir=data_dir)
    try:
        patients = [_admit(http) for _ in range(PATIENTS)]
        studies = [phantom_study(90 + i, 9.0 + 2 * i)[0] for i in range(STUDIES_PER_PATIENT)]
        acknowledged = ingest_until_killed(app, http, patients, studies, kill_after_acks=2)
        assert sum(map(len, acknowledged.values())) >= 2
        # Leave a half-written upload and a stray study folder behind, as a crash at another moment would.
        stray = data_dir / "studies" / patients[0] / "S-deadbeef"
        stray.mkdir(parents=True)
        (stray / "image.nii.gz.part").write_bytes(b"half")
    finally:
        app.stop(5)

    check_whole(data_dir, patients, acknowledged)
    app, http = start_app(_pki(stack), tmp_path, stack.services, data_dir=data_dir)
    try:
        wait_for(lambda: not stray.exists(), timeout=30)   # cleared at start: no twin lists it
        for patient in patients:
            twin = http.json(f"/api/patients/{patient}")
            for study_id in twin["features"].get("imaging", {}).get("properties", {}).get("studies", {}):
                status, _, body = http.get(f"/patients/{patient}/studies/{study_id}/labels.nii.gz")
                assert status == 200 and len(body) > 100
        # The app goes on: a study sent again after the crash is ingested and counted once.
        status, _, body = http.post(f"/api/patients/{patients[0]}/studies?acquired=2026-02-01", studies[0],
                                    "application/octet-stream")
        assert status == 201, body
    finally:
        app.stop(10)
    check_whole(data_dir, patients, acknowledged)


def check_whole(data_dir: Path, patients: list[str], acknowledged: dict[str, list[str]]) -> None:
    store = TwinStore(open_database(f"sqlite:///{data_dir / 'healthcare.sqlite3'}"))
    for patient in patients:
        twin = store.get(patient)
        events = store.history(patient, limit=10_000)
        assert [e.revision for e in events] == list(range(1, twin.revision + 1))   # one event per revision
        replayed = store.state_at(patient, revision=twin.revision)
        assert replayed.features == twin.features and replayed.attributes == twin.attributes
        imaging = twin.reported("imaging")
        listed = imaging.get("studies", {})
        study_events = [e for e in events if e.kind == "study"]
        assert len(study_events) == len(listed) == imaging.get("studyCount", 0)
        assert set(acknowledged[patient]) <= set(listed), (patient, acknowledged[patient], list(listed))
        for study_id, study in listed.items():
            assert STUDY_KEYS <= set(study) and study["structures"]
            folder = data_dir / "studies" / patient / study_id
            for kind in ("image", "labels"):
                assert nib.load(folder / f"{kind}.nii.gz").shape == tuple(study["geometry"]["shape"])
        if listed:
            latest = max(listed.items(), key=lambda item: (item[1]["acquiredMs"], item[0]))
            assert imaging["latest"]["studyId"] == latest[0]


def _admit(http) -> str:
    status, _, body = http.post("/api/patients", json.dumps({"sex": "other", "birth_year": 1980}).encode(),
                                "application/json")
    assert status == 201
    return json.loads(body)["twinId"]


def _pki(stack):
    """The mesh home the stack's services were issued from."""
    return stack.services["vision"].home

