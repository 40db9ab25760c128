"""DCMTK (OFFIS) tools as peers: storescp as SCP, echoscu as SCU.

echoscu starts one process per association, so only the workload where that
can be factored out is offered: ``echo-one-assoc``, run as ``echoscu --repeat
N`` (N C-ECHOs on one association; checked with -v). Every echoscu run pays
process start, dictionary load, association and release, so the SCU times
``echoscu --repeat 1`` three times (median t1) and ``echoscu --repeat N`` once
(tN), and reports N-1 echoes in tN - t1 seconds; CPU time likewise, from the
child's rusage (wait4).

DCMTK 3.6.2 and later leave Nagle's algorithm on unless the environment
variable TCP_NODELAY is set, and write each P-DATA-TF in two write() calls, so
every message waits for a delayed ACK (about 40 ms on Linux loopback). The
runner sets TCP_NODELAY=1 for DCMTK processes unless told otherwise.

pynetdicom installs console scripts named like DCMTK's (echoscu, storescp),
so a binary counts as DCMTK only if its ``--version`` says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

from benchmarks.sides._common import Measurement, main_with, max_rss_kib

SUPPORTED_SCU_WORKLOADS = frozenset({"echo-one-assoc"})


@cache
def find_tool(name: str) -> str | None:
    """Path of the DCMTK binary `name`, or None when no genuine one is found."""
    candidates: list[str] = []
    if env_dir := os.environ.get("DCMTK_BIN"):
        candidates.append(str(Path(env_dir) / name))
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d:
            candidates.append(str(Path(d) / name))
    candidates.append(f"/usr/bin/{name}")
    seen: set[str] = set()
    for c in candidates:
        real = os.path.realpath(c)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        try:
            out = subprocess.run(
                [c, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (out.stdout + out.stderr).lower()
        if "dcmtk" in text or "offis" in text:
            return c
    return None


@cache
def version() -> str | None:
    """The DCMTK version line (e.g. '$dcmtk: echoscu v3.6.7 2022-04-22 $')."""
    tool = find_tool("echoscu")
    if tool is None:
        return None
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines():
        if "dcmtk" in line.lower():
            return line.strip()
    return None


def scp_command(port: int, aet: str, output_dir: str) -> list[str]:
    """storescp serving Verification (and Storage) on 127.0.0.1-reachable `port`."""
    tool = find_tool("storescp")
    if tool is None:
        raise RuntimeError("DCMTK storescp not found")
    return [tool, "-aet", aet, "--output-directory", output_dir, str(port)]


def _echoscu(args: argparse.Namespace, repeat: int) -> tuple[float, float, int]:
    """Run echoscu once; return (wall seconds, child CPU seconds, exit code)."""
    tool = find_tool("echoscu")
    if tool is None:
        raise RuntimeError("DCMTK echoscu not found")
    to = str(max(1, round(args.timeout)))
    cmd = [tool, "-aet", args.calling_aet, "-aec", args.aet, "-to", to, "-ta", to, "-td", to]
    if repeat > 1:
        cmd += ["--repeat", str(repeat)]
    cmd += [args.host, str(args.port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    _, wait_status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(wait_status)  # so Popen does not wait again
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def run_scu(args: argparse.Namespace) -> Measurement:
    if args.workload not in SUPPORTED_SCU_WORKLOADS:
        raise SystemExit(f"dcmtk SCU does not run {args.workload} fairly (one process per assoc)")
    if args.n < 2:
        raise SystemExit("dcmtk SCU needs -n >= 2 (it reports n-1 echoes)")
    # The single-echo runs are both the warm-up and the fixed cost to subtract.
    singles = [_echoscu(args, 1) for _ in range(3)]
    if any(rc != 0 for _, _, rc in singles):
        raise SystemExit("echoscu --repeat 1 failed")
    t1 = statistics.median(w for w, _, _ in singles)
    c1 = statistics.median(c for _, c, _ in singles)
    wall, cpu, rc = _echoscu(args, args.n)
    ops = args.n - 1
    seconds = wall - t1
    ok = ops if rc == 0 else 0  # echoscu stops at the first failure and exits non-zero
    return Measurement(
        workload=args.workload,
        ops=ops,
        ok=ok,
        seconds=seconds,
        ops_per_s=ops / seconds if seconds > 0 else 0.0,
        cpu_s=max(0.0, cpu - c1),
        max_rss_kib=max_rss_kib(),  # of this wrapper, not of echoscu
        warmup=True,
        extra={
            "tool": "echoscu --repeat",
            "method": "differential: (n-1) echoes in time(--repeat n) - time(--repeat 1)",
            "wall_repeat_n_s": wall,
            "wall_repeat_1_s": [w for w, _, _ in singles],
            "cpu_repeat_n_s": cpu,
            "cpu_repeat_1_s": [c for _, c, _ in singles],
            "exit_code": rc,
            "tcp_nodelay_env": os.environ.get("TCP_NODELAY"),
        },
    )


def run_scp(args: argparse.Namespace) -> None:
    """For manual use; the runner starts storescp itself (see scp_command)."""
    if args.port == 0:
        raise SystemExit("storescp needs an explicit --port")
    cmd = scp_command(args.port, args.aet, tempfile.mkdtemp(prefix="bench-storescp-"))
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main_with(__doc__ or "", run_scp, run_scu))
