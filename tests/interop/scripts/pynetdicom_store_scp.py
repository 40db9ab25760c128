"""A pynetdicom Storage SCP, run as a peer process by the interop tests.

Usage: python pynetdicom_store_scp.py --port PORT --output-directory DIR
           [--host 127.0.0.1] [--aet TITLE] [--transfer-syntax UID]...

Accepts Verification and every storage SOP class pynetdicom knows, with every
transfer syntax pynetdicom knows (compressed ones included), or only the
--transfer-syntax ones when given. Each received data set is written exactly
as it came off the wire (no decoding, no re-encoding), after a preamble and
file meta information, to DIR/<Affected SOP Instance UID>.dcm: first under a
temporary name, then renamed, before the success status goes back.
Serves until killed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--output-directory", type=Path, required=True)
    parser.add_argument("--transfer-syntax", action="append", default=[])
    args = parser.parse_args()
    out_dir: Path = args.output_directory
    syntaxes = args.transfer_syntax or list(ALL_TRANSFER_SYNTAXES)

    def handle_store(event: Event) -> int:
        assert isinstance(event.request, C_STORE)  # bound to EVT_C_STORE only
        uid = str(event.request.AffectedSOPInstanceUID)
        final = out_dir / f"{uid}.dcm"
        partial = out_dir / f".{uid}.partial"
        partial.write_bytes(event.encoded_dataset(include_meta=True))
        os.replace(partial, final)
        return 0x0000

    ae = AE(ae_title=args.aet)
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None  # pynetdicom builds each with one
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    print(f"pynetdicom store scp: AE {args.aet!r} on {args.host}:{args.port}", flush=True)
    ae.start_server(
        (args.host, args.port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
