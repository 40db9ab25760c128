"""Running a plan: repetitions round-robin over the pairs, retries, and the shared archives.

Repetitions go round-robin over the pairs of a workload, so slow drift of the
machine spreads over all pairs alike. The query/retrieve workloads share
archives (archives.py), seeded once with the same N instances (all three
have the same counts); started before the first of them, stopped after the
last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import archives
from benchmarks.config import QR_FIXED_SCU, REPO_ROOT, SCP_AET
from benchmarks.plan import Plan, make_plan, prepare_data
from benchmarks.processes import BenchError, child_env, first_line, free_port
from benchmarks.procfs import filesystem_of, session_snapshot
from benchmarks.repetitions import Scratch, run_idle_once, run_once, run_qr_once
from benchmarks.report import build_report, machine_info, print_summary, write_report
from benchmarks.results import PairResult
from benchmarks.sides._common import MOVE_DEST_AET, raise_nofile_limit
from benchmarks.stacks import Stack
from benchmarks.workloads import Workload


def _start_archives(
    stacks: Sequence[Stack], root: Path, dest_port: int, data_dir: Path, n: int
) -> dict[str, archives.Archive]:
    """Start and seed each stack's archive (not timed); failures are kept on the Archive."""
    started: dict[str, archives.Archive] = {}
    for stack in stacks:
        workdir = root / stack.name
        workdir.mkdir()
        print(f"[archives] starting and seeding {stack.name} with {n} instances ...",
              file=sys.stderr)  # fmt: skip
        # A variant (adicom-uvloop) runs its base stack's archive, in its own environment.
        kind = stack.variant_of or stack.name
        archive = archives.start(kind, workdir, SCP_AET, dest_port, child_env(stack.env), REPO_ROOT)
        started[stack.name] = archive
        if archive.error is None:
            archives.seed(archive, data_dir, n, child_env(), REPO_ROOT)
        if archive.error is None:
            snap = session_snapshot(archive.proc.pid)
            archive.seed["rss_after_seed_kib"] = snap["rss_kib"]
            archive.seed["peak_rss_after_seed_kib"] = snap["peak_rss_kib"]
            print(
                f"[archives] {stack.name}: {n} instances in {archive.seed.get('seconds', 0):.1f} s",
                file=sys.stderr,
            )
        else:
            print(f"[archives] {stack.name}: FAILED: {first_line(archive.error)}", file=sys.stderr)
    return started


class QrArchives:
    """The archives of the query/retrieve workloads in a plan, and what became of them."""

    def __init__(self, plan: Plan) -> None:
        self.results = [r for r in plan.results if r.workload.kind == "qr"]
        self.n = max((r.n for r in self.results), default=0)
        self.last = max((i for i, w in enumerate(plan.workloads) if w.kind == "qr"), default=-1)
        self.scps = [s for s in plan.stacks if any(r.scp is s for r in self.results)]
        self.running: dict[str, archives.Archive] = {}
        self.root: tempfile.TemporaryDirectory[str] | None = None
        self.dest_port = free_port()
        #: Per stopped archive: its JSON and how it stopped.
        self.info: dict[str, Any] = {}

    def before(self, wl: Workload, data_dirs: dict[str, Path]) -> None:
        """Start and seed the archives before the first query/retrieve workload."""
        if wl.kind == "qr" and self.root is None and self.results:
            self.root = tempfile.TemporaryDirectory(prefix="adicom-bench-archives-")
            qr_data = data_dirs[self.results[0].workload.name]
            self.running = _start_archives(
                self.scps, Path(self.root.name), self.dest_port, qr_data, self.n
            )

    def after(self, index: int) -> None:
        """Stop the archives after the last query/retrieve workload (index in the plan)."""
        if index == self.last:
            for name, archive in self.running.items():
                self.info[name] = {**archive.to_json(), "stopped": archives.stop(archive)}

    def close(self) -> None:
        """Stop any archive still running and remove their directories."""
        for name, archive in self.running.items():
            if name not in self.info:
                self.info[name] = {**archive.to_json(), "stopped": archives.stop(archive)}
        if self.root is not None:
            self.root.cleanup()

    def to_json(self) -> dict[str, Any]:
        return {
            "instances": self.n,
            "fixed_scu_served_by": QR_FIXED_SCU,
            "move_destination": {
                "aet": MOVE_DEST_AET,
                "port": self.dest_port,
                "stack": "adicom (adicom_side scp --store-dir)",
            },
            "archives": self.info,
        }


def _measure(
    pr: PairResult, rep_data: Path | None, qr: QrArchives, scratch: Scratch
) -> dict[str, Any]:
    """One repetition of the pair, by the kind of its workload."""
    wl = pr.workload
    if wl.kind == "qr":
        archive = qr.running.get(pr.scp.name)
        if archive is None:
            raise BenchError(f"no {pr.scp.name} archive was started")
        return run_qr_once(pr.scu, wl, pr.n, rep_data, archive, qr.dest_port, scratch)
    if wl.kind == "idle":
        return run_idle_once(pr.scu, pr.scp, wl, pr.n)
    return run_once(pr.scu, pr.scp, wl, pr.n, rep_data, scratch)


def _run_rep(
    pr: PairResult,
    rep: int,
    retries: int,
    data_dirs: dict[str, Path],
    qr: QrArchives,
    scratch: Scratch,
) -> None:
    """Repetition `rep` of the pair, re-run up to `retries` times until it measures."""
    wl = pr.workload
    for attempt in range(1, retries + 2):
        tag = f"[{wl.name} {rep}/{pr.reps_wanted}] {pr.scu.label()} -> {pr.scp.name}"
        if attempt > 1:
            tag += f" (retry {attempt - 1})"
        try:
            raw = _measure(pr, data_dirs.get(wl.name), qr, scratch)
        except (BenchError, OSError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, BenchError) else {}
            pr.errors.append({"rep": rep, "attempt": attempt, "error": str(exc), **detail})
            print(f"{tag}: FAILED: {first_line(str(exc))}", file=sys.stderr)
            continue
        raw["rep"], raw["attempt"] = rep, attempt
        pr.reps.append(raw)
        print(f"{tag}: {raw['ops_per_s']:.1f} {wl.unit}", file=sys.stderr)
        break


def _run_workload(
    wl: Workload,
    plan: Plan,
    retries: int,
    qr: QrArchives,
    scratch: Scratch,
) -> None:
    """Every repetition of every pair of one workload, round-robin, with retries."""
    pairs = [r for r in plan.results if r.workload is wl]
    for rep in range(1, max((r.reps_wanted for r in pairs), default=0) + 1):
        for pr in pairs:
            if rep <= pr.reps_wanted:
                _run_rep(pr, rep, retries, plan.data_dirs, qr, scratch)


def _run_all(plan: Plan, retries: int, qr: QrArchives, scratch: Scratch) -> float:
    """Every workload of the plan in order; the seconds it took."""
    started = time.monotonic()
    try:
        for index, wl in enumerate(plan.workloads):
            qr.before(wl, plan.data_dirs)
            _run_workload(wl, plan, retries, qr, scratch)
            qr.after(index)
    finally:
        qr.close()
        scratch.cleanup()
    return time.monotonic() - started


def scratch_info(root: Path) -> dict[str, str]:
    """Where the repetitions wrote (the Scratch folder) and on what file system."""
    return {"dir": str(root), "filesystem": filesystem_of(root) or "unknown"}


def run(args: argparse.Namespace) -> int:
    """The whole run: plan, measure, print the tables, write the JSON; 1 if a pair fell short."""
    raise_nofile_limit()  # idle-500: the SCPs and SCUs inherit it
    meta = machine_info()  # now, so that its load average is the one at start
    plan = make_plan(args)
    prepare_data(plan, args.data_dir)
    qr = QrArchives(plan)
    scratch = Scratch(args.scratch)
    where = scratch_info(scratch.root)
    print(f"scratch: {where['dir']} ({where['filesystem']})", file=sys.stderr)
    elapsed = _run_all(plan, args.retries, qr, scratch)
    print_summary(plan, elapsed)
    write_report(args.json, build_report(plan, args, meta, qr.to_json(), elapsed, where))
    # Failures that a retry made good are reported, but only a pair that ended
    # with fewer good repetitions than asked for makes the run fail.
    return 1 if any(len(r.reps) < r.reps_wanted for r in plan.results) else 0
