"""The Kubernetes, Istio and skaffold files, checked offline the way a cluster would check them.

Each overlay is rendered by `kubectl kustomize`; core kinds validate strictly with
kubernetes-validate, Istio kinds against the v1 schemas of Istio's CRDs and skaffold.yaml against
skaffold's JSON Schema (both in tests/schemas/). Then the properties the deployment promises:
identities, images, ports, hardening, probes, STRICT mutual TLS, and authorization that allows
exactly what mesh/policy.yaml allows.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modalmesh.manifests import authorization_policies, image_of, principal, render
from modalmesh.workloads import load_workloads
from scripts.requirements import requirements
from services.runtime.identity import spiffe_id
from services.runtime.policy import MeshPolicy
from tests import istio_authz
from tests.kustomize import OVERLAYS, named, of_kind, render_overlay
from tests.support import ROOT

SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest a current Istio supports, and the newest here
ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io")
VENV_BIN = Path(sys.executable).parent

WORKLOADS = load_workloads()
POLICY = MeshPolicy.load(ROOT / "mesh" / "policy.yaml")


def is_istio(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] in ISTIO_GROUPS


def all_docs():
    return [(overlay, doc) for overlay in OVERLAYS for doc in render_overlay(overlay)]


def doc_id(item) -> str:
    overlay, doc = item
    return f"{overlay}:{doc['kind']}/{doc['metadata']['name']}"


def workload_deployments(overlay: str) -> list[dict]:
    return [named(render_overlay(overlay), "Deployment", w.name) for w in WORKLOADS]


# -- generated files ----------------------------------------------------------------------------

def test_generated_files_match_a_fresh_render():
    done = subprocess.run([sys.executable, "-m", "modalmesh.cli", "mesh", "render", "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_render_check_reports_a_policy_change(tmp_path):
    """A caller added to policy.yaml without rendering again makes the check fail."""
    policy = yaml.safe_load((ROOT / "mesh" / "policy.yaml").read_text())
    policy["workloads"]["text"].append({"callers": ["reports"], "methods": ["/modalmesh.v1.TextService/Embed"]})
    edited = tmp_path / "policy.yaml"
    edited.write_text(yaml.safe_dump(policy))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "modalmesh.cli", "mesh", "render", "--out", str(tmp_path),
                               *args], capture_output=True, text=True, cwd=ROOT, timeout=60)

    assert cli().returncode == 0
    assert cli("--check").returncode == 0
    stale = cli("--check", "--policy", str(edited))
    assert stale.returncode == 1
    assert "stale: mesh/istio/generated/authorization-policies.yaml" in stale.stderr
    assert "stale: mesh/base/workloads/network-policies.yaml" in stale.stderr
    assert "stale: mesh/base/workloads/callers.yaml" in stale.stderr  # `reports` needs an account


def test_bad_kubernetes_setting_is_named(tmp_path):
    doc = yaml.safe_load((ROOT / "mesh" / "workloads.yaml").read_text())
    doc["workloads"]["text"]["kubernetes"]["replica"] = 3
    bad = tmp_path / "workloads.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"workload 'text': unknown kubernetes setting\(s\): replica"):
        load_workloads(bad)


# -- schemas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_strictly(overlay):
    checked = 0
    for doc in render_overlay(overlay):
        if is_istio(doc):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                            f"{e.message} at {'.'.join(map(str, e.path))}")
        checked += 1
    assert checked >= 8


def _strict(schema):
    """Refuse unknown fields wherever the CRD lists its fields (the API server would drop them silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def istio_validator(key: str) -> jsonschema.Draft7Validator:
    schemas = json.loads((SCHEMAS / "istio-v1.json").read_text())
    assert key in schemas, f"{key} is not a v1 Istio kind (networking.istio.io/v1, security.istio.io/v1, ...)"
    return jsonschema.Draft7Validator(_strict(schemas[key]["properties"]["spec"]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_istio_kinds_validate_against_the_crd_schemas(overlay):
    istio_docs = [d for d in render_overlay(overlay) if is_istio(d)]
    for doc in istio_docs:
        group, version = doc["apiVersion"].split("/")
        errors = [f"{e.message} at spec.{'.'.join(map(str, e.path))}"
                  for e in istio_validator(f"{group}/{version}/{doc['kind']}").iter_errors(doc.get("spec") or {})]
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"
    kinds = {d["kind"] for d in istio_docs}
    assert {"PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService", "Gateway",
            "Telemetry"} <= kinds


def test_the_schema_check_catches_a_misspelt_field():
    """The strict CRD check is not a formality: a typo in a DestinationRule is an error."""
    validator = istio_validator("networking.istio.io/v1/DestinationRule")
    assert not list(validator.iter_errors({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}))
    assert list(validator.iter_errors({"host": "a", "trafficPolicy": {"loadBalancer": {"simpel": "LEAST_REQUEST"}}}))
    assert list(validator.iter_errors({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}))


def load_skaffold() -> dict:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text())


def test_skaffold_yaml_validates_against_the_skaffold_schema():
    schema = json.loads((SCHEMAS / "skaffold-v4beta14.json").read_text())
    config = load_skaffold()
    errors = [f"{e.message} at {'.'.join(map(str, e.path))}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert not errors
    assert config["apiVersion"] == "skaffold/v4beta14"
    # and the check is real: an unknown field is refused
    assert list(jsonschema.Draft7Validator(schema).iter_errors({**config, "deploy": {"kubectll": {}}}))


def test_skaffold_profiles_are_named_and_patch_nothing_by_index():
    config = load_skaffold()
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) == {"cpu", "gpu", "debug"}
    for name, profile in profiles.items():
        assert "patches" not in profile, f"profile {name} patches by JSON path; replace whole sections instead"
        for path in profile["manifests"]["kustomize"]["paths"]:
            assert (ROOT / path / "kustomization.yaml").is_file()
    assert config["manifests"] == profiles["cpu"]["manifests"]  # cpu is the default
    assert all(a["docker"]["buildArgs"]["DEVICE"] == "cuda" for a in profiles["gpu"]["build"]["artifacts"])
    assert config["deploy"]["statusCheckDeadlineSeconds"] >= max(w.kubernetes.startup_budget_s for w in WORKLOADS)


def test_skaffold_forwards_every_service_port_and_the_web_gateway():
    forwards = {(f["resourceName"], f["port"]) for f in load_skaffold()["portForward"]}
    for w in WORKLOADS:
        assert {(w.name, w.grpc_port), (w.name, w.metrics_port)} <= forwards
    assert ("istio-ingressgateway", 80) in forwards


# -- linters ------------------------------------------------------------------------------------

def test_yamllint_is_clean():
    files = [str(p) for p in sorted((ROOT / "mesh").rglob("*.yaml"))] + [str(ROOT / "skaffold.yaml")]
    done = subprocess.run([str(VENV_BIN / "yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), *files],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_clean():
    dockerfiles = sorted(ROOT.glob("**/Dockerfile*"))
    dockerfiles = [p for p in dockerfiles if not {".venv", "node_modules"} & set(p.parts)]
    assert dockerfiles
    hadolint = VENV_BIN / "hadolint"
    done = subprocess.run([str(hadolint), *map(str, dockerfiles)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- what every workload gets -------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_its_objects(overlay):
    docs = render_overlay(overlay)
    for w in WORKLOADS:
        for kind in ("ServiceAccount", "Deployment", "Service", "AuthorizationPolicy", "DestinationRule",
                     "VirtualService", "PodDisruptionBudget"):
            named(docs, kind, w.name)
        # An autoscaler only where more than one replica may run; a volume only where data is kept.
        autoscalers = [d for d in of_kind(docs, "HorizontalPodAutoscaler") if d["metadata"]["name"] == w.name]
        assert len(autoscalers) == (w.kubernetes.max_replicas > 1)
        claims = [d for d in of_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == f"{w.name}-data"]
        assert len(claims) == bool(w.kubernetes.storage)
        assert named(docs, "Deployment", w.name)["spec"]["template"]["spec"]["serviceAccountName"] == w.name
    callers = {c for rules in POLICY.workloads.values() for r in rules for c in r.callers}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert callers <= accounts, "every caller identity of policy.yaml needs a ServiceAccount"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_a_skaffold_artifact(overlay):
    artifacts = {a["image"] for a in load_skaffold()["build"]["artifacts"]}
    pods = [d["spec"]["template"]["spec"] for d in render_overlay(overlay) if d["kind"] in ("Deployment", "Job")]
    images = {c["image"].split(":")[0] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]}
    assert images and images <= artifacts


def test_every_artifact_is_a_dockerfile_target_running_its_workload():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for artifact in load_skaffold()["build"]["artifacts"]:
        target = artifact["docker"]["target"]
        workload = next(w for w in WORKLOADS if image_of(w) == artifact["image"])
        stage = re.search(rf"^FROM \S+ AS {target}\n(.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S)
        assert stage, f"Dockerfile has no target {target}"
        assert f'ENTRYPOINT ["python", "-m", "{workload.module}"]' in stage.group(1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_port_declares_its_protocol(overlay):
    docs = render_overlay(overlay)
    for svc in of_kind(docs, "Service"):
        for port in svc["spec"]["ports"]:
            assert port.get("appProtocol") and port["name"].split("-")[0] in ("grpc", "http", "tcp"), (svc, port)
            if port["name"] == "grpc":
                assert port["appProtocol"] == "grpc"
            if port["name"].startswith("tcp-"):   # MQTT: opaque TCP to Istio, authorized per connection
                assert port["appProtocol"] == "tcp"
    for deployment in of_kind(docs, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert all(p.get("protocol") == "TCP" and p.get("name") for p in c["ports"]), c["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_runs_as_root_or_privileged(overlay):
    for doc in render_overlay(overlay):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc.get("privileged", False) is False
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_grpc_and_the_drain_fits_the_grace_period(overlay):
    for deployment, w in zip(workload_deployments(overlay), WORKLOADS):
        pod = deployment["spec"]["template"]["spec"]
        server = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == w.grpc_port, probe
        startup = server["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= w.kubernetes.startup_budget_s
        env = {e["name"]: e.get("value") for e in server["env"]}
        drain = float(env["MODALMESH_DRAIN_DELAY_S"]) + float(env["MODALMESH_DRAIN_GRACE_S"])
        assert pod["terminationGracePeriodSeconds"] > drain
        assert env["MODALMESH_TLS_MODE"] == "sidecar"  # plaintext only behind the sidecar


def test_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image():
    for deployment in workload_deployments("gpu"):
        pod = deployment["spec"]["template"]["spec"]
        server = pod["containers"][0]
        if deployment["metadata"]["labels"]["modalmesh.dev/accelerator"] != "gpu":
            continue
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert server["image"].endswith(":cuda")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        env = {e["name"]: e.get("value") for e in server["env"]}
        assert env["MODALMESH_DEVICE"] == "cuda" and env["MODALMESH_PRECISION"] == "bfloat16"
        assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    for deployment in workload_deployments("cpu"):
        assert "nvidia.com/gpu" not in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mutual_tls_is_strict_and_every_destination_is_istio_mutual(overlay):
    docs = render_overlay(overlay)
    peer = named(docs, "PeerAuthentication", "default")
    assert peer["metadata"]["namespace"] == POLICY.namespace and "selector" not in peer["spec"]
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    for rule in of_kind(docs, "DestinationRule"):
        policy = rule["spec"]["trafficPolicy"]
        assert policy["tls"]["mode"] == "ISTIO_MUTUAL"
        assert policy["loadBalancer"]["simple"] == "LEAST_REQUEST"
    namespace = named(docs, "Namespace", POLICY.namespace)
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def test_retries_only_on_the_routes_declared_idempotent():
    docs = render_overlay("cpu")
    for w in WORKLOADS:
        routes = named(docs, "VirtualService", w.name)["spec"]["http"]
        declared = {r.name: r for r in w.kubernetes.routes}
        assert routes[-1]["name"] == "default" and "match" not in routes[-1]
        for route in routes:
            if route["name"] in declared and declared[route["name"]].retries:
                assert route["retries"]["retryOn"] == "unavailable,resource-exhausted"
            else:
                assert route["retries"] == {"attempts": 0}
            assert route["timeout"].endswith("s")


# -- NetworkPolicy ------------------------------------------------------------------------------

def test_network_policy_denies_by_default_and_admits_the_policy_callers():
    docs = render_overlay("cpu")
    deny = named(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for w in WORKLOADS:
        ingress = named(docs, "NetworkPolicy", f"{w.name}-ingress")["spec"]["ingress"]
        grpc_sources = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                        for rule in ingress if {"protocol": "TCP", "port": w.grpc_port} in rule["ports"]
                        for peer in rule["from"]}
        expected = {c for r in POLICY.workloads.get(w.name, ()) for c in r.callers}
        assert grpc_sources == expected


# -- authorization: the generated policies allow exactly what policy.yaml allows -----------------

TEXT_METHODS = [
    "/modalmesh.v1.TextService/Embed", "/modalmesh.v1.TextService/Classify",
    "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ServerLive",
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
]


def decisions(workloads, policy: MeshPolicy, authz_docs, callers, methods):
    """(target, caller, method) -> (policy.yaml's answer, Istio's answer on the rendered policies)."""
    out = {}
    for w in workloads:
        labels = {"app.kubernetes.io/name": w.name, "app": w.name}
        for caller in callers:
            for method in methods:
                request = istio_authz.Request(policy.namespace, labels, principal(policy, caller), method,
                                              w.grpc_port)
                out[(w.name, caller, method)] = (policy.allows(w.name, spiffe_id(caller), method),
                                                 istio_authz.allowed(authz_docs, request))
    return out


def test_rendered_authorization_matches_policy_yaml_for_every_pair():
    authz = of_kind(render_overlay("cpu"), "AuthorizationPolicy")
    callers = sorted({c for rules in POLICY.workloads.values() for r in rules for c in r.callers}
                     | {w.name for w in WORKLOADS} | {"intruder"})
    pairs = decisions(WORKLOADS, POLICY, authz, callers, TEXT_METHODS)
    mismatched = {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert not mismatched
    answers = {v[0] for v in pairs.values()}
    assert answers == {True, False}, "the walk must see both allowed and denied pairs"


def test_a_richer_policy_renders_to_exactly_its_pairs(tmp_path):
    """Several workloads, callers, wildcards and an app, rendered and judged pair by pair."""
    workloads_file = tmp_path / "workloads.yaml"
    workloads_file.write_text(yaml.safe_dump({"workloads": {
        "text": {"module": "services.text", "grpc_port": 50051, "metrics_port": 9464},
        "vision": {"module": "services.vision", "grpc_port": 50052, "metrics_port": 9465},
        "clinic": {"module": "apps.clinic", "grpc_port": 50060, "metrics_port": 9470, "http_port": 8000},
    }}))
    policy = MeshPolicy.from_dict({
        "authenticated": ["/grpc.health.v1.Health/*"],
        "workloads": {
            "text": [{"callers": ["cli"], "methods": ["*"]},
                     {"callers": ["clinic", "vision"], "methods": ["/modalmesh.v1.TextService/Embed"]}],
            "vision": [{"callers": ["clinic"], "methods": ["/modalmesh.v1.VisionService/*"]},
                       {"callers": ["cli"], "methods": ["/inference.GRPCInferenceService/ModelInfer",
                                                        "/modalmesh.v1.VisionService/Inspect"]}],
        },
    })
    workloads = load_workloads(workloads_file)
    docs = authorization_policies(workloads, policy)
    methods = TEXT_METHODS + ["/modalmesh.v1.VisionService/Inspect", "/modalmesh.v1.VisionService/SegmentVolume",
                              "/modalmesh.v1.VisionServiceX/Inspect"]
    pairs = decisions(workloads, policy, docs, ["cli", "clinic", "vision", "text", "intruder"], methods)
    assert not {k: v for k, v in pairs.items() if v[0] != v[1]}
    assert pairs[("vision", "clinic", "/modalmesh.v1.VisionService/SegmentVolume")] == (True, True)
    assert pairs[("vision", "cli", "/modalmesh.v1.VisionService/SegmentVolume")] == (False, False)
    assert pairs[("clinic", "cli", "/modalmesh.v1.TextService/Embed")] == (False, False)
    # the app's page port is open to the ingress gateway only
    gateway = istio_authz.Request(policy.namespace, {"app.kubernetes.io/name": "clinic"},
                                  "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account", "/", 8000)
    assert istio_authz.allowed(docs, gateway)
    assert not istio_authz.allowed(docs, istio_authz.Request(policy.namespace, {"app.kubernetes.io/name": "text"},
                                                             gateway.principal, "/", 50051))
    # every file of a render of this mesh validates
    for f in render(workloads, policy):
        for doc in yaml.safe_load_all(f.text):
            if doc and is_istio(doc):
                group, version = doc["apiVersion"].split("/")
                assert not list(istio_validator(f"{group}/{version}/{doc['kind']}").iter_errors(doc["spec"]))


def test_plaintext_and_foreign_principals_are_denied():
    authz = of_kind(render_overlay("cpu"), "AuthorizationPolicy")
    labels = {"app.kubernetes.io/name": "text"}
    for source in (None, "cluster.local/ns/default/sa/cli", "evil.example/ns/modalmesh/sa/cli"):
        for method in TEXT_METHODS:
            assert not istio_authz.allowed(authz, istio_authz.Request(POLICY.namespace, labels, source, method,
                                                                      50051)), (source, method)


# -- the image installs what `make up` installs --------------------------------------------------

def test_the_image_installs_the_pins_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requirements([]) == project["dependencies"]
    assert all("==" in pin for pin in project["dependencies"]), "every runtime dependency is pinned exactly"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "python scripts/requirements.py > /tmp/requirements.txt" in dockerfile
    assert "--requirement /tmp/requirements.txt" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert "--editable . --config-settings editable_mode=compat" in dockerfile
    assert "-e '.[dev]' --config-settings editable_mode=compat" in makefile


def test_the_image_python_is_the_python_ci_resolves_with():
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)$",
                     (ROOT / "Dockerfile").read_text(), re.M)
    assert base, "the base image is pinned by exact tag"
    assert (int(base[1]), int(base[2])) == sys.version_info[:2]


def test_the_image_runs_as_a_numeric_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and all(re.fullmatch(r"[1-9]\d*:[1-9]\d*", u) for u in users)


def test_stateful_workloads_keep_their_data_on_a_volume_and_find_their_peers_by_service_name():
    docs = render_overlay("cpu")
    for w in WORKLOADS:
        deployment = named(docs, "Deployment", w.name)
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert env["MODALMESH_IOT_ADDRESS"] == "iot.modalmesh.svc.cluster.local:50061"
        assert env["MODALMESH_MQTT_HOST"] == ("0.0.0.0" if w.mqtt_port else "mqtt-broker.modalmesh.svc.cluster.local")
        if w.kubernetes.storage:
            assert env["MODALMESH_DATA_DIR"] == "/data"
            assert deployment["spec"]["strategy"] == {"type": "Recreate"}   # one pod on the volume at a time
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
            assert claims == [f"{w.name}-data"]
        else:
            assert env["MODALMESH_DATA_DIR"].startswith("/tmp/")   # the root filesystem is read-only


def test_storage_needs_a_single_replica(tmp_path):
    spec = {"workloads": {"db": {"module": "m", "grpc_port": 1, "metrics_port": 2,
                                 "kubernetes": {"storage": "1Gi", "replicas": {"min": 1, "max": 3}}}}}
    (tmp_path / "workloads.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="one replica"):
        load_workloads(tmp_path / "workloads.yaml")
