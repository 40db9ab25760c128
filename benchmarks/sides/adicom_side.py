"""adicom, as SCP or SCU, each on one asyncio event loop (asyncio.run).

    python -m benchmarks.sides.adicom_side scp --port 0 --aet ANY-SCP [--store-dir DIR]
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP \
        --workload echo-one-assoc -n 3000
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP \
        --workload store-small -n 1000 --data-dir benchmarks/results/data/ct-128x160-v1

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
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import adicom
from benchmarks.sides._common import (
    Measurement,
    ScpClock,
    Stopwatch,
    describe,
    difference,
    main_with,
    print_ready,
    print_stats,
    store_files,
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
        kwargs["storage"] = adicom.DiskStorage(args.store_dir)
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
    asyncio.run(_serve(args))


# --------------------------------------------------------------------------- SCU


def _connect(args: argparse.Namespace) -> AbstractAsyncContextManager[adicom.Association]:
    return adicom.connect(
        args.host,
        args.port,
        calling_ae=args.calling_aet,
        called_ae=args.aet,
        timeout=args.timeout,
    )


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
    return m


def run_scu(args: argparse.Namespace) -> Measurement:
    return asyncio.run(_scu(args))


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
