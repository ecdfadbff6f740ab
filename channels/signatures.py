"""Signature checks shared by adapters: constant-time comparisons only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import defaultdict
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

TWILIO_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
#: How far a signed timestamp may be from our clock (either way) before the webhook counts as
#: replayed (Telnyx's SDK uses the same 300 seconds).
SIGNATURE_TOLERANCE_SECONDS = 300


def unix_time(stamp: str) -> int | None:
    """A signature's timestamp in Unix seconds; None unless it is up to 12 ASCII digits."""
    if stamp.isascii() and stamp.isdigit() and len(stamp) <= 12:
        return int(stamp)
    return None


def within_tolerance(
    timestamp: float, *, tolerance_seconds: float = SIGNATURE_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """Whether a signed ``timestamp`` (Unix seconds) is close enough to now to be accepted."""
    return abs((time.time() if now is None else now) - timestamp) <= tolerance_seconds


def twilio_signature(
    secret: str, url: str, params: Iterable[tuple[str, str]], algorithm: str = "HMAC_SHA1"
) -> str:
    """X-Twilio-Signature: HMAC over the URL and the form parameters sorted by name (each name's
    distinct values sorted), keyed by the Auth Token (HMAC_SHA1) or a webhook SharedKey (HMAC_SHA256)."""
    grouped: dict[str, set[str]] = defaultdict(set)
    for name, value in params:
        grouped[name].add(value)
    material = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(secret.encode("utf-8"), material.encode("utf-8"), TWILIO_ALGORITHMS[algorithm]).digest()
    return base64.b64encode(digest).decode("ascii")


def url_port_variants(url: str) -> list[str]:
    """The URL without any port and with the scheme's default port added if it has none: Twilio
    signs either form (as its own validator, twilio.request_validator, checks)."""
    parts = urlsplit(url)
    without_port = urlunsplit(parts._replace(netloc=parts.netloc.split(":")[0])) if parts.port else url
    if parts.port:
        with_port = url
    else:
        default = 443 if parts.scheme == "https" else 80
        with_port = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))
    return [without_port, with_port]


def same(expected: str, received: str | None) -> bool:
    """Constant-time comparison of any two texts (lone surrogates included: never raises)."""
    return received is not None and hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), received.encode("utf-8", "surrogatepass")
    )


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def hmac_sha256_base64(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()).decode(
        "ascii"
    )
