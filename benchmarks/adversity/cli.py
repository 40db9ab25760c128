"""`python -m benchmarks.adversity`: every attack against every SCP, a table and a JSON file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.adversity.plan import ATTACK_ORDER, SCP_ORDER, make_rows
from benchmarks.adversity.report import notes, render_table
from benchmarks.adversity.run import run_row
from benchmarks.adversity.scps import KINDS
from benchmarks.config import REPO_ROOT
from benchmarks.report import machine_info

DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "adversity.json"
DEFAULT_SECONDS = 8.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.adversity",
        description="Hostile peers against an SCP while a probe measures its C-ECHO latency.",
    )
    attacks = ", ".join(ATTACK_ORDER)
    p.add_argument(
        "--only",
        action="append",
        choices=ATTACK_ORDER,
        metavar="ATTACK",
        help=f"run only this attack; repeatable ({attacks})",
    )
    p.add_argument(
        "--scp",
        action="append",
        choices=SCP_ORDER,
        help="run only against this SCP; repeatable (default: all)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"the attack window (default {DEFAULT_SECONDS:g})",
    )
    p.add_argument("--no-baseline", action="store_true", help="leave out the rows without attack")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    return p


def _progress(row: dict[str, Any]) -> None:
    probe = row.get("probe") or {}
    what = row.get("error") or (
        f"p99 {probe.get('p99_ms')} ms, {probe.get('echoes_answered')} echoes,"
        f" RSS {(row.get('watch') or {}).get('peak_rss_kib', 0) // 1024} MiB"
    )
    print(f"  {row['scp']:<10} {row['label']:<40} {what} ({row['row_s']} s)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scps = args.scp or list(SCP_ORDER)
    skipped: list[str] = []
    for name in list(scps):
        why = KINDS[name].unavailable()
        if why is not None:
            scps.remove(name)
            skipped.append(f"{name}: {why}")
    rows, not_applicable = make_rows(scps, args.only or ATTACK_ORDER, baseline=not args.no_baseline)
    skipped += not_applicable
    meta = machine_info()
    started = time.monotonic()
    print(f"{len(rows)} rows, {args.seconds:g} s window each", file=sys.stderr)
    results = []
    for row in rows:
        results.append(run_row(row, args.seconds))
        _progress(results[-1])
    elapsed = time.monotonic() - started
    print()
    print(render_table(results))
    print()
    for note in notes(results, skipped):
        print(f"- {note}")
    print(f"\n{len(results)} rows in {elapsed:.0f} s.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {"seconds": args.seconds, "scps": scps, "attacks": args.only or list(ATTACK_ORDER),
              "loadavg_at_end": list(os.getloadavg()), "elapsed_s": round(elapsed, 1)}  # fmt: skip
    document = {"meta": meta, "config": config, "rows": results, "skipped": skipped}
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"JSON: {args.json}")
    return 1 if any("error" in r for r in results) else 0
