"""N worker processes of ``Server(storage=DiskStorage(DIR))``, through ``adicom.workers``.

The ``workers`` workload of ``benchmarks.scale`` with ``--server disk``: the
same process model as ``adicom serve --workers N``, without the archive's
SQLite index, so that what the workers cost apart from sharing that index
shows. It is also the Python API of docs/workers.md at work::

    python -m benchmarks.sides.disk_workers --workers 2 --sockets own --store-dir DIR

prints ``... listening on 127.0.0.1:PORT`` when every worker is ready and,
on SIGTERM, ``associations accepted per worker: A, B;``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import adicom
from adicom.workers import Supervisor, WorkerLink


async def work(fd: int) -> None:
    link = await WorkerLink.open(fd)
    store_dir, aet = link.payload
    server = adicom.Server(
        aet,
        storage=adicom.DiskStorage(store_dir),
        max_associations=1000,
        max_per_address=1000,
        max_pending=1000,
    )
    await server.start(link.sockets)
    link.ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphaned = loop.create_task(link.orphaned())
    orphaned.add_done_callback(lambda _: stop.set())
    await stop.wait()
    await server.close()
    link.report(server.stats)
    await link.aclose()
    orphaned.cancel()


async def supervise(args: argparse.Namespace) -> None:
    def command(fd: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.sides.disk_workers", "--worker-fd", str(fd)]

    supervisor = Supervisor(
        command,
        args.workers,
        args.host,
        args.port,
        payload=(str(args.store_dir), args.aet),
        reuse_port=args.sockets == "own",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    print(f"disk workers: listening on {args.host}:{supervisor.port}", flush=True)
    await supervisor.serve(stop)
    accepted = ", ".join(str(stats.get("accepted", "?")) for stats in supervisor.stats)
    print(f"disk workers: associations accepted per worker: {accepted};", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sockets", choices=["own", "shared"], default="own")
    parser.add_argument("--store-dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--aet", default="BENCH-SCP")
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_fd is not None:
        asyncio.run(work(args.worker_fd))
    else:
        asyncio.run(supervise(args))


if __name__ == "__main__":
    main()
