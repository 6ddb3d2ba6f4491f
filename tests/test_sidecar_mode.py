"""Sidecar mode: plaintext on the pod behind Istio, identity from the sidecar's
x-forwarded-client-cert header, the same policy enforced."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.identity import spiffe_id
from tests.support import start_service

pytestmark = pytest.mark.slow


def xfcc(caller: str) -> tuple[str, str]:
    return ("x-forwarded-client-cert",
            f'By={spiffe_id("text")};Hash=0f;Subject="";URI={spiffe_id(caller)}')


@pytest.fixture(scope="module")
def sidecar_service(pki, tmp_path_factory):
    service = start_service("services.text", pki, tmp_path_factory.mktemp("sidecar"), "text", tls_mode="sidecar")
    yield service
    service.stop()


def embed(service, metadata) -> text_pb2.EmbedResponse:
    with grpc.insecure_channel(service.target) as channel:
        return text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=["hi"]), metadata=metadata,
                                                            timeout=10)


def test_identity_from_the_sidecar_header_is_authorized(sidecar_service):
    assert embed(sidecar_service, [xfcc("cli")]).embeddings.shape == [1, 384]


def test_missing_identity_is_unauthenticated(sidecar_service):
    with pytest.raises(grpc.RpcError) as error:
        embed(sidecar_service, [])
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_identity_outside_the_policy_is_denied(sidecar_service):
    with pytest.raises(grpc.RpcError) as error:
        embed(sidecar_service, [xfcc("intruder")])
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_probes_need_no_identity_behind_the_sidecar(sidecar_service):
    assert sidecar_service.health() == "SERVING"
    assert sidecar_service.health("liveness") == "SERVING"  # what the liveness probe asks
    with grpc.insecure_channel(sidecar_service.target) as channel:
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.RpcError) as error:
            next(iter(watch(b"", timeout=5)))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, "only the probe method is open"


def test_modalmesh_call_plaintext_reaches_a_sidecar_mode_workload(sidecar_service):
    """`modalmesh call --plaintext` is for a pod whose sidecar adds the identity: without one, the
    probe answers and everything else is refused as unauthenticated."""
    def call(method: str, request: str = "{}", target: str = sidecar_service.target):
        return subprocess.run([sys.executable, "-m", "modalmesh.cli", "call", "--plaintext", target, method, request],
                              capture_output=True, text=True, timeout=60)

    health = call("grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "SERVING", health.stderr
    embed = call("modalmesh.v1.TextService/Embed", '{"texts": ["hi"]}')
    assert embed.returncode == 1 and "UNAUTHENTICATED" in embed.stderr
    by_name = call("grpc.health.v1.Health/Check", target="text")
    assert by_name.returncode == 2 and "--plaintext needs HOST:PORT" in by_name.stderr
