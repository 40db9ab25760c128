"""What a run reports: the machine, the tables and notes on stdout, and the JSON file."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.config import (
    HOST,
    IDLE_HOLD,
    IDLE_PYNETDICOM_MAX_ASSOCIATIONS,
    IDLE_PYNETDICOM_NETWORK_TIMEOUT,
    REPO_ROOT,
)
from benchmarks.plan import Plan
from benchmarks.processes import child_env
from benchmarks.sides import dcmtk_side
from benchmarks.stacks import adicom_unavailable
from benchmarks.tables import render_table

# --------------------------------------------------------------------------- the machine


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _adicom_version() -> str | None:
    """The installed distribution's version, else the importable package's `__version__`."""
    adicom_version = _version("adicom")
    if adicom_version is None and adicom_unavailable("echo") is None:
        probe = subprocess.run(
            [sys.executable, "-c", "import adicom; print(getattr(adicom, '__version__', '?'))"],
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        adicom_version = probe.stdout.strip() or None
    return adicom_version


def machine_info() -> dict[str, Any]:
    adicom_version = _adicom_version()
    status = _git("status", "--porcelain")
    return {
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "tmpdir": tempfile.gettempdir(),
        "python": sys.version,
        "python_implementation": platform.python_implementation(),
        "versions": {
            "adicom": adicom_version,
            "pynetdicom": _version("pynetdicom"),
            "pydicom": _version("pydicom"),
            "dcmtk": dcmtk_side.version(),
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


# --------------------------------------------------------------------------- stdout


def _notes(plan: Plan) -> list[str]:
    """The notes of the stacks that took part (SCU notes only of those that played the SCU)."""
    results = plan.results
    used = [s for s in plan.stacks if any(s in (r.scu, r.scp) for r in results)]
    notes = [n for s in used if any(r.scu is s for r in results) for n in s.scu_notes]
    notes += [n for s in used for n in s.notes]
    return notes


def _reps_text(plan: Plan) -> str:
    """Per workload: its usual repetitions per pair, and the pairs that had another number."""
    reps_parts = []
    for w in plan.workloads:
        wanted = [r for r in plan.results if r.workload is w]
        usual = statistics.mode([r.reps_wanted for r in wanted]) if wanted else 0
        fewer = [f"{r.scu.label()}->{r.scp.name} {r.reps_wanted}"
                 for r in wanted if r.reps_wanted != usual]  # fmt: skip
        reps_parts.append(f"{w.name} {usual}" + (f" ({', '.join(fewer)})" if fewer else ""))
    return ", ".join(reps_parts)


def print_summary(plan: Plan, elapsed: float) -> None:
    """The tables, the stacks' notes, what was skipped, and the repetitions, on stdout."""
    print()
    print(render_table(plan.results))
    for note in _notes(plan):
        print(f"\n{note}")
    for s in plan.skipped:
        print(f"(skipped {s})")
    print(f"\nRepetitions per pair: {_reps_text(plan)}; {elapsed:.0f} s in all.")


# --------------------------------------------------------------------------- JSON


def _config(
    plan: Plan,
    args: argparse.Namespace,
    qr: dict[str, Any],
    elapsed: float,
    scratch: dict[str, str] | None,
) -> dict[str, Any]:
    return {
        "quick": args.quick,
        # Where the SCPs wrote what they received (--scratch), and its file system.
        "scratch": scratch,
        "reps": args.reps,
        "host": HOST,
        "retries": args.retries,
        "data_dir": str(args.data_dir),
        "dcmtk_tcp_nodelay": not args.dcmtk_as_packaged,
        "pynetdicom_tcp_nodelay": args.pynetdicom_nodelay,
        "dcmtk_options": {
            "env": next(s.env for s in plan.stacks if s.name == "dcmtk"),
            "storescp_store": list(dcmtk_side.STORESCP_STORE_OPTIONS),
            "storescu": list(dcmtk_side.STORESCU_OPTIONS),
        },
        "skipped": plan.skipped,
        "elapsed_s": elapsed,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "qr": qr,
        "idle": {
            "hold_s": IDLE_HOLD,
            "pynetdicom_maximum_associations": IDLE_PYNETDICOM_MAX_ASSOCIATIONS,
            "pynetdicom_network_timeout": IDLE_PYNETDICOM_NETWORK_TIMEOUT,
        },
    }


def _workloads(plan: Plan) -> dict[str, Any]:
    return {
        w.name: {
            "kind": w.kind,
            "unit": w.unit,
            "description": w.description,
            "op_timeout_s": w.op_timeout,
            "baselines": ["->".join(k) for k in w.baselines],
            "data": None if w.data is None else str(plan.data_dirs.get(w.name)),
        }
        for w in plan.workloads
    }


def build_report(
    plan: Plan,
    args: argparse.Namespace,
    meta: dict[str, Any],
    qr: dict[str, Any],
    elapsed: float,
    scratch: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON report: machine, configuration, workloads, and every pair's repetitions."""
    return {
        "meta": meta,
        "config": _config(plan, args, qr, elapsed, scratch),
        "workloads": _workloads(plan),
        "results": [r.to_json(plan.results) for r in plan.results],
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(f"JSON: {path}")
