"""The repetitions of one (workload, SCU, SCP) pair, their medians and ratios, and its JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import Key
from benchmarks.stacks import Stack
from benchmarks.workloads import Workload


@dataclass
class PairResult:
    workload: Workload
    scu: Stack
    scp: Stack
    n: int
    reps_wanted: int
    reps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.scu.name, self.scp.name)

    def median(self, f: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in (f(r) for r in self.reps) if v is not None]
        return statistics.median(values) if values else None

    def median_of(self, name: str, scale: float = 1.0) -> float | None:
        return self.median(lambda r: None if r.get(name) is None else scale * r[name])

    def median_rate(self) -> float | None:
        return self.median_of("ops_per_s")

    def min_max_rate(self) -> tuple[float, float] | None:
        rates = [float(r["ops_per_s"]) for r in self.reps]
        return (min(rates), max(rates)) if rates else None

    def median_scu_cpu_us(self) -> float | None:
        return self.median(lambda r: 1e6 * r["cpu_s"] / r["ops"])

    def median_scp_cpu_us(self) -> float | None:
        return self.median(
            lambda r: None if r.get("scp_cpu_s") is None else 1e6 * r["scp_cpu_s"] / r["ops"]
        )

    def ratios(self, all_results: Sequence[PairResult]) -> dict[str, float | None]:
        """Median rate / median rate of each baseline pair on this workload."""
        out: dict[str, float | None] = {}
        rate = self.median_rate()
        for key in self.workload.baselines:
            # "*" stands for this row's own SCU or SCP (relative baselines).
            wanted = (
                self.key[0] if key[0] == "*" else key[0],
                self.key[1] if key[1] == "*" else key[1],
            )
            base = next(
                (r.median_rate() for r in all_results
                 if r.workload is self.workload and r.key == wanted and r.reps),
                None,
            )  # fmt: skip
            out["->".join(key)] = rate / base if rate is not None and base else None
        return out

    def median_seconds(self) -> float | None:
        return self.median_of("seconds")

    def _kind_medians(self) -> dict[str, float | None]:
        """Medians only the query/retrieve and idle workloads have."""
        if self.workload.kind == "qr":
            return {
                "median_seconds": self.median_seconds(),
                "median_scp_rss_kib": self.median_of("scp_rss_kib"),
            }
        if self.workload.kind == "idle":
            keys = ("seconds", "scp_rss_before_kib", "scp_rss_open_kib", "scp_rss_per_assoc_kib",
                    "scp_threads_open", "scp_fds_open", "scp_idle_cpu_pct")  # fmt: skip
            return {f"median_{k}": self.median_of(k) for k in keys}
        return {}

    def to_json(self, all_results: Sequence[PairResult]) -> dict[str, Any]:
        return {
            "workload": self.workload.name,
            "scu": self.scu.name,
            "scu_label": self.scu.label(),
            "scp": self.scp.name,
            "n": self.n,
            "reps_wanted": self.reps_wanted,
            "median_ops_per_s": self.median_rate(),
            "median_mb_per_s": self.median_of("mb_per_s"),
            "median_scu_cpu_s": self.median_of("cpu_s"),
            "median_scp_cpu_s": self.median_of("scp_cpu_s"),
            "median_scu_cpu_us_per_op": self.median_scu_cpu_us(),
            "median_scp_cpu_us_per_op": self.median_scp_cpu_us(),
            "median_scu_peak_rss_kib": self.median_of("max_rss_kib"),
            "median_scp_peak_rss_kib": self.median_of("scp_peak_rss_kib"),
            "median_scu_loop_lag_max_ms": self.median_of("loop_lag_max_ms"),
            "median_scp_loop_lag_max_ms": self.median_of("scp_loop_lag_max_ms"),
            "ratios": self.ratios(all_results),
            **self._kind_medians(),
            "reps": self.reps,
            "errors": self.errors,
        }
