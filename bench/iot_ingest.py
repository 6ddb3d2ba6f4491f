"""Telemetry ingest through one IoT service instance, measured in one run against the raw store.

For each batch size (rows per IngestRequest), on one machine:
  1. raw      the same batches appended to the store in this process, into a fresh SQLite database (WAL,
              synchronous=FULL), one batch per transaction and streams x window batches per transaction
              (the service's group commit when every stream's window is full): the faster is the ceiling;
  2. service  `python -m services.iot` on a fresh database; --streams concurrent bidirectional Ingest
              streams over gRPC + mutual TLS, one asset each, from --client-processes separate processes.
              Each stream keeps up to --window batches unacknowledged (the rest waits on gRPC flow control).
A "sample" is one timestamped row of all nine centrifugal-pump sensors; values/s = samples/s x 9.
Reported: samples/s and values/s counted by the service's own committed-rows counter over the measured
window, acknowledgement latency (send -> ack, at the client) p50/p99, the store's commit time per batch
(server histogram), CPU per side, and the ratio service / raw ceiling. Target: >= 50,000 samples/s.

    .venv/bin/python bench/iot_ingest.py [--batch-rows 100,1000] [--streams 4] [--duration 10] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402, F401 - puts the repository on sys.path
import numpy as np  # noqa: E402

from _common import (exit_cleanly_on_sigterm, latency_summary_ms, machine_description,  # noqa: E402
                     process_cpu_seconds, running_service, system_cpu_seconds, thread_cpu_seconds, thread_cpu_usage,
                     write_record)
from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.launch import die_with_parent, metric  # noqa: E402
from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc  # noqa: E402
from services.iot.asset_types import CENTRIFUGAL_PUMP  # noqa: E402
from services.iot.store import TelemetryStore  # noqa: E402
from services.runtime.database import sqlite_url  # noqa: E402
from services.runtime.channels import secure_channel  # noqa: E402

TARGET_SAMPLES_PER_S = 50_000
SENSORS = list(CENTRIFUGAL_PUMP.sensors)
START_MS = 1_767_225_600_000
PERIOD_MS = 1000


# -- the batches both phases write ----------------------------------------------------------------


class Batches:
    """Batch n of an asset: rows n*size .. (n+1)*size-1, one second apart; values from a fixed pool."""

    def __init__(self, rows: int, seed: int = 20261127):
        self.rows = rows
        self.values = np.random.default_rng(seed).normal(300, 20, (64, rows, len(SENSORS))).astype(np.float32)
        self.offsets = PERIOD_MS * np.arange(rows, dtype=np.int64)

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return START_MS + n * self.rows * PERIOD_MS + self.offsets, self.values[n % len(self.values)]

    def request(self, asset_id: str, n: int) -> iot_pb2.IngestRequest:
        timestamps, values = self.arrays(n)
        return iot_pb2.IngestRequest(
            sequence=n, asset_id=asset_id, sensors=SENSORS,
            timestamps_ms=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT64, shape=[self.rows],
                                            data=timestamps.tobytes()),
            values=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=list(values.shape),
                                     data=values.tobytes()))


# -- raw: the store in this process -------------------------------------------------------------------


def measure_raw(rows: int, seconds: float, tmp: Path, group: int) -> dict:
    """``group`` batches per transaction, as the service's writer commits them when streams keep it busy."""
    store = TelemetryStore(sqlite_url(tmp / f"raw-{rows}-{group}.sqlite3"), {CENTRIFUGAL_PUMP.name: CENTRIFUGAL_PUMP})
    store.register("raw-pump", CENTRIFUGAL_PUMP.name)
    batches = Batches(rows)
    n, commits = 0, []

    def commit_group() -> None:
        nonlocal n
        with store.appending() as transaction:
            for _ in range(group):
                transaction.append("raw-pump", *batches.arrays(n))
                n += 1

    for _ in range(3):   # warm: tables, pages, statement cache
        commit_group()
    warm = n
    busy0, total0, stolen0 = system_cpu_seconds()
    cpu0, started = time.process_time(), time.perf_counter()
    while (now := time.perf_counter()) - started < seconds:
        commit_group()
        commits.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    busy1, total1, stolen1 = system_cpu_seconds()
    store.close()
    samples = (n - warm) * rows
    return {"batches_per_transaction": group, "batches": n - warm, "samples": samples, "seconds": round(elapsed, 3),
            "samples_per_s": round(samples / elapsed, 1), "commit_ms": latency_summary_ms(commits),
            "cpu_cores": round(cpu / elapsed, 3),
            "other_processes_cpu_cores": round(max(0.0, (busy1 - busy0) - cpu) / elapsed, 3),
            "stolen_cpu_cores": round((stolen1 - stolen0) / elapsed, 3)}


# -- service: streams from client processes --------------------------------------------------------


def _client_process(target: str, certificate: tuple[str, str, str], assets: list[str], rows: int, window: int,
                    measure_from: float, measure_until: float, conn) -> None:
    die_with_parent()
    try:
        conn.send(("result", asyncio.run(_drive(target, certificate, assets, rows, window, measure_from,
                                                measure_until))))
    except BaseException as error:   # report, never hang the parent
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


async def _drive(target, certificate, assets, rows, window, measure_from, measure_until) -> dict:
    ca, cert, key = (Path(p) for p in certificate)
    channel = secure_channel(target, ca, cert, key, aio=True)
    stub = iot_pb2_grpc.IoTServiceStub(channel)
    batches = Batches(rows)
    latencies, acked_in_window = [], [0]

    async def stream(asset_id: str) -> None:
        call = stub.Ingest()
        free = asyncio.Semaphore(window)
        sent_at: dict[int, float] = {}

        async def send() -> None:
            n = 0
            while time.monotonic() < measure_until:
                await free.acquire()
                sent_at[n] = time.monotonic()
                await call.write(batches.request(asset_id, n))
                n += 1
            await call.done_writing()

        sender = asyncio.ensure_future(send())
        async for ack in call:
            now = time.monotonic()
            free.release()
            if measure_from <= now <= measure_until:
                latencies.append(now - sent_at.pop(ack.sequence))
                acked_in_window[0] += ack.stored_rows
            else:
                sent_at.pop(ack.sequence, None)
        await sender

    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(stream(a) for a in assets))
    finally:
        await channel.close()
    return {"latencies": latencies, "acked_rows": acked_in_window[0], "cpu_s": time.process_time() - cpu0}


def measure_service(rows: int, args, pki: MeshHome, tmp: Path) -> dict:
    database = sqlite_url(tmp / f"service-{rows}.sqlite3")
    with running_service("services.iot", "iot", pki, tmp, iot_database_url=database,
                         ingest_stream_in_flight=args.window, anomaly_model="",
                         remaining_life_model="") as service:
        service.wait_serving()
        assets = [f"bench-pump-{i}" for i in range(args.streams)]
        with service.channel() as channel:
            stub = iot_pb2_grpc.IoTServiceStub(channel)
            for asset_id in assets:
                stub.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=CENTRIFUGAL_PUMP.name))
        cert = service.client_cert
        certificate = (str(cert.ca), str(cert.cert), str(cert.key))
        measure_from = time.monotonic() + args.warmup + 1.0   # + time for the client processes to start
        measure_until = measure_from + args.duration
        ctx = multiprocessing.get_context("spawn")
        clients = []
        for i in range(args.client_processes):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=_client_process, daemon=True, name=f"ingest-client-{i}", args=(
                service.target, certificate, assets[i::args.client_processes], rows, args.window,
                measure_from, measure_until, child_end))
            process.start()
            child_end.close()
            clients.append((process, parent_end))
        _sleep_until(measure_from)
        before = _server_snapshot(service)
        _sleep_until(measure_until)
        after = _server_snapshot(service)
        results = []
        for process, conn in clients:
            if not conn.poll(args.duration + 60):
                raise TimeoutError(f"{process.name} sent nothing")
            kind, value = conn.recv()
            process.join(10)
            if kind != "result":
                raise RuntimeError(f"{process.name} failed: {value}")
            results.append(value)
        with service.channel() as channel:
            listed = iot_pb2_grpc.IoTServiceStub(channel).ListAssets(iot_pb2.ListAssetsRequest())
        stored = sum(a.stored_rows for a in listed.assets)
    return _service_summary(rows, args, before, after, results, stored)


def _server_snapshot(service) -> dict:
    text = service.metrics()
    return {"time": time.monotonic(), "system": system_cpu_seconds(), "cpu": process_cpu_seconds(service.pid),
            "threads": thread_cpu_seconds(service.pid), "pid": service.pid,
            "rows": metric(text, "modalmesh_iot_ingested_rows_total"),
            "batches": metric(text, "modalmesh_iot_ingested_batches_total"),
            "commit_sum": metric(text, "modalmesh_iot_store_commit_seconds_sum"),
            "commit_count": metric(text, "modalmesh_iot_store_commit_seconds_count"),
            "commit_buckets": _buckets(text, "modalmesh_iot_store_commit_seconds_bucket")}


def _buckets(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[bound] = float(line.rsplit(" ", 1)[1])
    return out


def _histogram_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Upper bound of the bucket holding the q-quantile of the observations between two snapshots."""
    counts = sorted(((float(b), after[b] - before.get(b, 0.0)) for b in after), key=lambda kv: kv[0])
    total = counts[-1][1] if counts else 0
    if not total:
        return None
    for bound, cumulative in counts:
        if cumulative >= q * total:
            return bound
    return None


def _service_summary(rows: int, args, before: dict, after: dict, results: list[dict], stored: int) -> dict:
    seconds = after["time"] - before["time"]
    samples = after["rows"] - before["rows"]
    busy = after["system"][0] - before["system"][0]
    server_cpu = after["cpu"] - before["cpu"]
    client_cpu = sum(r["cpu_s"] for r in results) * seconds / (args.duration + args.warmup + 1.0)
    commits = after["commit_count"] - before["commit_count"]
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "batch_rows": rows, "streams": args.streams, "window": args.window,
        "samples": int(samples), "seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds, 1), "values_per_s": round(samples * len(SENSORS) / seconds, 1),
        "batches_per_s": round((after["batches"] - before["batches"]) / seconds, 1),
        "batches_per_commit": round((after["batches"] - before["batches"]) / max(1, commits), 1),
        "acked_rows_in_window": sum(r["acked_rows"] for r in results), "stored_rows_total": stored,
        "ack_latency_ms": latency_summary_ms(latencies),
        "commit_ms": {"mean": round(1000 * (after["commit_sum"] - before["commit_sum"]) / max(1, commits), 3),
                      **{f"p{q * 100:g}_bucket_upper_bound": (lambda v: v and round(v * 1000, 3))(
                          _histogram_quantile(before["commit_buckets"], after["commit_buckets"], q))
                         for q in (0.5, 0.99)}},
        "server_cpu_cores": round(server_cpu / seconds, 3),
        "server_threads_cpu_cores": thread_cpu_usage(after["pid"], before["threads"], after["threads"], seconds),
        "client_cpu_cores_approx": round(client_cpu / seconds, 3),
        "other_processes_cpu_cores": round(max(0.0, busy - server_cpu - client_cpu) / seconds, 3),
        "stolen_cpu_cores": round((after["system"][2] - before["system"][2]) / seconds, 3),
    }


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-rows", default="100,1000", help="rows per IngestRequest, comma-separated (100,1000)")
    p.add_argument("--streams", type=int, default=4, help="concurrent Ingest streams, one asset each (4)")
    p.add_argument("--client-processes", type=int, default=1, help="processes the streams are spread over (1)")
    p.add_argument("--window", type=int, default=8,
                   help="unacknowledged batches per stream, also MODALMESH_INGEST_STREAM_IN_FLIGHT (8)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each measurement (2)")
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/iot_ingest-<UTC>.json)")
    p.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET_SAMPLES_PER_S} samples/s")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    sizes = [int(s) for s in args.batch_rows.split(",") if s.strip()]
    record = {"benchmark": "iot_ingest", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_description(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "sensors": len(SENSORS), "target_samples_per_s": TARGET_SAMPLES_PER_S, "runs": []}
    print(f"{os.cpu_count()} cores; {args.streams} streams from {args.client_processes} client process(es), "
          f"window {args.window}; {len(SENSORS)} sensors per sample", flush=True)
    with tempfile.TemporaryDirectory(prefix="modalmesh-bench-iot-") as tmp:
        pki = MeshHome(Path(tmp))
        for rows in sizes:
            raws = [measure_raw(rows, args.duration / 4, Path(tmp), group) for group in (1, args.streams * args.window)]
            for raw in raws:
                print(f"[raw     {rows:>5} rows/batch, {raw['batches_per_transaction']:>2} per transaction] "
                      f"{raw['samples_per_s']:>10,.0f} samples/s, commit p50 {raw['commit_ms']['p50']} ms p99 "
                      f"{raw['commit_ms']['p99']} ms (other processes {raw['other_processes_cpu_cores']:.2f} cores)",
                      flush=True)
            ceiling = max(raw["samples_per_s"] for raw in raws)
            service = measure_service(rows, args, pki, Path(tmp))
            ratio = round(service["samples_per_s"] / ceiling, 3)
            lat, commit = service["ack_latency_ms"], service["commit_ms"]
            print(f"[service {rows:>5} rows/batch] {service['samples_per_s']:>10,.0f} samples/s "
                  f"({service['values_per_s']:,.0f} values/s), ack p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms, "
                  f"commit mean {commit['mean']} ms of {service['batches_per_commit']} batches; server "
                  f"{service['server_cpu_cores']:.2f} cores, clients ~{service['client_cpu_cores_approx']:.2f}, other "
                  f"processes {service['other_processes_cpu_cores']:.2f}; service/raw ceiling {ratio}", flush=True)
            record["runs"].append({"batch_rows": rows, "raw": raws, "service": service, "service_vs_raw": ratio})
    best = max(run["service"]["samples_per_s"] for run in record["runs"])
    record["passed"] = best >= TARGET_SAMPLES_PER_S
    print(f"best: {best:,.0f} samples/s through one service instance (target {TARGET_SAMPLES_PER_S:,}): "
          f"{'met' if record['passed'] else 'MISSED'}")
    print(f"record: {write_record('iot_ingest', record, args.out)}")
    return 0 if record["passed"] or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
