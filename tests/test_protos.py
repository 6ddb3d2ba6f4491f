"""The protobuf module: lint-clean, and its one generated Python copy current."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


def test_generated_stubs_are_current(tmp_path):
    """Regenerate into a temporary folder: any difference means `make protos` was not run."""
    subprocess.run([sys.executable, "scripts/generate_protos.py", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "protoc produced nothing"
    stale = [str(p) for p in generated if not (ROOT / p).exists() or not filecmp.cmp(tmp_path / p, ROOT / p, False)]
    assert not stale, f"stale stubs (run `make protos`): {stale}"
    committed = sorted(p.relative_to(ROOT) for pkg in ("modalmesh/v1", "inference") for p in (ROOT / pkg).glob("*_pb2*.py*"))
    assert committed == generated, "stubs without a .proto (delete them or run `make protos`)"


def test_buf_lint_passes():
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.fail("buf is not installed: run `make test` (it runs npm ci) or `npm ci`")
    result = subprocess.run([str(buf), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_violation(tmp_path):
    """The lint is real: a message named against the style guide fails it."""
    buf = ROOT / "node_modules" / ".bin" / "buf"
    module = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", module)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    bad = module / "modalmesh" / "v1" / "common.proto"
    bad.write_text(bad.read_text() + "\nmessage bad_name {}\n")
    result = subprocess.run([str(buf), "lint"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0 and "bad_name" in result.stdout + result.stderr
