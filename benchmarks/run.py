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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import data
from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import READY_PREFIX, RESULT_PREFIX, SAMPLE_PREFIX, STATS_PREFIX

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
    return _probe_import("import adicom; adicom.connect, adicom.Server")


def _pynetdicom_unavailable(_kind: str) -> str | None:
    return _probe_import("import pynetdicom")


def _dcmtk_unavailable(kind: str) -> str | None:
    tools = ("storescp", "storescu") if kind == "store" else ("echoscu", "storescp")
    missing = [t for t in tools if dcmtk_side.find_tool(t) is None]
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
                " `storescu FILE...`), reported as N-1 operations in time(N) - time(1),"
                " which removes process start, association and release; it is not run"
                " for assoc-echo, where one process per association would measure"
                " process start-up."
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


def _start_scp(stack: Stack, workdir: Path, store_dir: Path | None) -> Scp:
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


def run_once(
    scu: Stack, scp_stack: Stack, workload: Workload, n: int, data_dir: Path | None
) -> dict[str, Any]:
    """One repetition: start the SCP, run the SCU against it, stop the SCP.

    The SCP works (and stores) in a fresh temporary directory, removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="adicom-bench-") as tmp:
        workdir = Path(tmp)
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
        why = None
        if returncode != 0 or result["ok"] != result["ops"] or "error" in result["extra"]:
            why = result["extra"].get("error") or _last_line(stderr)
            first = _first_line(stderr)
            if first and first != why:
                why += f" (stderr: {first})"
            why = f"{result['ok']}/{result['ops']} ok, SCU exit code {returncode}: {why}"
        elif stored is not None:
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
            base = next(
                (r.median_rate() for r in all_results
                 if r.workload is self.workload and r.key == key and r.reps),
                None,
            )  # fmt: skip
            out["->".join(key)] = rate / base if rate is not None and base else None
        return out

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
            "reps": self.reps,
            "errors": self.errors,
        }


# --------------------------------------------------------------------------- tables


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


BASELINE_LABELS = {PYN_BASELINE: "x pyn->pyn", DCMTK_BASELINE: "x dcmtk->dcmtk"}

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
        out += _table(rows_of, results)
    return "\n".join(out)


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
    order = [PYN_BASELINE]
    order += [(s.name, s.name) for s in stacks if (s.name, s.name) != PYN_BASELINE]
    order += [(a.name, b.name) for a in stacks for b in stacks if a.name != b.name]
    wanted_keys = None if not wanted else {tuple(w.split(":", 1)) for w in wanted}
    for key in order:
        if key[0] not in by_name or key[1] not in by_name:
            continue
        if wanted_keys is not None and key not in wanted_keys:
            continue
        if workload.pairs(*key):
            yield by_name[key[0]], by_name[key[1]]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
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
                results.append(PairResult(wl, scu, scp, n, reps))

    data_dirs: dict[str, Path] = {}
    for wl in workloads:
        counts = [r.n for r in results if r.workload is wl]
        if wl.data is not None and counts:
            print(f"[{wl.name}] preparing {max(counts)} instances ...", file=sys.stderr)
            data_dirs[wl.name] = data.ensure(args.data_dir, wl.data, max(counts))

    started = time.monotonic()
    for wl in workloads:
        pairs = [r for r in results if r.workload is wl]
        for rep in range(1, max((r.reps_wanted for r in pairs), default=0) + 1):
            for pr in pairs:
                for attempt in range(1, args.retries + 2):
                    tag = f"[{wl.name} {rep}/{pr.reps_wanted}] {pr.scu.label()} -> {pr.scp.name}"
                    if attempt > 1:
                        tag += f" (retry {attempt - 1})"
                    try:
                        raw = run_once(pr.scu, pr.scp, wl, pr.n, data_dirs.get(wl.name))
                    except (BenchError, OSError, ValueError) as exc:
                        detail = exc.detail if isinstance(exc, BenchError) else {}
                        pr.errors.append(
                            {"rep": rep, "attempt": attempt, "error": str(exc), **detail}
                        )
                        print(f"{tag}: FAILED: {_first_line(str(exc))}", file=sys.stderr)
                        continue
                    raw["rep"], raw["attempt"] = rep, attempt
                    pr.reps.append(raw)
                    print(f"{tag}: {raw['ops_per_s']:.1f} {wl.unit}", file=sys.stderr)
                    break
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
    reps_text = ", ".join(
        f"{w.name} {next((r.reps_wanted for r in results if r.workload is w), 0)}"
        for w in workloads
    )
    print(f"\nRepetitions per pair: {reps_text}; {elapsed:.0f} s in all.")

    report = {
        "meta": machine_info(),
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
