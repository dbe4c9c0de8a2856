"""TLS for the dev stack's nats-server: a private CA and the server certificate
(`[nats] tls = true`); the clients' side is services/common/tls.py.

    files = ensure_tls_files(Path(".moon/tls"))   # ca.pem, ca-key.pem, server.pem, server-key.pem
    ctx = client_ssl_context(files.ca)            # (services.common.tls) trusts that CA only

The CA and the server certificate are made once and reused (clients keep trusting the
same CA across runs). The server certificate is made again, signed by the same CA, when
it is missing, expires within 30 days or lacks a name it must carry; the CA is made again
(and with it the server certificate) only when its own files are missing or it expires
within 30 days. Keys are ECDSA P-256, written 0600 in a 0700 directory.

The server certificate names 127.0.0.1, ::1, `localhost` and `nats` (the compose service
name), plus any extra host asked for, so a client reaches it by any of them and checks
the name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"

SERVER_NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost", "nats")
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA certificate and the server's certificate and key are."""

    ca: Path
    cert: Path
    key: Path


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file readable by its owner only (created 0600, never world-readable), whole
    or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _names(extra: list[str] | tuple[str, ...]) -> list[str]:
    names = list(SERVER_NAMES)
    for name in extra:
        if name and name not in ("0.0.0.0", "::") and name not in names:
            names.append(name)
    return names


def _general_names(names: list[str]) -> list:
    from cryptography import x509

    out: list = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _valid_until(cert) -> dt.datetime:  # noqa: ANN001 - a cryptography Certificate
    return cert.not_valid_after_utc


def _load_cert(path: Path):  # noqa: ANN202
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_key(path: Path):  # noqa: ANN202
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None


def _pem_key(key) -> bytes:  # noqa: ANN001
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(now: dt.datetime):  # noqa: ANN202
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moonbus"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "moonbus local NATS CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server(ca_key, ca_cert, names: list[str], now: dt.datetime):  # noqa: ANN001, ANN202
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=SERVER_DAYS), _valid_until(ca_cert))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "moonbus"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "moonbus nats-server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _server_ok(cert, ca_cert, names: list[str], now: dt.datetime) -> bool:  # noqa: ANN001
    from cryptography import x509

    if cert is None or cert.issuer != ca_cert.subject or _valid_until(cert) - now < RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001 - any doubt about the old one: make a new one
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    want = set()
    for name in names:
        try:
            want.add(str(ipaddress.ip_address(name)))
        except ValueError:
            want.add(name)
    return want <= have


def ensure_tls_files(tls_dir: Path, extra_names: list[str] | tuple[str, ...] = ()) -> TlsFiles:
    """The CA and server certificate in `tls_dir`, made or renewed as needed (see above)."""
    from cryptography.hazmat.primitives import serialization

    tls_dir = Path(tls_dir).resolve()  # absolute: the paths go into nats.env and child envs
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    files = TlsFiles(ca=tls_dir / CA_FILE, cert=tls_dir / CERT_FILE, key=tls_dir / KEY_FILE)
    ca_key_path = tls_dir / CA_KEY_FILE
    now = dt.datetime.now(dt.timezone.utc)
    names = _names(extra_names)

    ca_cert, ca_key = _load_cert(files.ca), _load_key(ca_key_path)
    new_ca = (ca_cert is None or ca_key is None or _valid_until(ca_cert) - now < RENEW_BEFORE
              or ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers())
    if new_ca:
        ca_key, ca_cert = _make_ca(now)
        write_private(ca_key_path, _pem_key(ca_key))
        write_private(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))

    cert, key = _load_cert(files.cert), _load_key(files.key)
    if (new_ca or key is None or not _server_ok(cert, ca_cert, names, now)
            or cert.public_key().public_numbers() != key.public_key().public_numbers()):
        key, cert = _make_server(ca_key, ca_cert, names, now)
        write_private(files.key, _pem_key(key))
        write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    for path in (ca_key_path, files.key, files.ca, files.cert):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return files
