"""Scale and workers: many associations on one SCP, and ``adicom serve --workers``.

Run from the repository root (see README.md, "Scale and workers")::

    python -m benchmarks.scale                       # all three, every stack that is here
    python -m benchmarks.scale --only idle-5000 --stack adicom --stack dcmtk
    python -m benchmarks.scale --only busy-1000 -n 200
    python -m benchmarks.scale --only workers --reps 3

Workloads:

- ``idle-5000``: N associations (default 5,000) opened against one SCP and
  held open at once, then a probe, again and again: a new association, one
  C-ECHO (the time from connect to the C-ECHO-RSP is the probe's), release.
  Reports the probe's p50/p99, the associations that failed, and the SCP's
  memory (RSS and PSS summed over its processes), threads and processes
  with all N open.
- ``busy-1000``: N associations (default 1,000) opened at once, then all of
  them store K small instances each (~42 KB CT, a different instance each)
  at the same moment, then release. Reports the instances per second from
  that moment to the last response, the failures, a probe's p50/p99 (as
  above, during the storm, from a process of its own so that the storm's
  clients do not delay it) and the SCP's peak memory, threads, processes.
- ``workers``: ``adicom serve --storage --workers 1`` against ``--workers
  2``, fed by 8 lanes of DCMTK ``storescu`` processes (C++, far cheaper per
  instance than any Python client, so that the server is what is measured):
  each lane runs storescu after storescu, each storing F files on one
  association, until the lane's share of N files is sent. Reports
  instances/s, the server's CPU per instance, the client's CPU, and the
  associations each worker accepted (the kernel's spread).

The clients of idle-5000 and busy-1000 are raw asyncio sockets in this
process that speak just enough of PS3.8 (A-ASSOCIATE-RQ from adicom's PDU
codec, one pre-encoded C-STORE or C-ECHO per message, A-RELEASE-RQ): a full
client per association would cost more than the server it measures. They,
and the probe, are ``benchmarks.rawdicom``.

Opening thousands of sockets needs descriptors: this process raises its
soft RLIMIT_NOFILE to the hard limit, and its children (the SCPs) inherit
it. A hard limit below N + 100 stops the workload with a message (raise it
with ``ulimit -Hn`` as root, or in /etc/security/limits.conf).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from adicom.cli.common import loop_factory
from benchmarks import data
from benchmarks.config import DEFAULT_DATA, HOST, REPO_ROOT, SCP_AET, SCU_AET
from benchmarks.processes import child_env, free_port
from benchmarks.procfs import host_cpu_seconds, listens_on, session_snapshot
from benchmarks.rawdicom import (
    CT_IMAGE_STORAGE,
    VERIFICATION,
    Failed,
    Prober,
    RawAssociation,
    StoreLane,
    associate_rq,
    dataset_of,
    echo_command,
    message,
    ms,
    open_many,
    percentile,
    probe_child,
    probe_summary,
    store_command,
)
from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import READY_PREFIX, raise_nofile_limit

DEFAULT_JSON = REPO_ROOT / "benchmarks" / "results" / "scale.json"
#: Connections being opened at once by the idle and busy clients.
OPENING = 64
STACKS = ("adicom", "dcmtk", "pynetdicom")


# --------------------------------------------------------------------------- the SCPs


@dataclass
class Scp:
    stack: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def snapshot(self) -> dict[str, Any]:
        snap = session_snapshot(self.proc.pid)
        snap["pss_kib"] = session_pss_kib(self.proc.pid)
        return snap

    def output(self) -> str:
        return (self.workdir / "scp.out").read_text(errors="replace")


def session_pss_kib(sid: int) -> int:
    """Proportional set size summed over the session (shared pages counted once)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[3]) != sid:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def scp_argv(
    stack: str,
    port: int,
    workdir: Path,
    n: int,
    store: bool,
    workers: int,
    sockets: str | None,
    turn_budget: float | None = None,
) -> list[str]:
    """The SCP of a scale workload, its limits raised to hold ``n`` associations from 127.0.0.1."""
    store_dir = workdir / "received"
    if stack == "adicom":
        argv = [sys.executable, "-m", "adicom", "serve", "--aet", SCP_AET, "--host", HOST,
                "--port", str(port), "--max-associations", str(n + 100),
                "--max-pending", str(n + 100), "--max-per-address", str(n + 100),
                "--idle-timeout", "300", "--workers", str(workers)]  # fmt: skip
        if sockets is not None:
            argv += ["--worker-sockets", sockets]
        if turn_budget is not None:
            argv += ["--turn-budget", str(turn_budget)]
        return [*argv, "--storage", str(store_dir)] if store else argv
    if stack == "adicom-disk":
        # Server + DiskStorage, no archive index, under adicom.workers (sides/disk_workers.py).
        return [sys.executable, "-m", "benchmarks.sides.disk_workers", "--workers", str(workers),
                "--sockets", sockets or "own", "--store-dir", str(store_dir), "--aet", SCP_AET,
                "--host", HOST]  # fmt: skip
    if stack == "dcmtk":
        tool = dcmtk_side.find_tool("storescp")
        assert tool is not None
        store_dir.mkdir(exist_ok=True)
        # --fork: a child process per association (DCMTK's way to serve several).
        return [tool, "--fork", "-aet", SCP_AET, "--output-directory", str(store_dir),
                "--max-pdu", str(dcmtk_side.MAX_PDU), "--acse-timeout", "300",
                "--dimse-timeout", "300", str(port)]  # fmt: skip
    argv = [sys.executable, "-m", "benchmarks.sides.pynetdicom_side", "scp", "--host", HOST,
            "--port", "0", "--aet", SCP_AET, "--max-associations", str(n + 100),
            "--idle-timeout", "300"]  # fmt: skip
    return [*argv, "--store-dir", str(store_dir)] if store else argv


def start_scp(
    stack: str,
    workdir: Path,
    n: int,
    *,
    store: bool,
    workers: int = 1,
    sockets: str | None = None,
    turn_budget: float | None = None,
    timeout: float = 60,
) -> Scp:
    # Python SCPs pick their own free port and say which; storescp gets one.
    port = free_port() if stack == "dcmtk" else 0
    env = {"TCP_NODELAY": "1"} if stack == "dcmtk" else {}
    out = workdir / "scp.out"
    with out.open("wb") as stdout, (workdir / "scp.err").open("wb") as stderr:
        proc = subprocess.Popen(
            scp_argv(stack, port, workdir, n, store, workers, sockets, turn_budget),
            cwd=REPO_ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (workdir / "scp.err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{stack} SCP exited with {proc.returncode}: {err}")
        text = out.read_text(errors="replace")
        if stack == "pynetdicom":
            for line in text.splitlines():
                if line.startswith(READY_PREFIX):
                    return Scp(stack, proc, int(line[len(READY_PREFIX) :]), workdir)
        elif stack.startswith("adicom"):
            if found := re.search(r"listening on [^:]+:(\d+)", text):
                return Scp(stack, proc, int(found[1]), workdir)
        elif listens_on(proc.pid, port):  # not port_open: another process may hold it
            return Scp(stack, proc, port, workdir)
        time.sleep(0.05)
    stop_scp(Scp(stack, proc, port, workdir))
    raise RuntimeError(f"{stack} SCP not listening after {timeout:.0f} s")


def stop_scp(scp: Scp, timeout: float = 30.0) -> None:
    """SIGTERM (the whole process group: storescp's children too), then SIGKILL."""
    if scp.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(scp.proc.pid, signal.SIGTERM)
        try:
            scp.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(scp.proc.pid, signal.SIGKILL)
            scp.proc.wait(timeout)
    # Forked children left in the group (storescp --fork): none may outlive the run.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(scp.proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- workloads


async def idle(scp: Scp, n: int, probes_n: int, opening: int) -> dict[str, Any]:
    request = associate_rq(VERIFICATION)
    before = scp.snapshot()
    started = time.perf_counter()
    held, failures = await open_many(scp.port, n, request, opening, timeout=60)
    open_s = time.perf_counter() - started
    await asyncio.sleep(2.0)  # settle: every association idle
    opened = scp.snapshot()
    # From a process of its own, as in busy-1000: this one holds the N
    # clients, and its own garbage collection would show in the probe's times.
    prober = Prober(scp.port, every=0.02, limit=probes_n)
    times, connects, probe_failures = await prober.finished(timeout=60 + probes_n * 0.1)
    # Still held? A C-ECHO on a sample of them (all would cost as much as the rest).
    alive = 0
    for association in held[:: max(1, len(held) // 50)]:
        try:
            async with asyncio.timeout(30):
                alive += await association.request(1, echo_command(1), None) == 0
        except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
    sampled = len(held[:: max(1, len(held) // 50)])
    for association in held:
        association.writer.close()
    return {
        "associations": n,
        "held": len(held),
        "failed": sum(failures.values()),
        "failures": failures,
        "open_s": round(open_s, 2),
        "sampled_alive": f"{alive}/{sampled}",
        **probe_summary(times, connects, probe_failures),
        "scp_idle": before,
        "scp_open": opened,
    }


async def busy(scp: Scp, n: int, per: int, files: list[Path], opening: int) -> dict[str, Any]:
    request = associate_rq(CT_IMAGE_STORAGE)
    instances = [dataset_of(path) for path in files[: n * per]]
    held, failures = await open_many(scp.port, n, request, opening, timeout=120)
    opened = scp.snapshot()
    go = asyncio.Event()
    latencies: list[float] = []
    stored = 0
    store_failures: dict[str, int] = {}

    async def storm(index: int, association: RawAssociation) -> None:
        nonlocal stored
        await go.wait()
        try:
            for k in range(per):
                uid, dataset = instances[index * per + k]
                started = time.perf_counter()
                async with asyncio.timeout(300):
                    status = await association.request(3, store_command(k + 1, uid), dataset)
                latencies.append(time.perf_counter() - started)
                if status != 0:
                    raise Failed(f"C-STORE status {status:#06x}")
                stored += 1
            async with asyncio.timeout(60):
                await association.release()
        except (Failed, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            kind = str(exc) if isinstance(exc, Failed) else type(exc).__name__
            store_failures[kind] = store_failures.get(kind, 0) + 1
            association.writer.close()

    tasks = [asyncio.create_task(storm(i, a)) for i, a in enumerate(held)]
    prober = Prober(scp.port, every=0.05)
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    go.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        took = time.perf_counter() - started
        times, connects, probe_failures = prober.stop()
    after = scp.snapshot()
    return {
        "associations": n,
        "instances_per_association": per,
        "held": len(held),
        "failed_associations": sum(failures.values()) + sum(store_failures.values()),
        "failures": failures | store_failures,
        "stored": stored,
        "seconds": round(took, 3),
        "inst_per_s": round(stored / took, 1) if took else None,
        "store_p50_ms": ms(percentile(latencies, 50)),
        "store_p99_ms": ms(percentile(latencies, 99)),
        **probe_summary(times, connects, probe_failures),
        "scp_open": opened,
        "scp_after": after,
    }


def count_dcm(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))


#: The PDUs the raw client's C-STOREs are cut into: at most this long, which
#: ``adicom serve`` (1 MiB) and Server take (StoreLane checks the SCP's limit).
RAW_MAX_PDU = 1 << 20


async def raw_lanes(
    port: int, instances: list[tuple[str, bytes]], lanes: int, per: int
) -> tuple[float, int, float]:
    """The raw client's lanes: each stores its share, ``per`` instances per association.

    Every C-STORE-RQ is encoded before the clock starts (``StoreLane``).
    Returns (seconds, failed associations, the client's CPU seconds in that span).
    """
    request = associate_rq(CT_IMAGE_STORAGE)
    loop = asyncio.get_running_loop()
    failed = 0

    def batches(share: list[tuple[str, bytes]]) -> list[list[bytes]]:
        return [
            [
                message(3, store_command(k + 1, uid), dataset, RAW_MAX_PDU)
                for k, (uid, dataset) in enumerate(share[start : start + per])
            ]
            for start in range(0, len(share), per)
        ]

    async def lane(associations: list[list[bytes]]) -> None:
        nonlocal failed
        for messages in associations:
            transport: asyncio.Transport | None = None
            try:
                async with asyncio.timeout(300):
                    transport, store = await loop.create_connection(
                        partial(StoreLane, request, messages, RAW_MAX_PDU), HOST, port
                    )
                    await store.done
            except (Failed, OSError, TimeoutError):
                failed += 1
                if transport is not None:
                    transport.abort()

    work = [batches(instances[i::lanes]) for i in range(lanes)]
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(lane(associations) for associations in work))
    return time.perf_counter() - started, failed, time.process_time() - cpu


def workers_rep(
    workdir: Path,
    mode: str,
    files: list[Path],
    warmup: Path,
    lanes: int,
    per: int,
    client: str = "storescu",
    server: str = "archive",
) -> dict[str, Any]:
    """One repetition of the workers workload: ``lanes`` lanes of storescu into ``adicom serve``."""
    storescu = dcmtk_side.find_tool("storescu")
    assert storescu is not None
    workers, _, sockets = mode.partition("-")
    stack = "adicom" if server == "archive" else "adicom-disk"
    scp = start_scp(stack, workdir, 64, store=True, workers=int(workers), sockets=sockets or None)
    if client == "raw":
        instances = [dataset_of(path) for path in files]
        try:
            subprocess.run(
                [storescu, "-aec", SCP_AET, HOST, str(scp.port), str(warmup)],
                env=child_env({"TCP_NODELAY": "1"}),
                check=True,
                capture_output=True,
                timeout=60,
            )
            before = scp.snapshot()
            # uvloop when installed: a lighter load still.
            with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
                client_loop = type(runner.get_loop()).__module__.partition(".")[0]
                host_before = host_cpu_seconds()
                took, failed, client_cpu = runner.run(raw_lanes(scp.port, instances, lanes, per))
                host_after = host_cpu_seconds()
            after = scp.snapshot()
        finally:
            stop_scp(scp)
        result = _workers_result(
            workdir, scp, mode, len(files), failed, took, before, after, client_cpu
        )
        return {**result, **_host_delta(host_before, host_after), "client_loop": client_loop}
    env = child_env({"TCP_NODELAY": "1"})

    def argv(batch: list[Path]) -> list[str]:
        return [storescu, "-aet", SCU_AET, "-aec", SCP_AET, "--max-pdu", str(dcmtk_side.MAX_PDU),
                HOST, str(scp.port), *map(str, batch)]  # fmt: skip

    try:
        subprocess.run(argv([warmup]), env=env, check=True, capture_output=True, timeout=60)
        share = [files[i::lanes] for i in range(lanes)]
        queues = [[lane[i : i + per] for i in range(0, len(lane), per)] for lane in share]
        # pid -> (lane, its Popen): held, so that subprocess never reaps one
        # behind os.waitpid's back (it reaps Popen objects collected while running).
        running: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
        before = scp.snapshot()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        host_before = host_cpu_seconds()
        started = time.perf_counter()

        def launch(lane: int) -> None:
            batch = queues[lane].pop(0)
            proc = subprocess.Popen(
                argv(batch), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            running[proc.pid] = (lane, proc)

        for lane in range(lanes):
            if queues[lane]:
                launch(lane)
        failed = 0
        while running:
            pid, status = os.waitpid(-1, 0)  # whichever storescu ends first
            if pid not in running:
                raise RuntimeError(f"the SCP (pid {pid}) ended during the run")
            lane = running.pop(pid)[0]
            failed += os.waitstatus_to_exitcode(status) != 0
            if queues[lane]:
                launch(lane)
        took = time.perf_counter() - started
        host_after = host_cpu_seconds()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = scp.snapshot()
    finally:
        stop_scp(scp)
    client_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    result = _workers_result(
        workdir, scp, mode, len(files), failed, took, before, after, client_cpu
    )
    return {**result, **_host_delta(host_before, host_after)}


def _workers_result(
    workdir: Path,
    scp: Scp,
    mode: str,
    n: int,
    failed: int,
    took: float,
    before: dict[str, Any],
    after: dict[str, Any],
    client_cpu: float,
) -> dict[str, Any]:
    spread = re.search(r"associations accepted per worker: ([\d, ]+);", scp.output())
    stored = count_dcm(workdir / "received")
    server_cpu = (after["cpu_s"] or 0) - (before["cpu_s"] or 0)
    return {
        "mode": mode,
        "instances": n,
        "stored": stored - 1,  # the warm-up instance
        "client_failed": failed,
        "seconds": round(took, 3),
        "inst_per_s": round(n / took, 1),
        "server_cpu_us_per_inst": round(server_cpu / n * 1e6, 1),
        "client_cpu_us_per_inst": round(client_cpu / n * 1e6, 1),
        "associations_per_worker": [int(x) for x in spread[1].split(",")] if spread else None,
        "scp_rss_kib": after["rss_kib"],
        "scp_processes": after["processes"],
        "loadavg": os.getloadavg(),
    }


def _host_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """``host_idle_ms`` and ``host_steal_ms`` over a run (None when unknown).

    The run's idle CPU (all cores) and the hypervisor's steal: idle left
    while N workers should keep N cores busy means they waited (an uneven
    spread, a lock), not that they ran out of CPU; steal is time the host
    took from this machine.
    """
    if before is None or after is None:
        return {"host_idle_ms": None, "host_steal_ms": None}
    return {
        f"host_{key.removesuffix('_s')}_ms": round((after[key] - before[key]) * 1000)
        for key in ("idle_s", "steal_s")
    }


# --------------------------------------------------------------------------- runner


def stack_missing(stack: str) -> str | None:
    if stack == "dcmtk":
        return None if dcmtk_side.find_tool("storescp") else "no DCMTK storescp"
    if stack == "pynetdicom":
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            return "no pynetdicom"
    return None


def run_async(make: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return asyncio.run(make())  # type: ignore[arg-type]


def run_idle(args: argparse.Namespace, stack: str, scratch: Path) -> dict[str, Any]:
    n = args.n or (500 if args.quick else 5000)
    workdir = Path(tempfile.mkdtemp(prefix=f"idle-{stack}-", dir=scratch))
    scp = start_scp(
        stack, workdir, n, store=False, workers=args.serve_workers, turn_budget=args.turn_budget
    )
    try:
        opening = 8 if stack == "pynetdicom" else OPENING
        return run_async(lambda: idle(scp, n, args.probes, opening))
    finally:
        stop_scp(scp)


def run_busy(args: argparse.Namespace, stack: str, scratch: Path) -> dict[str, Any]:
    n = args.n or (100 if args.quick else 1000)
    directory = data.ensure(args.data_dir, data.SMALL, n * args.per)
    files = data.instance_paths(directory, n * args.per)
    workdir = Path(tempfile.mkdtemp(prefix=f"busy-{stack}-", dir=scratch))
    scp = start_scp(
        stack, workdir, n, store=True, workers=args.serve_workers, turn_budget=args.turn_budget
    )
    try:
        opening = 8 if stack == "pynetdicom" else OPENING
        result = run_async(lambda: busy(scp, n, args.per, files, opening))
    finally:
        stop_scp(scp)
    result["files_on_disk"] = count_dcm(workdir / "received")
    return result


def run_workers(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    n = args.n or (400 if args.quick else 2000)
    directory = data.ensure(args.data_dir, data.SMALL, n)
    files = data.instance_paths(directory, n)
    warmup = data.warmup_paths(directory)[0]
    reps: list[dict[str, Any]] = []
    modes = args.modes.split(",")
    for rep in range(args.reps):
        for mode in modes:
            workdir = Path(tempfile.mkdtemp(prefix=f"workers{mode}-{rep}-", dir=scratch))
            result = workers_rep(
                workdir, mode, files, warmup, args.lanes, args.per_assoc, args.client, args.server
            )
            print(f"  {mode} rep {rep + 1}: {json.dumps(result)}", flush=True)
            reps.append(result)
    summary: dict[str, Any] = {"reps": reps}
    for mode in modes:
        mine = [r for r in reps if r["mode"] == mode and r["stored"] == n]
        if mine:
            summary[mode] = {
                key: statistics.median(r[key] for r in mine)
                for key in ("inst_per_s", "server_cpu_us_per_inst", "client_cpu_us_per_inst")
            } | {"good_reps": len(mine)}
    if "1" in summary:
        one = summary["1"]
        for mode in modes:
            if mode != "1" and mode in summary:
                summary[f"speedup {mode}"] = round(
                    summary[mode]["inst_per_s"] / one["inst_per_s"], 2
                )
                # Repetition i of each mode ran back to back: their ratios
                # show the spread that the medians' ratio hides.
                ones = [r for r in reps if r["mode"] == "1"]
                mine = [r for r in reps if r["mode"] == mode]
                summary[f"pairs {mode}"] = [
                    round(r["inst_per_s"] / o["inst_per_s"], 2)
                    for o, r in zip(ones, mine, strict=False)
                    if o["stored"] == n and r["stored"] == n
                ]
                # None when a short run's CPU was below the clock's tick.
                summary[f"bound {mode}"] = (
                    round(
                        speedup_bound(
                            int(mode.partition("-")[0]),
                            os.cpu_count() or 1,
                            one["server_cpu_us_per_inst"],
                            one["client_cpu_us_per_inst"],
                        ),
                        2,
                    )
                    if one["server_cpu_us_per_inst"] > 0
                    else None
                )
    return summary


def speedup_bound(workers: int, cores: int, server_us: float, client_us: float) -> float:
    """The most ``workers`` processes can gain over one when the load shares their cores.

    One worker serves at most 1/s instances a second (s: its CPU per
    instance); N workers at most N/s, and never more than the cores can
    run server and client both: cores/(s + c). The ratio of the two limits
    is what a perfect scheduler would show, e.g. 2s/(s + c) for 2 workers
    on 2 cores with a client costing c.
    """
    if server_us <= 0:
        raise ValueError("the server's CPU per instance must be positive")
    rate = min(workers / server_us, cores / (server_us + client_us))
    return rate / min(1 / server_us, cores / (server_us + client_us))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=["idle-5000", "busy-1000", "workers"])
    parser.add_argument("--stack", action="append", choices=STACKS, help="idle and busy: SCPs")
    parser.add_argument("-n", type=int, help="associations (idle, busy) or instances (workers)")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--probes", type=int, default=200, help="idle: probe associations")
    parser.add_argument("--per", type=int, default=4, help="busy: instances per association")
    parser.add_argument(
        "--serve-workers", type=int, default=1, help="idle and busy: adicom serve --workers N"
    )
    parser.add_argument(
        "--turn-budget",
        type=float,
        help="idle and busy: adicom serve --turn-budget SECONDS (default: serve's own; 0: none)",
    )
    parser.add_argument("--reps", type=int, default=3, help="workers: repetitions of each")
    parser.add_argument("--lanes", type=int, default=8, help="workers: storescu at once")
    parser.add_argument("--per-assoc", type=int, default=50, help="workers: files per storescu")
    parser.add_argument(
        "--client",
        choices=["storescu", "raw"],
        default="storescu",
        help="workers: the load, DCMTK storescu processes or this process's raw asyncio "
        "client (pre-encoded messages: far less CPU per instance)",
    )
    parser.add_argument(
        "--server",
        choices=["archive", "disk"],
        default="archive",
        help="workers: 'adicom serve --storage' (files and the SQLite index), or Server with "
        "DiskStorage alone under adicom.workers (sides/disk_workers.py: no index)",
    )
    parser.add_argument(
        "--modes",
        default="1,2-own,2-shared",
        help="workers: the servers compared, WORKERS[-own|-shared] (--worker-sockets)",
    )
    parser.add_argument("--probe-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-every", type=float, default=0.05, help=argparse.SUPPRESS)
    parser.add_argument("--probe-limit", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.probe_child is not None:
        asyncio.run(probe_child(args.probe_child, args.probe_every, args.probe_limit))
        return 0
    # Killed (timeout(1)): unwind, so that every SCP started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    limit = raise_nofile_limit()
    only = args.only or ["idle-5000", "busy-1000", "workers"]
    stacks = args.stack or list(STACKS)
    results: dict[str, Any] = {
        "meta": {"nofile": limit, "loadavg_at_start": os.getloadavg(), "cpus": os.cpu_count()},
    }
    with tempfile.TemporaryDirectory(prefix="adicom-scale-") as scratch:
        for workload in only:
            if workload == "workers":
                if dcmtk_side.find_tool("storescu") is None:
                    print("workers: skipped, no DCMTK storescu", flush=True)
                    continue
                print("workers:", flush=True)
                results["workers"] = run_workers(args, Path(scratch))
                print(f"workers: {json.dumps(results['workers'], default=str)}", flush=True)
                continue
            results[workload] = {}
            for stack in stacks:
                why = stack_missing(stack)
                if why is not None:
                    print(f"{workload} {stack}: skipped, {why}", flush=True)
                    continue
                need = (args.n or 5000) + 200
                if limit < need:
                    print(f"{workload}: RLIMIT_NOFILE {limit} < {need}: raise the hard limit")
                    return 1
                run = run_idle if workload == "idle-5000" else run_busy
                try:
                    result = run(args, stack, Path(scratch))
                except RuntimeError as exc:
                    result = {"error": str(exc)}
                results[workload][stack] = result
                print(f"{workload} {stack}: {json.dumps(result, default=str)}", flush=True)
    results["meta"]["loadavg_at_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
