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

    def server_files(self, directory: Path) -> tuple[Path, Path]:
        """(certificate chain, private key) PEM files for a server outside Python (Azurite's --cert/--key)."""
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        cert, key = directory / "server-cert.pem", directory / "server-key.pem"
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


def make_local_ca(directory: Path) -> LocalCA:
    """A CA plus a bundle file (system CAs + the test CA) for SSL_CERT_FILE and REQUESTS_CA_BUNDLE."""
    ca = trustme.CA()
    bundle = directory / "ca-bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
    return LocalCA(ca, bundle)
