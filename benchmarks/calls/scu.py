"""What both SCU sides of the calls benchmark share: the command line, timing the calls.

Kept free of any DICOM library: each side imports only its own stack.

    python -m benchmarks.calls.adicom_scu --port P --aet AET --workload find-calls \
        --mode pool -n 1000 --studies-dir DIR
    python -m benchmarks.calls.pynetdicom_scu --port P --aet AET --workload store-calls \
        --mode per-call -n 100 --data-dir DIR

Each prints one ``RESULT {json}`` line (``benchmarks.sides._common.Measurement``)
and, with ``--scp-clock``, ``SAMPLE begin`` / ``SAMPLE end`` around its timed
span, which the runner answers with the SCP's CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.calls.rows import SCU_MODES, WORKLOADS
from benchmarks.sides._common import Measurement, print_result


def parser(side: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--aet", required=True, help="called AE title (the archive's)")
    p.add_argument("--calling-aet", default="BENCH-SCU")
    p.add_argument("--workload", choices=list(WORKLOADS), required=True)
    p.add_argument("--mode", choices=SCU_MODES[side], required=True)
    p.add_argument("-n", type=int, required=True, help="calls (instances for store-batch)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-response timeout, s")
    p.add_argument("--data-dir", type=Path, help="store workloads: the generated instances")
    p.add_argument("--studies-dir", type=Path, help="find-calls: the seeded studies")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up call")
    p.add_argument("--scp-clock", action="store_true", help="ask the runner for the SCP's CPU")
    return p


def parse(side: str, description: str) -> argparse.Namespace:
    p = parser(side, description)
    args = p.parse_args()
    if args.n < 1:
        p.error("-n must be at least 1")
    if args.workload == "find-calls" and args.studies_dir is None:
        p.error("find-calls needs --studies-dir")
    if args.workload != "find-calls" and args.data_dir is None:
        p.error(f"{args.workload} needs --data-dir")
    if (args.workload == "store-batch") != (args.mode in ("store", "many-1", "many-2", "many-4")):
        p.error(f"--mode {args.mode} is not a mode of {args.workload}")
    return args


def store_paths(args: argparse.Namespace) -> tuple[list[Path], Path]:
    """The first n instances of --data-dir, and the warm-up instance."""
    from benchmarks.data import instance_paths, warmup_paths

    return instance_paths(args.data_dir, args.n), warmup_paths(args.data_dir)[0]


class Latencies:
    """The wall time of each call of a timed span."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def time(self, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = call()
        self.seconds.append(time.perf_counter() - t0)
        return out

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def summary(self) -> dict[str, float | None]:
        """p50, p99 and max, in ms (None without calls)."""
        ms = sorted(1000.0 * s for s in self.seconds)
        if not ms:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        return {"p50_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1]}


def finish(m: Measurement, latencies: Latencies | None, what: str) -> int:
    """Complete the result line, print it; the exit code (1 unless every call succeeded)."""
    if latencies is not None:
        m.extra.update(latencies.summary())
    m.extra["timed_span"] = what
    print_result(m)
    return 0 if m.ok == m.ops and "error" not in m.extra else 1
