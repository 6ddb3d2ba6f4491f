"""Process liveness and process-group signals, for the supervisor and `modalmesh down`."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def process_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs. A zombie counts as dead: it holds no resources but its pid,
    and an orphan's zombie may linger where nothing reaps it (a container's PID 1)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): signal 0 is all we know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def runs_command(pid: int | None, command: str) -> bool:
    """Whether ``pid`` is alive and still the process we started (pids are reused)."""
    if not process_alive(pid):
        return False
    actual = command_line(pid)
    return actual is None or command in actual


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal every process of a group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True
