"""VisionService.SegmentVolume throughput, measured in one run: the service over mutual TLS against the raw
in-process pipeline on the same model, and windows/s through the batcher with 1 and with 4 concurrent studies.

Phases, in this order, on one machine:
  1. raw       the pipeline in this process, no gRPC and no batcher: read the NIfTI, prepare, sliding windows
               straight into the model's run_batch on one model thread (--windows-per-request at a time, as
               the service hands them to its batcher), labels back to the study's grid, measurements, labels
               encoded as NIfTI-gz;
  2. service   `python -m services.vision`, one study at a time from this process over gRPC + mutual TLS
               (1 MiB chunks, labels back as NIfTI-gz), for each study size;
  3. service   the same with --concurrency (4) studies at once, each client sending its next study when the
               last one answered, so windows of several studies share the batcher's batches.
Studies are synthetic abdominal CT phantoms (services/vision/phantoms.py): --small (96^3 at 2 mm) and --large
(256 x 256 x 128 at 1.5 x 1.5 x 2.5 mm) voxels, NIfTI-gz.

    .venv/bin/python bench/segment_volume.py [--seconds 20] [--concurrency 4] [--device cpu] [--model PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import exit_cleanly_on_sigterm, machine_description, running_service, write_record  # noqa: E402
from modalmesh.home import MeshHome  # noqa: E402

SIZES = {"small": ((96, 96, 96), (2.0, 2.0, 2.0)), "large": ((256, 256, 128), (1.5, 1.5, 2.5))}
MiB = 1024 * 1024


def make_studies(size: str, count: int, seed: int) -> list[bytes]:
    from services.vision.phantoms import make_phantom
    from services.vision.volumes import nifti_bytes

    shape, spacing = SIZES[size]
    return [nifti_bytes(p.volume.voxels, p.volume.affine)
            for p in (make_phantom(seed + i, shape, spacing) for i in range(count))]


class RawPipeline:
    """The service's own pipeline in this process, the model called directly: what serving costs is the rest."""

    def __init__(self, model: str, device: str, threads: int, windows_per_request: int):
        import torch

        from services.vision.main import segmentation_registry

        self.torch_version = torch.__version__
        self.adapter = segmentation_registry().create(model, device=device, threads=threads)
        self.adapter.load()
        self.adapter.warm_up()
        self.windows_per_request = min(windows_per_request, self.adapter.plan.windows_per_request)
        # The network runs on a worker thread in the service; on the calling thread it would run at another
        # speed (on a loaded 2-core machine, torch's intra-op threads there were 3x slower at batch 4).
        self.model_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-model")

    def run(self, data: bytes) -> int:
        """One study, start to end; returns its windows."""
        from services.vision.segmentation import segment_volume
        from services.vision.volumes import VolumeLimits, nifti_bytes, read_nifti

        windows = [0]

        def submit(rows):   # one model thread, as the service's batcher has
            return self.model_thread.submit(self.adapter.run_batch, rows)

        def report(stage, done, total):
            windows[0] = total

        volume = read_nifti(data, VolumeLimits())
        study = segment_volume(volume, self.adapter.plan, self.windows_per_request, submit, report)
        nifti_bytes(study.labels, volume.affine)
        return windows[0]


def timed_raw(raw: RawPipeline, studies: list[bytes], seconds: float) -> dict:
    raw.run(studies[0])   # first-call costs (allocations, MONAI's window weights) stay out of the timing
    started, done, windows = time.perf_counter(), 0, 0
    cpu0 = time.process_time()
    while done == 0 or time.perf_counter() - started < seconds:
        windows += raw.run(studies[done % len(studies)])
        done += 1
    elapsed = time.perf_counter() - started
    return {"studies": done, "seconds": round(elapsed, 2), "studies_per_min": round(60 * done / elapsed, 2),
            "windows_per_s": round(windows / elapsed, 2),
            "own_cpu_cores": round((time.process_time() - cpu0) / elapsed, 2), "load_average": os.getloadavg()}


def segment_once(stub, data: bytes, timeout: float) -> int:
    """One study through SegmentVolume; returns its windows."""
    from modalmesh.v1 import vision_pb2
    from services.vision.study_stream import collect_reply, study_requests

    reply = collect_reply(stub.SegmentVolume(
        study_requests(vision_pb2.VolumeHeader(format=vision_pb2.VOLUME_FORMAT_NIFTI), data, MiB), timeout=timeout))
    if reply.result is None:
        raise RuntimeError("the stream ended without a result")
    return max(p.windows_total for p in reply.progress)


def timed_service(stub, studies: list[bytes], seconds: float, concurrency: int, timeout: float) -> dict:
    """``concurrency`` clients, closed loop, until ``seconds`` passed (each finishes the study it is on)."""
    counts, lock = {"studies": 0, "windows": 0}, threading.Lock()
    deadline = time.perf_counter() + seconds
    errors: list[str] = []

    def client(index: int) -> None:
        k = index
        while time.perf_counter() < deadline or (index == 0 and counts["studies"] == 0):
            try:
                windows = segment_once(stub, studies[k % len(studies)], timeout)
            except Exception as error:   # noqa: BLE001 - reported in the record, never hidden
                errors.append(f"{type(error).__name__}: {error}")
                return
            with lock:
                counts["studies"] += 1
                counts["windows"] += windows
            k += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "studies": counts["studies"], "seconds": round(elapsed, 2),
            "studies_per_min": round(60 * counts["studies"] / elapsed, 2),
            "windows_per_s": round(counts["windows"] / elapsed, 2), "errors": errors, "load_average": os.getloadavg()}


def batch_statistics(metrics: str, model: str) -> dict:
    from modalmesh.launch import metric

    count = metric(metrics, "modalmesh_batch_size_count", model=model)
    total = metric(metrics, "modalmesh_batch_size_sum", model=model)
    return {"batches": int(count), "windows": int(total), "mean_batch": round(total / count, 2) if count else 0.0}


def parse_args(argv=None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase and size (default 20; "
                   "a phase always finishes at least one study)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent studies of the last phase (default 4)")
    p.add_argument("--studies", type=int, default=4, help="distinct studies per size (default 4)")
    p.add_argument("--sizes", default="small,large", help="study sizes: small (96^3), large (256x256x128)")
    p.add_argument("--model", default="abdomen-phantom", help="MODALMESH_SEGMENTATION_MODEL (default abdomen-phantom)")
    p.add_argument("--threads", type=int, default=cores, help=f"model threads (default: the cores, {cores})")
    p.add_argument("--max-batch-size", type=int, default=8, help="MODALMESH_SEGMENTATION_MAX_BATCH_SIZE (8)")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="MODALMESH_SEGMENTATION_MAX_QUEUE_DELAY_MS")
    p.add_argument("--windows-per-request", type=int, default=4, help="windows a study hands over at once, raw "
                   "phase (the service: the model's own, within the max batch size)")
    p.add_argument("--device", default="cpu", help="MODALMESH_DEVICE: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-study deadline in seconds")
    p.add_argument("--seed", type=int, default=9500)
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/segment_volume-<UTC>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    sizes = [s for s in args.sizes.split(",") if s]
    record = {"benchmark": "segment_volume", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_description(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "sizes": {s: {"shape": SIZES[s][0], "spacing_mm": SIZES[s][1]} for s in sizes}}
    studies = {size: make_studies(size, args.studies, args.seed) for size in sizes}
    for size in sizes:
        record["sizes"][size]["nifti_gz_mib"] = round(sum(map(len, studies[size])) / len(studies[size]) / MiB, 2)
    print(f"{os.cpu_count()} cores, model threads {args.threads}, device {args.device}; studies: "
          + ", ".join(f"{s} {record['sizes'][s]['nifti_gz_mib']} MiB" for s in sizes), flush=True)

    raw = RawPipeline(args.model, args.device, args.threads, args.windows_per_request)
    record["machine"]["torch"] = raw.torch_version
    record["model"] = dataclasses.asdict(raw.adapter.describe())
    record["raw"] = {}
    for size in sizes:
        record["raw"][size] = timed_raw(raw, studies[size], args.seconds)
        print(f"[raw {size}] {record['raw'][size]['studies_per_min']} studies/min, "
              f"{record['raw'][size]['windows_per_s']} windows/s", flush=True)
    del raw   # its threads and memory are not the service's to compete with

    settings = {"model_threads": args.threads, "device": args.device, "segmentation_model": args.model,
                "segmentation_max_batch_size": args.max_batch_size,
                "segmentation_max_queue_delay_ms": args.max_queue_delay_ms}
    with _common.temporary_directory("modalmesh-bench-") as tmp:
        home = MeshHome(Path(tmp))
        with running_service("services.vision", "vision", home, Path(tmp), **settings) as service:
            record["ready_s"] = round(service.wait_serving(), 1)
            from services.vision.main import served_name
            with service.channel() as channel:
                from modalmesh.v1 import vision_pb2_grpc

                stub = vision_pb2_grpc.VisionServiceStub(channel)
                segment_once(stub, studies[sizes[0]][0], args.timeout)   # connection and first-call costs
                record["service"] = {}
                for size in sizes:
                    record["service"][size] = timed_service(stub, studies[size], args.seconds, 1, args.timeout)
                    print(f"[service {size}] {record['service'][size]['studies_per_min']} studies/min, "
                          f"{record['service'][size]['windows_per_s']} windows/s", flush=True)
                before = batch_statistics(service.metrics(), served_name(args.model))
                concurrent_size = sizes[0]
                record["concurrent"] = timed_service(stub, studies[concurrent_size], args.seconds, args.concurrency,
                                                     args.timeout)
                after = batch_statistics(service.metrics(), served_name(args.model))
            record["concurrent"]["size"] = concurrent_size
            record["concurrent"]["batches"] = {k: after[k] - before[k] for k in ("batches", "windows")}
            record["concurrent"]["mean_batch"] = round(
                record["concurrent"]["batches"]["windows"] / max(1, record["concurrent"]["batches"]["batches"]), 2)
            print(f"[service {concurrent_size} x{args.concurrency}] {record['concurrent']['studies_per_min']} "
                  f"studies/min, {record['concurrent']['windows_per_s']} windows/s, mean batch "
                  f"{record['concurrent']['mean_batch']}", flush=True)
            if service.process.poll() is not None:
                raise RuntimeError(f"the service exited during the run:\n{service.log_tail()}")

    ratios = {f"service_vs_raw_{s}": round(record["service"][s]["studies_per_min"]
                                           / record["raw"][s]["studies_per_min"], 3) for s in sizes}
    ratios[f"windows_per_s_{args.concurrency}_vs_1_{sizes[0]}"] = round(
        record["concurrent"]["windows_per_s"] / record["service"][sizes[0]]["windows_per_s"], 3)
    record["ratios"] = ratios
    print()
    print(f"{'phase':<22}{'studies/min':>12}{'windows/s':>11}")
    for size in sizes:
        print(f"{'raw ' + size:<22}{record['raw'][size]['studies_per_min']:>12.2f}"
              f"{record['raw'][size]['windows_per_s']:>11.2f}")
        print(f"{'service ' + size:<22}{record['service'][size]['studies_per_min']:>12.2f}"
              f"{record['service'][size]['windows_per_s']:>11.2f}")
    print(f"{f'service {sizes[0]} x{args.concurrency}':<22}{record['concurrent']['studies_per_min']:>12.2f}"
          f"{record['concurrent']['windows_per_s']:>11.2f}")
    print()
    for name, value in ratios.items():
        print(f"{name:<32}{value:>8.3f}")
    print(f"record: {write_record('segment_volume', record, args.out)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the services it started are stopped", file=sys.stderr)
        sys.exit(130)
