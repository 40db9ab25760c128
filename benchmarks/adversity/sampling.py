"""What the runner reads of the SCP from /proc: memory, threads, processes, open files, CPU.

A single-process SCP: its VmRSS, VmHWM and Threads (`/proc/PID/status`), its
open files and its CPU time. An SCP that forks per association (storescp
--fork): summed over its session, with memory as PSS (`smaps_rollup`), so
that the pages the children share with the parent count once, not once per
child as a sum of VmRSS would (500 idle children: ~2.3 GB of VmRSS).
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.procfs import proc_cpu_seconds

Sample = dict[str, float | int | None]

_TICKS = os.sysconf("SC_CLK_TCK")


def _kib_fields(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def process_sample(pid: int) -> Sample:
    """One process: rss_kib, peak_rss_kib (VmHWM), threads, fds, cpu_s."""
    status = _kib_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM", "Threads"))
    if not status:
        return {"rss_kib": None, "peak_rss_kib": None, "threads": None, "processes": 0}
    return {
        "rss_kib": status.get("VmRSS"),
        "peak_rss_kib": status.get("VmHWM"),
        "threads": status.get("Threads"),
        "processes": 1,
        "fds": _fds(pid),
        "cpu_s": proc_cpu_seconds(pid),
    }


def session_sample(sid: int) -> Sample:
    """Every process of session `sid`: PSS summed (as rss_kib), threads and processes
    summed, CPU as utime + stime + cutime + cstime (reaped children included), the
    leader's open files."""
    pss = threads = processes = ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) != sid:
            continue
        processes += 1
        ticks += sum(int(f) for f in fields[11:15])
        pss += _kib_fields(f"{entry}/smaps_rollup", ("Pss",)).get("Pss", 0)
        threads += _kib_fields(f"{entry}/status", ("Threads",)).get("Threads", 0)
    if not processes:
        return {"rss_kib": None, "peak_rss_kib": None, "threads": None, "processes": 0}
    return {
        "rss_kib": pss,
        "peak_rss_kib": None,
        "threads": threads,
        "processes": processes,
        "fds": _fds(sid),
        "cpu_s": ticks / _TICKS,
    }
