"""The speed rows of issue 17 in one run: adicom beside DCMTK, each row against its target.

    python -m benchmarks.speed run --out DIR [--parts echo,store,...]   # ~15 min on 2 cores
    python -m benchmarks.speed report DIR [--markdown OUT.md] [--chart OUT.png]

``run`` runs the benchmarks behind each row, one after the other (never two
at once: they share the cores), each writing its JSON into DIR under a fixed
name, then reports. ``report`` reads whatever JSONs DIR holds and prints the
table; a row whose benchmark did not run is left out. Every figure is a
median of the benchmark's own repetitions, and every DCMTK figure beside it
comes from the same run, so compare ratios, not rates, across runs.

Each row is *met* when its figure is on the right side of its target; rows
the issue states no target for are shown for reference. The chart draws
every row with a target as its figure over the target, so that a bar at or
past 1 is met (for a "lower is better" row, the target over the figure).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: One part: the module and arguments of a benchmark, and the JSON it writes.
#: ``{out}`` is the output directory. The order is the order they run in.
PARTS: dict[str, list[tuple[list[str], str]]] = {
    "echo": [
        (["benchmarks.run", "--only", "echo-one-assoc", "--only", "assoc-echo",
          "--pair", "adicom:adicom", "--pair", "dcmtk:dcmtk", "--pair", "adicom:dcmtk"],
         "echo.json"),
    ],
    "assoc": [
        (["benchmarks.assocrate", "-n", "3000", "--reps", "3"], "assoc1.json"),
        (["benchmarks.assocrate", "-n", "3000", "--reps", "3", "--lanes", "2"], "assoc2.json"),
    ],
    "store": [
        (["benchmarks.run", "--only", "store-small", "--only", "store-large",
          "--pair", "adicom:adicom", "--pair", "dcmtk:dcmtk", "--pair", "dcmtk:adicom",
          "--pair", "dcmtk:adicom-archive"],
         "store.json"),
        (["benchmarks.run", "--scratch", "/dev/shm", "--only", "store-small",
          "--pair", "adicom:adicom", "--pair", "dcmtk:dcmtk", "--pair", "dcmtk:adicom",
          "--pair", "dcmtk:adicom-archive"],
         "store_tmpfs.json"),
    ],
    "uvloop": [
        (["benchmarks.run", "--only", "echo-one-assoc", "--only", "store-small",
          "--pair", "adicom-uvloop:adicom-uvloop", "--pair", "dcmtk:dcmtk"],
         "uvloop.json"),
    ],
    "qr": [
        (["benchmarks.run", "--only", "find-1000", "--only", "get-1000", "--only", "move-1000",
          "--pair", "adicom:dcmtk", "--pair", "dcmtk:dcmtk", "--pair", "dcmtk:adicom"],
         "qr.json"),
    ],
    "bulk": [(["benchmarks.bulkload"], "bulk.json")],
    "scale": [
        (["benchmarks.scale", "--only", "idle-5000", "--stack", "adicom"], "idle.json"),
        (["benchmarks.scale", "--only", "busy-1000", "--stack", "adicom"], "busy.json"),
    ],
    "workers": [
        (["benchmarks.scale", "--only", "workers", "-n", "6000", "--client", "raw",
          "--server", "archive", "--per-assoc", "100", "--reps", "5"],
         "workers.json"),
    ],
}  # fmt: skip

MIB = 1024
#: The chart's bars stop here (a p99 at a tenth of its target would hide the rest).
CHART_CAP = 3.0


@dataclass(frozen=True)
class Row:
    """One line of the table: adicom's figure, DCMTK's in the same run, the target."""

    name: str
    adicom: float
    unit: str
    dcmtk: float | None = None
    #: "ratio" (adicom / DCMTK at least the target), "min" (the figure at
    #: least the target) or "max" (the figure under the target).
    kind: str = "ratio"
    target: float | None = None
    #: The target in words, where the number alone would read oddly ("none").
    label: str | None = None

    @property
    def ratio(self) -> float | None:
        """adicom's rate over DCMTK's (only for "ratio" rows: rates, more is better)."""
        if self.kind != "ratio" or not self.dcmtk:
            return None
        return self.adicom / self.dcmtk

    @property
    def score(self) -> float | None:
        """The figure over its target, turned so that 1 or more is met; None without a target."""
        if self.target is None:
            return None
        if self.kind == "ratio":
            return None if self.ratio is None else self.ratio / self.target
        if self.kind == "min":
            return self.adicom / self.target
        return self.target / self.adicom if self.adicom else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target, or no DCMTK figure to compare)."""
        score = self.score
        return None if score is None else score >= 1

    def target_text(self) -> str:
        """The target as the issue states it."""
        if self.label is not None or self.target is None:
            return self.label or ""
        sign = {"ratio": ">= ", "min": ">= ", "max": "< "}[self.kind]
        if self.kind == "ratio":
            return f"{sign}{self.target:g}x DCMTK"
        return sign + _figure(self.target, self.unit)


# --------------------------------------------------------------------------- reading the JSONs


def _load(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _median(run: Any, workload: str, scu: str, scp: str, key: str) -> float | None:
    """A pair's median from a ``benchmarks.run`` JSON (None when it did not run or failed)."""
    if not run:
        return None
    for result in run.get("results", []):
        if (result["workload"], result["scu"], result["scp"]) == (workload, scu, scp):
            value = result.get(key)
            return float(value) if value else None
    return None


def _pair_row(
    run: Any,
    name: str,
    workload: str,
    ours: tuple[str, str],
    theirs: tuple[str, str],
    target: float | None,
    key: str = "median_ops_per_s",
    unit: str = "/s",
) -> Row | None:
    adicom = _median(run, workload, *ours, key)
    if adicom is None:
        return None
    return Row(name, adicom, unit, _median(run, workload, *theirs, key), "ratio", target)


def _run_rows(folder: Path) -> Iterable[Row | None]:
    """The rows measured by ``benchmarks.run``: echo, stores, query/retrieve."""
    echo, store = _load(folder, "echo.json"), _load(folder, "store.json")
    tmpfs, qr = _load(folder, "store_tmpfs.json"), _load(folder, "qr.json")
    uv = _load(folder, "uvloop.json")
    same, dcmtk = ("adicom", "adicom"), ("dcmtk", "dcmtk")
    uvloop = ("adicom-uvloop", "adicom-uvloop")
    yield _pair_row(echo, "C-ECHO on one association", "echo-one-assoc", same, dcmtk, 1.0)
    yield _pair_row(uv, "C-ECHO on one association, uvloop", "echo-one-assoc", uvloop, dcmtk, 1.0)
    assoc = _median(echo, "assoc-echo", "adicom", "adicom", "median_ops_per_s")
    if assoc is not None:
        yield Row("associate + C-ECHO + release, adicom -> adicom", assoc, "/s", None, "min", 3000)
    yield _pair_row(
        echo, "associate + C-ECHO + release, adicom -> storescp", "assoc-echo",
        ("adicom", "dcmtk"), dcmtk, None,
    )  # fmt: skip
    for run, where in ((store, "disk"), (tmpfs, "tmpfs")):
        yield _pair_row(
            run, f"C-STORE 1000 small, same stack each side, {where}", "store-small",
            same, dcmtk, 1.2,
        )  # fmt: skip
    yield _pair_row(uv, "C-STORE 1000 small, uvloop", "store-small", uvloop, dcmtk, 1.2)
    yield _pair_row(
        store, "C-STORE 10 large, same stack each side", "store-large", same, dcmtk, None,
        key="median_mb_per_s", unit="MB/s",
    )  # fmt: skip
    storescu = ("dcmtk", "adicom-archive")
    for run, where in ((store, "disk"), (tmpfs, "tmpfs")):
        yield _pair_row(
            run, f"storescu -> adicom serve --storage, {where}", "store-small",
            storescu, dcmtk, 1.0,
        )  # fmt: skip
        yield _pair_row(
            run, f"storescu -> Server + DiskStorage, {where}", "store-small",
            ("dcmtk", "adicom"), dcmtk, None,
        )  # fmt: skip
    for workload in ("find-1000", "get-1000", "move-1000"):
        op = workload.partition("-")[0].upper()
        yield _pair_row(
            qr, f"C-{op} served to DCMTK's SCU (vs dcmqrscp)", workload,
            ("dcmtk", "adicom"), dcmtk, None,
        )  # fmt: skip
        yield _pair_row(
            qr, f"C-{op} as SCU against dcmqrscp (vs DCMTK's SCU)", workload,
            ("adicom", "dcmtk"), dcmtk, 1.0,
        )  # fmt: skip


def _assoc_rows(folder: Path) -> Iterable[Row | None]:
    """``benchmarks.assocrate``: a raw client's cycles against adicom serve and storescp."""
    for name, lanes in (("assoc1.json", 1), ("assoc2.json", 2)):
        found = _load(folder, name)
        if not found:
            continue
        rows = found["rows"]
        if "adicom" in rows:
            yield Row(
                f"raw client's associate + C-ECHO + release, {lanes} "
                f"lane{'s' if lanes > 1 else ''}: adicom serve vs storescp",
                rows["adicom"]["cycles_per_s"], "/s",
                rows["dcmtk"]["cycles_per_s"] if "dcmtk" in rows else None,
            )  # fmt: skip


def _bulk_rows(folder: Path) -> Iterable[Row | None]:
    """``benchmarks.bulkload``: memory, and a C-ECHO's worst wait under bulk load.

    Two adicom SCPs: ``adicom`` in the environment the benchmark runs in
    (the dev extra: pydicom then imports numpy and more), and ``adicom-deps``
    with only adicom's own dependencies importable, as a deployment has.
    The memory targets are read on the second. The wait is the worst of
    all repetitions.
    """
    found = _load(folder, "bulk.json")
    if not found:
        return
    summary = found["summary"]  # medians over the repetitions, and the worst
    theirs = summary.get("dcmtk")
    deps = summary.get("adicom-deps")
    if deps is not None:
        for key, what, target in (
            ("rss_idle_mib", "idle", 40),
            ("rss_receiving_mib", "receiving 50 MB instances", 45),
        ):
            yield Row(
                f"SCP resident memory, {what} (adicom's own dependencies)", deps[key], "MiB",
                theirs[key] if theirs else None, "max", target,
            )  # fmt: skip
    for scp, how in (("adicom", "dev environment"), ("adicom-deps", "own dependencies")):
        if scp in summary and summary[scp]["worst_max_ms"] is not None:
            yield Row(
                f"C-ECHO's worst wait while storescu streams 10 x 50 MB ({how})",
                summary[scp]["worst_max_ms"], "ms",
                theirs["worst_max_ms"] if theirs else None, "max", 5,
            )  # fmt: skip


def _scale_rows(folder: Path) -> Iterable[Row | None]:
    """``benchmarks.scale``: 5,000 idle and 1,000 busy associations, and the workers."""
    idle = (_load(folder, "idle.json") or {}).get("idle-5000", {}).get("adicom")
    busy = (_load(folder, "busy.json") or {}).get("busy-1000", {}).get("adicom")
    for label, found, failed, rss in (
        ("idle-5000", idle, "failed", "scp_open"),
        ("busy-1000", busy, "failed_associations", "scp_after"),
    ):
        if not found:
            continue
        yield Row(f"{label}: associations failed", found[failed], "", None, "max", 1, "none")
        yield Row(f"{label}: probe C-ECHO p99", found["probe_p99_ms"], "ms", None, "max", 50)
        yield Row(f"{label}: SCP resident memory", found[rss]["rss_kib"] / MIB, "MiB", None,
                  "max", 300)  # fmt: skip
        yield Row(f"{label}: SCP threads", found[rss]["threads"], "", None, "max", 2, "one")
    workers = _load(folder, "workers.json")
    if workers:
        summary = workers["workers"]
        for mode, how in (("2-own", "own sockets"), ("2-shared", "one shared socket")):
            speedup = summary.get(f"speedup {mode}")
            if speedup is not None:
                yield Row(f"serve --workers 2 over 1, {how}", speedup, "x", None, "min", 1.6)


READERS: tuple[Callable[[Path], Iterable[Row | None]], ...] = (
    _run_rows,
    _assoc_rows,
    _bulk_rows,
    _scale_rows,
)


def rows(folder: Path) -> list[Row]:
    """Every row whose benchmark left its JSON in ``folder``, in the issue's order."""
    return [row for read in READERS for row in read(folder) if row is not None]


# --------------------------------------------------------------------------- output


def _figure(value: float | None, unit: str) -> str:
    """``2,483/s``, ``39.2 MiB``, ``1.42x``: three significant digits below 100."""
    if value is None:
        return ""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"
    return f"{text}{unit}" if unit in ("", "x", "/s") else f"{text} {unit}"


def markdown(found: Sequence[Row]) -> str:
    """The rows as a Markdown table: figures, ratio, target, verdict."""
    lines = [
        "| row | adicom | DCMTK, same run | adicom / DCMTK | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in found:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        verdict = {True: "met", False: "**not met**", None: ""}[row.met]
        lines.append(
            f"| {row.name} | {_figure(row.adicom, row.unit)} | {_figure(row.dcmtk, row.unit)}"
            f" | {ratio} | {row.target_text()} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def chart(found: Sequence[Row], out: Path) -> None:
    """Each row with a numeric target as a bar of its score (1 = the target), as a PNG at ``out``.

    Rows whose target is a count in words ("none" failed, "one" thread)
    are the table's only: a bar would say nothing more than met or not.
    Scores are drawn up to :data:`CHART_CAP`.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [row for row in found if row.score is not None and row.label is None]
    if not scored:
        raise ValueError("no row with a target to draw")
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(11, 0.42 * len(scored) + 1.4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        names = [row.name for row in scored][::-1]
        scores = [min(row.score or 0.0, CHART_CAP) for row in scored][::-1]
        colours = ["#2e7d32" if row.met else "#c62828" for row in scored][::-1]
        axes.barh(names, scores, color=colours)
        axes.axvline(1.0, color="black", linewidth=1)
        for y, row in enumerate(scored[::-1]):
            text = f"{_figure(row.adicom, row.unit)} ({row.target_text()})"
            if row.ratio is not None:
                text = f"{row.ratio:.2f}x DCMTK ({row.target_text()})"
            # Right of the target's line, where a short bar would put it across.
            at = max(min(row.score or 0.0, CHART_CAP), 1.0) + 0.03
            axes.text(at, y, text, va="center", fontsize=8)
        axes.set_xlim(0, CHART_CAP * 1.45)
        axes.set_xlabel("figure over its target (1 = the target; right of the line: met)")
        axes.tick_params(axis="y", labelsize=8)
        axes.set_title("issue 17 rows, adicom with DCMTK in the same run", fontsize=10)
        figure.tight_layout()
        figure.savefig(out, format="png")


# --------------------------------------------------------------------------- running


def run(out: Path, parts: Sequence[str], log: Callable[[str], None] = print) -> None:
    """Run ``parts`` one after the other; each benchmark's output goes to ``out/NAME.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for argv, name in PARTS[part]:
            log(f"{time.strftime('%H:%M:%S')} {part}: {' '.join(argv)}")
            stem = name.removesuffix(".json")
            with (out / f"{stem}.txt").open("wb") as text:
                done = subprocess.run(
                    [sys.executable, "-m", *argv, "--json", str(out / name)],
                    stdout=text,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if done.returncode != 0:
                log(f"  {part}: exit code {done.returncode}, see {out / stem}.txt")


def report(folder: Path, md: Path | None, png: Path | None) -> str:
    """The table of ``folder``'s rows; written to ``md`` and drawn to ``png`` when given."""
    found = rows(folder)
    if not found:
        raise SystemExit(f"no benchmark results in {folder}")
    table = markdown(found)
    if md is not None:
        md.write_text(table)
    if png is not None:
        chart(found, png)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``run`` the benchmarks behind the rows, or ``report`` on an earlier run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    running = sub.add_parser("run", help="run the benchmarks, then report")
    running.add_argument("--out", type=Path, required=True, help="the folder for the outputs")
    running.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    reporting = sub.add_parser("report", help="the table of an earlier run's folder")
    reporting.add_argument("folder", type=Path)
    for each in (running, reporting):
        each.add_argument("--markdown", type=Path, help="write the table here too")
        each.add_argument("--chart", type=Path, help="draw the rows with a target as a PNG")
    args = parser.parse_args(argv)
    if args.command == "run":
        parts = [part for part in args.parts.split(",") if part]
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
        run(args.out, parts)
        folder = args.out
    else:
        folder = args.folder
    print(report(folder, args.markdown, args.chart), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
