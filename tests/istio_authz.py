"""Istio's AuthorizationPolicy decision, as its documentation specifies it, for rendered policies.

Used to check the generated policies against mesh/policy.yaml pair by pair. It implements the
parts of the API the manifests use (selectors, principals, namespaces, paths, ports) and refuses
any other field, so a policy it cannot judge fails the test instead of being misread.

The order (istio.io, "Authorization Policy", "Policy evaluation"): a matching DENY policy denies;
with no ALLOW policy for the workload the request is allowed; otherwise it is allowed only when
some rule of some ALLOW policy matches. A policy whose spec has no rules matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_FIELDS = {"principals", "notPrincipals", "namespaces", "notNamespaces"}
OPERATION_FIELDS = {"paths", "notPaths", "ports", "notPorts"}


@dataclass(frozen=True)
class Request:
    namespace: str  # of the destination workload
    labels: dict  # of the destination workload's pods
    principal: str | None  # the source's mTLS identity, "td/ns/NS/sa/SA"; None for plaintext
    path: str  # "/package.Service/Method"
    port: int


def string_matches(pattern: str, value: str | None) -> bool:
    """Istio's string match: exact, ``prefix*``, ``*suffix`` or ``*`` (any non-empty value)."""
    if value is None or value == "":
        return False
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _field_matches(values: list[str] | None, negated: list[str] | None, actual: str | None) -> bool:
    if values is not None and not any(string_matches(v, actual) for v in values):
        return False
    if negated is not None and any(string_matches(v, actual) for v in negated):
        return False
    return True


def _source_matches(source: dict, request: Request) -> bool:
    unknown = set(source) - SOURCE_FIELDS
    assert not unknown, f"source fields this evaluator does not implement: {unknown}"
    namespace = request.principal.split("/ns/")[1].split("/")[0] if request.principal else None
    return (_field_matches(source.get("principals"), source.get("notPrincipals"), request.principal)
            and _field_matches(source.get("namespaces"), source.get("notNamespaces"), namespace))


def _operation_matches(operation: dict, request: Request) -> bool:
    unknown = set(operation) - OPERATION_FIELDS
    assert not unknown, f"operation fields this evaluator does not implement: {unknown}"
    return (_field_matches(operation.get("paths"), operation.get("notPaths"), request.path)
            and _field_matches(operation.get("ports"), operation.get("notPorts"), str(request.port)))


def rule_matches(rule: dict, request: Request) -> bool:
    unknown = set(rule) - {"from", "to"}
    assert not unknown, f"rule fields this evaluator does not implement: {unknown}"
    sources = rule.get("from")
    operations = rule.get("to")
    if sources is not None and not any(_source_matches(s["source"], request) for s in sources):
        return False
    if operations is not None and not any(_operation_matches(o["operation"], request) for o in operations):
        return False
    return True


def applies_to(policy: dict, request: Request) -> bool:
    if policy["metadata"].get("namespace") != request.namespace:
        return False
    wanted = ((policy.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return all(request.labels.get(k) == v for k, v in wanted.items())


def allowed(policies: list[dict], request: Request) -> bool:
    """Whether Istio lets ``request`` through, given every AuthorizationPolicy of the mesh."""
    relevant = [p for p in policies if p["kind"] == "AuthorizationPolicy" and applies_to(p, request)]
    by_action: dict[str, list[dict]] = {}
    for policy in relevant:
        spec = policy.get("spec") or {}
        action = spec.get("action", "ALLOW")
        assert action in ("ALLOW", "DENY"), f"action this evaluator does not implement: {action}"
        by_action.setdefault(action, []).append(spec)
    if any(rule_matches(r, request) for spec in by_action.get("DENY", []) for r in spec.get("rules") or []):
        return False
    allows = by_action.get("ALLOW", [])
    if not allows:
        return True
    return any(rule_matches(r, request) for spec in allows for r in spec.get("rules") or [])
