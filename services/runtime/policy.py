"""mesh/policy.yaml: which caller identity may call which full gRPC method of which workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.runtime.identity import NAMESPACE, TRUST_DOMAIN, workload_of


def method_matches(pattern: str, method: str) -> bool:
    """Istio's path matching: exact, ``prefix*`` or ``*``."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return method.startswith(pattern[:-1])
    return method == pattern


@dataclass(frozen=True)
class AllowRule:
    callers: tuple[str, ...]
    methods: tuple[str, ...]


@dataclass(frozen=True)
class MeshPolicy:
    trust_domain: str = TRUST_DOMAIN
    namespace: str = NAMESPACE
    authenticated: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    workloads: dict[str, tuple[AllowRule, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "MeshPolicy":
        doc = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict) -> "MeshPolicy":
        workloads = {}
        for name, rules in (doc.get("workloads") or {}).items():
            workloads[name] = tuple(
                AllowRule(callers=tuple(r.get("callers") or ()), methods=tuple(r.get("methods") or ()))
                for r in rules or ()
            )
        return cls(
            trust_domain=doc.get("trustDomain", TRUST_DOMAIN),
            namespace=doc.get("namespace", NAMESPACE),
            authenticated=tuple(doc.get("authenticated") or ()),
            probes=tuple(doc.get("probes") or ()),
            workloads=workloads,
        )

    def caller_name(self, identity: str | None) -> str | None:
        """The workload name of an identity of this mesh, None for anyone else."""
        if not identity:
            return None
        return workload_of(identity, self.namespace, self.trust_domain)

    def is_probe(self, method: str) -> bool:
        return any(method_matches(p, method) for p in self.probes)

    def allows(self, target: str, identity: str | None, method: str) -> bool:
        """Whether ``identity`` may call ``method`` on workload ``target``. Deny by default."""
        caller = self.caller_name(identity)
        if caller is None:
            return False
        if any(method_matches(p, method) for p in self.authenticated):
            return True
        return any(
            caller in rule.callers and any(method_matches(p, method) for p in rule.methods)
            for rule in self.workloads.get(target, ())
        )
