"""The runner's fixed settings: paths, addresses, timeouts and the pairs that are compared."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "bench.json"
DEFAULT_DATA = REPO_ROOT / "benchmarks" / "results" / "data"
HOST = "127.0.0.1"
SCP_AET = "BENCH-SCP"
SCU_AET = "BENCH-SCU"
SCP_START_TIMEOUT = 30.0  # seconds until the SCP must listen
SCP_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
OP_TIMEOUT = 10.0  # per-operation timeout handed to each SCU (echo workloads)

Key = tuple[str, str]  # (SCU stack name, SCP stack name)
PYN_BASELINE: Key = ("pynetdicom", "pynetdicom")
DCMTK_BASELINE: Key = ("dcmtk", "dcmtk")
#: Relative baselines ("*" = this row's own SCU or SCP): the same SCP with a
#: pynetdicom SCU, and the same SCU with a pynetdicom or DCMTK SCP.
PYN_SCU: Key = ("pynetdicom", "*")
PYN_SCP: Key = ("*", "pynetdicom")
DCMTK_SCP: Key = ("*", "dcmtk")
#: Query/retrieve pairs, in table order: three SCUs against adicom's archive,
#: the same three against DCMTK's, and the DCMTK SCU against pynetdicom's
#: (a pynetdicom SCP sends C-STOREs at ~20/s, see README, so only that one).
QR_PAIRS: tuple[Key, ...] = (
    ("pynetdicom", "adicom"),
    ("adicom", "adicom"),
    ("dcmtk", "adicom"),
    ("pynetdicom", "dcmtk"),
    ("adicom", "dcmtk"),
    ("dcmtk", "dcmtk"),
    ("dcmtk", "pynetdicom"),
)
#: Pairs that serve C-STOREs from pynetdicom (Nagle: ~45 s per 1000): fewer reps.
QR_SLOW_REPS: tuple[tuple[Key, int], ...] = ((("dcmtk", "pynetdicom"), 3),)
#: The fixed SCU of the "served by" comparison.
QR_FIXED_SCU = "dcmtk"
IDLE_PAIRS: tuple[Key, ...] = (("adicom", "adicom"), ("adicom", "pynetdicom"))
#: idle-500: seconds the associations stay open and idle before the SCP is measured again.
IDLE_HOLD = 2.0
#: pynetdicom's SCP allows 10 associations unless told otherwise.
IDLE_PYNETDICOM_MAX_ASSOCIATIONS = 1000
#: pynetdicom opens ~15 associations/s with hundreds of threads polling: its
#: default network_timeout (60 s, like adicom serve's idle timeout) could
#: abort the first before the last is open on a loaded machine.
IDLE_PYNETDICOM_NETWORK_TIMEOUT = 300
