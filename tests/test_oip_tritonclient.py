"""Wire compatibility with NVIDIA's tritonclient, which runs in its own virtual environment
(it pins protobuf < 7): its compiled protos against ours, then the real client against a service."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from inference import grpc_service_pb2, model_config_pb2
from modalmesh.v1 import text_pb2, text_pb2_grpc
from tests.support import ROOT
from tests.tritonclient.dump_descriptors import describe

TRITON_PYTHON = ROOT / ".venv-tritonclient" / "bin" / "python"
MODEL = "all-MiniLM-L6-v2"


def run_in_triton_venv(*args: str) -> str:
    if not TRITON_PYTHON.exists():
        pytest.fail("the tritonclient environment is missing: run `make test`, which creates it")
    result = subprocess.run([str(TRITON_PYTHON), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_every_field_we_declare_matches_tritonclients_protos():
    """Same package, services, methods, message fields (number, type, label) and enum values."""
    theirs = json.loads(run_in_triton_venv(str(ROOT / "tests" / "tritonclient" / "dump_descriptors.py")))
    ours = describe(grpc_service_pb2, model_config_pb2)
    mismatches = []
    for message, fields in ours["messages"].items():
        their_fields = theirs["messages"].get(message)
        if their_fields is None:
            mismatches.append(f"{message}: not in tritonclient")
            continue
        mismatches += [f"{message}.{name}: ours {spec}, theirs {their_fields.get(name)}"
                       for name, spec in fields.items() if their_fields.get(name) != spec]
    for service, methods in ours["services"].items():
        mismatches += [f"{service}/{name}: ours {spec}, theirs {theirs['services'][service].get(name)}"
                       for name, spec in methods.items() if theirs["services"][service].get(name) != spec]
    assert len(ours["messages"]) > 40
    assert not mismatches, "\n".join(mismatches)


def test_tritonclient_lists_describes_configures_and_infers(text_service):
    cert = text_service.home.certificate("cli")
    seen = json.loads(run_in_triton_venv(str(ROOT / "tests" / "tritonclient" / "drive.py"), text_service.target,
                                         str(cert.ca), str(cert.cert), str(cert.key), MODEL))
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert [m["name"] for m in seen["index"]["models"]] == [MODEL, "storyteller"]
    assert seen["metadata"]["inputs"][0] == {"name": "TEXT", "datatype": "BYTES", "shape": ["-1", "1"]}
    assert seen["config"]["config"]["max_batch_size"] == 64
    assert seen["config"]["config"]["output"][0]["data_type"] == "TYPE_FP32"
    assert seen["streamed_ids"] == ["stream-0", "stream-1", "stream-2"] and not seen["stream_errors"]
    assert int(seen["statistics"]["model_stats"][0]["inference_count"]) >= 12

    embedding = np.array(seen["embedding"], dtype=np.float32)
    with text_service.channel() as channel:
        typed = text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(
            texts=["The conveyor belt stopped.", "Line 3 halted unexpectedly.", "Lunch is at noon."]))
    expected = np.frombuffer(typed.embeddings.data, dtype="<f4").reshape(3, 384)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)
