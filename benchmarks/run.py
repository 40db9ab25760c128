"""Benchmark runner: every workload, every (SCU, SCP) pair, each side in its own process.

    python -m benchmarks.run [--quick] [--reps N] [--json PATH] [--only WORKLOAD]

For each repetition of each pair the runner starts the SCP, waits (bounded)
until it listens, runs the SCU, which prints one JSON result line, and stops
the SCP. While the SCU runs, the runner reads the SCP's CPU clock whenever the
SCU asks (just before and after its timed span). Repetitions go round-robin
over the pairs, so slow drift of the machine spreads over all pairs alike. The
tables show the median of the repetitions and its ratio to the baseline pairs
(pynetdicom -> pynetdicom, and for C-STORE also DCMTK -> DCMTK) on the same
workload; the JSON file keeps every repetition. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import archives, data
from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import (
    MOVE_DEST_AET,
    READY_PREFIX,
    RESULT_PREFIX,
    SAMPLE_PREFIX,
    STATS_PREFIX,
    raise_nofile_limit,
)

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


# --------------------------------------------------------------------------- workloads


def _every_pair(_scu: str, _scp: str) -> bool:
    return True


def _adicom_or_same(scu: str, scp: str) -> bool:
    """The same-stack baselines, and every pair with adicom on one side."""
    return scu == scp or "adicom" in (scu, scp)


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


# --------------------------------------------------------------------------- stacks


@dataclass
class Scp:
    """A started SCP: its process, port, log files and where it stores."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    store_dir: Path | None


@dataclass(frozen=True)
class Stack:
    """One DICOM implementation that can play SCP and/or SCU."""

    name: str
    #: Given a workload kind: None when usable, else why not.
    unavailable: Callable[[str], str | None]
    #: argv of the SCP, given (port, workdir, store_dir or None); port 0 = a
    #: Python side that picks its own free port and prints the ready line.
    scp_argv: Callable[[int, Path, Path | None], list[str]]
    scp_prints_ready: bool
    #: argv of the SCU, given (port, workload, n, data_dir or None).
    scu_argv: Callable[[int, Workload, int, Path | None], list[str]]
    #: Workloads this stack can run fairly as SCU (None = all).
    scu_workloads: frozenset[str] | None = None
    #: How the SCU is labelled in the table, when it is not just the name.
    scu_label: str | None = None
    #: The SCP resets its loop lag maximum on SIGUSR1 (else SIGUSR1 would kill it).
    scp_lag_reset: bool = False
    #: Extra environment for this stack's processes (SCP and SCU).
    env: dict[str, str] = field(default_factory=dict)
    #: Printed under the table when this stack takes part (as SCU or SCP) ...
    notes: list[str] = field(default_factory=list)
    #: ... and when it plays the SCU.
    scu_notes: list[str] = field(default_factory=list)

    def label(self) -> str:
        return self.scu_label or self.name


def _python_side(
    module: str,
) -> tuple[
    Callable[[int, Path, Path | None], list[str]],
    Callable[[int, Workload, int, Path | None], list[str]],
]:
    def scp(port: int, _workdir: Path, store_dir: Path | None) -> list[str]:
        argv = [sys.executable, "-m", module, "scp", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET]  # fmt: skip
        if store_dir is not None:
            argv += ["--store-dir", str(store_dir)]
        return argv

    def scu(port: int, workload: Workload, n: int, data_dir: Path | None) -> list[str]:
        argv = [sys.executable, "-m", module, "scu", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET, "--calling-aet", SCU_AET, "--workload", workload.name,
                "-n", str(n), "--timeout", str(workload.op_timeout), "--scp-clock"]  # fmt: skip
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        return argv

    return scp, scu


def _probe_import(code: str) -> str | None:
    """Run `code` in a fresh interpreter at the repo root; None if it succeeds."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "import timed out"
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {out.returncode}"


def _adicom_unavailable(kind: str) -> str | None:
    if kind == "store":
        return _probe_import("import adicom; adicom.store, adicom.DiskStorage, adicom.Server")
    if kind == "qr":
        return _probe_import(
            "import adicom, adicom.cli, adicom.archive, adicom.qrscu;"
            " adicom.store, adicom.DicomClient.get_series, adicom.DicomClient.move_series"
        )
    if kind == "idle":
        return _probe_import("import adicom, adicom.cli; adicom.open_association")
    return _probe_import("import adicom; adicom.connect, adicom.Server")


def _pynetdicom_unavailable(kind: str) -> str | None:
    if kind == "qr":  # its qrscp app needs SQLAlchemy
        return _probe_import("import pynetdicom, sqlalchemy, pynetdicom.apps.qrscp.qrscp")
    return _probe_import("import pynetdicom")


DCMTK_TOOLS = {
    "store": ("storescp", "storescu"),
    "qr": ("dcmqrscp", "findscu", "getscu", "movescu"),
    "echo": ("echoscu", "storescp"),
}


def _dcmtk_unavailable(kind: str) -> str | None:
    if kind == "idle":
        return "storescp serves one association at a time"
    missing = [t for t in DCMTK_TOOLS[kind] if dcmtk_side.find_tool(t) is None]
    return f"no DCMTK {', '.join(missing)} found" if missing else None


def _make_stacks(dcmtk_nodelay: bool, pynetdicom_nodelay: bool = False) -> list[Stack]:
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")
    pyn_scp, pyn_scu = _python_side("benchmarks.sides.pynetdicom_side")
    dcmtk_scu = _python_side("benchmarks.sides.dcmtk_side")[1]

    def dcmtk_scp(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        out = workdir if store_dir is None else store_dir
        return dcmtk_side.scp_command(port, SCP_AET, str(out), store=store_dir is not None)

    return [
        Stack(
            "pynetdicom",
            _pynetdicom_unavailable,
            pyn_scp,
            True,
            pyn_scu,
            env={"BENCH_PYNETDICOM_NODELAY": "1"} if pynetdicom_nodelay else {},
            notes=[
                "pynetdicom runs with TCP_NODELAY set on its sockets (--pynetdicom-nodelay):"
                " NOT as shipped; the ratios are against this modified baseline."
            ]
            if pynetdicom_nodelay
            else [],
        ),
        Stack("adicom", _adicom_unavailable, adicom_scp, True, adicom_scu, scp_lag_reset=True),
        Stack(
            "dcmtk",
            _dcmtk_unavailable,
            dcmtk_scp,
            False,
            dcmtk_scu,
            scu_workloads=dcmtk_side.SUPPORTED_SCU_WORKLOADS,
            scu_label="dcmtk*",
            env={"TCP_NODELAY": "1"} if dcmtk_nodelay else {},
            scu_notes=[
                "dcmtk* SCU = one DCMTK process per association (`echoscu --repeat N`,"
                " `storescu FILE...`, `findscu`/`getscu`/`movescu` for the series of N),"
                " reported as N-1 operations in time(N) - time(1) (the one-operation run:"
                " --repeat 1, one file, the series' first instance), which removes process"
                " start, association and release; it is not run for assoc-echo, where one"
                " process per association would measure process start-up."
            ],
            notes=[
                "DCMTK runs with TCP_NODELAY=1 (its runtime switch; as packaged it keeps Nagle"
                " on and stalls ~40 ms per message on a delayed ACK)."
                if dcmtk_nodelay
                else "DCMTK runs as packaged: Nagle on, so each message waits ~40 ms for a"
                " delayed ACK (drop --dcmtk-as-packaged to set TCP_NODELAY=1).",
            ],
        ),
    ]


# --------------------------------------------------------------------------- scratch space

#: Files at least this large are deleted as soon as their repetition ends.
SCRATCH_SHED_BYTES = 1 << 20


class Scratch:
    """Where the repetitions work: one directory each, kept until the run ends.

    Why not delete each repetition's files at once: on ext4 without a journal
    (this project's CI VM, and tmpfs-less containers generally) the kernel
    will not hand out an inode that was freed in the last 60 s (360 s while
    its inode table block is dirty), and skips each such inode one by one
    every time a file is created (`recently_deleted()` in ext4's inode
    allocator). Deleting the 1000 files of one repetition made creating a
    file in the next one cost ~0.5 ms of system CPU instead of ~0.04 ms, for
    whichever stack came next. So small files stay until the end; large ones
    (few inodes, much space) go at once. See benchmarks/README.md.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="adicom-bench-"))

    @contextmanager
    def rep_dir(self, prefix: str) -> Iterator[Path]:
        """A fresh directory for one repetition; its large files are removed afterwards."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        try:
            yield path
        finally:
            for f in path.rglob("*"):
                try:
                    if f.is_file() and f.stat().st_size >= SCRATCH_SHED_BYTES:
                        f.unlink()
                except OSError:
                    pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _status_fields(pid: int) -> dict[str, int]:
    """The numeric kB/count fields of /proc/PID/status we use (missing ones left out)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _session_snapshot(sid: int) -> dict[str, Any]:
    """CPU, memory, threads and open files of every process in session `sid` (Linux /proc).

    Sums over the session, so that an SCP that forks per association (dcmqrscp)
    is counted whole: CPU is utime + stime + cutime + cstime of each live
    process (a child's time moves into its parent's cutime when reaped, so
    each CPU second is counted once); RSS sums VmRSS. `peak_rss_kib` and
    `fds` are the session leader's (`sid` itself).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = 0
    rss = threads = processes = 0
    found_leader = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) != sid:  # field 6, session id
            continue
        processes += 1
        found_leader |= int(entry.name) == sid
        cpu += sum(int(f) for f in fields[11:15])
        status = _status_fields(int(entry.name))
        rss += status.get("VmRSS", 0)
        threads += status.get("Threads", 0)
    if not found_leader:
        return {"cpu_s": None, "rss_kib": None, "peak_rss_kib": None, "threads": None,
                "fds": None, "processes": 0}  # fmt: skip
    try:
        fds: int | None = len(os.listdir(f"/proc/{sid}/fd"))
    except OSError:
        fds = None
    return {
        "cpu_s": cpu / ticks,
        "rss_kib": rss,
        "peak_rss_kib": _status_fields(sid).get("VmHWM"),
        "threads": threads,
        "fds": fds,
        "processes": processes,
    }


def _proc_peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class BenchError(RuntimeError):
    """A repetition that produced no valid measurement; `detail` goes to the JSON."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _start_scp(stack: Stack, workdir: Path, store_dir: Path | None, port: int | None = None) -> Scp:
    """Start the SCP on `port` (default: any free one) and wait until it listens."""
    if port is None:
        port = 0 if stack.scp_prints_ready else _free_port()
    stdout_path, stderr_path = workdir / "scp.out", workdir / "scp.err"
    if store_dir is not None:
        store_dir.mkdir()
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            stack.scp_argv(port, workdir, store_dir),
            cwd=REPO_ROOT,
            env=_child_env(stack.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    scp = Scp(proc, port, stdout_path, stderr_path, store_dir)
    deadline = time.monotonic() + SCP_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{stack.name} SCP exited with {proc.returncode}: {_tail(stderr_path)}"
            )
        if stack.scp_prints_ready:
            for line in _tail(stdout_path, 10_000).splitlines():
                if line.startswith(READY_PREFIX):
                    scp.port = int(line[len(READY_PREFIX) :])
                    return scp
        elif _port_open(port):
            return scp
        time.sleep(0.02)
    _stop_scp(scp)
    raise BenchError(f"{stack.name} SCP not listening after {SCP_START_TIMEOUT:.0f} s")


def _stop_scp(scp: Scp) -> None:
    if scp.proc.poll() is None:
        scp.proc.send_signal(signal.SIGTERM)
        try:
            scp.proc.wait(SCP_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            scp.proc.kill()
            scp.proc.wait(SCP_STOP_TIMEOUT)


def _scp_stats(scp: Scp) -> dict[str, Any]:
    """The STATS line an SCP printed when stopped (adicom: loop lag), else {}."""
    for line in _tail(scp.stdout_path, 10_000).splitlines():
        if line.startswith(STATS_PREFIX):
            try:
                stats: dict[str, Any] = json.loads(line[len(STATS_PREFIX) :])
            except ValueError:
                return {}
            return stats
    return {}


def _stored_files(store_dir: Path) -> tuple[int, int]:
    """(number of files, total bytes) under the SCP's store directory."""
    count = size = 0
    for path in store_dir.rglob("*"):
        if path.is_file():
            count += 1
            size += path.stat().st_size
    return count, size


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise BenchError("SCU printed no result line")


def _run_scu(
    argv: list[str], env: dict[str, str], timeout: float, answer: Callable[[str], str]
) -> tuple[int, str, str]:
    """Run the SCU; answer each SAMPLE line on its stdin. (exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # so that a timeout kills its children too
        )
        assert proc.stdin is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        pending, lines = b"", []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout)
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    if line.startswith(SAMPLE_PREFIX):
                        try:
                            proc.stdin.write(answer(line[len(SAMPLE_PREFIX) :]).encode() + b"\n")
                            proc.stdin.flush()
                        except OSError:
                            pass  # the SCU died; its exit code tells
                    else:
                        lines.append(line)
            lines.append(pending.decode(errors="replace"))
            returncode = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            raise BenchError(
                f"SCU did not finish within {exc.timeout:.0f} s",
                {"scu_stderr_tail": err.read().decode(errors="replace")[-3000:]},
            ) from exc
        finally:
            proc.stdin.close()
            proc.stdout.close()
        err.seek(0)
        return returncode, "\n".join(lines), err.read().decode(errors="replace")


def _scu_failure(result: dict[str, Any], returncode: int, stderr: str) -> str | None:
    """Why the SCU's run is no measurement (exit code, failed operations), or None."""
    if returncode == 0 and result["ok"] == result["ops"] and "error" not in result["extra"]:
        return None
    why = str(result["extra"].get("error") or _last_line(stderr))
    first = _first_line(stderr)
    if first and first != why:
        why += f" (stderr: {first})"
    return f"{result['ok']}/{result['ops']} ok, SCU exit code {returncode}: {why}"


def _parse_scu_output(stdout: str, returncode: int, stderr: str, scp_err: str) -> dict[str, Any]:
    try:
        return _parse_result(stdout)
    except (BenchError, ValueError) as exc:
        raise BenchError(
            f"SCU exit code {returncode}, no result: {_last_line(stderr)}",
            {"scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err},
        ) from exc


def run_once(
    scu: Stack,
    scp_stack: Stack,
    workload: Workload,
    n: int,
    data_dir: Path | None,
    scratch: Scratch,
) -> dict[str, Any]:
    """One repetition: start the SCP, run the SCU against it, stop the SCP.

    The SCP works (and stores) in a fresh directory of `scratch`.
    """
    with scratch.rep_dir("store-") as workdir:
        store_dir = workdir / "received" if workload.kind == "store" else None
        scp = _start_scp(scp_stack, workdir, store_dir)

        def answer(tag: str) -> str:
            cpu = _proc_cpu_seconds(scp.proc.pid)
            if tag == "begin" and scp_stack.scp_lag_reset and scp.proc.poll() is None:
                scp.proc.send_signal(signal.SIGUSR1)
            return "none" if cpu is None else repr(cpu)

        try:
            returncode, stdout, stderr = _run_scu(
                scu.scu_argv(scp.port, workload, n, data_dir),
                _child_env(scu.env),
                workload.scu_timeout(n),
                answer,
            )
            scp_rss = _proc_peak_rss_kib(scp.proc.pid)
            scp_alive = scp.proc.poll() is None
            stored = None if store_dir is None else _stored_files(store_dir)
        finally:
            _stop_scp(scp)
        scp_err = _tail(scp.stderr_path)
        stats = _scp_stats(scp)
        try:
            result = _parse_result(stdout)
        except (BenchError, ValueError) as exc:
            raise BenchError(
                f"SCU exit code {returncode}, no result: {_last_line(stderr)}",
                {"scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err},
            ) from exc
        why = _scu_failure(result, returncode, stderr)
        if why is None and stored is not None:
            # Every instance sent (timed and warm-up) must be a file on the SCP's disk.
            sent = n + int(result["extra"].get("warmup_instances", 0))
            if stored[0] != sent:
                why = f"the SCP stored {stored[0]} files, {sent} instances were sent"
        if why is not None:
            raise BenchError(
                why,
                {"result": result, "scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err},
            )
        result["scp_peak_rss_kib"] = scp_rss
        result["scp_alive_after"] = scp_alive
        result["scp_loop_lag_max_ms"] = stats.get("loop_lag_max_ms")
        result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6 if result["seconds"] else 0
        if stored is not None:
            result["scp_stored_files"], result["scp_stored_bytes"] = stored
        if scp_err.strip():
            result["scp_stderr_tail"] = scp_err
        if stderr.strip():
            result["scu_stderr_tail"] = stderr[-2000:]
        return result


def _count_files(directory: Path) -> int:
    return _stored_files(directory)[0] if directory.exists() else 0


def _destination_stack() -> Stack:
    """The C-MOVE destination: an adicom storage SCP (DiskStorage), on a port fixed per run."""
    scp, _ = _python_side("benchmarks.sides.adicom_side")

    def argv(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        out = scp(port, workdir, store_dir)
        out[out.index("--aet") + 1] = MOVE_DEST_AET
        return out

    return Stack("adicom", _adicom_unavailable, argv, True, lambda *a: [])


def run_qr_once(
    scu: Stack,
    workload: Workload,
    n: int,
    data_dir: Path | None,
    archive: archives.Archive,
    dest_port: int,
    scratch: Scratch,
) -> dict[str, Any]:
    """One repetition against a running, seeded archive (see archives.py).

    get-1000: the SCU writes into a fresh directory; afterwards it must hold n
    files in timed/. move-1000: a fresh adicom storage SCP listens on the
    destination port for this repetition; afterwards it must hold n files
    (one per SOP instance: a warm-up instance moved again overwrites its file).
    """
    if archive.error is not None:
        raise BenchError(f"{archive.stack} archive unusable: {archive.error}")
    if not archive.alive():
        raise BenchError(f"{archive.stack} archive exited: {_tail(archive.stderr_path)}")
    with scratch.rep_dir("qr-") as workdir:
        out_dir = workdir / "out"
        dest: Scp | None = None
        if workload.name == "move-1000":
            (workdir / "dest").mkdir()
            dest = _start_scp(_destination_stack(), workdir / "dest", workdir / "dest" / "received",
                              port=dest_port)  # fmt: skip
        samples: list[dict[str, Any]] = []

        def answer(tag: str) -> str:
            snap = _session_snapshot(archive.proc.pid)
            samples.append({"tag": tag, **snap})
            return "none" if snap["cpu_s"] is None else repr(snap["cpu_s"])

        argv = scu.scu_argv(archive.port, workload, n, data_dir)
        argv += ["--out-dir", str(out_dir), "--move-dest", MOVE_DEST_AET]
        dest_files = None
        dest_stats: dict[str, Any] = {}
        try:
            returncode, stdout, stderr = _run_scu(
                argv, _child_env(scu.env), workload.scu_timeout(n), answer
            )
        finally:
            if dest is not None:
                _stop_scp(dest)
                assert dest.store_dir is not None
                dest_files = _count_files(dest.store_dir)
                dest_stats = _scp_stats(dest)
        archive_err = _tail(archive.stderr_path)
        result = _parse_scu_output(stdout, returncode, stderr, archive_err)
        why = _scu_failure(result, returncode, stderr)
        if why is None and workload.name == "get-1000":
            got = _count_files(out_dir / "timed")
            if got != n:
                why = f"the SCU wrote {got} files for the timed C-GET, {n} expected"
        if why is None and dest_files is not None and dest_files != n:
            why = f"the move destination stored {dest_files} files, {n} expected"
        if why is None and not archive.alive():
            why = f"the {archive.stack} archive exited during the repetition"
        if why is not None:
            raise BenchError(
                why,
                {"result": result, "scu_stderr_tail": stderr[-3000:],
                 "scp_stderr_tail": archive_err},
            )  # fmt: skip
        end = next(
            (x for x in reversed(samples) if x["tag"] == "end"), samples[-1] if samples else {}
        )
        result["scp_rss_kib"] = end.get("rss_kib")
        result["scp_peak_rss_kib"] = _session_snapshot(archive.proc.pid)["peak_rss_kib"]
        result["scp_alive_after"] = archive.alive()
        result["scp_samples"] = samples
        result["mb_per_s"] = None
        if dest_files is not None:
            result["dest_stored_files"] = dest_files
            result["dest_loop_lag_max_ms"] = dest_stats.get("loop_lag_max_ms")
        if stderr.strip():
            result["scu_stderr_tail"] = stderr[-2000:]
        return result


def _idle_scp_stack(stack: Stack) -> Stack:
    """The SCP of idle-500: `adicom serve` (the CLI, Verification), or pynetdicom's AE
    with `maximum_associations` raised (else it allows 10)."""
    if stack.name == "adicom":

        def serve(port: int, _workdir: Path, _store_dir: Path | None) -> list[str]:
            return [sys.executable, "-m", "adicom", "serve", "--aet", SCP_AET, "--host", HOST,
                    "--port", str(port)]  # fmt: skip

        return replace(stack, scp_argv=serve, scp_prints_ready=False, scp_lag_reset=False)
    if stack.name == "pynetdicom":
        pyn_argv = stack.scp_argv

        def pyn(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
            argv = pyn_argv(port, workdir, store_dir)
            return [*argv, "--max-associations", str(IDLE_PYNETDICOM_MAX_ASSOCIATIONS),
                    "--idle-timeout", str(IDLE_PYNETDICOM_NETWORK_TIMEOUT)]  # fmt: skip

        return replace(stack, scp_argv=pyn)
    raise BenchError(f"no idle SCP for {stack.name}")


def run_idle_once(scu: Stack, scp_stack: Stack, workload: Workload, n: int) -> dict[str, Any]:
    """One repetition of idle-500: a fresh SCP, N associations opened and held, the SCP measured.

    The SCU says when (SAMPLE begin / open / held / end); at each the runner
    reads the SCP's CPU, RSS, threads and open files from /proc.
    """
    stack = _idle_scp_stack(scp_stack)
    with tempfile.TemporaryDirectory(prefix="adicom-bench-idle-") as tmp:
        scp = _start_scp(stack, Path(tmp), None)
        samples: dict[str, dict[str, Any]] = {}

        def answer(tag: str) -> str:
            snap = _session_snapshot(scp.proc.pid)
            samples[tag] = snap
            return "none" if snap["cpu_s"] is None else repr(snap["cpu_s"])

        argv = [*scu.scu_argv(scp.port, workload, n, None), "--hold", str(IDLE_HOLD)]
        try:
            returncode, stdout, stderr = _run_scu(
                argv, _child_env(scu.env), workload.scu_timeout(n), answer
            )
            scp_alive = scp.proc.poll() is None
        finally:
            _stop_scp(scp)
        scp_err = _tail(scp.stderr_path)
        result = _parse_scu_output(stdout, returncode, stderr, scp_err)
        why = _scu_failure(result, returncode, stderr)
        if why is None and not {"begin", "open", "held"} <= samples.keys():
            why = f"the SCU asked for the SCP's state at {sorted(samples)} only"
        if why is not None:
            raise BenchError(
                why,
                {"result": result, "scu_stderr_tail": stderr[-3000:], "scp_stderr_tail": scp_err},
            )
        begin, opened, held = samples["begin"], samples["open"], samples["held"]
        result["scp_samples"] = samples
        result["scp_alive_after"] = scp_alive
        result["scp_rss_before_kib"] = begin["rss_kib"]
        result["scp_rss_open_kib"] = held["rss_kib"]
        result["scp_peak_rss_kib"] = held["peak_rss_kib"]
        result["scp_rss_per_assoc_kib"] = (held["rss_kib"] - begin["rss_kib"]) / n
        result["scp_threads_open"] = held["threads"]
        result["scp_fds_open"] = held["fds"]
        hold = float(result["extra"].get("hold_s") or IDLE_HOLD)
        result["scp_idle_cpu_pct"] = 100.0 * (held["cpu_s"] - opened["cpu_s"]) / hold
        result["mb_per_s"] = None
        if scp_err.strip():
            result["scp_stderr_tail"] = scp_err
        if stderr.strip():
            result["scu_stderr_tail"] = stderr[-2000:]
        return result


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


BASELINE_LABELS = {
    PYN_BASELINE: "x pyn->pyn",
    DCMTK_BASELINE: "x dcmtk->dcmtk",
    PYN_SCU: "x pyn SCU",
    PYN_SCP: "x pyn SCP",
    DCMTK_SCP: "x dcmtk SCP",
}

#: A table column: header, cell from (pair, all results), right-aligned?
Column = tuple[str, Callable[[PairResult, Sequence[PairResult]], str], bool]


def _ratio_column(key: Key) -> Column:
    def cell(r: PairResult, all_results: Sequence[PairResult]) -> str:
        return _fmt(r.ratios(all_results).get("->".join(key)), ".2f")

    return (BASELINE_LABELS.get(key, "x " + "->".join(key)), cell, True)


def _reps_cell(r: PairResult, _all: Sequence[PairResult]) -> str:
    return f"{len(r.reps)}" + (f" ({len(r.errors)} failed)" if r.errors else "")


def _min_max_cell(r: PairResult, _all: Sequence[PairResult]) -> str:
    mm = r.min_max_rate()
    return "-" if mm is None else f"{mm[0]:.1f}..{mm[1]:.1f}"


def _mib(kib: float | None) -> str:
    return _fmt(None if kib is None else kib / 1024, ".0f")


def _columns(kind: str, baselines: Sequence[Key]) -> list[Column]:
    head: list[Column] = [
        ("workload", lambda r, _: r.workload.name, False),
        ("SCU -> SCP", lambda r, _: f"{r.scu.label()} -> {r.scp.name}", False),
    ]
    tail = [_ratio_column(k) for k in baselines] + [("reps", _reps_cell, False)]
    if kind == "store":
        return [
            *head,
            ("inst/s", lambda r, _: _fmt(r.median_rate(), ".1f"), True),
            ("MB/s", lambda r, _: _fmt(r.median_of("mb_per_s"), ".1f"), True),
            ("inst/s min..max", _min_max_cell, True),
            ("SCU CPU s", lambda r, _: _fmt(r.median_of("cpu_s"), ".2f"), True),
            ("SCP CPU s", lambda r, _: _fmt(r.median_of("scp_cpu_s"), ".2f"), True),
            ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
            ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_peak_rss_kib")), True),
            ("SCU lag ms", lambda r, _: _fmt(r.median_of("loop_lag_max_ms"), ".1f"), True),
            ("SCP lag ms", lambda r, _: _fmt(r.median_of("scp_loop_lag_max_ms"), ".1f"), True),
            *tail,
        ]
    if kind == "qr":
        return [
            *head,
            ("s", lambda r, _: _fmt(r.median_seconds(), ".3f"), True),
            ("rate", lambda r, _: _fmt(r.median_rate(), ".0f"), True),
            ("unit", lambda r, _: r.workload.unit, False),
            ("min..max", _min_max_cell, True),
            ("SCU CPU s", lambda r, _: _fmt(r.median_of("cpu_s"), ".2f"), True),
            ("SCP CPU s", lambda r, _: _fmt(r.median_of("scp_cpu_s"), ".2f"), True),
            ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
            ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_rss_kib")), True),
            ("SCU lag ms", lambda r, _: _fmt(r.median_of("loop_lag_max_ms"), ".1f"), True),
            *tail,
        ]
    if kind == "idle":
        return [
            *head,
            ("open", lambda r, _: _fmt(r.median_of("ok"), ".0f"), True),
            ("open s", lambda r, _: _fmt(r.median_seconds(), ".2f"), True),
            ("assoc/s", lambda r, _: _fmt(r.median_rate(), ".0f"), True),
            ("SCP RSS MiB", lambda r, _: _mib(r.median_of("scp_rss_open_kib")), True),
            ("SCP HWM MiB", lambda r, _: _mib(r.median_of("scp_peak_rss_kib")), True),
            ("RSS before", lambda r, _: _mib(r.median_of("scp_rss_before_kib")), True),
            ("KiB/assoc", lambda r, _: _fmt(r.median_of("scp_rss_per_assoc_kib"), ".0f"), True),
            ("threads", lambda r, _: _fmt(r.median_of("scp_threads_open"), ".0f"), True),
            ("fds", lambda r, _: _fmt(r.median_of("scp_fds_open"), ".0f"), True),
            ("idle CPU %", lambda r, _: _fmt(r.median_of("scp_idle_cpu_pct"), ".1f"), True),
            ("SCU RSS MiB", lambda r, _: _mib(r.median_of("max_rss_kib")), True),
            *tail,
        ]
    return [
        *head,
        ("median", lambda r, _: _fmt(r.median_rate(), ".1f"), True),
        ("unit", lambda r, _: r.workload.unit, False),
        ("min..max", _min_max_cell, True),
        ("SCU CPU us/op", lambda r, _: _fmt(r.median_scu_cpu_us(), ".0f"), True),
        ("SCP CPU us/op", lambda r, _: _fmt(r.median_scp_cpu_us(), ".0f"), True),
        *tail,
    ]


def _table(rows_of: Sequence[PairResult], all_results: Sequence[PairResult]) -> list[str]:
    kind = rows_of[0].workload.kind
    baselines: list[Key] = []
    for r in rows_of:
        baselines += [k for k in r.workload.baselines if k not in baselines]
    columns = _columns(kind, baselines)
    rows = [[cell(r, all_results) for _, cell, _ in columns] for r in rows_of]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _, _) in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if columns[i][2] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line([h for h, _, _ in columns]), line(["-" * w for w in widths])]
    previous = None
    for r, row in zip(rows_of, rows, strict=True):
        if previous is not None and r.workload.name != previous:
            out.append("")
        previous = r.workload.name
        out.append(line(row))
    return out


def render_table(results: Sequence[PairResult]) -> str:
    """One table per workload kind (echo, store), in the order they ran."""
    out = [
        "Medians over repetitions; 'x A->B' = median rate / median rate of the pair"
        " A -> B on the same workload (higher is faster)."
    ]
    kinds: list[str] = []
    for r in results:
        if r.workload.kind not in kinds:
            kinds.append(r.workload.kind)
    for kind in kinds:
        rows_of = [r for r in results if r.workload.kind == kind]
        out.append("")
        if kind == "store":
            out.append(
                "C-STORE: MB = 10^6 bytes of the files sent; CPU s = whole timed span;"
                " RSS = peak; lag = worst lateness of a 10 ms sleep (asyncio sides)."
            )
        if kind == "qr":
            out.append(
                "Query/retrieve against archives seeded once per run: s = median time of the"
                " operation (dcmtk*: of N-1, differential); SCP CPU s = the SCP's whole"
                " session (dcmqrscp forks per association); SCP RSS = its RSS when the"
                " operation ended; x pyn SCU = rate / rate of the pynetdicom SCU against the"
                " same SCP; x pyn SCP, x dcmtk SCP = rate / rate of the same SCU against that"
                " SCP (higher is faster)."
            )
        if kind == "idle":
            out.append(
                f"Idle associations: SCP RSS = VmRSS with all open, after {IDLE_HOLD:g} s idle;"
                " HWM = its peak; RSS before = before the first was opened; KiB/assoc ="
                " (RSS - RSS before) / N; threads, fds = the SCP's with all open; idle CPU % ="
                " the SCP's CPU over the idle hold."
            )
        out += _table(rows_of, results)
    targets = render_targets(results)
    if targets:
        out += ["", "Targets:", *targets]
        smaller = sorted({r.workload.name for r in results if r.n < r.workload.n_full})
        if smaller:
            out.append(
                f"(Run with fewer operations than the targets name ({', '.join(smaller)}):"
                " the verdicts above only indicate; the fixed costs weigh more.)"
            )
    return "\n".join(out)


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


def render_targets(results: Sequence[PairResult]) -> list[str]:
    """The query/retrieve and idle targets, checked against this run's medians."""
    lines: list[str] = []
    for wl in (w for w in WORKLOADS.values() if w.kind == "qr"):
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
        if wl.name == "get-1000":
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
        served = {
            scp: _find(results, wl.name, QR_FIXED_SCU, scp)
            for scp in ("adicom", "pynetdicom", "dcmtk")
        }
        times = {k: _secs(v) for k, v in served.items() if v is not None}
        ta = times.get("adicom")
        if ta:
            parts = [f"{k} {t:.3f} s" for k, t in times.items() if t is not None]
            line = f"{wl.name}, served by (SCU {QR_FIXED_SCU}*): {', '.join(parts)}"
            tp, td = times.get("pynetdicom"), times.get("dcmtk")
            if tp:
                line += (
                    f"; pynetdicom/adicom = {tp / ta:.1f}x (target >= 5: {_verdict(tp / ta >= 5)})"
                )
            if td:
                line += f"; dcmtk/adicom = {td / ta:.2f}x (target >= 1: {_verdict(td / ta >= 1)})"
            lines.append(line)
    for wl in (w for w in WORKLOADS.values() if w.kind == "idle"):
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


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    adicom_version = _version("adicom")
    if adicom_version is None and _adicom_unavailable("echo") is None:
        probe = subprocess.run(
            [sys.executable, "-c", "import adicom; print(getattr(adicom, '__version__', '?'))"],
            cwd=REPO_ROOT,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        adicom_version = probe.stdout.strip() or None
    status = _git("status", "--porcelain")
    return {
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "tmpdir": tempfile.gettempdir(),
        "python": sys.version,
        "python_implementation": platform.python_implementation(),
        "versions": {
            "adicom": adicom_version,
            "pynetdicom": _version("pynetdicom"),
            "pydicom": _version("pydicom"),
            "dcmtk": dcmtk_side.version(),
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


# --------------------------------------------------------------------------- main


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--quick", action="store_true", help="2 repetitions, smaller counts")
    p.add_argument(
        "--reps",
        type=int,
        help="repetitions per pair for every workload (default 5; --quick 2)",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"cache of the generated C-STORE instances (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--pair",
        action="append",
        metavar="SCU:SCP",
        help="run only this pair, e.g. adicom:pynetdicom (repeatable)",
    )
    p.add_argument("-n", type=int, help="override the operation count of every workload")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a failed repetition up to this many times (default 2); "
        "every failure is kept in the JSON and counted in the table",
    )
    p.add_argument(
        "--dcmtk-as-packaged",
        action="store_true",
        help="run DCMTK without TCP_NODELAY=1 (Nagle on: ~40 ms per message)",
    )
    p.add_argument(
        "--pynetdicom-nodelay",
        action="store_true",
        help="set TCP_NODELAY on pynetdicom's sockets (not as shipped; for comparison)",
    )
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.retries < 0:
        p.error("--retries must be >= 0")
    if args.n is not None and args.n < 2:
        p.error("-n must be >= 2 (the DCMTK SCUs report n-1 operations)")
    return args


def _pairs(
    stacks: Sequence[Stack], wanted: list[str] | None, workload: Workload
) -> Iterator[tuple[Stack, Stack]]:
    """The workload's pairs: baselines first, then same-stack pairs, then the rest."""
    by_name = {s.name: s for s in stacks}
    if workload.order is not None:
        order = list(workload.order)
    else:
        order = [PYN_BASELINE]
        order += [(s.name, s.name) for s in stacks if (s.name, s.name) != PYN_BASELINE]
        order += [(a.name, b.name) for a in stacks for b in stacks if a.name != b.name]
    wanted_keys = None if not wanted else {tuple(w.split(":", 1)) for w in wanted}
    for key in order:
        if key[0] not in by_name or key[1] not in by_name:
            continue
        if wanted_keys is not None and key not in wanted_keys:
            continue
        if workload.order is not None or workload.pairs(*key):
            yield by_name[key[0]], by_name[key[1]]


def _run_workload(
    wl: Workload,
    results: Sequence[PairResult],
    args: argparse.Namespace,
    data_dirs: dict[str, Path],
    qr_archives: dict[str, archives.Archive],
    dest_port: int,
    scratch: Scratch,
) -> None:
    """Every repetition of every pair of one workload, round-robin, with retries."""
    pairs = [r for r in results if r.workload is wl]
    for rep in range(1, max((r.reps_wanted for r in pairs), default=0) + 1):
        for pr in pairs:
            if rep > pr.reps_wanted:
                continue
            for attempt in range(1, args.retries + 2):
                tag = f"[{wl.name} {rep}/{pr.reps_wanted}] {pr.scu.label()} -> {pr.scp.name}"
                if attempt > 1:
                    tag += f" (retry {attempt - 1})"
                try:
                    if wl.kind == "qr":
                        archive = qr_archives.get(pr.scp.name)
                        if archive is None:
                            raise BenchError(f"no {pr.scp.name} archive was started")
                        raw = run_qr_once(
                            pr.scu, wl, pr.n, data_dirs.get(wl.name), archive, dest_port, scratch
                        )
                    elif wl.kind == "idle":
                        raw = run_idle_once(pr.scu, pr.scp, wl, pr.n)
                    else:
                        raw = run_once(pr.scu, pr.scp, wl, pr.n, data_dirs.get(wl.name), scratch)
                except (BenchError, OSError, ValueError) as exc:
                    detail = exc.detail if isinstance(exc, BenchError) else {}
                    pr.errors.append({"rep": rep, "attempt": attempt, "error": str(exc), **detail})
                    print(f"{tag}: FAILED: {_first_line(str(exc))}", file=sys.stderr)
                    continue
                raw["rep"], raw["attempt"] = rep, attempt
                pr.reps.append(raw)
                print(f"{tag}: {raw['ops_per_s']:.1f} {wl.unit}", file=sys.stderr)
                break


def _start_archives(
    stacks: Sequence[Stack], root: Path, dest_port: int, data_dir: Path, n: int
) -> dict[str, archives.Archive]:
    """Start and seed each stack's archive (not timed); failures are kept on the Archive."""
    started: dict[str, archives.Archive] = {}
    for stack in stacks:
        workdir = root / stack.name
        workdir.mkdir()
        print(f"[archives] starting and seeding {stack.name} with {n} instances ...",
              file=sys.stderr)  # fmt: skip
        archive = archives.start(
            stack.name, workdir, SCP_AET, dest_port, _child_env(stack.env), REPO_ROOT
        )
        started[stack.name] = archive
        if archive.error is None:
            archives.seed(archive, data_dir, n, _child_env(), REPO_ROOT)
        if archive.error is None:
            snap = _session_snapshot(archive.proc.pid)
            archive.seed["rss_after_seed_kib"] = snap["rss_kib"]
            archive.seed["peak_rss_after_seed_kib"] = snap["peak_rss_kib"]
            print(
                f"[archives] {stack.name}: {n} instances in {archive.seed.get('seconds', 0):.1f} s",
                file=sys.stderr,
            )
        else:
            print(f"[archives] {stack.name}: FAILED: {_first_line(archive.error)}", file=sys.stderr)
    return started


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    raise_nofile_limit()  # idle-500: the SCPs and SCUs inherit it
    meta = machine_info()  # now, so that its load average is the one at start
    workloads = [WORKLOADS[w] for w in (args.only or WORKLOADS)]

    all_stacks = _make_stacks(
        dcmtk_nodelay=not args.dcmtk_as_packaged, pynetdicom_nodelay=args.pynetdicom_nodelay
    )
    skipped: list[str] = []
    usable: dict[str, list[Stack]] = {}  # per workload kind
    for kind in dict.fromkeys(w.kind for w in workloads):
        usable[kind] = []
        for stack in all_stacks:
            why = stack.unavailable(kind)
            if why is None:
                usable[kind].append(stack)
            else:
                skipped.append(f"{stack.name} for {kind} workloads: {why}")
    for s in skipped:
        print(f"skipping {s}", file=sys.stderr)

    results: list[PairResult] = []
    for wl in workloads:
        n = args.n or (wl.n_quick if args.quick else wl.n_full)
        reps = args.reps or (2 if args.quick else wl.reps_full)
        for scu, scp in _pairs(usable[wl.kind], args.pair, wl):
            if scu.scu_workloads is None or wl.name in scu.scu_workloads:
                pair_reps = reps
                if args.reps is None and not args.quick:
                    pair_reps = dict(wl.few_reps).get((scu.name, scp.name), reps)
                results.append(PairResult(wl, scu, scp, n, pair_reps))

    data_dirs: dict[str, Path] = {}
    for wl in workloads:
        counts = [r.n for r in results if r.workload is wl]
        if wl.data is not None and counts:
            print(f"[{wl.name}] preparing {max(counts)} instances ...", file=sys.stderr)
            data_dirs[wl.name] = data.ensure(args.data_dir, wl.data, max(counts))

    # The query/retrieve workloads share archives, seeded once with the same N
    # instances (all three have the same counts); started before the first of
    # them, stopped after the last.
    qr_results = [r for r in results if r.workload.kind == "qr"]
    qr_n = max((r.n for r in qr_results), default=0)
    qr_last = max((i for i, w in enumerate(workloads) if w.kind == "qr"), default=-1)
    qr_scps = [s for s in all_stacks if any(r.scp is s for r in qr_results)]
    qr_archives: dict[str, archives.Archive] = {}
    archives_root: tempfile.TemporaryDirectory[str] | None = None
    dest_port = archives.free_port()
    archive_info: dict[str, Any] = {}

    scratch = Scratch()
    started = time.monotonic()
    try:
        for index, wl in enumerate(workloads):
            if wl.kind == "qr" and archives_root is None and qr_results:
                archives_root = tempfile.TemporaryDirectory(prefix="adicom-bench-archives-")
                qr_data = data_dirs[qr_results[0].workload.name]
                qr_archives = _start_archives(
                    qr_scps, Path(archives_root.name), dest_port, qr_data, qr_n
                )
            _run_workload(wl, results, args, data_dirs, qr_archives, dest_port, scratch)
            if index == qr_last:
                for name, archive in qr_archives.items():
                    archive_info[name] = {**archive.to_json(), "stopped": archives.stop(archive)}
    finally:
        for name, archive in qr_archives.items():
            if name not in archive_info:
                archive_info[name] = {**archive.to_json(), "stopped": archives.stop(archive)}
        if archives_root is not None:
            archives_root.cleanup()
        scratch.cleanup()
    elapsed = time.monotonic() - started

    print()
    print(render_table(results))
    used = [s for s in all_stacks if any(s in (r.scu, r.scp) for r in results)]
    notes = [n for s in used if any(r.scu is s for r in results) for n in s.scu_notes]
    notes += [n for s in used for n in s.notes]
    for note in notes:
        print(f"\n{note}")
    for s in skipped:
        print(f"(skipped {s})")
    reps_parts = []
    for w in workloads:
        wanted = [r for r in results if r.workload is w]
        usual = statistics.mode([r.reps_wanted for r in wanted]) if wanted else 0
        fewer = [f"{r.scu.label()}->{r.scp.name} {r.reps_wanted}"
                 for r in wanted if r.reps_wanted != usual]  # fmt: skip
        reps_parts.append(f"{w.name} {usual}" + (f" ({', '.join(fewer)})" if fewer else ""))
    reps_text = ", ".join(reps_parts)
    print(f"\nRepetitions per pair: {reps_text}; {elapsed:.0f} s in all.")

    report = {
        "meta": meta,
        "config": {
            "quick": args.quick,
            "reps": args.reps,
            "host": HOST,
            "retries": args.retries,
            "data_dir": str(args.data_dir),
            "dcmtk_tcp_nodelay": not args.dcmtk_as_packaged,
            "pynetdicom_tcp_nodelay": args.pynetdicom_nodelay,
            "dcmtk_options": {
                "env": next(s.env for s in all_stacks if s.name == "dcmtk"),
                "storescp_store": list(dcmtk_side.STORESCP_STORE_OPTIONS),
                "storescu": list(dcmtk_side.STORESCU_OPTIONS),
            },
            "skipped": skipped,
            "elapsed_s": elapsed,
            "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "qr": {
                "instances": qr_n,
                "fixed_scu_served_by": QR_FIXED_SCU,
                "move_destination": {
                    "aet": MOVE_DEST_AET,
                    "port": dest_port,
                    "stack": "adicom (adicom_side scp --store-dir)",
                },
                "archives": archive_info,
            },
            "idle": {
                "hold_s": IDLE_HOLD,
                "pynetdicom_maximum_associations": IDLE_PYNETDICOM_MAX_ASSOCIATIONS,
                "pynetdicom_network_timeout": IDLE_PYNETDICOM_NETWORK_TIMEOUT,
            },
        },
        "workloads": {
            w.name: {
                "kind": w.kind,
                "unit": w.unit,
                "description": w.description,
                "op_timeout_s": w.op_timeout,
                "baselines": ["->".join(k) for k in w.baselines],
                "data": None if w.data is None else str(data_dirs.get(w.name)),
            }
            for w in workloads
        },
        "results": [r.to_json(results) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(f"JSON: {args.json}")
    # Failures that a retry made good are reported, but only a pair that ended
    # with fewer good repetitions than asked for makes the run fail.
    return 1 if any(len(r.reps) < r.reps_wanted for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
