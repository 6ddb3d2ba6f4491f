"""An MQTT client of the mesh: mutual TLS with the workload's certificate, trusting only the mesh CA.

The broker takes the certificate's common name (the workload name) as the MQTT user name, so the
broker's ACL (modalmesh/broker.py) grants topics by workload exactly as mesh/policy.yaml grants methods.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def mesh_client(client_id: str, ca: Path, cert: Path, key: Path, *, persistent_session: bool = False,
                manual_ack: bool = False, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    """A paho client (callback API 2) that presents ``cert``.

    ``persistent_session``: the broker keeps the subscriptions and queues QoS 1 messages while the
    client is away, and redelivers those it never acknowledged (MQTT 3.1.1 clean session off).
    ``manual_ack``: QoS 1 messages are acknowledged only by ``client.ack(mid, qos)``.
    """
    clean = {"clean_session": not persistent_session} if protocol != mqtt.MQTTv5 else {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         manual_ack=manual_ack, **clean)
    client.tls_set_context(tls_context(ca, cert, key))
    return client
