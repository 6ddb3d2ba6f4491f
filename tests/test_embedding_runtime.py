"""Encoders on the CPU run in ONNX Runtime: exported from the loaded PyTorch model, cached on disk, and
answering what PyTorch answers. Through the service over mutual TLS, and on a model the test builds."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.onnx_encoder import CHUNK_ROWS, MIN_CHUNK_ROWS, OnnxEncoder
from services.text import embedding_model
from services.text.embedding_model import SentenceEmbedder
from tests.encoders import build_tiny_encoder

TEXTS = [
    "Vibration rose on machine 7.",
    "ok",
    "The pump's bearing is overheating and needs maintenance before the next shift starts tomorrow morning.",
    "A lesion of 4.7 mL was measured on the second study.",
] * 10 + ["word " * 400]   # one text past the 256-token window: cut, as PyTorch's path cuts it


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("models") / "tiny-encoder")


@pytest.fixture(scope="module")
def pytorch_minilm():
    embedder = SentenceEmbedder(device="cpu", runtime="torch")
    embedder.load()
    return embedder


def vectors(reply: text_pb2.EmbedResponse) -> np.ndarray:
    return np.frombuffer(reply.embeddings.data, dtype="<f4").reshape(tuple(reply.embeddings.shape))


def test_the_service_runs_minilm_in_onnx_runtime_and_answers_what_pytorch_answers(text_service, pytorch_minilm):
    with text_service.channel() as channel:
        stub = text_pb2_grpc.TextServiceStub(channel)
        together = stub.Embed(text_pb2.EmbedRequest(texts=TEXTS))
        alone = [vectors(stub.Embed(text_pb2.EmbedRequest(texts=[t])))[0] for t in TEXTS[:4]]
    assert together.model.runtime.startswith("onnxruntime "), together.model
    assert together.model.dtype == "float32" and together.model.device == "cpu"
    expected = pytorch_minilm.run_batch(pytorch_minilm.tokenize(TEXTS))
    # 41 rows run as length-sorted chunks on two threads, and come back in the order asked.
    np.testing.assert_allclose(vectors(together), expected, atol=1e-5)
    np.testing.assert_allclose(np.stack(alone), expected[:4], atol=1e-5)
    assert list(together.truncated) == [False] * 40 + [True]


def test_an_encoder_by_path_is_exported_once_then_read_from_the_cache(tiny_encoder, tmp_path):
    first = SentenceEmbedder(str(tiny_encoder), device="cpu", export_cache=tmp_path)
    first.load()
    exports = list(tmp_path.glob("tiny-encoder-*.onnx"))
    assert len(exports) == 1 and first.describe().runtime.startswith("onnxruntime")
    written = exports[0].stat().st_mtime_ns

    again = SentenceEmbedder(str(tiny_encoder), device="cpu", export_cache=tmp_path)
    again.load()
    assert exports[0].stat().st_mtime_ns == written and list(tmp_path.glob("*")) == exports

    pytorch = SentenceEmbedder(str(tiny_encoder), device="cpu", runtime="torch")
    pytorch.load()
    assert pytorch.describe().runtime.startswith("torch ")
    rows = again.tokenize(TEXTS)
    np.testing.assert_allclose(again.run_batch(rows), pytorch.run_batch(rows), atol=1e-5)


def test_a_cache_that_cannot_be_written_costs_only_the_export(tiny_encoder, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    embedder = SentenceEmbedder(str(tiny_encoder), device="cpu", export_cache=tmp_path / "a-file" / "onnx")
    embedder.load()
    assert embedder.describe().runtime.startswith("onnxruntime")
    assert embedder.run_batch(embedder.tokenize(["still answers"])).shape == (1, 32)


def test_a_failed_export_keeps_pytorch_unless_onnx_runtime_was_asked_for(tiny_encoder, tmp_path, monkeypatch,
                                                                          caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("an operator the exporter cannot trace")

    monkeypatch.setattr(embedding_model, "cached_export", refuse)
    with caplog.at_level(logging.WARNING):
        fallback = SentenceEmbedder(str(tiny_encoder), device="cpu", export_cache=tmp_path)
        fallback.load()
    assert fallback.describe().runtime.startswith("torch ")
    assert "ONNX export failed" in caplog.text and "cannot trace" in caplog.text
    assert fallback.run_batch(fallback.tokenize(["one", "two words"])).shape == (2, 32)

    insisted = SentenceEmbedder(str(tiny_encoder), device="cpu", runtime="onnxruntime", export_cache=tmp_path)
    with pytest.raises(RuntimeError, match="cannot trace"):
        insisted.load()


def test_an_unknown_runtime_or_one_that_cannot_run_the_model_is_refused():
    with pytest.raises(ValueError, match="runtime 'tensorrt' is not one of auto, onnxruntime, torch"):
        SentenceEmbedder(device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="float32 encoders on the CPU; this one is bfloat16 on cpu"):
        SentenceEmbedder(device="cpu", precision="bfloat16", runtime="onnxruntime")
    assert SentenceEmbedder(device="cpu", precision="bfloat16").requested_runtime == "auto"


def test_a_batch_is_cut_into_length_sorted_chunks_one_per_thread_at_least():
    encoder = OnnxEncoder.__new__(OnnxEncoder)   # chunking needs no session
    encoder.threads = 2
    lengths = [30, 5, 17, 9, 22, 12, 40, 7, 14, 25]
    chunks = encoder.chunks(lengths)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    flat = [lengths[i] for chunk in chunks for i in chunk]
    assert flat == sorted(lengths), "rows of like length share a chunk, so little padding is computed"
    assert all(MIN_CHUNK_ROWS <= len(c) <= CHUNK_ROWS for c in chunks[:-1]) and len(chunks) >= 2
    assert encoder.chunks([12, 3]) == [[1, 0]], "a small batch is one chunk: it runs on every thread"
    assert [len(c) for c in encoder.chunks(list(range(64)))] == [CHUNK_ROWS] * (64 // CHUNK_ROWS)
