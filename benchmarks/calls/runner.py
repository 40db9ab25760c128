"""Running the calls benchmark: the SCPs, one repetition of a row, round-robin, retries.

The find-calls archives (one per SCP: ``adicom serve --storage``, DCMTK
``dcmqrscp``; ``benchmarks.archives``) are started and seeded once, before
the first repetition, and serve every find repetition. Each repetition of a
store workload gets a fresh SCP of its own (in a directory of the run's
``Scratch``, kept until the run ends: see ``benchmarks.repetitions``), so no
SCP ever sees an instance twice and none is slower for what earlier rows
stored; afterwards it must hold one file per instance sent. That SCP is
``adicom serve --storage`` again, or DCMTK's ``storescp --fork``: dcmqrscp
answers some C-STOREs of concurrent associations with 0xC000 (its forked
children race for the same new file name: "Index database error") and
slows down as its study grows (~250 instances/s by the 1000th).
Repetitions go round-robin: repetition 1 of every (SCP, row) of a
workload, then 2, ...
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import archives
from benchmarks.calls import studies
from benchmarks.calls.results import RowResult
from benchmarks.calls.rows import WORKLOADS, Row, scp_program
from benchmarks.config import REPO_ROOT, SCP_AET, SCU_AET
from benchmarks.processes import (
    BenchError,
    child_env,
    first_line,
    free_port,
    measurement_error,
    parse_scu_output,
    port_open,
    run_scu,
    scu_failure,
    tail,
)
from benchmarks.procfs import session_snapshot
from benchmarks.repetitions import Scratch
from benchmarks.sides import dcmtk_side

SCU_MODULES = {
    "adicom": "benchmarks.calls.adicom_scu",
    "pynetdicom": "benchmarks.calls.pynetdicom_scu",
}
#: Per-response timeout handed to the SCUs, s.
OP_TIMEOUT = 30.0
#: Where each store SCP keeps its instances (adicom: benchmarks.archives.archive_argv).
STORE_DIRS = {"adicom": "storage", "dcmtk": "received"}


@dataclass
class Setting:
    """What every repetition needs: the data, the environments, the scratch space."""

    data_dir: Path
    studies_dir: Path | None
    #: What each stack's processes get besides the runner's environment (child_env).
    scp_env: dict[str, dict[str, str]]
    scu_env: dict[str, dict[str, str]]
    scratch: Scratch
    dest_port: int = field(default_factory=free_port)
    #: The seeded find-calls archives, by SCP.
    find_archives: dict[str, archives.Archive] = field(default_factory=dict)


def scu_timeout(row: Row, n: int) -> float:
    per_call = 0.5 if row.scu == "pynetdicom" else 0.2
    return 60.0 + n * per_call


def scu_argv(row: Row, port: int, n: int, setting: Setting) -> list[str]:
    argv = [sys.executable, "-m", SCU_MODULES[row.scu], "--port", str(port), "--aet", SCP_AET,
            "--calling-aet", SCU_AET, "--workload", row.workload, "--mode", row.mode,
            "-n", str(n), "--timeout", str(OP_TIMEOUT), "--scp-clock"]  # fmt: skip
    if row.workload == "find-calls":
        assert setting.studies_dir is not None
        argv += ["--studies-dir", str(setting.studies_dir)]
    else:
        argv += ["--data-dir", str(setting.data_dir)]
    return argv


def stored_files(workdir: Path, scp: str) -> int:
    """The instances a store SCP holds as files (not adicom's index, nor its hidden folders)."""
    root = workdir / STORE_DIRS[scp]
    if not root.exists():
        return 0
    return sum(
        1
        for p in root.rglob("*")
        if p.is_file()
        and (scp != "adicom" or p.suffix == ".dcm")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def start_storescp(workdir: Path, env: dict[str, str]) -> archives.Archive:
    """DCMTK storescp, a child process per association (--fork), writing into workdir/received.

    As the store workloads of benchmarks.run run it (--max-pdu 131072, TCP_NODELAY=1
    unless --dcmtk-as-packaged), plus --fork: else it serves one association at a
    time and store_many's second association would wait for the first.
    """
    port = free_port()
    received = workdir / STORE_DIRS["dcmtk"]
    received.mkdir()
    argv = dcmtk_side.scp_command(port, SCP_AET, str(received), store=True)
    argv.insert(-1, "--fork")
    stdout_path, stderr_path = workdir / "scp.out", workdir / "scp.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)  # fmt: skip
    scp = archives.Archive("dcmtk", SCP_AET, port, argv, proc, workdir, stdout_path, stderr_path)
    deadline = time.monotonic() + archives.START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            scp.error = f"exited with {proc.returncode}: {tail(stderr_path)}"
            return scp
        if port_open(port):
            return scp
        time.sleep(0.02)
    archives.stop(scp)
    scp.error = f"not listening after {archives.START_TIMEOUT:.0f} s"
    return scp


# --------------------------------------------------------------------------- archives


def start_find_archives(scps: list[str], setting: Setting) -> dict[str, Any]:
    """Start and seed one archive per SCP for find-calls (not timed); what it took, per SCP."""
    assert setting.studies_dir is not None
    info: dict[str, Any] = {}
    root = setting.scratch.root / "find-archives"
    for scp in scps:
        workdir = root / scp
        workdir.mkdir(parents=True)
        print(f"[archives] starting {scp} and seeding {studies.COUNT} studies ...", file=sys.stderr)
        env = child_env(setting.scp_env[scp])
        archive = archives.start(scp, workdir, SCP_AET, setting.dest_port, env, REPO_ROOT)
        if archive.error is None:
            archives.seed(archive, setting.studies_dir, studies.COUNT, child_env(), REPO_ROOT)
        if archive.error is not None:
            print(f"[archives] {scp}: FAILED: {first_line(archive.error)}", file=sys.stderr)
        setting.find_archives[scp] = archive
        info[scp] = archive.to_json()
    return info


def stop_find_archives(setting: Setting, info: dict[str, Any]) -> None:
    for scp, archive in setting.find_archives.items():
        info[scp] = {**archive.to_json(), "stopped": archives.stop(archive)}
    setting.find_archives.clear()


# --------------------------------------------------------------------------- one repetition


def _run_scu(rr: RowResult, archive: archives.Archive, setting: Setting) -> dict[str, Any]:
    """Run the row's SCU against a running archive; its checked result, with the SCP's CPU."""

    def answer(_tag: str) -> str:
        cpu = session_snapshot(archive.proc.pid)["cpu_s"]
        return "none" if cpu is None else repr(cpu)

    returncode, stdout, stderr = run_scu(
        scu_argv(rr.row, archive.port, rr.n, setting),
        child_env(setting.scu_env[rr.row.scu]),
        scu_timeout(rr.row, rr.n),
        answer,
    )
    archive_err = tail(archive.stderr_path)
    result = parse_scu_output(stdout, returncode, stderr, archive_err)
    why = scu_failure(result, returncode, stderr)
    if why is None and not archive.alive():
        why = f"{scp_program(rr.scp, rr.row.workload)} exited: {archive_err}"
    if why is not None:
        raise measurement_error(why, result, stderr, archive_err)
    result["scp_peak_rss_kib"] = session_snapshot(archive.proc.pid)["peak_rss_kib"]
    if stderr.strip():
        result["scu_stderr_tail"] = stderr[-2000:]
    return result


def run_once(rr: RowResult, setting: Setting) -> dict[str, Any]:
    """One repetition of a row: against the seeded archive, or a fresh one that must store all."""
    if not WORKLOADS[rr.row.workload].stores:
        archive = setting.find_archives.get(rr.scp)
        if archive is None or archive.error is not None:
            why = "not started" if archive is None else archive.error
            raise BenchError(f"the {rr.scp} find archive is unusable: {why}")
        return _run_scu(rr, archive, setting)
    with setting.scratch.rep_dir(f"{rr.row.workload}-{rr.scp}-") as workdir:
        env = child_env(setting.scp_env[rr.scp])
        if rr.scp == "dcmtk":
            archive = start_storescp(workdir, env)
        else:
            archive = archives.start(rr.scp, workdir, SCP_AET, setting.dest_port, env, REPO_ROOT)
        if archive.error is not None:
            raise BenchError(
                f"{scp_program(rr.scp, rr.row.workload)} did not start: {archive.error}"
            )
        try:
            result = _run_scu(rr, archive, setting)
        finally:
            stopped = archives.stop(archive)
        stored = stored_files(workdir, rr.scp)
        sent = rr.n + int(result["extra"].get("warmup_instances", 0))
        if stored != sent:
            raise measurement_error(
                f"the SCP holds {stored} files, {sent} instances were sent",
                result,
                result.get("scu_stderr_tail", ""),
                tail(archive.stderr_path),
            )
        result["scp_stored_files"] = stored
        result["scp_stopped"] = stopped
        return result


def run_rep(rr: RowResult, rep: int, retries: int, setting: Setting) -> None:
    """Repetition `rep` of the row, re-run up to `retries` times until it measures."""
    unit = WORKLOADS[rr.row.workload].unit
    for attempt in range(1, retries + 2):
        scp = scp_program(rr.scp, rr.row.workload)
        tag = f"[{rr.row.workload} {rep}/{rr.reps_wanted}] {rr.row.label} -> {scp}"
        if attempt > 1:
            tag += f" (retry {attempt - 1})"
        try:
            raw = run_once(rr, setting)
        except (BenchError, OSError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, BenchError) else {}
            rr.errors.append({"rep": rep, "attempt": attempt, "error": str(exc), **detail})
            print(f"{tag}: FAILED: {first_line(str(exc))}", file=sys.stderr)
            continue
        raw["rep"], raw["attempt"] = rep, attempt
        raw["ms_per_op"] = 1000.0 * raw["seconds"] / raw["ops"]
        rr.reps.append(raw)
        print(f"{tag}: {raw['ops_per_s']:.1f} {unit} ({raw['ms_per_op']:.2f} ms each)",
              file=sys.stderr)  # fmt: skip
        break


def run_all(results: list[RowResult], workloads: list[str], retries: int, setting: Setting) -> None:
    """Every repetition, workload by workload, round-robin over (SCP, row)."""
    for workload in workloads:
        rows = [r for r in results if r.row.workload == workload]
        for rep in range(1, max((r.reps_wanted for r in rows), default=0) + 1):
            for rr in rows:
                if rep <= rr.reps_wanted:
                    run_rep(rr, rep, retries, setting)
