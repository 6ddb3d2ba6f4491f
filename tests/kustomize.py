"""The mesh/overlays as Kubernetes would receive them: rendered by `kubectl kustomize`."""

from __future__ import annotations

import functools
import shutil
import subprocess

import yaml

from tests.support import ROOT

OVERLAYS = ("cpu", "gpu", "debug")


@functools.cache
def render_overlay(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the overlays (`kubectl kustomize`); install kubectl"
    done = subprocess.run([kubectl, "kustomize", str(ROOT / "mesh" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize mesh/overlays/{overlay} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def named(docs, kind: str, name: str) -> dict:
    matches = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]
