"""Shared parts of the benchmarks: a service process with its own certificates, a concurrent gRPC
load generator in separate client processes, resource accounting from /proc, and JSON records.

Nothing here imports torch: client processes stay light, so the CPU they use is the load
generator's own and not a second copy of the model runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:   # run as `python bench/x.py`: make the project importable without installing it
    sys.path.insert(0, str(ROOT))
# Servers started from a process with open gRPC channels can die in gRPC's fork handlers
# (grpc/grpc#43055); the benchmarks never fork a process that uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402

from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.launch import die_with_parent, launch  # noqa: E402
from services.runtime.channels import channel_options, client_credentials  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"


# -- certificates and service processes ----------------------------------------------------------


@contextlib.contextmanager
def running_service(module: str, workload: str, home: MeshHome, log_dir: Path, **settings):
    """Start a service as the local mesh would (settings become MODALMESH_* variables); always stop it."""
    service = launch(module, home, log_dir, workload, **settings)
    try:
        yield service
    finally:
        service.stop()


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the services a benchmark started."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


# -- CPU accounting from /proc ------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat_path: Path) -> float:
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS   # utime + stime


def process_cpu_seconds(pid: int) -> float:
    return _cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed by 'name:tid' (threads come and go; the name says what they do)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            name = (task / "comm").read_text().strip()
            out[f"{name}:{task.name}"] = _cpu_seconds(task / "stat")
    return out


def thread_cpu_usage(pid: int, before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used per thread during a window, busiest first, as 'name:tid' (the main thread is 'main:<pid>').

    Python does not name OS threads, so worker threads (the model's executor, torch's OpenMP pool,
    the metrics server) mostly show as 'python'; the main thread runs the asyncio event loop.
    """
    usage = {}
    for key, value in after.items():
        name, tid = key.rsplit(":", 1)
        label = f"main:{tid}" if tid == str(pid) else key
        usage[label] = (value - before.get(key, 0.0)) / seconds
    return {k: round(v, 3) for k, v in sorted(usage.items(), key=lambda kv: -kv[1]) if v >= 0.005}


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (a server made of several processes: Ray, Triton)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def process_tree_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid`` and of each descendant alive now, keyed 'name:pid' (Ray names its workers)."""
    usage = {}
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            name = Path(f"/proc/{member}/comm").read_text().strip()
            usage[f"{name}:{member}"] = process_cpu_seconds(member)
    return usage


def system_cpu_seconds() -> tuple[float, float, float]:
    """(busy, total, stolen) CPU seconds of the whole machine since boot, from /proc/stat.

    Busy excludes steal: time the hypervisor gave this virtual machine's CPUs to someone else.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    idle, steal = values[3] + values[4], values[7] if len(values) > 7 else 0
    return (sum(values) - idle - steal) / _CLOCK_TICKS, sum(values) / _CLOCK_TICKS, steal / _CLOCK_TICKS


# -- latency statistics -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rate_per_second(times_s: list[float], window_s: float) -> list[int]:
    """Events in each whole second of a window, from their times in seconds since the window opened."""
    counts = [0] * int(window_s)
    for t in times_s:
        if 0 <= t < len(counts):
            counts[int(t)] += 1
    return counts


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    if not values:
        return {}
    return {"mean": round(1000 * sum(values) / len(values), 2),
            **{f"p{q:g}": round(1000 * percentile(values, q), 2) for q in (50, 90, 99, 99.9)},
            "max": round(1000 * values[-1], 2)}


# -- load generator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """Closed-loop load: ``concurrency`` callers, each sending its next request when the last one answered."""

    target: str
    method: str                      # full gRPC path, e.g. /modalmesh.v1.TextService/Embed
    requests: list[bytes]            # serialized request messages, sent round-robin
    concurrency: int = 64
    client_processes: int = 1
    channels_per_process: int = 1
    warmup_s: float = 5.0
    duration_s: float = 20.0
    timeout_s: float = 30.0
    ca: str = ""
    cert: str = ""
    key: str = ""
    # A server without TLS (a benchmark peer, or modalmesh in sidecar mode) gets a plaintext channel, and
    # ``metadata`` rides on every call (e.g. the x-forwarded-client-cert header an Istio sidecar adds).
    plaintext: bool = False
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    completed: int
    errors: dict[str, int]
    window_s: float
    throughput_rps: float
    latency_ms: dict[str, float]
    throughput_per_second: list[int]   # completions in each whole second of the window
    client_cpu_cores: float           # all client processes together, during the window
    per_process: list[dict] = field(default_factory=list)


def _client_process(spec: LoadSpec, index: int, callers: int, conn) -> None:
    """One client process: ``callers`` asyncio tasks over ``channels_per_process`` channels."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when clients stop
    die_with_parent()
    try:
        conn.send(("result", asyncio.run(_drive(spec, index, callers, conn))))
    except BaseException as error:   # report, never hang the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


async def _drive(spec: LoadSpec, index: int, callers: int, conn) -> dict:
    options = channel_options() + [("grpc.use_local_subchannel_pool", 1)]
    if spec.plaintext:
        channels = [grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.channels_per_process)]
    else:
        credentials = client_credentials(Path(spec.ca), Path(spec.cert), Path(spec.key))
        channels = [grpc.aio.secure_channel(spec.target, credentials, options=options)
                    for _ in range(spec.channels_per_process)]
    metadata = spec.metadata or None
    # Bytes in, bytes out: the generator spends no CPU on protobuf; the service does all of its own work.
    calls = [ch.unary_unary(spec.method, request_serializer=None, response_deserializer=None) for ch in channels]
    try:
        # Connect (TLS handshake) before the clock starts.
        await calls[0](spec.requests[0], timeout=spec.timeout_s, metadata=metadata)
        for call in calls[1:]:
            await call(spec.requests[0], timeout=spec.timeout_s, metadata=metadata)
        conn.send(("ready", index))
        loop = asyncio.get_running_loop()
        measure_from, measure_until = await loop.run_in_executor(None, conn.recv)
        latencies: list[float] = []
        ends: list[float] = []   # completion times, seconds into the window
        errors: dict[str, int] = {}
        n_requests = len(spec.requests)

        async def caller(i: int) -> None:
            call = calls[i % len(calls)]
            k = (index * 7919 + i * 131) % n_requests
            while True:
                started = time.monotonic()
                if started >= measure_until:
                    return
                try:
                    await call(spec.requests[k], timeout=spec.timeout_s, metadata=metadata)
                    ok = True
                except grpc.aio.AioRpcError as error:
                    ok = False
                    if started >= measure_from:
                        errors[error.code().name] = errors.get(error.code().name, 0) + 1
                ended = time.monotonic()
                if ok and measure_from <= ended <= measure_until:
                    latencies.append(ended - started)
                    ends.append(ended - measure_from)
                k = (k + 1) % n_requests

        cpu = [0.0, 0.0]

        async def sample_cpu() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            cpu[0] = time.process_time()
            await asyncio.sleep(max(0.0, measure_until - time.monotonic()))
            cpu[1] = time.process_time()

        await asyncio.gather(sample_cpu(), *(caller(i) for i in range(callers)))
        return {"process": index, "callers": callers, "latencies": latencies, "ends": ends, "errors": errors,
                "cpu_s": cpu[1] - cpu[0]}
    finally:
        for ch in channels:
            await ch.close()


def run_load(spec: LoadSpec, on_window_start: Callable[[], None] | None = None,
             on_window_end: Callable[[], None] | None = None) -> LoadResult:
    """Run closed-loop load from separate processes; measure only after the warm-up.

    ``on_window_start``/``on_window_end`` run in this process at the edges of the measured
    window (to snapshot server counters and CPU time).
    """
    ctx = multiprocessing.get_context("spawn")   # never fork a process that holds gRPC or torch state
    share = [spec.concurrency // spec.client_processes + (1 if i < spec.concurrency % spec.client_processes else 0)
             for i in range(spec.client_processes)]
    workers = []
    finished = False
    try:
        for i, callers in enumerate(share):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=_client_process, args=(spec, i, callers, child_end), daemon=True,
                                  name=f"loadgen-{i}")
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        for process, conn in workers:
            kind, value = _receive(conn, process, 120)
            if kind != "ready":
                raise RuntimeError(f"load generator {process.name} failed: {value}")
        now = time.monotonic()
        measure_from = now + spec.warmup_s
        measure_until = measure_from + spec.duration_s
        for _, conn in workers:
            conn.send((measure_from, measure_until))
        _sleep_until(measure_from)
        if on_window_start:
            on_window_start()
        _sleep_until(measure_until)
        if on_window_end:
            on_window_end()
        results = []
        for process, conn in workers:
            kind, value = _receive(conn, process, spec.timeout_s + 30)
            if kind != "result":
                raise RuntimeError(f"load generator {process.name} failed: {value}")
            results.append(value)
        finished = True
    finally:
        for process, conn in workers:
            conn.close()
            if not finished:   # interrupted or failed: stop the load at once
                process.kill()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
    latencies = [x for r in results for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    per_second = rate_per_second([t for r in results for t in r["ends"]], spec.duration_s)
    return LoadResult(
        completed=len(latencies), errors=errors, window_s=spec.duration_s,
        throughput_rps=round(len(latencies) / spec.duration_s, 1),
        throughput_per_second=per_second,
        latency_ms=latency_summary_ms(latencies),
        client_cpu_cores=round(sum(r["cpu_s"] for r in results) / spec.duration_s, 3),
        per_process=[{"process": r["process"], "callers": r["callers"], "completed": len(r["latencies"]),
                      "cpu_cores": round(r["cpu_s"] / spec.duration_s, 3)} for r in results],
    )


def _receive(conn, process, timeout: float):
    if not conn.poll(timeout):
        raise TimeoutError(f"load generator {process.name} sent nothing in {timeout}s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"load generator {process.name} exited with {process.exitcode}") from None


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


# -- records -------------------------------------------------------------------------------------------


def machine_description() -> dict:
    info = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "grpcio": grpc.__version__}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=5).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                                text=True, timeout=5).stdout.strip())
    return info


def write_record(name: str, record: dict, out: Path | None = None) -> Path:
    """Write the JSON record to ``out`` or bench/results/<name>-<UTC timestamp>.json."""
    if out is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return out


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def temporary_directory(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
