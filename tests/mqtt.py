"""Test harness for MQTT: the real broker workload (modalmesh.broker: Mosquitto with mutual TLS from the
test CA and the generated ACL) on a free port, and connected mesh clients."""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from modalmesh.home import MeshHome
from modalmesh.launch import ServiceProcess, free_port, launch
from services.iot.mqtt_bridge.client import mesh_client


@dataclass
class Broker:
    process: ServiceProcess
    port: int
    home: MeshHome
    clients: list[mqtt.Client] = field(default_factory=list)

    host = "localhost"

    def client(self, workload: str, client_id: str | None = None, *, protocol: int = mqtt.MQTTv5,
               **options) -> mqtt.Client:
        """A client presenting ``workload``'s certificate, connected, its network loop running."""
        cert = self.home.certificate(workload)
        client = mesh_client(client_id or f"{workload}-test-{len(self.clients)}", cert.ca, cert.cert, cert.key,
                             protocol=protocol, **options)
        connected = queue.Queue()
        client.on_connect = lambda c, u, flags, reason, props: connected.put(reason)
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        self.clients.append(client)
        reason = connected.get(timeout=10)
        assert not reason.is_failure, f"{workload} refused: {reason}"
        return client

    def subscriber(self, workload: str, topic_filter: str, **options) -> "Subscription":
        client = self.client(workload, **options)
        received = Subscription(client)
        client.on_message = lambda c, u, message: received.messages.put(message)
        client.subscribe(topic_filter, qos=1)
        time.sleep(0.2)   # the SUBACK: messages published after this reach the subscriber
        return received

    def close_clients(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()
        self.clients.clear()

    def stop(self) -> int:
        self.close_clients()
        return self.process.stop(10)


@dataclass
class Subscription:
    client: mqtt.Client
    messages: "queue.Queue[mqtt.MQTTMessage]" = field(default_factory=queue.Queue)

    def next(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        with contextlib.suppress(queue.Empty):
            self.messages.get(timeout=seconds)
            return False
        return True


def start_broker(home: MeshHome, tmp: Path, port: int | None = None) -> Broker:
    """The mqtt-broker workload, SERVING and accepting MQTT connections."""
    port = port or free_port()
    process = launch("modalmesh.broker", home, tmp, "mqtt-broker", mqtt_port=port,
                     data_dir=tmp / "broker-data", drain_grace_s=5)
    try:
        process.wait_serving(30)
        wait_listening(port)
    except BaseException:
        process.stop(5)
        raise
    return Broker(process, port, home)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def broker(pki, tmp_path_factory):
    """One broker per test module (import this fixture, with close_clients, into the module)."""
    broker = start_broker(pki, tmp_path_factory.mktemp("broker"))
    yield broker
    assert broker.stop() == 0, broker.process.log_tail()


@pytest.fixture(autouse=True)
def close_clients(broker):
    """Each test's MQTT clients disconnect after it."""
    yield
    broker.close_clients()
