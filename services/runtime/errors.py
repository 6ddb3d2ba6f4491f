"""Errors a servicer raises, each mapped to one gRPC status with details.

Servicers raise these; the server interceptor turns them into statuses, so a
servicer method reads like the proto and never builds a status by hand.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> grpc.Status:
        proto = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            proto.details.append(detail)
        return rpc_status.to_status(proto)


class InvalidArgument(ServiceError):
    """Bad input, with one google.rpc.BadRequest field violation per problem."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]] | tuple[str, str]):
        if isinstance(violations, tuple):
            violations = [violations]
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))

    def details(self) -> list[any_pb2.Any]:
        request = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                              for f, d in self.violations]
        )
        packed = any_pb2.Any()
        packed.Pack(request)
        return [packed]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED




def bad_request_of(error: grpc.RpcError) -> list[tuple[str, str]]:
    """Field violations carried by a status, for clients and tests."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            out += [(v.field, v.description) for v in request.field_violations]
    return out
