from __future__ import annotations

import pytest

from tests.support import Pki, start_service


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def text_service(pki, tmp_path_factory):
    """One text service for the session, default settings, over mutual TLS."""
    service = start_service("services.text", pki, tmp_path_factory.mktemp("text"), "text")
    yield service
    assert service.stop() == 0, service.log()[-2000:]
