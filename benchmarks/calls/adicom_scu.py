"""The calls benchmark's adicom SCU: DicomClient with and without a pool, and store batches.

    python -m benchmarks.calls.adicom_scu --port P --aet AET --workload find-calls \
        --mode pool -n 1000 --studies-dir DIR

Modes (one process per repetition, one asyncio event loop):

- ``pool`` (find-calls, store-calls): one ``DicomClient(pool=AssociationPool())``
  makes the N calls one after the other. The pool is made when the timed span
  begins and closed (its associations released) before it ends, so the span
  holds one association's set-up and release, as a user's N calls would.
- ``per-call``: ``DicomClient()`` without a pool: each call associates, does
  its work and releases.
- ``store`` (store-batch): ``adicom.store(host, port, paths)``, one association.
- ``many-C`` (store-batch): ``DicomClient().store_many(paths, peer,
  concurrency=C)`` (no pool): chunks of 256 instances, each on its own
  association, C at a time.

A call is ``client.find_studies(StudyQuery(study_instance_uid=uid), peer)``
(one match expected, that study) or ``client.store([path], peer)`` (success
expected). Warm-up (untimed): one call of the same kind (its own pool),
C-STORE of the warm-up instance for the store workloads.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import adicom
from adicom.batch import CHUNK
from adicom.models import DicomNode, StudyQuery
from adicom.pool import AssociationPool
from benchmarks.calls.rows import ROWS, Row
from benchmarks.calls.scu import Latencies, finish, parse, store_paths
from benchmarks.calls.studies import study_uids
from benchmarks.processes import run_on_loop
from benchmarks.sides._common import (
    Measurement,
    ScpClock,
    Stopwatch,
    difference,
    raise_nofile_limit,
    total_bytes,
)

Call = Callable[[adicom.DicomClient, int], Awaitable[None]]


def _row(args: argparse.Namespace) -> Row:
    return next(r for r in ROWS if (r.workload, r.scu, r.mode) == (args.workload, "adicom",
                                                                    args.mode))  # fmt: skip


def _node(args: argparse.Namespace) -> DicomNode:
    return DicomNode(aet=args.aet, host=args.host, port=args.port)


@contextlib.asynccontextmanager
async def _client(
    args: argparse.Namespace, pooled: bool
) -> AsyncIterator[tuple[adicom.DicomClient, AssociationPool | None]]:
    """A client, with a pool of its own (closed when the block ends) or without."""
    if not pooled:
        yield adicom.DicomClient(args.calling_aet, dimse_timeout=args.timeout), None
        return
    async with AssociationPool() as pool:
        yield adicom.DicomClient(args.calling_aet, dimse_timeout=args.timeout, pool=pool), pool


async def _find(client: adicom.DicomClient, node: DicomNode, uid: str) -> None:
    found = await client.find_studies(StudyQuery(study_instance_uid=uid), node)
    if [f.study_instance_uid for f in found] != [uid]:
        got = [f.study_instance_uid for f in found]
        raise RuntimeError(f"C-FIND of study {uid}: {len(found)} matches {got}")


async def _store(client: adicom.DicomClient, node: DicomNode, path: Path) -> None:
    results = await client.store([path], node)
    if len(results) != 1 or not results[0].ok:
        raise RuntimeError(f"C-STORE of {path.name}: {results!r}")


async def _calls(args: argparse.Namespace, warm: Call, call: Call) -> tuple[Measurement, Latencies]:
    """The N calls, one after the other, on one client; each call's time noted."""
    pooled = args.mode == "pool"
    if not args.no_warmup:
        async with _client(args, pooled) as (client, _):
            await warm(client, 0)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    latencies = Latencies()
    ok = 0
    pool: AssociationPool | None = None
    watch = Stopwatch()
    try:
        async with _client(args, pooled) as (client, pool):
            for i in range(args.n):
                t0 = time.perf_counter()
                await call(client, i)
                latencies.add(time.perf_counter() - t0)
                ok += 1
    except Exception as exc:
        m = watch.finish(args.workload, args.n, ok, warmup=not args.no_warmup, error=exc)
    else:
        m = watch.finish(args.workload, args.n, ok, warmup=not args.no_warmup)
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    if pool is not None:
        m.extra["pool"] = dict(pool.stats)
    return m, latencies


async def _find_calls(args: argparse.Namespace) -> tuple[Measurement, Latencies]:
    uids = study_uids(args.studies_dir)
    node = _node(args)

    async def call(client: adicom.DicomClient, i: int) -> None:
        await _find(client, node, uids[i % len(uids)])

    return await _calls(args, call, call)


async def _store_calls(args: argparse.Namespace) -> tuple[Measurement, Latencies]:
    paths, warmup = store_paths(args)
    node = _node(args)

    async def warm(client: adicom.DicomClient, _i: int) -> None:
        await _store(client, node, warmup)

    async def call(client: adicom.DicomClient, i: int) -> None:
        await _store(client, node, paths[i])

    m, latencies = await _calls(args, warm, call)
    m.bytes = total_bytes(paths)
    return m, latencies


async def _store_batch(args: argparse.Namespace) -> Measurement:
    paths, warmup = store_paths(args)
    node = _node(args)
    concurrency = _row(args).concurrency
    client = adicom.DicomClient(args.calling_aet, dimse_timeout=args.timeout)
    if not args.no_warmup:
        await _store(client, node, warmup)
    clock = ScpClock(args.scp_clock)
    scp0 = clock.read("begin")
    ok = 0
    error: BaseException | None = None
    watch = Stopwatch()
    try:
        if concurrency is None:
            results = await adicom.store(
                args.host,
                args.port,
                paths,
                calling_ae=args.calling_aet,
                called_ae=args.aet,
                timeout=args.timeout,
            )
            ok = sum(1 for r in results if r.ok)
            failed = [r for r in results if not r.ok]
        else:
            batch = await client.store_many(paths, node, concurrency=concurrency)
            ok = batch.sent + batch.warned
            failed = batch.failures
        if failed:
            first = failed[0]
            error = RuntimeError(f"{len(failed)} failed; first {first.source}: {first.status!r}")
    except Exception as exc:
        error = exc
    m = watch.finish(args.workload, args.n, ok, warmup=not args.no_warmup, error=error,
                     nbytes=total_bytes(paths))  # fmt: skip
    m.scp_cpu_s = difference(clock.read("end"), scp0)
    m.extra["associations"] = 1 if concurrency is None else -(-args.n // CHUNK)
    if concurrency is not None:
        m.extra["concurrency"] = concurrency
    return m


async def _scu(args: argparse.Namespace) -> tuple[Measurement, Latencies | None]:
    if args.workload == "find-calls":
        return await _find_calls(args)
    if args.workload == "store-calls":
        return await _store_calls(args)
    return await _store_batch(args), None


def main() -> int:
    args = parse("adicom", __doc__ or "")
    raise_nofile_limit()
    m, latencies = run_on_loop(_scu(args))
    if args.workload != "find-calls":
        m.extra["warmup_instances"] = 0 if args.no_warmup else 1
    return finish(m, latencies, _row(args).what)


if __name__ == "__main__":
    sys.exit(main())
