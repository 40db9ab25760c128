"""One repetition of one pair: scratch space, the SCP (or archive), the SCU, and the checks.

run_once (echo, store), run_qr_once (find/get/move against a seeded archive)
and run_idle_once (idle-500) each return the SCU's result, completed with
what the runner measured of the SCP, or raise BenchError.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import archives
from benchmarks.config import IDLE_HOLD
from benchmarks.processes import (
    BenchError,
    child_env,
    measurement_error,
    parse_scu_output,
    run_scu,
    scu_failure,
    tail,
)
from benchmarks.procfs import proc_cpu_seconds, proc_peak_rss_kib, session_snapshot
from benchmarks.sides._common import MOVE_DEST_AET
from benchmarks.stacks import (
    Scp,
    Stack,
    destination_stack,
    idle_scp_stack,
    scp_stats,
    start_scp,
    stop_scp,
)
from benchmarks.workloads import Workload

#: Files at least this large are deleted as soon as their repetition ends.
SCRATCH_SHED_BYTES = 1 << 20


class Scratch:
    """Where the repetitions work: one directory each, kept until the run ends.

    Why not delete each repetition's files at once: on ext4 without a journal
    (this project's CI VM, and tmpfs-less containers generally) the kernel
    will not hand out an inode that was freed in the last 60 s (360 s while
    its inode table block is dirty), and skips each such inode one by one
    every time a file is created (`recently_deleted()` in ext4's inode
    allocator). Deleting the 1000 files of one repetition made creating a
    file in the next one cost ~0.5 ms of system CPU instead of ~0.04 ms, for
    whichever stack came next. So small files stay until the end; large ones
    (few inodes, much space) go at once. See benchmarks/README.md.
    """

    def __init__(self, parent: Path | None = None) -> None:
        """A fresh folder under ``parent`` (default: $TMPDIR); see ``--scratch``."""
        self.root = Path(tempfile.mkdtemp(prefix="adicom-bench-", dir=parent))

    @contextmanager
    def rep_dir(self, prefix: str) -> Iterator[Path]:
        """A fresh directory for one repetition; its large files are removed afterwards."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        try:
            yield path
        finally:
            for f in path.rglob("*"):
                try:
                    if f.is_file() and f.stat().st_size >= SCRATCH_SHED_BYTES:
                        f.unlink()
                except OSError:
                    pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _stored_files(store_dir: Path) -> tuple[int, int]:
    """(number of files, total bytes) of the instances under the SCP's store directory.

    Names that start with a dot are not instances: the archive's index
    (``.adicom-index.sqlite``) and a storage's unfinished files
    (``.incoming/*.part``), which must never stand in for a stored instance.
    """
    count = size = 0
    for path in store_dir.rglob("*"):
        if path.is_file() and not any(
            part.startswith(".") for part in path.relative_to(store_dir).parts
        ):
            count += 1
            size += path.stat().st_size
    return count, size


def _count_files(directory: Path) -> int:
    return _stored_files(directory)[0] if directory.exists() else 0


def _add_stderr_tails(result: dict[str, Any], scp_err: str | None, stderr: str) -> None:
    """Keep what the SCP (when given) and the SCU wrote to stderr with the result."""
    if scp_err is not None and scp_err.strip():
        result["scp_stderr_tail"] = scp_err
    if stderr.strip():
        result["scu_stderr_tail"] = stderr[-2000:]


# --------------------------------------------------------------------------- echo, store


def _store_failure(result: dict[str, Any], n: int, stored: tuple[int, int] | None) -> str | None:
    """Every instance sent (timed and warm-up) must be a file on the SCP's disk."""
    if stored is None:
        return None
    sent = n + int(result["extra"].get("warmup_instances", 0))
    if stored[0] != sent:
        return f"the SCP stored {stored[0]} files, {sent} instances were sent"
    return None


def run_once(
    scu: Stack,
    scp_stack: Stack,
    workload: Workload,
    n: int,
    data_dir: Path | None,
    scratch: Scratch,
) -> dict[str, Any]:
    """One repetition: start the SCP, run the SCU against it, stop the SCP.

    The SCP works (and stores) in a fresh directory of `scratch`.
    """
    with scratch.rep_dir("store-") as workdir:
        store_dir = workdir / "received" if workload.kind == "store" else None
        scp = start_scp(scp_stack, workdir, store_dir)

        def answer(tag: str) -> str:
            cpu = proc_cpu_seconds(scp.proc.pid)
            if tag == "begin" and scp_stack.scp_lag_reset and scp.proc.poll() is None:
                scp.proc.send_signal(signal.SIGUSR1)
            return "none" if cpu is None else repr(cpu)

        try:
            returncode, stdout, stderr = run_scu(
                scu.scu_argv(scp.port, workload, n, data_dir),
                child_env(scu.env),
                workload.scu_timeout(n),
                answer,
            )
            scp_rss = proc_peak_rss_kib(scp.proc.pid)
            scp_alive = scp.proc.poll() is None
            stored = None if store_dir is None else _stored_files(store_dir)
        finally:
            stop_scp(scp)
        scp_err = tail(scp.stderr_path)
        stats = scp_stats(scp)
        result = parse_scu_output(stdout, returncode, stderr, scp_err)
        why = scu_failure(result, returncode, stderr)
        if why is None:
            why = _store_failure(result, n, stored)
        if why is not None:
            raise measurement_error(why, result, stderr, scp_err)
        result["scp_peak_rss_kib"] = scp_rss
        result["scp_alive_after"] = scp_alive
        result["scp_loop_lag_max_ms"] = stats.get("loop_lag_max_ms")
        result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6 if result["seconds"] else 0
        if stored is not None:
            result["scp_stored_files"], result["scp_stored_bytes"] = stored
        _add_stderr_tails(result, scp_err, stderr)
        return result


# --------------------------------------------------------------------------- query/retrieve


def _check_archive(archive: archives.Archive) -> None:
    if archive.error is not None:
        raise BenchError(f"{archive.stack} archive unusable: {archive.error}")
    if not archive.alive():
        raise BenchError(f"{archive.stack} archive exited: {tail(archive.stderr_path)}")


def _start_move_destination(workdir: Path, dest_port: int) -> Scp:
    """A fresh adicom storage SCP on the run's C-MOVE destination port."""
    (workdir / "dest").mkdir()
    return start_scp(destination_stack(), workdir / "dest", workdir / "dest" / "received",
                     port=dest_port)  # fmt: skip


def _qr_failure(
    workload: Workload, n: int, out_dir: Path, dest_files: int | None, archive: archives.Archive
) -> str | None:
    """Why a query/retrieve repetition that the SCU reported as good is no measurement."""
    if workload.name == "get-1000":
        got = _count_files(out_dir / "timed")
        if got != n:
            return f"the SCU wrote {got} files for the timed C-GET, {n} expected"
    if dest_files is not None and dest_files != n:
        return f"the move destination stored {dest_files} files, {n} expected"
    if not archive.alive():
        return f"the {archive.stack} archive exited during the repetition"
    return None


def run_qr_once(
    scu: Stack,
    workload: Workload,
    n: int,
    data_dir: Path | None,
    archive: archives.Archive,
    dest_port: int,
    scratch: Scratch,
) -> dict[str, Any]:
    """One repetition against a running, seeded archive (see archives.py).

    get-1000: the SCU writes into a fresh directory; afterwards it must hold n
    files in timed/. move-1000: a fresh adicom storage SCP listens on the
    destination port for this repetition; afterwards it must hold n files
    (one per SOP instance: a warm-up instance moved again overwrites its file).
    """
    _check_archive(archive)
    with scratch.rep_dir("qr-") as workdir:
        out_dir = workdir / "out"
        dest: Scp | None = None
        if workload.name == "move-1000":
            dest = _start_move_destination(workdir, dest_port)
        samples: list[dict[str, Any]] = []

        def answer(tag: str) -> str:
            snap = session_snapshot(archive.proc.pid)
            samples.append({"tag": tag, **snap})
            return "none" if snap["cpu_s"] is None else repr(snap["cpu_s"])

        argv = scu.scu_argv(archive.port, workload, n, data_dir)
        argv += ["--out-dir", str(out_dir), "--move-dest", MOVE_DEST_AET]
        dest_files = None
        dest_stats: dict[str, Any] = {}
        try:
            returncode, stdout, stderr = run_scu(
                argv, child_env(scu.env), workload.scu_timeout(n), answer
            )
        finally:
            if dest is not None:
                stop_scp(dest)
                assert dest.store_dir is not None
                dest_files = _count_files(dest.store_dir)
                dest_stats = scp_stats(dest)
        archive_err = tail(archive.stderr_path)
        result = parse_scu_output(stdout, returncode, stderr, archive_err)
        why = scu_failure(result, returncode, stderr)
        if why is None:
            why = _qr_failure(workload, n, out_dir, dest_files, archive)
        if why is not None:
            raise measurement_error(why, result, stderr, archive_err)
        end = next(
            (x for x in reversed(samples) if x["tag"] == "end"), samples[-1] if samples else {}
        )
        result["scp_rss_kib"] = end.get("rss_kib")
        result["scp_peak_rss_kib"] = session_snapshot(archive.proc.pid)["peak_rss_kib"]
        result["scp_alive_after"] = archive.alive()
        result["scp_samples"] = samples
        result["mb_per_s"] = None
        if dest_files is not None:
            result["dest_stored_files"] = dest_files
            result["dest_loop_lag_max_ms"] = dest_stats.get("loop_lag_max_ms")
        _add_stderr_tails(result, None, stderr)
        return result


# --------------------------------------------------------------------------- idle associations


def _add_idle_figures(result: dict[str, Any], samples: dict[str, dict[str, Any]], n: int) -> None:
    """The SCP's memory, threads, files and idle CPU, from its samples at begin/open/held."""
    begin, opened, held = samples["begin"], samples["open"], samples["held"]
    result["scp_rss_before_kib"] = begin["rss_kib"]
    result["scp_rss_open_kib"] = held["rss_kib"]
    result["scp_peak_rss_kib"] = held["peak_rss_kib"]
    result["scp_rss_per_assoc_kib"] = (held["rss_kib"] - begin["rss_kib"]) / n
    result["scp_threads_open"] = held["threads"]
    result["scp_fds_open"] = held["fds"]
    hold = float(result["extra"].get("hold_s") or IDLE_HOLD)
    result["scp_idle_cpu_pct"] = 100.0 * (held["cpu_s"] - opened["cpu_s"]) / hold


def run_idle_once(scu: Stack, scp_stack: Stack, workload: Workload, n: int) -> dict[str, Any]:
    """One repetition of idle-500: a fresh SCP, N associations opened and held, the SCP measured.

    The SCU says when (SAMPLE begin / open / held / end); at each the runner
    reads the SCP's CPU, RSS, threads and open files from /proc.
    """
    stack = idle_scp_stack(scp_stack)
    with tempfile.TemporaryDirectory(prefix="adicom-bench-idle-") as tmp:
        scp = start_scp(stack, Path(tmp), None)
        samples: dict[str, dict[str, Any]] = {}

        def answer(tag: str) -> str:
            snap = session_snapshot(scp.proc.pid)
            samples[tag] = snap
            return "none" if snap["cpu_s"] is None else repr(snap["cpu_s"])

        argv = [*scu.scu_argv(scp.port, workload, n, None), "--hold", str(IDLE_HOLD)]
        try:
            returncode, stdout, stderr = run_scu(
                argv, child_env(scu.env), workload.scu_timeout(n), answer
            )
            scp_alive = scp.proc.poll() is None
        finally:
            stop_scp(scp)
        scp_err = tail(scp.stderr_path)
        result = parse_scu_output(stdout, returncode, stderr, scp_err)
        why = scu_failure(result, returncode, stderr)
        if why is None and not {"begin", "open", "held"} <= samples.keys():
            why = f"the SCU asked for the SCP's state at {sorted(samples)} only"
        if why is not None:
            raise measurement_error(why, result, stderr, scp_err)
        result["scp_samples"] = samples
        result["scp_alive_after"] = scp_alive
        _add_idle_figures(result, samples, n)
        result["mb_per_s"] = None
        _add_stderr_tails(result, scp_err, stderr)
        return result
