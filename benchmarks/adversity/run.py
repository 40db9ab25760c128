"""One row: start the SCP, the probe and the attacker, watch the SCP through the window, stop all.

1. Start the SCP (fresh folder, free port) and wait until it listens.
2. Start the probe; it associates and has one C-ECHO answered, then says READY.
3. Start the attacker (if any); it prepares its payload, then says READY.
4. GO to both at once: the window begins. Every SAMPLE_INTERVAL the runner
   reads the SCP's VmRSS, VmHWM, threads and open files from /proc (the whole
   session for storescp --fork); if RSS passes RSS_CAP_KIB it kills the SCP.
5. The window ends: the probe's result (it waits out its last new
   associations, FRESH_TIMEOUT at most); the attacker is told to stop and
   reports; the SCP gets SIGTERM (sigterm-sta2: before the attacker is
   stopped, with its connections still open), SIGKILL after STOP_TIMEOUT.
6. Count "Traceback (most recent call last)" in the SCP's stdout and stderr.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.adversity import probe as probe_module
from benchmarks.adversity.attacks import ATTACKS
from benchmarks.adversity.children import Side
from benchmarks.adversity.plan import HOLD_EXTRA, Row
from benchmarks.adversity.scps import KINDS, RunningScp, start_scp
from benchmarks.processes import BenchError, tail

SAMPLE_INTERVAL = 0.1
#: An SCP whose memory passes this is killed: the machine must survive the run.
RSS_CAP_KIB = 8 << 20
#: Seconds a side process has to say READY (imports, payloads, first echo).
READY_TIMEOUT = 30.0
#: Seconds after the window for a side process's result.
RESULT_GRACE = probe_module.FRESH_TIMEOUT + probe_module.ECHO_TIMEOUT + 5.0


def _probe_argv(port: int, seconds: float) -> list[str]:
    return [sys.executable, "-m", "benchmarks.adversity.probe", "--port", str(port),
            "--seconds", str(seconds)]  # fmt: skip


def _attack_argv(row: Row, port: int, seconds: float) -> list[str]:
    assert row.attack is not None
    argv = [sys.executable, "-m", "benchmarks.adversity.attacks", "--attack", row.attack,
            "--port", str(port), "--seconds", str(seconds)]  # fmt: skip
    for key, value in row.params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


class Watch:
    """The SCP's /proc samples over the window: peaks, CPU, and a coarse timeline."""

    PEAKS = ("rss_kib", "peak_rss_kib", "threads", "processes", "fds")

    def __init__(self, scp: RunningScp) -> None:
        self.scp = scp
        self.peaks: dict[str, float] = dict.fromkeys(self.PEAKS, 0)
        #: (seconds into the window, CPU seconds) at the first sample, and the latest
        self.cpu_first: tuple[float, float] | None = None
        self.cpu_last: tuple[float, float] | None = None
        self.timeline: list[list[float | int | None]] = []
        self.killed_at_cap = False
        self.exited_during: int | None = None

    def sample(self, at: float) -> None:
        s = self.scp.sample()
        for key in self.PEAKS:
            self.peaks[key] = max(self.peaks[key], s.get(key) or 0)
        if (cpu := s.get("cpu_s")) is not None:
            self.cpu_first = self.cpu_first or (at, cpu)
            self.cpu_last = (at, cpu)
        self.timeline.append([round(at, 2), s.get("rss_kib"), s.get("threads"), s.get("fds")])
        if (s.get("rss_kib") or 0) > RSS_CAP_KIB and not self.killed_at_cap:
            self.killed_at_cap = True
            self.scp.kill()

    def run(self, seconds: float) -> None:
        started = time.monotonic()
        while (now := time.monotonic()) < started + seconds:
            if self.scp.proc.poll() is not None:
                self.exited_during = self.scp.proc.returncode
                break
            self.sample(now - started)
            time.sleep(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - now)))

    def summary(self) -> dict[str, Any]:
        p = self.peaks
        # VmHWM is the process's peak over its life, between samples too; a
        # forking SCP has none for the session: its largest sampled PSS sum.
        cpu = pct = None
        if self.cpu_first and self.cpu_last and self.cpu_last[0] > self.cpu_first[0]:
            cpu = self.cpu_last[1] - self.cpu_first[1]
            pct = 100 * cpu / (self.cpu_last[0] - self.cpu_first[0])
        return {
            "peak_rss_kib": int(max(p["rss_kib"], p["peak_rss_kib"])),
            "max_sampled_rss_kib": int(p["rss_kib"]),
            "vmhwm_kib": int(p["peak_rss_kib"]) or None,
            "max_threads": int(p["threads"]),
            "max_processes": int(p["processes"]),
            "max_fds": int(p["fds"]),
            "cpu_s": None if cpu is None else round(cpu, 2),
            "cpu_pct": None if pct is None else round(pct, 1),
            "killed_at_rss_cap": self.killed_at_cap,
            "exited_during_window": self.exited_during,
            "timeline": self.timeline,
        }


def _start_side(argv: list[str], err: Path, what: str, sides: list[Side]) -> Side:
    side = Side(argv, err)
    sides.append(side)
    if not side.wait_ready(READY_TIMEOUT):
        raise BenchError(f"{what} not ready", {f"{what}_stderr_tail": side.stderr_tail()})
    return side


def _window(row: Row, scp: RunningScp, seconds: float, work: Path) -> dict[str, Any]:
    """Steps 2-5 (the SCP is started and stopped by the caller)."""
    sides: list[Side] = []
    try:
        probe = _start_side(_probe_argv(scp.port, seconds), work / "probe.err", "probe", sides)
        attacker = None
        if row.attack is not None:
            hold = seconds + (HOLD_EXTRA if row.sigterm_under_attack else 0.0)
            argv = _attack_argv(row, scp.port, hold)
            attacker = _start_side(argv, work / "attack.err", "attacker", sides)
        for side in sides:
            side.go()
        watch = Watch(scp)
        watch.run(seconds)
        out: dict[str, Any] = {"probe": probe.result(RESULT_GRACE), "watch": watch.summary()}
        out["probe_stderr_tail"] = probe.stderr_tail()[-1000:]
        if row.sigterm_under_attack:
            out["stop"] = scp.stop()
        if attacker is not None:
            attacker.stop()
            out["attacker"] = attacker.result(RESULT_GRACE)
            out["attacker_stderr_tail"] = attacker.stderr_tail()[-1000:]
        if not row.sigterm_under_attack:
            out["stop"] = scp.stop()
        return out
    finally:
        for side in sides:
            side.kill()


def run_row(row: Row, seconds: float) -> dict[str, Any]:
    """One row's measurements as JSON; `error` says why a row has none."""
    result: dict[str, Any] = {
        "scp": row.scp,
        "attack": row.name,
        "label": row.label,
        "scp_args": list(row.scp_args),
        "nofile": row.nofile,
        "params": {**vars(ATTACKS[row.attack].defaults), **row.params} if row.attack else None,
        "note": row.note,
        "seconds": seconds,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="adversity-") as tmp:
        try:
            _measure(row, seconds, Path(tmp), result)
        except BenchError as exc:
            result.update({"error": str(exc), **exc.detail})
    result["row_s"] = round(time.monotonic() - started, 2)
    return result


def _measure(row: Row, seconds: float, work: Path, result: dict[str, Any]) -> None:
    """Start the SCP, run the window, stop it; what was measured goes into `result`."""
    scp = start_scp(KINDS[row.scp], work, row.scp_args, row.nofile)
    try:
        result.update(_window(row, scp, seconds, work))
    finally:
        scp.kill()
        result["tracebacks"] = scp.tracebacks()
        result["scp_stdout_tail"] = tail(scp.out_path, 1500)
        result["scp_stderr_tail"] = tail(scp.err_path, 3000)
        result["scp_stderr_bytes"] = scp.err_path.stat().st_size
