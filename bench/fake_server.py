"""``python -m bench.fake_server {twilio|acs} CERT_PEM``: a fake provider API in its own process.

Prints its URL on stdout and serves until stdin closes. Credentials come from the environment
(BENCH_TWILIO_SID, BENCH_TWILIO_TOKEN, BENCH_ACS_KEY as base64).
"""

from __future__ import annotations

import base64
import os
import ssl
import sys

from tests.fakes.http import FakeHttpServer
from tests.fakes.providers import FakeAcs, FakeTwilio


def main() -> None:
    kind, cert = sys.argv[1], sys.argv[2]
    if kind == "twilio":
        with FakeHttpServer(
            FakeTwilio(os.environ["BENCH_TWILIO_SID"], os.environ["BENCH_TWILIO_TOKEN"])
        ) as server:
            print(server.url, flush=True)
            sys.stdin.read()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert)
        with FakeHttpServer(FakeAcs(base64.b64decode(os.environ["BENCH_ACS_KEY"])), tls=context) as server:
            print(server.url, flush=True)
            sys.stdin.read()


if __name__ == "__main__":
    main()
