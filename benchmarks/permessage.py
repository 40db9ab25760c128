"""CPU (and, under valgrind, instructions) per operation of adicom's per-message paths.

    python -m benchmarks.permessage echo:5000 assoc:500 store:1000 find:1000
    python -m benchmarks.permessage --callgrind echo:500 assoc:150   # instruction counts

An adicom SCU and an adicom ``Server`` (C-ECHO, a ``DiskStorage`` under
``$TMPDIR``, a C-FIND handler that yields one match) each run in their own
process; for each ``WORKLOAD:N`` the SCU does N operations after a warm-up
of N/10 and both report the CPU time (getrusage, user + system) they spent
on them. Workloads: ``echo`` (C-ECHO on one association), ``assoc``
(associate + C-ECHO + release), ``store`` (``adicom.store`` of N ~42 KB CT
instances on one association, into the SCP's DiskStorage), ``find`` (a STUDY
level C-FIND with one match, on one association).

CPU time moves with whatever else loads the machine. ``--callgrind`` runs
both processes under ``valgrind --tool=callgrind`` and reads the
instructions each executed in the timed span (``callgrind_control``, its
counters zeroed after the warm-up): about 50 times slower, but the same
count whatever the load (user-space instructions only; system calls are
not in it). See README.md, "Per-message cost".

``--profile DIR`` keeps a cProfile of each side's timed spans, and
``--opcodes DIR`` the bytecodes each Python function ran in them (where
adicom's own Python spends, beside the event loop's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from benchmarks.data import SMALL, ensure, instance_paths
from benchmarks.processes import callgrind_instructions, cpu_seconds, end_child, run_on_loop

MATCH_STUDY_UID = "1.2.826.0.1.3680043.8.498.17"


class _Profile:
    """A profile of each timed span of this side (--profile, --opcodes): off unless asked.

    ``PERMESSAGE_PROFILE`` is ``cprofile:DIR`` (cProfile: ``python -m
    pstats``) or ``opcodes:DIR`` (the bytecodes each Python function ran,
    counted with ``sys.settrace``: a JSON list of [function, bytecodes,
    calls], totals over the span). Files: DIR/SIDE.prof.N, N counting the
    spans in the workloads' order.
    """

    def __init__(self, side: str) -> None:
        self.kind, _, self.folder = os.environ.get("PERMESSAGE_PROFILE", "").partition(":")
        self.side = side
        self.spans = 0
        self.profiler: Any = None

    def start(self) -> None:
        if self.kind == "opcodes":
            self.profiler = _Opcodes()
            sys.settrace(self.profiler.trace)
        elif self.kind == "cprofile":
            import cProfile

            self.profiler = cProfile.Profile()
            self.profiler.enable()

    def stop(self) -> None:
        if self.profiler is None:
            return
        self.spans += 1
        path = f"{self.folder}/{self.side}.prof.{self.spans}"
        if isinstance(self.profiler, _Opcodes):
            sys.settrace(None)
            self.profiler.dump(path)
        else:
            self.profiler.disable()
            self.profiler.dump_stats(path)
        self.profiler = None


class _Opcodes:
    """Bytecodes run and calls made per Python function (a sys.settrace hook)."""

    def __init__(self) -> None:
        self.ops: dict[tuple[str, int, str], int] = {}
        self.calls: dict[tuple[str, int, str], int] = {}

    def trace(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        if event == "call":  # a coroutine's resumption too
            self.calls[key] = self.calls.get(key, 0) + 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            self.ops[key] = self.ops.get(key, 0) + 1
        return self.trace

    def dump(self, path: str) -> None:
        keys = sorted(self.ops.keys() | self.calls.keys(), key=lambda k: -self.ops.get(k, 0))
        rows = [
            [f"{key[0]}:{key[1]}:{key[2]}", self.ops.get(key, 0), self.calls.get(key, 0)]
            for key in keys
        ]
        Path(path).write_text(json.dumps(rows, indent=0))


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _serve(store_dir: str) -> None:
    from pydicom.dataset import Dataset

    import adicom

    async def on_find(identifier: Dataset, context: Any) -> Any:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = MATCH_STUDY_UID
        match.PatientName = "PER^MESSAGE"
        yield match

    server = adicom.Server(
        "ANY-SCP",
        port=0,
        storage=adicom.DiskStorage(store_dir),
        on_find=on_find,
        idle_timeout=None,
        turn_budget=_turn_budget(),
    )
    profile = _Profile("scp")
    timed = False
    async with server:
        print(f"PORT {server.port}", flush=True)
        lines = await _lines()
        while line := await lines.readline():
            if line.strip() == b"cpu":
                # Every other one ends a timed span: the profile covers the spans.
                if timed:
                    profile.stop()
                total, system = cpu_seconds()
                print(f"CPU {total:.6f} {system:.6f}", flush=True)
                timed = not timed
                if timed:
                    profile.start()


async def _scu(port: int, files: list[str]) -> None:
    from pydicom.dataset import Dataset

    import adicom
    from adicom import qrscu

    options: dict[str, Any] = {"calling_ae": "PER-MESSAGE", "called_ae": "ANY-SCP"}
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = MATCH_STUDY_UID
    query.PatientName = ""
    from adicom.turns import loop_turns

    loop_turns().budget = _turn_budget()
    lines = await _lines()
    print("READY", flush=True)
    profile = _Profile("scu")
    warm = set()
    while line := await lines.readline():
        work, count = line.decode().split()
        n = int(count)
        if work in warm:  # the warm-up is not profiled
            profile.start()
        warm.add(work)
        start = cpu_seconds()
        if work == "echo":
            async with adicom.connect("127.0.0.1", port, **options) as assoc:
                start = cpu_seconds()
                for _ in range(n):
                    await assoc.echo()
                end = cpu_seconds()
        elif work == "assoc":
            for _ in range(n):
                async with adicom.connect("127.0.0.1", port, **options) as assoc:
                    await assoc.echo()
            end = cpu_seconds()
        elif work == "store":
            results = await adicom.store("127.0.0.1", port, files[:n], **options)
            end = cpu_seconds()
            if not all(result.ok for result in results):
                raise RuntimeError(f"a C-STORE failed: {results}")
        elif work == "find":
            contexts = qrscu.find_contexts("study")
            async with adicom.connect("127.0.0.1", port, contexts=contexts, **options) as assoc:
                start = cpu_seconds()
                for _ in range(n):
                    async with qrscu.find(assoc, query) as matches:
                        found = [match async for match in matches]
                    if len(found) != 1:
                        raise RuntimeError(f"C-FIND: {len(found)} matches, not 1")
                end = cpu_seconds()
        else:
            raise ValueError(f"unknown workload {work!r}")
        profile.stop()
        print(f"DONE {end[0] - start[0]:.6f} {end[1] - start[1]:.6f}", flush=True)


def _turn_budget() -> float:
    """The loop's turn budget for this side (adicom.turns): 0 under callgrind.

    The budget is in seconds of the wall clock, and valgrind runs the code
    some 50 times slower: the loop would seem busy all the time and run
    the turn machinery each turn, which it does about once in 20 messages
    natively (so it would add ~20k instructions to an echo that are not
    there outside valgrind).
    """
    from adicom.turns import DEFAULT_TURN_BUDGET

    return float(os.environ.get("PERMESSAGE_TURN_BUDGET", DEFAULT_TURN_BUDGET))


class _Side:
    """One side's process, talked to line by line."""

    def __init__(
        self,
        args: list[str],
        callgrind: bool,
        keep: Path | None = None,
        profile: str | None = None,
    ) -> None:
        command = [sys.executable, "-m", "benchmarks.permessage", *args]
        env = dict(os.environ)
        if profile is not None:
            env["PERMESSAGE_PROFILE"] = profile
            # As under valgrind (see _turn_budget): the profiler slows the
            # code down, and the turn machinery would run every turn.
            env["PERMESSAGE_TURN_BUDGET"] = "0"
        if callgrind:
            env["PERMESSAGE_TURN_BUDGET"] = "0"
            out = "/dev/null" if keep is None else str(keep / f"{args[0]}.callgrind")
            command = ["valgrind", "--tool=callgrind", "-q", f"--callgrind-out-file={out}"]
            if keep is not None:
                # Profiles per function only (no per-line or per-instruction
                # data): smaller files. The timed spans are dumped by
                # callgrind_control -d; the run's end dumps the rest too.
                command += ["--dump-line=no", "--dump-instr=no"]
            command += [sys.executable, "-m", "benchmarks.permessage", *args]
        self.callgrind = callgrind
        self.keep = keep
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def send(self, line: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def expect(self, word: str) -> list[str]:
        stdout = self.proc.stdout
        assert stdout is not None
        while line := stdout.readline():
            if line.startswith(word):
                return line.split()[1:]
        raise RuntimeError(f"the process ended before saying {word}")

    def zero(self) -> None:
        if self.callgrind:
            subprocess.run(["callgrind_control", "-z", str(self.proc.pid)], capture_output=True)

    def instructions(self) -> int:
        return callgrind_instructions(self.proc.pid)

    def dump(self, label: str) -> None:
        """With --keep: callgrind writes the profile since the last zeroing (a part file)."""
        if self.callgrind and self.keep is not None:
            subprocess.run(
                ["callgrind_control", "-d", label, str(self.proc.pid)], capture_output=True
            )

    def close(self) -> None:
        end_child(self.proc)


def _run(
    workloads: list[tuple[str, int]],
    callgrind: bool,
    data_dir: Path,
    keep: Path | None = None,
    profile: str | None = None,
) -> None:
    need = max((n + n // 10 for work, n in workloads if work == "store"), default=0)
    files = [str(p) for p in instance_paths(ensure(data_dir, SMALL, need), need)] if need else []
    store_dir = tempfile.mkdtemp(prefix="permessage-")
    scp = _Side(["scp", store_dir], callgrind, keep, profile)
    scu: _Side | None = None
    try:
        port = scp.expect("PORT")[0]
        scu = _Side(["scu", port, *files], callgrind, keep, profile)
        scu.expect("READY")
        print(f"{'work':6} {'n':>6}  {'SCU us/op (sys)':>17}  {'SCP us/op (sys)':>17}", end="")
        print("  SCU kIr/op  SCP kIr/op" if callgrind else "")
        for work, n in workloads:
            scu.send(f"{work} {max(2, n // 10)}")  # warm-up
            scu.expect("DONE")
            scu.zero()
            scp.zero()
            scp.send("cpu")
            before = [float(x) for x in scp.expect("CPU")]
            scu.send(f"{work} {n}")
            ours = [float(x) for x in scu.expect("DONE")]
            scp.send("cpu")
            after = [float(x) for x in scp.expect("CPU")]
            line = (
                f"{work:6} {n:6}  {ours[0] / n * 1e6:8.1f} ({ours[1] / n * 1e6:5.1f})  "
                f"{(after[0] - before[0]) / n * 1e6:8.1f} ({(after[1] - before[1]) / n * 1e6:5.1f})"
            )
            if callgrind:
                line += (
                    f"  {scu.instructions() / n / 1e3:10.1f}  {scp.instructions() / n / 1e3:10.1f}"
                )
                scu.dump(f"{work}:{n}")
                scp.dump(f"{work}:{n}")
            print(line, flush=True)
    finally:
        if scu is not None:
            scu.close()
        scp.close()
        shutil.rmtree(store_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scp"]:
        run_on_loop(_serve(argv[1]))
        return 0
    if argv[:1] == ["scu"]:
        run_on_loop(_scu(int(argv[1]), argv[2:]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.permessage", description=__doc__)
    parser.add_argument("workloads", nargs="+", metavar="WORKLOAD:N")
    parser.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    parser.add_argument("--data-dir", type=Path, default=Path("benchmarks/results/data"))
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="with --callgrind: keep each side's profile of each timed span in DIR "
        "(scu.callgrind.N / scp.callgrind.N, N in the workloads' order; callgrind_annotate)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="keep a cProfile of each side's timed spans in DIR (scu.prof.N / scp.prof.N, "
        "N in the workloads' order; python -m pstats); the CPU times then include cProfile's",
    )
    parser.add_argument(
        "--opcodes",
        type=Path,
        metavar="DIR",
        help="as --profile, but count the bytecodes each Python function runs (sys.settrace; "
        "JSON [function, bytecodes, calls] per span, totals: divide by N); slow",
    )
    args = parser.parse_args(argv)
    workloads = []
    for spec in args.workloads:
        work, _, count = spec.partition(":")
        if work not in ("echo", "assoc", "store", "find") or not count.isdigit():
            parser.error(f"not WORKLOAD:N with WORKLOAD echo, assoc, store or find: {spec}")
        workloads.append((work, int(count)))
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.keep is not None:
        if not args.callgrind:
            parser.error("--keep needs --callgrind")
        args.keep.mkdir(parents=True, exist_ok=True)
    profile = None
    for kind, folder in (("cprofile", args.profile), ("opcodes", args.opcodes)):
        if folder is not None:
            if profile is not None or args.callgrind:
                parser.error("one of --callgrind, --profile and --opcodes at a time")
            folder.mkdir(parents=True, exist_ok=True)
            profile = f"{kind}:{folder.resolve()}"
    _run(workloads, args.callgrind, args.data_dir, args.keep, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
