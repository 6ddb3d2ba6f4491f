"""The local mesh's process supervisor: start each workload, wait until it serves, restart it when it dies.

Each workload runs as ``python -m <module>`` in a session (and process group) of its own, so a
Ctrl-C in the terminal reaches only the supervisor, which then drains every workload in order,
and so stopping a workload also stops anything it started. A crashed workload is restarted after
1 s, doubling to 30 s while it keeps crashing; a run of 60 s counts as recovered.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modalmesh.health import SERVING, probe
from modalmesh.home import OPERATOR, MeshHome
from modalmesh.pki import IssuedCertificate
from modalmesh.processes import process_alive, runs_command, signal_group
from modalmesh.workloads import LOCALHOST, Workload, peer_environment
from services.runtime.identity import spiffe_id
from services.runtime.settings import REPO_ROOT, ServiceSettings

INITIAL_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a workload up this long has recovered: its next crash restarts after 1 s again
STARTUP_ATTEMPTS = 3  # a workload that dies this often before it ever served fails `up` (a broken build)
PROBE_INTERVAL_S = 0.5
TICK_S = 0.2
STOP_MARGIN_S = 5.0  # beyond the workload's own drain grace, before SIGKILL
DEFAULT_POLICY_FILE = REPO_ROOT / "mesh" / "policy.yaml"


def restart_delay(crashes_in_a_row: int) -> float:
    """Seconds to wait before restarting a workload that crashed ``crashes_in_a_row`` times (>= 1)."""
    return min(INITIAL_BACKOFF_S * 2 ** (crashes_in_a_row - 1), MAX_BACKOFF_S)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def service_environment(workload: Workload, cert: IssuedCertificate, policy_file: Path, data_dir: Path,
                        peers: list[Workload] = ()) -> dict[str, str]:
    """The service process contract: who it is, where it listens, its certificate, the policy, where it
    keeps its data, and where the other workloads of the mesh listen."""
    env = dict(os.environ)
    env.update(peer_environment(list(peers), lambda _: LOCALHOST))
    env.update(workload.env)
    env.update({
        "PYTHONUNBUFFERED": "1",  # logs reach the log file as they happen, not at exit
        "MODALMESH_WORKLOAD": workload.name,
        "MODALMESH_GRPC_HOST": LOCALHOST,
        "MODALMESH_GRPC_PORT": str(workload.grpc_port),
        "MODALMESH_METRICS_HOST": LOCALHOST,
        "MODALMESH_METRICS_PORT": str(workload.metrics_port),
        "MODALMESH_TLS_MODE": "mutual",
        "MODALMESH_TLS_CA": str(cert.ca),
        "MODALMESH_TLS_CERT": str(cert.cert),
        "MODALMESH_TLS_KEY": str(cert.key),
        "MODALMESH_POLICY_FILE": str(policy_file),
        "MODALMESH_DATA_DIR": str(data_dir / workload.name),
    })
    if workload.http_port:
        env["MODALMESH_HTTP_PORT"] = str(workload.http_port)
    return env


def drain_grace_s(env: dict[str, str]) -> float:
    """How long the workload itself may take to drain on SIGTERM (its own setting)."""
    default = ServiceSettings.model_fields["drain_grace_s"].default
    try:
        return float(env.get("MODALMESH_DRAIN_GRACE_S", default))
    except ValueError:
        return default


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class SupervisedWorkload:
    """One workload's process across its restarts."""

    def __init__(self, workload: Workload, home: MeshHome, cert: IssuedCertificate, policy_file: Path,
                 peers: list[Workload] = ()):
        self.workload = workload
        self.home = home
        self.env = service_environment(workload, cert, policy_file, home.data_dir, peers)
        self.command = [sys.executable, "-m", workload.module]
        self.process: subprocess.Popen | None = None
        self.state = "stopped"  # starting | serving | backoff | stopped
        self.health = "UNREACHABLE"
        self.ever_served = False
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.last_probe = 0.0
        self.last_exit: int | None = None

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def stop_timeout_s(self) -> float:
        return drain_grace_s(self.env) + STOP_MARGIN_S

    def start(self) -> None:
        self.home.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.home.log_of(self.name), "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.state, self.health, self.restart_at = "starting", "UNREACHABLE", None

    def reap(self) -> int | None:
        """The exit code if the process has just exited (its group is then swept), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        returncode, pgid = self.process.returncode, self.process.pid
        signal_group(pgid, signal.SIGKILL)  # whatever it started must not outlive it
        self.process, self.last_exit, self.state = None, returncode, "stopped"
        return returncode

    def schedule_restart(self, now: float) -> float:
        if now - self.started_at >= STABLE_AFTER_S:
            self.crashes_in_a_row = 0
        self.crashes_in_a_row += 1
        delay = restart_delay(self.crashes_in_a_row)
        self.state, self.restart_at = "backoff", now + delay
        return delay

    def probe_due(self, now: float) -> bool:
        return self.state == "starting" and now - self.last_probe >= PROBE_INTERVAL_S

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None:
            signal_group(self.process.pid, sig)

    def log_event(self, message: str, level: str = "warning") -> None:
        """A line in the workload's own log, in its JSON format, so its log tells why it restarted."""
        entry = {"ts": now_iso(), "level": level, "workload": self.name, "logger": "modalmesh.supervisor",
                 "msg": message}
        with open(self.home.log_of(self.name), "a") as log:
            log.write(json.dumps(entry) + "\n")

    def describe(self) -> dict:
        w = self.workload
        return {
            "name": w.name,
            "module": w.module,
            "grpc": w.grpc_address,
            "metrics": w.metrics_address,
            "metrics_url": f"http://{w.metrics_address}/metrics",
            **({"web_url": f"http://{LOCALHOST}:{w.http_port}/"} if w.http_port else {}),
            **({"mqtt": f"{LOCALHOST}:{w.mqtt_port}"} if w.mqtt_port else {}),
            "identity": spiffe_id(w.name),
            "pid": self.pid,
            "restarts": self.restarts,
            "state": self.state,
            "health": self.health,
            "stop_timeout_s": self.stop_timeout_s,
            "log": str(self.home.log_of(w.name)),
            "command": " ".join(self.command),
        }


class Supervisor:
    """Runs the workloads until a signal asks it to stop; ``run`` returns the process exit code."""

    def __init__(self, home: MeshHome, workloads: list[Workload], ready_timeout_s: float,
                 on_ready: Callable[[dict], None] = lambda state: None,
                 policy_file: Path = DEFAULT_POLICY_FILE):
        self.home = home
        self.operator_cert = home.issue(OPERATOR)  # fresh, from the CA the workloads trust now
        self.children = [SupervisedWorkload(w, home, home.issue(w.name), policy_file, workloads) for w in workloads]
        self.ready_timeout_s = ready_timeout_s
        self.on_ready = on_ready
        self.phase = "starting"  # starting | ready | stopping | stopped | failed
        self.message = ""
        self.failed_workload: str | None = None
        self.stop_signals = 0
        self.stop_signal_name = ""
        self.started_at = now_iso()

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        self._handle_stop_signals()
        try:
            self._start_all()
            self._supervise()
        finally:  # whatever went wrong here, no workload may outlive its supervisor
            failed = self.phase == "failed"
            if self.stop_signals:
                self._say(f"received {self.stop_signal_name}; stopping")
            self._stop_all()
            if not failed:
                self.phase = "stopped"
            self._write_state()
            self._say("stopped")
        return 1 if failed else 0

    def _start_all(self) -> None:
        for child in self.children:
            self._say(f"starting {child.name}: {' '.join(child.command)} on {child.workload.grpc_address}")
            child.start()
        self._write_state()

    def _supervise(self) -> None:
        """Until a stop signal or a failed start: reap, restart, and probe what is starting."""
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.stop_signals and self.phase in ("starting", "ready"):
            self._tick()
            if self.phase == "starting":
                self._check_startup(deadline)
            time.sleep(TICK_S)

    def _handle_stop_signals(self) -> None:
        def request_stop(signum, _frame):
            # Only counted here (printing inside a signal handler can re-enter print); a second
            # Ctrl-C skips the drain.
            self.stop_signals += 1
            self.stop_signal_name = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, request_stop)

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            returncode = child.reap()
            if returncode is not None:
                self._crashed(child, returncode, now)
            elif child.state == "backoff" and now >= child.restart_at:
                child.restarts += 1
                child.log_event(f"restarting (restart {child.restarts})", level="info")
                child.start()
                self._say(f"restarted {child.name} as pid {child.pid} (restart {child.restarts})")
                self._write_state()
            elif child.probe_due(now):
                self._probe(child, now)

    def _crashed(self, child: SupervisedWorkload, returncode: int, now: float) -> None:
        delay = child.schedule_restart(now)
        message = f"{describe_exit(returncode)} after {now - child.started_at:.1f}s; restarting in {delay:g}s"
        child.log_event(message)
        self._say(f"{child.name} {message}")
        self._write_state()

    def _probe(self, child: SupervisedWorkload, now: float) -> None:
        child.last_probe = now
        child.health = probe(child.workload.grpc_address, self.operator_cert, timeout_s=2.0)
        if child.health == SERVING:
            child.state, child.ever_served = "serving", True
            self._say(f"{child.name} is SERVING (pid {child.pid})")
            self._write_state()

    def _check_startup(self, deadline: float) -> None:
        if all(child.state == "serving" for child in self.children):
            self.phase = "ready"
            state = self._write_state()
            self.on_ready(state)
            return
        for child in self.children:
            if not child.ever_served and child.crashes_in_a_row >= STARTUP_ATTEMPTS:
                return self._fail(child, f"{child.name} {describe_exit(child.last_exit)} "
                                         f"{child.crashes_in_a_row} times before it was ready")
        if time.monotonic() > deadline:
            waiting = next(c for c in self.children if c.state != "serving")
            self._fail(waiting, f"{waiting.name} was not SERVING within {self.ready_timeout_s:g}s "
                                f"(health: {waiting.health}, state: {waiting.state})")

    def _fail(self, child: SupervisedWorkload, message: str) -> None:
        self.phase, self.message, self.failed_workload = "failed", message, child.name
        self._say(f"error: {message}; see {self.home.log_of(child.name)}")
        self._write_state()

    def _stop_all(self) -> None:
        """SIGTERM every workload, let each drain within its grace, then SIGKILL what is left."""
        if self.phase != "failed":
            self.phase = "stopping"
        running = [child for child in self.children if child.process is not None]
        for child in running:   # first: whatever fails after this, every workload has been told to stop
            self._say(f"stopping {child.name} (pid {child.pid})")
            child.signal(signal.SIGTERM)
        self._write_state()
        deadline = time.monotonic() + max((c.stop_timeout_s for c in running), default=0)
        while time.monotonic() < deadline and self.stop_signals < 2:
            for child in running:
                child.reap()
            if all(child.process is None for child in running):
                break
            time.sleep(0.1)
        for child in running:
            if child.process is not None:
                self._say(f"{child.name} did not stop in time; killing it")
                child.signal(signal.SIGKILL)
                child.process.wait()
                child.reap()
        for child in self.children:
            child.state, child.health = "stopped", "UNREACHABLE"

    # -- reporting ----------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "home": str(self.home.root),
            "supervisor_pid": os.getpid(),
            "started_at": self.started_at,
            "phase": self.phase,
            "message": self.message,
            "failed_workload": self.failed_workload,
            "workloads": {child.name: child.describe() for child in self.children},
        }

    def _write_state(self) -> dict:
        state = self.state()
        self.home.write_state(state)
        return state

    def _say(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} modalmesh: {message}", flush=True)


def stop_leftovers(state: dict | None, timeout_s: float = 10.0) -> list[str]:
    """Stop workloads that a supervisor killed with SIGKILL left running; returns their names.

    Only a live process still running its workload's command is signalled: pids get reused.
    """
    leftovers = {}
    for entry in ((state or {}).get("workloads") or {}).values():
        pid = entry.get("pid")
        if runs_command(pid, entry.get("module", "")):
            leftovers[entry["name"]] = pid
    for pid in leftovers.values():
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(process_alive(pid) for pid in leftovers.values()):
        time.sleep(0.1)
    for pid in leftovers.values():
        signal_group(pid, signal.SIGKILL)
    return list(leftovers)
