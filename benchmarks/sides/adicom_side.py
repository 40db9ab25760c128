"""adicom, as SCP or SCU, each on one asyncio event loop (asyncio.run).

    python -m benchmarks.sides.adicom_side scp --port 0 --aet ANY-SCP
    python -m benchmarks.sides.adicom_side scu --port P --aet ANY-SCP \
        --workload echo-one-assoc -n 3000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import AbstractAsyncContextManager

import adicom
from benchmarks.sides._common import Measurement, Stopwatch, describe, main_with, print_ready


async def _serve(args: argparse.Namespace) -> None:
    server = adicom.Server(ae_title=args.aet, host=args.host, port=args.port)
    async with server:
        print_ready(int(server.port))
        await asyncio.Event().wait()  # serve until killed


def run_scp(args: argparse.Namespace) -> None:
    asyncio.run(_serve(args))


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


async def _scu(args: argparse.Namespace) -> Measurement:
    warmup = not args.no_warmup
    if warmup:
        await _cycle(args)
    ok = 0
    if args.workload == "assoc-echo":
        watch = Stopwatch()
        try:
            for _ in range(args.n):
                ok += await _cycle(args)
        except Exception as exc:
            return watch.finish(args.workload, args.n, ok, warmup=warmup, error=exc)
        return watch.finish(args.workload, args.n, ok, warmup=warmup)
    if args.workload == "echo-one-assoc":
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
    raise ValueError(args.workload)  # argparse restricts the choices


def run_scu(args: argparse.Namespace) -> Measurement:
    return asyncio.run(_scu(args))


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
