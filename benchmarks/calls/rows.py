"""What the calls benchmark measures: its workloads, and the rows (SCU, mode) of each.

Kept free of any DICOM library, like ``benchmarks.sides._common``: the runner
and both SCU sides import it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The SCPs, in table order: each stack's archive (``benchmarks.archives``) for
#: find-calls; for the store workloads adicom's archive again and DCMTK's storescp.
SCPS = ("adicom", "dcmtk")
DEFAULT_N = 1000
#: pynetdicom leaves Nagle's algorithm on: each C-FIND and C-STORE waits ~40 ms
#: for a delayed ACK, so its rows run this many calls unless told otherwise.
DEFAULT_PYNETDICOM_N = 100
DEFAULT_REPS = 3


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    description: str
    #: Each repetition against a fresh archive, which must then hold every instance sent.
    stores: bool


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "find-calls",
            "calls/s",
            "N calls, one after the other, each one C-FIND at STUDY level (one study by its"
            " Study Instance UID, in turn among the seeded studies: one match each)",
            stores=False,
        ),
        Workload(
            "store-calls",
            "calls/s",
            "N calls, one after the other, each one C-STORE of one ~42 KB CT instance",
            stores=True,
        ),
        Workload(
            "store-batch",
            "inst/s",
            "N ~42 KB CT instances in one call: adicom.store (one association) or"
            " DicomClient.store_many (chunks of 256 over `concurrency` associations)",
            stores=True,
        ),
    )
}


@dataclass(frozen=True)
class Row:
    """One SCU process per repetition: this stack, doing the workload this way."""

    workload: str
    scu: str
    #: adicom: pool, per-call, store, many-C; pynetdicom: one-assoc, per-call.
    mode: str
    label: str
    what: str

    @property
    def concurrency(self) -> int | None:
        """store_many's concurrency (modes many-C), else None."""
        return int(self.mode.split("-", 1)[1]) if self.mode.startswith("many-") else None


def _call_rows(workload: str, call: str, pyn_call: str) -> tuple[Row, ...]:
    return (
        Row(workload, "adicom", "pool", "adicom pooled",
            f"DicomClient(pool=AssociationPool()).{call}: one association reused"),
        Row(workload, "adicom", "per-call", "adicom per call",
            f"DicomClient().{call}: associate, the call, release"),
        Row(workload, "pynetdicom", "one-assoc", "pynetdicom one assoc",
            f"ae.associate() once, {pyn_call} N times, release"),
        Row(workload, "pynetdicom", "per-call", "pynetdicom per call",
            f"ae.associate(), {pyn_call}, release: N times"),
    )  # fmt: skip


ROWS: tuple[Row, ...] = (
    *_call_rows("find-calls", "find_studies(StudyQuery(study_instance_uid=...))", "send_c_find"),
    *_call_rows("store-calls", "store([path])", "send_c_store(path)"),
    Row("store-batch", "adicom", "store", "adicom.store",
        "adicom.store(host, port, paths): one association"),
    *(
        Row("store-batch", "adicom", f"many-{c}", f"store_many c={c}",
            f"DicomClient().store_many(paths, concurrency={c})")
        for c in (1, 2, 4)
    ),
)  # fmt: skip

#: The modes each side runs.
SCU_MODES = {
    "adicom": ("pool", "per-call", "store", "many-1", "many-2", "many-4"),
    "pynetdicom": ("one-assoc", "per-call"),
}


def baselines(row: Row) -> dict[str, tuple[str, str]]:
    """The ratio columns of a row: column name -> the (SCU, mode) its rate is divided by."""
    if row.workload == "store-batch":
        return {} if row.mode == "store" else {"x adicom.store": ("adicom", "store")}
    out: dict[str, tuple[str, str]] = {}
    if row.mode != "per-call":
        out["x per call"] = (row.scu, "per-call")
    if row.scu == "adicom":
        out["x pynetdicom"] = ("pynetdicom", "one-assoc" if row.mode == "pool" else "per-call")
    return out


#: What each SCP is, by stack and whether the workload stores: as the table names it.
SCP_PROGRAMS = {
    ("adicom", False): "adicom serve",
    ("adicom", True): "adicom serve",
    ("dcmtk", False): "dcmqrscp",
    ("dcmtk", True): "storescp --fork",
}


def scp_program(scp: str, workload: str) -> str:
    return SCP_PROGRAMS[(scp, WORKLOADS[workload].stores)]
