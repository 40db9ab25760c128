"""The archive's index: SQLite against PostgreSQL, and two nodes against one, in one run.

``python -m benchmarks.index`` starts ``adicom serve --storage DIR`` with the
SQLite index, then with a PostgreSQL index (a throw-away cluster, as the
tests make one: tests/postgres.py), then two such nodes sharing the database
and the folder, and loads each with DCMTK's SCUs (one process per
association, so the load costs the SCP side nothing):

- store: ``storescu`` sends N small CT instances on one association (with
  two nodes: two storescu at once, N/2 each);
- find: ``findscu`` asks for the N instances of the series at IMAGE level
  (two nodes: one findscu per node at once);
- get: ``getscu`` retrieves the series (two nodes: one per node at once).

Each row gives the rate (operations per second of wall time, median of the
repetitions) and the servers' CPU time per operation (from /proc, summed
over the nodes), which says what the database costs the node whatever else
loads the machine. PostgreSQL's own CPU is shown apart. Each repetition
starts from an empty folder and database.

``--backlog N`` measures instead what writing back N pending rows costs the
event loop (in process, SQLite, no DCMTK): the rows wait while another
connection holds the index's write lock, then the lock goes and the archive
writes them, a chunk per loop turn; a callback that runs at every turn
gives the longest gap between two turns, and the time it all took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import data
from benchmarks.config import REPO_ROOT
from benchmarks.processes import child_env, free_port, port_open
from benchmarks.procfs import proc_cpu_seconds
from benchmarks.sides.dcmtk_side import find_tool

HOST = "127.0.0.1"
AET = "ADICOM"
OPERATIONS = ("store", "find", "get")
DCMTK_ENV = {"TCP_NODELAY": "1"}


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int


def start_node(storage: Path, index: str | None) -> Node:
    port = free_port()
    argv = [sys.executable, "-m", "adicom", "serve", "--host", HOST, "--port", str(port),
            "--aet", AET, "--storage", str(storage)]  # fmt: skip
    if index:
        argv += ["--index", index]
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"adicom serve did not start: {err}")
        time.sleep(0.05)
    return Node(process, port)


def stop_node(node: Node) -> None:
    node.process.send_signal(signal.SIGTERM)
    try:
        node.process.wait(30)
    except subprocess.TimeoutExpired:
        node.process.kill()
        node.process.wait()


def tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise RuntimeError(f"DCMTK {name} not found (apt-get install dcmtk)")
    return found


def scu_commands(
    operation: str, nodes: list[Node], files: list[Path], keys: data.SeriesKeys, out: Path
) -> list[list[str]]:
    """The DCMTK commands of one operation, one per node, run at once."""
    timeouts = ["-to", "60", "-ta", "60", "-td", "60"]
    commands = []
    for number, node in enumerate(nodes):
        address = [HOST, str(node.port)]
        if operation == "store":
            share = files[number :: len(nodes)]
            commands.append([tool("storescu"), "-aec", AET, *timeouts, *address,
                             *map(str, share)])  # fmt: skip
            continue
        series = ["-k", f"StudyInstanceUID={keys.study_instance_uid}",
                  "-k", f"SeriesInstanceUID={keys.series_instance_uid}"]  # fmt: skip
        if operation == "find":
            commands.append([tool("findscu"), "-S", "-aec", AET, *timeouts,
                             "-k", "QueryRetrieveLevel=IMAGE", *series, "-k", "SOPInstanceUID",
                             *address])  # fmt: skip
        else:
            folder = out / f"get-{number}"
            folder.mkdir(parents=True, exist_ok=True)
            commands.append([tool("getscu"), "-S", "-aec", AET, *timeouts, "-od", str(folder),
                             "-k", "QueryRetrieveLevel=SERIES", *series, *address])  # fmt: skip
    return commands


def cpu(pids: list[int]) -> float:
    return sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)


def postgres_pids(folder: Path) -> list[int]:
    """The PostgreSQL server's processes (postmaster and backends) of a cluster folder."""
    pidfile = folder / "data" / "postmaster.pid"
    try:
        postmaster = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children")
    try:
        return [postmaster, *map(int, children.read_text().split())]
    except OSError:
        return [postmaster]


def run_operation(
    operation: str,
    nodes: list[Node],
    files: list[Path],
    keys: data.SeriesKeys,
    out: Path,
    database: Path | None,
) -> dict[str, float]:
    commands = scu_commands(operation, nodes, files, keys, out)
    pids = [node.process.pid for node in nodes]
    db_pids = postgres_pids(database) if database else []
    cpu_before, db_before = cpu(pids), cpu(db_pids)
    started = time.perf_counter()
    running = [
        # DCMTK leaves Nagle's algorithm on unless told (see benchmarks/README.md).
        subprocess.Popen(
            c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(DCMTK_ENV)
        )
        for c in commands
    ]
    for process in running:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"{operation} failed: {err.decode()[-2000:]}")
    wall = time.perf_counter() - started
    db_pids = postgres_pids(database) if database else []  # backends come and go
    operations = len(files) if operation == "store" else len(files) * len(nodes)
    return {
        "wall_s": wall,
        "rate": operations / wall,
        "server_cpu_us_per_op": (cpu(pids) - cpu_before) * 1e6 / operations,
        "db_cpu_us_per_op": max(0.0, cpu(db_pids) - db_before) * 1e6 / operations,
    }


def run(n: int, reps: int, data_root: Path) -> dict[str, Any]:
    from tests.postgres import Cluster

    directory = data.ensure(data_root, data.SMALL, n)
    files = data.instance_paths(directory, n)
    keys = data.series_keys(directory)
    cluster = Cluster()
    cluster.start()
    configurations = {"sqlite": (None, 1), "postgresql": ("pg", 1), "postgresql x2": ("pg", 2)}
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {op: [] for op in OPERATIONS} for name in configurations
    }
    try:
        for rep in range(reps):
            for name, (kind, count) in configurations.items():
                work = Path(tempfile.mkdtemp(prefix="adicom-index-bench-"))
                index = cluster.new_database() if kind else None
                nodes = [start_node(work / "archive", index) for _ in range(count)]
                try:
                    for operation in OPERATIONS:
                        measured = run_operation(
                            operation, nodes, files, keys, work / "out",
                            cluster.folder if kind else None,
                        )  # fmt: skip
                        results[name][operation].append(measured)
                        print(
                            f"rep {rep + 1}/{reps} {name:14} {operation:5} "
                            f"{measured['rate']:8.0f}/s  server "
                            f"{measured['server_cpu_us_per_op']:6.0f} us/op  db "
                            f"{measured['db_cpu_us_per_op']:5.0f} us/op",
                            flush=True,
                        )
                finally:
                    for node in nodes:
                        stop_node(node)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        cluster.remove()
    summary = {
        name: {
            op: {
                key: statistics.median(m[key] for m in runs)
                for key in ("rate", "server_cpu_us_per_op", "db_cpu_us_per_op")
            }
            for op, runs in ops.items()
        }
        for name, ops in results.items()
    }
    return {"n": n, "reps": reps, "runs": results, "median": summary}


def table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| index | workload | rate (/s) | vs sqlite | adicom CPU (us/op) "
        "| PostgreSQL CPU (us/op) |",
        "|---|---|---|---|---|---|",
    ]
    for name, ops in summary.items():
        for op, m in ops.items():
            base = summary["sqlite"][op]["rate"]
            lines.append(
                f"| {name} | {op} | {m['rate']:.0f} | {m['rate'] / base:.2f} | "
                f"{m['server_cpu_us_per_op']:.0f} | {m['db_cpu_us_per_op']:.0f} |"
            )
    return "\n".join(lines)


def backlog(n: int, scratch: Path | None) -> str:
    """Write back ``n`` pending rows after a lock; the longest loop stall (see the docstring)."""
    import asyncio
    import sqlite3

    from adicom.archive import Archive

    async def measure() -> str:
        root = Path(tempfile.mkdtemp(dir=scratch))
        try:
            archive = Archive(root)
            await archive.open()
            index = archive._sqlite
            assert index is not None
            other = sqlite3.connect(root / ".adicom-index.sqlite", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            study = "1.2.826.0.1.3680043.8.498.1"
            for number in range(n):
                series = f"{study}.{number // 500}"
                uid = f"{series}.{number}"
                values = {
                    "PatientID": "PAT1",
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": series,
                    "SOPInstanceUID": uid,
                    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                    "Modality": "CT",
                }
                path = f"{root}/{study}/{series}/{uid}.dcm"
                index.add(values, path, "1.2.840.10008.1.2.1", 1, 1, displace=True)
            archive._commit_soon()
            await asyncio.sleep(0.2)  # tries, all busy
            other.execute("ROLLBACK")
            other.close()
            loop = asyncio.get_running_loop()
            gaps: list[float] = []
            last = time.perf_counter()
            running = True

            def tick() -> None:
                nonlocal last
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                if running:
                    loop.call_soon(tick)

            loop.call_soon(tick)
            started = time.perf_counter()
            while index.pending:
                await asyncio.sleep(0.001)
            took = time.perf_counter() - started
            running = False
            archive.close()
            return (
                f"{n} pending rows written back in {took:.2f} s; longest loop stall "
                f"{max(gaps) * 1e3:.1f} ms over {len(gaps)} turns"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index", description=__doc__)
    parser.add_argument("-n", type=int, default=1000, help="instances (default %(default)s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default %(default)s)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--data-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "data"
    )
    parser.add_argument(
        "--backlog", type=int, metavar="N", help="measure writing back N pending rows instead"
    )
    parser.add_argument("--scratch", type=Path, help="make the --backlog folder here (/dev/shm)")
    args = parser.parse_args(argv)
    if args.backlog is not None:
        if args.backlog < 1:
            parser.error("--backlog needs at least 1 row")
        print(backlog(args.backlog, args.scratch))
        return 0
    if args.n < 2 or args.reps < 1:
        parser.error("-n needs at least 2 and --reps at least 1")
    found = run(args.n, args.reps, args.data_dir)
    print(table(found["median"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
