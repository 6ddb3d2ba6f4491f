"""VisionService.Inspect throughput, measured in one run: dynamic batching on, off, and the raw model.

Phases, in this order, on one machine:
  1. raw       the SurfaceDefectModel adapter in this process, run_batch on batches of --raw-batch images
               (decoding, the network and the defect post-processing; no gRPC); half of its time before
               phases 2-3 and half after, so a drift of the machine's speed does not bias the ratios;
  2. batched   `python -m services.vision` with dynamic batching on, --concurrency single-image callers
               over gRPC + mutual TLS from a separate client process, closed loop;
  3. unbatched the same service and load with MODALMESH_DYNAMIC_BATCHING=false.
Images are synthetic product surfaces (services/vision/textures.py), --size pixels square, a third of
them with defects, sent as raw RGB pixels (or PNG with --encoding png); the reply carries the mask.

    .venv/bin/python bench/vision_inspect.py [--duration 20] [--concurrency 16] [--size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import (LoadSpec, exit_cleanly_on_sigterm, machine_description, run_load,  # noqa: E402
                     running_service, system_cpu_seconds, write_record)
from modalmesh.home import MeshHome  # noqa: E402

INSPECT_METHOD = "/modalmesh.v1.VisionService/Inspect"


def make_images(count: int, size: int, seed: int):
    import numpy as np

    from services.vision.textures import product_image, sample_defects

    rng = np.random.default_rng(seed)
    return [product_image(rng, size, defects=sample_defects(rng, 1 / 3)).image for _ in range(count)]


def encode_requests(images, encoding: str) -> list[bytes]:
    import cv2

    from modalmesh.v1 import common_pb2, vision_pb2

    requests = []
    for image in images:
        if encoding == "png":
            ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            source = vision_pb2.Image(encoded=data.tobytes())
        else:
            source = vision_pb2.Image(pixels=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_UINT8,
                                                               shape=list(image.shape), data=image.tobytes()))
        requests.append(vision_pb2.InspectRequest(image=source).SerializeToString())
    return requests


class RawModel:
    """The adapter in this process: what the service could do at most with no serving around it."""

    def __init__(self, images, threads: int, device: str):
        import torch

        from services.vision.inspection import SurfaceDefectModel

        self.torch_version = torch.__version__
        self.model = SurfaceDefectModel(device=device, threads=threads)
        self.model.load()
        self.model.warm_up()
        self.images = images

    def throughput(self, batch: int, warmup_s: float, seconds: float) -> dict:
        batches = [self.images[i:i + batch] for i in range(0, len(self.images) - batch + 1, batch)]
        k, deadline = 0, time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:
            self.model.run_batch(batches[k % len(batches)])
            k += 1
        busy0, total0, _ = system_cpu_seconds()
        cpu0, done, started = time.process_time(), 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            self.model.run_batch(batches[k % len(batches)])
            k += 1
            done += batch
        busy1, total1, _ = system_cpu_seconds()
        own = (time.process_time() - cpu0) / elapsed
        machine = (busy1 - busy0) / max(1e-9, total1 - total0) * (os.cpu_count() or 1)
        return {"batch": batch, "images": done, "seconds": round(elapsed, 2),
                "images_per_s": round(done / elapsed, 2), "own_cpu_cores": round(own, 3),
                "other_processes_cpu_cores": round(max(0.0, machine - own), 3)}


def measure_service(name: str, requests: list[bytes], args, pki: MeshHome, tmp: Path, **settings) -> dict:
    print(f"[{name}] starting the vision service ({', '.join(f'{k}={v}' for k, v in settings.items())}) ...",
          flush=True)
    with running_service("services.vision", "vision", pki, tmp, **settings) as service:
        ready_s = service.wait_serving()
        cert = service.client_cert
        spec = LoadSpec(target=service.target, method=INSPECT_METHOD, requests=requests,
                        concurrency=args.concurrency, warmup_s=args.warmup, duration_s=args.duration,
                        ca=str(cert.ca), cert=str(cert.cert), key=str(cert.key))
        load = run_load(spec)
        metrics = service.metrics()
        if service.process.poll() is not None:
            raise RuntimeError(f"the service exited during the run:\n{service.log_tail()}")
    from modalmesh.launch import metric

    count, total = metric(metrics, "modalmesh_batch_size_count"), metric(metrics, "modalmesh_batch_size_sum")
    result = {"settings": settings, "ready_s": round(ready_s, 1), "load": load,
              "images_per_s": load.throughput_rps,
              "mean_batch_size_since_start": round(total / count, 2) if count else 0.0}
    lat = load.latency_ms
    print(f"[{name}] {load.throughput_rps:.1f} images/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
          f"mean batch {result['mean_batch_size_since_start']}, errors {load.errors or 'none'}", flush=True)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase (default 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each measurement")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent single-image callers (default 16)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--images", type=int, default=64, help="distinct images (default 64)")
    p.add_argument("--encoding", choices=("pixels", "png"), default="pixels")
    p.add_argument("--raw-batch", type=int, default=16, help="batch size of the raw in-process phase (16)")
    p.add_argument("--threads", type=int, default=cores, help=f"model threads (default: the cores, {cores})")
    p.add_argument("--max-batch-size", type=int, default=16, help="MODALMESH_MAX_BATCH_SIZE when batching (16)")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="MODALMESH_MAX_QUEUE_DELAY_MS (5)")
    p.add_argument("--device", default="cpu", help="MODALMESH_DEVICE: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/vision_inspect-<UTC>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    images = make_images(args.images, args.size, args.seed)
    record = {"benchmark": "vision_inspect", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_description(),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"{len(images)} images of {args.size}x{args.size}, {args.encoding}; {os.cpu_count()} cores, "
          f"model threads {args.threads}", flush=True)
    raw = RawModel(images, args.threads, args.device)
    record["machine"]["torch"] = raw.torch_version
    record["model"] = dataclasses.asdict(raw.model.describe())
    sessions = [raw.throughput(args.raw_batch, args.warmup, args.duration / 2)]
    print(f"[raw before] {sessions[0]['images_per_s']:.1f} images/s at batch {args.raw_batch}", flush=True)
    record["raw_batch1"] = raw.throughput(1, 1.0, max(3.0, args.duration / 4))
    print(f"[raw batch 1] {record['raw_batch1']['images_per_s']:.1f} images/s", flush=True)

    requests = encode_requests(images, args.encoding)
    common = {"model_threads": args.threads, "max_batch_size": args.max_batch_size,
              "max_queue_delay_ms": args.max_queue_delay_ms, "device": args.device}
    with _common.temporary_directory("modalmesh-bench-") as tmp:
        pki = MeshHome(Path(tmp))
        record["batched"] = measure_service("batched", requests, args, pki, Path(tmp),
                                            dynamic_batching="true", **common)
        record["unbatched"] = measure_service("unbatched", requests, args, pki, Path(tmp),
                                              dynamic_batching="false", **common)
    sessions.append(raw.throughput(args.raw_batch, args.warmup, args.duration / 2))
    print(f"[raw after] {sessions[1]['images_per_s']:.1f} images/s", flush=True)
    raw_rate = sum(s["images_per_s"] for s in sessions) / 2
    record["raw"] = {"images_per_s": round(raw_rate, 2), "sessions": sessions,
                     "drift": round(sessions[1]["images_per_s"] / sessions[0]["images_per_s"] - 1, 3)}
    batched, unbatched = record["batched"]["images_per_s"], record["unbatched"]["images_per_s"]
    record["ratios"] = {
        "batched_vs_raw": round(batched / raw_rate, 3),
        "batched_vs_unbatched": round(batched / unbatched, 3) if unbatched else None,
        "raw_vs_raw_batch1": round(raw_rate / record["raw_batch1"]["images_per_s"], 3),
    }
    print()
    print(f"{'phase':<12}{'images/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw':<12}{raw_rate:>10.1f}")
    for phase in ("batched", "unbatched"):
        lat = record[phase]["load"].latency_ms
        print(f"{phase:<12}{record[phase]['images_per_s']:>10.1f}{lat.get('p50', 0):>10.1f}{lat.get('p99', 0):>10.1f}")
    print()
    for name, value in record["ratios"].items():
        print(f"{name:<22}{value:>8.3f}")
    print(f"record: {write_record('vision_inspect', record, args.out)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the services it started are stopped", file=sys.stderr)
        sys.exit(130)
