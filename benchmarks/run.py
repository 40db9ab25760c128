"""Benchmark runner: every workload, every (SCU, SCP) pair, each side in its own process.

    python -m benchmarks.run [--quick] [--reps N] [--json PATH] [--only WORKLOAD]

For each repetition of each pair the runner starts the SCP, waits (bounded)
until it listens, runs the SCU, which prints one JSON result line, and stops
the SCP. While the SCU runs, the runner reads the SCP's CPU clock whenever the
SCU asks (just before and after its timed span). Repetitions go round-robin
over the pairs, so slow drift of the machine spreads over all pairs alike. The
tables show the median of the repetitions and its ratio to the baseline pairs
(pynetdicom -> pynetdicom, and for C-STORE also DCMTK -> DCMTK) on the same
workload; the JSON file keeps every repetition. See benchmarks/README.md.

The parts, in the order a run uses them: cli (options), workloads and config
(what is measured), plan (which pairs, counts, repetitions), stacks (how each
implementation runs), runner (repetitions round-robin, retries, archives),
repetitions (one repetition: scratch space, SCP, SCU, checks; with processes
and procfs), results (medians, ratios), tables and targets (stdout), report
(machine info, JSON).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks.cli import parse_args
from benchmarks.runner import run


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv, __doc__))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
