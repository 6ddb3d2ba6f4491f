"""Print the project's pinned requirements from pyproject.toml, one per line.

The image build installs exactly these (the pins `make up` installs), before copying the source,
so a source change does not invalidate the dependency layer:

    python scripts/requirements.py [EXTRA ...] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = list(project["dependencies"])
    for extra in extras:
        pins += project["optional-dependencies"][extra]
    return pins


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
