"""The SCPs under attack: how each starts, what is read of it from /proc, how it is stopped.

- adicom: ``python -m adicom serve --storage DIR`` on 127.0.0.1, as a user runs it.
- dcmtk: ``storescp --fork`` (one child process per association; without
  --fork storescp serves one association at a time, so the probe's steady
  association would lock out everyone else, attackers included) with
  TCP_NODELAY=1 as in the other benchmarks (as packaged, Nagle adds ~40 ms to
  every echo). It listens on all interfaces.
- pynetdicom: its storescp app, ``python -m pynetdicom storescp``, as shipped
  (10 associations at most, one thread each), bound to 127.0.0.1.

Each runs in its own session with OPENBLAS_NUM_THREADS=1 (numpy, when pydicom
finds it, would start BLAS threads at import), stdout and stderr to files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.adversity.pdus import CALLED_AE
from benchmarks.adversity.sampling import Sample, process_sample, session_sample
from benchmarks.config import HOST, REPO_ROOT, SCP_START_TIMEOUT
from benchmarks.processes import BenchError, child_env, free_port, port_open, tail
from benchmarks.sides import dcmtk_side
from benchmarks.stacks import adicom_unavailable

#: Extra environment of every process the adversity benchmark starts.
QUIET_BLAS = {"OPENBLAS_NUM_THREADS": "1"}
#: Seconds an SCP has between SIGTERM and SIGKILL.
STOP_TIMEOUT = 10.0
TRACEBACK = "Traceback (most recent call last)"

#: argv given (port, storage folder, extra options).
Argv = Callable[[int, Path, Sequence[str]], list[str]]


@dataclass(frozen=True)
class ScpKind:
    name: str
    argv: Argv
    unavailable: Callable[[], str | None]
    #: Printed on stdout once it listens; None: poll the port.
    ready_text: str | None = None
    #: A process per association: /proc is read for the whole session.
    forks: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _adicom(port: int, store: Path, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "adicom", "serve", "--aet", CALLED_AE, "--host", HOST,
            "--port", str(port), "--storage", str(store), *extra]  # fmt: skip


def _dcmtk(port: int, store: Path, extra: Sequence[str]) -> list[str]:
    tool = dcmtk_side.find_tool("storescp") or "storescp"
    return [tool, "--fork", "-aet", CALLED_AE, "-od", str(store), *extra, str(port)]


def _pynetdicom(port: int, store: Path, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pynetdicom", "storescp", "--bind-address", HOST,
            "-aet", CALLED_AE, "-od", str(store), *extra, str(port)]  # fmt: skip


def _no_storescp() -> str | None:
    return None if dcmtk_side.find_tool("storescp") else "no DCMTK storescp found"


def _no_pynetdicom() -> str | None:
    return None if importlib.util.find_spec("pynetdicom") else "pynetdicom is not installed"


KINDS: dict[str, ScpKind] = {
    "adicom": ScpKind(
        "adicom", _adicom, lambda: adicom_unavailable("idle"), ready_text="listening on"
    ),
    "dcmtk": ScpKind("dcmtk", _dcmtk, _no_storescp, forks=True, env={"TCP_NODELAY": "1"}),
    "pynetdicom": ScpKind("pynetdicom", _pynetdicom, _no_pynetdicom),
}


def _nofile_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@dataclass
class RunningScp:
    kind: ScpKind
    proc: subprocess.Popen[bytes]
    port: int
    out_path: Path
    err_path: Path

    def sample(self) -> Sample:
        """Memory, threads, processes, open files and CPU now (see sampling.py)."""
        if self.kind.forks:
            return session_sample(self.proc.pid)
        return process_sample(self.proc.pid)

    def stop(self) -> dict[str, Any]:
        """SIGTERM; its exit code and seconds to exit (SIGKILL after STOP_TIMEOUT)."""
        if self.proc.poll() is not None:
            return {"exit_code": self.proc.returncode, "exit_s": None, "exited_before": True}
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            self.kill()
        return {
            "exit_code": self.proc.returncode,
            "exit_s": round(time.monotonic() - started, 3),
            "killed_after_timeout": killed,
        }

    def kill(self) -> None:
        """SIGKILL to its whole session (storescp's children too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)

    def log_text(self) -> str:
        text = ""
        for path in (self.out_path, self.err_path):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return text

    def tracebacks(self) -> int:
        """Python tracebacks in its stdout and stderr."""
        return self.log_text().count(TRACEBACK)


def _wait_listening(scp: RunningScp) -> None:
    deadline = time.monotonic() + SCP_START_TIMEOUT
    while time.monotonic() < deadline:
        if scp.proc.poll() is not None:
            raise BenchError(f"{scp.kind.name} exited with {scp.proc.returncode}",
                             {"scp_log_tail": tail(scp.err_path)})  # fmt: skip
        ready = scp.kind.ready_text
        if ready is not None and ready in tail(scp.out_path, 10_000):
            return
        if ready is None and port_open(scp.port):
            return
        time.sleep(0.05)
    scp.kill()
    raise BenchError(f"{scp.kind.name} not listening after {SCP_START_TIMEOUT:.0f} s")


def listen_port() -> int:
    """A port free on every address, below the ephemeral range: the attackers' thousands
    of connections (and their TIME_WAITs) take source ports from that range, and an SCP
    binding the wildcard address (storescp) fails on a port one of them holds."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    for _ in range(100):
        port = random.randrange(10_000, max(10_001, low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    return free_port()


def start_scp(
    kind: ScpKind, workdir: Path, extra: Sequence[str] = (), nofile: int | None = None
) -> RunningScp:
    """Start the SCP on a free port, storing under `workdir`/store; wait until it listens.

    Started again on another port (3 tries) if the port was taken meanwhile."""
    store = workdir / "store"
    store.mkdir()
    for attempt in range(3):
        out_path, err_path = workdir / f"scp{attempt}.out", workdir / f"scp{attempt}.err"
        port = listen_port()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                kind.argv(port, store, extra),
                cwd=REPO_ROOT,
                env=child_env({**QUIET_BLAS, **kind.env}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_nofile_limit(nofile) if nofile else None,
            )
        scp = RunningScp(kind, proc, port, out_path, err_path)
        try:
            _wait_listening(scp)
        except BenchError:
            if attempt < 2 and "in use" in scp.log_text():
                continue
            raise
        return scp
    raise AssertionError("unreachable")
