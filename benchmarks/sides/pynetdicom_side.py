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

Query/retrieve SCU (Study Root; the SCP is an archive holding the data set):
find-1000 is ``send_c_find`` at IMAGE level over the series; get-1000 is
getscu-style code (the Study Root Get context, the storage contexts of
``StoragePresentationContexts`` each with the SCP role, an ``EVT_C_STORE``
handler writing ``event.encoded_dataset()`` to a file) and ``send_c_get``;
move-1000 is ``send_c_move``. Each opens its own association and releases
it, inside the timed span. The storage contexts propose explicit VR little
endian first (the files' syntax, as adicom's C-GET does), not pynetdicom's
default implicit-first: else an SCP would convert every instance.

As SCP, ``--max-associations`` raises ``AE.maximum_associations`` and
``--idle-timeout`` sets ``AE.network_timeout`` (idle-500).
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

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (
    AE,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import _UI
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationSocket

from benchmarks.data import SeriesKeys
from benchmarks.sides._common import (
    WORKLOADS,
    Measurement,
    ScpClock,
    Stopwatch,
    difference,
    main_with,
    print_ready,
    qr_keys,
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
    if args.max_associations is not None:
        ae.maximum_associations = args.max_associations
    if args.idle_timeout is not None:
        ae.network_timeout = args.idle_timeout
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


# --------------------------------------------------------------------------- query/retrieve

PENDING = (0xFF00, 0xFF01)


def _image_query(keys: SeriesKeys, sop_instance_uid: str = "") -> Dataset:
    """Study Root, IMAGE level: the series' instances (or one), SOP Instance UID returned."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = keys.study_instance_uid
    identifier.SeriesInstanceUID = keys.series_instance_uid
    identifier.SOPInstanceUID = sop_instance_uid
    return identifier


def _retrieve_query(keys: SeriesKeys, single: bool) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE" if single else "SERIES"
    identifier.StudyInstanceUID = keys.study_instance_uid
    identifier.SeriesInstanceUID = keys.series_instance_uid
    if single:
        identifier.SOPInstanceUID = keys.first_sop_instance_uid
    return identifier


def _qr_ae(args: argparse.Namespace) -> tuple[AE, list[_UI]]:
    """The AE and extended negotiation for the workload, as pynetdicom's apps set them up."""
    ae = AE(ae_title=args.calling_aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    roles: list[_UI] = []
    if args.workload == "find-1000":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    elif args.workload == "move-1000":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    else:  # get-1000, like pynetdicom's getscu app
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for cx in StoragePresentationContexts[:127]:
            assert cx.abstract_syntax is not None
            ae.add_requested_context(
                cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
            roles.append(build_role(cx.abstract_syntax, scp_role=True))
    return ae, roles


def _completed(final: Dataset | None, expected: int) -> int:
    """Completed sub-operations of a retrieve's final status; raises if it failed."""
    if final is None or "Status" not in final:
        raise RuntimeError("the retrieve ended without a final status")
    status = int(final.Status)
    completed = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    if status != 0x0000 or failed or completed != expected:
        raise RuntimeError(
            f"retrieve: status 0x{status:04X}, {completed} completed, {failed} failed,"
            f" {expected} expected"
        )
    return completed


def _qr_once(
    ae: AE,
    roles: list[_UI],
    args: argparse.Namespace,
    keys: SeriesKeys,
    single: bool,
) -> int:
    """Associate, run the workload's operation (whole series or first instance), release."""
    expected = 1 if single else args.n
    handlers: list[EventHandlerType] = []
    if args.workload == "get-1000":
        out = args.out_dir / ("warmup" if single else "timed")
        out.mkdir(parents=True, exist_ok=True)
        handlers.append((evt.EVT_C_STORE, _store_handler(out)))
    assoc = ae.associate(
        args.host, args.port, ae_title=args.aet, ext_neg=roles or None, evt_handlers=handlers
    )
    if not assoc.is_established:
        raise RuntimeError(f"association to {args.host}:{args.port} not established")
    try:
        if args.workload == "find-1000":
            uids: set[str] = set()
            final = None
            query = _image_query(keys, keys.first_sop_instance_uid if single else "")
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                if status and int(status.Status) in PENDING and identifier is not None:
                    uids.add(str(identifier.SOPInstanceUID))
                else:
                    final = status
            if not final or int(final.Status) != 0x0000 or len(uids) != expected:
                code = int(final.Status) if final else -1
                raise RuntimeError(f"C-FIND: status {code}, {len(uids)} matches, {expected} wanted")
            return len(uids)
        if args.workload == "get-1000":
            responses = assoc.send_c_get(
                _retrieve_query(keys, single), StudyRootQueryRetrieveInformationModelGet
            )
        else:
            responses = assoc.send_c_move(
                _retrieve_query(keys, single),
                args.move_dest,
                StudyRootQueryRetrieveInformationModelMove,
            )
        final = None
        for status, _identifier in responses:
            if not status or int(status.Status) not in PENDING:
                final = status
        return _completed(final, expected)
    finally:
        if assoc.is_established:
            assoc.release()


def _qr(args: argparse.Namespace) -> Measurement:
    warmup = not args.no_warmup
    keys = qr_keys(args)
    ae, roles = _qr_ae(args)
    if warmup:
        _qr_once(ae, roles, args, keys, single=True)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    watch = Stopwatch()
    try:
        ok = _qr_once(ae, roles, args, keys, single=False)
    except Exception as exc:
        m = watch.finish(args.workload, args.n, 0, warmup=warmup, error=exc)
    else:
        m = watch.finish(args.workload, args.n, ok, warmup=warmup)
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    m.extra["timed_span"] = {
        "find-1000": "associate, send_c_find (IMAGE level), release",
        "get-1000": "associate (getscu-style contexts and roles), send_c_get, release;"
        " EVT_C_STORE writes event.encoded_dataset() to a file",
        "move-1000": "associate, send_c_move, release",
    }[args.workload]
    return m


def run_scu(args: argparse.Namespace) -> Measurement:
    # Warnings and errors of pynetdicom go to stderr, where the runner keeps them.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    if WORKLOADS[args.workload] == "qr":
        return _qr(args)
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
