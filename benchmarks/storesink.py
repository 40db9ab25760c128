"""Instructions (or CPU) per instance an adicom storage SCP spends, fed by DCMTK storescu.

    python -m benchmarks.storesink --callgrind disk:300 serve:300
    python -m benchmarks.storesink --profile serve:300      # cProfile call counts
    python -m benchmarks.storesink --callgrind --scratch /dev/shm sink:1000 archive:1000
    python -m benchmarks.storesink --callgrind --repeat 3 --max-send-pdu 16384 serve:300

``disk`` is ``Server(storage=DiskStorage(DIR))``; ``serve`` is ``adicom
serve --storage DIR`` (the archive, SQLite index). The SCP runs alone
(under ``valgrind --tool=callgrind`` with ``--callgrind``); once it listens
its counters are zeroed, DCMTK's storescu sends N small CT instances
(benchmarks.data.SMALL) on one association, and the SCP's instructions
(or CPU seconds, from /proc) in that span are divided by N: what one
received instance costs the server, association setup included (once per
run). The turn budget is 0 under callgrind (see benchmarks.permessage).

``sink`` is ``DiskStorage`` alone, in one process, no network: N data
sets read into memory first, then each opened, written in one fragment
and finished as the server does it (what happens to an instance once its
bytes arrive: the walks, the temporary file, the filing). ``archive`` is
the same through ``Archive(DIR).storage`` (what ``adicom serve --storage``
adds: its 19 wanted values, the index rows, a commit every ARCHIVE_BATCH
instances). ``values`` is ``sink`` reading the archive's values too
(``DiskStorage(extra_keywords=ATTRIBUTES)``, no index): between ``sink``
and ``archive``, what the values cost and what the index costs.
``--profile`` of ``sink``, ``values`` and ``archive`` profiles the measured
part only; their CPU time is the child's own clock (``time.process_time``),
not /proc's 10 ms ticks, so a few hundred instances are enough.

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
from benchmarks.processes import (
    callgrind_instructions,
    child_env,
    end_child,
    free_port,
    port_open,
)
from benchmarks.procfs import proc_cpu_seconds

HOST = "127.0.0.1"
#: ``archive``: instances between commits of its index (its timer commits a
#: burst within 50 ms: some 130 instances at 2,600 a second).
ARCHIVE_BATCH = 128
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


def _sink_child(folder: str, count: int, kind: str = "sink", profile: str = "") -> None:
    """``sink``: N instances through ``DiskStorage(folder)`` in this process, no network.

    The data sets (the files without their file meta) are read first; then
    "ready" on stdout, and on a line from stdin each instance is opened,
    written in one fragment and finished as the server does it
    (``finish_now``), "done" on stdout, and the child waits for stdin to close.
    ``archive``: the same through an :class:`~adicom.archive.Archive`'s
    storage (its SQLite index committed every ARCHIVE_BATCH instances and at
    the end, as its timer does for a burst). ``profile``: cProfile the
    measured part into this file.
    """
    import asyncio
    import cProfile

    import pydicom

    import adicom
    from adicom.storage import _store_context

    directory = data.ensure(DEFAULT_DATA, data.SMALL, count + 1)
    items = []
    for path in data.instance_paths(directory, count + 1):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        raw = path.read_bytes()
        start = raw.index(b"DICM") + 4
        group_length = int.from_bytes(raw[start + 8 : start + 12], "little")
        body = raw[start + 12 + group_length :]
        items.append((body, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)))
    archive = None
    if kind == "archive":
        from adicom.archive import Archive

        archive = Archive(folder)
        storage = archive.storage
    elif kind == "values":
        from adicom.archive.matching import ATTRIBUTES

        storage = adicom.DiskStorage(folder, extra_keywords=ATTRIBUTES)
    else:
        storage = adicom.DiskStorage(folder)

    def store(body: bytes, sop_class: str, sop_instance: str) -> None:
        context = _store_context(
            "STORESCU", AET, sop_class, sop_instance, "1.2.840.10008.1.2.1", (HOST, 1), 1
        )
        sink = storage.open(context)
        sink.write(memoryview(body))
        status = sink.finish_now()
        if status != 0:
            raise RuntimeError(f"instance refused: {status:#06x} {sink.error}")

    async def run(chosen: list[tuple[bytes, str, str]]) -> None:
        if archive is None:
            for item in chosen:
                store(*item)
            return
        for at, item in enumerate(chosen, 1):
            store(*item)
            if at % ARCHIVE_BATCH == 0:
                archive.flush()
        archive.flush()

    asyncio.run(run(items[:1]))  # one first: imports and caches warm
    print("ready", flush=True)
    sys.stdin.readline()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    # The child's own CPU clock (nanoseconds): /proc counts in 10 ms ticks,
    # a whole tick per instance for 100 of them.
    cpu = time.process_time()
    asyncio.run(run(items[1:]))
    cpu = time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    print(f"done {cpu:.9f}", flush=True)
    sys.stdin.readline()
    if archive is not None:
        archive.close()


def _measure_sink(
    n: int, mode: str, scratch: Path | None, kind: str = "sink", keep: Path | None = None
) -> float:
    """``sink`` / ``archive``: the cost per instance of the storage alone, fed from memory."""
    work = Path(tempfile.mkdtemp(prefix="adicom-storesink-", dir=scratch))
    argv = [sys.executable, "-m", "benchmarks.storesink", "--sink-child", str(work / "store")]
    if mode == "callgrind":
        out = str(keep / f"callgrind.{kind}.out") if keep else "/dev/null"
        argv = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}", *argv]
    prof = ""
    if mode == "profile":
        prof = str(keep / f"{kind}.prof") if keep else str(work / "prof")
    process = subprocess.Popen(
        [*argv, str(n), kind, prof],
        cwd=REPO_ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the sink child did not start")
        if mode == "callgrind":
            subprocess.run(["callgrind_control", "-z", str(process.pid)], capture_output=True)
        process.stdin.write("go\n")
        process.stdin.flush()
        done, _, cpu = process.stdout.readline().strip().partition(" ")
        if done != "done":
            raise RuntimeError("the sink child failed")
        if mode == "callgrind":
            count = callgrind_instructions(process.pid)
            if keep:
                subprocess.run(["callgrind_control", "-d", str(process.pid)], capture_output=True)
            return count / n
        return float(cpu) * 1e6 / n
    finally:
        end_child(process)
        if prof and os.path.exists(prof):
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        shutil.rmtree(work, ignore_errors=True)


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
    if sys.argv[1:2] == ["--sink-child"]:
        _sink_child(sys.argv[2], int(sys.argv[3]), *sys.argv[4:6])
        return
    if sys.argv[1:2] == ["--disk-server"]:
        folder, port, budget = sys.argv[2:5]
        _disk_server(folder, int(port), float(budget))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="KIND:N, KIND one of disk, serve, sink, values, archive"
    )
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
        if kind not in ("disk", "serve", "sink", "values", "archive"):
            parser.error(f"unknown kind {kind!r}")
        n = int(count or 300)
        cost = statistics.median(
            _measure_sink(n, chosen, args.scratch, kind, args.keep)
            if kind in ("sink", "values", "archive")
            else measure(kind, n, chosen, args.keep, args.scratch, args.max_send_pdu)
            for _ in range(max(1, args.repeat))
        )
        unit = {"callgrind": "kIr", "cpu": "us CPU", "profile": "us CPU (profiled)"}[chosen]
        shown = cost / 1000 if chosen == "callgrind" else cost
        print(f"{kind:6} {n:5} instances: {shown:8.1f} {unit} per instance", flush=True)


if __name__ == "__main__":
    main()
