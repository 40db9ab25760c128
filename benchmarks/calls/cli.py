"""`python -m benchmarks.calls`: small calls pooled or not, and store batches; a table and JSON.

    python -m benchmarks.calls                      # every workload, SCU and SCP (~5 min)
    python -m benchmarks.calls --only find-calls --scp adicom
    python -m benchmarks.calls -n 200 --reps 1      # a quick look
    python -m benchmarks.calls --pynetdicom-n 1000  # pynetdicom's rows at the full count too

See benchmarks/README.md, "Calls and batches".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import data
from benchmarks.calls import studies
from benchmarks.calls.report import render, summary
from benchmarks.calls.results import RowResult
from benchmarks.calls.rows import (
    DEFAULT_N,
    DEFAULT_PYNETDICOM_N,
    DEFAULT_REPS,
    ROWS,
    SCPS,
    SCU_MODES,
    WORKLOADS,
)
from benchmarks.calls.runner import (
    OP_TIMEOUT,
    Setting,
    run_all,
    start_find_archives,
    stop_find_archives,
)
from benchmarks.config import DEFAULT_DATA, REPO_ROOT
from benchmarks.repetitions import Scratch
from benchmarks.report import machine_info
from benchmarks.sides import dcmtk_side
from benchmarks.sides.pynetdicom_side import NODELAY_ENV
from benchmarks.stacks import _probe_import

DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "calls.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.calls",
        description="Many small C-FINDs and C-STOREs, each a call: adicom with an association"
        " pool, adicom and pynetdicom with an association per call, pynetdicom on one"
        " association; and store_many's concurrency against adicom.store. Each SCU and SCP"
        " its own process; medians over repetitions.",
    )
    p.add_argument(
        "-n",
        type=int,
        default=DEFAULT_N,
        help=f"calls per repetition (store-batch: instances) (default {DEFAULT_N})",
    )
    p.add_argument(
        "--pynetdicom-n",
        type=int,
        default=DEFAULT_PYNETDICOM_N,
        help="calls per repetition of the pynetdicom rows, at most -n (default"
        f" {DEFAULT_PYNETDICOM_N}: each of its calls waits ~40 ms on Nagle, 1000 would add"
        " ~6 min per SCP and repetition)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=DEFAULT_REPS,
        help=f"repetitions per row (default {DEFAULT_REPS})",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"run only this workload; repeatable ({', '.join(WORKLOADS)})",
    )
    p.add_argument(
        "--scp",
        action="append",
        choices=SCPS,
        help="run only against this archive; repeatable (default: both)",
    )
    p.add_argument(
        "--scu",
        action="append",
        choices=list(SCU_MODES),
        help="run only this SCU's rows; repeatable (default: both)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-run a failed repetition up to N times (default 1)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"cache of the generated instances (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--dcmtk-as-packaged",
        action="store_true",
        help="run dcmqrscp without TCP_NODELAY=1 (Nagle on: ~40 ms per message)",
    )
    p.add_argument(
        "--pynetdicom-nodelay",
        action="store_true",
        help="set TCP_NODELAY on pynetdicom's sockets (not as shipped; comparison)",
    )
    return p  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    if args.n < 1 or args.pynetdicom_n < 1:
        p.error("-n and --pynetdicom-n must be at least 1")
    if args.reps < 1 or args.retries < 0:
        p.error("--reps must be at least 1 and --retries at least 0")
    return args


def _unavailable() -> dict[str, str | None]:
    """Why each stack cannot take part (None: it can)."""
    missing = [t for t in ("dcmqrscp", "storescp") if dcmtk_side.find_tool(t) is None]
    return {
        "adicom": _probe_import(
            "import adicom, adicom.cli, adicom.archive, adicom.pool, adicom.batch;"
            " adicom.DicomClient.store_many"
        ),
        "pynetdicom": _probe_import("import pynetdicom"),
        "dcmtk": f"no DCMTK {', '.join(missing)} found" if missing else None,
    }


def _plan(args: argparse.Namespace, skipped: list[str]) -> tuple[list[str], list[RowResult]]:
    """The SCPs and one empty RowResult per (SCP, row) to run, in run order."""
    why = _unavailable()
    if why["adicom"] is not None:
        # Seeding and both find archives' checks need adicom; without it nothing runs.
        raise SystemExit(f"adicom is not usable: {why['adicom']}")
    scps = []
    for scp in args.scp or SCPS:
        if why[scp] is None:
            scps.append(scp)
        else:
            skipped.append(f"SCP {scp}: {why[scp]}")
    scus = []
    for scu in args.scu or SCU_MODES:
        if why[scu] is None:
            scus.append(scu)
        else:
            skipped.append(f"SCU {scu}: {why[scu]}")
    results = []
    for workload in args.only or WORKLOADS:
        for scp in scps:
            for row in ROWS:
                if row.workload == workload and row.scu in scus:
                    n = min(args.n, args.pynetdicom_n) if row.scu == "pynetdicom" else args.n
                    results.append(RowResult(row, scp, n, args.reps))
    return scps, results


def _config(args: argparse.Namespace, scps: list[str], elapsed: float) -> dict[str, Any]:
    return {
        "n": args.n,
        "pynetdicom_n": min(args.n, args.pynetdicom_n),
        "reps": args.reps,
        "retries": args.retries,
        "scps": scps,
        "seeded_studies": studies.COUNT,
        "instances": data.SMALL.description,
        "op_timeout_s": OP_TIMEOUT,
        "dcmtk_tcp_nodelay": not args.dcmtk_as_packaged,
        "pynetdicom_tcp_nodelay": args.pynetdicom_nodelay,
        "elapsed_s": elapsed,
        "loadavg_at_end": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    meta = machine_info()  # now, so that its load average is the one at start
    skipped: list[str] = []
    scps, results = _plan(args, skipped)
    for s in skipped:
        print(f"skipping {s}", file=sys.stderr)
    workloads = list(dict.fromkeys(r.row.workload for r in results))
    if not results:
        print("nothing to run", file=sys.stderr)
        return 1
    stores = [r.n for r in results if WORKLOADS[r.row.workload].stores]
    data_dir = data.ensure(args.data_dir, data.SMALL, max(stores)) if stores else args.data_dir
    finds = "find-calls" in workloads
    setting = Setting(
        data_dir=data_dir,
        studies_dir=studies.ensure(args.data_dir) if finds else None,
        scp_env={"adicom": {}, "dcmtk": {} if args.dcmtk_as_packaged else {"TCP_NODELAY": "1"}},
        scu_env={"adicom": {}, "pynetdicom": {NODELAY_ENV: "1"} if args.pynetdicom_nodelay else {}},
        scratch=Scratch(),
    )
    archives_info: dict[str, Any] = {}
    started = time.monotonic()
    try:
        if finds:
            archives_info = start_find_archives(scps, setting)
        run_all(results, workloads, args.retries, setting)
    finally:
        stop_find_archives(setting, archives_info)
        setting.scratch.cleanup()
    elapsed = time.monotonic() - started
    print()
    print(render(results))
    lines = summary(results)
    if lines:
        print("\nSummary:")
        for line in lines:
            print(f"  {line}")
    for s in skipped:
        print(f"(skipped {s})")
    print(f"\n{args.reps} repetitions per row; {elapsed:.0f} s in all.")
    report = {
        "meta": meta,
        "config": {**_config(args, scps, elapsed), "skipped": skipped},
        "find_archives": archives_info,
        "workloads": {name: WORKLOADS[name].description for name in workloads},
        "results": [r.to_json(results) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 1 if any(len(r.reps) < r.reps_wanted for r in results) else 0
