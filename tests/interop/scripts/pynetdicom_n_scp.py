"""A pynetdicom DIMSE-N SCP (PS3.7 Chapter 10), run by the interop tests.

Usage: python pynetdicom_n_scp.py --port PORT [--host HOST] [--aet AET]
           [--hold UID]... [--report same|new|after-release|none]
           [--report-to AET=HOST:PORT] [--report-event-type N]

Accepts Modality Performed Procedure Step, Storage Commitment Push Model and
Basic Film Session (for N-ACTION and N-DELETE on an instance), each with
pynetdicom's default transfer syntaxes, and keeps the instances it is given
in memory:

- N-CREATE makes an instance (its UID from the request, else a new one);
  0x0111 for a UID it has; an MPPS not created "IN PROGRESS" is 0x0106;
- N-SET changes one: 0x0112 for an unknown one, and for an MPPS no longer
  "IN PROGRESS" 0x0110 with Error ID 0xA710 (PS3.4 Table F.7.2-2); the
  response carries the modifications;
- N-GET answers the attributes asked for (all without a list); 0x0112 unknown;
- N-DELETE removes one; 0x0112 unknown;
- N-ACTION on a Basic Film Session: action type 1 answers an Action Reply
  naming the action and instance; another type is 0x0123; unknown 0x0112;
- N-ACTION on Storage Commitment (action type 1, else 0x0123): answered
  0x0000, then the result is reported with N-EVENT-REPORT (event type 1, or
  2 with each instance not held failed 0x0112): on the same association
  (``same``: from a thread, since pynetdicom's handlers run in the
  association's reactor thread and ``send_n_event_report`` pauses it), on a
  new association to --report-to proposing the SCP role (``new``), on one
  once the requesting association has ended (``after-release``), or not
  at all (``none``). Instances held: the --hold UIDs. --report-event-type
  sends that Event Type ID instead of the right one (a malformed report);
- N-EVENT-REPORT: event type 1 is answered 0x0000 with an Event Reply
  copying the Event Information; another type is 0x0113.

Failures carry an Error Comment. Output, one JSON object a line, flushed:
  {"event": "N-CREATE" | ..., "calling_ae", "sop_class", "sop_instance",
   "message_id", "action_type", "event_type", "attributes": [int] | null,
   "dataset": <DICOM JSON> | null, "status": int}
  {"event": "report", "via": "same" | "new" | "after-release",
   "roles": {"scu": bool, "scp": bool} | null, "established": bool, "released": bool,
   "status": int | null, "event_type": int, "transaction_uid": str}
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event

MPPS = "1.2.840.10008.3.1.2.3.3"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
REPORT_TIMEOUT = 20.0

_print_lock = threading.Lock()


def _print(line: dict[str, Any]) -> None:
    with _print_lock:
        print(json.dumps(line), flush=True)


def _failure(status: int, comment: str, error_id: int | None = None) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:64]
    if error_id is not None:
        answer.ErrorID = error_id
    return answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM-N")
    parser.add_argument("--hold", action="append", default=[])
    parser.add_argument(
        "--report", choices=["same", "new", "after-release", "none"], default="same"
    )
    parser.add_argument("--report-to")
    parser.add_argument("--report-event-type", type=int)
    args = parser.parse_args()

    instances: dict[tuple[str, str], Dataset] = {}
    lock = threading.Lock()

    def log(event: Event, name: str, status: int, dataset: Dataset | None, **extra: Any) -> None:
        request: Any = event.request
        sop_class = getattr(request, "AffectedSOPClassUID", None) or getattr(
            request, "RequestedSOPClassUID", None
        )
        sop_instance = getattr(request, "AffectedSOPInstanceUID", None) or getattr(
            request, "RequestedSOPInstanceUID", None
        )
        _print(
            {
                "event": name,
                "calling_ae": event.assoc.requestor.ae_title,
                "sop_class": str(sop_class) if sop_class else None,
                "sop_instance": str(sop_instance) if sop_instance else None,
                "message_id": request.MessageID,
                "dataset": dataset.to_json_dict() if dataset is not None else None,
                "status": status,
                **extra,
            }
        )

    def handle_create(event: Event) -> tuple[int | Dataset, Dataset | None]:
        request: Any = event.request
        sop_class = str(request.AffectedSOPClassUID)
        attributes = event.attribute_list
        given = request.AffectedSOPInstanceUID
        uid = str(given) if given else str(generate_uid())
        answer: int | Dataset
        reply: Dataset | None = None
        with lock:
            if (sop_class, uid) in instances:
                answer = _failure(0x0111, f"{uid} exists already")
            elif sop_class == MPPS and attributes.get("PerformedProcedureStepStatus") != (
                "IN PROGRESS"
            ):
                answer = _failure(0x0106, "an MPPS is created IN PROGRESS")
            else:
                kept = Dataset()
                kept.update(attributes)
                instances[(sop_class, uid)] = kept
                answer = 0x0000
                reply = Dataset()
                reply.update(kept)
                if not given:
                    # pynetdicom takes the new UID from here into the response.
                    reply.AffectedSOPInstanceUID = uid
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-CREATE", status, attributes, created=uid if status == 0 else None)
        return answer, reply

    def handle_set(event: Event) -> tuple[int | Dataset, Dataset | None]:
        request: Any = event.request
        key = (str(request.RequestedSOPClassUID), str(request.RequestedSOPInstanceUID))
        changes = event.modification_list
        answer: int | Dataset
        reply: Dataset | None = None
        with lock:
            held = instances.get(key)
            if held is None:
                answer = _failure(0x0112, f"no instance {key[1]}")
            elif key[0] == MPPS and held.get("PerformedProcedureStepStatus") != "IN PROGRESS":
                answer = _failure(
                    0x0110, "Performed Procedure Step Object may no longer be updated", 0xA710
                )
            else:
                held.update(changes)
                answer = 0x0000
                reply = Dataset()
                reply.update(changes)
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-SET", status, changes)
        return answer, reply

    def handle_get(event: Event) -> tuple[int | Dataset, Dataset | None]:
        request: Any = event.request
        key = (str(request.RequestedSOPClassUID), str(request.RequestedSOPInstanceUID))
        wanted = [int(tag) for tag in event.attribute_identifiers]
        answer: int | Dataset
        reply: Dataset | None = None
        with lock:
            held = instances.get(key)
            if held is None:
                answer = _failure(0x0112, f"no instance {key[1]}")
            else:
                answer = 0x0000
                reply = Dataset()
                for element in held:
                    if not wanted or int(element.tag) in wanted:
                        reply.add(element)
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-GET", status, None, attributes=wanted)
        return answer, reply

    def handle_delete(event: Event) -> int | Dataset:
        request: Any = event.request
        key = (str(request.RequestedSOPClassUID), str(request.RequestedSOPInstanceUID))
        with lock:
            gone = instances.pop(key, None)
        answer: int | Dataset = 0x0000 if gone is not None else _failure(0x0112, "no instance")
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-DELETE", status, None)
        return answer

    def handle_event_report(event: Event) -> tuple[int | Dataset, Dataset | None]:
        information = event.event_information
        answer: int | Dataset = 0x0000
        reply: Dataset | None = None
        if event.event_type == 1:
            reply = Dataset()
            reply.update(information)
        else:
            answer = _failure(0x0113, f"no event type {event.event_type}")
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-EVENT-REPORT", status, information, event_type=event.event_type)
        return answer, reply

    def handle_action(event: Event) -> tuple[int | Dataset, Dataset | None]:
        request: Any = event.request
        sop_class = str(request.RequestedSOPClassUID)
        uid = str(request.RequestedSOPInstanceUID)
        information = event.action_information if request.ActionInformation is not None else None
        answer: int | Dataset = 0x0000
        reply: Dataset | None = None
        if event.action_type != 1:
            answer = _failure(0x0123, f"no action type {event.action_type}")
        elif sop_class == COMMITMENT:
            if uid != COMMITMENT_INSTANCE:
                answer = _failure(0x0112, "not the Storage Commitment instance")
            elif information is None or "TransactionUID" not in information:
                answer = _failure(0x0120, "no Transaction UID")
            elif args.report != "none":
                thread = threading.Thread(
                    target=report, args=(event.assoc, information), daemon=True
                )
                thread.start()
        else:
            with lock:
                known = (sop_class, uid) in instances
            if not known:
                answer = _failure(0x0112, f"no instance {uid}")
            else:
                reply = Dataset()
                reply.TextValue = f"action {event.action_type} on {uid}"
        status = answer if isinstance(answer, int) else int(answer.Status)
        log(event, "N-ACTION", status, information, action_type=event.action_type)
        return answer, reply

    def result(information: Dataset) -> tuple[int, Dataset]:
        outcome = Dataset()
        outcome.TransactionUID = information.TransactionUID
        outcome.RetrieveAETitle = args.aet
        committed, failed = [], []
        for item in information.get("ReferencedSOPSequence") or []:
            reference = Dataset()
            reference.ReferencedSOPClassUID = item.ReferencedSOPClassUID
            reference.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
            if str(item.ReferencedSOPInstanceUID) in args.hold:
                committed.append(reference)
            else:
                reference.FailureReason = 0x0112
                failed.append(reference)
        if committed:
            outcome.ReferencedSOPSequence = committed
        if failed:
            outcome.FailedSOPSequence = failed
        if args.report_event_type is not None:
            return args.report_event_type, outcome
        return (2 if failed else 1), outcome

    def report(assoc: Any, information: Dataset) -> None:
        event_type, outcome = result(information)
        line: dict[str, Any] = {
            "event": "report",
            "via": args.report,
            "roles": None,
            "established": False,
            "released": False,
            "status": None,
            "event_type": event_type,
            "transaction_uid": str(information.TransactionUID),
        }
        try:
            if args.report == "same":
                line["established"] = bool(assoc.is_established)
                status, _ = assoc.send_n_event_report(
                    outcome, event_type, COMMITMENT, COMMITMENT_INSTANCE
                )
                line["status"] = int(status.Status) if "Status" in status else None
                return
            if args.report == "after-release":
                deadline = time.monotonic() + REPORT_TIMEOUT
                while assoc.is_established and time.monotonic() < deadline:
                    time.sleep(0.01)
            called, _, address = (args.report_to or "").partition("=")
            host, _, port = address.rpartition(":")
            reporter = AE(ae_title=args.aet)
            reporter.acse_timeout = reporter.dimse_timeout = reporter.network_timeout = 20
            reporter.add_requested_context(COMMITMENT)
            # PS3.4 J.3.3.1.3: the SCP proposes the SCP role (and not the SCU role).
            role = build_role(COMMITMENT, scu_role=False, scp_role=True)
            outgoing = reporter.associate(host, int(port), ae_title=called, ext_neg=[role])
            if not outgoing.is_established:
                return
            line["established"] = True
            context = outgoing.accepted_contexts[0]
            line["roles"] = {"scu": bool(context.as_scu), "scp": bool(context.as_scp)}
            status, _ = outgoing.send_n_event_report(
                outcome, event_type, COMMITMENT, COMMITMENT_INSTANCE
            )
            line["status"] = int(status.Status) if "Status" in status else None
            if outgoing.is_established:
                outgoing.release()
                line["released"] = bool(outgoing.is_released)
        finally:
            _print(line)

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in (MPPS, COMMITMENT, FILM_SESSION):
        ae.add_supported_context(uid)
    ae.start_server(
        (args.host, args.port),
        block=True,
        evt_handlers=[
            (evt.EVT_N_CREATE, handle_create),
            (evt.EVT_N_SET, handle_set),
            (evt.EVT_N_GET, handle_get),
            (evt.EVT_N_DELETE, handle_delete),
            (evt.EVT_N_ACTION, handle_action),
            (evt.EVT_N_EVENT_REPORT, handle_event_report),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
