"""The container's runtime conditions, reproduced without a container engine.

In the pod every workload runs with a read-only root filesystem, only /tmp (an emptyDir) and the
model cache as volumes, offline, with the environment of the Dockerfile's runtime stage. Here the
text service, then every other workload, runs under the same conditions: in a mount namespace of its own where every
filesystem is read-only, a fresh tmpfs standing in for /tmp, and that environment. If the
service, PyTorch, transformers or the embedding package tried to write anywhere else (a cache, a
.pyc, a lock file) or to reach the hub, it would fail here as it would in the pod.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from modalmesh.launch import launch
from modalmesh.workloads import load_workloads
from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.identity import spiffe_id
from tests.support import ROOT

pytestmark = pytest.mark.slow

# Remount every filesystem read-only (in this process's own mount namespace only), put a tmpfs
# on the scratch directory given as $1, then exec the rest of the command line.
READ_ONLY_ROOT = r"""
set -e
scratch="$1"; shift
for mount in $(awk '{print $2}' /proc/self/mounts); do
  case "$mount" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;; *) mount -o remount,bind,ro "$mount" ;; esac
done
mount -t tmpfs -o size=512m,mode=1777 tmpfs "$scratch"
exec "$@"
"""


def runtime_environment() -> dict[str, str]:
    """The ENV of the Dockerfile's runtime stage."""
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = re.search(r"^FROM \S+ AS runtime\n(.*?)(?=^FROM )", dockerfile, re.M | re.S).group(1)
    env = {}
    for line in re.findall(r"^ENV (.*)$", stage, re.M):
        env.update(pair.split("=", 1) for pair in line.split())
    return env


def read_only(scratch: Path) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_ROOT, "sh", str(scratch)]


@pytest.fixture()
def scratch():
    path = Path(tempfile.mkdtemp(prefix="modalmesh-pod-tmp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_conditions_are_real(scratch):
    """In the namespace the checkout and the virtual environment refuse writes; the scratch takes them."""
    probe = subprocess.run([*read_only(scratch), "sh", "-c",
                            f'touch "{ROOT}/pod-write" 2>/dev/null && echo checkout-writable; '
                            f'touch "{ROOT}/.venv/pod-write" 2>/dev/null && echo venv-writable; '
                            f'touch "{scratch}/ok" && echo scratch-writable'],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["scratch-writable"]
    assert not (ROOT / "pod-write").exists() and not (scratch / "ok").exists()  # the tmpfs left nothing


def test_the_service_serves_on_a_read_only_root_filesystem(pki, tmp_path, scratch):
    image_env = runtime_environment()
    assert image_env["HF_HUB_OFFLINE"] == "1" and image_env["PYTHONDONTWRITEBYTECODE"] == "1"
    environment = {k: v.replace("/tmp", str(scratch)) for k, v in image_env.items() if k != "PATH"}
    environment["TMPDIR"] = str(scratch)
    service = launch("services.text", pki, tmp_path, "text", wrapper=read_only(scratch), environment=environment,
                     tls_mode="sidecar", model_threads=2)
    try:
        service.wait_serving()
        with service.channel() as channel:
            reply = text_pb2_grpc.TextServiceStub(channel).Embed(
                text_pb2.EmbedRequest(texts=["a read-only root filesystem"]), timeout=30,
                metadata=[("x-forwarded-client-cert", f"By={spiffe_id('text')};URI={spiffe_id('cli')}")])
        assert list(reply.embeddings.shape) == [1, 384]
        assert reply.model.name == "all-MiniLM-L6-v2"
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()


@pytest.mark.parametrize("workload", [w for w in load_workloads() if w.name != "text"], ids=lambda w: w.name)
def test_every_workload_starts_on_a_read_only_root_filesystem(pki, tmp_path, scratch, workload):
    """Each workload as its pod runs it: sidecar mode, the image's environment, data only under
    MODALMESH_DATA_DIR (its volume; /tmp for the others), nothing written anywhere else."""
    environment = {k: v.replace("/tmp", str(scratch)) for k, v in runtime_environment().items() if k != "PATH"}
    environment["TMPDIR"] = str(scratch)
    service = launch(workload.module, pki, tmp_path, workload.name, wrapper=read_only(scratch),
                     environment=environment, tls_mode="sidecar", data_dir=scratch / "data", model_threads=1)
    try:
        service.wait_serving(180)
        assert service.health() == "SERVING"
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()
