"""`modalmesh`: run the local mesh (up, down, status), issue certificates, call any method.

The local mesh runs every workload of mesh/workloads.yaml as a supervised process on 127.0.0.1,
each with its own certificate from a local CA and the same mutual TLS and authorization
(mesh/policy.yaml) as in a cluster; see modalmesh.supervisor and modalmesh.home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EXAMPLES = """\
examples:
  modalmesh up --detach                  start every workload in the background, wait until all serve
  modalmesh status                       each workload's address, identity and live health
  modalmesh call text modalmesh.v1.TextService/Embed '{"texts": ["a cat", "a kitten"]}'
  modalmesh pki issue me --out ./certs   a certificate for grpcurl or tritonclient
  modalmesh segment vision ./series/ --labels labels.nii.gz
                                         segment a CT (NIfTI, DICOM zip or folder): volumes as JSON
  modalmesh down                         stop what `up --detach` started
  modalmesh mesh render                  regenerate the Kubernetes/Istio/skaffold files after editing
                                         mesh/workloads.yaml or mesh/policy.yaml

The mesh's files (CA, certificates, logs, state) live in --home, by default .modalmesh/ at the
repository root or $MODALMESH_HOME.
"""

READY_TIMEOUT_S = 180.0  # loading and warming models takes seconds to about a minute on a CPU


# -- up -------------------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from modalmesh.home import MeshHome
    from modalmesh.workloads import load_workloads, select

    home = MeshHome(args.home)
    if home.supervisor_running():
        return _already_running(home)
    try:
        workloads = select(load_workloads(args.workloads), args.only)
    except (OSError, ValueError) as e:
        return _error(str(e))
    if not workloads:
        return _error(f"{args.workloads} lists no workloads")
    if args.detach:
        return _up_detached(home, args)
    return _up_foreground(home, workloads, args)


def _up_foreground(home, workloads, args: argparse.Namespace) -> int:
    from modalmesh.supervisor import Supervisor, stop_leftovers
    from modalmesh.workloads import busy_ports, with_random_ports

    lock = home.acquire_lock()  # held until this process exits; a second `up` sees it
    if lock is None:
        return _already_running(home)
    try:
        leftovers = stop_leftovers(home.read_state())
        if leftovers:
            print(f"stopped {', '.join(leftovers)} left running by an earlier supervisor that was killed")
        if args.random_ports:
            workloads = with_random_ports(workloads)
        elif busy := busy_ports(workloads):
            return _error(f"port(s) in use: {', '.join(busy)}; stop what listens there "
                          "or run `modalmesh up --random-ports`")
        home.pid_file.write_text(f"{os.getpid()}\n")

        def on_ready(state: dict) -> None:
            _print_workloads(state["workloads"])
            if sys.stdout.isatty():  # not in supervisor.log, where "Ctrl-C" would mislead
                print(_hints(home, state, detached=False), flush=True)

        supervisor = Supervisor(home, workloads, args.ready_timeout, on_ready=on_ready)
        return supervisor.run()
    finally:
        if home.supervisor_pid() == os.getpid():
            home.pid_file.unlink(missing_ok=True)
        os.close(lock)


def _up_detached(home, args: argparse.Namespace) -> int:
    """Run `up` (without --detach) in a new session, logging to supervisor.log, and wait until it is ready."""
    command = [sys.executable, "-m", "modalmesh.cli", "up", "--home", str(home.root),
               "--workloads", str(Path(args.workloads).resolve()), "--ready-timeout", str(args.ready_timeout)]
    command += ["--random-ports"] if args.random_ports else []
    command += ["--only", *args.only] if args.only else []
    home.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(home.supervisor_log, "ab") as log:
        supervisor = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    print(f"started the supervisor (pid {supervisor.pid}); waiting up to {args.ready_timeout:g}s "
          "for every workload to be SERVING ...", flush=True)
    try:
        state = _wait_until_ready(home, supervisor, args.ready_timeout + 30)
    except KeyboardInterrupt:
        state = None  # the user gave up waiting: stop what was started, below
    if state is None:
        return _report_failed_start(home, supervisor)
    _print_workloads(state["workloads"])
    print(_hints(home, state, detached=True))
    return 0


def _wait_until_ready(home, supervisor: subprocess.Popen, timeout_s: float) -> dict | None:
    """The supervisor's state once every workload serves; None once it failed, exited or timed out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and supervisor.poll() is None:
        state = home.read_state() or {}
        if state.get("supervisor_pid") == supervisor.pid:  # not the state of an earlier run
            if state.get("phase") == "ready":
                return state
            if state.get("phase") == "failed":
                return None
        time.sleep(0.2)
    return None


def _report_failed_start(home, supervisor: subprocess.Popen) -> int:
    """Stop the supervisor (a failed one stops its workloads itself) and show why it failed."""
    from modalmesh.home import tail

    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGTERM)  # never leave a half-started mesh behind
    supervisor.wait()
    state = home.read_state() or {}
    if state.get("supervisor_pid") != supervisor.pid:
        state = {"message": f"the supervisor exited with code {supervisor.returncode}"}
    print(f"error: the mesh did not start: {state.get('message') or 'interrupted or timed out'}", file=sys.stderr)
    failed = state.get("failed_workload")
    log = home.log_of(failed) if failed else home.supervisor_log
    print(f"--- last lines of {log} ---\n{tail(log)}", file=sys.stderr)
    return 1


def _already_running(home) -> int:
    pid = home.supervisor_pid()
    return _error(f"a mesh is already running in {home.root} (supervisor pid {pid}); "
                  "see `modalmesh status`, stop it with `modalmesh down`, or use another --home")


def _hints(home, state: dict, detached: bool) -> str:
    first = next(iter(state["workloads"]))
    stop = "modalmesh down" + ("" if home.root == _default_home_root() else f" --home {home.root}")
    return "\n".join([
        "",
        *_pages(state["workloads"]),
        *_first_passwords(home, state["workloads"]),
        f"call:    modalmesh call {first} grpc.health.v1.Health/Check",
        f"logs:    {home.logs_dir}/",
        f"stop:    {stop}" if detached else "stop:    Ctrl-C",
    ])


def _default_home_root() -> Path:
    from modalmesh.home import default_home

    return default_home().resolve()


# -- down -----------------------------------------------------------------------------------------

def cmd_down(args: argparse.Namespace) -> int:
    from modalmesh.home import MeshHome
    from modalmesh.processes import process_alive
    from modalmesh.supervisor import STOP_MARGIN_S, stop_leftovers

    home = MeshHome(args.home)
    if not home.supervisor_running():
        leftovers = stop_leftovers(home.read_state())
        note = f"; stopped {', '.join(leftovers)} left behind by a killed supervisor" if leftovers else ""
        print(f"no mesh is running in {home.root}{note}")
        return 0
    pid = home.supervisor_pid()
    if not process_alive(pid):
        return _error(f"{home.pid_file} names no live process, yet the mesh's lock is held")
    print(f"stopping the mesh in {home.root} (supervisor pid {pid}) ...", flush=True)
    os.kill(pid, signal.SIGTERM)
    # The supervisor gives each workload its drain grace and a margin; allow that plus a margin.
    stop_timeouts = [w.get("stop_timeout_s", 0) for w in (home.read_state() or {}).get("workloads", {}).values()]
    timeout = max(stop_timeouts, default=0) + STOP_MARGIN_S
    deadline = time.monotonic() + timeout
    # The supervisor lets go of the lock a moment before its process ends: wait for both.
    while (home.supervisor_running() or process_alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if home.supervisor_running() or process_alive(pid):
        print(f"the supervisor did not stop within {timeout:g}s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):   # it may end on its own meanwhile
            os.kill(pid, signal.SIGKILL)
    stop_leftovers(home.read_state())
    print("stopped")
    return 0


# -- status ---------------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from modalmesh.health import probe
    from modalmesh.home import OPERATOR, MeshHome
    from modalmesh.processes import process_alive

    home = MeshHome(args.home)
    state = home.read_state()
    if not home.supervisor_running() or not state:
        return _error(f"no mesh is running in {home.root}; start one with `modalmesh up`")
    cert = home.certificate(OPERATOR)
    workloads = {}
    for name, entry in state["workloads"].items():
        live = process_alive(entry.get("pid"))
        health = probe(entry["grpc"], cert) if live else "UNREACHABLE"
        workloads[name] = {key: entry[key] for key in ("name", "grpc", "metrics", "metrics_url", "web_url", "mqtt",
                                                        "identity", "pid", "restarts", "state") if key in entry}
        workloads[name].update(health=health, pid=entry.get("pid") if live else None)
    if args.json:
        print(json.dumps({"home": str(home.root), "supervisor_pid": state.get("supervisor_pid"),
                          "phase": state.get("phase"), "workloads": workloads}, indent=2))
    else:
        print(f"mesh in {home.root}: {state.get('phase')} (supervisor pid {state.get('supervisor_pid')})")
        _print_workloads(workloads)
        print("\n".join(_pages(workloads)))
    return 0


def _pages(workloads: dict) -> list[str]:
    """The web apps' addresses, for people to open."""
    return [f"web:     {w['web_url']}  ({name})" for name, w in workloads.items() if w.get("web_url")]


def _first_passwords(home, workloads: dict) -> list[str]:
    """Where an app that requires sign-in left the password it made for its first user (the file, never the
    password: terminals are recorded and scrolled back)."""
    found = [(name, home.data_dir / name / "initial-password") for name in workloads]
    return [f"sign in: {name}: user 'clinician', password in {path}" for name, path in found if path.exists()]


def _print_workloads(workloads: dict) -> None:
    columns = [("WORKLOAD", "name"), ("GRPC", "grpc"), ("METRICS", "metrics_url"), ("IDENTITY", "identity"),
               ("PID", "pid"), ("RESTARTS", "restarts"), ("HEALTH", "health")]
    rows = [[header for header, _ in columns]]
    rows += [["-" if w.get(key) is None else str(w.get(key)) for _, key in columns] for w in workloads.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    sys.stdout.flush()


# -- pki ------------------------------------------------------------------------------------------

def cmd_pki_issue(args: argparse.Namespace) -> int:
    from modalmesh.home import MeshHome
    from services.runtime.identity import spiffe_id

    home = MeshHome(args.home)
    try:
        issued = home.issue(args.name, args.out)
    except ValueError as e:
        return _error(str(e))
    print(f"identity:    {spiffe_id(args.name)}")
    print(f"ca:          {issued.ca}")
    print(f"certificate: {issued.cert}")
    print(f"key:         {issued.key}")
    return 0


# -- call -----------------------------------------------------------------------------------------

def cmd_call(args: argparse.Namespace) -> int:
    import grpc

    from modalmesh.call import (CallError, describe_rpc_error, format_json, invoke, message_to_dict,
                                parse_requests, resolve_method)
    from services.runtime.channels import plaintext_channel, secure_channel

    if args.plaintext and ":" not in args.workload:
        return _error("--plaintext needs HOST:PORT (a workload's address inside the cluster)", code=2)
    home_error, address, cert = (None, args.workload, None) if args.plaintext else _call_target(args)
    if home_error:
        return _error(home_error)
    try:
        method = resolve_method(args.method)
        requests = parse_requests(method, sys.stdin.read() if args.request == "-" else args.request)
    except CallError as e:
        return _error(str(e), code=2)
    with (plaintext_channel(address) if args.plaintext else
          secure_channel(address, cert.ca, cert.cert, cert.key)) as channel:
        try:
            for reply in invoke(channel, method, requests, args.timeout):
                print(format_json(message_to_dict(reply)), flush=True)
        except grpc.RpcError as e:
            print(describe_rpc_error(e), file=sys.stderr)
            return 1
    return 0


def _call_target(args: argparse.Namespace):
    """(error, address, certificate): the workload's address from the running mesh, or HOST:PORT as given."""
    from modalmesh.home import MeshHome

    home = MeshHome(args.home)
    if ":" in args.workload:
        return None, args.workload, home.certificate(args.as_name)
    state = home.read_state()
    if not home.supervisor_running() or not state:
        return f"no mesh is running in {home.root}; start one with `modalmesh up`", None, None
    entry = state["workloads"].get(args.workload)
    if entry is None:
        return (f"no workload {args.workload!r} in the mesh; running: {', '.join(state['workloads'])}",
                None, None)
    return None, entry["grpc"], home.certificate(args.as_name)


# -- segment ----------------------------------------------------------------------------------------

def cmd_segment(args: argparse.Namespace) -> int:
    """Stream a study to VisionService.SegmentVolume: progress on stderr, the result as JSON on stdout."""
    import grpc

    from modalmesh.call import describe_rpc_error, format_json, message_to_dict
    from modalmesh.v1 import vision_pb2, vision_pb2_grpc
    from services.runtime.channels import secure_channel
    from services.vision.study_stream import study_requests

    home_error, address, cert = _call_target(args)
    if home_error:
        return _error(home_error)
    try:
        study_format, data = _read_study(Path(args.study))
    except (OSError, ValueError) as error:
        return _error(str(error), code=2)
    header = vision_pb2.VolumeHeader(format=study_format, label_format=(
        vision_pb2.LABEL_FORMAT_NIFTI_GZ if args.labels else vision_pb2.LABEL_FORMAT_NONE))
    labels = bytearray()
    with secure_channel(address, cert.ca, cert.cert, cert.key) as channel:
        try:
            for reply in vision_pb2_grpc.VisionServiceStub(channel).SegmentVolume(
                    study_requests(header, data), timeout=args.timeout):
                event = reply.WhichOneof("event")
                if event == "progress":
                    print(_progress_line(reply.progress), file=sys.stderr, flush=True)
                elif event == "labels":
                    labels += reply.labels.data
                else:
                    print(format_json(message_to_dict(reply.result)), flush=True)
        except grpc.RpcError as e:
            print(describe_rpc_error(e), file=sys.stderr)
            return 1
    if args.labels:
        Path(args.labels).write_bytes(labels)
        print(f"labels: {args.labels}", file=sys.stderr)
    return 0


def _read_study(path: Path) -> tuple[int, bytes]:
    """(VolumeFormat, bytes) of a NIfTI file, a ZIP of a DICOM series or a folder of one."""
    from modalmesh.v1 import vision_pb2
    from services.vision.volumes import folder_zip_bytes

    if path.is_dir():
        return vision_pb2.VOLUME_FORMAT_DICOM_ZIP, folder_zip_bytes(path)
    if path.name.endswith(".zip"):
        return vision_pb2.VOLUME_FORMAT_DICOM_ZIP, path.read_bytes()
    if path.name.endswith((".nii", ".nii.gz")):
        return vision_pb2.VOLUME_FORMAT_NIFTI, path.read_bytes()
    raise ValueError(f"{path}: give a .nii or .nii.gz file, a .zip of a DICOM series, or a folder of one")


def _progress_line(progress) -> str:
    from modalmesh.v1 import vision_pb2

    stage = vision_pb2.SegmentationStage.Name(progress.stage).removeprefix("SEGMENTATION_STAGE_").lower()
    if progress.windows_total:
        return f"{stage}: {progress.windows_done}/{progress.windows_total} windows"
    return f"{stage}: {progress.bytes_received}/{progress.total_bytes} bytes"


# -- mesh render ----------------------------------------------------------------------------------

def cmd_mesh_render(args: argparse.Namespace) -> int:
    from modalmesh.manifests import render, stale_files, write
    from modalmesh.workloads import load_workloads
    from services.runtime.policy import MeshPolicy
    from services.runtime.settings import REPO_ROOT

    root = Path(args.out) if args.out else REPO_ROOT
    try:
        files = render(load_workloads(args.workloads), MeshPolicy.load(args.policy))
    except (OSError, ValueError) as e:
        return _error(str(e))
    if args.check:
        stale = stale_files(files, root)
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        if stale:
            return _error("generated files differ from mesh/workloads.yaml and mesh/policy.yaml; "
                          "run `modalmesh mesh render`")
        print(f"{len(files)} generated files are current")
        return 0
    changed = write(files, root)
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} of {len(files)} generated files changed")
    return 0


# -- argument parsing -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from modalmesh.workloads import DEFAULT_WORKLOADS_FILE

    parser = argparse.ArgumentParser(
        prog="modalmesh",
        description="Run the local mesh of modalmesh services (mutual TLS, the authorization of "
                    "mesh/policy.yaml), issue certificates, and call any method.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", metavar="DIR",
                      help="the mesh's directory (default: $MODALMESH_HOME or .modalmesh/ at the repository root)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = commands.add_parser(
        "up", parents=[home], help="start the local mesh",
        description="Issue certificates from the local CA, start every workload of mesh/workloads.yaml as a "
                    "supervised process (restarted with backoff when it crashes), wait until each reports "
                    "SERVING over mutual TLS and print where they listen. Ctrl-C or SIGTERM stops them all.")
    up.add_argument("--detach", action="store_true",
                    help="run the supervisor in the background; return once every workload is SERVING")
    up.add_argument("--random-ports", action="store_true",
                    help="pick free ports instead of those in workloads.yaml (tests, a second mesh)")
    up.add_argument("--only", nargs="+", metavar="NAME", help="start only these workloads")
    up.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S, metavar="S",
                    help=f"how long to wait for every workload to be SERVING (default {READY_TIMEOUT_S:g})")
    up.add_argument("--workloads", default=str(DEFAULT_WORKLOADS_FILE), metavar="FILE",
                    help="the list of workloads (default: mesh/workloads.yaml)")
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", parents=[home], help="stop a mesh started with `up --detach`",
                               description="Send SIGTERM to the supervisor and wait until it and every "
                                           "workload have exited.")
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser(
        "status", parents=[home], help="show the running workloads and their live health",
        description="Each workload's gRPC address, metrics address, identity, pid and health, asked over "
                    "mutual TLS now (SERVING, NOT_SERVING or UNREACHABLE). Exits 1 when no mesh runs.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=cmd_status)

    pki = commands.add_parser("pki", help="certificates of the local CA")
    pki_commands = pki.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)
    issue = pki_commands.add_parser(
        "issue", parents=[home], help="issue a certificate for an identity",
        description="Write ca.crt, NAME.crt and NAME.key into DIR: a certificate for the identity "
                    "spiffe://cluster.local/ns/modalmesh/sa/NAME from the mesh's CA, valid for "
                    "localhost and 127.0.0.1 (for grpcurl, tritonclient, tests). mesh/policy.yaml lets "
                    "the identity `cli` call everything.")
    issue.add_argument("name", metavar="NAME", help="the workload (service account) name, e.g. cli")
    issue.add_argument("--out", required=True, metavar="DIR", help="directory to write the files to")
    issue.set_defaults(handler=cmd_pki_issue)

    call = commands.add_parser(
        "call", parents=[home], help="call a method of a running workload, JSON in and out",
        description="Call METHOD of WORKLOAD over mutual TLS and print each reply as JSON. Tensors in "
                    "replies are printed decoded as {dtype, shape, values}. On a gRPC error, print its "
                    "status code, message and field violations, and exit 1.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  modalmesh call text modalmesh.v1.TextService.Embed '{\"texts\": [\"hello\"]}' "
               "| jq '.embeddings.shape'")
    call.add_argument("workload", metavar="WORKLOAD", help="a workload of the running mesh, or HOST:PORT")
    call.add_argument("method", metavar="METHOD",
                      help="/package.Service/Method, package.Service/Method or package.Service.Method")
    call.add_argument("request", nargs="?", default="{}", metavar="JSON",
                      help="the request as JSON ('-' reads stdin; default {}); an array of requests for a "
                           "client-streaming method")
    call.add_argument("--timeout", type=float, default=60.0, metavar="S", help="deadline in seconds (default 60)")
    call.add_argument("--as", dest="as_name", default="cli", metavar="NAME",
                      help="the identity to call as (default cli; its certificate is issued when missing)")
    call.add_argument("--plaintext", action="store_true",
                      help="no TLS: only from a pod whose Istio sidecar does the mutual TLS (the pod's service "
                           "account is then the identity; docs/deploy.md)")
    call.set_defaults(handler=cmd_call)

    segment = commands.add_parser(
        "segment", parents=[home], help="segment a 3D study with a running vision workload",
        description="Stream STUDY (a .nii/.nii.gz file, a .zip of a DICOM series, or a folder of one) to "
                    "VisionService.SegmentVolume over mutual TLS; print progress on stderr and the measurements "
                    "as JSON on stdout; with --labels, save the label volume as NIfTI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  modalmesh segment vision ./series/ --labels labels.nii.gz | jq '.structures'")
    segment.add_argument("workload", metavar="WORKLOAD", help="the vision workload of the running mesh, or HOST:PORT")
    segment.add_argument("study", metavar="STUDY", help="a .nii or .nii.gz file, a .zip of a DICOM series, a folder")
    segment.add_argument("--labels", metavar="FILE", help="write the label volume here (NIfTI, .nii.gz)")
    segment.add_argument("--timeout", type=float, default=600.0, metavar="S", help="deadline in seconds (default 600)")
    segment.add_argument("--as", dest="as_name", default="cli", metavar="NAME",
                         help="the identity to call as (default cli)")
    segment.set_defaults(handler=cmd_segment)

    mesh = commands.add_parser("mesh", help="files derived from mesh/workloads.yaml and mesh/policy.yaml")
    mesh_commands = mesh.add_subparsers(dest="mesh_command", metavar="COMMAND", required=True)
    render = mesh_commands.add_parser(
        "render", help="regenerate the Kubernetes, Istio and skaffold files",
        description="Write the per-workload Kubernetes objects (mesh/base/workloads/), the NetworkPolicies, "
                    "the Istio AuthorizationPolicies, DestinationRules and VirtualServices "
                    "(mesh/istio/generated/) and skaffold.yaml from the workload list and the policy. "
                    "--check changes nothing and exits 1 when a committed file differs.")
    render.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    render.add_argument("--workloads", default=str(DEFAULT_WORKLOADS_FILE), metavar="FILE",
                        help="the list of workloads (default: mesh/workloads.yaml)")
    render.add_argument("--policy", default=str(DEFAULT_WORKLOADS_FILE.parent / "policy.yaml"), metavar="FILE",
                        help="the authorization policy (default: mesh/policy.yaml)")
    render.add_argument("--out", metavar="DIR", help="write under DIR instead of the repository root")
    render.set_defaults(handler=cmd_mesh_render)
    return parser


def _error(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `modalmesh call ... | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
