"""Benchmark runner: every workload, every (SCU, SCP) pair, each side in its own process.
--chart PATH draws the results as a PNG when the run ends; with --from-json JSON it draws
that JSON instead and runs nothing.

    python -m benchmarks.run [--quick] [--reps N] [--json PATH] [--only WORKLOAD]
    python -m benchmarks.run --chart results.png [run options]
    python -m benchmarks.run --chart results.png --from-json results.json

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

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cli import parse_args
from benchmarks.runner import run


def _chart_options(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """--chart and --from-json, and the run's own options (left to cli.parse_args)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", add_help=False, allow_abbrev=False)
    p.add_argument("--chart", type=Path, metavar="PATH")
    p.add_argument("--from-json", type=Path, metavar="JSON")
    chart, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if chart.chart is not None and chart.chart.suffix.lower() != ".png":
        p.error(f"--chart writes a PNG: {chart.chart} should end in .png")
    if chart.from_json is not None and chart.chart is None:
        p.error("--from-json needs --chart PATH (it only draws)")
    if chart.from_json is not None and rest:
        p.error(f"--from-json draws an earlier run and runs nothing: drop {' '.join(rest)}")
    return chart, rest


def main(argv: Sequence[str] | None = None) -> int:
    chart, rest = _chart_options(argv)
    if chart.chart is None:
        return run(parse_args(rest, __doc__))
    # Imported before a run of up to 30 minutes, so that a missing matplotlib shows at once.
    from benchmarks.chart import report_draw

    if chart.from_json is not None:
        return report_draw(chart.from_json, chart.chart)
    args = parse_args(rest, __doc__)
    code = run(args)
    return report_draw(args.json, chart.chart) or code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
