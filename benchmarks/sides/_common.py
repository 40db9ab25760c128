"""What every side script shares: the command line, the ready line, the result line.

Kept free of any DICOM library so that each side imports only its own stack.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.data import SeriesKeys

READY_PREFIX = "READY port="
RESULT_PREFIX = "RESULT "
#: SCU -> runner: "read the SCP's CPU clock now"; the runner answers on stdin.
SAMPLE_PREFIX = "SAMPLE "
#: SCP -> runner, on stdout when it is stopped (SIGTERM): what only it can measure.
STATS_PREFIX = "STATS "

#: Workloads every side understands, and their kind (what the side does for
#: them); the runner holds their descriptions and counts.
WORKLOADS = {
    "assoc-echo": "echo",
    "echo-one-assoc": "echo",
    "store-small": "store",
    "store-large": "store",
    "find-1000": "qr",
    "get-1000": "qr",
    "move-1000": "qr",
    "idle-500": "idle",
}

#: The AE title the C-MOVE destination (an adicom storage SCP) answers to.
MOVE_DEST_AET = "BENCH-DEST"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a --tls-dir folder (made by benchmarks/tls.py)."""

    ca: Path
    server_key: Path
    server_cert: Path
    client_key: Path
    client_cert: Path

    def under(self, folder: Path) -> TlsFiles:
        return TlsFiles(*(folder / getattr(self, f.name) for f in fields(self)))


#: Their names inside the folder.
TLS_FILES = TlsFiles(
    Path("ca.pem"), Path("server.key"), Path("server.crt"), Path("client.key"), Path("client.crt")
)


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The --tls-dir files, or None: plain TCP."""
    return None if args.tls_dir is None else TLS_FILES.under(args.tls_dir)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    t = os.times()
    return t.user + t.system


def raise_nofile_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def max_rss_kib() -> int:
    """Peak resident set size of this process, in KiB (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@dataclass
class Measurement:
    """One SCU run, as printed on the result line."""

    workload: str
    ops: int
    ok: int
    seconds: float
    ops_per_s: float
    cpu_s: float
    max_rss_kib: int
    warmup: bool
    extra: dict[str, Any]
    #: Bytes sent in the timed span (store workloads: the files' sizes).
    bytes: int = 0
    #: CPU seconds of the SCP over the timed span, read by the runner on request.
    scp_cpu_s: float | None = None
    #: Worst lateness of a 10 ms sleep on this side's event loop (asyncio sides).
    loop_lag_max_ms: float | None = None


class Stopwatch:
    """Wall clock and CPU clock started together."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = cpu_seconds()

    def finish(
        self,
        workload: str,
        ops: int,
        ok: int,
        *,
        warmup: bool,
        error: BaseException | None = None,
        extra: dict[str, Any] | None = None,
        nbytes: int = 0,
    ) -> Measurement:
        seconds = time.perf_counter() - self.wall0
        extra = dict(extra or {})
        if error is not None:
            extra["error"] = describe(error)
        cpu = cpu_seconds() - self.cpu0
        return Measurement(
            workload=workload,
            ops=ops,
            ok=ok,
            seconds=seconds,
            ops_per_s=ops / seconds if seconds > 0 else 0.0,
            cpu_s=cpu,
            max_rss_kib=max_rss_kib(),
            warmup=warmup,
            extra=extra,
            bytes=nbytes,
        )


class ScpClock:
    """The SCP's CPU clock, read by the runner when this SCU asks (--scp-clock).

    The SCU prints ``SAMPLE <tag>`` and blocks until the runner has read the
    SCP process's CPU time from /proc and written it back on stdin, so the
    reading is taken while the SCU is not sending anything. The tag ``begin``
    also tells the runner that the timed span starts (it resets the SCP's loop
    lag monitor). Without --scp-clock (a manual run) every reading is None.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def read(self, tag: str) -> float | None:
        if not self.enabled:
            return None
        print(f"{SAMPLE_PREFIX}{tag}", flush=True)
        answer = sys.stdin.readline().strip()
        try:
            return float(answer)
        except ValueError:
            return None


def difference(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else end - start


def describe(exc: BaseException) -> str:
    """One line naming an exception, for the result line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def print_ready(port: int) -> None:
    print(f"{READY_PREFIX}{port}", flush=True)


def print_result(m: Measurement) -> None:
    print(RESULT_PREFIX + json.dumps(asdict(m), sort_keys=True), flush=True)


def print_stats(stats: dict[str, Any]) -> None:
    print(STATS_PREFIX + json.dumps(stats, sort_keys=True), flush=True)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The command line every side script accepts."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="role", required=True)

    scp = sub.add_parser("scp", help="serve until killed; print the ready line")
    scp.add_argument("--host", default="127.0.0.1")
    scp.add_argument("--port", type=int, default=0, help="0 = any free port")
    scp.add_argument("--aet", default="ANY-SCP", help="our AE title")
    scp.add_argument(
        "--store-dir",
        type=Path,
        help="accept C-STORE and write each received instance here as a file",
    )
    scp.add_argument(
        "--fsync",
        action="store_true",
        help="sync each stored file and its folder before answering (adicom only)",
    )
    scp.add_argument(
        "--tls-dir",
        type=Path,
        help="serve over TLS, requiring a client certificate: DIR holds ca.pem,"
        " server.key and server.crt (store workloads)",
    )
    scp.add_argument(
        "--max-associations",
        type=int,
        help="open associations allowed at once (idle workload; default: the stack's own)",
    )
    scp.add_argument(
        "--idle-timeout",
        type=float,
        help="abort an association idle this long, s (idle workload; default: the stack's own)",
    )

    scu = sub.add_parser("scu", help="run one workload; print one result line")
    scu.add_argument("--host", default="127.0.0.1")
    scu.add_argument("--port", type=int, required=True)
    scu.add_argument("--aet", default="ANY-SCP", help="called AE title (the SCP's)")
    scu.add_argument("--calling-aet", default="BENCH-SCU")
    scu.add_argument("--workload", choices=WORKLOADS, required=True)
    scu.add_argument("-n", type=int, required=True, help="operations to time")
    scu.add_argument("--timeout", type=float, default=10.0, help="per-operation timeout, s")
    scu.add_argument(
        "--data-dir",
        type=Path,
        help="store workloads: the generated instances (benchmarks/data.py) to send;"
        " query/retrieve workloads: the set seeded into the SCP (its UIDs are asked for)",
    )
    scu.add_argument(
        "--out-dir",
        type=Path,
        help="get-1000: C-GET warm-up instances go to DIR/warmup, the timed ones to DIR/timed",
    )
    scu.add_argument(
        "--move-dest",
        default=MOVE_DEST_AET,
        help=f"move-1000: the destination AE title (default {MOVE_DEST_AET})",
    )
    scu.add_argument(
        "--hold",
        type=float,
        default=2.0,
        help="idle-500: seconds to keep the associations open and idle (default 2)",
    )
    scu.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed warm-up (associate + C-ECHO, or C-STORE of a"
        " warm-up instance, + release) done before timing",
    )
    scu.add_argument(
        "--tls-dir",
        type=Path,
        help="store workloads: associate over TLS; DIR holds ca.pem (the SCP's"
        " certificate must chain to it), client.key and client.crt",
    )
    scu.add_argument(
        "--scp-clock",
        action="store_true",
        help="ask the runner for the SCP's CPU time around the timed span (see ScpClock)",
    )
    return parser


def main_with(
    description: str,
    scp: Callable[[argparse.Namespace], None],
    scu: Callable[[argparse.Namespace], Measurement],
) -> int:
    args = build_parser(description).parse_args()
    if args.role == "scu" and args.n <= 0:
        print("-n must be positive", file=sys.stderr)
        return 2
    kind = WORKLOADS[args.workload] if args.role == "scu" else None
    if kind in ("store", "qr") and args.data_dir is None:
        print(f"{args.workload} needs --data-dir", file=sys.stderr)
        return 2
    if args.role == "scu" and args.tls_dir is not None and kind != "store":
        print("--tls-dir is for the store workloads only", file=sys.stderr)
        return 2
    if args.role == "scu" and args.workload == "get-1000" and args.out_dir is None:
        print(f"{args.workload} needs --out-dir", file=sys.stderr)
        return 2
    raise_nofile_limit()
    if args.role == "scp":
        scp(args)
        return 0
    m = scu(args)
    print_result(m)
    # A run in which any operation failed is not a measurement; the result line
    # still says how far it got (ok) and why it stopped (extra["error"]).
    return 0 if m.ok == m.ops and "error" not in m.extra else 1


def store_files(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(the first n instances to time, the warm-up instances) of --data-dir."""
    from benchmarks.data import instance_paths, warmup_paths

    return instance_paths(args.data_dir, args.n), warmup_paths(args.data_dir)


def total_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def qr_keys(args: argparse.Namespace) -> SeriesKeys:
    """The study, series and first instance UIDs of --data-dir (seeded into the SCP)."""
    from benchmarks.data import series_keys

    return series_keys(args.data_dir)


def count_files(directory: Path) -> int:
    return sum(1 for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0
