"""grpc.health.v1 over mutual TLS: how the supervisor and `modalmesh status` see a workload."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.pki import IssuedCertificate
from services.runtime.channels import secure_channel

UNREACHABLE = "UNREACHABLE"
SERVING = "SERVING"


def probe(address: str, cert: IssuedCertificate, timeout_s: float = 2.0, service: str = "") -> str:
    """SERVING, NOT_SERVING, ... (the health status name), UNREACHABLE, or the gRPC code of a failed check.

    A fresh channel per probe: a channel that failed to connect backs off for up to two
    minutes, which would hide a workload that has just started listening.
    """
    with secure_channel(address, cert.ca, cert.cert, cert.key) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return UNREACHABLE
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
