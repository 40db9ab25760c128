"""Start and drive the real peers of the interoperability tests.

Every peer runs as a subprocess: pynetdicom through the small scripts in
``scripts/`` (pynetdicom is never imported in the test process, which stays
single-threaded), DCMTK through its Debian binaries, and adicom's own CLI
through ``python -m adicom``.

Rules kept here:
- peers bind 127.0.0.1 on a free port;
- every wait has a deadline, and a failure message carries the peer's stderr;
- every process started is killed (its whole process group, since
  ``dcmqrscp`` forks a child per association) when its context manager exits;
- process output goes to files, not pipes, so nothing can block on a full
  pipe and no reader thread is needed; async code polls the process instead
  of using asyncio subprocesses (whose Python 3.11 child watcher is a thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks.processes import free_port as free_port  # the interop peers bind one too

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"

#: Deadline for a server peer to start listening.
READY_TIMEOUT = 10.0
#: Deadline for a client peer (one association) to finish.
RUN_TIMEOUT = 30.0
#: Deadline for a server peer to exit after SIGINT/SIGTERM.
STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# Generic process plumbing


class PeerError(AssertionError):
    """A peer process did not start, did not finish in time, or misbehaved."""


@dataclasses.dataclass
class Peer:
    """A running (or finished) peer process whose output goes to files."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    port: int | None = None
    aet: str | None = None
    #: Where a storage SCP peer writes what it receives.
    workdir: Path | None = None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        """Say what ran and what it printed, for failure messages."""
        rc = self.proc.poll()
        return (
            f"{self.name}: {' '.join(self.argv)}\n"
            f"  exit status: {'still running' if rc is None else rc}\n"
            f"  stdout:\n{_indent(self.stdout())}\n"
            f"  stderr:\n{_indent(self.stderr())}"
        )

    def signal_and_wait(self, sig: int, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to the peer itself and wait (bounded) for it to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"did not exit within {timeout:g} s of signal {sig}\n{self.describe()}"
            ) from None


def _indent(text: str) -> str:
    text = text.rstrip("\n")
    return "\n".join("    " + line for line in text.splitlines()) if text else "    (empty)"


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process group led by ``proc`` (started with a new session)."""
    # The group id is the leader's pid; while the leader is not reaped (or any
    # member lives) that id cannot name anything else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def subprocess_env() -> dict[str, str]:
    """Environment for peers: adicom importable from the checkout, unbuffered output."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def running(
    argv: Sequence[str], name: str | None = None, cwd: str | Path | None = None
) -> Iterator[Peer]:
    """Start ``argv`` as a subprocess; it (and its children) are killed on exit."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="adicom-interop-") as tmp:
        out = Path(tmp) / "stdout"
        err = Path(tmp) / "stderr"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                cwd=str(cwd) if cwd is not None else tmp,
                env=subprocess_env(),
                start_new_session=True,
            )
        peer = Peer(name or Path(argv[0]).name, argv, proc, out, err)
        try:
            yield peer
        finally:
            _kill_group(proc)


def wait_for_port(
    host: str, port: int, timeout: float = READY_TIMEOUT, peer: Peer | None = None
) -> None:
    """Poll until something accepts TCP connections on host:port.

    Fails (PeerError, with the peer's output) when ``peer`` exits first or the
    deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        if peer is not None and peer.proc.poll() is not None:
            raise PeerError(f"exited before listening on {host}:{port}\n{peer.describe()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            detail = f"\n{peer.describe()}" if peer is not None else ""
            raise PeerError(f"nothing listening on {host}:{port} after {timeout:g} s{detail}")
        time.sleep(0.05)


@dataclasses.dataclass
class Finished:
    """What a finished client peer did."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv)}\n  exit status: {self.returncode}\n"
            f"  stdout:\n{_indent(self.stdout)}\n  stderr:\n{_indent(self.stderr)}"
        )


def run(argv: Sequence[str], timeout: float = RUN_TIMEOUT) -> Finished:
    """Run a client peer to completion, blocking (for sync tests)."""
    with running(argv) as peer:
        try:
            rc = peer.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"did not finish within {timeout:g} s\n{peer.describe()}") from None
        return Finished(peer.argv, rc, peer.stdout(), peer.stderr())


async def run_async(argv: Sequence[str], timeout: float = RUN_TIMEOUT) -> Finished:
    """Run a client peer to completion without blocking the event loop.

    The process is polled, so an in-process adicom server on the same loop
    keeps serving it, and no thread is started.
    """
    with running(argv) as peer:
        deadline = time.monotonic() + timeout
        while (rc := peer.proc.poll()) is None:
            if time.monotonic() >= deadline:
                raise PeerError(f"did not finish within {timeout:g} s\n{peer.describe()}")
            await anyio.sleep(0.02)
        return Finished(peer.argv, rc, peer.stdout(), peer.stderr())


# --------------------------------------------------------------------------
# Locating the peers


@functools.cache
def dcmtk_binary(name: str) -> str | None:
    """Path of DCMTK's ``name`` binary, or None.

    pynetdicom installs console scripts with DCMTK's names (storescp,
    echoscu, ...) that may come first on PATH, so a candidate counts only when
    its ``--version`` output mentions OFFIS or dcmtk.
    """
    candidates = [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for path in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        try:
            proc = subprocess.run(
                [path, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (proc.stdout + proc.stderr).decode(errors="replace").lower()
        if "offis" in text or "dcmtk" in text:
            return path
    return None


def require_dcmtk(name: str) -> str:
    """DCMTK's ``name`` binary, or skip the test."""
    path = dcmtk_binary(name)
    if path is None:
        pytest.skip(f"DCMTK {name} not found (install the Debian package 'dcmtk')")
    return path


@functools.cache
def have_pynetdicom() -> bool:
    # find_spec locates the package without importing (running) it.
    return importlib.util.find_spec("pynetdicom") is not None


def require_pynetdicom() -> None:
    if not have_pynetdicom():
        pytest.skip("pynetdicom not installed (pip install pynetdicom)")


def adicom_cli() -> list[str]:
    """Command prefix that runs adicom's CLI from this checkout."""
    if importlib.util.find_spec("adicom.__main__") is not None:
        return [sys.executable, "-m", "adicom"]
    return [sys.executable, "-m", "adicom.cli"]


# --------------------------------------------------------------------------
# Server peers (context managers; the peer is listening when they yield)


@contextlib.contextmanager
def pynetdicom_echo_scp(aet: str = "PYNETDICOM-SCP", tls: Sequence[str] = ()) -> Iterator[Peer]:
    """pynetdicom Verification SCP; rejects a wrong called AE with (1, 1, 7).

    ``tls``: more options of the script (TLS ones, ``--identity``).
    """
    require_pynetdicom()
    port = free_port()
    argv = [
        sys.executable,
        str(SCRIPTS / "pynetdicom_echo_scp.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--aet",
        aet,
        *tls,
    ]
    with running(argv, name="pynetdicom echo SCP") as peer:
        peer.port, peer.aet = port, aet
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer


@contextlib.contextmanager
def dcmtk_storescp(aet: str = "STORESCP", options: Sequence[str] = ()) -> Iterator[Peer]:
    """DCMTK storescp; answers C-ECHO. It accepts ANY called AE title.

    ``options`` go before the port (TLS ones, for instance); what it
    receives is in the folder ``peer.workdir``.
    """
    binary = require_dcmtk("storescp")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-storescp-") as outdir:
        argv = [binary, "--aetitle", aet, "--output-directory", outdir, *options, str(port)]
        with running(argv, name="DCMTK storescp") as peer:
            peer.port, peer.aet, peer.workdir = port, aet, Path(outdir)
            wait_for_port(HOST, port, READY_TIMEOUT, peer)
            yield peer


@contextlib.contextmanager
def dcmtk_dcmqrscp(aet: str = "DCMQRSCP", profile: str | None = None) -> Iterator[Peer]:
    """DCMTK dcmqrscp with one configured AE; answers C-ECHO.

    Unlike storescp, dcmqrscp checks the called AE title against its AETable
    and rejects an unknown one with (1, 1, 7) ("Refusing Association
    (BadAEService)"). It runs in its default fork mode: DCMTK 3.6.7's
    ``--single-process`` mode crashes (SIGSEGV) after the first association.
    Without ``profile`` it takes what it takes by default (uncompressed
    storage, no SCP role for C-GET); ``profile`` is an association profile
    file's text (``-xf``) whose profile "QRIn" it uses both ways.
    """
    binary = require_dcmtk("dcmqrscp")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="adicom-dcmqrscp-") as tmp:
        storage = Path(tmp) / "db"
        storage.mkdir()
        config = Path(tmp) / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort  = {port}\n"
            "MaxPDUSize      = 16384\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            "AETable BEGIN\n"
            f"{aet}  {storage}  RW  (100, 64mb)  ANY\n"
            "AETable END\n"
        )
        argv = [binary, "--config", str(config), str(port)]
        if profile is not None:
            profiles = Path(tmp) / "profiles.cfg"
            profiles.write_text(profile)
            argv[1:1] = ["-xf", str(profiles), "QRIn", "QRIn"]
        with running(argv, name="DCMTK dcmqrscp", cwd=tmp) as peer:
            peer.port, peer.aet = port, aet
            wait_for_port(HOST, port, READY_TIMEOUT, peer)
            yield peer


_SERVE_LINE = re.compile(
    r'^adicom serve: AE "(?P<aet>[^"]*)" listening on (?P<host>\S+):(?P<port>\d+)$'
)


@contextlib.contextmanager
def adicom_serve(aet: str = "ADICOM") -> Iterator[Peer]:
    """``adicom serve`` as a process; yields once its "listening" line is out.

    Checks the line's format and that the port accepts connections.
    """
    port = free_port()
    argv = [*adicom_cli(), "serve", "--aet", aet, "--host", HOST, "--port", str(port)]
    with running(argv, name="adicom serve") as peer:
        peer.port, peer.aet = port, aet
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            lines = peer.stdout().splitlines()
            if lines:
                m = _SERVE_LINE.match(lines[0])
                if not m:
                    raise PeerError(f"unexpected first line {lines[0]!r}\n{peer.describe()}")
                if (m["aet"], m["host"], int(m["port"])) != (aet, HOST, port):
                    raise PeerError(f"listening line disagrees with argv\n{peer.describe()}")
                break
            if peer.proc.poll() is not None:
                raise PeerError(f"exited before printing its listening line\n{peer.describe()}")
            if time.monotonic() >= deadline:
                raise PeerError(f"no listening line after {READY_TIMEOUT:g} s\n{peer.describe()}")
            time.sleep(0.05)
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer


# --------------------------------------------------------------------------
# Client peers: command lines and what their output means


@dataclasses.dataclass
class EchoOutcome:
    """A client peer's echo, in one shape for every peer."""

    ok: bool
    rejected: tuple[int, int, int] | None  # (result, source, reason)
    finished: Finished


def pynetdicom_echo_scu_argv(
    port: int,
    aet: str,
    aec: str,
    host: str = HOST,
    timeout: float = 10.0,
    tls: Sequence[str] = (),
) -> list[str]:
    require_pynetdicom()
    return [
        sys.executable,
        str(SCRIPTS / "pynetdicom_echo_scu.py"),
        "--host",
        host,
        "--port",
        str(port),
        "--aet",
        aet,
        "--aec",
        aec,
        "--timeout",
        str(timeout),
        *tls,
    ]


def parse_pynetdicom_scu(finished: Finished) -> EchoOutcome:
    """Read the JSON line printed by scripts/pynetdicom_echo_scu.py."""
    lines = [ln for ln in finished.stdout.splitlines() if ln.strip()]
    if not lines:
        raise PeerError(f"pynetdicom SCU printed no result\n{finished.describe()}")
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        raise PeerError(f"pynetdicom SCU printed no JSON\n{finished.describe()}") from None
    rj = data.get("rejected")
    rejected = (int(rj["result"]), int(rj["source"]), int(rj["reason"])) if rj else None
    ok = bool(data["ok"]) and data.get("status") == 0
    return EchoOutcome(ok, rejected, finished)


def dcmtk_echoscu_argv(
    port: int, aet: str, aec: str, host: str = HOST, timeout: int = 10
) -> list[str]:
    binary = require_dcmtk("echoscu")
    t = str(timeout)
    # -v prints "I: Received Echo Response (Success)"; -to/-ta/-td bound the
    # TCP connect, the ACSE and the DIMSE waits.
    return [binary, "-v", "-to", t, "-ta", t, "-td", t, "-aet", aet, "-aec", aec, host, str(port)]


# DCMTK (ASC_printRejectParameters) prints a rejection as
#   F: Association Rejected:
#   F: Result: Rejected Permanent, Source: Service User
#   F: Reason: Called AE Title Not Recognized
_DCMTK_RESULT = {"rejected permanent": 1, "rejected transient": 2}
_DCMTK_SOURCE = {
    "service user": 1,
    "service provider (acse related)": 2,
    "service provider (presentation related)": 3,
}
# The reason's number depends on the source (PS3.8 Table 9-21); DCMTK's texts
# are distinct enough to map directly.
_DCMTK_REASON = {
    "no reason": 1,
    "(no reason)": 1,
    "app context name not supported": 2,
    "calling ae title not recognized": 3,
    "called ae title not recognized": 7,
    "protocol version not supported": 2,
    "temporary congestion": 1,
    "local limit exceeded": 2,
}
_DCMTK_RESULT_LINE = re.compile(r"Result:\s*(?P<result>[^,]+),\s*Source:\s*(?P<source>.+?)\s*$")
_DCMTK_REASON_LINE = re.compile(r"Reason:\s*(?P<reason>.+?)\s*$")


def parse_dcmtk_reject(text: str) -> tuple[int, int, int] | None:
    """(result, source, reason) from a DCMTK tool's rejection message, or None."""
    if "Association Rejected" not in text:
        return None
    result = source = reason = None
    for line in text.splitlines():
        if m := _DCMTK_RESULT_LINE.search(line):
            result = _DCMTK_RESULT.get(m["result"].strip().lower())
            source = _DCMTK_SOURCE.get(m["source"].strip().lower())
        elif m := _DCMTK_REASON_LINE.search(line):
            reason = _DCMTK_REASON.get(m["reason"].strip().lower())
    if result is None or source is None or reason is None:
        raise PeerError(f"cannot parse DCMTK's rejection message:\n{_indent(text)}")
    return (result, source, reason)


def parse_dcmtk_echoscu(finished: Finished) -> EchoOutcome:
    text = finished.stdout + finished.stderr
    ok = finished.returncode == 0 and "Received Echo Response (Success)" in text
    return EchoOutcome(ok, parse_dcmtk_reject(text), finished)


def echo_scu_argv(kind: str, port: int, aet: str, aec: str) -> list[str]:
    """Command line of an echo SCU peer; ``kind`` is "pynetdicom" or "dcmtk"."""
    if kind == "pynetdicom":
        return pynetdicom_echo_scu_argv(port, aet, aec)
    if kind == "dcmtk":
        return dcmtk_echoscu_argv(port, aet, aec)
    raise ValueError(kind)


def parse_echo_scu(kind: str, finished: Finished) -> EchoOutcome:
    if kind == "pynetdicom":
        return parse_pynetdicom_scu(finished)
    if kind == "dcmtk":
        return parse_dcmtk_echoscu(finished)
    raise ValueError(kind)


def adicom_echo_argv(port: int, aet: str, aec: str, timeout: float = 10.0) -> list[str]:
    return [
        *adicom_cli(),
        "echo",
        "--aet",
        aet,
        "--aec",
        aec,
        "--timeout",
        str(timeout),
        HOST,
        str(port),
    ]


# --------------------------------------------------------------------------
# Storage (C-STORE) peers


@contextlib.contextmanager
def dcmtk_store_scp(output_dir: Path, aet: str = "STORESCP", accept: str = "+xa") -> Iterator[Peer]:
    """DCMTK storescp writing every received instance into ``output_dir``.

    ``accept`` picks the transfer syntaxes it accepts: ``+xa`` every one it
    supports (compressed ones included; without it storescp accepts only the
    uncompressed syntaxes), ``+xi`` implicit VR little endian only, ``+xe``
    the uncompressed ones with explicit VR little endian preferred. ``+B``
    (bit-preserving) writes each data set exactly as it came off the wire,
    so the file shows what the sender sent.
    """
    binary = require_dcmtk("storescp")
    port = free_port()
    argv = [
        binary,
        "--aetitle",
        aet,
        accept,
        "+B",
        "-ta",
        "10",
        "-td",
        "60",
        "--output-directory",
        str(output_dir),
        str(port),
    ]
    with running(argv, name="DCMTK storescp") as peer:
        peer.port, peer.aet = port, aet
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer


@contextlib.contextmanager
def pynetdicom_store_scp(
    output_dir: Path, aet: str = "PYNETDICOM-SCP", transfer_syntaxes: Sequence[str] = ()
) -> Iterator[Peer]:
    """pynetdicom Storage SCP (scripts/pynetdicom_store_scp.py).

    Accepts every storage SOP class with every transfer syntax pynetdicom
    knows, or only ``transfer_syntaxes`` when given, and writes each data set
    as received (no decoding) to ``output_dir/<SOP Instance UID>.dcm``.
    """
    require_pynetdicom()
    port = free_port()
    argv = [
        sys.executable,
        str(SCRIPTS / "pynetdicom_store_scp.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--aet",
        aet,
        "--output-directory",
        str(output_dir),
    ]
    for ts in transfer_syntaxes:
        argv += ["--transfer-syntax", ts]
    with running(argv, name="pynetdicom store SCP") as peer:
        peer.port, peer.aet = port, aet
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer


@contextlib.contextmanager
def adicom_serve_storage(storage: Path, aet: str = "ADICOM") -> Iterator[Peer]:
    """``adicom serve --storage DIR`` as a process, listening when it yields."""
    port = free_port()
    argv = [
        *adicom_cli(),
        "serve",
        "--aet",
        aet,
        "--host",
        HOST,
        "--port",
        str(port),
        "--storage",
        str(storage),
    ]
    with running(argv, name="adicom serve --storage") as peer:
        peer.port, peer.aet = port, aet
        _wait_for_serve_line(peer, aet, port)
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer


def _wait_for_serve_line(peer: Peer, aet: str, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        lines = peer.stdout().splitlines()
        if lines:
            m = _SERVE_LINE.match(lines[0])
            if not m:
                raise PeerError(f"unexpected first line {lines[0]!r}\n{peer.describe()}")
            if (m["aet"], m["host"], int(m["port"])) != (aet, HOST, port):
                raise PeerError(f"listening line disagrees with argv\n{peer.describe()}")
            return
        if peer.proc.poll() is not None:
            raise PeerError(f"exited before printing its listening line\n{peer.describe()}")
        if time.monotonic() >= deadline:
            raise PeerError(f"no listening line after {READY_TIMEOUT:g} s\n{peer.describe()}")
        time.sleep(0.05)


def dcmtk_storescu_argv(
    port: int,
    aet: str,
    aec: str,
    paths: Sequence[str | Path],
    options: Sequence[str] = (),
    host: str = HOST,
    timeout: int = 30,
) -> list[str]:
    """DCMTK storescu sending ``paths`` over one association.

    storescu proposes only the uncompressed syntaxes unless told otherwise
    and converts a file to the accepted syntax; to send a compressed file
    untouched, ``options`` must name its syntax (``-xs`` JPEG lossless SV1,
    ``-xy`` JPEG baseline, ``-xx`` JPEG extended, ``-xv``/``-xw`` JPEG 2000
    lossless/any, ``-xt`` JPEG-LS lossless, ``-xr`` RLE). ``-R`` proposes
    only the SOP classes of the files sent (not all ~120 it knows).
    """
    binary = require_dcmtk("storescu")
    t = str(timeout)
    return [
        binary,
        "-v",
        "-to",
        t,
        "-ta",
        t,
        "-td",
        t,
        "-R",
        *options,
        "-aet",
        aet,
        "-aec",
        aec,
        host,
        str(port),
        *(str(p) for p in paths),
    ]


def pynetdicom_store_scu_argv(
    port: int, aet: str, aec: str, paths: Sequence[str | Path], timeout: float = 30.0
) -> list[str]:
    """pynetdicom Storage SCU (scripts/pynetdicom_store_scu.py).

    Proposes for each file its SOP class with exactly its own transfer
    syntax, so a file that is accepted goes out untouched.
    """
    require_pynetdicom()
    return [
        sys.executable,
        str(SCRIPTS / "pynetdicom_store_scu.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--aet",
        aet,
        "--aec",
        aec,
        "--timeout",
        str(timeout),
        *(str(p) for p in paths),
    ]


def parse_pynetdicom_store_scu(finished: Finished) -> dict[str, Any]:
    """The JSON line printed by scripts/pynetdicom_store_scu.py."""
    lines = [ln for ln in finished.stdout.splitlines() if ln.strip()]
    if not lines:
        raise PeerError(f"pynetdicom store SCU printed no result\n{finished.describe()}")
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        raise PeerError(f"pynetdicom store SCU printed no JSON\n{finished.describe()}") from None
    return data


def adicom_store_argv(
    port: int, aet: str, aec: str, paths: Sequence[str | Path], host: str = HOST
) -> list[str]:
    """``adicom store`` (CLI) sending files and folders (recursively)."""
    return [*adicom_cli(), "store", "--aet", aet, "--aec", aec, host, str(port), *map(str, paths)]


@contextlib.contextmanager
def dcmtk_wlmscpfs(
    data_dir: Path, aet: str = "WLSCP", options: Sequence[str] = ()
) -> Iterator[Peer]:
    """DCMTK wlmscpfs serving the worklist files (``*.wl``) in ``data_dir / aet``.

    wlmscpfs takes a data folder with one subfolder per called AE title,
    each holding a ``lockfile``; both are made here if missing. It answers
    only a called AE title that has a subfolder. ``options`` go before the
    port (``--keep-char-set``, ``--disable-file-reject``, ...); its own
    files are in ``peer.workdir``.
    """
    binary = require_dcmtk("wlmscpfs")
    port = free_port()
    folder = data_dir / aet
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    argv = [binary, "--data-files-path", str(data_dir), *options, str(port)]
    with running(argv, name="DCMTK wlmscpfs", cwd=data_dir) as peer:
        peer.port, peer.aet, peer.workdir = port, aet, folder
        wait_for_port(HOST, port, READY_TIMEOUT, peer)
        yield peer
