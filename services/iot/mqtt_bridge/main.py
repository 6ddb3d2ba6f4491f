"""The mqtt-bridge workload: settings, and the bridge as a background task of a served process."""

from __future__ import annotations

from pydantic import Field

from services.iot.mqtt_bridge import topics
from services.iot.mqtt_bridge.bridge import TelemetryBridge
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings


class BridgeSettings(ServiceSettings):
    workload: str = "mqtt-bridge"
    mqtt_host: str = Field("localhost", description="The broker's host (its certificate must name it)")
    mqtt_port: int = Field(8883, ge=1, le=65535)
    mqtt_client_id: str = Field("mqtt-bridge", description="Keys the broker's persistent session: messages "
                                "published while the bridge is away wait under this id. One bridge per id.")
    topic_filter: str = Field(topics.topic_filter(topics.TELEMETRY), description="Telemetry topics to bridge")
    iot_address: str = Field("localhost:50061", description="IoTService, host:port")
    max_in_flight_batches: int = Field(64, ge=1, description="Batches sent to IoTService and not yet "
                                       "acknowledged; the broker holds further messages back")
    call_timeout_s: float = Field(10.0, gt=0, description="Deadline of RegisterAsset and ListAssets")
    reconnect_max_s: float = Field(30.0, ge=1, description="Longest wait between reconnection attempts")


def build(runtime: Runtime) -> Service:
    bridge = TelemetryBridge(runtime.settings, runtime.metrics.registry)
    return Service(models=[], tasks=[bridge.run])


def main() -> None:
    run_service(BridgeSettings, build)
