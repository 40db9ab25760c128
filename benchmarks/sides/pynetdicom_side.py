"""pynetdicom as shipped (no socket tweaks, default PDU size and config), as SCP or SCU.

    python -m benchmarks.sides.pynetdicom_side scp --port 0 --aet ANY-SCP [--store-dir DIR]
    python -m benchmarks.sides.pynetdicom_side scu --port P --aet ANY-SCP \
        --workload assoc-echo -n 300

The SCP answers C-STORE with the handler pynetdicom's documentation shows:
write ``event.encoded_dataset()`` (preamble, file meta and the data set as
received, not decoded) to one file per instance. The SCU opens one association
and calls ``send_c_store(path)`` for each file in turn; as shipped
(``_config.STORE_SEND_CHUNKED_DATASET`` off) that reads each file with dcmread
and encodes it again for sending.

pynetdicom leaves Nagle's algorithm on. A C-STORE is at least two PDUs (the
command, then the data set, each one send()), and a data-set PDU shorter than
the loopback MSS (64 KiB) waits for the ACK of the command, which Linux delays
by ~40 ms: ~20 instances/s of 42 KB. That is how pynetdicom ships, so it is
what the benchmark measures. For comparison only, the environment variable
``BENCH_PYNETDICOM_NODELAY=1`` (the runner's --pynetdicom-nodelay) sets
TCP_NODELAY on every socket pynetdicom wraps.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from benchmarks.sides._common import (
    Measurement,
    ScpClock,
    Stopwatch,
    difference,
    main_with,
    print_ready,
    store_files,
    total_bytes,
)

NODELAY_ENV = "BENCH_PYNETDICOM_NODELAY"


def _set_nodelay_on_every_socket() -> None:
    """Not pynetdicom as shipped: for --pynetdicom-nodelay comparisons only."""
    original = AssociationSocket.__init__

    def init(self: AssociationSocket, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.socket is not None:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    AssociationSocket.__init__ = init  # type: ignore[method-assign]


if os.environ.get(NODELAY_ENV) == "1":
    _set_nodelay_on_every_socket()


def _store_handler(store_dir: Path) -> Callable[[Event], int]:
    def handle_store(event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        uid = request.AffectedSOPInstanceUID
        with (store_dir / f"{uid}.dcm").open("wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000

    return handle_store


def run_scp(args: argparse.Namespace) -> None:
    ae = AE(ae_title=args.aet)
    ae.add_supported_context(Verification)
    handlers: list[EventHandlerType] = []
    if args.store_dir is not None:
        args.store_dir.mkdir(parents=True, exist_ok=True)
        # pynetdicom's own storescp app supports every storage SOP class alike.
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax)
        handlers.append((evt.EVT_C_STORE, _store_handler(args.store_dir)))
    server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers)
    assert server is not None
    print_ready(int(server.server_address[1]))
    # Serve until SIGTERM/SIGINT; the server runs in pynetdicom's own threads.
    while True:
        signal.pause()


def _make_ae(args: argparse.Namespace, sop_classes: list[UID] | None = None) -> AE:
    ae = AE(ae_title=args.calling_aet)
    ae.add_requested_context(Verification)
    for sop_class in sop_classes or []:
        # The files' own transfer syntax first, so no SCP makes the SCU convert.
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
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


def _store_ok(assoc: Association, path: Path) -> bool:
    status = assoc.send_c_store(path)
    return bool(status) and int(status.Status) == 0x0000


def _cycle(ae: AE, args: argparse.Namespace) -> bool:
    assoc = _associate(ae, args)
    try:
        return _echo_ok(assoc)
    finally:
        assoc.release()


def _store(ae: AE, args: argparse.Namespace, paths: list[Path], warmup: bool) -> Measurement:
    """Associate, C-STORE every file in turn, release: all inside the timed span."""
    ok = 0
    watch = Stopwatch()
    try:
        assoc = _associate(ae, args)
        try:
            for path in paths:
                if not _store_ok(assoc, path):
                    raise RuntimeError(f"C-STORE of {path} failed")
                ok += 1
        finally:
            if assoc.is_established:
                assoc.release()
    except Exception as exc:
        return watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
    return watch.finish(args.workload, args.n, ok, warmup=warmup, nbytes=total_bytes(paths))


def _timed(ae: AE, args: argparse.Namespace, warmup: bool) -> Measurement:
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


def run_scu(args: argparse.Namespace) -> Measurement:
    # Warnings and errors of pynetdicom go to stderr, where the runner keeps them.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    warmup = not args.no_warmup
    clock = ScpClock(args.scp_clock)
    if args.workload.startswith("store"):
        paths, warmups = store_files(args)
        sop_classes = sorted({UID(read_file_meta_info(p).MediaStorageSOPClassUID) for p in paths})
        ae = _make_ae(args, sop_classes)
        if warmup:
            assoc = _associate(ae, args)
            try:
                if not _store_ok(assoc, warmups[0]):
                    raise RuntimeError("warm-up C-STORE failed")
            finally:
                assoc.release()
        scp0 = clock.read("begin")
        m = _store(ae, args, paths, warmup)
        m.extra["timed_span"] = "associate, N x send_c_store(path), release"
        m.extra["warmup_instances"] = 1 if warmup else 0
    else:
        ae = _make_ae(args)
        if warmup:
            _cycle(ae, args)
        scp0 = clock.read("begin")
        m = _timed(ae, args, warmup)
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    return m


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
