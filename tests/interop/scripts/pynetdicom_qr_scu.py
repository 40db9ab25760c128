"""A pynetdicom query/retrieve SCU (C-FIND, C-GET, C-MOVE), run as a peer by the interop tests.

Usage: python pynetdicom_qr_scu.py {find,get,move} --port PORT [--host HOST]
           [--aet CALLING] [--aec CALLED] [--timeout S] [--model study|patient]
           --level LEVEL [-k KEYWORD[=VALUE]]...
           [--output-directory DIR] [--store-context SOPCLASS=TS[,TS...]]...  (get)
           [--move-dest AET]                                                  (move)

The identifier holds Query/Retrieve Level LEVEL and each -k key (a keyword
alone: an empty value, a return key). One association, one request.

get: proposes, besides the Get model, one storage context per
--store-context with exactly the transfer syntaxes given, each with an SCP/SCU
role selection asking for the SCP role (pynetdicom's build_role). Each
instance that comes back is written as received (no decoding) after a
preamble and file meta to DIR/<SOP Instance UID>.dcm, then answered 0x0000.

Prints exactly one JSON line:
  {"established": bool, "rejected": {...} | null, "aborted": bool,
   "responses": [{"status": int | null, "remaining": int | null,
                  "completed": ..., "failed": ..., "warning": ...,
                  "error_comment": str | null,
                  "identifier": <DICOM JSON> | null}],
   "stored": [{"sop_instance_uid": str, "sop_class_uid": str,
               "transfer_syntax": str, "path": str}],
   "final_status": int | null}
Exit status 0 when the association was established and a final (non-pending)
response came; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

MODELS = {
    ("find", "study"): StudyRootQueryRetrieveInformationModelFind,
    ("find", "patient"): PatientRootQueryRetrieveInformationModelFind,
    ("get", "study"): StudyRootQueryRetrieveInformationModelGet,
    ("get", "patient"): PatientRootQueryRetrieveInformationModelGet,
    ("move", "study"): StudyRootQueryRetrieveInformationModelMove,
    ("move", "patient"): PatientRootQueryRetrieveInformationModelMove,
}
PENDING = (0xFF00, 0xFF01)


def _identifier(level: str, keys: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in keys:
        keyword, _, value = key.partition("=")
        setattr(ds, keyword, value)
    return ds


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("service", choices=["find", "get", "move"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--model", choices=["study", "patient"], default="study")
    parser.add_argument("--level", required=True)
    parser.add_argument("-k", "--key", action="append", default=[])
    parser.add_argument("--output-directory", type=Path)
    parser.add_argument("--store-context", action="append", default=[])
    parser.add_argument("--move-dest")
    args = parser.parse_args()

    model = MODELS[(args.service, args.model)]
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    ae.add_requested_context(model)

    scp_role_classes: list[str] = []
    stored: list[dict[str, str]] = []
    handlers: list[EventHandlerType] = []
    if args.service == "get":
        if args.output_directory is None:
            parser.error("get needs --output-directory")
        out_dir: Path = args.output_directory
        for spec in args.store_context:
            sop_class, _, syntaxes = spec.partition("=")
            ae.add_requested_context(sop_class, syntaxes.split(","))
            scp_role_classes.append(sop_class)

        def handle_store(event: Event) -> int:
            assert isinstance(event.request, C_STORE)  # bound to EVT_C_STORE only
            uid = str(event.request.AffectedSOPInstanceUID)
            final = out_dir / f"{uid}.dcm"
            partial = out_dir / f".{uid}.partial"
            partial.write_bytes(event.encoded_dataset(include_meta=True))
            os.replace(partial, final)
            stored.append(
                {
                    "sop_instance_uid": uid,
                    "sop_class_uid": str(event.request.AffectedSOPClassUID),
                    "transfer_syntax": str(event.context.transfer_syntax),
                    "path": str(final),
                }
            )
            return 0x0000

        handlers.append((evt.EVT_C_STORE, handle_store))
    elif args.service == "move" and not args.move_dest:
        parser.error("move needs --move-dest")

    out: dict[str, Any] = {
        "established": False,
        "rejected": None,
        "aborted": False,
        "responses": [],
        "stored": stored,
        "final_status": None,
    }
    query = _identifier(args.level, args.key)
    # The role list is built in the call: associate() wants a list of its whole
    # union of negotiation items, and a list built elsewhere would be narrower.
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.aec,
        ext_neg=[build_role(uid, scp_role=True) for uid in scp_role_classes] or None,
        evt_handlers=handlers,
    )
    responses: list[dict[str, Any]] = []
    if assoc.is_established:
        out["established"] = True
        if args.service == "find":
            answers = assoc.send_c_find(query, model)
        elif args.service == "get":
            answers = assoc.send_c_get(query, model)
        else:
            answers = assoc.send_c_move(query, args.move_dest, model)
        for status, identifier in answers:
            value = status.get("Status") if status is not None else None
            code = int(value) if value is not None else None
            responses.append(
                {
                    "status": code,
                    "remaining": _int(status, "NumberOfRemainingSuboperations"),
                    "completed": _int(status, "NumberOfCompletedSuboperations"),
                    "failed": _int(status, "NumberOfFailedSuboperations"),
                    "warning": _int(status, "NumberOfWarningSuboperations"),
                    "error_comment": (
                        str(status.ErrorComment) if "ErrorComment" in status else None
                    ),
                    "identifier": identifier.to_json_dict() if identifier is not None else None,
                }
            )
            if code is not None and code not in PENDING:
                out["final_status"] = code
        if assoc.is_established:
            assoc.release()
    elif assoc.is_rejected:
        rj = assoc.acceptor.primitive
        assert rj is not None
        out["rejected"] = {"result": rj.result, "source": rj.result_source, "reason": rj.diagnostic}
    out["aborted"] = bool(assoc.is_aborted)
    out["responses"] = responses
    print(json.dumps(out), flush=True)
    return 0 if out["established"] and out["final_status"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
