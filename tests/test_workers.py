"""MODALMESH_WORKERS: several server processes behind one port, over real sockets and mutual TLS."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path

import grpc
import pytest

from modalmesh.launch import launch
from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.channels import channel_options, client_credentials
from tests.support import metric, start_service, wait_for

pytestmark = pytest.mark.slow

WORKERS = 2
CONNECTIONS = 16


def start_workers(pki, tmp):
    # start_service waits for every worker to serve: the first answers health while the others load.
    return start_service("services.text", pki, tmp, "text", workers=WORKERS, model_threads=1, generation_model="")


@pytest.fixture(scope="module")
def workers_service(pki, tmp_path_factory):
    service = start_workers(pki, tmp_path_factory.mktemp("workers"))
    yield service
    service.stop()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on ``port`` held by each process (from /proc, as `ss -p` reads it)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                established.add(fields[9])
    counts = {}
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)) if fd.is_symlink() else None
            if match:
                inodes.add(match.group(1))
        counts[pid] = len(inodes & established)
    return counts


def separate_connections(service, n: int) -> list[grpc.Channel]:
    """``n`` channels that do not share a connection (each its own subchannel pool)."""
    cert = service.client_cert
    credentials = client_credentials(cert.ca, cert.cert, cert.key)
    options = channel_options() + [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.secure_channel(service.target, credentials, options=options) for _ in range(n)]


def test_connections_spread_over_every_worker_and_metrics_add_up(workers_service):
    workers = children(workers_service.pid)
    assert len(workers) == WORKERS
    channels = separate_connections(workers_service, CONNECTIONS)
    try:
        for i, channel in enumerate(channels):
            reply = text_pb2_grpc.TextServiceStub(channel).Embed(
                text_pb2.EmbedRequest(texts=[f"bearing {i} runs hot"]), timeout=30)
            assert list(reply.embeddings.shape) == [1, 384]
        per_worker = connections_per_process(workers, workers_service.port)
        # The kernel hashes each connection to a worker: all 16 on one of two has odds of 2^-15.
        assert sum(per_worker.values()) == CONNECTIONS and all(per_worker.values()), per_worker
    finally:
        for channel in channels:
            channel.close()
    # One /metrics for the whole service, from the supervisor: calls summed over the workers ...
    text = workers_service.metrics()
    assert metric(text, "modalmesh_grpc_requests_total", method="/modalmesh.v1.TextService/Embed",
                  code="OK") >= CONNECTIONS
    # ... and one info sample per live worker.
    pids = set(re.findall(r'modalmesh_service_info\{pid="(\d+)"', text))
    assert pids == {str(pid) for pid in workers}


def test_a_worker_that_dies_takes_the_service_down_whole(pki, tmp_path):
    service = start_workers(pki, tmp_path)
    try:
        workers = children(service.pid)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: service.process.poll() is not None, timeout=60)
        assert service.process.returncode != 0
        assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in workers)
        assert "worker exited; stopping the others" in service.log()
    finally:
        service.stop(5)


def test_sigterm_drains_every_worker(pki, tmp_path):
    service = start_workers(pki, tmp_path)
    workers = children(service.pid)
    assert service.stop() == 0, service.log_tail()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert service.log().count('"stopped"') == WORKERS


def test_a_taken_port_fails_loudly(pki, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = launch("services.text", pki, tmp_path, "text", workers=WORKERS, grpc_port=port,
                         generation_model="")
        try:
            assert service.process.wait(60) != 0
        finally:
            service.stop(5)
        assert f"cannot bind 127.0.0.1:{port}" in service.log()
