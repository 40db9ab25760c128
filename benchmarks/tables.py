"""The text tables: one per workload kind, the medians and ratios of each pair, then the targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from benchmarks.config import (
    DCMTK_BASELINE,
    DCMTK_SCP,
    IDLE_HOLD,
    PYN_BASELINE,
    PYN_SCP,
    PYN_SCU,
    Key,
)
from benchmarks.results import PairResult
from benchmarks.targets import render_targets


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


BASELINE_LABELS = {
    PYN_BASELINE: "x pyn->pyn",
    DCMTK_BASELINE: "x dcmtk->dcmtk",
    PYN_SCU: "x pyn SCU",
    PYN_SCP: "x pyn SCP",
    DCMTK_SCP: "x dcmtk SCP",
}

#: A table column: header, cell from (pair, all results), right-aligned?
Column = tuple[str, Callable[[PairResult, Sequence[PairResult]], str], bool]

#: What a kind's table shows, printed above it.
KIND_NOTES = {
    "store": "C-STORE: MB = 10^6 bytes of the files sent; CPU s = whole timed span;"
    " RSS = peak; lag = worst lateness of a 10 ms sleep (asyncio sides).",
    "qr": "Query/retrieve against archives seeded once per run: s = median time of the"
    " operation (dcmtk*: of N-1, differential); SCP CPU s = the SCP's whole"
    " session (dcmqrscp forks per association); SCP RSS = its RSS when the"
    " operation ended; x pyn SCU = rate / rate of the pynetdicom SCU against the"
    " same SCP; x pyn SCP, x dcmtk SCP = rate / rate of the same SCU against that"
    " SCP (higher is faster).",
    "idle": f"Idle associations: SCP RSS = VmRSS with all open, after {IDLE_HOLD:g} s idle;"
    " HWM = its peak; RSS before = before the first was opened; KiB/assoc ="
    " (RSS - RSS before) / N; threads, fds = the SCP's with all open; idle CPU % ="
    " the SCP's CPU over the idle hold.",
}


# --------------------------------------------------------------------------- columns


def _ratio_column(key: Key) -> Column:
    def cell(r: PairResult, all_results: Sequence[PairResult]) -> str:
        return _fmt(r.ratios(all_results).get("->".join(key)), ".2f")

    return (BASELINE_LABELS.get(key, "x " + "->".join(key)), cell, True)


def _reps_cell(r: PairResult, _all: Sequence[PairResult]) -> str:
    return f"{len(r.reps)}" + (f" ({len(r.errors)} failed)" if r.errors else "")


def _min_max_cell(r: PairResult, _all: Sequence[PairResult]) -> str:
    mm = r.min_max_rate()
    return "-" if mm is None else f"{mm[0]:.1f}..{mm[1]:.1f}"


def _mib(kib: float | None) -> str:
    return _fmt(None if kib is None else kib / 1024, ".0f")


def _store_columns() -> list[Column]:
    return [
        ("inst/s", lambda r, _: _fmt(r.median_rate(), ".1f"), True),
        ("MB/s", lambda r, _: _fmt(r.median_of("mb_per_s"), ".1f"), True),
        ("inst/s min..max", _min_max_cell, True),
        ("SCU CPU s", lambda r, _: _fmt(r.median_of("cpu_s"), ".2f"), True),
        ("SCP CPU s", lambda r, _: _fmt(r.median_of("scp_cpu_s"), ".2f"), True),
        ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
        ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_peak_rss_kib")), True),
        ("SCU lag ms", lambda r, _: _fmt(r.median_of("loop_lag_max_ms"), ".1f"), True),
        ("SCP lag ms", lambda r, _: _fmt(r.median_of("scp_loop_lag_max_ms"), ".1f"), True),
    ]


def _qr_columns() -> list[Column]:
    return [
        ("s", lambda r, _: _fmt(r.median_seconds(), ".3f"), True),
        ("rate", lambda r, _: _fmt(r.median_rate(), ".0f"), True),
        ("unit", lambda r, _: r.workload.unit, False),
        ("min..max", _min_max_cell, True),
        ("SCU CPU s", lambda r, _: _fmt(r.median_of("cpu_s"), ".2f"), True),
        ("SCP CPU s", lambda r, _: _fmt(r.median_of("scp_cpu_s"), ".2f"), True),
        ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
        ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_rss_kib")), True),
        ("SCU lag ms", lambda r, _: _fmt(r.median_of("loop_lag_max_ms"), ".1f"), True),
    ]


def _idle_columns() -> list[Column]:
    return [
        ("open", lambda r, _: _fmt(r.median_of("ok"), ".0f"), True),
        ("open s", lambda r, _: _fmt(r.median_seconds(), ".2f"), True),
        ("assoc/s", lambda r, _: _fmt(r.median_rate(), ".0f"), True),
        ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_rss_open_kib")), True),
        ("SCP HWM MiB", lambda r, _: _mib(r.median_of("scp_peak_rss_kib")), True),
        ("RSS before", lambda r, _: _mib(r.median_of("scp_rss_before_kib")), True),
        ("KiB/assoc", lambda r, _: _fmt(r.median_of("scp_rss_per_assoc_kib"), ".0f"), True),
        ("threads", lambda r, _: _fmt(r.median_of("scp_threads_open"), ".0f"), True),
        ("fds", lambda r, _: _fmt(r.median_of("scp_fds_open"), ".0f"), True),
        ("idle CPU %", lambda r, _: _fmt(r.median_of("scp_idle_cpu_pct"), ".1f"), True),
        ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
    ]


def _echo_columns() -> list[Column]:
    return [
        ("median", lambda r, _: _fmt(r.median_rate(), ".1f"), True),
        ("unit", lambda r, _: r.workload.unit, False),
        ("min..max", _min_max_cell, True),
        ("SCU CPU us/op", lambda r, _: _fmt(r.median_scu_cpu_us(), ".0f"), True),
        ("SCP CPU us/op", lambda r, _: _fmt(r.median_scp_cpu_us(), ".0f"), True),
    ]


#: The measurement columns of each workload kind (any other kind: the echo ones).
KIND_COLUMNS: dict[str, Callable[[], list[Column]]] = {
    "store": _store_columns,
    "qr": _qr_columns,
    "idle": _idle_columns,
}


def columns(kind: str, baselines: Sequence[Key]) -> list[Column]:
    """A kind's table: workload and pair, its measurements, one ratio per baseline, reps."""
    head: list[Column] = [
        ("workload", lambda r, _: r.workload.name, False),
        ("SCU -> SCP", lambda r, _: f"{r.scu.label()} -> {r.scp.name}", False),
    ]
    tail = [_ratio_column(k) for k in baselines] + [("reps", _reps_cell, False)]
    return [*head, *KIND_COLUMNS.get(kind, _echo_columns)(), *tail]


# --------------------------------------------------------------------------- tables


def _table(rows_of: Sequence[PairResult], all_results: Sequence[PairResult]) -> list[str]:
    kind = rows_of[0].workload.kind
    baselines: list[Key] = []
    for r in rows_of:
        baselines += [k for k in r.workload.baselines if k not in baselines]
    cols = columns(kind, baselines)
    rows = [[cell(r, all_results) for _, cell, _ in cols] for r in rows_of]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _, _) in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if cols[i][2] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line([h for h, _, _ in cols]), line(["-" * w for w in widths])]
    previous = None
    for r, row in zip(rows_of, rows, strict=True):
        if previous is not None and r.workload.name != previous:
            out.append("")
        previous = r.workload.name
        out.append(line(row))
    return out


def _targets_section(results: Sequence[PairResult]) -> list[str]:
    targets = render_targets(results)
    if not targets:
        return []
    out = ["", "Targets:", *targets]
    smaller = sorted({r.workload.name for r in results if r.n < r.workload.n_full})
    if smaller:
        out.append(
            f"(Run with fewer operations than the targets name ({', '.join(smaller)}):"
            " the verdicts above only indicate; the fixed costs weigh more.)"
        )
    return out


def render_table(results: Sequence[PairResult]) -> str:
    """One table per workload kind (echo, store), in the order they ran."""
    out = [
        "Medians over repetitions; 'x A->B' = median rate / median rate of the pair"
        " A -> B on the same workload (higher is faster)."
    ]
    kinds: list[str] = []
    for r in results:
        if r.workload.kind not in kinds:
            kinds.append(r.workload.kind)
    for kind in kinds:
        rows_of = [r for r in results if r.workload.kind == kind]
        out.append("")
        if kind in KIND_NOTES:
            out.append(KIND_NOTES[kind])
        out += _table(rows_of, results)
    out += _targets_section(results)
    return "\n".join(out)
