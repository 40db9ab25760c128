"""What a run measures: the workloads, the usable stacks, each pair's count and repetitions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import data
from benchmarks.config import PYN_BASELINE
from benchmarks.results import PairResult
from benchmarks.stacks import Stack, make_stacks
from benchmarks.workloads import WORKLOADS, Workload


@dataclass
class Plan:
    """The workloads in run order, every stack, what was skipped, and one PairResult per pair."""

    workloads: list[Workload]
    stacks: list[Stack]
    #: "STACK for KIND workloads: why", for each stack that cannot run a kind.
    skipped: list[str]
    results: list[PairResult]
    #: The generated instances of each workload that sends some.
    data_dirs: dict[str, Path] = field(default_factory=dict)


def _usable_stacks(
    stacks: Sequence[Stack], workloads: Sequence[Workload]
) -> tuple[dict[str, list[Stack]], list[str]]:
    """The stacks usable per workload kind, and why the others are skipped."""
    skipped: list[str] = []
    usable: dict[str, list[Stack]] = {}
    for kind in dict.fromkeys(w.kind for w in workloads):
        usable[kind] = []
        for stack in stacks:
            why = stack.unavailable(kind)
            if why is None:
                usable[kind].append(stack)
            else:
                skipped.append(f"{stack.name} for {kind} workloads: {why}")
    return usable, skipped


def _pairs(
    stacks: Sequence[Stack], wanted: list[str] | None, workload: Workload
) -> Iterator[tuple[Stack, Stack]]:
    """The workload's pairs: baselines first, then same-stack pairs, then the rest.

    A variant stack (``variant_of``) runs only in the pairs a --pair names,
    where its base stack would run.
    """
    by_name = {s.name: s for s in stacks}
    if workload.order is not None:
        order = list(workload.order)
    else:
        plain = [s for s in stacks if s.variant_of is None]
        order = [PYN_BASELINE]
        order += [(s.name, s.name) for s in plain if (s.name, s.name) != PYN_BASELINE]
        order += [(a.name, b.name) for a in plain for b in plain if a.name != b.name]
    wanted_keys = [] if not wanted else [tuple(w.split(":", 1)) for w in wanted]

    def base(name: str) -> str:
        stack = by_name.get(name)
        return name if stack is None or stack.variant_of is None else stack.variant_of

    variants = [
        key
        for key in dict.fromkeys(wanted_keys)
        if len(key) == 2
        and (base(key[0]), base(key[1])) != key
        and (base(key[0]), base(key[1])) in order
    ]
    for key in [*order, *variants]:
        if key[0] not in by_name or key[1] not in by_name:
            continue
        if wanted_keys and key not in wanted_keys:
            continue
        base_key = (base(key[0]), base(key[1]))
        if workload.order is not None or workload.pairs(*base_key):
            yield by_name[key[0]], by_name[key[1]]


def _pair_results(
    workloads: Sequence[Workload], usable: dict[str, list[Stack]], args: argparse.Namespace
) -> list[PairResult]:
    """One empty PairResult per pair to run, with its count and repetitions."""
    results: list[PairResult] = []
    for wl in workloads:
        n = args.n or (wl.n_quick if args.quick else wl.n_full)
        reps = args.reps or (2 if args.quick else wl.reps_full)
        for scu, scp in _pairs(usable[wl.kind], args.pair, wl):
            if scu.scu_workloads is None or wl.name in scu.scu_workloads:
                pair_reps = reps
                if args.reps is None and not args.quick:
                    pair_reps = dict(wl.few_reps).get((scu.name, scp.name), reps)
                results.append(PairResult(wl, scu, scp, n, pair_reps))
    return results


def make_plan(args: argparse.Namespace) -> Plan:
    """The run the options ask for; prints the skipped stacks to stderr."""
    workloads = [WORKLOADS[w] for w in (args.only or WORKLOADS)]
    all_stacks = make_stacks(
        dcmtk_nodelay=not args.dcmtk_as_packaged, pynetdicom_nodelay=args.pynetdicom_nodelay
    )
    usable, skipped = _usable_stacks(all_stacks, workloads)
    for s in skipped:
        print(f"skipping {s}", file=sys.stderr)
    return Plan(workloads, all_stacks, skipped, _pair_results(workloads, usable, args))


def prepare_data(plan: Plan, data_dir: Path) -> None:
    """Generate (or find cached) the instances each sending workload needs, at its largest count."""
    for wl in plan.workloads:
        counts = [r.n for r in plan.results if r.workload is wl]
        if wl.data is not None and counts:
            print(f"[{wl.name}] preparing {max(counts)} instances ...", file=sys.stderr)
            plan.data_dirs[wl.name] = data.ensure(data_dir, wl.data, max(counts))
