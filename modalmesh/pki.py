"""A local certificate authority that issues SPIFFE identities, as Istio does for pods.

Every workload of the local mesh gets a certificate whose URI SAN is
``spiffe://cluster.local/ns/modalmesh/sa/<workload>``; servers require a client
certificate from this CA and authorize by that identity.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.runtime.identity import spiffe_id

CA_VALIDITY = dt.timedelta(days=365)
LEAF_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class IssuedCertificate:
    """Paths of the PEM files a workload needs for mutual TLS."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate chain, private key) as bytes, for grpc credentials."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class LocalCA:
    """A CA kept as two PEM files in a directory (created on first use)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, directory: Path):
        self.cert = cert
        self.key = key
        self.directory = directory

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def load_or_create(cls, directory: str | Path, common_name: str = "modalmesh local CA") -> "LocalCA":
        directory = Path(directory)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
                return cls(cert, key, directory)
        return cls._create(directory, common_name)

    @classmethod
    def _create(cls, directory: Path, common_name: str) -> "LocalCA":
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modalmesh"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / "ca.key", _key_pem(key))
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, directory)

    def issue(self, workload: str, out_dir: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
              validity: dt.timedelta = LEAF_VALIDITY) -> IssuedCertificate:
        """Issue a client-and-server certificate for ``workload`` into ``out_dir``.

        Writes ``ca.crt``, ``<workload>.crt`` and ``<workload>.key`` (mode 0600).
        """
        if not workload or "/" in workload or workload.strip() != workload:
            raise ValueError(f"invalid workload name {workload!r}")
        out = Path(out_dir)
        key = _new_key()
        now = dt.datetime.now(dt.timezone.utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(workload))]
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modalmesh"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + validity, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        out.mkdir(parents=True, exist_ok=True)
        issued = IssuedCertificate(ca=out / "ca.crt", cert=out / f"{workload}.crt", key=out / f"{workload}.key")
        issued.ca.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(issued.key, _key_pem(key))
        return issued
