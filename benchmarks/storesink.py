"""Instructions (or CPU) per instance an adicom storage SCP spends, fed by DCMTK storescu.

    python -m benchmarks.storesink --callgrind disk:300 serve:300
    python -m benchmarks.storesink --profile serve:300      # cProfile call counts
    python -m benchmarks.storesink --callgrind --repeat 3 --max-send-pdu 16384 serve:300

``disk`` is ``Server(storage=DiskStorage(DIR))``; ``serve`` is ``adicom
serve --storage DIR`` (the archive, SQLite index). The SCP runs alone
(under ``valgrind --tool=callgrind`` with ``--callgrind``); once it listens
its counters are zeroed, DCMTK's storescu sends N small CT instances
(benchmarks.data.SMALL) on one association, and the SCP's instructions
(or CPU seconds, from /proc) in that span are divided by N: what one
received instance costs the server, association setup included (once per
run). The turn budget is 0 under callgrind (see benchmarks.permessage).

storescu sends each data set in PDUs as large as the SCP accepts, capped at
its own 128 KiB: one PDU per small instance, as adicom announces 1 MiB.
``--max-send-pdu 16384`` makes it send 16 KiB PDUs, as it does to a peer
that announces 16 KiB. Instruction counts move by a few thousand between
runs (how reads batch the PDUs depends on timing): ``--repeat`` and the
median.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data
from benchmarks.config import DEFAULT_DATA, REPO_ROOT
from benchmarks.processes import callgrind_instructions, child_env, free_port, port_open
from benchmarks.procfs import proc_cpu_seconds

HOST = "127.0.0.1"
AET = "ADICOM"
STORESCU = "/usr/bin/storescu"


def _disk_server(folder: str, port: int, budget: float) -> None:
    """``Server(storage=DiskStorage(folder))`` until SIGTERM."""
    import asyncio

    import adicom

    async def serve() -> None:
        server = adicom.Server(
            ae_title=AET,
            host=HOST,
            port=port,
            storage=adicom.DiskStorage(folder),
            turn_budget=budget,
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


def _command(kind: str, folder: Path, port: int, budget: float) -> list[str]:
    if kind == "disk":
        return ["-m", "benchmarks.storesink", "--disk-server", str(folder), str(port), str(budget)]
    return ["-m", "adicom", "serve", "--host", HOST, "--port", str(port), "--aet", AET,
            "--storage", str(folder), "--turn-budget", str(budget)]  # fmt: skip


def measure(
    kind: str,
    n: int,
    mode: str,
    keep: Path | None,
    scratch: Path | None = None,
    max_send_pdu: int | None = None,
) -> float:
    """One run: the SCP's cost per instance (instructions, or CPU microseconds)."""
    directory = data.ensure(DEFAULT_DATA, data.SMALL, n)
    files = data.instance_paths(directory, n)
    # Where the files go matters: on this machine a file made under /tmp
    # costs ~400 us of kernel time, under /work ~16 us (both ext4), on tmpfs ~7.
    work = Path(tempfile.mkdtemp(prefix="adicom-storesink-", dir=scratch))
    port = free_port()
    budget = 0.0 if mode == "callgrind" else 0.002
    argv = [sys.executable]
    if mode == "callgrind":
        out = str(keep / f"callgrind.{kind}.out") if keep else "/dev/null"
        argv = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}", *argv]
    elif mode == "profile":
        prof = str(keep / f"{kind}.prof") if keep else str(work / "prof")
        argv += ["-m", "cProfile", "-o", prof]
    cmd = _command(kind, work / "store", port, budget)
    process = subprocess.Popen([*argv, *cmd], cwd=REPO_ROOT, env=child_env())
    try:
        deadline = time.monotonic() + 300
        while not port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the SCP did not start")
            time.sleep(0.2)
        # One instance first: imports and caches warm, as in a running server.
        subprocess.run([STORESCU, "-aec", AET, HOST, str(port), str(files[0])], check=True)
        if mode == "callgrind":
            subprocess.run(["callgrind_control", "-z", str(process.pid)], capture_output=True)
        cpu = proc_cpu_seconds(process.pid) or 0.0
        env = child_env({"TCP_NODELAY": "1"})
        pdu = ["--max-send-pdu", str(max_send_pdu)] if max_send_pdu else []
        subprocess.run(
            [STORESCU, "-aec", AET, "-to", "600", "-ta", "600", "-td", "600", *pdu, HOST,
             str(port), *map(str, files)],
            check=True, env=env, timeout=1800,
        )  # fmt: skip
        if mode == "callgrind":
            count = callgrind_instructions(process.pid)
            if keep:
                subprocess.run(["callgrind_control", "-d", str(process.pid)], capture_output=True)
            return count / n
        return ((proc_cpu_seconds(process.pid) or 0.0) - cpu) * 1e6 / n
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if mode == "profile":
            prof_file = str(keep / f"{kind}.prof") if keep else str(work / "prof")
            if os.path.exists(prof_file):
                stats = pstats.Stats(prof_file)
                stats.sort_stats("tottime").print_stats(40)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse the command line and run the measurements."""
    if sys.argv[1:2] == ["--disk-server"]:
        folder, port, budget = sys.argv[2:5]
        _disk_server(folder, int(port), float(budget))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="KIND:N, KIND one of disk, serve")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    mode.add_argument("--profile", action="store_true", help="cProfile the SCP")
    parser.add_argument("--keep", type=Path, help="keep callgrind/cProfile output here")
    parser.add_argument("--scratch", type=Path, help="receive into a folder made here")
    parser.add_argument(
        "--max-send-pdu", type=int, help="storescu's PDU size (default: as the SCP accepts)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (the median shown)")
    args = parser.parse_args()
    chosen = "callgrind" if args.callgrind else "profile" if args.profile else "cpu"
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        kind, _, count = run.partition(":")
        if kind not in ("disk", "serve"):
            parser.error(f"unknown kind {kind!r}")
        n = int(count or 300)
        cost = statistics.median(
            measure(kind, n, chosen, args.keep, args.scratch, args.max_send_pdu)
            for _ in range(max(1, args.repeat))
        )
        unit = {"callgrind": "kIr", "cpu": "us CPU", "profile": "us CPU (profiled)"}[chosen]
        shown = cost / 1000 if chosen == "callgrind" else cost
        print(f"{kind:6} {n:5} instances: {shown:8.1f} {unit} per instance", flush=True)


if __name__ == "__main__":
    main()
