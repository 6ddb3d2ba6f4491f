"""The manufacturing app process: settings, the stores, the service clients, and three background tasks
(the web server, the twin loop, the MQTT link) beside the gRPC health every workload serves."""

from __future__ import annotations

from pydantic import Field

from apps.clients import Availability, mesh_channel
from apps.manufacturing import assets
from apps.manufacturing.fleet import Fleet
from apps.manufacturing.fleet_link import FleetLink
from apps.manufacturing.media import MediaRecorder
from apps.manufacturing.pictures import LatestImages
from apps.manufacturing.twin_loop import LoopSettings, TwinLoop
from apps.manufacturing.updates import FleetUpdates
from apps.manufacturing.web import create_web_app
from apps.manufacturing.workorders import MaintenanceRules, WorkOrderBook
from apps.twins import TwinStore, open_database
from apps.web import serve_web_app
from modalmesh.v1 import audio_pb2_grpc, iot_pb2_grpc, vision_pb2_grpc
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings


class ManufacturingSettings(ServiceSettings):
    workload: str = "manufacturing"
    grpc_port: int = Field(50091, ge=0, le=65535, description="gRPC health; 0 picks a free port")
    metrics_port: int = Field(9504, ge=-1, le=65535)
    http_host: str = Field("127.0.0.1", description="Address of the web pages (0.0.0.0 in a pod)")
    http_port: int = Field(8082, ge=0, le=65535)
    http_path_prefix: str = Field("/manufacturing", description="Path the ingress gateway serves the app "
                                  "under; the app answers there and at /")
    database_url: str = Field("", description="Twins, work orders and the latest images: "
                              "postgresql+psycopg://user@host/db, or '' for the SQLite file "
                              "<data_dir>/manufacturing.sqlite3")
    iot_address: str = Field("localhost:50061", description="IoTService, host:port")
    vision_address: str = Field("localhost:50081", description="VisionService, host:port")
    audio_address: str = Field("localhost:50071", description="AudioService, host:port")
    mqtt_host: str = Field("localhost", description="The broker's host (its certificate must name it); "
                           "'' runs without MQTT (no media, no repairs)")
    mqtt_port: int = Field(8883, ge=1, le=65535)
    mqtt_client_id: str = "manufacturing"
    twin_interval_s: float = Field(5.0, gt=0, description="Seconds between twin updates from IoTService")
    call_timeout_s: float = Field(10.0, gt=0, description="Deadline of each call to a service")
    remaining_life_threshold_cycles: float = Field(100.0, gt=0, description="A work order opens when the "
                                                   "remaining life estimate falls below this")
    anomaly_persistence_windows: int = Field(3, ge=1, le=64, description="A work order opens when this many "
                                             "consecutive telemetry windows, the latest included, are anomalous")
    health_reference_cycles: float = Field(150.0, gt=0, description="Remaining life at which the health index "
                                           "is 1 (the packaged model reads at most 150 cycles)")
    media_queue: int = Field(64, ge=1, description="Media waiting to be scored; past it the oldest are dropped")


def build(runtime: Runtime) -> Service:
    settings: ManufacturingSettings = runtime.settings
    engine = open_database(settings.database_url or f"sqlite:///{settings.data_dir / 'manufacturing.sqlite3'}")
    twins, orders, images = TwinStore(engine), WorkOrderBook(engine), LatestImages(engine)
    for store in (twins, orders, images):
        store.create_schema()
    availability, updates = Availability(), FleetUpdates()
    iot = iot_pb2_grpc.IoTServiceStub(mesh_channel(settings.iot_address, settings))
    link = None
    if settings.mqtt_host:
        link = FleetLink(settings, settings.mqtt_host, settings.mqtt_port, availability, settings.mqtt_client_id,
                         settings.media_queue)
    fleet = Fleet(twins, orders, images, iot, link, availability, updates, settings.call_timeout_s)
    loop = TwinLoop(iot, twins, orders,
                    MaintenanceRules(settings.remaining_life_threshold_cycles, settings.anomaly_persistence_windows),
                    assets.HealthIndex(settings.health_reference_cycles), availability, updates,
                    LoopSettings(settings.twin_interval_s, max(settings.anomaly_persistence_windows, 4),
                                 settings.call_timeout_s))
    tasks = [lambda: serve_pages(fleet, settings), loop.run]
    if link is not None:
        recorder = MediaRecorder(vision_pb2_grpc.VisionServiceStub(mesh_channel(settings.vision_address, settings)),
                                 audio_pb2_grpc.AudioServiceStub(mesh_channel(settings.audio_address, settings)),
                                 twins, images, availability, updates, settings.call_timeout_s)
        tasks.append(lambda: link.run(recorder))
    return Service(models=[], tasks=tasks)


async def serve_pages(fleet: Fleet, settings: ManufacturingSettings) -> None:
    await serve_web_app(create_web_app(fleet, settings.http_path_prefix), settings.http_host, settings.http_port,
                        fleet.updates.close)


def main() -> None:
    run_service(ManufacturingSettings, build)
