"""A pynetdicom C-FIND SCP that answers extended negotiation (PS3.4 C.5), run by the interop tests.

Usage: python pynetdicom_relational_scp.py --port PORT [--host HOST] [--aet AET]
           [--answer HEXBYTES]

Accepts the Patient Root and Study Root Find SOP classes. Every SOP Class
Extended Negotiation sub-item it receives is printed; with --answer each is
answered with HEXBYTES as its service-class-application-information (pynetdicom's
EVT_SOP_EXTENDED handler), without it none is answered (the handler returns
nothing, as when none is bound). Every C-FIND identifier it receives is printed,
and answered with one match: the identifier with its empty UIDs filled in
(1.2.3.N), then Success. Output, one JSON object a line:
  {"event": "extended", "app_info": {sop_class: hex}}
  {"event": "find", "sop_class": str, "identifier": <DICOM JSON>}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

FIND_CLASSES = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")


def _print(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM-SCP")
    parser.add_argument("--answer")
    args = parser.parse_args()

    def handle_extended(event: Event) -> dict[str, bytes]:
        app_info: dict[str, bytes] = event.app_info  # type: ignore[attr-defined]
        _print({"event": "extended", "app_info": {str(k): v.hex() for k, v in app_info.items()}})
        if args.answer is None:
            return {}
        return {uid: bytes.fromhex(args.answer) for uid in app_info}

    def handle_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        identifier = event.identifier
        _print(
            {
                "event": "find",
                "sop_class": str(event.request.AffectedSOPClassUID),
                "identifier": identifier.to_json_dict(),
            }
        )
        match = Dataset()
        for number, element in enumerate(identifier, start=1):
            value = element.value
            if element.VR == "UI" and not value:
                value = f"1.2.3.{number}"
            match.add_new(element.tag, element.VR, value)
        yield 0xFF00, match
        yield 0x0000, None

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for uid in FIND_CLASSES:
        ae.add_supported_context(uid)
    ae.start_server(
        (args.host, args.port),
        block=True,
        evt_handlers=[(evt.EVT_SOP_EXTENDED, handle_extended), (evt.EVT_C_FIND, handle_find)],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
