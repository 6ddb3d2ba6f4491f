"""Prometheus metrics of one service process, in a registry of its own (nothing filled at import).

Under several workers, PROMETHEUS_MULTIPROC_DIR is set and prometheus_client writes every sample to
that folder as well; the supervisor serves them summed (the gauges' multiprocess_mode says how)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, workload: str):
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.requests = Counter("modalmesh_grpc_requests", "gRPC requests handled, by method and status code",
                                ["method", "code"], **labels)
        self.latency = Histogram("modalmesh_grpc_request_duration_seconds", "gRPC request latency",
                                 ["method"], buckets=_LATENCY_BUCKETS, **labels)
        self.queue_depth = Gauge("modalmesh_batcher_queue_depth", "Requests waiting in a model's batcher",
                                 ["model"], multiprocess_mode="livesum", **labels)
        self.batch_size = Histogram("modalmesh_batch_size", "Rows per model execution",
                                    ["model"], buckets=_BATCH_BUCKETS, **labels)
        self.compute_time = Histogram("modalmesh_model_compute_seconds", "Model execution time per batch",
                                      ["model"], buckets=_LATENCY_BUCKETS, **labels)
        self.queue_time = Histogram("modalmesh_batcher_queue_seconds", "Time a request waited for its batch",
                                    ["model"], buckets=_LATENCY_BUCKETS, **labels)
        self.rejected = Counter("modalmesh_batcher_rejected", "Requests that never reached the model, by reason",
                                ["model", "reason"], **labels)
        # Generation (token streams): continuous batching across streams.
        self.active_sequences = Gauge("modalmesh_generation_active_sequences",
                                      "Sequences in the running decode batch", ["model"],
                                      multiprocess_mode="livesum", **labels)
        self.waiting_sequences = Gauge("modalmesh_generation_waiting_sequences",
                                       "Generation requests waiting to join the batch", ["model"],
                                       multiprocess_mode="livesum", **labels)
        self.generated_tokens = Counter("modalmesh_generated_tokens", "Tokens generated, all streams together",
                                        ["model"], **labels)
        self.decode_batch = Histogram("modalmesh_generation_decode_batch_size", "Sequences per decode step",
                                      ["model"], buckets=_BATCH_BUCKETS, **labels)
        self.time_to_first_token = Histogram("modalmesh_generation_time_to_first_token_seconds",
                                             "From request to its first token", ["model"],
                                             buckets=_LATENCY_BUCKETS, **labels)
        self.finished_sequences = Counter("modalmesh_generation_finished",
                                          "Generations ended, by reason (stop, length, cancelled, error)",
                                          ["model", "reason"], **labels)
        # With several workers (services/runtime/workers.py), one sample per live worker, by pid.
        self.info = Gauge("modalmesh_service_info", "Constant 1, labelled with the workload", ["workload"],
                          multiprocess_mode="liveall", **labels)
        self.info.labels(workload).set(1)

    def serve(self, host: str, port: int):
        """Start the /metrics HTTP endpoint; returns the server, whose port may have been picked."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
