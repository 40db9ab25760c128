"""The DICOM stacks (adicom, pynetdicom, DCMTK): how each runs as SCP or SCU, and its SCP's life."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import tls
from benchmarks.config import (
    HOST,
    IDLE_PYNETDICOM_MAX_ASSOCIATIONS,
    IDLE_PYNETDICOM_NETWORK_TIMEOUT,
    REPO_ROOT,
    SCP_AET,
    SCP_START_TIMEOUT,
    SCP_STOP_TIMEOUT,
    SCU_AET,
)
from benchmarks.processes import BenchError, child_env, free_port, tail
from benchmarks.procfs import listens_on
from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import MOVE_DEST_AET, READY_PREFIX, STATS_PREFIX, TLS_FILES
from benchmarks.workloads import TLS_SUFFIX, Workload

#: argv of an SCP, given (port, workdir, store_dir or None).
ScpArgv = Callable[[int, Path, Path | None], list[str]]
#: argv of an SCU, given (port, workload, n, data_dir or None).
ScuArgv = Callable[[int, Workload, int, Path | None], list[str]]


@dataclass(frozen=True)
class Stack:
    """One DICOM implementation that can play SCP and/or SCU."""

    name: str
    #: Given a workload kind: None when usable, else why not.
    unavailable: Callable[[str], str | None]
    #: argv of the SCP, given (port, workdir, store_dir or None); port 0 = a
    #: Python side that picks its own free port and prints the ready line.
    scp_argv: ScpArgv
    scp_prints_ready: bool
    #: argv of the SCU, given (port, workload, n, data_dir or None).
    scu_argv: ScuArgv
    #: Workloads this stack can run fairly as SCU (None = all).
    scu_workloads: frozenset[str] | None = None
    #: How the SCU is labelled in the table, when it is not just the name.
    scu_label: str | None = None
    #: The SCP resets its loop lag maximum on SIGUSR1 (else SIGUSR1 would kill it).
    scp_lag_reset: bool = False
    #: Extra environment for this stack's processes (SCP and SCU).
    env: dict[str, str] = field(default_factory=dict)
    #: A variant of this stack (same sides, another setting): in a run only
    #: when a --pair names it, in the pairs its base stack has.
    variant_of: str | None = None
    #: Printed under the table when this stack takes part (as SCU or SCP) ...
    notes: list[str] = field(default_factory=list)
    #: ... and when it plays the SCU.
    scu_notes: list[str] = field(default_factory=list)

    def label(self) -> str:
        return self.scu_label or self.name


# --------------------------------------------------------------------------- argv


def _python_side(module: str) -> tuple[ScpArgv, ScuArgv]:
    def scp(port: int, _workdir: Path, store_dir: Path | None) -> list[str]:
        argv = [sys.executable, "-m", module, "scp", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET]  # fmt: skip
        if store_dir is not None:
            argv += ["--store-dir", str(store_dir)]
        return argv

    def scu(port: int, workload: Workload, n: int, data_dir: Path | None) -> list[str]:
        argv = [sys.executable, "-m", module, "scu", "--host", HOST, "--port", str(port),
                "--aet", SCP_AET, "--calling-aet", SCU_AET, "--workload", workload.name,
                "-n", str(n), "--timeout", str(workload.op_timeout), "--scp-clock"]  # fmt: skip
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        return argv

    return scp, scu


# --------------------------------------------------------------------------- availability


def _probe_import(code: str) -> str | None:
    """Run `code` in a fresh interpreter at the repo root; None if it succeeds."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "import timed out"
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {out.returncode}"


def adicom_unavailable(kind: str) -> str | None:
    if kind == "store":
        return _probe_import("import adicom; adicom.store, adicom.DiskStorage, adicom.Server")
    if kind == "qr":
        return _probe_import(
            "import adicom, adicom.cli, adicom.archive, adicom.qrscu;"
            " adicom.store, adicom.DicomClient.get_series, adicom.DicomClient.move_series"
        )
    if kind == "idle":
        return _probe_import("import adicom, adicom.cli; adicom.open_association")
    return _probe_import("import adicom; adicom.connect, adicom.Server")


def _pynetdicom_unavailable(kind: str) -> str | None:
    if kind == "qr":  # its qrscp app needs SQLAlchemy
        return _probe_import("import pynetdicom, sqlalchemy, pynetdicom.apps.qrscp.qrscp")
    return _probe_import("import pynetdicom")


DCMTK_TOOLS = {
    "store": ("storescp", "storescu"),
    "qr": ("dcmqrscp", "findscu", "getscu", "movescu"),
    "echo": ("echoscu", "storescp"),
}


def _dcmtk_unavailable(kind: str) -> str | None:
    if kind == "idle":
        return "storescp serves one association at a time"
    missing = [t for t in DCMTK_TOOLS[kind] if dcmtk_side.find_tool(t) is None]
    return f"no DCMTK {', '.join(missing)} found" if missing else None


# --------------------------------------------------------------------------- the stacks


def _pynetdicom_stack(nodelay: bool) -> Stack:
    pyn_scp, pyn_scu = _python_side("benchmarks.sides.pynetdicom_side")
    return Stack(
        "pynetdicom",
        _pynetdicom_unavailable,
        pyn_scp,
        True,
        pyn_scu,
        env={"BENCH_PYNETDICOM_NODELAY": "1"} if nodelay else {},
        notes=[
            "pynetdicom runs with TCP_NODELAY set on its sockets (--pynetdicom-nodelay):"
            " NOT as shipped; the ratios are against this modified baseline."
        ]
        if nodelay
        else [],
    )


def _adicom_stack() -> Stack:
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")
    return Stack("adicom", adicom_unavailable, adicom_scp, True, adicom_scu, scp_lag_reset=True)


def _adicom_uvloop_stack() -> Stack:
    """adicom on uvloop (``ADICOM_LOOP=uvloop``), both roles; only when a --pair names it."""
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")

    def unavailable(kind: str) -> str | None:
        if importlib.util.find_spec("uvloop") is None:
            return "uvloop is not installed (pip install 'adicom[uvloop]')"
        return adicom_unavailable(kind)

    return Stack(
        "adicom-uvloop",
        unavailable,
        adicom_scp,
        True,
        adicom_scu,
        scp_lag_reset=True,
        env={"ADICOM_LOOP": "uvloop"},
        variant_of="adicom",
        notes=[
            "adicom-uvloop = adicom on the uvloop event loop (ADICOM_LOOP=uvloop; what"
            " `adicom serve --loop auto` takes when uvloop is installed); the adicom rows"
            " run on asyncio's own loop."
        ],
    )


def _adicom_fsync_stack() -> Stack:
    """adicom's SCP syncing each file and its folder before Success (``adicom serve --fsync``).

    SCP only, store workloads only: its row beside adicom -> adicom is the
    cost of durable storage on this machine's disk.
    """
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")

    def scp(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        return [*adicom_scp(port, workdir, store_dir), "--fsync"]

    def unavailable(kind: str) -> str | None:
        if kind != "store":
            return "it differs from adicom only in storing"
        return adicom_unavailable(kind)

    return Stack(
        "adicom-fsync",
        unavailable,
        scp,
        True,
        adicom_scu,
        scu_workloads=frozenset(),
        scp_lag_reset=True,
        notes=[
            "adicom-fsync = adicom's SCP with --fsync: each file and its folder are synced"
            " to disk before the C-STORE-RSP (with TMPDIR on a tmpfs, fsync costs nothing)."
        ],
    )


def _adicom_archive_stack() -> Stack:
    """``adicom serve --storage DIR`` as a user runs it: the reference archive, SQLite index.

    SCP only, store workloads only, and only when a --pair names it: the
    adicom rows' SCP is ``Server`` + ``DiskStorage`` (files, no index); this
    one is issue 17's "adicom serve as the storage SCP" row, the index's
    cost per instance included.
    """

    def scp(port: int, _workdir: Path, store_dir: Path | None) -> list[str]:
        assert store_dir is not None
        return [sys.executable, "-m", "adicom", "serve", "--aet", SCP_AET, "--host", HOST,
                "--port", str(port), "--storage", str(store_dir)]  # fmt: skip

    def unavailable(kind: str) -> str | None:
        if kind != "store":
            return "it is measured for the store workloads only"
        return adicom_unavailable(kind)

    return Stack(
        "adicom-archive",
        unavailable,
        scp,
        False,
        lambda *a: [],
        scu_workloads=frozenset(),
        variant_of="adicom",
        notes=[
            "adicom-archive = `adicom serve --storage DIR`: the reference archive, each"
            " instance filed and indexed (SQLite, in the folder); the adicom SCP rows are"
            " Server + DiskStorage (files only)."
        ],
    )


def _tls_argv(argv: list[str]) -> list[str]:
    """A Python side's argv, over TLS: the run's certificates (made on first use)."""
    return [*argv, "--tls-dir", str(tls.tls_dir())]


def _tls_unavailable(kind: str, plain_unavailable: Callable[[str], str | None]) -> str | None:
    if kind != "store":
        return "TLS is measured for the store workloads only"
    return plain_unavailable(kind) or tls.trustme_missing()


def _adicom_tls_stack() -> Stack:
    """adicom over mutual TLS, both roles, store workloads only.

    The SCP: ``Server(ssl=server_context(..., require_client_cert=True))``
    with ``DiskStorage``; the SCU: ``adicom.store(..., ssl=client_context(...))``.
    """
    adicom_scp, adicom_scu = _python_side("benchmarks.sides.adicom_side")

    def scp(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        return _tls_argv(adicom_scp(port, workdir, store_dir))

    def scu(port: int, workload: Workload, n: int, data_dir: Path | None) -> list[str]:
        return _tls_argv(adicom_scu(port, workload, n, data_dir))

    #: Filled when the runner finds the stack usable for a store workload
    #: (unavailable("store")), with what the probe association negotiated;
    #: the notes are printed after the run.
    notes: list[str] = []

    def unavailable(kind: str) -> str | None:
        why = _tls_unavailable(kind, adicom_unavailable)
        if why is not None:
            return why
        # One association over TLS in a child process: that adicom's TLS works
        # here, and what it negotiates.
        negotiated, why = tls.probe_adicom()
        if negotiated is None:
            return why
        notes[:] = [
            "adicom-tls = adicom over mutual TLS: Server(ssl=adicom.tls.server_context(...,"
            " require_client_cert=True)) with DiskStorage, adicom.store(...,"
            " ssl=adicom.tls.client_context(...)), asyncio's TLS (memory BIOs on the event"
            " loop); one CA (trustme, ECDSA P-256 keys, made once per run) for every TLS row;"
            f" {negotiated['version']} {negotiated['cipher']} negotiated with itself (a probe"
            " association before the run; each adicom-tls SCU repetition records its own, also"
            " with storescp, in the JSON: extra.tls). Its SCU's timed span includes its one TLS"
            " handshake, as it includes the association's set-up.",
            "TLS rows: a TLS stack pairs only with TLS stacks, and the 'x dcmtk->dcmtk' of a TLS"
            " row is against plain DCMTK: compare adicom-tls -> adicom-tls with dcmtk-tls* ->"
            " dcmtk-tls (the issue's targets: >= 0.8x on store-small, >= 1x on store-large).",
        ]
        return None

    return Stack(
        "adicom" + TLS_SUFFIX,
        unavailable,
        scp,
        True,
        scu,
        scp_lag_reset=True,
        notes=notes,
    )


def _dcmtk_tls_stack(nodelay: bool) -> Stack:
    """storescp / storescu over mutual TLS (DCMTK's defaults), store workloads only."""
    dcmtk_scu = _python_side("benchmarks.sides.dcmtk_side")[1]

    def scp(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        out = workdir if store_dir is None else store_dir
        files = TLS_FILES.under(tls.tls_dir())
        return dcmtk_side.scp_command(
            port, SCP_AET, str(out), store=store_dir is not None, tls=files
        )

    def scu(port: int, workload: Workload, n: int, data_dir: Path | None) -> list[str]:
        return _tls_argv(dcmtk_scu(port, workload, n, data_dir))

    #: Filled when the runner finds the stack usable for a store workload.
    notes: list[str] = []
    nagle = "TCP_NODELAY=1" if nodelay else "as packaged, Nagle on (--dcmtk-as-packaged)"

    def unavailable(kind: str) -> str | None:
        why = _tls_unavailable(kind, _dcmtk_unavailable)
        if why is not None:
            return why
        openssl = dcmtk_side.openssl_version()
        if openssl is None:
            return "this DCMTK was built without OpenSSL (no +tls)"
        notes[:] = [
            "dcmtk-tls = DCMTK over mutual TLS with the same certificates: storescp +tls"
            " server.key server.crt +cf ca.pem, storescu +tls client.key client.crt +cf ca.pem,"
            " DCMTK's defaults otherwise (profile Non-downgrading BCP 195; storescp requires"
            f" the client's certificate), {openssl}; {nagle}, --max-pdu {dcmtk_side.MAX_PDU}."
        ]
        return None

    return Stack(
        "dcmtk" + TLS_SUFFIX,
        unavailable,
        scp,
        False,
        scu,
        scu_workloads=dcmtk_side.SUPPORTED_SCU_WORKLOADS,
        scu_label="dcmtk-tls*",
        env={"TCP_NODELAY": "1"} if nodelay else {},
        scu_notes=[
            "dcmtk-tls* SCU = storescu over TLS with the differential of dcmtk*: N-1 instances"
            " in time(N files) - time(1 file), one process (and one TLS handshake) each, so"
            " process start, handshake, association and release are removed."
        ],
        notes=notes,
    )


def _dcmtk_stack(nodelay: bool) -> Stack:
    dcmtk_scu = _python_side("benchmarks.sides.dcmtk_side")[1]

    def dcmtk_scp(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        out = workdir if store_dir is None else store_dir
        return dcmtk_side.scp_command(port, SCP_AET, str(out), store=store_dir is not None)

    return Stack(
        "dcmtk",
        _dcmtk_unavailable,
        dcmtk_scp,
        False,
        dcmtk_scu,
        scu_workloads=dcmtk_side.SUPPORTED_SCU_WORKLOADS,
        scu_label="dcmtk*",
        env={"TCP_NODELAY": "1"} if nodelay else {},
        scu_notes=[
            "dcmtk* SCU = one DCMTK process per association (`echoscu --repeat N`,"
            " `storescu FILE...`, `findscu`/`getscu`/`movescu` for the series of N),"
            " reported as N-1 operations in time(N) - time(1) (the one-operation run:"
            " --repeat 1, one file, the series' first instance), which removes process"
            " start, association and release; it is not run for assoc-echo, where one"
            " process per association would measure process start-up."
        ],
        notes=[
            "DCMTK runs with TCP_NODELAY=1 (its runtime switch; as packaged it keeps Nagle"
            " on and stalls ~40 ms per message on a delayed ACK)."
            if nodelay
            else "DCMTK runs as packaged: Nagle on, so each message waits ~40 ms for a"
            " delayed ACK (drop --dcmtk-as-packaged to set TCP_NODELAY=1).",
        ],
    )


def make_stacks(dcmtk_nodelay: bool, pynetdicom_nodelay: bool = False) -> list[Stack]:
    """The stacks, in the order their pairs run: pynetdicom, adicom (and its --fsync SCP),
    DCMTK, then adicom and DCMTK over TLS (store workloads only)."""
    return [
        _pynetdicom_stack(pynetdicom_nodelay),
        _adicom_stack(),
        _adicom_uvloop_stack(),
        _adicom_fsync_stack(),
        _adicom_archive_stack(),
        _dcmtk_stack(dcmtk_nodelay),
        _adicom_tls_stack(),
        _dcmtk_tls_stack(dcmtk_nodelay),
    ]


def destination_stack() -> Stack:
    """The C-MOVE destination: an adicom storage SCP (DiskStorage), on a port fixed per run."""
    scp, _ = _python_side("benchmarks.sides.adicom_side")

    def argv(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
        out = scp(port, workdir, store_dir)
        out[out.index("--aet") + 1] = MOVE_DEST_AET
        return out

    return Stack("adicom", adicom_unavailable, argv, True, lambda *a: [])


def idle_scp_stack(stack: Stack) -> Stack:
    """The SCP of idle-500: `adicom serve` (the CLI, Verification), or pynetdicom's AE
    with `maximum_associations` raised (else it allows 10)."""
    if stack.name == "adicom":

        def serve(port: int, _workdir: Path, _store_dir: Path | None) -> list[str]:
            # All the associations come from 127.0.0.1, up to 8 pending at a
            # time: the per-address cap (64, a defence against one hostile
            # peer) would refuse the 65th, so it is raised for this workload.
            return [sys.executable, "-m", "adicom", "serve", "--aet", SCP_AET, "--host", HOST,
                    "--port", str(port), "--max-per-address", "1000"]  # fmt: skip

        return replace(stack, scp_argv=serve, scp_prints_ready=False, scp_lag_reset=False)
    if stack.name == "pynetdicom":
        pyn_argv = stack.scp_argv

        def pyn(port: int, workdir: Path, store_dir: Path | None) -> list[str]:
            argv = pyn_argv(port, workdir, store_dir)
            return [*argv, "--max-associations", str(IDLE_PYNETDICOM_MAX_ASSOCIATIONS),
                    "--idle-timeout", str(IDLE_PYNETDICOM_NETWORK_TIMEOUT)]  # fmt: skip

        return replace(stack, scp_argv=pyn)
    raise BenchError(f"no idle SCP for {stack.name}")


# --------------------------------------------------------------------------- a running SCP


@dataclass
class Scp:
    """A started SCP: its process, port, log files and where it stores."""

    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    store_dir: Path | None


def _wait_listening(stack: Stack, scp: Scp) -> bool:
    """Wait (bounded) until the SCP listens; False on timeout, BenchError if it exits."""
    deadline = time.monotonic() + SCP_START_TIMEOUT
    while time.monotonic() < deadline:
        if scp.proc.poll() is not None:
            raise BenchError(
                f"{stack.name} SCP exited with {scp.proc.returncode}: {tail(scp.stderr_path)}"
            )
        if stack.scp_prints_ready:
            for line in tail(scp.stdout_path, 10_000).splitlines():
                if line.startswith(READY_PREFIX):
                    scp.port = int(line[len(READY_PREFIX) :])
                    return True
        elif listens_on(scp.proc.pid, scp.port):
            return True
        time.sleep(0.02)
    return False


#: Attempts at starting an SCP on a port of our choosing that was taken meanwhile.
PORT_ATTEMPTS = 3


def start_scp(stack: Stack, workdir: Path, store_dir: Path | None, port: int | None = None) -> Scp:
    """Start the SCP on `port` (default: any free one) and wait until it listens.

    A port chosen here (for an SCP that cannot choose its own) may be taken
    by another process before the SCP binds it: the SCP then exits saying
    the address is in use, and is started again on another port.
    """
    if store_dir is not None:
        store_dir.mkdir()
    if port is not None or stack.scp_prints_ready:
        return _start_scp(stack, workdir, store_dir, 0 if port is None else port)
    for attempt in range(PORT_ATTEMPTS):
        try:
            return _start_scp(stack, workdir, store_dir, free_port())
        except BenchError as exc:
            if "in use" not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def _start_scp(stack: Stack, workdir: Path, store_dir: Path | None, port: int) -> Scp:
    stdout_path, stderr_path = workdir / "scp.out", workdir / "scp.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            stack.scp_argv(port, workdir, store_dir),
            cwd=REPO_ROOT,
            env=child_env(stack.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    scp = Scp(proc, port, stdout_path, stderr_path, store_dir)
    if _wait_listening(stack, scp):
        return scp
    stop_scp(scp)
    raise BenchError(f"{stack.name} SCP not listening after {SCP_START_TIMEOUT:.0f} s")


def stop_scp(scp: Scp) -> None:
    if scp.proc.poll() is None:
        scp.proc.send_signal(signal.SIGTERM)
        try:
            scp.proc.wait(SCP_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            scp.proc.kill()
            scp.proc.wait(SCP_STOP_TIMEOUT)


def scp_stats(scp: Scp) -> dict[str, Any]:
    """The STATS line an SCP printed when stopped (adicom: loop lag), else {}."""
    for line in tail(scp.stdout_path, 10_000).splitlines():
        if line.startswith(STATS_PREFIX):
            try:
                stats: dict[str, Any] = json.loads(line[len(STATS_PREFIX) :])
            except ValueError:
                return {}
            return stats
    return {}
