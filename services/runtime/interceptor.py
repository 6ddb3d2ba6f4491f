"""One server interceptor for every service: identity → authorization → the servicer, with
metrics, tracing and error mapping around it, so servicers hold only their domain logic."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from opentelemetry.trace import SpanKind

from services.runtime import tracing
from services.runtime.errors import InvalidArgument, PermissionDenied, ServiceError, Unauthenticated
from services.runtime.identity import peer_identity_from_sidecar, peer_identity_from_tls
from services.runtime.metrics import Metrics
from services.runtime.policy import MeshPolicy

log = logging.getLogger("modalmesh.rpc")


class MeshInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, workload: str, policy: MeshPolicy, metrics: Metrics, sidecar_mode: bool, tracing_on: bool):
        self.workload = workload
        self.policy = policy
        self.metrics = metrics
        self.tracing_on = tracing_on
        self.sidecar_mode = sidecar_mode
        self.identity_of = peer_identity_from_sidecar if sidecar_mode else peer_identity_from_tls
        # One guarded handler per served method, built on its first call (unknown methods are never stored).
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        guarded = self._guarded.get(details.method)
        if guarded is None:
            handler = await continuation(details)
            if handler is None:
                return None   # unknown method: gRPC answers UNIMPLEMENTED
            guarded = self._guarded[details.method] = _wrap(handler, _Call(self, details.method))
        return guarded


class _Call:
    """Per-method guard: what runs before and after the servicer's behaviour."""

    def __init__(self, owner: MeshInterceptor, method: str):
        self.owner = owner
        self.method = method
        self.latency = owner.metrics.latency.labels(method)   # label lookups once per method, not per call
        self.ok = owner.metrics.requests.labels(method, "OK")

    def authorize(self, context: grpc.aio.ServicerContext) -> str | None:
        identity = self.owner.identity_of(context)
        if identity is None and self.owner.sidecar_mode and self.owner.policy.is_probe(self.method):
            return None   # a kubelet probe rewritten by the sidecar: it carries no identity
        if identity is None or self.owner.policy.caller_name(identity) is None:
            raise Unauthenticated(f"caller has no identity of this mesh; {self.method} needs a mesh certificate")
        if not self.owner.policy.allows(self.owner.workload, identity, self.method):
            raise PermissionDenied(f"{identity} may not call {self.method} on {self.owner.workload} "
                                   f"(mesh/policy.yaml)")
        return identity

    def span(self, context: grpc.aio.ServicerContext):
        if not self.owner.tracing_on:
            return _NO_SPAN
        parent = tracing.extract_context(context.invocation_metadata())
        return tracing.tracer().start_as_current_span(self.method, context=parent, kind=SpanKind.SERVER,
                                                      attributes={"rpc.system": "grpc", "rpc.method": self.method})

    async def fail(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        if isinstance(error, grpc.aio.AbortError):
            raise error   # the servicer already set its status
        if isinstance(error, ServiceError):
            await context.abort_with_status(error.to_status())
        log.exception("unhandled error", extra={"method": self.method})
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {self.method}; see the service log")

    def record(self, context: grpc.aio.ServicerContext, started: float, error: BaseException | None,
               caller: str | None) -> None:
        code = _code_of(context, error)
        elapsed = time.perf_counter() - started
        counter = self.ok if code == grpc.StatusCode.OK else self.owner.metrics.requests.labels(self.method, code.name)
        counter.inc()
        self.latency.observe(elapsed)
        level = logging.DEBUG if code == grpc.StatusCode.OK else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "rpc", extra={"method": self.method, "code": code.name, "caller": caller,
                                         "ms": round(elapsed * 1000, 2)})


class _NoSpan:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_SPAN = _NoSpan()


def _code_of(context, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, ServiceError):
        return error.code
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is not None:
        return grpc.StatusCode.CANCELLED if type(error).__name__ == "CancelledError" else grpc.StatusCode.INTERNAL
    return grpc.StatusCode.OK


class _Undecodable:
    """Stands in for a request whose bytes are not the method's message (gRPC would say UNKNOWN)."""

    def __init__(self, reason: str):
        self.reason = reason

    def refuse(self) -> InvalidArgument:
        return InvalidArgument(("request", f"not a valid protobuf message of this method: {self.reason}"))


def _lenient(deserializer):
    if deserializer is None:
        return None

    def decode(data: bytes):
        try:
            return deserializer(data)
        except Exception as error:   # noqa: BLE001 - any decoder failure is the caller's bad input
            return _Undecodable(str(error) or type(error).__name__)

    return decode


def _checked(request, streaming: bool):
    """The request, or for a stream an iterator over it, refusing undecodable messages as INVALID_ARGUMENT."""
    if not streaming:
        if isinstance(request, _Undecodable):
            raise request.refuse()
        return request

    async def messages():
        async for message in request:
            if isinstance(message, _Undecodable):
                raise message.refuse()
            yield message

    return messages()


def _wrap(handler: grpc.RpcMethodHandler, call: _Call) -> grpc.RpcMethodHandler:
    """The same handler with the guard around its behaviour, for each of the four call shapes."""
    decode = _lenient(handler.request_deserializer)
    streaming_requests = handler.request_streaming
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request, context):
            started, error, caller = time.perf_counter(), None, None
            try:
                with call.span(context):
                    caller = call.authorize(context)
                    return await inner(_checked(request, streaming_requests), context)
            except Exception as exc:
                error = exc
                await call.fail(context, exc)
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.record(context, started, error, caller)

        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return factory(unary_response, decode, handler.response_serializer)

    inner_stream: Callable = handler.unary_stream or handler.stream_stream

    async def stream_response(request, context):
        started, error, caller = time.perf_counter(), None, None
        try:
            with call.span(context):
                caller = call.authorize(context)
                async for response in inner_stream(_checked(request, streaming_requests), context):
                    yield response
        except Exception as exc:
            error = exc
            await call.fail(context, exc)
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.record(context, started, error, caller)

    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return factory(stream_response, decode, handler.response_serializer)
