"""bench/gpu_kit.py: what gpu.sh needs, packed into parts that each fit one call to a GPU machine."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_kit  # noqa: E402


def wheel(folder: Path, name: str, size: int = 0, requires: tuple[str, ...] = ()) -> Path:
    """A file shaped like a wheel: a zip with a METADATA that lists its requirements, padded to ``size``."""
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    project = name.split("-")[0]
    with zipfile.ZipFile(path, "w") as archive:
        metadata = "Metadata-Version: 2.1\nName: x\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        archive.writestr(f"{project}-1.0.dist-info/METADATA", metadata)
        archive.writestr("padding", b"\0" * size)
    return path


def test_parts_hold_at_most_their_size_and_every_group_joins_back_whole(tmp_path):
    ray = tmp_path / "in" / "ray"
    big = wheel(ray, "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", size=5000)
    small = wheel(ray, "colorful-0.5.6-py2.py3-none-any.whl", size=900)
    other = wheel(tmp_path / "in" / "pytriton", "sh-2.2.2-py3-none-any.whl", size=1500)
    limit = 2048
    parts = gpu_kit.pack({"ray": ray, "pytriton": other.parent}, tmp_path / "kit", limit)

    assert all(sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) <= limit for part in parts)
    pieces = [f for part in parts for f in part.rglob(big.name + ".piece-*")]
    assert len(pieces) == 3 and all(f.parent.name == "ray" for f in pieces)
    assert gpu_kit.join(tmp_path / "kit", "ray", tmp_path / "ray") == 2
    assert (tmp_path / "ray" / big.name).read_bytes() == big.read_bytes()
    assert (tmp_path / "ray" / small.name).read_bytes() == small.read_bytes()
    assert gpu_kit.join(tmp_path / "kit", "pytriton", tmp_path / "pytriton") == 1
    assert gpu_kit.join(tmp_path / "kit", "architecture", tmp_path / "architecture") == 0


def test_what_the_machine_has_is_left_out_unless_pinned_or_built_on_a_pinned_numpy(tmp_path, monkeypatch):
    folder = tmp_path / "pytriton"
    wheel(folder, "numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl")           # pinned: kept
    wheel(folder, "ml_dtypes-0.5.4-cp312-cp312-manylinux_2_17_x86_64.whl", requires=("numpy>=1.21",))
    wheel(folder, "aiohttp-3.13.2-cp312-cp312-manylinux_2_17_x86_64.whl", requires=("yarl",))  # the machine's
    wheel(folder, "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl")            # the model stack: never
    wheel(folder, "sh-2.2.2-py3-none-any.whl")                                     # missing there: kept
    monkeypatch.setattr(gpu_kit, "requirements", lambda peer: ["nvidia-pytriton==0.7.0", "numpy==1.26.4"])
    gpu_kit.keep_missing(folder, "pytriton", machine_has={"numpy", "ml-dtypes", "aiohttp", "torch"})
    assert sorted(w.name.split("-")[0] for w in folder.glob("*.whl")) == ["ml_dtypes", "numpy", "sh"]
