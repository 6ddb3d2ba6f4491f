from __future__ import annotations

import os

# A service launched from a test process that already has gRPC channels open can die before exec
# in gRPC's fork handlers (grpc/grpc#43055); the tests never fork a process that uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import glob  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from modalmesh.home import MeshHome  # noqa: E402
from tests.support import free_port, start_service  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> MeshHome:
    """A mesh home for the session: its CA, and certificates issued from it by workload name."""
    return MeshHome(tmp_path_factory.mktemp("mesh-home"))


@pytest.fixture(scope="session")
def text_service(pki, tmp_path_factory):
    """One text service for the session, default settings, over mutual TLS."""
    service = start_service("services.text", pki, tmp_path_factory.mktemp("text"), "text")
    yield service
    assert service.stop() == 0, service.log()[-2000:]


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server, where the machine has one and a driver is installed."""
    pytest.importorskip("psycopg")
    initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (`make system-packages` installs them)")
    root = Path(tempfile.mkdtemp(prefix="modalmesh-pg-"))   # not under pytest's 0700 tree: postgres reads it
    root.chmod(0o777)
    data, port = root / "data", free_port()
    run_as = [] if os.geteuid() else ["runuser", "-u", "postgres", "--"]   # initdb refuses root
    try:
        subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True,
                       capture_output=True)
        # The server's output goes to its log file: a pipe would stay open for as long as it runs.
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o",
                        f"-p {port} -k {root} -c listen_addresses=''", "-w", "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
