"""A pynetdicom Q/R SCU that asks for extended negotiation (PS3.4 C.5), run by the interop tests.

Usage: python pynetdicom_relational_scu.py {find,get} --port PORT [--host HOST]
           [--aet CALLING] [--aec CALLED] [--timeout S] [--model study|patient]
           [--ext HEXBYTES] --level LEVEL [-k KEYWORD[=VALUE]]...
           [--store-context SOPCLASS=TS[,TS...]]...                     (get)

Proposes the model's SOP class and, with --ext, one SOP Class Extended
Negotiation sub-item for it whose service-class-application-information is
HEXBYTES (e.g. 01 for relational queries or retrieval, 0101 to add combined
date-time matching). One association, one request. get: one storage context
per --store-context with the SCP role; each instance that comes back is
answered 0x0000 and described (SOP Instance UID, SHA-256 of Pixel Data).

Prints exactly one JSON line:
  {"established": bool, "acceptor_extended": {sop_class: hex},
   "responses": [{"status": int | null, "error_comment": str | null,
                  "identifier": <DICOM JSON> | null}],
   "stored": [{"sop_instance_uid": str, "pixel_sha256": str}],
   "final_status": int | null}
Exit status 0 when the association was established and a final response came.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

MODELS = {
    ("find", "study"): "1.2.840.10008.5.1.4.1.2.2.1",
    ("find", "patient"): "1.2.840.10008.5.1.4.1.2.1.1",
    ("get", "study"): "1.2.840.10008.5.1.4.1.2.2.3",
    ("get", "patient"): "1.2.840.10008.5.1.4.1.2.1.3",
}
PENDING = (0xFF00, 0xFF01)


def _identifier(level: str, keys: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        keyword, _, value = key.partition("=")
        setattr(ds, keyword, value.split("\\") if "\\" in value else value)
    return ds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=["find", "get"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--model", choices=["study", "patient"], default="study")
    parser.add_argument("--ext")
    parser.add_argument("--level", required=True)
    parser.add_argument("-k", "--key", action="append", default=[])
    parser.add_argument("--store-context", action="append", default=[])
    args = parser.parse_args()

    model = MODELS[(args.service, args.model)]
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    ae.add_requested_context(model)

    negotiation: list[Any] = []
    if args.ext is not None:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = model
        item.service_class_application_information = bytes.fromhex(args.ext)
        negotiation.append(item)

    stored: list[dict[str, str]] = []
    handlers: list[EventHandlerType] = []
    for spec in args.store_context:
        sop_class, _, syntaxes = spec.partition("=")
        ae.add_requested_context(sop_class, syntaxes.split(","))
        negotiation.append(build_role(sop_class, scp_role=True))

    def handle_store(event: Event) -> int:
        ds = event.dataset
        pixels = bytes(ds.PixelData) if "PixelData" in ds else b""
        stored.append(
            {
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "pixel_sha256": hashlib.sha256(pixels).hexdigest(),
            }
        )
        return 0x0000

    handlers.append((evt.EVT_C_STORE, handle_store))

    out: dict[str, Any] = {
        "established": False,
        "acceptor_extended": {},
        "responses": [],
        "stored": stored,
        "final_status": None,
    }
    assoc = ae.associate(
        args.host, args.port, ae_title=args.aec, ext_neg=negotiation or None, evt_handlers=handlers
    )
    if assoc.is_established:
        out["established"] = True
        out["acceptor_extended"] = {
            str(uid): info.hex() for uid, info in assoc.acceptor.sop_class_extended.items()
        }
        query = _identifier(args.level, args.key)
        if args.service == "find":
            answers = assoc.send_c_find(query, model)
        else:
            answers = assoc.send_c_get(query, model)
        for status, identifier in answers:
            value = status.get("Status") if status is not None else None
            code = int(value) if value is not None else None
            out["responses"].append(
                {
                    "status": code,
                    "error_comment": (
                        str(status.ErrorComment)
                        if status is not None and "ErrorComment" in status
                        else None
                    ),
                    "identifier": identifier.to_json_dict() if identifier is not None else None,
                }
            )
            if code is not None and code not in PENDING:
                out["final_status"] = code
        if assoc.is_established:
            assoc.release()
    print(json.dumps(out), flush=True)
    return 0 if out["established"] and out["final_status"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
