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
    storage: str | None = None  # a persistent volume of this size at /data (one replica: SQLite, a broker's queue)

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
        spec = cls(min_replicas=int(replicas.get("min", 1)), max_replicas=int(replicas.get("max", 3)),
                   routes=routes, **doc)
        if spec.storage and spec.max_replicas != 1:
            raise ValueError("a workload with storage runs one replica: set replicas {min: 1, max: 1}")
        return spec


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
    mqtt_port: int | None = None  # a broker's MQTT listener, which the mesh's MQTT clients connect to

    @property
    def grpc_address(self) -> str:
        return f"{LOCALHOST}:{self.grpc_port}"

    @property
    def metrics_address(self) -> str:
        return f"{LOCALHOST}:{self.metrics_port}"

    @property
    def ports(self) -> dict[str, int]:
        return {kind: port for kind, port in (("gRPC", self.grpc_port), ("metrics", self.metrics_port),
                                              ("HTTP", self.http_port), ("MQTT", self.mqtt_port)) if port}


def address_variable(workload_name: str) -> str:
    """The setting that tells a workload where another one's gRPC port is: MODALMESH_<NAME>_ADDRESS."""
    return f"MODALMESH_{workload_name.upper().replace('-', '_')}_ADDRESS"


def peer_environment(workloads: list[Workload], host_of) -> dict[str, str]:
    """Where every workload of the mesh listens, for the ones that call it: gRPC addresses, and the
    broker's MQTT host and port. ``host_of(workload)`` is 127.0.0.1 locally, the Service's name in
    Kubernetes. Addresses are no secret: the policy decides who may call what."""
    env = {address_variable(w.name): f"{host_of(w)}:{w.grpc_port}" for w in workloads}
    brokers = [w for w in workloads if w.mqtt_port]
    if len(brokers) > 1:
        raise ValueError(f"one MQTT broker per mesh, not {', '.join(w.name for w in brokers)}")
    if brokers:
        env.update(MODALMESH_MQTT_HOST=host_of(brokers[0]), MODALMESH_MQTT_PORT=str(brokers[0].mqtt_port))
    return env

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
        mqtt_port = int(spec["mqtt_port"]) if spec.get("mqtt_port") else None
        workloads.append(Workload(name, spec["module"], int(spec["grpc_port"]), int(spec["metrics_port"]), env,
                                  kubernetes, http_port, mqtt_port))
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
    ports = iter(free_ports(4 * len(workloads)))
    return [replace(w, grpc_port=next(ports), metrics_port=next(ports),
                    http_port=next(ports) if w.http_port else None,
                    mqtt_port=next(ports) if w.mqtt_port else None) for w in workloads]


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
        for kind, port in w.ports.items():
            if port_in_use(port):
                busy.append(f"{port} ({w.name} {kind})")
    return busy
