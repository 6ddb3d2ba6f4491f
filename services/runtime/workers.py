"""Several server processes behind one gRPC port, for when one process's event loop is the limit.

A service process runs gRPC, TLS, authorization, tokenization and response building on one asyncio
event loop, and Python runs that loop on one core. With a small model on a GPU, the model finishes a
batch long before the loop has taken in the next one, so one process cannot keep the GPU busy.
With MODALMESH_WORKERS=N the process started becomes a supervisor of N worker processes:

- every worker is the same service (its own models, batcher and event loop) and binds the same port
  with SO_REUSEPORT, so the kernel spreads incoming connections across them (per connection, not per
  call: a client with one channel stays on one worker; Envoy and load generators open several);
- metrics: the workers write Prometheus samples to a shared folder and the supervisor alone serves
  /metrics, summed over workers (gauges of live workers only; `modalmesh_service_info` keeps one
  sample per worker, labelled with its pid);
- SIGTERM and SIGINT go to every worker, which drain as a single process would; when a worker dies
  unasked, the supervisor stops the others and exits with its status, so the pod restarts whole.

Each worker holds its own copy of the models in memory (GPU memory too): a help for small models,
not for large ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

WORKER_INDEX = "MODALMESH_WORKER_INDEX"   # set in a worker's environment, never by users
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def is_worker() -> bool:
    return WORKER_INDEX in os.environ


def listens_before_loading() -> bool:
    """A lone process, or worker 0, listens while it loads, so probes get an answer; the other workers
    join the shared port only once they can serve, so no connection lands on a loading worker."""
    return os.environ.get(WORKER_INDEX, "0") == "0"


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM it if the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def claim_port(host: str, port: int) -> int:
    """The port the workers will share: checked free now (SO_REUSEPORT would silently share a port
    another server holds), or picked when 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SystemExit(f"cannot bind {host}:{port}: {error.strerror}") from None
        return probe.getsockname()[1]


def supervise(settings: ServiceSettings) -> int:
    """Start ``settings.workers`` copies of this process's command line as workers; returns the exit status."""
    port = claim_port(settings.grpc_host, settings.grpc_port)
    with tempfile.TemporaryDirectory(prefix="modalmesh-metrics-") as metrics_dir:
        env = {**os.environ, "MODALMESH_GRPC_PORT": str(port), "MODALMESH_METRICS_PORT": "-1",
               MULTIPROCESS_DIR: metrics_dir}
        metrics_port = serve_merged_metrics(settings, metrics_dir)
        workers = [subprocess.Popen(sys.orig_argv, env={**env, WORKER_INDEX: str(i)}, preexec_fn=die_with_parent)
                   for i in range(settings.workers)]
        log.info("workers started", extra={"workers": [w.pid for w in workers], "grpc_port": port,
                                           "metrics_port": metrics_port})
        return _wait(workers)


def serve_merged_metrics(settings: ServiceSettings, metrics_dir: str) -> int:
    if settings.metrics_port < 0:
        return -1
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    return server.server_port


def _wait(workers: list[subprocess.Popen]) -> int:
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        codes = [w.poll() for w in workers]
        if all(code is not None for code in codes):
            return next((code for code in codes if code), 0)
        failed = next((w for w, code in zip(workers, codes) if code is not None and not stopping), None)
        if failed is not None:
            log.error("worker exited; stopping the others", extra={"pid": failed.pid, "status": failed.returncode})
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
