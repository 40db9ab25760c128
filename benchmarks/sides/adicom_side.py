"""adicom, as SCP or SCU, each on one asyncio event loop (the one ADICOM_LOOP names).

    python -m benchmarks.sides.adicom_side scp --port 0 --aet ANY-SCP [--store-dir DIR]
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP \
        --workload echo-one-assoc -n 3000
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP \
        --workload store-small -n 1000 --data-dir benchmarks/results/data/ct-128x160-v1
    python -m benchmarks.sides.adicom_side scu --port P --aet ARCHIVE \
        --workload get-1000 -n 1000 --data-dir ... --out-dir DIR
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP --workload idle-500 -n 500

Store workloads over mutual TLS: ``--tls-dir DIR`` (ca.pem, server.key,
server.crt, client.key, client.crt; see benchmarks/tls.py) on both sides.
The SCP serves with ``ssl=adicom.tls.server_context(...,
require_client_cert=True)``, the SCU sends with ``adicom.store(...,
ssl=adicom.tls.client_context(...))``; before its warm-up it opens one
association (C-ECHO) to note the TLS version and cipher negotiated
(``extra["tls"]``).

Query/retrieve (the SCP is an archive holding the data set): find-1000 is
``adicom.connect`` + ``adicom.qrscu.find`` (Study Root, IMAGE level, the
series' instances); get-1000 is ``DicomClient.get_series`` into a
``DiskStorage``; move-1000 is ``DicomClient.move_series``, one client for
the warm-up and the timed call. Each call opens its own association and
releases it, inside the timed span. idle-500 opens N
associations with ``adicom.open_association`` on one event loop, holds them
idle, checks each with a C-ECHO and releases them.

Both roles run a loop lag monitor: a task that sleeps 10 ms again and again
and records how late it wakes. The SCU reports the worst lateness over the
timed span; the SCP resets its maximum on SIGUSR1 (sent by the runner when
the SCU's timed span begins) and prints it on a STATS line at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time
from contextlib import AbstractAsyncContextManager
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

import adicom
from adicom import qrscu
from adicom.tls import client_context, server_context
from benchmarks.data import SeriesKeys
from benchmarks.processes import run_on_loop
from benchmarks.sides._common import (
    TLS_FILES,
    WORKLOADS,
    Measurement,
    ScpClock,
    Stopwatch,
    describe,
    difference,
    main_with,
    max_rss_kib,
    print_ready,
    print_stats,
    qr_keys,
    store_files,
    tls_files,
    total_bytes,
)

LAG_INTERVAL = 0.010  # seconds


class LoopLag:
    """Worst lateness of a periodic `asyncio.sleep(LAG_INTERVAL)` on this loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def reset(self) -> None:
        self.worst = 0.0

    def worst_ms(self) -> float:
        return 1000.0 * self.worst

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            late = time.perf_counter() - t0 - LAG_INTERVAL
            if late > self.worst:
                self.worst = late

    async def stop(self) -> float:
        """Stop monitoring; the worst lateness in ms."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.worst_ms()


# --------------------------------------------------------------------------- SCP


async def _serve(args: argparse.Namespace) -> None:
    kwargs: dict[str, Any] = {}
    if args.store_dir is not None:
        args.store_dir.mkdir(parents=True, exist_ok=True)
        kwargs["storage"] = adicom.DiskStorage(args.store_dir, fsync=args.fsync)
    if args.max_associations is not None:
        kwargs["max_associations"] = args.max_associations
    if args.idle_timeout is not None:
        kwargs["idle_timeout"] = args.idle_timeout
    if (tls := tls_files(args)) is not None:
        kwargs["ssl"] = server_context(
            cert=tls.server_cert, key=tls.server_key, ca=tls.ca, require_client_cert=True
        )
    server = adicom.Server(ae_title=args.aet, host=args.host, port=args.port, **kwargs)
    lag = LoopLag()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        # Printed first: the runner kills us if closing the server hangs.
        print_stats({"loop_lag_max_ms": lag.worst_ms()})
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, terminate)
    loop.add_signal_handler(signal.SIGUSR1, lag.reset)
    async with server:
        lag.start()
        print_ready(int(server.port))
        await stop.wait()
    await lag.stop()


def run_scp(args: argparse.Namespace) -> None:
    run_on_loop(_serve(args))


# --------------------------------------------------------------------------- SCU


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The SCU's TLS context (one per process), or None: plain TCP."""
    return None if args.tls_dir is None else _client_context(args.tls_dir)


@cache
def _client_context(folder: Path) -> ssl.SSLContext:
    tls = TLS_FILES.under(folder)
    return client_context(ca=tls.ca, cert=tls.client_cert, key=tls.client_key)


def _connect(args: argparse.Namespace) -> AbstractAsyncContextManager[adicom.Association]:
    return adicom.connect(
        args.host,
        args.port,
        calling_ae=args.calling_aet,
        called_ae=args.aet,
        timeout=args.timeout,
        ssl=_client_ssl(args),
    )


async def _tls_facts(args: argparse.Namespace) -> dict[str, Any]:
    """One association over TLS (a C-ECHO, untimed): what was negotiated."""
    async with _connect(args) as assoc:
        status = await assoc.echo()
        tls = assoc.tls
    if status != 0x0000 or tls is None:
        raise RuntimeError(f"C-ECHO over TLS: status {status:#06x}, tls {tls!r}")
    return {
        "version": tls.version,
        "cipher": tls.cipher,
        "peer_subject": tls.peer_subject,
    }


async def _cycle(args: argparse.Namespace) -> bool:
    async with _connect(args) as assoc:
        status = await assoc.echo()
    return status == 0x0000


async def _echo_one_assoc(args: argparse.Namespace, warmup: bool) -> Measurement:
    ok = 0
    result: Measurement | None = None
    try:
        async with _connect(args) as assoc:
            watch = Stopwatch()
            try:
                for _ in range(args.n):
                    ok += (await assoc.echo()) == 0x0000
            except Exception as exc:
                result = watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
                raise  # so that connect() aborts the association
            # The release is outside the timed span, as on every side.
            result = watch.finish(args.workload, args.n, ok, warmup=warmup)
    except Exception as exc:
        if result is None:
            raise
        result.extra.setdefault("error", describe(exc))
    assert result is not None
    return result


async def _store(args: argparse.Namespace, warmup: bool) -> Measurement:
    paths, _warmups = store_files(args)
    watch = Stopwatch()
    try:
        results = await adicom.store(
            args.host,
            args.port,
            paths,
            calling_ae=args.calling_aet,
            called_ae=args.aet,
            timeout=args.timeout,
            ssl=_client_ssl(args),
        )
    except Exception as exc:
        return watch.finish(args.workload, args.n, 0, warmup=warmup, error=exc)
    ok = sum(1 for r in results if r.ok)
    m = watch.finish(args.workload, args.n, ok, warmup=warmup, nbytes=total_bytes(paths))
    failed = [r for r in results if not r.ok]
    if failed or len(results) != args.n:
        first = failed[0] if failed else None
        m.extra["error"] = (
            f"{len(results)} results for {args.n} files"
            if first is None
            else f"{first.source}: status {first.status!r}: {first.error}"
        )
    return m


# --------------------------------------------------------------------------- query/retrieve


def _image_query(keys: SeriesKeys, sop_instance_uid: str = "") -> Dataset:
    """Study Root, IMAGE level: the series' instances (or one), SOP Instance UID returned."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = keys.study_instance_uid
    identifier.SeriesInstanceUID = keys.series_instance_uid
    identifier.SOPInstanceUID = sop_instance_uid
    return identifier


async def _find(args: argparse.Namespace, identifier: Dataset) -> set[str]:
    """One association, one C-FIND, release: the SOP Instance UIDs of the matches."""
    uids: set[str] = set()
    async with (
        adicom.connect(
            args.host,
            args.port,
            calling_ae=args.calling_aet,
            called_ae=args.aet,
            contexts=qrscu.find_contexts("study"),
            timeout=args.timeout,
        ) as assoc,
        qrscu.find(assoc, identifier) as results,
    ):
        async for match in results:
            uids.add(str(match.SOPInstanceUID))
        if results.status != 0x0000:
            raise RuntimeError(f"C-FIND ended with status 0x{results.status or 0:04X}")
    return uids


def _client(args: argparse.Namespace) -> adicom.DicomClient:
    return adicom.DicomClient(args.calling_aet, dimse_timeout=args.timeout)


def _node(args: argparse.Namespace) -> adicom.DicomNode:
    return adicom.DicomNode(aet=args.aet, host=args.host, port=args.port)


def _retrieved(result: adicom.RetrieveResult, expected: int) -> int:
    """How many sub-operations completed; raises if the retrieve did not succeed."""
    if result.status != "success" or result.num_failed or result.num_completed != expected:
        raise RuntimeError(
            f"retrieve: status {result.status}, {result.num_completed} completed,"
            f" {result.num_failed} failed, {expected} expected"
        )
    return result.num_completed


async def _qr_once(
    args: argparse.Namespace, keys: SeriesKeys, single: bool, client: adicom.DicomClient
) -> int:
    """The workload's operation on the whole series, or on its first instance only."""
    expected = 1 if single else args.n
    sop = keys.first_sop_instance_uid
    study, series = keys.study_instance_uid, keys.series_instance_uid
    if args.workload == "find-1000":
        uids = await _find(args, _image_query(keys, sop if single else ""))
        if len(uids) != expected:
            raise RuntimeError(f"C-FIND returned {len(uids)} distinct matches, {expected} expected")
        return len(uids)
    if args.workload == "get-1000":
        if single:
            out = args.out_dir / "warmup"
            result = await client.get_image(study, series, sop, _node(args), out)
        else:
            result = await client.get_series(study, series, _node(args), args.out_dir / "timed")
        return _retrieved(result, expected)
    if args.workload == "move-1000":
        if single:
            result = await client.move_image(study, series, sop, _node(args), args.move_dest)
        else:
            result = await client.move_series(study, series, _node(args), args.move_dest)
        return _retrieved(result, expected)
    raise ValueError(args.workload)


async def _qr(args: argparse.Namespace, warmup: bool) -> Measurement:
    keys = qr_keys(args)
    # One client for the warm-up and the timed call, as an application keeps
    # one: what it learned of the peer in the warm-up (that its C-FIND does
    # not say SOP classes) spares the timed C-GET that C-FIND.
    client = _client(args)
    if warmup:
        await _qr_once(args, keys, True, client)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    lag = LoopLag()
    lag.start()
    watch = Stopwatch()
    try:
        ok = await _qr_once(args, keys, False, client)
    except Exception as exc:
        m = watch.finish(args.workload, args.n, 0, warmup=warmup, error=exc)
    else:
        m = watch.finish(args.workload, args.n, ok, warmup=warmup)
    m.loop_lag_max_ms = await lag.stop()
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    m.extra["timed_span"] = {
        "find-1000": "adicom.connect + adicom.qrscu.find (IMAGE level) + release",
        "get-1000": "DicomClient.get_series into DiskStorage (associate, C-GET, release)",
        "move-1000": "DicomClient.move_series (associate, C-MOVE, release)",
    }[args.workload]
    m.extra["warmup"] = "the same operation on the series' first instance" if warmup else None
    return m


# --------------------------------------------------------------------------- idle associations

#: Associations being opened at once: enough to be quick, few enough that a
#: listen backlog (pynetdicom's socketserver: 5) does not drop connections.
IDLE_OPEN_CONCURRENCY = 8


async def _idle(args: argparse.Namespace, warmup: bool) -> Measurement:
    """Open N associations at once on this loop, hold them idle, echo on each, release."""
    if warmup:
        await _cycle(args)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    gate = asyncio.Semaphore(IDLE_OPEN_CONCURRENCY)

    async def open_one() -> adicom.Association:
        async with gate:
            return await adicom.open_association(
                args.host,
                args.port,
                calling_ae=args.calling_aet,
                called_ae=args.aet,
                connect_timeout=args.timeout,
                timeout=args.timeout,
            )

    lag = LoopLag()
    lag.start()
    watch = Stopwatch()
    opened = await asyncio.gather(*(open_one() for _ in range(args.n)), return_exceptions=True)
    associations = [a for a in opened if isinstance(a, adicom.Association)]
    failures = [a for a in opened if isinstance(a, BaseException)]
    m = watch.finish(args.workload, args.n, len(associations), warmup=warmup)
    m.ops_per_s = len(associations) / m.seconds if m.seconds > 0 else 0.0
    scp_open = clock.read("open")
    m.scp_cpu_s = difference(scp_open, scp0)
    m.extra["open_s"] = m.seconds
    m.extra["open_concurrency"] = IDLE_OPEN_CONCURRENCY
    await asyncio.sleep(args.hold)
    clock.read("held")
    m.extra["hold_s"] = args.hold
    m.loop_lag_max_ms = await lag.stop()
    # Still there? One C-ECHO on each, all at once, then release them all.
    echoes = await asyncio.gather(*(a.echo() for a in associations), return_exceptions=True)
    echo_ok = sum(1 for e in echoes if e == 0x0000)
    releases = await asyncio.gather(
        *(a.release(args.timeout) for a in associations), return_exceptions=True
    )
    for a, r in zip(associations, releases, strict=True):
        if isinstance(r, BaseException):
            a.abort()
    clock.read("end")
    m.ok = min(len(associations), echo_ok)
    m.extra["echo_ok"] = echo_ok
    m.extra["release_failed"] = sum(1 for r in releases if isinstance(r, BaseException))
    m.max_rss_kib = max_rss_kib()
    problems = failures or [e for e in echoes if isinstance(e, BaseException)]
    if problems:
        m.extra["error"] = (
            f"{len(failures)} of {args.n} associations not opened, {echo_ok} echoes ok; first: "
            + describe(problems[0])
        )
    elif echo_ok != len(associations):
        m.extra["error"] = f"{echo_ok} of {len(associations)} C-ECHOs succeeded"
    return m


async def _warm_up(args: argparse.Namespace) -> None:
    if args.workload.startswith("store"):
        _paths, warmups = store_files(args)
        results = await adicom.store(
            args.host,
            args.port,
            warmups[:1],
            calling_ae=args.calling_aet,
            called_ae=args.aet,
            timeout=args.timeout,
            ssl=_client_ssl(args),
        )
        if not all(r.ok for r in results):
            raise RuntimeError(f"warm-up C-STORE failed: {results!r}")
    else:
        await _cycle(args)


async def _timed(args: argparse.Namespace, warmup: bool) -> Measurement:
    if args.workload == "assoc-echo":
        ok = 0
        watch = Stopwatch()
        try:
            for _ in range(args.n):
                ok += await _cycle(args)
        except Exception as exc:
            return watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
        return watch.finish(args.workload, args.n, ok, warmup=warmup)
    if args.workload == "echo-one-assoc":
        return await _echo_one_assoc(args, warmup)
    if args.workload in ("store-small", "store-large"):
        return await _store(args, warmup)
    raise ValueError(args.workload)  # argparse restricts the choices


async def _scu(args: argparse.Namespace) -> Measurement:
    warmup = not args.no_warmup
    if WORKLOADS[args.workload] == "qr":
        return await _qr(args, warmup)
    if WORKLOADS[args.workload] == "idle":
        return await _idle(args, warmup)
    tls = await _tls_facts(args) if args.tls_dir is not None else None
    if warmup:
        await _warm_up(args)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    lag = LoopLag()
    lag.start()
    m = await _timed(args, warmup)
    m.loop_lag_max_ms = await lag.stop()
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    if args.workload.startswith("store"):
        m.extra["timed_span"] = "adicom.store(): associate, N C-STOREs, release"
        m.extra["warmup_instances"] = 1 if warmup else 0
    if tls is not None:
        m.extra["tls"] = tls
    return m


def run_scu(args: argparse.Namespace) -> Measurement:
    return run_on_loop(_scu(args))


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
