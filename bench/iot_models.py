"""The IoT models through one service instance, measured in one run against the same models in-process.

On one machine, in this order:
  1. seed     `python -m services.iot` on a fresh SQLite database; --assets centrifugal pumps simulated with
              ProgPy (services/iot/fleet.py, fixed seeds, no faults) for --rows minutes each, registered and
              sent through one Ingest stream, enough for the remaining-life model's 1,440-row window;
  2. raw      in this process, the packaged models on the windows the service would read (read from the same
              database with the service's store code): `run_batch` of 1 window and of all --assets windows,
              one call after another, on --threads intra-op threads; and the store reads alone (read_latest);
  3. service  DetectAnomalies and PredictRemainingLife over gRPC + mutual TLS with one asset per call
              (round-robin) and with all --assets per call, at 1 caller and at each --concurrency, from a
              separate client process (bench/_common.py run_load: closed loop, bytes in and out).
Reported: per call p50/p99 and calls/s, assets/s, the ratios service / raw (latency at 1 caller, assets/s at
the most callers), and from the service's own metrics where the time of a call went: model compute per
execution, batch size, batcher queue time and the gRPC handler's duration; the part of a call that is
neither queue nor compute is the store read plus the servicer (the raw store read says which).

    .venv/bin/python bench/iot_models.py [--assets 12] [--concurrency 4,16] [--duration 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402, F401 - puts the repository on sys.path
import numpy as np  # noqa: E402

from _common import (LoadSpec, exit_cleanly_on_sigterm, latency_summary_ms, machine_description,  # noqa: E402
                     process_cpu_seconds, run_load, running_service, system_cpu_seconds, write_record)
from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.launch import metric  # noqa: E402
from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc  # noqa: E402
from services.iot.asset_types import ASSET_TYPES, CENTRIFUGAL_PUMP, TelemetryWindow  # noqa: E402
from services.iot.fleet import EPOCH_MS, MINUTE_MS, MachineSpec, PumpPhysics, measure  # noqa: E402
from services.iot.store import TelemetryStore  # noqa: E402
from services.runtime.database import sqlite_url  # noqa: E402
from services.runtime.tensors import encode_tensor  # noqa: E402

SERVICE = "/modalmesh.v1.IoTService/"
SEED_BATCH_ROWS = 500
FIRST_SEED = 71_000   # machines drawn from seeds the training never used (it draws from 0 and 90_000 up)


# -- 1. seed: simulated pumps through Ingest ---------------------------------------------------------


def simulate_pumps(count: int, rows: int) -> dict[str, TelemetryWindow]:
    """``rows`` minutes of measured telemetry of ``count`` new pumps, stepped side by side."""
    specs = [MachineSpec.draw(FIRST_SEED + i, f"bench-pump-{i:02d}") for i in range(count)]
    physics = PumpPhysics(specs)
    true_rows = np.stack([physics.step()[0] for _ in range(rows)], axis=1)   # [machines, rows, sensors]
    stamps = EPOCH_MS + MINUTE_MS * np.arange(1, rows + 1, dtype=np.int64)
    return {spec.machine_id: TelemetryWindow(stamps, measure(true_rows[i], spec, np.random.default_rng(spec.seed)))
            for i, spec in enumerate(specs)}


def seed_service(service, telemetry: dict[str, TelemetryWindow]) -> int:
    """Register every pump and send its telemetry through one Ingest stream; the rows the service stored."""
    with service.channel() as channel:
        stub = iot_pb2_grpc.IoTServiceStub(channel)
        for asset_id in telemetry:
            stub.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=CENTRIFUGAL_PUMP.name),
                               timeout=30)
        acknowledged = list(stub.Ingest(_ingest_requests(telemetry), timeout=300))
        listed = stub.ListAssets(iot_pb2.ListAssetsRequest(), timeout=30)
    expected = sum(len(w.timestamps_ms) for w in telemetry.values())
    stored = sum(a.stored_rows for a in listed.assets)
    if sum(a.stored_rows for a in acknowledged) != expected or stored != expected:
        raise RuntimeError(f"seeding stored {stored} rows of {expected}")
    return stored


def _ingest_requests(telemetry: dict[str, TelemetryWindow]):
    sequence = 0
    for asset_id, window in telemetry.items():
        for start in range(0, len(window.timestamps_ms), SEED_BATCH_ROWS):
            sequence += 1
            rows = slice(start, start + SEED_BATCH_ROWS)
            yield iot_pb2.IngestRequest(
                sequence=sequence, asset_id=asset_id, sensors=list(CENTRIFUGAL_PUMP.sensors),
                timestamps_ms=encode_tensor(window.timestamps_ms[rows], common_pb2.DATA_TYPE_INT64),
                values=encode_tensor(window.values[rows], common_pb2.DATA_TYPE_FP32))


# -- 2. raw: the same models and store reads in this process -----------------------------------------


class RawModels:
    """The packaged models in this process, on the windows the service reads from its database."""

    def __init__(self, database: str, asset_ids: list[str], threads: int):
        from services.iot.anomaly_model import AnomalyModel
        from services.iot.remaining_life import RemainingLifeModel

        self.store = TelemetryStore(database, ASSET_TYPES)
        self.asset_ids = asset_ids
        self.models = {"DetectAnomalies": AnomalyModel(device="cpu", threads=threads),
                       "PredictRemainingLife": RemainingLifeModel(device="cpu", threads=threads)}
        for model in self.models.values():
            model.load()
            model.warm_up()
        self.rows = {"DetectAnomalies": CENTRIFUGAL_PUMP.anomaly_window_rows,
                     "PredictRemainingLife": CENTRIFUGAL_PUMP.window_rows}

    def windows(self, method: str) -> list[TelemetryWindow]:
        """The latest window of each asset, as the servicer reads it (one anomaly window per asset)."""
        return [self._latest(asset_id, self.rows[method]) for asset_id in self.asset_ids]

    def _latest(self, asset_id: str, rows: int) -> TelemetryWindow:
        latest = self.store.read_latest(asset_id, rows)
        return TelemetryWindow(latest.timestamps_ms, latest.values)

    def measure_model(self, method: str, per_call: int, seconds: float) -> dict:
        """``run_batch`` of ``per_call`` windows, one call after another (1 window: round-robin over assets)."""
        windows = self.windows(method)
        calls = [windows[i:i + 1] for i in range(len(windows))] if per_call == 1 else [windows[:per_call]]
        latencies = _repeat(lambda k: self.models[method].run_batch(calls[k % len(calls)]), seconds)
        return _raw_summary(latencies, per_call)

    def measure_reads(self, method: str, seconds: float) -> dict:
        """The store alone: read_latest of one asset's window, round-robin over the assets."""
        rows = self.rows[method]
        latencies = _repeat(lambda k: self._latest(self.asset_ids[k % len(self.asset_ids)], rows), seconds)
        return {"rows": rows, **_raw_summary(latencies, 1)}

    def close(self) -> None:
        self.store.close()


def _repeat(call, seconds: float) -> list[float]:
    for k in range(3):   # warm-up
        call(k)
    latencies, until, k = [], time.monotonic() + seconds, 0
    while time.monotonic() < until:
        started = time.perf_counter()
        call(k)
        latencies.append(time.perf_counter() - started)
        k += 1
    return latencies


def _raw_summary(latencies: list[float], per_call: int) -> dict:
    calls_per_s = len(latencies) / sum(latencies)
    return {"calls": len(latencies), "latency_ms": latency_summary_ms(latencies),
            "calls_per_s": round(calls_per_s, 1), "assets_per_s": round(calls_per_s * per_call, 1)}


# -- 3. service: the RPCs over mutual TLS under closed-loop load --------------------------------------


def encode_requests(method: str, asset_ids: list[str], per_call: int) -> list[bytes]:
    message = iot_pb2.DetectAnomaliesRequest if method == "DetectAnomalies" else iot_pb2.PredictRemainingLifeRequest
    if per_call == 1:
        return [message(asset_ids=[a]).SerializeToString() for a in asset_ids]
    return [message(asset_ids=asset_ids[:per_call]).SerializeToString()]


def check_same_answers(service, raw: RawModels) -> dict:
    """One parsed call per RPC: the service's answers are the raw models' on the same windows."""
    with service.channel() as channel:
        stub = iot_pb2_grpc.IoTServiceStub(channel)
        anomalies = stub.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=raw.asset_ids), timeout=60)
        lives = stub.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest(asset_ids=raw.asset_ids), timeout=60)
    scores = [r.score for r in raw.models["DetectAnomalies"].run_batch(raw.windows("DetectAnomalies"))]
    cycles = [r.cycles for r in raw.models["PredictRemainingLife"].run_batch(raw.windows("PredictRemainingLife"))]
    served_scores = [a.windows[-1].score for a in anomalies.assets]
    served_cycles = [a.cycles for a in lives.assets]
    if not (np.allclose(served_scores, scores, rtol=1e-4, atol=1e-5)
            and np.allclose(served_cycles, cycles, rtol=1e-4, atol=1e-3)):
        raise RuntimeError(f"the service and the raw models disagree: {served_scores} vs {scores}, "
                           f"{served_cycles} vs {cycles}")
    return {"anomaly_scores": [round(s, 4) for s in scores], "remaining_cycles": [round(c, 2) for c in cycles],
            "anomaly_model": anomalies.model.name, "remaining_life_model": lives.model.name}


class MetricsWindow:
    """The service's counters at the edges of a measured window: where a call's time went."""

    def __init__(self, service, method: str, model: str):
        self.service, self.method, self.model = service, method, model
        self.marks: list[dict] = []

    def mark(self) -> None:
        text = self.service.metrics()
        busy, total, _ = system_cpu_seconds()
        values = {name: metric(text, name, model=self.model) for name in (
            "modalmesh_model_compute_seconds_sum", "modalmesh_batch_size_sum", "modalmesh_batch_size_count",
            "modalmesh_batcher_queue_seconds_sum", "modalmesh_batcher_queue_seconds_count")}
        values.update({name: metric(text, name, method=SERVICE + self.method) for name in (
            "modalmesh_grpc_request_duration_seconds_sum", "modalmesh_grpc_request_duration_seconds_count")})
        self.marks.append({"t": time.monotonic(), "cpu": process_cpu_seconds(self.service.pid),
                           "busy": busy, "total": total, **values})

    def summary(self) -> dict:
        a, b = self.marks
        d = {k: b[k] - a[k] for k in a}
        executions = d["modalmesh_batch_size_count"]
        calls = d["modalmesh_grpc_request_duration_seconds_count"]
        queued = d["modalmesh_batcher_queue_seconds_count"]
        handler_ms = 1000 * d["modalmesh_grpc_request_duration_seconds_sum"] / calls if calls else None
        # Per call: its model rows wait and run in parallel (asyncio.gather), so compute and queue per call
        # are counted per execution and per queued row; the rest of the handler is store reads and servicer.
        return {"server_cpu_cores": round(d["cpu"] / d["t"], 3),
                "machine_busy_cores": round(d["busy"] / d["total"] * (os.cpu_count() or 1), 3),
                "handler_mean_ms": _round(handler_ms),
                "model_executions": int(executions),
                "mean_batch_size": _round(d["modalmesh_batch_size_sum"] / executions if executions else None),
                "compute_ms_per_execution": _round(1000 * d["modalmesh_model_compute_seconds_sum"] / executions
                                                   if executions else None),
                "queue_ms_per_row": _round(1000 * d["modalmesh_batcher_queue_seconds_sum"] / queued
                                           if queued else None),
                "model_busy_fraction": round(d["modalmesh_model_compute_seconds_sum"] / d["t"], 3)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def measure_service(service, method: str, model: str, requests: list[bytes], concurrency: int, args) -> dict:
    cert = service.client_cert
    spec = LoadSpec(target=service.target, method=SERVICE + method, requests=requests, concurrency=concurrency,
                    client_processes=1, warmup_s=args.warmup, duration_s=args.duration, timeout_s=60,
                    ca=str(cert.ca), cert=str(cert.cert), key=str(cert.key))
    probe = MetricsWindow(service, method, model)
    load = run_load(spec, on_window_start=probe.mark, on_window_end=probe.mark)
    if load.errors or not load.completed:
        raise RuntimeError(f"{method}: {load.completed} calls completed, errors {load.errors}")
    return {"callers": concurrency, "calls": load.completed, "latency_ms": load.latency_ms,
            "calls_per_s": load.throughput_rps, "client_cpu_cores": load.client_cpu_cores, "server": probe.summary()}


# -- the run ------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=int, default=12, help="simulated pumps, also the assets of a many-asset call (12)")
    p.add_argument("--rows", type=int, default=CENTRIFUGAL_PUMP.window_rows + 60,
                   help=f"telemetry minutes per pump ({CENTRIFUGAL_PUMP.window_rows + 60})")
    p.add_argument("--concurrency", default="4,16", help="concurrent callers besides 1, comma-separated (4,16)")
    p.add_argument("--threads", type=int, default=1,
                   help="model intra-op threads, raw and MODALMESH_MODEL_THREADS (1)")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                   help="MODALMESH_MAX_QUEUE_DELAY_MS: longest a window waits for a batch to fill (2, the default)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per service phase (8)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each service phase (2)")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="seconds per raw measurement (3)")
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/iot_models-<UTC>.json)")
    return p.parse_args(argv)


def machine_load(seconds: float = 2.0) -> dict:
    """How busy the machine is before the run (other processes share its cores)."""
    busy0, total0, _ = system_cpu_seconds()
    time.sleep(seconds)
    busy1, total1, _ = system_cpu_seconds()
    return {"busy_cores": round((busy1 - busy0) / max(1e-9, total1 - total0) * (os.cpu_count() or 1), 3),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    concurrency = sorted({1, *(int(c) for c in args.concurrency.split(",") if c.strip())})
    per_call_sizes = sorted({1, args.assets})
    record = {"benchmark": "iot_models", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_description(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "load_before": machine_load(), "runs": []}
    print(f"{os.cpu_count()} cores, busy before the run: {record['load_before']['busy_cores']} cores "
          f"(loadavg {' '.join(record['load_before']['loadavg'])}); {args.assets} pumps x {args.rows} rows; "
          f"model threads {args.threads}", flush=True)
    started = time.monotonic()
    telemetry = simulate_pumps(args.assets, args.rows)
    print(f"[seed] simulated {args.assets} pumps in {time.monotonic() - started:.1f}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="modalmesh-bench-iot-models-") as tmp:
        database = sqlite_url(Path(tmp) / "iot.sqlite3")
        with running_service("services.iot", "iot", MeshHome(Path(tmp)), Path(tmp), iot_database_url=database,
                             model_threads=args.threads, max_queue_delay_ms=args.max_queue_delay_ms,
                             device="cpu") as service:
            ready_s = service.wait_serving()
            stored = seed_service(service, telemetry)
            print(f"[seed] SERVING after {ready_s:.1f}s; {stored} rows stored through Ingest", flush=True)
            raw = RawModels(database, list(telemetry), args.threads)
            try:
                record["answers"] = check_same_answers(service, raw)
                models = {"DetectAnomalies": record["answers"]["anomaly_model"],
                          "PredictRemainingLife": record["answers"]["remaining_life_model"]}
                for method, model in models.items():
                    reads = raw.measure_reads(method, args.raw_seconds)
                    print(f"[raw  {method}] store read_latest of {reads['rows']} rows: p50 "
                          f"{reads['latency_ms']['p50']} ms p99 {reads['latency_ms']['p99']} ms", flush=True)
                    for per_call in per_call_sizes:
                        run = measure_method(service, raw, method, model, per_call, concurrency, args)
                        run["store_read_ms"] = reads["latency_ms"]
                        record["runs"].append(run)
            finally:
                raw.close()
            if service.process.poll() is not None:
                raise RuntimeError(f"the service exited during the run:\n{service.log_tail()}")
    record["load_after"] = machine_load()
    print(f"busy after the run: {record['load_after']['busy_cores']} cores")
    print(f"record: {write_record('iot_models', record, args.out)}")
    return 0


def measure_method(service, raw: RawModels, method: str, model: str, per_call: int, concurrency: list[int],
                   args) -> dict:
    direct = raw.measure_model(method, per_call, args.raw_seconds)
    print(f"[raw  {method} {per_call:>2} asset(s)/call] p50 {direct['latency_ms']['p50']} ms p99 "
          f"{direct['latency_ms']['p99']} ms, {direct['assets_per_s']} assets/s", flush=True)
    requests = encode_requests(method, raw.asset_ids, per_call)
    phases = []
    for callers in concurrency:
        phase = measure_service(service, method, model, requests, callers, args)
        s = phase["server"]
        phase["assets_per_s"] = round(phase["calls_per_s"] * per_call, 1)
        print(f"[grpc {method} {per_call:>2} asset(s)/call, {callers:>2} caller(s)] p50 {phase['latency_ms']['p50']}"
              f" ms p99 {phase['latency_ms']['p99']} ms, {phase['assets_per_s']} assets/s; handler "
              f"{s['handler_mean_ms']} ms, compute {s['compute_ms_per_execution']} ms/execution of "
              f"{s['mean_batch_size']} rows, queue {s['queue_ms_per_row']} ms/row; server "
              f"{s['server_cpu_cores']} cores, machine {s['machine_busy_cores']} cores busy", flush=True)
        phases.append(phase)
    single, most = phases[0], phases[-1]
    ratios = {"p50_service_over_raw_1_caller": round(single["latency_ms"]["p50"] / direct["latency_ms"]["p50"], 2),
              "p99_service_over_raw_1_caller": round(single["latency_ms"]["p99"] / direct["latency_ms"]["p99"], 2),
              f"assets_per_s_service_{most['callers']}_callers_over_raw":
                  round(most["assets_per_s"] / direct["assets_per_s"], 3)}
    print(f"[ratio {method} {per_call:>2} asset(s)/call] " + ", ".join(f"{k} {v}" for k, v in ratios.items()),
          flush=True)
    return {"method": method, "assets_per_call": per_call, "raw": direct, "service": phases, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main())
