"""Benchmark runner: every workload, every (SCU, SCP) pair, each side in its own process.

    python -m benchmarks.run [--quick] [--reps N] [--json PATH] [--only WORKLOAD]

For each repetition of each pair the runner starts the SCP, waits (bounded)
until it listens, runs the SCU, which prints one JSON result line, and stops
the SCP. Repetitions go round-robin over the pairs, so slow drift of the
machine spreads over all pairs alike. The table shows the median of the
repetitions and its ratio to pynetdicom -> pynetdicom on the same workload;
the JSON file keeps every repetition. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
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

from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import READY_PREFIX, RESULT_PREFIX

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "echo.json"
HOST = "127.0.0.1"
SCP_AET = "BENCH-SCP"
SCU_AET = "BENCH-SCU"
SCP_START_TIMEOUT = 30.0  # seconds until the SCP must listen
SCP_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
OP_TIMEOUT = 10.0  # per-operation timeout handed to each SCU
BASELINE = ("pynetdicom", "pynetdicom")


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    n_full: int
    n_quick: int
    #: The slowest rate we still wait for; bounds the SCU's run time.
    min_rate: float
    description: str

    def scu_timeout(self, n: int) -> float:
        return 30.0 + (n + 1) / self.min_rate


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "assoc-echo",
            "cycles/s",
            300,
            50,
            2.0,
            "associate + one C-ECHO + release, N times in sequence",
        ),
        Workload(
            "echo-one-assoc",
            "echoes/s",
            3000,
            300,
            5.0,
            "N C-ECHOs in sequence on one association",
        ),
    )
}


# --------------------------------------------------------------------------- stacks


@dataclass
class Scp:
    """A started SCP: its process, port, and log files."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path


@dataclass(frozen=True)
class Stack:
    """One DICOM implementation that can play SCP and/or SCU."""

    name: str
    #: None when usable, else why not.
    unavailable: Callable[[], str | None]
    #: argv of the SCP, given (port, workdir); None = a Python side that picks
    #: its own free port and prints the ready line.
    scp_argv: Callable[[int, Path], list[str]]
    scp_prints_ready: bool
    scu_argv: Callable[[int, str, int], list[str]]
    #: Workloads this stack can run fairly as SCU (None = all).
    scu_workloads: frozenset[str] | None = None
    #: How the SCU is labelled in the table, when it is not just the name.
    scu_label: str | None = None
    #: Extra environment for this stack's processes (SCP and SCU).
    env: dict[str, str] = field(default_factory=dict)
    #: Printed under the table when this stack takes part (as SCU or SCP) ...
    notes: list[str] = field(default_factory=list)
    #: ... and when it plays the SCU.
    scu_notes: list[str] = field(default_factory=list)

    def label(self) -> str:
        return self.scu_label or self.name


def _python_side(module: str) -> tuple[Callable[[int, Path], list[str]], Callable[..., list[str]]]:
    def scp(port: int, _workdir: Path) -> list[str]:
        return [sys.executable, "-m", module, "scp", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET]  # fmt: skip

    def scu(port: int, workload: str, n: int) -> list[str]:
        return [sys.executable, "-m", module, "scu", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET, "--calling-aet", SCU_AET, "--workload", workload,
                "-n", str(n), "--timeout", str(OP_TIMEOUT)]  # fmt: skip

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


def _adicom_unavailable() -> str | None:
    return _probe_import("import adicom; adicom.connect, adicom.Server")


def _pynetdicom_unavailable() -> str | None:
    return _probe_import("import pynetdicom")


def _dcmtk_unavailable() -> str | None:
    missing = [t for t in ("echoscu", "storescp") if dcmtk_side.find_tool(t) is None]
    return f"no DCMTK {', '.join(missing)} found" if missing else None


def _make_stacks(dcmtk_nodelay: bool) -> list[Stack]:
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")
    pyn_scp, pyn_scu = _python_side("benchmarks.sides.pynetdicom_side")
    dcmtk_scu = _python_side("benchmarks.sides.dcmtk_side")[1]
    return [
        Stack("pynetdicom", _pynetdicom_unavailable, pyn_scp, True, pyn_scu),
        Stack("adicom", _adicom_unavailable, adicom_scp, True, adicom_scu),
        Stack(
            "dcmtk",
            _dcmtk_unavailable,
            lambda port, workdir: dcmtk_side.scp_command(port, SCP_AET, str(workdir)),
            False,
            dcmtk_scu,
            scu_workloads=dcmtk_side.SUPPORTED_SCU_WORKLOADS,
            scu_label="dcmtk*",
            env={"TCP_NODELAY": "1"} if dcmtk_nodelay else {},
            scu_notes=[
                "dcmtk* SCU = `echoscu --repeat N` (N C-ECHOs on one association), reported as"
                " N-1 echoes in time(--repeat N) - time(--repeat 1), which removes process"
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


def _start_scp(stack: Stack, workdir: Path) -> Scp:
    port = 0 if stack.scp_prints_ready else _free_port()
    stdout_path, stderr_path = workdir / "scp.out", workdir / "scp.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            stack.scp_argv(port, workdir),
            cwd=REPO_ROOT,
            env=_child_env(stack.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    scp = Scp(proc, port, stdout_path, stderr_path)
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


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise BenchError("SCU printed no result line")


def run_once(scu: Stack, scp_stack: Stack, workload: Workload, n: int) -> dict[str, Any]:
    """One repetition: start the SCP, run the SCU against it, stop the SCP."""
    with tempfile.TemporaryDirectory(prefix="adicom-bench-") as tmp:
        workdir = Path(tmp)
        scp = _start_scp(scp_stack, workdir)
        try:
            cpu0 = _proc_cpu_seconds(scp.proc.pid)
            try:
                out = subprocess.run(
                    scu.scu_argv(scp.port, workload.name, n),
                    cwd=REPO_ROOT,
                    env=_child_env(scu.env),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=workload.scu_timeout(n),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"SCU did not finish within {exc.timeout:.0f} s") from exc
            cpu1 = _proc_cpu_seconds(scp.proc.pid)
            scp_rss = _proc_peak_rss_kib(scp.proc.pid)
            scp_alive = scp.proc.poll() is None
        finally:
            _stop_scp(scp)
        scp_err = _tail(scp.stderr_path)
        try:
            result = _parse_result(out.stdout)
        except (BenchError, ValueError) as exc:
            raise BenchError(
                f"SCU exit code {out.returncode}, no result: {_last_line(out.stderr)}",
                {"scu_stderr_tail": out.stderr[-3000:], "scp_stderr_tail": scp_err},
            ) from exc
        if out.returncode != 0 or result["ok"] != result["ops"] or "error" in result["extra"]:
            why = result["extra"].get("error") or _last_line(out.stderr)
            first = _first_line(out.stderr)
            if first and first != why:
                why += f" (stderr: {first})"
            raise BenchError(
                f"{result['ok']}/{result['ops']} ok, SCU exit code {out.returncode}: {why}",
                {
                    "result": result,
                    "scu_stderr_tail": out.stderr[-3000:],
                    "scp_stderr_tail": scp_err,
                },
            )
        result["scp_cpu_s"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        result["scp_peak_rss_kib"] = scp_rss
        result["scp_alive_after"] = scp_alive
        if scp_err.strip():
            result["scp_stderr_tail"] = scp_err
        if out.stderr.strip():
            result["scu_stderr_tail"] = out.stderr[-2000:]
        return result


# --------------------------------------------------------------------------- reporting


@dataclass
class PairResult:
    workload: Workload
    scu: Stack
    scp: Stack
    n: int
    reps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.scu.name, self.scp.name)

    def _median(self, f: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in (f(r) for r in self.reps) if v is not None]
        return statistics.median(values) if values else None

    def median_rate(self) -> float | None:
        return self._median(lambda r: float(r["ops_per_s"]))

    def min_max_rate(self) -> tuple[float, float] | None:
        rates = [float(r["ops_per_s"]) for r in self.reps]
        return (min(rates), max(rates)) if rates else None

    def median_scu_cpu_us(self) -> float | None:
        return self._median(lambda r: 1e6 * r["cpu_s"] / r["ops"])

    def median_scp_cpu_us(self) -> float | None:
        return self._median(
            lambda r: None if r.get("scp_cpu_s") is None else 1e6 * r["scp_cpu_s"] / r["ops"]
        )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(results: Sequence[PairResult]) -> str:
    baseline = {r.workload.name: r.median_rate() for r in results if r.key == BASELINE and r.reps}
    header = (
        "workload",
        "SCU -> SCP",
        "median",
        "unit",
        "min..max",
        "SCU CPU us/op",
        "SCP CPU us/op",
        "x pyn->pyn",
        "reps",
    )
    rows: list[tuple[str, ...]] = []
    for r in results:
        rate = r.median_rate()
        mm = r.min_max_rate()
        base = baseline.get(r.workload.name)
        ratio = rate / base if rate is not None and base else None
        rows.append(
            (
                r.workload.name,
                f"{r.scu.label()} -> {r.scp.name}",
                _fmt(rate, ".1f"),
                r.workload.unit,
                "-" if mm is None else f"{mm[0]:.1f}..{mm[1]:.1f}",
                _fmt(r.median_scu_cpu_us(), ".0f"),
                _fmt(r.median_scp_cpu_us(), ".0f"),
                _fmt(ratio, ".2f"),
                f"{len(r.reps)}" + (f" ({len(r.errors)} failed)" if r.errors else ""),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {2, 4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [
        "Median over repetitions; 'x pyn->pyn' = median rate / median rate of "
        "pynetdicom -> pynetdicom on the same workload (higher is faster).",
        line(header),
        line(["-" * w for w in widths]),
    ]
    previous = None
    for r, row in zip(results, rows, strict=True):
        if previous is not None and r.workload.name != previous:
            out.append("")
        previous = r.workload.name
        out.append(line(row))
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
    if adicom_version is None and _adicom_unavailable() is None:
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
    p.add_argument("--reps", type=int, help="repetitions per pair (default 5; --quick 2)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(WORKLOADS),
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
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.retries < 0:
        p.error("--retries must be >= 0")
    if args.n is not None and args.n < 1:
        p.error("-n must be >= 1")
    return args


def _pairs(stacks: Sequence[Stack], wanted: list[str] | None) -> Iterator[tuple[Stack, Stack]]:
    """Every SCU x SCP, the baseline first, then same-stack pairs, then the rest."""
    by_name = {s.name: s for s in stacks}
    order = [BASELINE]
    order += [(s.name, s.name) for s in stacks if (s.name, s.name) != BASELINE]
    order += [(a.name, b.name) for a in stacks for b in stacks if a.name != b.name]
    wanted_keys = None if not wanted else {tuple(w.split(":", 1)) for w in wanted}
    for key in order:
        if wanted_keys is None or key in wanted_keys:
            yield by_name[key[0]], by_name[key[1]]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)
    workloads = [WORKLOADS[w] for w in (args.only or WORKLOADS)]

    stacks: list[Stack] = []
    skipped: list[str] = []
    for stack in _make_stacks(dcmtk_nodelay=not args.dcmtk_as_packaged):
        why = stack.unavailable()
        if why is None:
            stacks.append(stack)
        else:
            skipped.append(f"{stack.name}: {why}")
    for s in skipped:
        print(f"skipping {s}", file=sys.stderr)

    results: list[PairResult] = []
    for wl in workloads:
        n = args.n or (wl.n_quick if args.quick else wl.n_full)
        for scu, scp in _pairs(stacks, args.pair):
            if scu.scu_workloads is None or wl.name in scu.scu_workloads:
                results.append(PairResult(wl, scu, scp, n))

    started = time.monotonic()
    for wl in workloads:
        for rep in range(1, reps + 1):
            for pr in (r for r in results if r.workload is wl):
                for attempt in range(1, args.retries + 2):
                    tag = f"[{wl.name} {rep}/{reps}] {pr.scu.label()} -> {pr.scp.name}"
                    if attempt > 1:
                        tag += f" (retry {attempt - 1})"
                    try:
                        raw = run_once(pr.scu, pr.scp, wl, pr.n)
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
    notes = [n for s in stacks if any(r.scu is s for r in results) for n in s.scu_notes]
    notes += [n for s in stacks if any(s in (r.scu, r.scp) for r in results) for n in s.notes]
    for note in notes:
        print(f"\n{note}")
    for s in skipped:
        print(f"(skipped {s})")
    print(f"\n{reps} repetitions per pair, {elapsed:.0f} s in all.")

    report = {
        "meta": machine_info(),
        "config": {
            "quick": args.quick,
            "reps": reps,
            "host": HOST,
            "op_timeout_s": OP_TIMEOUT,
            "retries": args.retries,
            "dcmtk_tcp_nodelay": not args.dcmtk_as_packaged,
            "skipped": skipped,
            "elapsed_s": elapsed,
        },
        "workloads": {w.name: {"unit": w.unit, "description": w.description} for w in workloads},
        "results": [
            {
                "workload": r.workload.name,
                "scu": r.scu.name,
                "scu_label": r.scu.label(),
                "scp": r.scp.name,
                "n": r.n,
                "median_ops_per_s": r.median_rate(),
                "median_scu_cpu_us_per_op": r.median_scu_cpu_us(),
                "median_scp_cpu_us_per_op": r.median_scp_cpu_us(),
                "reps": r.reps,
                "errors": r.errors,
            }
            for r in results
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(f"JSON: {args.json}")
    # Failures that a retry made good are reported, but only a pair that ended
    # with fewer good repetitions than asked for makes the run fail.
    return 1 if any(len(r.reps) < reps for r in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
