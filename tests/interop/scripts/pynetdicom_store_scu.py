"""A pynetdicom Storage SCU, run as a peer process by the interop tests.

Usage: python pynetdicom_store_scu.py --host HOST --port PORT
           [--aet CALLING] [--aec CALLED] [--timeout S] FILE...

Proposes, for each distinct (SOP class, transfer syntax) pair of the files,
one presentation context with exactly that transfer syntax, so each file is
sent as it is stored (pynetdicom sends a file given by path without decoding
it). Sends every file over one association and prints exactly one JSON line:
  {"established": bool, "rejected": {...} | null, "aborted": bool,
   "results": [{"path": str, "status": int | null}], "ok": bool}
"ok" is true when every file got status 0x0000. Exit status 0 when "ok".
"""

from __future__ import annotations

import argparse
import json
import sys

from pydicom import dcmread
from pynetdicom import AE


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    pairs: list[tuple[str, str]] = []
    for path in args.files:
        ds = dcmread(path, stop_before_pixels=True)
        pair = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, [syntax])

    out: dict[str, object] = {
        "established": False,
        "rejected": None,
        "aborted": False,
        "results": [],
        "ok": False,
    }
    results: list[dict[str, object]] = []
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if assoc.is_established:
        out["established"] = True
        for path in args.files:
            status = None
            if assoc.is_established:
                rsp = assoc.send_c_store(path)
                value = getattr(rsp, "Status", None)
                status = int(value) if value is not None else None
            results.append({"path": path, "status": status})
        if assoc.is_established:
            assoc.release()
    elif assoc.is_rejected:
        rj = assoc.acceptor.primitive
        assert rj is not None
        out["rejected"] = {"result": rj.result, "source": rj.result_source, "reason": rj.diagnostic}
    out["aborted"] = bool(assoc.is_aborted)
    out["results"] = results
    out["ok"] = len(results) == len(args.files) and all(r["status"] == 0 for r in results)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
