"""Metrics, JSON logs and tracing of a real service process."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from modalmesh.v1 import text_pb2, text_pb2_grpc
from tests.support import free_port, start_service


def test_metrics_show_requests_latency_queue_and_batches(text_service):
    with text_service.channel() as channel:
        stub = text_pb2_grpc.TextServiceStub(channel)
        calls = [stub.Embed.future(text_pb2.EmbedRequest(texts=[f"text {i}"])) for i in range(16)]
        assert all(call.result().embeddings.shape == [1, 384] for call in calls)
    text = text_service.metrics()
    assert 'modalmesh_grpc_requests_total{code="OK",method="/modalmesh.v1.TextService/Embed"}' in text
    assert 'modalmesh_grpc_request_duration_seconds_bucket{le="0.1",method="/modalmesh.v1.TextService/Embed"}' in text
    assert 'modalmesh_batch_size_count{model="all-MiniLM-L6-v2"}' in text
    assert 'modalmesh_model_compute_seconds_sum{model="all-MiniLM-L6-v2"}' in text
    assert 'modalmesh_batcher_queue_depth{model="all-MiniLM-L6-v2"}' in text


def test_logs_are_json_lines_without_payloads(text_service):
    secret = "patient Jane Doe has a fracture"
    with text_service.channel() as channel:
        text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=[secret]))
        with pytest.raises(grpc.RpcError):
            text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=[secret, " "]))
    time.sleep(0.2)
    lines = [line for line in text_service.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]   # every line parses
    assert any(e["msg"] == "serving" for e in entries)
    refused = [e for e in entries if e["msg"] == "rpc" and e.get("code") == "INVALID_ARGUMENT"]
    assert refused and refused[-1]["caller"].endswith("/sa/cli")
    assert secret not in text_service.log()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver."""

    def __init__(self):
        self.spans = []
        self.received = threading.Event()

    def Export(self, request, context):
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                self.spans += [(service, span) for span in scope.spans]
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_traces_continue_the_callers_trace(pki, tmp_path):
    collector, port = Collector(), free_port()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    service = start_service("services.text", pki, tmp_path, "text", otlp_endpoint=f"127.0.0.1:{port}")
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        with service.channel() as channel:
            text_pb2_grpc.TextServiceStub(channel).Embed(
                text_pb2.EmbedRequest(texts=["trace me"]),
                metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            embed = [s for name, s in collector.spans if s.name == "/modalmesh.v1.TextService/Embed"]
            if embed:
                break
            time.sleep(0.1)
        assert embed, f"no Embed span; got {[s.name for _, s in collector.spans]}"
        span = embed[0]
        assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == parent_id
        assert ("text", span) in [(n, s) for n, s in collector.spans]
    finally:
        service.stop()
        server.stop(0)
