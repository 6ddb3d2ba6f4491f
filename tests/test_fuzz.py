"""Thousands of random and malformed requests: every one gets a clear status, the server stays
SERVING, and its memory stays bounded."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import grpc_service_pb2 as oip
from modalmesh.v1 import text_pb2
from tests.support import start_service

pytestmark = pytest.mark.slow

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
METHODS = {
    "/modalmesh.v1.TextService/Embed": text_pb2.EmbedRequest,
    "/modalmesh.v1.TextService/Classify": text_pb2.ClassifyRequest,
    "/inference.GRPCInferenceService/ModelInfer": oip.ModelInferRequest,
    "/inference.GRPCInferenceService/ModelMetadata": oip.ModelMetadataRequest,
}
SETTINGS = settings(deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

texts = st.lists(st.text(max_size=300), max_size=70)
datatypes = st.sampled_from(["BYTES", "FP32", "INT64", "UINT8", "FP16", "BOOL", "", "STRING", "fp32"])
shapes = st.lists(st.integers(-3, 80), max_size=4)
names = st.sampled_from(["all-MiniLM-L6-v2", "", "TEXT", "nope", "all-MiniLM-L6-v2\x00"])


@st.composite
def infer_requests(draw) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "2"])))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["TEXT", "IMAGE", ""])), datatype=draw(datatypes),
                                    shape=draw(shapes))
        if draw(st.booleans()):
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=8)))
    if draw(st.booleans()):
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=256), max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["EMBEDDING", "LOGITS"])))
    return request


@pytest.fixture(scope="module")
def fuzzed_service(pki, tmp_path_factory):
    service = start_service("services.text", pki, tmp_path_factory.mktemp("fuzz"), "text")
    channel = service.channel()
    calls = {m: channel.unary_unary(m) for m in METHODS}   # raw bytes in and out
    yield service, calls
    channel.close()
    assert service.stop() == 0


def send(calls, method: str, payload: bytes) -> grpc.StatusCode:
    try:
        calls[method](payload, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def assert_clear(calls, method: str, payload: bytes) -> None:
    code = send(calls, method, payload)
    assert code in CLEAR, f"{method}: {code} for {payload[:80]!r}"
    try:
        METHODS[method].FromString(payload)
    except DecodeError:   # bytes that are not the message at all: refused as bad input
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def fuzz_cases(calls) -> list[tuple[object, int]]:
    """(hypothesis-wrapped function without settings, examples to run) per kind of request."""

    @given(texts, st.integers(-1, 5))
    def embed(texts_, truncation):
        request = text_pb2.EmbedRequest(texts=texts_, truncation=truncation)
        assert_clear(calls, "/modalmesh.v1.TextService/Embed", request.SerializeToString())

    @given(st.lists(st.text(max_size=60), max_size=5), st.lists(st.text(max_size=40), max_size=6),
           st.text(max_size=40))
    def classify(texts_, labels, template):
        request = text_pb2.ClassifyRequest(texts=texts_, labels=labels, hypothesis_template=template)
        assert_clear(calls, "/modalmesh.v1.TextService/Classify", request.SerializeToString())

    @given(infer_requests())
    def infer(request):
        assert_clear(calls, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())

    @given(st.sampled_from(sorted(METHODS)), st.binary(max_size=512))
    def garbage(method, payload):
        assert_clear(calls, method, payload)

    return [(embed, 600), (classify, 300), (infer, 800), (garbage, 800)]


def run_cases(cases, scale: float = 1.0) -> int:
    total = 0
    for test, count in cases:
        examples = max(1, int(count * scale))
        settings(SETTINGS, max_examples=examples)(test)()
        total += examples
    return total


def test_random_requests_get_clear_statuses_and_memory_stays_bounded(fuzzed_service):
    service, calls = fuzzed_service
    run_cases(fuzz_cases(calls), scale=0.15)   # warm-up: allocator pools and kernel caches settle
    rss_warm = service.rss_kib()
    sent = run_cases(fuzz_cases(calls))
    rss_end = service.rss_kib()

    assert service.health() == "SERVING"
    invalid = sum(float(line.rsplit(" ", 1)[1]) for line in service.metrics().splitlines()
                  if line.startswith("modalmesh_grpc_requests_total{") and "INVALID_ARGUMENT" in line)
    assert invalid > 500, "the fuzzer must reach validation, not only the decoder"
    growth_mib = (rss_end - rss_warm) / 1024
    print(f"{sent} requests; RSS {rss_warm // 1024} → {rss_end // 1024} MiB")
    assert growth_mib < 150, f"RSS grew {growth_mib:.0f} MiB over {sent} requests"
