"""Overload and shutdown over real sockets: a full queue refuses at once, an expired request costs no
model time, and SIGTERM lets every in-flight request finish."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time

import grpc
import pytest

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from modalmesh.launch import launch
from modalmesh.v1 import text_pb2, text_pb2_grpc
from tests.support import metric, start_service, wait_for

pytestmark = pytest.mark.slow

# 32 texts of about 180 tokens: most of a second of model time on a laptop CPU.
HEAVY_ROWS = 32
HEAVY = text_pb2.EmbedRequest(texts=[f"machine {i} reports bearing temperature nominal " * 30
                                     for i in range(HEAVY_ROWS)])
LIGHT = text_pb2.EmbedRequest(texts=["one short text that must never reach the model"])
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def small_queue_service(pki, tmp_path_factory):
    service = start_service("services.text", pki, tmp_path_factory.mktemp("overload"), "text",
                            max_queue_size=4, max_queue_delay_ms=1)
    yield service
    service.stop()


def inference_count(service) -> int:
    with service.channel() as channel:
        stats = oip_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(oip.ModelStatisticsRequest(name=MODEL))
    return stats.model_stats[0].inference_count


def test_full_queue_refuses_new_requests_at_once(small_queue_service):
    service = small_queue_service
    with service.channel() as channel:
        embed = text_pb2_grpc.TextServiceStub(channel).Embed
        running = embed.future(HEAVY)
        time.sleep(0.1)   # taken by the model thread: the queue is empty again
        queued = [embed.future(HEAVY) for _ in range(4)]
        wait_for(lambda: metric(service.metrics(), "modalmesh_batcher_queue_depth", model=MODEL) == 4)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            embed(LIGHT, timeout=30)
        refused_after = time.monotonic() - t0
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
        assert "full" in error.value.details()
        assert refused_after < 0.25, f"refusal took {refused_after:.3f}s: it must not wait for the queue"
        for future in [running, *queued]:
            assert future.result(timeout=60).embeddings.shape == [HEAVY_ROWS, 384]
    assert metric(service.metrics(), "modalmesh_batcher_rejected_total", reason="queue_full") >= 1
    assert service.health() == "SERVING"


def test_request_that_expires_in_the_queue_costs_no_model_time(small_queue_service):
    service = small_queue_service
    before = inference_count(service)
    with service.channel() as channel:
        embed = text_pb2_grpc.TextServiceStub(channel).Embed
        running = embed.future(HEAVY)
        time.sleep(0.1)   # the heavy request is now on the model thread
        with pytest.raises(grpc.RpcError) as error:
            embed(LIGHT, timeout=0.15)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        running.result(timeout=60)
    time.sleep(0.3)
    assert inference_count(service) == before + HEAVY_ROWS, "the expired request reached the model"
    text = service.metrics()
    expired = metric(text, "modalmesh_batcher_rejected_total", reason="deadline") + \
        metric(text, "modalmesh_batcher_rejected_total", reason="cancelled")
    assert expired >= 1
    assert service.health() == "SERVING"


def test_sigterm_during_load_lets_every_in_flight_request_finish(pki, tmp_path):
    service = start_service("services.text", pki, tmp_path, "text", drain_delay_s=1, drain_grace_s=30)
    outcomes: list = []
    health_seen: list[str] = []

    async def load():
        async with service.aio_channel() as channel:
            embed = text_pb2_grpc.TextServiceStub(channel).Embed
            calls = [embed(HEAVY if i % 8 == 0 else LIGHT, timeout=60) for i in range(24)]
            outcomes.extend(await asyncio.gather(*calls, return_exceptions=True))

    client = threading.Thread(target=lambda: asyncio.run(load()))
    client.start()
    wait_for(lambda: metric(service.metrics(), "modalmesh_batcher_queue_depth", model=MODEL) > 0, interval=0.005)
    service.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        health_seen.append(service.health())
        health_seen.append(service.health("liveness"))  # draining, yet alive: Kubernetes must not restart it
    except grpc.RpcError as error:
        health_seen.append(error.code().name)
    client.join(90)
    assert service.process.wait(60) == 0, service.log()[-2000:]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(outcomes) == 24 and not failures, failures[:3]
    assert health_seen == ["NOT_SERVING", "SERVING"]
    assert re.search(r'"msg": "draining"', service.log()) and '"msg": "stopped"' in service.log()


def test_a_call_while_the_model_loads_gets_unavailable(pki, tmp_path):
    """The server listens (health answers NOT_SERVING) before its models are loaded: a call in that
    window is refused with UNAVAILABLE, which clients and the mesh retry, never INTERNAL."""
    service = launch("services.text", pki, tmp_path, "text", model_threads=2)
    try:
        with service.channel() as channel:
            stub = text_pb2_grpc.TextServiceStub(channel)
            wait_for(lambda: _health_or_none(service) is not None, timeout=60, interval=0.05)
            before = _health_or_none(service)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Embed(LIGHT, timeout=10)
            after = _health_or_none(service)
        # Loading takes seconds and the call milliseconds; a window missed would be a wrong test, not a pass.
        assert before == after == "NOT_SERVING", (before, after)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in refused.value.details()
        service.wait_serving()
    finally:
        service.stop()


def _health_or_none(service) -> str | None:
    try:
        return service.health()
    except grpc.RpcError:
        return None
