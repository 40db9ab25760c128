"""A pynetdicom Verification SCU, run as a peer process by the interop tests.

Usage: python pynetdicom_echo_scu.py --host HOST --port PORT [--aet CALLING] [--aec CALLED]
       [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]

Prints exactly one JSON line on stdout:
  {"ok": bool, "status": int|null,
   "rejected": {"result": int, "source": int, "reason": int} | null,
   "aborted": bool}
"ok" is true when the association was established and C-ECHO returned
status 0x0000. Exit status is 0 when "ok", else 1.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()

    tls_args = None
    if args.tls_ca:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.tls_ca)
        context.check_hostname = False  # DICOM peers are named by AE title, not host
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        tls_args = (context, args.host)

    ae = AE(ae_title=args.aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout

    out: dict[str, object] = {"ok": False, "status": None, "rejected": None, "aborted": False}
    assoc = ae.associate(args.host, args.port, ae_title=args.aec, tls_args=tls_args)
    if assoc.is_established:
        rsp = assoc.send_c_echo()
        status = getattr(rsp, "Status", None)
        out["status"] = int(status) if status is not None else None
        if assoc.is_established:
            assoc.release()
        out["ok"] = out["status"] == 0
    elif assoc.is_rejected:
        # The A-ASSOCIATE-RJ primitive received from the acceptor.
        rj = assoc.acceptor.primitive
        assert rj is not None
        out["rejected"] = {
            "result": rj.result,
            "source": rj.result_source,
            "reason": rj.diagnostic,
        }
    out["aborted"] = bool(assoc.is_aborted)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
