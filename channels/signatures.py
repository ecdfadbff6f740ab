"""Signature checks shared by adapters: constant-time comparisons only."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import defaultdict
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """X-Twilio-Signature: HMAC-SHA1 over the URL and the form parameters sorted by name."""
    grouped: dict[str, set[str]] = defaultdict(set)
    for name, value in params:
        grouped[name].add(value)
    material = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(auth_token.encode("utf-8"), material.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def url_port_variants(url: str) -> list[str]:
    """The URL as given, with its default port added or removed: Twilio signs either form."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    elif parts.port == default:
        other = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
    else:
        return [url]
    return [url, urlunsplit(other)]


def same(expected: str, received: str | None) -> bool:
    return received is not None and hmac.compare_digest(expected.encode("utf-8"), received.encode("utf-8"))


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def hmac_sha256_base64(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()).decode(
        "ascii"
    )
