"""TLS for NATS clients: an SSL context that trusts the CA a server certificate must chain
to (NATS_CA), for nats-py. The certificates are made by services/devstack/certs.py."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_ssl_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """A client context that trusts `ca` only (the system's CAs when None) and checks the
    server's name; TLS 1.2 at least."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_tls_options(url: str, ca: str | None) -> dict[str, object]:
    """nats-py connect options for TLS: with a CA file, a context that trusts it only; with a
    `tls://` URL and no CA, the system's CAs. Plain `nats://` without a CA: none."""
    if ca:
        return {"tls": client_ssl_context(ca)}
    if url.startswith("tls://"):
        return {"tls": client_ssl_context(None)}
    return {}
