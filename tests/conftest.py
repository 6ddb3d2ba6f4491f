from __future__ import annotations

import pytest

from modalmesh.home import MeshHome
from tests.support import start_service


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> MeshHome:
    """A mesh home for the session: its CA, and certificates issued from it by workload name."""
    return MeshHome(tmp_path_factory.mktemp("mesh-home"))


@pytest.fixture(scope="session")
def text_service(pki, tmp_path_factory):
    """One text service for the session, default settings, over mutual TLS."""
    service = start_service("services.text", pki, tmp_path_factory.mktemp("text"), "text")
    yield service
    assert service.stop() == 0, service.log()[-2000:]
