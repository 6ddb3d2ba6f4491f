#!/usr/bin/env bash
# Make one peer server's environment of bench/embed_peers.py from the wheels bench/peer_wheels.py made, on a
# machine without a package index (bench/gpu.sh peers):
#
#   bench/install_peer.sh WHEELS PEER VENV [PYTHON]
#
# WHEELS holds part-N/PEER/ folders; pieces of a wheel cut across parts (NAME.whl.piece-NNN) are joined
# first. VENV is a virtual environment of PYTHON (default python3) that also sees PYTHON's own packages (a
# .pth file names its site folders: the machine's PyTorch and transformers), with the wheels installed
# without dependency resolution (they are the whole closure the machine lacks). Then:
#   embed_peers.py --peer-python PEER=VENV/bin/python
set -euo pipefail
wheels=$1 peer=$2 venv=$3 py=${4:-python3}
joined=$(mktemp -d)
trap 'rm -rf "$joined"' EXIT
cp "$wheels"/part-*/"$peer"/* "$joined"/
for first in "$joined"/*.piece-000; do
  [ -e "$first" ] || continue
  wheel=${first%.piece-000}
  cat "$wheel".piece-* > "$wheel"
  rm "$wheel".piece-*
done
rm -rf "$venv"
# Without pip (an image's Python may lack ensurepip): PYTHON's pip installs into the venv's folder.
"$py" -m venv --without-pip "$venv"
venv_site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
# A nested --system-site-packages venv would see the base interpreter's packages, not those of PYTHON when
# PYTHON is itself a venv (as on the GPU machines): name PYTHON's site folders instead. They come after the
# venv's own, so the peer's pinned versions win.
"$py" -c 'import site; print("\n".join(site.getsitepackages()))' > "$venv_site/machine-packages.pth"
"$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
  --target "$venv_site" "$joined"/*.whl
echo "$peer: $(ls "$joined" | wc -l) wheels installed into $venv"
