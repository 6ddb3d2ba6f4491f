"""The local mesh CLI's pure parts, in process: method names, tensors, errors, workloads, backoff."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from modalmesh.call import (CallError, decode_tensor, describe_rpc_error, format_json, message_to_dict,
                            parse_requests, resolve_method, split_method_name)
from modalmesh.cli import main
from modalmesh.supervisor import restart_delay
from modalmesh.v1 import common_pb2, text_pb2
from modalmesh.workloads import load_workloads, select, with_random_ports


@pytest.mark.parametrize("text", ["/modalmesh.v1.TextService/Embed", "modalmesh.v1.TextService/Embed",
                                  "modalmesh.v1.TextService.Embed"])
def test_the_three_spellings_of_a_method_name_agree(text):
    assert split_method_name(text) == ("modalmesh.v1.TextService", "Embed")
    assert resolve_method(text).path == "/modalmesh.v1.TextService/Embed"


def test_methods_of_every_protocol_resolve():
    assert resolve_method("grpc.health.v1.Health/Check").path == "/grpc.health.v1.Health/Check"
    assert resolve_method("inference.GRPCInferenceService.ModelInfer").request_class.__name__ == "ModelInferRequest"


@pytest.mark.parametrize("text, complaint", [
    ("Embed", "not of the form"),
    ("modalmesh.v1.NoSuchService/Embed", "known services: "),
    ("modalmesh.v1.TextService/Embedd", "its methods: Embed"),
])
def test_a_wrong_method_name_says_what_exists(text, complaint):
    with pytest.raises(CallError, match=complaint):
        resolve_method(text)


def test_requests_are_parsed_from_json_and_mistakes_named():
    method = resolve_method("modalmesh.v1.TextService/Embed")
    (request,) = parse_requests(method, '{"texts": ["a", "b"]}')
    assert list(request.texts) == ["a", "b"]
    assert parse_requests(method, "")[0] == text_pb2.EmbedRequest()
    with pytest.raises(CallError, match="not JSON"):
        parse_requests(method, "{texts: 1}")
    with pytest.raises(CallError, match="modalmesh.v1.EmbedRequest"):
        parse_requests(method, '{"textz": ["a"]}')


def _tensor(dtype: str, array: np.ndarray, data: bytes | None = None) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=common_pb2.DataType.Value(f"DATA_TYPE_{dtype}"), shape=list(array.shape),
                             data=array.tobytes() if data is None else data)


@pytest.mark.parametrize("dtype, numpy_dtype", [("FP32", "<f4"), ("FP64", "<f8"), ("FP16", "<f2"),
                                                 ("INT64", "<i8"), ("INT8", "i1"), ("UINT8", "u1"),
                                                 ("BOOL", "?")])
def test_tensors_decode_to_nested_values(dtype, numpy_dtype):
    array = np.array([[0, 1, 2], [3, 4, 5]]).astype(numpy_dtype)
    decoded = decode_tensor(_tensor(dtype, array))
    assert decoded == {"dtype": dtype, "shape": [2, 3], "values": array.tolist()}


def test_float32_values_print_in_their_shortest_form():
    decoded = decode_tensor(_tensor("FP32", np.array([0.1, 1 / 3], dtype="<f4")))
    assert decoded["values"] == [0.1, 0.33333334]


def test_bfloat16_is_the_top_half_of_a_float32():
    float32 = np.array([1.5, -2.0, 0.15625], dtype="<f4")
    bf16 = (float32.view("<u4") >> 16).astype("<u2")
    assert decode_tensor(_tensor("BF16", float32, bf16.tobytes()))["values"] == [1.5, -2.0, 0.15625]


def test_a_tensor_whose_bytes_do_not_fit_its_shape_is_shown_raw():
    decoded = decode_tensor(_tensor("FP32", np.zeros((2, 2), "<f4"), b"\0" * 12))
    assert decoded["data"] and "error" in decoded and "values" not in decoded


def test_replies_show_tensors_decoded_and_other_fields_as_proto_json():
    embeddings = np.array([[0.5, -0.25]], dtype="<f4")
    reply = text_pb2.EmbedResponse(embeddings=_tensor("FP32", embeddings), token_counts=[3],
                                   model=common_pb2.ModelInfo(name="m", version="1"))
    doc = message_to_dict(reply)
    assert doc["embeddings"] == {"dtype": "FP32", "shape": [1, 2], "values": [[0.5, -0.25]]}
    assert doc["token_counts"] == [3] and doc["model"] == {"name": "m", "version": "1"}


def test_printed_json_keeps_number_lists_on_one_line_and_stays_json():
    doc = {"embeddings": {"shape": [2, 3], "values": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}, "empty": {}}
    text = format_json(doc)
    assert json.loads(text) == doc
    assert "[1.0, 2.0, 3.0]" in text and len(text.splitlines()) == 10


class _FailedCall(grpc.RpcError):
    """What a channel raises: an RpcError that is also the call, with its trailing metadata."""

    def __init__(self, status: status_pb2.Status):
        self._status = rpc_status.to_status(status)

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def test_rpc_errors_show_code_message_and_field_violations():
    violation = error_details_pb2.BadRequest.FieldViolation(field="texts", description="must not be empty")
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    error = _FailedCall(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad request", details=[detail]))
    assert describe_rpc_error(error) == "ERROR: INVALID_ARGUMENT: bad request\n  field texts: must not be empty"


def test_workloads_yaml_lists_text_and_random_ports_differ():
    workloads = load_workloads()
    (text,) = select(workloads, ["text"])
    assert text.module == "services.text" and text.grpc_address == f"127.0.0.1:{text.grpc_port}"
    ports = [p for w in with_random_ports(workloads) for p in (w.grpc_port, w.metrics_port)]
    assert len(set(ports)) == len(ports)
    with pytest.raises(ValueError, match="unknown workload"):
        select(workloads, ["nope"])


def test_restarts_back_off_from_one_second_doubling_to_thirty():
    assert [restart_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("command", [[], ["up"], ["down"], ["status"], ["pki", "issue"], ["call"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0 and "usage: modalmesh" in capsys.readouterr().out


def test_the_console_script_runs():
    script = shutil.which("modalmesh", path=str(Path(sys.executable).parent)) or shutil.which("modalmesh")
    assert script, "the install (make test, pip install -e .) provides the modalmesh console script"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "modalmesh up --detach" in result.stdout, result.stderr
