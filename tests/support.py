"""Test harness: real service processes on free ports, with real mutual TLS from a local CA."""

from __future__ import annotations

import contextlib
import os
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

from modalmesh.pki import IssuedCertificate, LocalCA
from services.runtime.channels import secure_channel

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pki:
    """A CA for one test session and the certificates issued from it, by workload name."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ca = LocalCA.load_or_create(directory / "ca")
        self._issued: dict[str, IssuedCertificate] = {}

    def issue(self, name: str) -> IssuedCertificate:
        if name not in self._issued:
            self._issued[name] = self.ca.issue(name, self.directory / "certs")
        return self._issued[name]


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    pki: Pki
    log_path: Path

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    sidecar: bool = False

    def channel(self, identity: str = "cli") -> grpc.Channel:
        if self.sidecar:   # plaintext, as the Istio sidecar forwards it; identity in the XFCC header
            return grpc.insecure_channel(self.target)
        cert = self.pki.issue(identity)
        return secure_channel(self.target, cert.ca, cert.cert, cert.key)

    def aio_channel(self, identity: str = "cli") -> grpc.aio.Channel:
        cert = self.pki.issue(identity)
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


def start_service(module: str, pki: Pki, tmp: Path, workload: str, **settings) -> ServiceProcess:
    """Start ``python -m module`` with its own certificate and free ports; waits until SERVING."""
    cert = pki.issue(workload)
    port, metrics_port = free_port(), free_port()
    env = {**os.environ,
           "MODALMESH_WORKLOAD": workload, "MODALMESH_GRPC_PORT": str(port),
           "MODALMESH_METRICS_PORT": str(metrics_port), "MODALMESH_TLS_CA": str(cert.ca),
           "MODALMESH_TLS_CERT": str(cert.cert), "MODALMESH_TLS_KEY": str(cert.key),
           "MODALMESH_MODEL_THREADS": "2", "MODALMESH_DRAIN_GRACE_S": "20"}
    env.update({f"MODALMESH_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = tmp / f"{workload}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=ROOT, start_new_session=True)
    service = ServiceProcess(process, port, metrics_port, pki, log_path, sidecar=settings.get("tls_mode") == "sidecar")
    try:
        service.wait_serving()
    except BaseException:
        service.stop(5)
        raise
    return service
