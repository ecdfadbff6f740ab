"""A throwaway certificate authority for the test session's HTTPS fakes."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme


@dataclass(frozen=True)
class LocalCA:
    ca: trustme.CA
    bundle: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        return context


def make_local_ca(directory: Path) -> LocalCA:
    """A CA plus a bundle file (system CAs + the test CA) for SSL_CERT_FILE and REQUESTS_CA_BUNDLE."""
    ca = trustme.CA()
    bundle = directory / "ca-bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
    return LocalCA(ca, bundle)
