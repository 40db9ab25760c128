"""The runner's command line (`python -m benchmarks.run --help`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from benchmarks.config import DEFAULT_DATA, DEFAULT_JSON
from benchmarks.workloads import WORKLOADS


def _add_selection(p: argparse.ArgumentParser) -> None:
    """What runs: workloads, pairs, counts and repetitions."""
    p.add_argument("--quick", action="store_true", help="2 repetitions, smaller counts")
    p.add_argument(
        "--reps",
        type=int,
        help="repetitions per pair for every workload (default 5; --quick 2)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"cache of the generated C-STORE instances (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--pair",
        action="append",
        metavar="SCU:SCP",
        help="run only this pair, e.g. adicom:pynetdicom (repeatable)",
    )
    p.add_argument("-n", type=int, help="override the operation count of every workload")
    p.add_argument(
        "--scratch",
        type=Path,
        metavar="DIR",
        help="where the SCPs of the echo and store workloads write what they receive, and"
        " the C-GET SCUs and the C-MOVE destination theirs (a fresh folder under DIR,"
        " removed at the end): e.g. /dev/shm, a tmpfs, to take the disk out of"
        " store-small (default: $TMPDIR, normally /tmp on disk)",
    )


def _add_conduct(p: argparse.ArgumentParser) -> None:
    """How it runs: retries, and the TCP_NODELAY settings of DCMTK and pynetdicom."""
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a failed repetition up to this many times (default 2); "
        "every failure is kept in the JSON and counted in the table",
    )
    p.add_argument(
        "--dcmtk-as-packaged",
        action="store_true",
        help="run DCMTK without TCP_NODELAY=1 (Nagle on: ~40 ms per message)",
    )
    p.add_argument(
        "--pynetdicom-nodelay",
        action="store_true",
        help="set TCP_NODELAY on pynetdicom's sockets (not as shipped; for comparison)",
    )


def parse_args(argv: Sequence[str] | None, doc: str | None = None) -> argparse.Namespace:
    """The options; `doc` (the entry point's docstring) gives the description's first paragraph."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=doc.split("\n\n")[0] if doc else None,
    )
    _add_selection(p)
    _add_conduct(p)
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.retries < 0:
        p.error("--retries must be >= 0")
    if args.n is not None and args.n < 2:
        p.error("-n must be >= 2 (the DCMTK SCUs report n-1 operations)")
    if args.scratch is not None and not args.scratch.is_dir():
        p.error(f"--scratch {args.scratch}: no such folder")
    return args
