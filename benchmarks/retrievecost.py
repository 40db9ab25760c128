"""CPU (or instructions) per sub-operation (or match) of adicom as C-GET / C-MOVE / C-FIND SCU.

    python -m benchmarks.retrievecost get:1000 move:1000
    python -m benchmarks.retrievecost --callgrind --dcmtk find:300     # per C-FIND match
    python -m benchmarks.retrievecost --callgrind get:300 move:300   # instruction counts
    python -m benchmarks.retrievecost --profile get:1000              # cProfile, top functions
    python -m benchmarks.retrievecost --dcmtk get:1000 move:1000      # getscu / movescu too
    python -m benchmarks.retrievecost --syscalls --dcmtk get:1000     # syscalls per sub-op

One DCMTK ``dcmqrscp`` archive is seeded with N small CTs (the get-1000 /
move-1000 set); for C-MOVE an adicom storage SCP (the benchmark's move
destination) takes the instances. The adicom SCU runs in its own process
and does what benchmarks.sides.adicom_side does: ``DicomClient.get_series``
into a ``DiskStorage`` (under ``--scratch``, default $TMPDIR) or
``DicomClient.move_series``, after the same operation on one instance as a
warm-up. It reports the CPU time (getrusage, user + system) of the timed
call; under ``--callgrind`` (valgrind, counters zeroed after the warm-up)
the instructions it executed too, which do not move with the machine's
load. Everything is divided by N: association, the C-FIND that chooses
what a C-GET offers, and release are in it, as in the benchmark.

``getnull`` is ``qrscu.get`` on an ``adicom.connect`` association (the
common C-GET offer, no C-FIND) into a storage that keeps nothing: what the
sub-operations cost without the storage sink, so get minus getnull is
roughly the sink's share.

``find`` is what benchmarks.sides.adicom_side does for find-1000:
``adicom.connect`` (the Study Root C-FIND contexts), ``qrscu.find`` at
IMAGE level for the series (SOP Instance UID returned), the match's
``str(match.SOPInstanceUID)`` kept in a set, release; the warm-up asks for
the first instance only. Everything is divided by N, the matches.

``--dcmtk`` runs getscu / movescu / findscu the same way: CPU of a run of N minus a
run of one (getrusage of children), and under ``--callgrind`` the
difference of their instruction totals, per sub-operation.

``--syscalls`` counts system calls per sub-operation with ``perf stat`` on
the kernel's system call tracepoints (cheap, unlike strace, so reads merge
as they do untraced): attached to the adicom SCU for the timed call only;
for getscu / movescu, a run of N minus a run of one. Each read of the
association's socket is a loop turn too, so reads per sub-op is the figure
to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from benchmarks import archives
from benchmarks.config import DEFAULT_DATA, HOST, REPO_ROOT, SCP_AET, SCU_AET
from benchmarks.data import SMALL, ensure, series_keys
from benchmarks.processes import (
    callgrind_instructions,
    child_env,
    cpu_seconds,
    end_child,
    free_port,
    run_on_loop,
)
from benchmarks.sides._common import MOVE_DEST_AET
from benchmarks.sides.dcmtk_side import find_tool
from benchmarks.stacks import destination_stack, start_scp, stop_scp

KINDS = ("get", "move", "getnull", "find")


class _Nowhere:
    """getnull's storage: takes every instance and keeps none of it (the sink's cost out)."""

    @staticmethod
    def storage() -> object:
        from adicom.storage import IncomingInstance, StorageHandler, StoreContext

        class Dropped(IncomingInstance):
            def write(self, data: memoryview, /) -> None:
                pass

            async def finish(self) -> int:
                return 0x0000

            def finish_now(self) -> int:
                return 0x0000

        class Nowhere(StorageHandler):
            def open(self, context: StoreContext) -> IncomingInstance:
                return Dropped(context)

        return Nowhere()


async def _get_nowhere(port: int, study: str, series: str, sop: str | None) -> object:
    """getnull: adicom.connect with the common C-GET offer, qrscu.get into _Nowhere, release."""
    # The DicomClient path's C-FIND and DiskStorage are left out: what
    # remains is the association, the DIMSE and PDU layers and qrscu.
    from pydicom.dataset import Dataset

    import adicom
    from adicom import qrscu
    from adicom.storage import StorageHandler

    storage = _Nowhere.storage()
    assert isinstance(storage, StorageHandler)
    contexts, roles = qrscu.get_contexts()
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES" if sop is None else "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    if sop is not None:
        identifier.SOPInstanceUID = sop
    async with adicom.connect(
        HOST, port, calling_ae=SCU_AET, called_ae=SCP_AET, contexts=contexts, roles=roles,
        timeout=600,
    ) as assoc:  # fmt: skip
        return await qrscu.get(assoc, identifier, storage)


async def _find(port: int, study: str, series: str, sop: str) -> int:
    """find: adicom.connect, qrscu.find (Study Root, IMAGE level), each match's UID, release.

    What benchmarks.sides.adicom_side._find does; the number of distinct matches.
    """
    from pydicom.dataset import Dataset

    import adicom
    from adicom import qrscu

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = series
    identifier.SOPInstanceUID = sop
    uids: set[str] = set()
    async with (
        adicom.connect(
            HOST, port, calling_ae=SCU_AET, called_ae=SCP_AET,
            contexts=qrscu.find_contexts("study"), timeout=600,
        ) as assoc,
        qrscu.find(assoc, identifier) as results,
    ):  # fmt: skip
        async for match in results:
            uids.add(str(match.SOPInstanceUID))
        if results.status != 0x0000:
            raise RuntimeError(f"C-FIND ended with status 0x{results.status or 0:04X}")
    return len(uids)


async def _scu(port: int, data_dir: Path, out: Path, profile: Path | None) -> None:
    """The adicom SCU: one line in (``warm KIND`` / ``go KIND``), one line out (``DONE cpu``)."""
    import adicom
    from adicom import qrscu

    keys = series_keys(data_dir)
    node = adicom.DicomNode(aet=SCP_AET, host=HOST, port=port)
    client = adicom.DicomClient(SCU_AET, dimse_timeout=600)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    study, series, sop = (
        keys.study_instance_uid,
        keys.series_instance_uid,
        keys.first_sop_instance_uid,
    )
    print("READY", flush=True)
    rep = 0
    while line := (await reader.readline()).decode().split():
        what, kind = line
        rep += 1
        folder = out / f"{kind}-{rep}"
        profiler = (
            cProfile.Profile(time.process_time) if profile is not None and what == "go" else None
        )
        before = cpu_seconds()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        if kind == "find":
            found = await _find(port, study, series, sop if what == "warm" else "")
            result = adicom.RetrieveResult(status="success", status_code=0, num_completed=found)
        elif kind == "getnull":
            progress = await _get_nowhere(port, study, series, sop if what == "warm" else None)
            assert isinstance(progress, qrscu.RetrieveProgress)
            result = adicom.RetrieveResult(
                status="success" if progress.status == 0 else "failure",
                status_code=progress.status or 0,
                num_completed=progress.completed,
                num_failed=progress.failed,
            )
        elif kind == "get" and what == "warm":
            result = await client.get_image(study, series, sop, node, folder)
        elif kind == "get":
            result = await client.get_series(study, series, node, folder)
        elif what == "warm":
            result = await client.move_image(study, series, sop, node, MOVE_DEST_AET)
        else:
            result = await client.move_series(study, series, node, MOVE_DEST_AET)
        if profiler is not None:
            profiler.disable()
            assert profile is not None
            profiler.dump_stats(str(profile.with_suffix(f".{kind}.prof")))
        after = cpu_seconds()
        wall = time.perf_counter() - started
        if result.status != "success":
            raise RuntimeError(f"{kind}: {result.status}, {result.num_failed} failed")
        shutil.rmtree(folder, ignore_errors=True)
        spent = f"{after[0] - before[0]} {after[1] - before[1]} {wall}"
        print(f"DONE {spent} {result.num_completed}", flush=True)


class _Scu:
    """The adicom SCU process, talked to line by line."""

    def __init__(self, argv: list[str], callgrind: bool, keep: Path | None = None) -> None:
        command = [sys.executable, "-m", "benchmarks.retrievecost", "--scu", *argv]
        if callgrind:
            # With ``keep``, each timed call's profile is dumped there (see dump).
            trace = "/dev/null" if keep is None else str(keep.resolve() / "callgrind.scu")
            command = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={trace}",
                       *command]  # fmt: skip
        self.callgrind = callgrind
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
        )

    def ask(self, line: str, word: str) -> list[str]:
        stdin: IO[str] | None = self.proc.stdin
        stdout = self.proc.stdout
        assert stdin is not None and stdout is not None
        if line:
            stdin.write(line + "\n")
            stdin.flush()
        while text := stdout.readline():
            if text.startswith(word):
                return text.split()[1:]
        raise RuntimeError(f"the SCU ended before saying {word}")

    def callgrind_control(self, *args: str) -> str:
        return subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)], capture_output=True, text=True
        ).stdout

    def instructions(self) -> int:
        return callgrind_instructions(self.proc.pid)

    def syscalls(self, out: Path) -> subprocess.Popen[bytes]:
        """Count the SCU's system calls until :func:`_syscalls_stop`; the counts go to ``out``."""
        return _perf_stat(["-p", str(self.proc.pid)], out)

    def close(self) -> None:
        end_child(self.proc)


#: The system calls counted by name under ``--syscalls`` (all of them are counted too).
_SYSCALLS = ("read", "recvfrom", "write", "sendto", "writev", "sendmsg", "epoll_wait",
             "epoll_pwait", "poll", "epoll_ctl", "openat", "close", "rename")  # fmt: skip


def _perf_stat(
    target: list[str], out: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``perf stat`` of system call tracepoints for ``target`` (``-p PID`` or ``-- argv``)."""
    events = ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{name}" for name in _SYSCALLS)]
    command = ["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(events), *target]
    counter = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    if target[0] == "-p":
        time.sleep(0.3)  # perf attaches to a running process in ~0.1 s; nothing runs meanwhile
    return counter


def _syscalls_stop(counter: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    """End an attached ``perf stat``; calls per system call name (``all``: every call)."""
    counter.send_signal(signal.SIGINT)
    counter.wait(timeout=30)
    if not out.exists():
        raise RuntimeError("perf stat wrote no counts: are the syscall tracepoints readable?")
    return _syscall_counts(out)


def _syscall_counts(out: Path) -> dict[str, int]:
    """Calls per system call name in a ``perf stat -x ,`` output file."""
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            event = fields[2]
            name = "all" if event.startswith("raw_") else event.rsplit("sys_enter_", 1)[-1]
            counts[name] = int(fields[0])
    out.unlink()
    return counts


def _per_op(counts: dict[str, int], n: int) -> str:
    """System calls per operation: all of them, and the busiest by name."""
    top = sorted(((k, v) for k, v in counts.items() if k != "all" and v > 0), key=lambda kv: -kv[1])
    shown = " ".join(f"{name} {c / n:.2f}" for name, c in top[:7])
    return f"syscalls/op {counts.get('all', 0) / n:.2f}: {shown}"


def _us(cpu: float, system: float, n: int) -> str:
    """CPU seconds for n operations as microseconds per operation, (system) too."""
    return f"{cpu / n * 1e6:8.1f} ({system / n * 1e6:5.1f})"


def _tool_run(
    argv: list[str], callgrind: bool, out: Path, syscalls: dict[str, int] | None = None
) -> tuple[float, float, int, float]:
    """One DCMTK command: CPU and system s (children's rusage), instructions (0 unless), wall s.

    With ``syscalls`` (a dict), its system calls are counted into it.
    """
    trace = out / "callgrind.dcmtk"
    if callgrind:
        argv = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={trace}", *argv]
    counter = None
    if syscalls is not None:
        counter = _perf_stat(["--", *argv], out / "syscalls.dcmtk", child_env({"TCP_NODELAY": "1"}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    if counter is None:
        subprocess.run(argv, check=True, env=child_env({"TCP_NODELAY": "1"}),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=1800)  # fmt: skip
    else:
        try:
            failed = counter.wait(timeout=1800) != 0
        except subprocess.TimeoutExpired:
            counter.kill()  # perf, and the tool it runs with it
            counter.wait()
            raise
        if failed:
            raise RuntimeError(f"{argv[0]} under perf stat failed")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    system = after.ru_stime - before.ru_stime
    count = 0
    if callgrind:
        for line in trace.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                count = int(line.split()[1])
                break
        trace.unlink()
    if syscalls is not None:
        syscalls.update(_syscall_counts(out / "syscalls.dcmtk"))
    return cpu, system, count, wall


def _dcmtk_cost(
    kind: str, n: int, port: int, data_dir: Path, out: Path, callgrind: bool, syscalls: bool
) -> tuple[str, float, float, str]:
    """getscu / movescu / findscu per sub-op: CPU (system) us, instructions, wall s, syscalls.

    Each is a run of N minus a run of one.
    """
    keys = series_keys(data_dir)
    name = {"get": "getscu", "move": "movescu", "find": "findscu"}[kind]
    tool = find_tool(name)
    if tool is None:
        raise RuntimeError(f"DCMTK {name} not found")

    def argv(single: bool, folder: Path) -> list[str]:
        cmd = [tool, "-S", "-aet", SCU_AET, "-aec", SCP_AET, "-to", "600", "-ta", "600",
               "-td", "600"]  # fmt: skip
        if kind == "get":
            cmd += ["-od", str(folder)]
        elif kind == "move":
            cmd += ["-aem", MOVE_DEST_AET]
        # C-FIND asks for the series' instances (the SOP Instance UID returned), as
        # benchmarks.sides.dcmtk_side does; a retrieve names the series or one instance.
        image = single or kind == "find"
        cmd += ["-k", f"QueryRetrieveLevel={'IMAGE' if image else 'SERIES'}"]
        cmd += ["-k", f"StudyInstanceUID={keys.study_instance_uid}"]
        cmd += ["-k", f"SeriesInstanceUID={keys.series_instance_uid}"]
        if single:
            cmd += ["-k", f"SOPInstanceUID={keys.first_sop_instance_uid}"]
        elif kind == "find":
            cmd += ["-k", "SOPInstanceUID"]
        return [*cmd, HOST, str(port)]

    runs = []
    calls: list[dict[str, int]] = [{}, {}]
    for single, counts in zip((True, False), calls, strict=True):
        folder = out / f"dcmtk-{kind}-{'one' if single else 'all'}"
        folder.mkdir()
        runs.append(_tool_run(argv(single, folder), callgrind, out, counts if syscalls else None))
        shutil.rmtree(folder, ignore_errors=True)
    (cpu1, sys1, ir1, wall1), (cpun, sysn, irn, walln) = runs
    one, all_ = calls
    calls_per_op = (
        _per_op({k: v - one.get(k, 0) for k, v in all_.items()}, n - 1) if syscalls else ""
    )
    return (
        _us(cpun - cpu1, sysn - sys1, n - 1),
        (irn - ir1) / (n - 1),
        walln - wall1,
        calls_per_op,
    )


def _run(runs: list[tuple[str, int]], args: argparse.Namespace) -> None:
    n = max(count for _, count in runs)
    data_dir = ensure(args.data_dir, SMALL, n)
    work = Path(tempfile.mkdtemp(prefix="adicom-retrievecost-", dir=args.scratch))
    dest_port = free_port()
    (work / "archive").mkdir()
    archive = archives.start(
        "dcmtk", work / "archive", SCP_AET, dest_port, child_env({"TCP_NODELAY": "1"}), REPO_ROOT
    )
    dest = None
    scu: _Scu | None = None
    try:
        if archive.error is None:
            archives.seed(archive, data_dir, n, child_env(), REPO_ROOT)
        if archive.error is not None:
            raise RuntimeError(f"archive: {archive.error}")
        if any(kind == "move" for kind, _ in runs):
            (work / "dest").mkdir()
            dest = start_scp(destination_stack(), work / "dest", work / "dest" / "received",
                             port=dest_port)  # fmt: skip
        (work / "out").mkdir()
        profile = work / "scu" if args.profile else None
        argv = [str(archive.port), str(data_dir), str(work / "out")]
        if profile is not None:
            argv.append(str(profile))
        scu = _Scu(argv, args.callgrind, args.keep)
        scu.ask("", "READY")
        unit = "kIr/sub-op" if args.callgrind else ""
        print(f"{'run':10} {'adicom us (sys)':>16} {unit:>11}", end="")
        print(f"  {'DCMTK us (sys)':>16} {unit:>11}" if args.dcmtk else "")
        for kind, _ in runs * args.repeat:
            warm = scu.ask(f"warm {kind}", "DONE")
            if args.callgrind:
                scu.callgrind_control("-z")
            summary = work / "syscalls.scu"
            counter = scu.syscalls(summary) if args.syscalls else None
            spent, system, wall, completed = scu.ask(f"go {kind}", "DONE")
            if kind == "find" and int(completed) != n:
                raise RuntimeError(f"find: {completed} distinct matches, {n} expected")
            ours = _per_op(_syscalls_stop(counter, summary), n) if counter is not None else ""
            line = f"{kind}:{completed:<6} {_us(float(spent), float(system), n)}"
            if args.callgrind:
                line += f" {scu.instructions() / n / 1e3:11.1f}"
                if args.keep:
                    scu.callgrind_control("-d", f"{kind}")  # callgrind.scu.N in --keep
            theirs = ""
            if args.dcmtk and kind != "getnull":
                cpu, ir, dcmtk_wall, theirs = _dcmtk_cost(kind, n, archive.port, data_dir,
                                                          work / "out", args.callgrind,
                                                          args.syscalls)  # fmt: skip
                line += f"  {cpu}"
                if args.callgrind:
                    line += f" {ir / 1e3:11.1f}"
                line += f"  (wall N-1 {dcmtk_wall:.3f} s)"
            print(
                f"{line}  (adicom wall: one {float(warm[2]) * 1e3:.1f} ms, N {float(wall):.3f} s)"
            )
            if ours:
                print(f"  adicom {ours}")
            if theirs:
                print(f"  DCMTK  {theirs}")
            if profile is not None:
                stats = pstats.Stats(str(profile.with_suffix(f".{kind}.prof")))
                stats.sort_stats("tottime").print_stats(args.top)
                if args.keep:
                    shutil.copy(profile.with_suffix(f".{kind}.prof"), args.keep)
    finally:
        if scu is not None:
            scu.close()
        if dest is not None:
            stop_scp(dest)
        archives.stop(archive)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the measurements (or, with --scu, be the SCU)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--scu"]:
        port, data_dir, out, *profile = argv[1:]
        run_on_loop(
            _scu(int(port), Path(data_dir), Path(out), Path(profile[0]) if profile else None)
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "runs", nargs="+", help="KIND:N, KIND one of get, move, getnull, find (one N for all)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    mode.add_argument("--profile", action="store_true", help="cProfile the timed call")
    mode.add_argument("--syscalls", action="store_true", help="system calls per sub-op (perf stat)")
    parser.add_argument("--top", type=int, default=40, help="--profile: functions shown")
    parser.add_argument(
        "--keep",
        type=Path,
        help="--profile: copy the .prof files here; --callgrind: dump the profiles here",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run the list this many times")
    parser.add_argument("--dcmtk", action="store_true", help="getscu / movescu / findscu too")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="instance cache")
    parser.add_argument("--scratch", type=Path, help="where the C-GET writes (default $TMPDIR)")
    args = parser.parse_args(argv)
    runs = []
    for item in args.runs:
        kind, _, count = item.partition(":")
        if kind not in KINDS or not count.isdigit() or int(count) < 2:
            parser.error(f"{item!r}: KIND:N with KIND in {KINDS} and N >= 2")
        runs.append((kind, int(count)))
    if args.syscalls and shutil.which("perf") is None:
        parser.error("--syscalls needs perf (linux-tools) and the kernel's syscall tracepoints")
    if len({count for _, count in runs}) != 1:
        parser.error("one N for all runs (the archive holds one series of N)")
    _run(runs, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
