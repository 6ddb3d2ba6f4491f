"""One typed settings object per process, read from MODALMESH_* environment variables at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]

# gRPC's default 4 MiB receive limit is set explicitly on both sides; larger inputs stream in chunks.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

Precision = Literal["auto", "float32", "bfloat16", "float16"]


class ServiceSettings(BaseSettings):
    """What every service process needs: identity, ports, TLS, batching, observability."""

    model_config = SettingsConfigDict(env_prefix="MODALMESH_", extra="ignore")

    workload: str = Field(description="Workload (service account) name; selects the policy section")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=-1, le=65535, description="Prometheus endpoint; -1 disables it")

    # "mutual": this process terminates mutual TLS and authorizes by the client certificate.
    # "sidecar": plaintext on the pod, behind an Istio sidecar that does mutual TLS; identity
    # then comes from the sidecar's x-forwarded-client-cert header. Never the default.
    tls_mode: Literal["mutual", "sidecar"] = "mutual"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    policy_file: Path = REPO_ROOT / "mesh" / "policy.yaml"
    data_dir: Path = Field(REPO_ROOT / ".modalmesh" / "data", description="Where the workload keeps what it stores "
                           "(SQLite databases, queues); the local mesh gives each workload its own")

    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    dynamic_batching: bool = True
    max_batch_size: int = Field(64, ge=1, description="Rows per model execution")
    max_queue_delay_ms: float = Field(2.0, ge=0, description="Longest a request waits for a batch to fill")
    max_queue_size: int = Field(1024, ge=1, description="Queued requests past which RESOURCE_EXHAUSTED")
    model_instances: int = Field(1, ge=1, le=64, description="Batches that run at once, each on its own thread")
    model_threads: int = Field(0, ge=0, description="Intra-op threads per process; 0 = cores / model_instances")
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the gRPC port (SO_REUSEPORT), "
                         "each with its own models and event loop: for small models whose process, not "
                         "the model, is the limit (see services/runtime/workers.py)")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: Precision = Field("auto", description="Models' default precision: 'auto' (float32 on the CPU, bfloat16 "
                                               "on a GPU that has it), 'float32', 'bfloat16' or 'float16'")

    drain_delay_s: float = Field(0.0, ge=0, description="On SIGTERM, report NOT_SERVING this long (still "
                                 "serving) so load balancers stop routing here before new calls are refused")
    drain_grace_s: float = Field(20.0, ge=0, description="How long in-flight work may finish on SIGTERM")
    otlp_endpoint: str | None = Field(None, description="OTLP gRPC endpoint; tracing is off without it")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _tls_files_present(self) -> "ServiceSettings":
        if self.tls_mode == "mutual" and not (self.tls_ca and self.tls_cert and self.tls_key):
            raise ValueError(
                "mutual TLS needs MODALMESH_TLS_CA, MODALMESH_TLS_CERT and MODALMESH_TLS_KEY "
                "(`modalmesh pki issue NAME --out DIR` makes them); plaintext needs MODALMESH_TLS_MODE=sidecar"
            )
        return self
