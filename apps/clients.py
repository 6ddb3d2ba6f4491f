"""The services an app composes, reached over the mesh with the app's own identity, and what it knows
of their availability (the pages say when one is down; the twin loop keeps retrying)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from services.runtime.channels import channel_options, secure_channel


@dataclass(frozen=True)
class Outage:
    service: str
    code: str
    detail: str
    since_ms: int


class Availability:
    """Per service: fine, or down since when and why (the last failed call's status)."""

    def __init__(self):
        self._outages: dict[str, Outage] = {}

    def succeeded(self, service: str) -> None:
        self._outages.pop(service, None)

    def failed(self, service: str, error: grpc.RpcError | Exception) -> Outage:
        code = error.code().name if isinstance(error, grpc.RpcError) else type(error).__name__
        detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
        previous = self._outages.get(service)
        since = previous.since_ms if previous else time.time_ns() // 1_000_000
        self._outages[service] = Outage(service, code, detail or "", since)
        return self._outages[service]

    def outage(self, service: str) -> Outage | None:
        return self._outages.get(service)

    def outages(self) -> list[Outage]:
        return sorted(self._outages.values(), key=lambda o: o.service)


def mesh_channel(address: str, settings) -> grpc.aio.Channel:
    """Mutual TLS with the workload certificate; in sidecar mode plaintext to the pod's own sidecar."""
    if settings.tls_mode == "sidecar":
        return grpc.aio.insecure_channel(address, options=channel_options(settings.max_message_bytes))
    return secure_channel(address, settings.tls_ca, settings.tls_cert, settings.tls_key, aio=True,
                          max_message_bytes=settings.max_message_bytes)
