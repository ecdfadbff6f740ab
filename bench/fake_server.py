"""``python -m bench.fake_server KIND CERT_PEM``: a fake provider API in its own process.

Prints its URL on stdout and serves until stdin closes. Credentials come from the environment
(BENCH_SID, BENCH_TOKEN; BENCH_ACS_KEY as base64). ``acs`` and ``vonage`` serve HTTPS with CERT_PEM.
"""

from __future__ import annotations

import base64
import os
import ssl
import sys

from tests.fakes.http import FakeHttpServer, Handler
from tests.fakes.providers import FakeAcs, FakeInfobip, FakePlivo, FakeTelnyx, FakeTwilio, FakeVonage


def handler(kind: str) -> Handler:
    sid, token = os.environ.get("BENCH_SID", ""), os.environ.get("BENCH_TOKEN", "")
    fakes: dict[str, Handler] = {
        "twilio": FakeTwilio(sid, token),
        "telnyx": FakeTelnyx(token),
        "plivo": FakePlivo(sid, token),
        "vonage": FakeVonage(sid, token),
        "infobip": FakeInfobip(token),
    }
    if kind == "acs":
        return FakeAcs(base64.b64decode(os.environ["BENCH_ACS_KEY"]))
    return fakes[kind]


def main() -> None:
    kind, cert = sys.argv[1], sys.argv[2]
    tls = None
    if kind in ("acs", "vonage"):  # their SDKs speak only HTTPS
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert)
    with FakeHttpServer(handler(kind), tls=tls) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
