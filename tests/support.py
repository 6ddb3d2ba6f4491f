"""Test harness: real service processes on free ports, with real mutual TLS from a local CA."""

from __future__ import annotations

from pathlib import Path

from modalmesh.home import MeshHome
from modalmesh.launch import ServiceProcess, free_port, launch
from services.runtime.settings import REPO_ROOT

ROOT = REPO_ROOT
__all__ = ["ROOT", "ServiceProcess", "free_port", "start_service"]


def start_service(module: str, home: MeshHome, tmp: Path, workload: str, **settings) -> ServiceProcess:
    """Start a service as the local mesh would and wait until it is SERVING."""
    service = launch(module, home, tmp, workload, **{"model_threads": 2, "drain_grace_s": 20, **settings})
    try:
        service.wait_serving()
    except BaseException:
        service.stop(5)
        raise
    return service
