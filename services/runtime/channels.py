"""Client channels of the mesh: mutual TLS with a workload certificate, explicit message limits."""

from __future__ import annotations

from pathlib import Path

import grpc

from services.runtime.settings import DEFAULT_MAX_MESSAGE_BYTES


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def client_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )


def secure_channel(target: str, ca: Path, cert: Path, key: Path, *, aio: bool = False,
                   max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
    """A channel that presents ``cert`` (this workload's identity) and trusts only ``ca``."""
    factory = grpc.aio.secure_channel if aio else grpc.secure_channel
    return factory(target, client_credentials(ca, cert, key), options=channel_options(max_message_bytes))


def plaintext_channel(target: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A channel without TLS, for a client inside a pod whose Istio sidecar does the mutual TLS."""
    return grpc.insecure_channel(target, options=channel_options(max_message_bytes))
