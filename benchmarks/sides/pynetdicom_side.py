"""pynetdicom as shipped (no socket tweaks), as SCP or SCU.

    python -m benchmarks.sides.pynetdicom_side scp --port 0 --aet ANY-SCP
    python -m benchmarks.sides.pynetdicom_side scu --port P --aet ANY-SCP \
        --workload assoc-echo -n 300
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from benchmarks.sides._common import Measurement, Stopwatch, main_with, print_ready


def run_scp(args: argparse.Namespace) -> None:
    ae = AE(ae_title=args.aet)
    ae.add_supported_context(Verification)
    server = ae.start_server((args.host, args.port), block=False)
    assert server is not None
    print_ready(int(server.server_address[1]))
    # Serve until SIGTERM/SIGINT; the server runs in pynetdicom's own threads.
    while True:
        signal.pause()


def _make_ae(args: argparse.Namespace) -> AE:
    ae = AE(ae_title=args.calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    return ae


def _associate(ae: AE, args: argparse.Namespace) -> Association:
    assoc = ae.associate(args.host, args.port, ae_title=args.aet)
    if not assoc.is_established:
        raise RuntimeError(f"association to {args.host}:{args.port} not established")
    return assoc


def _echo_ok(assoc: Association) -> bool:
    status = assoc.send_c_echo()
    return bool(status) and int(status.Status) == 0x0000


def _cycle(ae: AE, args: argparse.Namespace) -> bool:
    assoc = _associate(ae, args)
    try:
        return _echo_ok(assoc)
    finally:
        assoc.release()


def run_scu(args: argparse.Namespace) -> Measurement:
    # Warnings and errors of pynetdicom go to stderr, where the runner keeps them.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    ae = _make_ae(args)
    warmup = not args.no_warmup
    if warmup:
        _cycle(ae, args)
    ok = 0
    if args.workload == "assoc-echo":
        watch = Stopwatch()
        try:
            for _ in range(args.n):
                ok += _cycle(ae, args)
        except Exception as exc:
            return watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
        return watch.finish(args.workload, args.n, ok, warmup=warmup)
    if args.workload == "echo-one-assoc":
        assoc = _associate(ae, args)
        try:
            watch = Stopwatch()
            try:
                for _ in range(args.n):
                    ok += _echo_ok(assoc)
            except Exception as exc:
                return watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
            # The release is outside the timed span, as on every side.
            return watch.finish(args.workload, args.n, ok, warmup=warmup)
        finally:
            if assoc.is_established:
                assoc.release()
    raise ValueError(args.workload)  # argparse restricts the choices


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
