"""Seed a query/retrieve SCP with a generated set: ``adicom.store`` over one association.

    python -m benchmarks.sides.seed --port P --aet ARCHIVE --data-dir DIR -n 1000

Not timed as a benchmark: the runner calls it once per run and SCP, before
the query/retrieve workloads, and records how long it took. Prints one
``RESULT {json}`` line; exit code 1 unless every instance was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import adicom
from benchmarks.data import instance_paths
from benchmarks.sides._common import RESULT_PREFIX


async def _seed(args: argparse.Namespace) -> dict[str, object]:
    paths = instance_paths(args.data_dir, args.n)
    t0 = time.perf_counter()
    results = await adicom.store(
        args.host,
        args.port,
        paths,
        calling_ae=args.calling_aet,
        called_ae=args.aet,
        timeout=args.timeout,
    )
    failed = [r for r in results if not r.ok]
    return {
        "sent": len(paths),
        "stored": sum(1 for r in results if r.ok),
        "seconds": time.perf_counter() - t0,
        "first_failure": None if not failed else f"{failed[0].status!r}: {failed[0].error}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", required=True, help="the SCP's AE title")
    parser.add_argument("--calling-aet", default="BENCH-SEED")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("-n", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(_seed(args))
    print(RESULT_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["stored"] == result["sent"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
