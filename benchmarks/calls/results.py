"""The repetitions of one row against one SCP, their medians and ratios, and its JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.calls.rows import Row, baselines, scp_program


@dataclass
class RowResult:
    row: Row
    scp: str
    n: int
    reps_wanted: int
    reps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def median(self, f: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in (f(r) for r in self.reps) if v is not None]
        return statistics.median(values) if values else None

    def median_rate(self) -> float | None:
        return self.median(lambda r: float(r["ops_per_s"]))

    def median_ms_per_op(self) -> float | None:
        return self.median(lambda r: 1000.0 * r["seconds"] / r["ops"])

    def median_extra(self, name: str) -> float | None:
        return self.median(lambda r: r["extra"].get(name))

    def min_max_rate(self) -> tuple[float, float] | None:
        rates = [float(r["ops_per_s"]) for r in self.reps]
        return (min(rates), max(rates)) if rates else None

    def median_cpu_us(self, side: str) -> float | None:
        """CPU microseconds per operation of the SCU or the SCP (its whole session)."""
        key = "cpu_s" if side == "scu" else "scp_cpu_s"
        return self.median(lambda r: None if r.get(key) is None else 1e6 * r[key] / r["ops"])

    def ratios(self, everything: Sequence[RowResult]) -> dict[str, float | None]:
        """This row's median rate over its baselines' (same workload, same SCP)."""
        out: dict[str, float | None] = {}
        rate = self.median_rate()
        for column, (scu, mode) in baselines(self.row).items():
            base = next(
                (r.median_rate() for r in everything
                 if r.scp == self.scp and r.row.workload == self.row.workload
                 and (r.row.scu, r.row.mode) == (scu, mode)),
                None,
            )  # fmt: skip
            out[column] = rate / base if rate is not None and base else None
        return out

    def to_json(self, everything: Sequence[RowResult]) -> dict[str, Any]:
        return {
            "workload": self.row.workload,
            "scu": self.row.scu,
            "mode": self.row.mode,
            "label": self.row.label,
            "what": self.row.what,
            "scp": self.scp,
            "scp_program": scp_program(self.scp, self.row.workload),
            "n": self.n,
            "reps_wanted": self.reps_wanted,
            "median_ops_per_s": self.median_rate(),
            "median_ms_per_op": self.median_ms_per_op(),
            "median_p50_ms": self.median_extra("p50_ms"),
            "median_p99_ms": self.median_extra("p99_ms"),
            "median_scu_cpu_us_per_op": self.median_cpu_us("scu"),
            "median_scp_cpu_us_per_op": self.median_cpu_us("scp"),
            "median_scu_peak_rss_kib": self.median(lambda r: r.get("max_rss_kib")),
            "ratios": self.ratios(everything),
            "reps": self.reps,
            "errors": self.errors,
        }
