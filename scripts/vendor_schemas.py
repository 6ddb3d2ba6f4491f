"""Refresh tests/schemas/ from Istio's CRD file and skaffold's JSON Schema.

The manifest tests validate offline, so the schemas live in the repository:

    python scripts/vendor_schemas.py ISTIO_CRDS_YAML SKAFFOLD_SCHEMA_JSON

ISTIO_CRDS_YAML is istio/api's kubernetes/customresourcedefinitions.gen.yaml; from it this keeps
the OpenAPI v3 schema of the v1 version of each kind (the version the manifests use), keyed by
"group/v1/Kind". SKAFFOLD_SCHEMA_JSON (skaffold's docs-v2/content/en/schemas/v4beta14.json) is
copied as it is.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

SCHEMAS = Path(__file__).resolve().parents[1] / "tests" / "schemas"


def istio_v1_schemas(crds_file: Path) -> dict[str, dict]:
    schemas = {}
    for crd in yaml.safe_load_all(crds_file.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if version["name"] == "v1" and version.get("served"):
                key = f"{spec['group']}/v1/{spec['names']['kind']}"
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return dict(sorted(schemas.items()))


def main(crds_file: str, skaffold_schema: str) -> None:
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    istio = istio_v1_schemas(Path(crds_file))
    (SCHEMAS / "istio-v1.json").write_text(json.dumps(istio, indent=1, sort_keys=True) + "\n")
    shutil.copyfile(skaffold_schema, SCHEMAS / "skaffold-v4beta14.json")
    print(f"{len(istio)} Istio kinds, and the skaffold schema, in {SCHEMAS}")


if __name__ == "__main__":
    main(*sys.argv[1:])
