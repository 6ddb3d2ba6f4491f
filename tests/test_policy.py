"""mesh/policy.yaml semantics: deny by default, allow by caller identity and full method path."""

from __future__ import annotations

from services.runtime.identity import spiffe_id, workload_of
from services.runtime.policy import MeshPolicy, method_matches
from tests.support import ROOT

POLICY = MeshPolicy.from_dict({
    "authenticated": ["/grpc.health.v1.Health/*"],
    "workloads": {
        "text": [
            {"callers": ["cli"], "methods": ["*"]},
            {"callers": ["media"], "methods": ["/modalmesh.v1.TextService/Embed"]},
            {"callers": ["healthcare"], "methods": ["/modalmesh.v1.TextService/*"]},
        ],
    },
})
EMBED = "/modalmesh.v1.TextService/Embed"


def test_method_patterns():
    assert method_matches("*", EMBED)
    assert method_matches("/modalmesh.v1.TextService/*", EMBED)
    assert method_matches(EMBED, EMBED)
    assert not method_matches("/modalmesh.v1.TextService/Classify", EMBED)
    assert not method_matches("/modalmesh.v1.TextServiceX/*", EMBED)


def test_allows_only_what_is_listed():
    assert POLICY.allows("text", spiffe_id("cli"), "/inference.GRPCInferenceService/ModelInfer")
    assert POLICY.allows("text", spiffe_id("media"), EMBED)
    assert not POLICY.allows("text", spiffe_id("media"), "/modalmesh.v1.TextService/Classify")
    assert POLICY.allows("text", spiffe_id("healthcare"), "/modalmesh.v1.TextService/Classify")
    assert not POLICY.allows("text", spiffe_id("healthcare"), "/inference.GRPCInferenceService/ModelInfer")
    assert not POLICY.allows("text", spiffe_id("intruder"), EMBED)
    assert not POLICY.allows("vision", spiffe_id("cli"), EMBED), "a workload absent from the policy allows nothing"


def test_health_is_open_to_any_mesh_identity_only():
    assert POLICY.allows("text", spiffe_id("intruder"), "/grpc.health.v1.Health/Check")
    assert not POLICY.allows("text", None, "/grpc.health.v1.Health/Check")
    foreign = "spiffe://other.domain/ns/modalmesh/sa/cli"
    assert not POLICY.allows("text", foreign, "/grpc.health.v1.Health/Check")
    assert not POLICY.allows("text", "spiffe://cluster.local/ns/default/sa/cli", EMBED)


def test_identity_round_trip():
    assert spiffe_id("text") == "spiffe://cluster.local/ns/modalmesh/sa/text"
    assert workload_of(spiffe_id("text")) == "text"
    assert workload_of("spiffe://cluster.local/ns/modalmesh/sa/a/b") is None


def test_repository_policy_loads_and_lets_the_operator_call_text():
    policy = MeshPolicy.load(ROOT / "mesh" / "policy.yaml")
    assert policy.allows("text", spiffe_id("cli"), EMBED)
    assert not policy.allows("text", spiffe_id("nobody"), EMBED)
