"""Test harness: real service processes on free ports, with real mutual TLS from a local CA."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.home import MeshHome
from modalmesh.supervisor import service_environment
from modalmesh.workloads import Workload
from services.runtime.channels import secure_channel
from services.runtime.settings import REPO_ROOT

DEFAULT_POLICY_FILE = REPO_ROOT / "mesh" / "policy.yaml"

ROOT = REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    home: MeshHome
    log_path: Path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    sidecar: bool = False

    def channel(self, identity: str = "cli") -> grpc.Channel:
        if self.sidecar:   # plaintext, as the Istio sidecar forwards it; identity in the XFCC header
            return grpc.insecure_channel(self.target)
        cert = self.home.certificate(identity)
        return secure_channel(self.target, cert.ca, cert.cert, cert.key)

    def aio_channel(self, identity: str = "cli") -> grpc.aio.Channel:
        cert = self.home.certificate(identity)
        return secure_channel(self.target, cert.ca, cert.cert, cert.key, aio=True)

    def health(self, service: str = "") -> str:
        with self.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("process has no RSS")

    def wait_serving(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(grpc.RpcError):
                if self.health() == "SERVING":
                    return
            time.sleep(0.2)
        raise TimeoutError(f"service not SERVING after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(module: str, home: MeshHome, tmp: Path, workload: str, **settings) -> ServiceProcess:
    """Start ``python -m module`` as the local mesh would, on free ports; waits until SERVING.

    ``settings`` become MODALMESH_* variables (``max_queue_size=4`` → MODALMESH_MAX_QUEUE_SIZE=4).
    """
    settings = {"model_threads": 2, "drain_grace_s": 20, **settings}
    port, metrics_port = free_port(), free_port()
    spec = Workload(workload, module, port, metrics_port,
                    env={f"MODALMESH_{k.upper()}": str(v) for k, v in settings.items()})
    env = service_environment(spec, home.certificate(workload), DEFAULT_POLICY_FILE)
    env.update(spec.env)   # a test may ask for sidecar mode, which the local mesh never does
    log_path = tmp / f"{workload}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=ROOT, start_new_session=True)
    service = ServiceProcess(process, port, metrics_port, home, log_path, sidecar=settings.get("tls_mode") == "sidecar")
    try:
        service.wait_serving()
    except BaseException:
        service.stop(5)
        raise
    return service
