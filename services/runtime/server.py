"""Service bootstrap shared by every service: mutual TLS, authorization, health, reflection,
metrics, tracing, model loading and graceful drain. A service supplies only its models and servicers."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inference import grpc_service_pb2_grpc
from services.runtime import tracing, workers
from services.runtime.adapter import ModelAdapter
from services.runtime.batcher import BatchingConfig
from services.runtime.channels import channel_options
from services.runtime.interceptor import MeshInterceptor
from services.runtime.logs import configure_logging
from services.runtime.metrics import Metrics
from services.runtime.oip import SERVICE_NAME as OIP_SERVICE, InferenceServicer
from services.runtime.policy import MeshPolicy
from services.runtime.served_model import ServedModel
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

LIVENESS = "liveness"  # health name that is SERVING for as long as the process answers


@dataclass
class Service:
    """What one service contributes: its models and its typed servicers."""

    models: list[ServedModel]
    # (add_XServicer_to_server, servicer instance, full service name)
    servicers: list[tuple[Callable, object, str]] = field(default_factory=list)
    # Work the process does beside answering calls (a bridge's subscription, an app's web server):
    # started once the models are loaded, cancelled when draining. One that ends or fails ends the
    # process with an error, so the supervisor (or Kubernetes) restarts it.
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class Runtime:
    """Per-process shared parts handed to a service's build function."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.metrics = Metrics(settings.workload)
        self.batching = BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            max_queue_size=settings.max_queue_size,
            enabled=settings.dynamic_batching,
            instances=settings.model_instances,
        )

    def serve_model(self, name: str, adapter: ModelAdapter) -> ServedModel:
        return ServedModel(name, adapter, self.batching, self.metrics)


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    """Mutual TLS: the server proves its identity and requires a client certificate from the mesh CA."""
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=settings.tls_ca.read_bytes(),
        require_client_auth=True,
    )


class ServiceServer:
    def __init__(self, settings: ServiceSettings, build: Callable[[Runtime], Service]):
        self.settings = settings
        self.runtime = Runtime(settings)
        self.service = build(self.runtime)
        self.health = health.aio.HealthServicer()
        self.names = [name for _, _, name in self.service.servicers] + [OIP_SERVICE]
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        settings = self.settings
        tracing_on = tracing.configure_tracing(settings.workload, settings.otlp_endpoint) is not None
        interceptor = MeshInterceptor(settings.workload, MeshPolicy.load(settings.policy_file), self.runtime.metrics,
                                      sidecar_mode=settings.tls_mode == "sidecar", tracing_on=tracing_on)
        # The same message limits as the mesh's clients. SO_REUSEPORT only among workers, whose
        # supervisor checked the port free; a lone process fails loudly on a taken port.
        reuse_port = int(workers.is_worker())
        self.server = grpc.aio.server(interceptors=[interceptor],
                                      options=channel_options(settings.max_message_bytes)
                                      + [("grpc.so_reuseport", reuse_port)])
        for add, servicer, _ in self.service.servicers:
            add(servicer, self.server)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(f"modalmesh-{settings.workload}", self.service.models), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            self.names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Kubernetes' liveness probe asks for this name: the process answers, whether or not its
        # models are loaded yet or it is draining (readiness covers those).
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self.port = self._bind()
        if settings.metrics_port >= 0:
            self.metrics_port = self.runtime.metrics.serve(settings.metrics_host, settings.metrics_port).server_port
        await self.server.start()
        log.info("listening", extra={"grpc": f"{settings.grpc_host}:{self.port}", "tls": settings.tls_mode,
                                     "metrics_port": self.metrics_port})

    def _bind(self) -> int:
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        if self.settings.tls_mode == "sidecar":
            log.warning("plaintext on the pod: only safe behind an Istio sidecar with STRICT mutual TLS")
            return self.server.add_insecure_port(address)
        return self.server.add_secure_port(address, server_credentials(self.settings))

    async def load_models(self, then_start: bool = False) -> None:
        """Load and warm every model, then report SERVING (until then health says NOT_SERVING)."""
        for model in self.service.models:
            await model.load()
        _freeze_loaded_objects()
        if then_start:
            await self.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"grpc_port": self.port, "metrics_port": self.metrics_port,
                                   "models": [m.name for m in self.service.models]})

    async def drain(self) -> None:
        """NOT_SERVING at once, let in-flight calls finish within the grace period, then close models."""
        log.info("draining", extra={"delay_s": self.settings.drain_delay_s, "grace_s": self.settings.drain_grace_s})
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(self.settings.drain_delay_s)
        if self.server:   # a worker stopped before its models loaded never listened
            await self.server.stop(self.settings.drain_grace_s)
        for model in self.service.models:
            await model.close()
        tracing.shutdown_tracing()
        log.info("stopped")

    async def _set_health(self, status) -> None:
        for name in ["", *self.names]:
            await self.health.set(name, status)

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        listen_early = workers.listens_before_loading()
        if listen_early:
            await self.start()
        loader = asyncio.ensure_future(self.load_models(then_start=not listen_early))
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([loader, stop], return_when=asyncio.FIRST_COMPLETED)
        if loader.done() and loader.exception():
            log.error("model loading failed", exc_info=loader.exception())
            if self.server:
                await self.server.stop(0)
            raise SystemExit(1)
        tasks = [asyncio.ensure_future(task()) for task in self.service.tasks] if loader.done() else []
        finished, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        loader.cancel()
        failed = [t for t in finished if t is not stop]
        for task in failed:
            log.error("background task ended", exc_info=task.exception() if not task.cancelled() else None)
        await _cancel(tasks)
        await self.drain()
        if failed:
            raise SystemExit(1)


def _freeze_loaded_objects() -> None:
    """Keep what loading made (the model libraries' and weights' objects) out of every later collection.

    Why: with torch and transformers loaded, a full collection walks every object the process has, with
    the GIL held. Under load such collections stopped the event loop and the model thread for 130–200 ms
    a few times a minute, which is what the slowest requests waited for; after the freeze they take a
    few ms. Objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()
    log.info("froze the objects made while loading", extra={"objects": gc.get_freeze_count()})


async def _cancel(tasks: list[asyncio.Future]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def run_service(settings_type: type[ServiceSettings], build: Callable[[Runtime], Service]) -> None:
    """Entry point of a service process: read settings, serve until SIGTERM, drain, exit."""
    settings = settings_type()
    configure_logging(settings.workload, settings.log_level)
    if settings.workers > 1 and not workers.is_worker():
        raise SystemExit(workers.supervise(settings))

    async def main() -> None:
        await ServiceServer(settings, build).run_until_signalled()

    asyncio.run(main())
