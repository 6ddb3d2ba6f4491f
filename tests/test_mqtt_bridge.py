"""The MQTT side of the mesh over real sockets: the broker workload (Mosquitto with mutual TLS and the
generated ACL), and the bridge streaming telemetry into a real IoT service."""

from __future__ import annotations

import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from modalmesh.broker import TOPIC_GRANTS, render_acl
from services.iot.mqtt_bridge import topics
from tests.mqtt import start_broker

PUMP = "centrifugal-pump"


@pytest.fixture(scope="module")
def broker(pki, tmp_path_factory):
    broker = start_broker(pki, tmp_path_factory.mktemp("broker"))
    yield broker
    assert broker.stop() == 0, broker.process.log_tail()


@pytest.fixture(autouse=True)
def _close_clients(broker):
    yield
    broker.close_clients()


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
