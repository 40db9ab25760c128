"""A pynetdicom DIMSE-N SCU (PS3.7 Chapter 10) running a list of steps, run by the interop tests.

Usage: python pynetdicom_n_scu.py --port PORT --steps FILE [--host HOST]
           [--aet CALLING] [--aec CALLED] [--timeout S] [--listen PORT]

FILE holds a JSON list of steps, run in order on one association:
  {"op": "store", "path": FILE}                    C-STORE of a DICOM file
  {"op": "create", "class": UID, "instance": UID | null, "dataset": JSON | null}
  {"op": "set", "class": UID, "instance": UID, "dataset": JSON}
  {"op": "get", "class": UID, "instance": UID, "attributes": [int]}
  {"op": "action", "class": UID, "instance": UID, "type": int, "dataset": JSON | null}
  {"op": "delete", "class": UID, "instance": UID}
  {"op": "echo"}                                    C-ECHO
  {"op": "wait-reports", "count": int, "timeout": s}
  {"op": "release"}
  {"op": "action-then-release", ...as "action"}  N-ACTION, then A-RELEASE at once
(JSON: pydicom's DICOM JSON of a data set; an "instance" of "$created" is
the Affected SOP Instance UID of the last N-CREATE response.) The association proposes the
SOP class of each file (with its own transfer syntax), each class the steps
name and Verification. An N-EVENT-REPORT the peer sends on it is answered
0x0000 and kept (evt.EVT_N_EVENT_REPORT, which pynetdicom runs for a
requestor too). With --listen, an AE also listens on 127.0.0.1:PORT for
reports on new associations; it accepts Storage Commitment proposing only the
SCP role for the requestor (``add_supported_context(scu_role=False,
scp_role=True)``, PS3.4 J.3.3.1.3). "wait-reports" waits (bounded) until
that many reports have come, by either way.

Prints exactly one JSON line:
  {"established": bool,
   "steps": [{"op": str, "status": int | null, "command": {keyword: value} | null,
              "dataset": JSON | null}],
   "reports": [{"via": "association" | "listener", "calling_ae": str,
                "sop_class": str, "sop_instance": str, "event_type": int,
                "roles": {"scu": bool, "scp": bool}, "dataset": JSON}]}
"action-then-release" keeps pynetdicom's reactor paused from the N-ACTION
to the end of the release, so a report the peer sends on the association
meanwhile is never served: pynetdicom ignores P-DATA once its A-RELEASE-RQ
is out (a requestor that went away before any report could come). It uses
pynetdicom's internals (Association._reactor_checkpoint, _is_paused, dimse,
acse), as send_n_action does.

"command" is the response's command set as received (Status, Error ID,
Error Comment, Affected SOP Instance UID, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

COMMITMENT = "1.2.840.10008.1.20.1"
VERIFICATION = "1.2.840.10008.1.1"
COMMAND_KEYWORDS = (
    "Status",
    "MessageIDBeingRespondedTo",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "ActionTypeID",
    "EventTypeID",
    "ErrorComment",
    "ErrorID",
    "OffendingElement",
)


def _dataset(data: dict[str, Any] | None) -> Dataset | None:
    return None if data is None else Dataset.from_json(data)


def _json(dataset: Dataset | None) -> dict[str, Any] | None:
    return None if dataset is None else dataset.to_json_dict()


def action_then_release(assoc: Association, step: dict[str, Any], message_id: int) -> Any:
    """N-ACTION and A-RELEASE with the reactor paused throughout; the N-ACTION-RSP."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        context = assoc._get_valid_context(step["class"], "", "scu")
        syntax = context.transfer_syntax[0]
        request = N_ACTION()
        request.MessageID = message_id
        request.RequestedSOPClassUID = step["class"]
        request.RequestedSOPInstanceUID = step["instance"]
        request.ActionTypeID = step["type"]
        information = _dataset(step.get("dataset"))
        if information is not None:
            encoded = encode(
                information, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            assert encoded is not None
            request.ActionInformation = BytesIO(encoded)
        assoc.dimse.send_msg(request, int(context.context_id or 0))
        _, response = assoc.dimse.get_msg(block=True)
        assoc.acse.negotiate_release()
    finally:
        assoc._reactor_checkpoint.set()
    return response


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNET-SCU")
    parser.add_argument("--aec", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--steps", required=True)
    parser.add_argument("--listen", type=int)
    args = parser.parse_args()
    with open(args.steps) as f:
        steps: list[dict[str, Any]] = json.load(f)

    reports: list[dict[str, Any]] = []
    arrived = threading.Condition()
    responses: list[Dataset] = []

    def handle_report(event: Event) -> tuple[int, Dataset | None]:
        request: Any = event.request
        context = next(
            c for c in event.assoc.accepted_contexts if c.context_id == event.context.context_id
        )
        with arrived:
            reports.append(
                {
                    "via": "listener" if event.assoc.is_acceptor else "association",
                    "calling_ae": event.assoc.requestor.ae_title,
                    "sop_class": str(request.AffectedSOPClassUID),
                    "sop_instance": str(request.AffectedSOPInstanceUID),
                    "event_type": event.event_type,
                    "roles": {"scu": bool(context.as_scu), "scp": bool(context.as_scp)},
                    "dataset": _json(event.event_information),
                }
            )
            arrived.notify_all()
        return 0x0000, None

    def handle_received(event: Event) -> None:
        # The response's command set as it came (pynetdicom's send_n_create
        # does not return the Affected SOP Instance UID of its response).
        command = event.message.command_set
        if int(command.CommandField) & 0x8000:  # a response, not the peer's request
            responses.append(command)

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    proposed: set[tuple[str, str | None]] = set()
    for step in steps:
        if step["op"] == "store":
            meta = pydicom.dcmread(step["path"], stop_before_pixels=True).file_meta
            proposed.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        elif "class" in step:
            proposed.add((step["class"], None))
    proposed.add((VERIFICATION, None))
    for sop_class, syntax in sorted(proposed, key=str):
        if syntax is None:
            ae.add_requested_context(sop_class)
        else:
            ae.add_requested_context(sop_class, [syntax])

    server = None
    if args.listen is not None:
        ae.add_supported_context(COMMITMENT, scu_role=False, scp_role=True)
        server = ae.start_server(
            ("127.0.0.1", args.listen),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle_report)],
        )

    out: dict[str, Any] = {"established": False, "steps": [], "reports": reports}
    try:
        assoc = ae.associate(
            args.host,
            args.port,
            ae_title=args.aec,
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, handle_report),
                (evt.EVT_DIMSE_RECV, handle_received),
            ],
        )
        out["established"] = bool(assoc.is_established)
        created: str | None = None
        for message_id, step in enumerate(steps if assoc.is_established else [], start=1):
            op = step["op"]
            if not assoc.is_established and op not in ("wait-reports", "release"):
                # Say what ended it, instead of pynetdicom's RuntimeError.
                out["ended"] = {
                    "before_step": op,
                    "aborted": bool(assoc.is_aborted),
                    "released": bool(assoc.is_released),
                }
                break
            if step.get("instance") == "$created":
                step = {**step, "instance": created}
            responses.clear()
            status: Dataset | None = None
            data: Dataset | None = None
            if op == "store":
                status = assoc.send_c_store(step["path"], msg_id=message_id)
            elif op == "create":
                status, data = assoc.send_n_create(
                    _dataset(step.get("dataset")),
                    step["class"],
                    step.get("instance"),
                    msg_id=message_id,
                )
            elif op == "set":
                status, data = assoc.send_n_set(
                    Dataset.from_json(step["dataset"]),
                    step["class"],
                    step["instance"],
                    msg_id=message_id,
                )
            elif op == "get":
                status, data = assoc.send_n_get(
                    step.get("attributes") or [], step["class"], step["instance"], msg_id=message_id
                )
            elif op == "action":
                status, data = assoc.send_n_action(
                    _dataset(step.get("dataset")),
                    step["type"],
                    step["class"],
                    step["instance"],
                    msg_id=message_id,
                )
            elif op == "action-then-release":
                response = action_then_release(assoc, step, message_id)
                status = Dataset()
                if response is not None:
                    status.Status = response.Status
            elif op == "delete":
                status = assoc.send_n_delete(step["class"], step["instance"], msg_id=message_id)
            elif op == "echo":
                status = assoc.send_c_echo(msg_id=message_id)
            elif op == "wait-reports":
                deadline = time.monotonic() + float(step["timeout"])
                with arrived:
                    while len(reports) < step["count"] and time.monotonic() < deadline:
                        arrived.wait(0.05)
            elif op == "release":
                if assoc.is_established:
                    assoc.release()
            else:
                raise ValueError(f"unknown step {op!r}")
            command = None
            if responses:
                got = responses[-1]
                if op == "create" and "AffectedSOPInstanceUID" in got:
                    created = str(got.AffectedSOPInstanceUID)
                command = {
                    k: (int(got[k].value) if isinstance(got[k].value, int) else str(got[k].value))
                    for k in COMMAND_KEYWORDS
                    if k in got
                }
            out["steps"].append(
                {
                    "op": op,
                    "status": int(status.Status) if status is not None and "Status" in status
                    else None,
                    "command": command,
                    "dataset": _json(data),
                }
            )  # fmt: skip
        if assoc.is_established:
            assoc.release()
    finally:
        if server is not None:
            server.shutdown()
    with arrived:
        print(json.dumps(out), flush=True)
    return 0 if out["established"] else 1


if __name__ == "__main__":
    sys.exit(main())
