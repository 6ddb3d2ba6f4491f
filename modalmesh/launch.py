"""Start one service process outside the supervisor, as the local mesh would: for tests and benchmarks.

The process gets the same environment contract as under `modalmesh up` (modalmesh.supervisor), its own
certificate from a MeshHome, and free ports.
"""

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
from modalmesh.pki import IssuedCertificate
from modalmesh.supervisor import service_environment
from modalmesh.workloads import Workload
from services.runtime.channels import secure_channel
from services.runtime.settings import REPO_ROOT
from services.runtime.workers import die_with_parent

POLICY_FILE = REPO_ROOT / "mesh" / "policy.yaml"
CLIENT_IDENTITY = "cli"   # mesh/policy.yaml lets the operator's identity call every method


def metric(text: str, name: str, **labels) -> float:
    """The sum of the Prometheus samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


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

    sidecar: bool = False
    workers: int = 1   # MODALMESH_WORKERS: SERVING once every worker logged that it serves

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def client_cert(self) -> IssuedCertificate:
        return self.home.certificate(CLIENT_IDENTITY)

    def channel(self, identity: str = CLIENT_IDENTITY) -> grpc.Channel:
        if self.sidecar:   # plaintext, as the Istio sidecar forwards it; identity in the XFCC header
            return grpc.insecure_channel(self.target)
        cert = self.home.certificate(identity)
        return secure_channel(self.target, cert.ca, cert.cert, cert.key)

    def aio_channel(self, identity: str = CLIENT_IDENTITY) -> grpc.aio.Channel:
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

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("process has no RSS")

    def wait_serving(self, timeout: float = 240) -> float:
        """Seconds until health says SERVING (models loaded and warmed); raises with the log if never."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                if self.health() == "SERVING" and self._all_workers_serving():
                    return time.monotonic() - started
            time.sleep(0.2)
        raise TimeoutError(f"service not SERVING after {timeout}s:\n{self.log_tail()}")

    def _all_workers_serving(self) -> bool:
        """Health answers from whichever worker the connection reached; the others say so in the log."""
        return self.workers == 1 or self.log().count('"msg": "serving"') >= self.workers

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the service drains), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch(module: str, home: MeshHome, log_dir: Path, workload: str, *, wrapper: list[str] | None = None,
           environment: dict[str, str] | None = None, **settings) -> ServiceProcess:
    """Start ``python -m module`` on free ports; does not wait for it.

    ``settings`` become MODALMESH_* variables (``max_queue_size=4`` → MODALMESH_MAX_QUEUE_SIZE=4);
    ``environment`` adds other variables; ``wrapper`` is a command that execs the service's command line
    given as its last arguments (to run it in another namespace, say).
    """
    port, metrics_port = free_port(), free_port()
    spec = Workload(workload, module, port, metrics_port,
                    env={f"MODALMESH_{k.upper()}": str(v) for k, v in settings.items()})
    env = service_environment(spec, home.certificate(workload), POLICY_FILE, Path(log_dir) / "data")
    env.update(spec.env)   # a test may ask for sidecar mode, which the local mesh never does
    env.update(environment or {})
    log_path = Path(log_dir) / f"{workload}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*(wrapper or []), sys.executable, "-m", module], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
                                   preexec_fn=die_with_parent)
    return ServiceProcess(process, port, metrics_port, home, log_path, sidecar=settings.get("tls_mode") == "sidecar",
                          workers=int(settings.get("workers", 1)))
