"""The chart of a run: each workload's median rate per (SCU, SCP) pair, as a PNG.

    python -m benchmarks.chart RESULTS.json OUT.png
    python -m benchmarks.run --chart OUT.png [run options]          # run, then draw
    python -m benchmarks.run --chart OUT.png --from-json RESULTS.json  # draw only

One panel per workload (in the runner's order), one horizontal bar per pair
(in the order it ran: the baselines first). A bar's upper half has the colour
of the SCU's stack, its lower half that of the SCP's, so same-stack pairs are
one colour and mixed pairs two. TLS pairs are hatched ``///``, a pair whose
SCP syncs each file to disk (``adicom-fsync``) ``xxx``. The bar is the median
rate, the thin line across its end the slowest and fastest repetition; the
text beside it the median with its unit (and MB/s for C-STORE, the seconds of
one operation for query/retrieve and idle). A panel whose rates differ by
``LOG_RATIO`` or more has a log scale (pynetdicom's 20 inst/s beside
adicom's 3,800 would otherwise be invisible). A workload without any result
is left out, and said so.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global
backend), in matplotlib's default style whatever the local matplotlibrc says,
at a fixed width and resolution: the same JSON gives the same bytes with the
same matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec, SubplotSpec
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from benchmarks.workloads import WORKLOADS, is_tls

#: A panel whose largest rate is at least this many times its smallest gets a log scale.
LOG_RATIO = 20.0
WIDTH_IN = 14.0
DPI = 100
#: Inches per bar, per panel (title, ticks, axis label) and for the header (title, legend).
BAR_IN = 0.27
PANEL_IN = 0.85
HEADER_IN = 1.3
#: The bars end by this fraction of the axis; the rest holds the value texts.
BARS_FRACTION = 0.62

STACK_COLOURS = {
    "adicom": "#1f77b4",
    "dcmtk": "#ff7f0e",
    "pynetdicom": "#2ca02c",
}
OTHER_COLOUR = "#8c8c8c"
STACK_TITLES = {"adicom": "adicom", "dcmtk": "DCMTK", "pynetdicom": "pynetdicom"}
TLS_HATCH = "///"
FSYNC_HATCH = "xxx"
FSYNC_SUFFIX = "-fsync"
#: What one operation is, under the workload's name (benchmarks/README.md, "What runs").
SHORT_TITLES = {
    "assoc-echo": "associate + C-ECHO + release",
    "echo-one-assoc": "C-ECHO, one association",
    "store-small": "C-STORE, ~42 KB instances to disk",
    "store-large": "C-STORE, ~52 MB instances to disk",
    "find-1000": "C-FIND, one match of N",
    "get-1000": "C-GET of a series, to disk",
    "move-1000": "C-MOVE of a series to an adicom SCP",
    "idle-500": "associations held idle on one SCP",
}


class ChartError(ValueError):
    """The results cannot be drawn: unreadable, not a results file, or nothing in it to draw."""


# --------------------------------------------------------------------------- the results


@dataclass(frozen=True)
class Bar:
    """One pair's row of a panel."""

    scu: str
    scu_label: str
    scp: str
    rate: float | None
    low: float | None
    high: float | None
    mb_per_s: float | None
    seconds: float | None
    reps: int
    reps_wanted: int | None
    errors: int

    @property
    def label(self) -> str:
        return f"{self.scu_label} -> {self.scp}"


@dataclass(frozen=True)
class Panel:
    """One workload: its unit, kind, operation counts and bars (in run order)."""

    workload: str
    kind: str
    unit: str
    counts: tuple[int, ...]
    bars: tuple[Bar, ...]

    @property
    def drawn(self) -> list[Bar]:
        return [b for b in self.bars if b.rate is not None]


def _number(value: Any, where: str, name: str) -> float | None:
    """A finite, non-negative number or None (JSON null); anything else is bad input."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ChartError(f"{where}: {name} must be a finite number or null, not {value!r}")
    if value < 0:
        raise ChartError(f"{where}: {name} must not be negative, not {value!r}")
    return float(value)


def _string(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise ChartError(f"{where}: {key!r} must be a non-empty string, not {value!r}")
    return value


def _bar(row: Any, where: str) -> tuple[str, int | None, Bar]:
    """The workload, count and bar of one row of the JSON's `results`."""
    if not isinstance(row, dict):
        raise ChartError(f"{where}: a result must be a JSON object, not {type(row).__name__}")
    workload = _string(row, "workload", where)
    scu, scp = _string(row, "scu", where), _string(row, "scp", where)
    where = f"{where} ({workload}, {scu} -> {scp})"
    rate = _number(row.get("median_ops_per_s"), where, "median_ops_per_s")
    reps = row.get("reps", [])
    errors = row.get("errors", [])
    if not isinstance(reps, list) or not isinstance(errors, list):
        raise ChartError(f"{where}: 'reps' and 'errors' must be lists")
    rates = [
        r
        for i, rep in enumerate(reps)
        if isinstance(rep, dict)
        and (r := _number(rep.get("ops_per_s"), f"{where} reps[{i}]", "ops_per_s")) is not None
    ]
    n = row.get("n")
    wanted = row.get("reps_wanted")
    label = row.get("scu_label")
    bar = Bar(
        scu=scu,
        scu_label=label if isinstance(label, str) and label else scu,
        scp=scp,
        rate=rate if rate else None,  # a rate of 0 has nothing to draw
        low=min(rates) if rates else None,
        high=max(rates) if rates else None,
        mb_per_s=_number(row.get("median_mb_per_s"), where, "median_mb_per_s"),
        seconds=_number(row.get("median_seconds"), where, "median_seconds"),
        reps=len(rates),
        reps_wanted=wanted if isinstance(wanted, int) else None,
        errors=len(errors),
    )
    return workload, n if isinstance(n, int) else None, bar


def _workload_order(name: str) -> tuple[int, str]:
    """The runner's order for the workloads it knows, then the others by name."""
    known = list(WORKLOADS)
    return (known.index(name), "") if name in known else (len(known), name)


def _failed(count: int) -> str:
    return f"{count} failed repetition" + ("" if count == 1 else "s")


def _why_empty(bars: Sequence[Bar]) -> str:
    if not bars:
        return "no pair ran it"
    failed = sum(b.errors for b in bars)
    pairs = f"{len(bars)} pair" + ("" if len(bars) == 1 else "s")
    return f"no pair has a result ({pairs}, {_failed(failed)})"


def panels(report: Any, source: str = "results") -> tuple[list[Panel], list[str]]:
    """The panels to draw from a results JSON (as loaded), and messages on what is left out."""
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ChartError(
            f"{source}: not the JSON of `python -m benchmarks.run`"
            " (an object with a 'results' list)"
        )
    described = report.get("workloads")
    described = described if isinstance(described, dict) else {}
    rows: dict[str, list[Bar]] = {name: [] for name in described}
    counts: dict[str, set[int]] = {}
    for i, row in enumerate(report["results"]):
        workload, n, bar = _bar(row, f"{source}: results[{i}]")
        rows.setdefault(workload, []).append(bar)
        if n is not None:
            counts.setdefault(workload, set()).add(n)
    out: list[Panel] = []
    messages: list[str] = []
    for name in sorted(rows, key=_workload_order):
        bars = rows[name]
        if not any(b.rate is not None for b in bars):
            messages.append(f"{name}: skipped, {_why_empty(bars)}")
            continue
        for b in bars:
            if b.rate is None:
                messages.append(f"{name}: {b.label} has no result ({_failed(b.errors)})")
        info = described.get(name)
        info = info if isinstance(info, dict) else {}
        known = WORKLOADS.get(name)
        unit = info.get("unit") or (known.unit if known else "ops/s")
        kind = info.get("kind") or (known.kind if known else "echo")
        out.append(
            Panel(name, str(kind), str(unit), tuple(sorted(counts.get(name, ()))), tuple(bars))
        )
    if not out:
        raise ChartError(f"{source}: no workload has a result to draw")
    return out, messages


def load(path: Path) -> Any:
    """The JSON in `path`; a ChartError that says why when it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ChartError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ChartError(f"{path} is not text: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChartError(f"{path} is not JSON: {exc}") from exc


# --------------------------------------------------------------------------- drawing


def _family(stack: str) -> str:
    """adicom, dcmtk or pynetdicom, without -tls / -fsync."""
    return stack.split("-", 1)[0]


def _colour(stack: str) -> str:
    return STACK_COLOURS.get(_family(stack), OTHER_COLOUR)


def _hatch(bar: Bar) -> str | None:
    if is_tls(bar.scu) or is_tls(bar.scp):
        return TLS_HATCH
    if bar.scp.endswith(FSYNC_SUFFIX) or bar.scu.endswith(FSYNC_SUFFIX):
        return FSYNC_HATCH
    return None


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _value_text(panel: Panel, bar: Bar) -> str:
    assert bar.rate is not None
    text = f"{_fmt(bar.rate)} {panel.unit}"
    if panel.kind == "store" and bar.mb_per_s:
        text += f", {_fmt(bar.mb_per_s)} MB/s"
    if panel.kind in ("qr", "idle") and bar.seconds:
        text += f", {_fmt(bar.seconds)} s"
    return text


def _limits(panel: Panel) -> tuple[bool, float, float]:
    """Log scale or not, and the x limits that leave room for the value texts."""
    drawn = panel.drawn
    lows = [min(b.rate, b.low or b.rate) for b in drawn if b.rate is not None]
    highs = [max(b.rate, b.high or b.rate) for b in drawn if b.rate is not None]
    lo, hi = min(lows), max(highs)
    if hi / lo >= LOG_RATIO:
        left = 10 ** math.floor(math.log10(lo))
        return True, left, left * (hi / left) ** (1 / BARS_FRACTION)
    return False, 0.0, hi / BARS_FRACTION


def _tick(value: float, _pos: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def _draw_panel(ax: Axes, panel: Panel) -> None:
    log, left, right = _limits(panel)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_tick))
    ax.set_xlim(left, right)
    height = 0.8
    for y, bar in enumerate(panel.bars):
        if bar.rate is None:
            ax.annotate(
                f"no result ({_failed(bar.errors)})",
                xy=(left, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="#666666",
                style="italic",
            )
            continue
        hatch = _hatch(bar)
        # Upper half (the y axis is inverted): the SCU's colour; lower half: the SCP's.
        for offset, stack in ((-height / 4, bar.scu), (height / 4, bar.scp)):
            ax.barh(
                y + offset,
                bar.rate - left,
                height=height / 2,
                left=left,
                color=_colour(stack),
                hatch=hatch,
                edgecolor="white",
                linewidth=0,
            )
        end = bar.rate
        if bar.low is not None and bar.high is not None and bar.high > bar.low:
            ax.plot([bar.low, bar.high], [y, y], color="black", linewidth=0.9)
            ax.plot([bar.low, bar.low], [y - 0.15, y + 0.15], color="black", linewidth=0.9)
            ax.plot([bar.high, bar.high], [y - 0.15, y + 0.15], color="black", linewidth=0.9)
            end = max(end, bar.high)
        ax.annotate(
            _value_text(panel, bar),
            xy=(end, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(len(panel.bars)), [b.label for b in panel.bars], fontsize=8)
    ax.set_ylim(len(panel.bars) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel(
        f"{panel.unit} (median; log scale)" if log else f"{panel.unit} (median)", fontsize=8
    )
    n = ", ".join(str(c) for c in panel.counts)
    what = SHORT_TITLES.get(panel.workload)
    ax.set_title(
        panel.workload + (f" (N = {n})" if n else "") + (f": {what}" if what else ""),
        fontsize=9,
        loc="left",
        fontweight="bold",
    )


def _weight(panel: Panel) -> float:
    return PANEL_IN + BAR_IN * len(panel.bars)


def _columns(all_panels: Sequence[Panel]) -> list[list[Panel]]:
    """One column for one panel; else two, split in order where their heights differ least."""
    if len(all_panels) == 1:
        return [list(all_panels)]
    weights = [_weight(p) for p in all_panels]
    split = min(
        range(1, len(all_panels)),
        key=lambda i: (max(sum(weights[:i]), sum(weights[i:])), i),
    )
    return [list(all_panels[:split]), list(all_panels[split:])]


def _title(report: Mapping[str, Any]) -> tuple[str, str]:
    meta = report.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    config = report.get("config")
    config = config if isinstance(config, dict) else {}
    title = "adicom vs DCMTK vs pynetdicom: median rate of each SCU -> SCP pair (higher is faster)"
    if config.get("quick"):
        title += " [--quick run]"
    parts = []
    commit = meta.get("git_commit")
    if isinstance(commit, str) and commit:
        parts.append(f"commit {commit[:7]}" + (" (dirty)" if meta.get("git_dirty") else ""))
    stamp = meta.get("timestamp_utc")
    if isinstance(stamp, str) and stamp:
        parts.append(stamp.replace("T", " ").replace("+00:00", " UTC"))
    if meta.get("cpus_usable") or meta.get("cpu_count"):
        parts.append(f"{meta.get('cpus_usable') or meta.get('cpu_count')} CPUs")
    versions = meta.get("versions")
    if isinstance(versions, dict):
        for name, version in versions.items():
            if name != "pydicom" and isinstance(version, str) and version:
                # DCMTK's is its --version line ("$dcmtk: echoscu v3.6.7 2022-04-22 $").
                found = re.search(r"\d+(\.\d+)+", version)
                parts.append(f"{name} {found.group(0) if found else version}")
    if config.get("dcmtk_tcp_nodelay") is not None:
        parts.append("DCMTK " + ("TCP_NODELAY=1" if config["dcmtk_tcp_nodelay"] else "as packaged"))
    parts.append("dcmtk* = DCMTK SCU, differential (N-1 operations)")
    return title, "\n".join(textwrap.wrap("; ".join(parts), 150))


def _legend(fig: Figure) -> None:
    handles = [
        *(Patch(facecolor=c, label=STACK_TITLES[s]) for s, c in STACK_COLOURS.items()),
        Patch(
            facecolor=OTHER_COLOUR,
            hatch=TLS_HATCH,
            edgecolor="white",
            linewidth=0,
            label="TLS (mutual)",
        ),
        Patch(
            facecolor=OTHER_COLOUR,
            hatch=FSYNC_HATCH,
            edgecolor="white",
            linewidth=0,
            label="SCP fsyncs each file",
        ),
        Line2D([], [], color="black", linewidth=0.9, label="slowest..fastest repetition"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        fontsize=8,
        title="bar: upper half = SCU's stack, lower half = SCP's stack",
        title_fontsize=8,
        frameon=False,
    )


def figure(report: Any, source: str = "results") -> tuple[Figure, list[str]]:
    """The chart of a results JSON (as loaded) and messages on what it leaves out."""
    all_panels, messages = panels(report, source)
    columns = _columns(all_panels)
    column_in = [sum(_weight(p) for p in col) for col in columns]
    tallest = max(column_in)
    fig = Figure(figsize=(WIDTH_IN, HEADER_IN + tallest), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    title, subtitle = _title(report)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    _legend(fig)
    grid = GridSpec(1, len(columns), figure=fig)
    for c, col in enumerate(columns):
        ratios = [_weight(p) for p in col]
        spare = tallest - column_in[c]
        cell: SubplotSpec = grid[0, c]
        rows = cell.subgridspec(
            len(col) + (1 if spare > 0 else 0),
            1,
            height_ratios=ratios + ([spare] if spare > 0 else []),
        )
        for r, panel in enumerate(col):
            _draw_panel(fig.add_subplot(rows[r, 0]), panel)
    return fig, messages


def draw(report: Any, out: Path, source: str = "results") -> list[str]:
    """Write the chart of a results JSON (as loaded) to `out` (a .png); the messages."""
    if out.suffix.lower() != ".png":
        raise ChartError(f"the chart is a PNG: {out} should end in .png")
    # Default style, whatever the local matplotlibrc: the same JSON, the same picture.
    with matplotlib.style.context("default"):
        fig, messages = figure(report, source)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        try:
            fig.savefig(partial, format="png", dpi=DPI)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return messages


def draw_file(results: Path, out: Path) -> list[str]:
    """Write the chart of the results JSON file `results` to `out`; the messages."""
    return draw(load(results), out, str(results))


def report_draw(results: Path, out: Path) -> int:
    """Draw, print the messages and where the chart went (or why not) on stderr; exit code."""
    try:
        messages = draw_file(results, out)
    except ChartError as exc:
        print(f"chart: error: {exc}", file=sys.stderr)
        return 2
    for message in messages:
        print(f"chart: {message}", file=sys.stderr)
    print(f"Chart: {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chart",
        description="Draw the results JSON of `python -m benchmarks.run` as a PNG.",
    )
    p.add_argument("results", type=Path, help="the JSON a run wrote (its --json)")
    p.add_argument("out", type=Path, help="the PNG to write")
    args = p.parse_args(argv)
    return report_draw(args.results, args.out)


if __name__ == "__main__":
    sys.exit(main())
