"""The calls benchmark's pynetdicom SCU, as its users call it (pynetdicom as shipped).

    python -m benchmarks.calls.pynetdicom_scu --port P --aet AET --workload find-calls \
        --mode per-call -n 100 --studies-dir DIR

Modes (one process per repetition):

- ``per-call``: ``ae.associate()``, one ``send_c_find`` (or ``send_c_store(path)``),
  ``release()``: N times, as a script that makes one call per function does.
- ``one-assoc``: ``ae.associate()`` once, N calls on it, ``release()``: the
  fairest comparison with adicom's pool. Set-up and release are in the span.

The C-FIND identifier is the one ``adicom.StudyQuery(study_instance_uid=uid)``
sends (STUDY level, the same return keys); one match expected, that study.
The storage context proposes explicit VR little endian first (the files'
syntax), then implicit. Nagle's algorithm stays on as shipped, unless the
runner's --pynetdicom-nodelay sets BENCH_PYNETDICOM_NODELAY=1 (see
``benchmarks.sides.pynetdicom_side``). Warm-up (untimed): one call of the
same kind on an association of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from benchmarks.calls.rows import ROWS
from benchmarks.calls.scu import Latencies, finish, parse, store_paths
from benchmarks.calls.studies import study_uids

# Imported for its effect too: with BENCH_PYNETDICOM_NODELAY=1 it sets TCP_NODELAY
# on every socket pynetdicom opens (--pynetdicom-nodelay; not as shipped).
from benchmarks.sides import pynetdicom_side
from benchmarks.sides._common import (
    Measurement,
    ScpClock,
    Stopwatch,
    difference,
    raise_nofile_limit,
    total_bytes,
)

PENDING = (0xFF00, 0xFF01)
#: The keys adicom's StudyQuery asks for (StudyResult's), besides the level and the UID.
RETURN_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
               "StudyDescription", "PatientName", "PatientID", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances")  # fmt: skip

Call = Callable[[Association, int], None]


def _ae(args: argparse.Namespace, sop_class: UID | None) -> AE:
    ae = AE(ae_title=args.calling_aet)
    if sop_class is None:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    else:
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


def _end(assoc: Association, failed: bool) -> None:
    if assoc.is_established:
        if failed:
            assoc.abort()
        else:
            assoc.release()


def study_query(uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(identifier, keyword, None)
    identifier.StudyInstanceUID = uid
    return identifier


def _find(assoc: Association, uid: str) -> None:
    matches: list[str] = []
    final = None
    for status, identifier in assoc.send_c_find(
        study_query(uid), StudyRootQueryRetrieveInformationModelFind
    ):
        if status and int(status.Status) in PENDING and identifier is not None:
            matches.append(str(identifier.StudyInstanceUID))
        else:
            final = status
    if not final or int(final.Status) != 0x0000 or matches != [uid]:
        code = f"0x{int(final.Status):04X}" if final else "none"
        raise RuntimeError(f"C-FIND of study {uid}: status {code}, matches {matches}")


def _store(assoc: Association, path: Path) -> None:
    status = assoc.send_c_store(path)
    if not status or int(status.Status) != 0x0000:
        code = f"0x{int(status.Status):04X}" if status else "none"
        raise RuntimeError(f"C-STORE of {path.name}: status {code}")


def _once(ae: AE, args: argparse.Namespace, call: Call, i: int) -> None:
    assoc = _associate(ae, args)
    failed = True
    try:
        call(assoc, i)
        failed = False
    finally:
        _end(assoc, failed)


def _calls(
    args: argparse.Namespace, ae: AE, warm: Call, call: Call
) -> tuple[Measurement, Latencies]:
    if not args.no_warmup:
        _once(ae, args, warm, 0)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    latencies = Latencies()
    ok = 0
    watch = Stopwatch()
    try:
        if args.mode == "one-assoc":
            assoc = _associate(ae, args)
            failed = True
            try:
                for i in range(args.n):
                    t0 = time.perf_counter()
                    call(assoc, i)
                    latencies.add(time.perf_counter() - t0)
                    ok += 1
                failed = False
            finally:
                _end(assoc, failed)
        else:
            for i in range(args.n):
                t0 = time.perf_counter()
                _once(ae, args, call, i)
                latencies.add(time.perf_counter() - t0)
                ok += 1
    except Exception as exc:
        m = watch.finish(args.workload, args.n, ok, warmup=not args.no_warmup, error=exc)
    else:
        m = watch.finish(args.workload, args.n, ok, warmup=not args.no_warmup)
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    m.extra["tcp_nodelay"] = os.environ.get(pynetdicom_side.NODELAY_ENV) == "1"
    return m, latencies


def _run(args: argparse.Namespace) -> tuple[Measurement, Latencies]:
    if args.workload == "find-calls":
        uids = study_uids(args.studies_dir)

        def find(assoc: Association, i: int) -> None:
            _find(assoc, uids[i % len(uids)])

        return _calls(args, _ae(args, None), find, find)
    paths, warmup = store_paths(args)
    sop_class = UID(read_file_meta_info(paths[0]).MediaStorageSOPClassUID)

    def warm(assoc: Association, _i: int) -> None:
        _store(assoc, warmup)

    def store(assoc: Association, i: int) -> None:
        _store(assoc, paths[i])

    m, latencies = _calls(args, _ae(args, sop_class), warm, store)
    m.bytes = total_bytes(paths)
    m.extra["warmup_instances"] = 0 if args.no_warmup else 1
    return m, latencies


def main() -> int:
    args = parse("pynetdicom", __doc__ or "")
    # pynetdicom's warnings and errors go to stderr, where the runner keeps them.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    raise_nofile_limit()
    m, latencies = _run(args)
    row = next(r for r in ROWS if (r.workload, r.scu, r.mode) == (args.workload, "pynetdicom",
                                                                   args.mode))  # fmt: skip
    return finish(m, latencies, row.what)


if __name__ == "__main__":
    sys.exit(main())
