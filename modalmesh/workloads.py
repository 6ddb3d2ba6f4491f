"""mesh/workloads.yaml: the workloads the local mesh runs, and the ports each one gets."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from services.runtime.settings import REPO_ROOT

DEFAULT_WORKLOADS_FILE = REPO_ROOT / "mesh" / "workloads.yaml"
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Route:
    """Methods that share a timeout and retry policy in the workload's VirtualService."""

    name: str
    methods: tuple[str, ...]
    timeout_s: float
    retries: int = 0  # only for idempotent methods: a retried call may run twice


@dataclass(frozen=True)
class KubernetesSpec:
    """How a workload runs in Kubernetes; every field has a default fit for a laptop cluster."""

    accelerator: str = "cpu"
    min_replicas: int = 1
    max_replicas: int = 3
    target_cpu_percent: int = 70
    requests: dict[str, str] = field(default_factory=lambda: {"cpu": "250m", "memory": "512Mi"})
    limits: dict[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "1Gi"})
    startup_budget_s: int = 300
    drain_delay_s: float = 5.0
    drain_grace_s: float = 20.0
    timeout_s: float = 60.0
    routes: tuple[Route, ...] = ()

    @classmethod
    def from_dict(cls, doc: dict) -> "KubernetesSpec":
        doc = dict(doc or {})
        replicas = doc.pop("replicas", {}) or {}
        routes = tuple(Route(r["name"], tuple(r["methods"]), float(r.get("timeout_s", 60)), int(r.get("retries", 0)))
                       for r in doc.pop("routes", ()) or ())
        unknown = set(doc) - {f for f in cls.__dataclass_fields__ if f not in ("min_replicas", "max_replicas")}
        if unknown:
            raise ValueError(f"unknown kubernetes setting(s): {', '.join(sorted(unknown))}")
        if doc.get("accelerator", "cpu") not in ("cpu", "gpu"):
            raise ValueError(f"accelerator must be cpu or gpu, not {doc['accelerator']!r}")
        return cls(min_replicas=int(replicas.get("min", 1)), max_replicas=int(replicas.get("max", 3)),
                   routes=routes, **doc)


@dataclass(frozen=True)
class Workload:
    """One workload of the mesh: a local process, and a Deployment in Kubernetes."""

    name: str
    module: str
    grpc_port: int
    metrics_port: int
    env: dict[str, str] = field(default_factory=dict)
    kubernetes: KubernetesSpec = field(default_factory=KubernetesSpec)
    http_port: int | None = None  # a web app's page port, exposed through the Istio ingress gateway

    @property
    def grpc_address(self) -> str:
        return f"{LOCALHOST}:{self.grpc_port}"

    @property
    def metrics_address(self) -> str:
        return f"{LOCALHOST}:{self.metrics_port}"


def load_workloads(path: str | Path = DEFAULT_WORKLOADS_FILE) -> list[Workload]:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    workloads = []
    for name, spec in (doc.get("workloads") or {}).items():
        missing = {"module", "grpc_port", "metrics_port"} - set(spec or {})
        if missing:
            raise ValueError(f"{path}: workload {name!r} lacks {', '.join(sorted(missing))}")
        env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        try:
            kubernetes = KubernetesSpec.from_dict(spec.get("kubernetes"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: workload {name!r}: {e}") from e
        http_port = int(spec["http_port"]) if spec.get("http_port") else None
        workloads.append(Workload(name, spec["module"], int(spec["grpc_port"]), int(spec["metrics_port"]), env,
                                  kubernetes, http_port))
    return workloads


def select(workloads: list[Workload], only: list[str] | None) -> list[Workload]:
    """The workloads named in ``only`` (all when None), in file order."""
    if not only:
        return workloads
    unknown = set(only) - {w.name for w in workloads}
    if unknown:
        known = ", ".join(w.name for w in workloads)
        raise ValueError(f"unknown workload(s) {', '.join(sorted(unknown))}; known: {known}")
    return [w for w in workloads if w.name in only]


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, all different (each socket stays bound until all are picked).

    Another process could take one before the workload binds it; tests and second meshes accept that.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def with_random_ports(workloads: list[Workload]) -> list[Workload]:
    ports = iter(free_ports(2 * len(workloads)))
    return [replace(w, grpc_port=next(ports), metrics_port=next(ports)) for w in workloads]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return True
        return False


def busy_ports(workloads: list[Workload]) -> list[str]:
    """Human descriptions of the configured ports that something already listens on."""
    busy = []
    for w in workloads:
        for kind, port in (("gRPC", w.grpc_port), ("metrics", w.metrics_port)):
            if port_in_use(port):
                busy.append(f"{port} ({w.name} {kind})")
    return busy
