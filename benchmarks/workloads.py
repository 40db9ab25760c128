"""The workloads: what each measures, its counts, baselines and which (SCU, SCP) pairs run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import data
from benchmarks.config import (
    DCMTK_BASELINE,
    DCMTK_SCP,
    IDLE_PAIRS,
    OP_TIMEOUT,
    PYN_BASELINE,
    PYN_SCP,
    PYN_SCU,
    QR_PAIRS,
    QR_SLOW_REPS,
    Key,
)

#: A stack whose name ends so runs its associations over TLS (benchmarks/tls.py).
TLS_SUFFIX = "-tls"


def is_tls(stack: str) -> bool:
    return stack.endswith(TLS_SUFFIX)


def _every_pair(scu: str, scp: str) -> bool:
    """Every pair of plain stacks, every pair of TLS stacks: never one of each."""
    return is_tls(scu) == is_tls(scp)


def _adicom_or_same(scu: str, scp: str) -> bool:
    """The same-stack baselines, and every pair with adicom on one side; TLS only with TLS.

    So the TLS rows are adicom-tls and dcmtk-tls each with itself and with
    each other, and the plain rows are what they were before TLS came.
    """
    if is_tls(scu) != is_tls(scp):
        return False
    return scu == scp or "adicom" in (scu.removesuffix(TLS_SUFFIX), scp.removesuffix(TLS_SUFFIX))


@dataclass(frozen=True)
class Workload:
    name: str
    #: What the sides do ("echo" or "store"); also picks the table layout.
    kind: str
    unit: str
    n_full: int
    n_quick: int
    #: The slowest rate we still wait for; bounds the SCU's run time.
    min_rate: float
    description: str
    reps_full: int = 5
    op_timeout: float = OP_TIMEOUT
    #: The instances sent (store workloads).
    data: data.DataSpec | None = None
    #: Pairs whose median rate the others are divided by, one column each.
    baselines: tuple[Key, ...] = (PYN_BASELINE,)
    #: Which (SCU, SCP) pairs run this workload.
    pairs: Callable[[str, str], bool] = _every_pair
    #: When set: exactly these pairs, in this order (instead of `pairs`).
    order: tuple[Key, ...] | None = None
    #: Pairs run with fewer repetitions in a full run (no --reps, no --quick).
    few_reps: tuple[tuple[Key, int], ...] = ()

    def scu_timeout(self, n: int) -> float:
        # Slack for start-up, warm-up and (DCMTK) the single-operation runs.
        return 60.0 + (n + 3) / self.min_rate


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "assoc-echo",
            "echo",
            "cycles/s",
            300,
            50,
            2.0,
            "associate + one C-ECHO + release, N times in sequence",
        ),
        Workload(
            "echo-one-assoc",
            "echo",
            "echoes/s",
            3000,
            300,
            5.0,
            "N C-ECHOs in sequence on one association",
        ),
        Workload(
            "store-small",
            "store",
            "inst/s",
            1000,
            200,
            10.0,
            f"N C-STOREs in sequence on one association; {data.SMALL.description};"
            " the SCP writes each to a file",
            op_timeout=30.0,
            data=data.SMALL,
            baselines=(PYN_BASELINE, DCMTK_BASELINE),
            pairs=_adicom_or_same,
        ),
        Workload(
            "store-large",
            "store",
            "inst/s",
            10,
            3,
            0.1,
            f"N C-STOREs in sequence on one association; {data.LARGE.description};"
            " the SCP writes each to a file",
            op_timeout=120.0,
            data=data.LARGE,
            baselines=(PYN_BASELINE, DCMTK_BASELINE),
            pairs=_adicom_or_same,
        ),
        Workload(
            "find-1000",
            "qr",
            "matches/s",
            1000,
            200,
            20.0,
            "one C-FIND (Study Root, IMAGE level: the N instances of one series) on one"
            " association, against an archive seeded with them",
            op_timeout=30.0,
            data=data.SMALL,
            baselines=(PYN_SCU, PYN_SCP, DCMTK_SCP),
            order=QR_PAIRS,
        ),
        Workload(
            "get-1000",
            "qr",
            "inst/s",
            1000,
            200,
            10.0,
            f"one C-GET (Study Root, SERIES level) of a series of N instances ({data.SMALL.name},"
            " ~42 KB); the SCU writes each to a file",
            op_timeout=30.0,
            data=data.SMALL,
            baselines=(PYN_SCU, PYN_SCP, DCMTK_SCP),
            order=QR_PAIRS,
            few_reps=QR_SLOW_REPS,
        ),
        Workload(
            "move-1000",
            "qr",
            "inst/s",
            1000,
            200,
            10.0,
            "one C-MOVE (Study Root, SERIES level) of the same series to an adicom storage SCP"
            " (the destination writes each to a file)",
            op_timeout=30.0,
            data=data.SMALL,
            baselines=(PYN_SCU, PYN_SCP, DCMTK_SCP),
            order=QR_PAIRS,
            few_reps=QR_SLOW_REPS,
        ),
        Workload(
            "idle-500",
            "idle",
            "assoc/s",
            500,
            100,
            5.0,
            "N associations opened (8 at a time) by one adicom event loop and held idle;"
            " the SCP's memory with all of them open",
            reps_full=3,
            op_timeout=30.0,
            baselines=(),
            order=IDLE_PAIRS,
        ),
    )
}
