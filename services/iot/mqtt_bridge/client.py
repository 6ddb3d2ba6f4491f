"""An MQTT client of the mesh: mutual TLS with the workload's certificate, trusting only the mesh CA.

The broker takes the certificate's common name (the workload name) as the MQTT user name, so the
broker's ACL (modalmesh/broker.py) grants topics by workload exactly as mesh/policy.yaml grants methods.

In sidecar mode (Kubernetes with Istio) the pod's sidecar does the mutual TLS: the client connects in
plaintext to its own sidecar and names its workload as the MQTT user name. Istio admits only the ACL's
workloads to the broker's port; which of them a connection is, the broker then takes on the client's word.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from services.runtime.settings import ServiceSettings


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def workload_client(settings: ServiceSettings, client_id: str, **options) -> mqtt.Client:
    """The MQTT client of a workload process: its certificate, or its sidecar in sidecar mode."""
    if settings.tls_mode == "sidecar":
        return mesh_client(client_id, None, None, None, sidecar_username=settings.workload, **options)
    return mesh_client(client_id, settings.tls_ca, settings.tls_cert, settings.tls_key, **options)


def mesh_client(client_id: str, ca: Path | None, cert: Path | None, key: Path | None, *,
                persistent_session: bool = False, manual_ack: bool = False, protocol: int = mqtt.MQTTv311,
                sidecar_username: str | None = None) -> mqtt.Client:
    """A paho client (callback API 2) that presents ``cert`` (or, behind a sidecar, ``sidecar_username``).

    ``persistent_session``: the broker keeps the subscriptions and queues QoS 1 messages while the
    client is away, and redelivers those it never acknowledged (MQTT 3.1.1 clean session off).
    ``manual_ack``: QoS 1 messages are acknowledged only by ``client.ack(mid, qos)``.
    """
    clean = {"clean_session": not persistent_session} if protocol != mqtt.MQTTv5 else {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         manual_ack=manual_ack, **clean)
    if sidecar_username:
        client.username_pw_set(sidecar_username)
    else:
        client.tls_set_context(tls_context(ca, cert, key))
    return client
