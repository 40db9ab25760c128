"""The calls benchmark's tables, its summary for the notes, and its JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from benchmarks.calls.results import RowResult
from benchmarks.calls.rows import WORKLOADS, baselines, scp_program


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _rate_spec(value: float | None) -> str:
    return _fmt(value, ".1f" if value is not None and value < 100 else ".0f")


#: A column: header, cell from (row, all rows), right-aligned?
Column = tuple[str, Callable[[RowResult, Sequence[RowResult]], str], bool]


def _reps(r: RowResult, _all: Sequence[RowResult]) -> str:
    return f"{len(r.reps)}" + (f" ({len(r.errors)} failed)" if r.errors else "")


def _min_max(r: RowResult, _all: Sequence[RowResult]) -> str:
    mm = r.min_max_rate()
    return "-" if mm is None else f"{_rate_spec(mm[0])}..{_rate_spec(mm[1])}"


def _ratio(column: str) -> Column:
    def cell(r: RowResult, everything: Sequence[RowResult]) -> str:
        if column not in baselines(r.row):
            return ""
        value = r.ratios(everything).get(column)
        return "-" if value is None else f"{value:.2f}"

    return (column, cell, True)


def _columns(workload: str, ratio_columns: Sequence[str]) -> list[Column]:
    unit = WORKLOADS[workload].unit
    per = "call" if unit == "calls/s" else "inst"
    cols: list[Column] = [
        ("SCP", lambda r, _: scp_program(r.scp, r.row.workload), False),
        ("SCU", lambda r, _: r.row.label, False),
        ("n", lambda r, _: str(r.n), True),
        (unit, lambda r, _: _rate_spec(r.median_rate()), True),
        (f"ms/{per}", lambda r, _: _fmt(r.median_ms_per_op(), ".3f"), True),
        ("min..max", _min_max, True),
    ]
    if per == "call":
        cols += [
            ("p50 ms", lambda r, _: _fmt(r.median_extra("p50_ms"), ".3f"), True),
            ("p99 ms", lambda r, _: _fmt(r.median_extra("p99_ms"), ".3f"), True),
        ]
    else:
        cols.append(("assocs", lambda r, _: _fmt(r.median_extra("associations"), ".0f"), True))
    cols += [
        (f"SCU CPU us/{per}", lambda r, _: _fmt(r.median_cpu_us("scu"), ".0f"), True),
        (f"SCP CPU us/{per}", lambda r, _: _fmt(r.median_cpu_us("scp"), ".0f"), True),
        *(_ratio(c) for c in ratio_columns),
        ("reps", _reps, False),
    ]
    return cols


def _table(rows_of: Sequence[RowResult], everything: Sequence[RowResult]) -> list[str]:
    ratio_columns: list[str] = []
    for r in rows_of:
        ratio_columns += [c for c in baselines(r.row) if c not in ratio_columns]
    cols = _columns(rows_of[0].row.workload, ratio_columns)
    cells = [[cell(r, everything) for _, cell, _ in cols] for r in rows_of]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, (h, _, _) in enumerate(cols)]

    def line(texts: Sequence[str]) -> str:
        return "  ".join(
            t.rjust(widths[i]) if cols[i][2] else t.ljust(widths[i]) for i, t in enumerate(texts)
        ).rstrip()

    out = [line([h for h, _, _ in cols]), line(["-" * w for w in widths])]
    previous = None
    for r, row in zip(rows_of, cells, strict=True):
        if previous is not None and r.scp != previous:
            out.append("")
        previous = r.scp
        out.append(line(row))
    return out


NOTES = (
    "Medians over repetitions. ms/call = the timed span / n (the span holds every"
    " association's set-up and release: the pool's one, pynetdicom's one); p50/p99 ="
    " the medians of each repetition's percentiles of single calls; CPU = the SCU"
    " process's, and the SCP's whole session (dcmqrscp and storescp --fork: one process"
    " per association) over the span, per call. 'x per call' = rate / the same SCU's rate"
    " making one association per call; 'x pynetdicom' = adicom's rate / pynetdicom's"
    " rate in the same mode (pooled against one association, per call against per call);"
    " 'x adicom.store' = rate / adicom.store's rate. Higher is faster."
)


def render(results: Sequence[RowResult]) -> str:
    """One table per workload, SCP by SCP."""
    out = [NOTES]
    for name, workload in WORKLOADS.items():
        rows_of = [r for r in results if r.row.workload == name]
        if rows_of:
            out += ["", f"{name}: {workload.description}", *_table(rows_of, results)]
    return "\n".join(out)


def _rate_text(r: RowResult) -> str:
    return f"{_rate_spec(r.median_rate())}/s ({_fmt(r.median_ms_per_op(), '.2f')} ms)"


def summary(results: Sequence[RowResult]) -> list[str]:
    """One line per (workload, SCP): the first row's rate and its ratio to each other row."""
    lines = []
    scps = list(dict.fromkeys(r.scp for r in results))
    for workload in WORKLOADS:
        for scp in scps:
            rows = [r for r in results if (r.row.workload, r.scp) == (workload, scp) and r.reps]
            if len(rows) < 2:
                continue
            head, rest = rows[0], rows[1:]
            program = scp_program(scp, workload)
            if workload == "store-batch":
                best = max(rows, key=lambda r: r.median_rate() or 0.0)
                parts = [f"{r.row.label} {_rate_text(r)}" for r in rows]
                lines.append(
                    f"{workload} -> {program}: {'; '.join(parts)}; fastest: {best.row.label}"
                )
                continue
            base = head.median_rate() or 0.0
            parts = [
                f"{base / (r.median_rate() or float('nan')):.1f}x {r.row.label} {_rate_text(r)}"
                for r in rest
            ]
            lines.append(f"{workload} -> {program}: {head.row.label} {_rate_text(head)} = "
                         + ", ".join(parts))  # fmt: skip
    return lines
