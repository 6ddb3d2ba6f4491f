"""Serving an encoder chosen by path: the real from_pretrained loading code, on a small model the
test builds and saves (no download), and on the Hugging Face cache layout for ids."""

from __future__ import annotations

import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.text.embedding_model import SentenceEmbedder
from services.text.main import model_registry
from tests.encoders import build_tiny_encoder
from tests.support import start_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-encoder"
    build_tiny_encoder(path)
    return path


def test_registry_resolves_names_and_paths(tiny_encoder):
    registry = model_registry()
    assert registry.names() == ["all-MiniLM-L6-v2"]
    adapter = registry.create(str(tiny_encoder), device="cpu")
    adapter.load()
    description = adapter.describe()
    assert description.name == "tiny-encoder" and description.provenance.startswith("local path")
    assert adapter.max_tokens == 64, "the window comes from the model when it has no sentence-transformers config"
    vectors = adapter.run_batch(adapter.tokenize(["one", "two words"]))
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unknown_hub_id_fails_to_load_offline_with_a_clear_error():
    adapter = SentenceEmbedder("no-such-org/no-such-model", device="cpu")
    with pytest.raises(OSError):
        adapter.load()


def test_service_serves_a_model_by_path(pki, tmp_path, tiny_encoder):
    service = start_service("services.text", pki, tmp_path, "text", embedding_model=str(tiny_encoder))
    try:
        with service.channel() as channel:
            reply = text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=["hello", "world"]))
            meta = oip_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                oip.ModelMetadataRequest(name="tiny-encoder"))
        assert list(reply.embeddings.shape) == [2, 32]
        assert reply.model.name == "tiny-encoder" and str(tiny_encoder) in reply.model.provenance
        assert list(meta.outputs[0].shape) == [-1, 32]
    finally:
        assert service.stop() == 0
