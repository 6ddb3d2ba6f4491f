"""The broker behind an Istio sidecar (MODALMESH_TLS_MODE=sidecar, as in Kubernetes): plaintext on the
pod, the workload name as the MQTT user name, and the same ACL: a name without a grant, or none, gets
nothing. Istio's AuthorizationPolicy (rendered from the same grants) admits only the granted workloads'
principals to the port; this test runs the real broker process without Istio in front."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from modalmesh.launch import free_port, launch
from services.iot.mqtt_bridge import topics
from services.iot.mqtt_bridge.client import mesh_client
from services.runtime.settings import ServiceSettings
from tests.mqtt import wait_listening

TELEMETRY = topics.topic("centrifugal-pump", "pump-01", topics.TELEMETRY)


@pytest.fixture(scope="module")
def sidecar_broker(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sidecar-broker")
    port = free_port()
    process = launch("modalmesh.broker", pki, tmp, "mqtt-broker", tls_mode="sidecar", mqtt_port=port,
                     data_dir=tmp / "data", drain_grace_s=5)
    try:
        process.wait_serving(30)
        wait_listening(port)
        yield port
    finally:
        assert process.stop(10) == 0, process.log()[-2000:]


def connect(port: int, username: str | None) -> mqtt.Client:
    if username:
        client = mesh_client(f"{username}-sidecar-test", None, None, None, protocol=mqtt.MQTTv5,
                             sidecar_username=username)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anonymous-sidecar-test", protocol=mqtt.MQTTv5)
    connected = queue.Queue()
    client.on_connect = lambda c, u, flags, reason, props: connected.put(reason)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert not connected.get(timeout=10).is_failure
    return client


def publish(client: mqtt.Client, topic: str) -> str:
    acks = queue.Queue()
    client.on_publish = lambda c, u, mid, reason, props: acks.put(str(reason))
    client.publish(topic, b"{}", qos=1)
    return acks.get(timeout=10)


def test_grants_follow_the_workload_name_behind_a_sidecar(sidecar_broker):
    bridge, simulator, app, nobody = (connect(sidecar_broker, name)
                                      for name in ("mqtt-bridge", "fleet-simulator", "manufacturing", None))
    received = queue.Queue()
    bridge.on_message = lambda c, u, message: received.put(message.topic)
    subscribed = queue.Queue()
    bridge.on_subscribe = lambda c, u, mid, reasons, props: subscribed.put(reasons)
    bridge.subscribe(topics.topic_filter(topics.TELEMETRY), qos=1)
    subscribed.get(timeout=10)
    try:
        assert publish(simulator, TELEMETRY) == "Success"
        assert received.get(timeout=10) == TELEMETRY
        assert publish(app, TELEMETRY) == "Not authorized"       # the app may not write telemetry
        assert publish(nobody, TELEMETRY) == "Not authorized"    # no user name: no grant
        assert received.empty()
    finally:
        for client in (bridge, simulator, app, nobody):
            client.disconnect()
            client.loop_stop()


def test_a_workload_client_in_sidecar_mode_names_itself_and_skips_tls(monkeypatch):
    monkeypatch.setenv("MODALMESH_TLS_MODE", "sidecar")
    from services.iot.mqtt_bridge.client import workload_client
    client = workload_client(ServiceSettings(workload="mqtt-bridge"), "bridge")
    assert client.username == "mqtt-bridge" and client._ssl_context is None
