"""The IoT service process: settings, the telemetry store, the ingest writer, the served models."""

from __future__ import annotations

import importlib

from pathlib import Path

from pydantic import AliasChoices, Field

from modalmesh.v1 import iot_pb2_grpc
from services.iot.asset_types import ASSET_TYPES, CENTRIFUGAL_PUMP, PATIENT_VITALS
from services.iot.ingest import IngestLimits, IngestMetrics, TelemetryIngest
from services.iot.servicer import IoTServicer, ModelSlot
from services.iot.store import TelemetryStore
from services.runtime.database import sqlite_url
from services.runtime.served_model import ServedModel
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import REPO_ROOT, ServiceSettings

PACKAGED = "packaged"


class IoTSettings(ServiceSettings):
    workload: str = "iot"
    grpc_port: int = Field(50061, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int = Field(9474, ge=-1, le=65535, description="Prometheus endpoint; -1 disables it")
    data_dir: Path = Field(REPO_ROOT / ".modalmesh" / "data", description="Where the default SQLite database lives")
    database_url: str = Field("", validation_alias=AliasChoices("MODALMESH_IOT_DATABASE_URL"),
                              description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
                                          "'' is the SQLite file <data_dir>/iot.sqlite3")
    ingest_max_rows_per_batch: int = Field(10_000, ge=1, le=1_000_000, description="Rows one IngestRequest may carry")
    ingest_stream_in_flight: int = Field(8, ge=1, le=1024, description="Batches of one stream awaiting their "
                                         "commit; past it the stream stops reading (gRPC flow control)")
    ingest_total_in_flight: int = Field(256, ge=1, description="Batches of all streams awaiting their commit; "
                                        "past it a batch gets RESOURCE_EXHAUSTED")
    anomaly_model: str = Field(PACKAGED, description="the centrifugal-pump anomaly model: 'packaged' "
                               "(services/iot/models, trained by scripts/train_iot_models.py), a local weights "
                               "file, or '' to serve none (DetectAnomalies on pumps then answers FAILED_PRECONDITION)")
    remaining_life_model: str = Field(PACKAGED, description="'packaged', a local weights file, or '' to serve none")
    vitals_anomaly_model: str = Field(PACKAGED, description="the patient-vitals anomaly model: 'packaged' "
                                      "(services/iot/models/vitals-anomaly, trained by "
                                      "scripts/train_vitals_model.py), a local weights file (or a folder holding "
                                      "vitals-anomaly.safetensors), or '' to serve none")

    def store_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir / "iot.sqlite3")


def build(runtime: Runtime) -> Service:
    settings: IoTSettings = runtime.settings
    store = TelemetryStore(settings.store_url(), ASSET_TYPES)
    limits = IngestLimits(max_rows_per_batch=settings.ingest_max_rows_per_batch,
                          per_stream=settings.ingest_stream_in_flight, total=settings.ingest_total_in_flight)
    ingest = TelemetryIngest(store, limits, IngestMetrics(runtime.metrics))
    anomaly = {CENTRIFUGAL_PUMP.name: _slot("anomaly_model", "anomaly_model", "AnomalyModel", runtime),
               PATIENT_VITALS.name: _slot("vitals_anomaly_model", "vitals_anomaly", "VitalsAnomalyModel", runtime)}
    # Remaining life applies to machines only: a vitals asset asked for it gets FAILED_PRECONDITION.
    remaining_life = {CENTRIFUGAL_PUMP.name: _slot("remaining_life_model", "remaining_life", "RemainingLifeModel",
                                                   runtime)}
    servicer = IoTServicer(store, ingest, anomaly=anomaly, remaining_life=remaining_life)
    served = [slot.model for slot in (*anomaly.values(), *remaining_life.values()) if slot.model is not None]
    return Service(models=served, servicers=[
        (iot_pb2_grpc.add_IoTServiceServicer_to_server, servicer, "modalmesh.v1.IoTService"),
    ])


def _slot(field: str, module: str, adapter_class: str, runtime: Runtime) -> ModelSlot:
    """The model the setting `field` chooses for one asset type, and the variable that sets it."""
    settings = runtime.settings
    return ModelSlot(_served(getattr(settings, field), module, adapter_class, settings, runtime),
                     f"MODALMESH_{field.upper()}")


def _served(setting: str, module: str, adapter_class: str, settings: IoTSettings,
            runtime: Runtime) -> ServedModel | None:
    """The packaged model, a weights file, or none ('')."""
    if not setting:
        return None
    models = importlib.import_module(f"services.iot.{module}")   # torch loads only when a model is served
    adapter = getattr(models, adapter_class)(_weights(setting), device=settings.device,
                                             threads=settings.model_threads, instances=settings.model_instances)
    return runtime.serve_model(models.NAME, adapter)


def _weights(setting: str) -> str | None:
    return None if setting == PACKAGED else setting   # None: the adapter's packaged file in services/iot/models


def main() -> None:
    run_service(IoTSettings, build)
