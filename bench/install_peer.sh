#!/usr/bin/env bash
# Make one peer server's environment of bench/embed_peers.py from a folder of wheels, on a machine without a
# package index (bench/gpu.sh peers, with the wheels of bench/gpu_kit.py):
#
#   bench/install_peer.sh WHEELS VENV [PYTHON]
#
# VENV is a virtual environment of PYTHON (default python3) that also sees PYTHON's own packages (a .pth
# file names its site folders: the machine's PyTorch and transformers), with the wheels installed without
# dependency resolution (they are the whole closure the machine lacks). Then:
#   embed_peers.py --peer-python PEER=VENV/bin/python
set -euo pipefail
wheels=$1 venv=$2 py=${3:-python3}
rm -rf "$venv"
# Without pip (an image's Python may lack ensurepip): PYTHON's pip installs into the venv's folder.
"$py" -m venv --without-pip "$venv"
venv_site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
# A nested --system-site-packages venv would see the base interpreter's packages, not those of PYTHON when
# PYTHON is itself a venv (as on the GPU machines): name PYTHON's site folders instead. They come after the
# venv's own, so the peer's pinned versions win.
"$py" -c 'import site; print("\n".join(site.getsitepackages()))' > "$venv_site/machine-packages.pth"
"$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
  --target "$venv_site" "$wheels"/*.whl
echo "$(ls "$wheels"/*.whl | wc -l) wheels installed into $venv"
