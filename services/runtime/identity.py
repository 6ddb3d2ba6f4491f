"""Workload identities: SPIFFE ids, as Istio issues them, and how a server learns its caller's."""

from __future__ import annotations

import functools
import re

import grpc
from cryptography import x509

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "modalmesh"
_SPIFFE = re.compile(r"^spiffe://(?P<domain>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


def spiffe_id(workload: str, namespace: str = NAMESPACE, trust_domain: str = TRUST_DOMAIN) -> str:
    """The identity Istio gives a pod running as service account ``workload``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{workload}"


def workload_of(identity: str, namespace: str = NAMESPACE, trust_domain: str = TRUST_DOMAIN) -> str | None:
    """The service-account name inside a SPIFFE id of this mesh, or None for any other id."""
    match = _SPIFFE.match(identity)
    if not match or match["domain"] != trust_domain or match["ns"] != namespace:
        return None
    return match["sa"]


@functools.lru_cache(maxsize=256)
def spiffe_ids_of(cert_pem: bytes) -> tuple[str, ...]:
    """URI SANs of a PEM certificate that are SPIFFE ids (cached: one parse per peer certificate)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://"))


def peer_identity_from_tls(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's SPIFFE id from the client certificate that the TLS handshake verified."""
    auth = context.auth_context()
    for uri in auth.get("x509_uri_subject_alternative_name", []):
        text = uri.decode() if isinstance(uri, bytes) else uri
        if text.startswith("spiffe://"):
            return text
    pems = auth.get("x509_pem_cert", [])
    if pems:
        ids = spiffe_ids_of(pems[0] if isinstance(pems[0], bytes) else pems[0].encode())
        return ids[0] if ids else None
    return None


def peer_identity_from_sidecar(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's SPIFFE id from the Istio sidecar's x-forwarded-client-cert header.

    Trusted only in sidecar mode, where the pod port is reachable from the sidecar alone.
    The header holds the client's identity as ``URI=spiffe://...`` in its last element.
    """
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-client-cert":
            last = value.split(",")[-1]
            for part in last.split(";"):
                name, _, val = part.partition("=")
                if name.strip().lower() == "uri" and val.strip('"').startswith("spiffe://"):
                    return val.strip('"')
    return None
