"""The query/retrieve and idle targets, checked against a run's medians."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks.config import QR_FIXED_SCU
from benchmarks.results import PairResult
from benchmarks.workloads import WORKLOADS, Workload


def _find(results: Sequence[PairResult], workload: str, scu: str, scp: str) -> PairResult | None:
    return next(
        (r for r in results if r.workload.name == workload and r.key == (scu, scp) and r.reps),
        None,
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _secs(r: PairResult) -> float | None:
    """Median time per N operations: N / median rate (comparable across the dcmtk* differential)."""
    rate = r.median_rate()
    return r.n / rate if rate else None


def _scu_time_lines(results: Sequence[PairResult], wl: Workload) -> list[str]:
    """adicom's SCU against pynetdicom's, on the adicom and the DCMTK SCP."""
    lines: list[str] = []
    for scp in ("adicom", "dcmtk"):
        a, p = (
            _find(results, wl.name, "adicom", scp),
            _find(results, wl.name, "pynetdicom", scp),
        )
        if a is None or p is None:
            continue
        ta, tp = _secs(a), _secs(p)
        if ta is None or tp is None:
            continue
        line = (
            f"{wl.name}, SCU against the {scp} SCP: adicom {ta:.3f} s, pynetdicom {tp:.3f} s;"
            f" adicom/pynetdicom time = {ta / tp:.2f}"
        )
        if wl.name in ("find-1000", "get-1000"):
            line += f" (target <= 0.20: {_verdict(ta / tp <= 0.2)})"
        lines.append(line)
    return lines


def _loop_lag_lines(results: Sequence[PairResult], wl: Workload) -> list[str]:
    """get-1000: the adicom SCU's worst event-loop lag."""
    lines: list[str] = []
    if wl.name != "get-1000":
        return lines
    for scp in ("adicom", "dcmtk"):
        a = _find(results, wl.name, "adicom", scp)
        if a is None:
            continue
        lags = [float(x["loop_lag_max_ms"]) for x in a.reps if x.get("loop_lag_max_ms")]
        if lags:
            lines.append(
                f"{wl.name}, adicom SCU's worst event-loop lag against the {scp} SCP:"
                f" median {statistics.median(lags):.1f} ms, max {max(lags):.1f} ms"
                f" (target < 10 ms: {_verdict(max(lags) < 10)})"
            )
    return lines


def _served_by_lines(results: Sequence[PairResult], wl: Workload) -> list[str]:
    """The same (DCMTK) SCU served by each SCP: pynetdicom's and DCMTK's time over adicom's."""
    served = {
        scp: _find(results, wl.name, QR_FIXED_SCU, scp) for scp in ("adicom", "pynetdicom", "dcmtk")
    }
    times = {k: _secs(v) for k, v in served.items() if v is not None}
    ta = times.get("adicom")
    if not ta:
        return []
    parts = [f"{k} {t:.3f} s" for k, t in times.items() if t is not None]
    line = f"{wl.name}, served by (SCU {QR_FIXED_SCU}*): {', '.join(parts)}"
    tp, td = times.get("pynetdicom"), times.get("dcmtk")
    if tp:
        line += f"; pynetdicom/adicom = {tp / ta:.1f}x (target >= 5: {_verdict(tp / ta >= 5)})"
    if td:
        line += f"; dcmtk/adicom = {td / ta:.2f}x (target >= 1: {_verdict(td / ta >= 1)})"
    return [line]


def _idle_lines(results: Sequence[PairResult], wl: Workload) -> list[str]:
    """Each idle SCP's memory with all associations open (target: adicom's)."""
    lines: list[str] = []
    for r in (x for x in results if x.workload is wl and x.reps):
        rss = r.median_of("scp_rss_open_kib")
        if rss is None:
            continue
        mb = rss * 1024 / 1e6
        line = (
            f"{wl.name}, {r.scp.name} SCP with {r.n} associations open: RSS"
            f" {rss / 1024:.0f} MiB = {mb:.0f} MB"
        )
        if r.scp.name == "adicom":
            line += f" (target < 300 MB: {_verdict(mb < 300)})"
        lines.append(line)
    return lines


def render_targets(results: Sequence[PairResult]) -> list[str]:
    """The query/retrieve and idle targets, checked against this run's medians."""
    lines: list[str] = []
    for wl in (w for w in WORKLOADS.values() if w.kind == "qr"):
        lines += _scu_time_lines(results, wl)
        lines += _loop_lag_lines(results, wl)
        lines += _served_by_lines(results, wl)
    for wl in (w for w in WORKLOADS.values() if w.kind == "idle"):
        lines += _idle_lines(results, wl)
    return lines
