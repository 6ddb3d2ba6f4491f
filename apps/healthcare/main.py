"""The healthcare app process: settings, the twin store and study files, the service clients, sign-in,
and its background tasks (the web server, the vitals monitor, and with the demo, its seeding and live
vitals) beside the gRPC health every workload serves."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydantic import Field

from apps.clients import Availability, mesh_channel
from apps.healthcare import demo, patients
from apps.healthcare.auth import Sessions, Users, ensure_users_file
from apps.healthcare.clinic import Clinic
from apps.healthcare.ingest import Ingestor
from apps.healthcare.jobs import Jobs
from apps.healthcare.monitoring import VitalsMonitor
from apps.healthcare.notes import NoteTaker
from apps.healthcare.privacy import error_fields
from apps.healthcare.studies import StudyFiles
from apps.healthcare.web import create_web_app
from apps.twins import TwinStore, open_database
from apps.web import serve_web_app
from modalmesh.v1 import audio_pb2_grpc, iot_pb2_grpc, text_pb2_grpc, vision_pb2_grpc
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


class HealthcareSettings(ServiceSettings):
    workload: str = "healthcare"
    grpc_port: int = Field(50111, ge=0, le=65535, description="gRPC health; 0 picks a free port")
    metrics_port: int = Field(9524, ge=-1, le=65535)
    http_host: str = Field("127.0.0.1", description="Address of the web pages (0.0.0.0 in a pod)")
    http_port: int = Field(8083, ge=0, le=65535)
    http_path_prefix: str = Field("/healthcare", description="Path the ingress gateway serves the app under; "
                                  "the app answers there and at /")
    database_url: str = Field("", description="Patient twins: postgresql+psycopg://user@host/db, or '' for the "
                              "SQLite file <data_dir>/healthcare.sqlite3")
    vision_address: str = Field("localhost:50081", description="VisionService, host:port")
    iot_address: str = Field("localhost:50061", description="IoTService, host:port")
    text_address: str = Field("localhost:50051", description="TextService, host:port")
    audio_address: str = Field("localhost:50071", description="AudioService, host:port")
    users_file: str = Field("", description="Users who may sign in (name:scrypt hash lines); '' for "
                            "<data_dir>/users.txt, created on first start with one user 'clinician' whose "
                            "password is written to initial-password beside it")
    secure_cookies: bool = Field(False, description="Session cookies only over HTTPS (true behind a TLS gateway)")
    seed_demo: bool = Field(False, description="On start, when there are no patients, seed the synthetic demo "
                            "through the real services (in the background; the pages are up at once)")
    max_study_bytes: int = Field(512 * 2**20, ge=1024, description="Largest study upload")
    call_timeout_s: float = Field(30.0, gt=0, description="Deadline of each call to a service")
    segment_timeout_s: float = Field(600.0, gt=0, description="Deadline of one study's segmentation")
    concurrent_ingests: int = Field(4, ge=1, le=64, description="Studies segmented at once; more wait their turn")
    growth_finding_threshold: float = Field(0.2, gt=0, description="A finding is raised when a watched structure's "
                                            "volume grows by at least this fraction since the previous study")
    growth_finding_min_ml: float = Field(0.1, ge=0, description="... and by at least this many mL")
    watched_structures: str = Field("lesion", description="Comma-separated structure names the growth rule "
                                    "watches (names of the segmentation model's label map)")
    vitals_interval_s: float = Field(5.0, gt=0, description="Seconds between vitals updates from IoTService")
    vitals_windows: int = Field(16, ge=1, le=64, description="Recent anomaly windows scored per patient")
    demo_vitals_interval_s: float = Field(5.0, gt=0, description="Wall seconds per simulated minute of the demo's "
                                          "live vitals")


def build(runtime: Runtime) -> Service:
    settings: HealthcareSettings = runtime.settings
    data = settings.data_dir
    twins = TwinStore(open_database(settings.database_url or f"sqlite:///{data / 'healthcare.sqlite3'}"))
    twins.create_schema()
    users_file = Path(settings.users_file) if settings.users_file else data / "users.txt"
    if ensure_users_file(users_file):
        log.info("users file created with one user; its password is in the initial-password file beside it")
    users, sessions = Users.load(users_file), Sessions.from_secret_file(data / "session-secret")
    channels = {name: mesh_channel(getattr(settings, f"{name}_address"), settings)
                for name in ("vision", "iot", "text", "audio")}
    iot = iot_pb2_grpc.IoTServiceStub(channels["iot"])
    audio = audio_pb2_grpc.AudioServiceStub(channels["audio"])
    watched = tuple(name.strip() for name in settings.watched_structures.split(",") if name.strip())
    rule = patients.GrowthRule(watched, settings.growth_finding_threshold, settings.growth_finding_min_ml)
    jobs = Jobs()
    files = StudyFiles(data / "studies")
    ingestor = Ingestor(twins, files, vision_pb2_grpc.VisionServiceStub(channels["vision"]), jobs,
                        rule, data / "uploads", settings.max_study_bytes, settings.segment_timeout_s,
                        asyncio.Semaphore(settings.concurrent_ingests))
    notes = NoteTaker(twins, text_pb2_grpc.TextServiceStub(channels["text"]), audio,
                      settings.call_timeout_s)
    clinic = Clinic(twins, files, ingestor, jobs, notes, Availability(), watched, iot, settings.call_timeout_s)
    monitor = VitalsMonitor(iot, twins, clinic.availability, settings.vitals_interval_s, settings.vitals_windows,
                            settings.call_timeout_s)
    web = create_web_app(clinic, users, sessions, settings.http_path_prefix, settings.secure_cookies)
    tidy(clinic)   # before any upload can start: a study being written is never mistaken for debris
    tasks = [lambda: serve_web_app(web, settings.http_host, settings.http_port, jobs.close), monitor.run]
    if settings.seed_demo:
        tasks += [lambda: seed_demo(clinic, channels, iot, audio, settings.call_timeout_s),
                  demo.LiveVitals(clinic, iot, settings.demo_vitals_interval_s, settings.call_timeout_s).run]
    return Service(models=[], tasks=tasks)


def tidy(clinic: Clinic) -> None:
    """Clear what a crash left behind: study files no twin lists, and spooled uploads."""
    listed = {t.twin_id: set(t.reported(patients.IMAGING).get("studies", {})) for t in clinic.patient_list()}
    removed = clinic.files.remove_unlisted(listed)
    spool = clinic.ingestor.spool
    for upload in spool.glob("*.upload") if spool.is_dir() else ():
        upload.unlink(missing_ok=True)
    if removed:
        log.info("unlisted study folders removed", extra={"folders": removed})


async def seed_demo(clinic: Clinic, channels: dict, iot, audio, timeout_s: float) -> None:
    """The demo, once, when there are no patients, as soon as every service it uses is SERVING."""
    if not await asyncio.to_thread(clinic.patient_list):
        await demo.wait_until_serving(channels)
        try:
            await demo.seed(clinic, iot, audio, timeout_s)
        except Exception as error:   # the pages still work; what was seeded stays
            log.error("demo seeding failed", extra=error_fields(error))
    await asyncio.Event().wait()


def main() -> None:
    run_service(HealthcareSettings, build)
