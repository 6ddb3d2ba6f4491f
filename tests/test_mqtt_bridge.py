"""The MQTT side of the mesh over real sockets: the broker workload (Mosquitto with mutual TLS and the
generated ACL), and the bridge streaming telemetry into a real IoT service."""

from __future__ import annotations

import json
import signal
import ssl
import time
import uuid

import grpc
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from modalmesh.broker import TOPIC_GRANTS, render_acl
from modalmesh.launch import launch
from modalmesh.v1 import iot_pb2, iot_pb2_grpc
from services.iot.asset_types import CENTRIFUGAL_PUMP
from services.iot.mqtt_bridge import topics
from tests.mqtt import broker, close_clients  # noqa: F401 - fixtures
from tests.support import ServiceProcess, free_port, metric, start_service, wait_for

PUMP = "centrifugal-pump"


def test_acl_is_rendered_from_the_grants_alone():
    acl = render_acl()
    users = [line.split()[1] for line in acl.splitlines() if line.startswith("user ")]
    assert users == list(TOPIC_GRANTS) == ["fleet-simulator", "mqtt-bridge", "manufacturing"]
    # No grant outside a user section: it would apply to every client, anonymous ones included.
    first_user = acl.index("user ")
    assert "topic" not in acl[:first_user]
    assert "topic read modalmesh/fleet/+/+/telemetry" in acl.split("user mqtt-bridge")[1]


def test_simulator_telemetry_reaches_the_bridge_identity(broker):
    bridge = broker.subscriber("mqtt-bridge", topics.topic_filter(topics.TELEMETRY))
    simulator = broker.client("fleet-simulator")
    payload = topics.encode_telemetry(["a"], [1], [[1.0]])
    simulator.publish(topics.topic(PUMP, "pump-1", topics.TELEMETRY), payload, qos=1).wait_for_publish(5)
    message = bridge.next()
    assert message.topic == "modalmesh/fleet/centrifugal-pump/pump-1/telemetry"
    assert message.payload == payload


def test_a_workload_may_not_publish_where_it_has_no_grant(broker):
    bridge = broker.subscriber("mqtt-bridge", topics.topic_filter(topics.TELEMETRY))
    for workload in ("manufacturing", "mqtt-bridge", "cli", "text"):
        client = broker.client(workload)
        acks = []
        client.on_publish = lambda c, u, mid, reason, props: acks.append(reason)
        client.publish(topics.topic(PUMP, "pump-1", topics.TELEMETRY), b"{}", qos=1).wait_for_publish(5)
        assert [str(r) for r in acks] == ["Not authorized"], workload
    assert bridge.none_within(0.5)


def test_a_workload_receives_nothing_it_has_no_grant_to_read(broker):
    # Mosquitto 2.0 grants the SUBSCRIBE and filters each delivery by the ACL.
    snoop = broker.subscriber("manufacturing", "modalmesh/#")
    bridge = broker.subscriber("mqtt-bridge", "modalmesh/#")
    simulator = broker.client("fleet-simulator")
    simulator.publish(topics.topic(PUMP, "pump-2", topics.TELEMETRY), b"x", qos=1).wait_for_publish(5)
    simulator.publish(topics.topic(PUMP, "pump-2", topics.INSPECTION), b"y", qos=1).wait_for_publish(5)
    assert bridge.next().topic.endswith("/telemetry")
    assert snoop.next().topic.endswith("/inspection")
    assert bridge.none_within(0.3) and snoop.none_within(0.3)


def test_maintenance_goes_from_the_app_to_the_simulator_only(broker):
    simulator = broker.subscriber("fleet-simulator", topics.topic_filter(topics.MAINTENANCE))
    bridge = broker.subscriber("mqtt-bridge", "modalmesh/#")
    app = broker.client("manufacturing")
    app.publish(topics.topic(PUMP, "pump-3", topics.MAINTENANCE), topics.encode_maintenance(), qos=1).wait_for_publish(5)
    assert topics.decode_maintenance(simulator.next().payload)["action"] == "repair"
    assert bridge.none_within(0.3)


def test_a_client_without_a_mesh_certificate_cannot_connect(broker, tmp_path):
    anonymous = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anonymous")
    anonymous.tls_set_context(ssl.create_default_context(cafile=str(broker.home.certificate("cli").ca)))
    try:
        code = anonymous.connect(broker.host, broker.port)
        for _ in range(20):
            anonymous.loop(0.1)
    except (ssl.SSLError, ConnectionError, OSError):
        code = None
    assert not anonymous.is_connected(), code


def test_a_plain_tcp_client_cannot_connect(broker):
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain")
    try:
        plain.connect(broker.host, broker.port)
        for _ in range(20):
            plain.loop(0.1)
    except (ConnectionError, OSError):
        pass
    assert not plain.is_connected()


def test_a_certificate_from_another_ca_cannot_connect(broker, tmp_path):
    from modalmesh.home import MeshHome

    stranger = MeshHome(tmp_path / "other-mesh").certificate("fleet-simulator")
    from services.iot.mqtt_bridge.client import mesh_client

    # It trusts our broker's CA, but presents a certificate our CA never issued.
    client = mesh_client("impostor", broker.home.certificate("cli").ca, stranger.cert, stranger.key)
    try:
        client.connect(broker.host, broker.port)
        for _ in range(20):
            client.loop(0.1)
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    assert not client.is_connected()


# -- the bridge into a real IoT service ----------------------------------------------------------------

SENSORS = CENTRIFUGAL_PUMP.sensors
MINUTE_MS = 60_000
T0 = 1_760_000_000_000
# The bridge needs the telemetry store only.
NO_MODELS = {"anomaly_model": "", "remaining_life_model": "", "vitals_anomaly_model": ""}


@pytest.fixture(scope="module")
def iot(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iot")
    service = start_service("services.iot", pki, tmp, "iot", data_dir=tmp, **NO_MODELS)
    yield service
    assert service.stop() == 0, service.log_tail()


def start_bridge(pki, broker, iot_target: str, tmp, client_id: str) -> ServiceProcess:
    bridge = launch("services.iot.mqtt_bridge", pki, tmp, "mqtt-bridge", mqtt_host=broker.host,
                    mqtt_port=broker.port, iot_address=iot_target, mqtt_client_id=client_id, drain_grace_s=5,
                    reconnect_max_s=2)
    try:
        bridge.wait_serving(30)
        wait_for(lambda: metric(bridge.metrics(), "modalmesh_mqtt_connected") == 1, timeout=15)
    except BaseException:
        bridge.stop(5)
        raise
    return bridge


@pytest.fixture
def bridge(pki, broker, iot, tmp_path):
    bridge = start_bridge(pki, broker, iot.target, tmp_path, f"bridge-{uuid.uuid4().hex[:8]}")
    yield bridge
    assert bridge.stop() == 0, bridge.log_tail()


def rows(first_minute: int, count: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed + first_minute)
    stamps = [T0 + (first_minute + i) * MINUTE_MS for i in range(count)]
    return stamps, rng.uniform(1, 1000, size=(count, len(SENSORS))).astype(np.float32)


def publish(client, asset_id: str, stamps, values, kind: str = topics.TELEMETRY, payload: bytes | None = None):
    body = payload if payload is not None else topics.encode_telemetry(SENSORS, stamps, values)
    client.publish(topics.topic(PUMP, asset_id, kind), body, qos=1).wait_for_publish(5)


def stored(iot, asset_id: str) -> iot_pb2.QueryTelemetryResponse | None:
    with iot.channel() as channel:
        try:
            return iot_pb2_grpc.IoTServiceStub(channel).QueryTelemetry(
                iot_pb2.QueryTelemetryRequest(asset_id=asset_id, max_points=100_000), timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def stored_rows(iot, asset_id: str) -> int:
    reply = stored(iot, asset_id)
    return reply.matched_rows if reply else 0


def wait_stored(iot, asset_id: str, expected: int, timeout: float = 20) -> None:
    try:
        wait_for(lambda: stored_rows(iot, asset_id) >= expected, timeout=timeout, interval=0.1)
    except TimeoutError:
        raise AssertionError(f"{asset_id}: {stored_rows(iot, asset_id)} rows stored, expected {expected}") from None


def test_published_telemetry_is_registered_and_stored(broker, iot, bridge):
    simulator = broker.client("fleet-simulator")
    batches = [rows(0, 60), rows(60, 60), rows(120, 7)]
    for stamps, values in batches:
        publish(simulator, "e2e-pump-1", stamps, values)
    wait_stored(iot, "e2e-pump-1", 127)
    reply = stored(iot, "e2e-pump-1")
    assert reply.matched_rows == 127 and list(reply.sensors) == list(SENSORS)
    timestamps = np.frombuffer(reply.timestamps_ms.data, "<i8")
    values = np.frombuffer(reply.values.data, "<f4").reshape(-1, len(SENSORS))
    assert timestamps.tolist() == [t for stamps, _ in batches for t in stamps]
    np.testing.assert_allclose(values, np.concatenate([v for _, v in batches]), rtol=1e-6)
    with iot.channel() as channel:
        assets = iot_pb2_grpc.IoTServiceStub(channel).ListAssets(iot_pb2.ListAssetsRequest(), timeout=10)
    assert {a.asset_id: a.type.name for a in assets.assets}["e2e-pump-1"] == PUMP
    text = bridge.metrics()
    assert metric(text, "modalmesh_mqtt_messages_total", outcome="stored") == 3
    assert metric(text, "modalmesh_mqtt_rows_stored_total") == 127


def test_malformed_messages_are_counted_logged_without_payload_and_dropped(broker, iot, bridge):
    simulator = broker.client("fleet-simulator")
    secret = "PAYLOAD-MUST-NOT-BE-LOGGED"
    stamps, values = rows(0, 3)
    good = json.loads(topics.encode_telemetry(SENSORS, stamps, values))
    malformed = {
        "json": f"{secret} not json".encode(),
        "schema": json.dumps({"sensors": list(SENSORS), "note": secret}).encode(),
        "sensors": json.dumps({**good, "sensors": list(reversed(SENSORS))}).encode(),
        "values": json.dumps({**good, "values": [[float("nan")] * len(SENSORS)] * 3}).encode(),
        "timestamps": json.dumps({**good, "timestamps_ms": [stamps[0], stamps[0], stamps[1]]}).encode(),
        "rows": json.dumps({**good, "timestamps_ms": [], "values": []}).encode(),
    }
    for payload in malformed.values():
        publish(simulator, "e2e-pump-2", None, None, payload=payload)
    publish(simulator, "e2e-pump-2", None, None, payload=b"\xff\xfe binary")
    simulator.publish(f"modalmesh/fleet/{PUMP}/bad id!/telemetry", b"{}", qos=1).wait_for_publish(5)
    simulator.publish("modalmesh/fleet/no-such-type/e2e-pump-9/telemetry", topics.encode_telemetry(
        SENSORS, stamps, values), qos=1).wait_for_publish(5)
    publish(simulator, "e2e-pump-2", stamps, values)   # the bridge still serves what comes after
    wait_stored(iot, "e2e-pump-2", 3)
    text = bridge.metrics()
    for reason in ("schema", "sensors", "values", "timestamps", "rows"):
        assert metric(text, "modalmesh_mqtt_malformed_messages_total", reason=reason) == 1, reason
    assert metric(text, "modalmesh_mqtt_malformed_messages_total", reason="json") == 2
    assert metric(text, "modalmesh_mqtt_malformed_messages_total", reason="topic") == 2
    assert metric(text, "modalmesh_mqtt_messages_total", outcome="malformed") == 9
    assert stored_rows(iot, "e2e-pump-2") == 3 and stored(iot, "e2e-pump-9") is None
    assert bridge.health() == "SERVING" and iot.health() == "SERVING"
    assert secret not in bridge.log() and "malformed message dropped" in bridge.log()


def test_repeated_and_overlapping_rows_are_stored_once(broker, iot, bridge):
    simulator = broker.client("fleet-simulator")
    stamps, values = rows(0, 60)
    publish(simulator, "e2e-pump-3", stamps, values)
    publish(simulator, "e2e-pump-3", stamps, values)              # a publisher's retry
    publish(simulator, "e2e-pump-3", *rows(30, 60))                # half old, half new
    publish(simulator, "e2e-pump-3", *rows(90, 10))
    try:
        wait_for(lambda: metric(bridge.metrics(), "modalmesh_mqtt_messages_total") == 4, timeout=20)
    except TimeoutError:
        raise AssertionError([l for l in bridge.metrics().splitlines() if "mqtt" in l] + [bridge.log_tail()])
    reply = stored(iot, "e2e-pump-3")
    assert reply.matched_rows == 100
    assert np.frombuffer(reply.timestamps_ms.data, "<i8").tolist() == [T0 + i * MINUTE_MS for i in range(100)]
    assert metric(bridge.metrics(), "modalmesh_mqtt_messages_total", outcome="duplicate") == 1


@pytest.mark.slow
def test_a_killed_bridge_loses_nothing_published_with_qos1(pki, broker, iot, tmp_path):
    """kill -9 mid-stream, telemetry published while no bridge runs, then a new bridge process on the
    same persistent session: every row stored, none twice."""
    client_id = f"bridge-{uuid.uuid4().hex[:8]}"
    first = start_bridge(pki, broker, iot.target, tmp_path, client_id)
    simulator = broker.client("fleet-simulator")
    total = 0
    try:
        for minute in range(0, 200 * 30, 30):
            publish(simulator, "e2e-pump-4", *rows(minute, 30))
            total += 30
            if minute == 100 * 30:
                first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        assert stored_rows(iot, "e2e-pump-4") < total   # some of it waits in the broker for the bridge
    finally:
        first.stop(5)
    second = start_bridge(pki, broker, iot.target, tmp_path, client_id)
    try:
        wait_stored(iot, "e2e-pump-4", total)
        reply = stored(iot, "e2e-pump-4")
        assert reply.matched_rows == total
        assert np.frombuffer(reply.timestamps_ms.data, "<i8").tolist() == [T0 + i * MINUTE_MS for i in range(total)]
    finally:
        assert second.stop() == 0, second.log_tail()


@pytest.mark.slow
def test_the_bridge_reconnects_when_the_iot_service_restarts(pki, broker, tmp_path):
    port = free_port()
    data = tmp_path / "iot-data"
    iot = start_iot_on(port, pki, tmp_path, data)
    bridge = start_bridge(pki, broker, f"localhost:{port}", tmp_path, f"bridge-{uuid.uuid4().hex[:8]}")
    simulator = broker.client("fleet-simulator")
    try:
        publish(simulator, "e2e-pump-5", *rows(0, 60))
        wait_stored(iot, "e2e-pump-5", 60)
        iot.process.send_signal(signal.SIGKILL)
        iot.process.wait(10)
        for minute in range(60, 600, 60):
            publish(simulator, "e2e-pump-5", *rows(minute, 60))
        time.sleep(1)
        assert bridge.health() == "SERVING"
        iot = start_iot_on(port, pki, tmp_path, data)
        wait_stored(iot, "e2e-pump-5", 600, timeout=30)
        assert stored_rows(iot, "e2e-pump-5") == 600
        assert metric(bridge.metrics(), "modalmesh_mqtt_ingest_stream_failures_total") >= 1
    finally:
        assert bridge.stop() == 0, bridge.log_tail()
        iot.stop()


def start_iot_on(port: int, pki, tmp, data) -> ServiceProcess:
    """An IoT service on a given port, so a restarted one is where the bridge looks for it."""
    service = launch("services.iot", pki, tmp, "iot", data_dir=data, grpc_port=port, drain_grace_s=5, **NO_MODELS)
    service.port = port   # launch records the port it picked; the setting overrides it
    try:
        service.wait_serving(60)
    except BaseException:
        service.stop(5)
        raise
    return service
