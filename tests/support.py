"""Test harness: real service processes on free ports, with real mutual TLS from a local CA."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from modalmesh.home import MeshHome
from modalmesh.launch import ServiceProcess, free_port, launch, metric  # noqa: F401 - tests import metric from here
from services.runtime.settings import REPO_ROOT

ROOT = REPO_ROOT
__all__ = ["ROOT", "ServiceProcess", "free_port", "install_in_hub_cache", "metric", "serving", "serving_together",
           "start_service", "wait_for"]


def start_service(module: str, home: MeshHome, tmp: Path, workload: str, **settings) -> ServiceProcess:
    """Start a service as the local mesh would and wait until it is SERVING."""
    return serving(launch(module, home, tmp, workload, **{"model_threads": 2, "drain_grace_s": 20, **settings}))


def serving(service: ServiceProcess) -> ServiceProcess:
    """``service`` once it is SERVING; stopped, and the error raised, when it never is."""
    try:
        service.wait_serving()
    except BaseException:
        service.stop(5)
        raise
    return service


@contextlib.contextmanager
def serving_together(launched: dict[str, ServiceProcess]) -> Iterator[dict[str, ServiceProcess]]:
    """Services launched side by side, once all are SERVING; all stopped (cleanly, checked) afterwards,
    and at once when one never serves. Launch them from the test's thread: a service dies with it."""
    try:
        for service in launched.values():
            service.wait_serving()
    except BaseException:
        for service in launched.values():
            service.stop(5)
        raise
    yield launched
    for service in launched.values():
        assert service.stop() == 0, service.log_tail()


def wait_for(condition, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Return once ``condition()`` is true; TimeoutError if it never is within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met")


def install_in_hub_cache(model_dir: Path, hf_home: Path, repo_id: str) -> None:
    """Lay a saved model out as the Hugging Face hub cache does (what `hf download` leaves behind), so a
    service loads it by id with HF_HUB_OFFLINE=1 through the same from_pretrained path a user's id takes."""
    revision = "0" * 40
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
