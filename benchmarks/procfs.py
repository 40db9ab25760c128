"""What the runner reads about running processes from Linux /proc: CPU clocks, memory, threads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def host_cpu_seconds(stat: Path = Path("/proc/stat")) -> dict[str, float] | None:
    """The machine's idle and stolen CPU seconds so far, all cores summed (Linux /proc/stat).

    Differences over a run tell whether its cores were all busy (idle
    near 0) and whether the hypervisor took time from them (steal): a
    rate that moves with steal measures the host, not the code. None
    where ``stat`` cannot be read or is not in that format.
    """
    try:
        line = stat.read_text().partition("\n")[0]
    except OSError:
        return None
    fields = line.split()
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal (proc(5))
    return {"idle_s": int(fields[4]) / ticks, "steal_s": int(fields[8]) / ticks}


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


def session_snapshot(sid: int) -> dict[str, Any]:
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


def proc_peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def filesystem_of(path: Path) -> str | None:
    """The type of the file system ``path`` is on ("tmpfs", "ext4"...), from /proc/self/mounts."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        # Mount points escape spaces as \040 (fstab(5)).
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def listens_on(pid: int, port: int) -> bool:
    """True when process ``pid`` itself holds a TCP socket listening on ``port`` (IPv4 or 6).

    Unlike connecting to the port, this cannot mistake another process that
    took the port first for the SCP we started (Linux /proc; False elsewhere).
    """
    try:
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:[") : -1]
            for fd in os.listdir(f"/proc/{pid}/fd")
        }
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "ADDR:PORT" in hex, state 0A = LISTEN, inode in column 10
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
                and fields[9] in inodes
            ):
                return True
    return False
