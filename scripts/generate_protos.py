"""Generate the one Python copy of the protobuf stubs from protos/ (run by `make protos`).

Writes modalmesh/v1/*_pb2*.py and inference/*_pb2*.py at the repository root, where
the import paths protoc emits (``from modalmesh.v1 import common_pb2``) resolve.
tests/test_protos.py regenerates into a temporary folder and fails when the
committed copy differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
PACKAGES = ("modalmesh/v1", "inference")


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for pkg in PACKAGES for p in (PROTOS / pkg).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *proto_files()]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for pkg in PACKAGES:
        init = out_dir / pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf stubs (make protos). Do not edit."""\n')
        written += sorted((out_dir / pkg).glob("*_pb2*.py*")) + [init]
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
