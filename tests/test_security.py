"""Refusals over a real socket: every caller needs a certificate from the mesh CA and a policy rule."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.pki import LocalCA
from modalmesh.v1 import text_pb2, text_pb2_grpc

EMBED = text_pb2.EmbedRequest(texts=["hello"])


def embed_over(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        text_pb2_grpc.TextServiceStub(channel).Embed(EMBED, timeout=10)
    channel.close()
    return error.value


def test_client_without_certificate_is_refused_in_the_handshake(text_service):
    ca = text_service.home.certificate("cli").ca.read_bytes()
    channel = grpc.secure_channel(text_service.target, grpc.ssl_channel_credentials(root_certificates=ca))
    assert embed_over(channel).code() == grpc.StatusCode.UNAVAILABLE
    assert text_service.health() == "SERVING"


def test_certificate_from_another_ca_is_refused(text_service, tmp_path):
    rogue = LocalCA.load_or_create(tmp_path / "rogue-ca").issue("cli", tmp_path / "rogue")
    ca = text_service.home.certificate("cli").ca.read_bytes()   # trusts the real server, presents a rogue identity
    channel = grpc.secure_channel(text_service.target, grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=rogue.key.read_bytes(), certificate_chain=rogue.cert.read_bytes()))
    assert embed_over(channel).code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_outside_the_mesh(text_service, tmp_path):
    """Mutual: a client that trusts only another CA will not talk to this server."""
    rogue = LocalCA.load_or_create(tmp_path / "rogue-ca").issue("cli", tmp_path / "rogue")
    channel = grpc.secure_channel(text_service.target, grpc.ssl_channel_credentials(
        root_certificates=rogue.ca.read_bytes(), private_key=rogue.key.read_bytes(),
        certificate_chain=rogue.cert.read_bytes()))
    assert embed_over(channel).code() == grpc.StatusCode.UNAVAILABLE


def test_identity_without_a_policy_rule_gets_permission_denied(text_service):
    error = embed_over(text_service.channel("intruder"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://cluster.local/ns/modalmesh/sa/intruder" in error.details()
    assert "/modalmesh.v1.TextService/Embed" in error.details()


def test_health_is_open_to_any_mesh_identity(text_service):
    with text_service.channel("intruder") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_is_refused(text_service):
    channel = grpc.insecure_channel(text_service.target)
    assert embed_over(channel).code() == grpc.StatusCode.UNAVAILABLE
    assert text_service.health() == "SERVING"


def test_authorized_caller_passes(text_service):
    with text_service.channel("cli") as channel:
        reply = text_pb2_grpc.TextServiceStub(channel).Embed(EMBED, timeout=10)
    assert reply.embeddings.shape == [1, 384]


def test_denials_are_counted_by_code(text_service):
    embed_over(text_service.channel("intruder"))
    assert 'modalmesh_grpc_requests_total{code="PERMISSION_DENIED",method="/modalmesh.v1.TextService/Embed"}' \
        in text_service.metrics()
