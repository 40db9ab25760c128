"""A pynetdicom Verification SCP, run as a peer process by the interop tests.

Usage: python pynetdicom_echo_scp.py --port PORT [--host 127.0.0.1] [--aet TITLE]
       [--tls-cert PEM --tls-key PEM [--tls-ca PEM [--tls-require-client-cert]]]
       [--identity]

With --identity, every user identity a requestor sends is accepted, printed
as one JSON line ({"identity": type, "primary": ..., "secondary": ...}) and
confirmed with the server response b"ok" when the requestor asks.

The called AE title of every association request must equal --aet, otherwise
the association is rejected with result 1, source 1, reason 7
(rejected-permanent, service-user, called-AE-title-not-recognized).
Serves until killed.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-require-client-cert", action="store_true")
    parser.add_argument("--identity", action="store_true")
    args = parser.parse_args()

    context = None
    if args.tls_cert:
        # pynetdicom's TLS: an ssl.SSLContext handed to start_server.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_ca:
            context.load_verify_locations(args.tls_ca)
            context.verify_mode = (
                ssl.CERT_REQUIRED if args.tls_require_client_cert else ssl.CERT_OPTIONAL
            )

    ae = AE(ae_title=args.aet)
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    # Bounded waits inside the peer too, so a stuck test cannot hang it forever.
    ae.acse_timeout = 10
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    print(f"pynetdicom echo scp: AE {args.aet!r} on {args.host}:{args.port}", flush=True)
    handlers: list[Any] = []
    if args.identity:

        def identity(event: Any) -> tuple[bool, bytes | None]:
            # pynetdicom hands the sub-item's fields as attributes of the event.
            seen = {
                "identity": event.user_id_type,
                "primary": event.primary_field.decode(),
                "secondary": (event.secondary_field or b"").decode(),
            }
            print(json.dumps(seen), flush=True)
            return True, b"ok"

        handlers.append((evt.EVT_USER_ID, identity))
    ae.start_server((args.host, args.port), block=True, ssl_context=context, evt_handlers=handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
