"""The local mesh's home directory: CA, certificates, logs, the supervisor's lock, pid and state.

Layout of HOME (default ``.modalmesh/`` at the repository root, env MODALMESH_HOME overrides)::

    pki/ca.crt, pki/ca.key        the local CA
    certs/<name>.crt|.key, ca.crt one certificate per workload and one for the operator (`cli`)
    logs/<name>.log               each workload's stdout and stderr; logs/supervisor.log when detached
    data/<name>/                  what each workload stores (telemetry, twins, the broker's queue)
    up.lock                       held (flock) by the running supervisor: the truth of "a mesh runs here"
    up.pid                        the supervisor's pid, for `modalmesh down`
    state.json                    what the supervisor runs: addresses, identities, pids, restarts
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from modalmesh.pki import IssuedCertificate, LocalCA
from services.runtime.settings import REPO_ROOT

OPERATOR = "cli"  # the identity `modalmesh call` and `status` present; mesh/policy.yaml allows it everything


def default_home() -> Path:
    return Path(os.environ.get("MODALMESH_HOME") or REPO_ROOT / ".modalmesh")


class MeshHome:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root else default_home().resolve()
        self.pki_dir = self.root / "pki"
        self.certs_dir = self.root / "certs"
        self.logs_dir = self.root / "logs"
        self.data_dir = self.root / "data"   # data/<workload>/: what each workload stores (databases)
        self.lock_file = self.root / "up.lock"
        self.pid_file = self.root / "up.pid"
        self.state_file = self.root / "state.json"
        self.supervisor_log = self.logs_dir / "supervisor.log"

    def log_of(self, workload: str) -> Path:
        return self.logs_dir / f"{workload}.log"

    # -- certificates -------------------------------------------------------------------------

    def ca(self) -> LocalCA:
        return LocalCA.load_or_create(self.pki_dir)

    def issue(self, name: str, out_dir: str | Path | None = None) -> IssuedCertificate:
        return self.ca().issue(name, out_dir or self.certs_dir)

    def certificate(self, name: str) -> IssuedCertificate:
        """The certificate of ``name`` in certs/, issued now if there is none yet."""
        issued = IssuedCertificate(self.certs_dir / "ca.crt", self.certs_dir / f"{name}.crt",
                                   self.certs_dir / f"{name}.key")
        if all(p.exists() for p in (issued.ca, issued.cert, issued.key)):
            return issued
        return self.issue(name)

    # -- the running supervisor ---------------------------------------------------------------

    def acquire_lock(self) -> int | None:
        """Take the lock for this process's lifetime; None when another supervisor holds it.

        flock, not the pid file, says whether a mesh runs: the kernel drops it when the
        supervisor dies however it dies, so a stale pid file never blocks the next `up`.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    def supervisor_running(self) -> bool:
        if not self.lock_file.exists():
            return False
        fd = os.open(self.lock_file, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)  # closing drops the shared lock if we got it
        return False

    def supervisor_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_state(self, state: dict) -> None:
        """Atomically, so a reader never sees half a file."""
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)


def tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
