"""The query/retrieve SCPs of the find/get/move workloads: archives, seeded once per run.

Three archives, each a process (its own session) on 127.0.0.1, started once
per benchmark run before the first query/retrieve workload, seeded with the
same generated set (``benchmarks/data.py``, the small CT series) and stopped
after the last one:

- **adicom**: ``python -m adicom serve --storage DIR --move-dest ...``, the
  command line as a user runs it (SQLite index, files under DIR; indexes
  each instance as it arrives).
- **pynetdicom**: pynetdicom's own ``qrscp`` app (SQLAlchemy + SQLite),
  configured by an INI file with absolute paths (the app joins relative ones
  to its package folder); run through ``benchmarks.sides.pynetdicom_qrscp``,
  which is ``python -m pynetdicom qrscp`` (plus TCP_NODELAY under
  --pynetdicom-nodelay).
- **dcmtk**: DCMTK ``dcmqrscp`` in its default fork mode (a child process per
  association; 3.6.7's ``--single-process`` crashes after one association),
  with an association profile (``-xf``): without one it accepts only
  uncompressed storage and refuses the SCP role a C-GET needs.

All three know one C-MOVE destination, ``MOVE_DEST_AET`` at 127.0.0.1 on a
port chosen before they start; the runner serves it with an adicom storage
SCP (``adicom_side scp --store-dir``) for each move repetition.

Seeding is ``benchmarks.sides.seed`` (``adicom.store``, one association),
not timed as a workload; its time goes to the JSON. This module imports no
DICOM library: the runner stays neutral.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.processes import free_port
from benchmarks.sides import dcmtk_side
from benchmarks.sides._common import MOVE_DEST_AET, RESULT_PREFIX

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
SEED_TIMEOUT = 600.0

#: The stacks that can serve as archive.
ARCHIVE_STACKS = ("adicom", "pynetdicom", "dcmtk")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# dcmqrscp's association profile: what it accepts (QRIn, with the SCP role for
# C-GET) and what it proposes for C-MOVE sub-operations (QROut).
DCMQRSCP_PROFILE = f"""\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = 1.2.840.10008.1.2.1
TransferSyntax2 = 1.2.840.10008.1.2

[[PresentationContexts]]
[Incoming]
PresentationContext1 = 1.2.840.10008.1.1\\Uncompressed
PresentationContext2 = 1.2.840.10008.5.1.4.1.2.1.1\\Uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.2.1.2\\Uncompressed
PresentationContext4 = 1.2.840.10008.5.1.4.1.2.1.3\\Uncompressed
PresentationContext5 = 1.2.840.10008.5.1.4.1.2.2.1\\Uncompressed
PresentationContext6 = 1.2.840.10008.5.1.4.1.2.2.2\\Uncompressed
PresentationContext7 = 1.2.840.10008.5.1.4.1.2.2.3\\Uncompressed
PresentationContext8 = {CT_IMAGE_STORAGE}\\Uncompressed
[Outgoing]
PresentationContext1 = {CT_IMAGE_STORAGE}\\Uncompressed

[[SCPSCURoleSelection]]
[GetRoles]
Role1 = {CT_IMAGE_STORAGE}\\BOTH

[[Profiles]]
[QRIn]
PresentationContexts = Incoming
SCPSCURoleSelection = GetRoles
[QROut]
PresentationContexts = Outgoing
"""


@dataclass
class Archive:
    """A running (and, once `seed` is set, seeded) query/retrieve SCP."""

    stack: str
    aet: str
    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes]
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    seed: dict[str, Any] = field(default_factory=dict)
    #: Why it cannot be used (did not start, seeding failed); None when usable.
    error: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def to_json(self) -> dict[str, Any]:
        return {
            "aet": self.aet,
            "port": self.port,
            "argv": self.argv,
            "seed": self.seed,
            "error": self.error,
        }


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def archive_argv(stack: str, workdir: Path, port: int, aet: str, dest_port: int) -> list[str]:
    """The command line of `stack`'s archive; writes its configuration into `workdir`."""
    if stack == "adicom":
        return [
            sys.executable, "-m", "adicom", "serve", "--aet", aet, "--host", HOST,
            "--port", str(port), "--storage", str(workdir / "storage"),
            "--move-dest", f"{MOVE_DEST_AET}={HOST}:{dest_port}",
        ]  # fmt: skip
    if stack == "pynetdicom":
        # Every section but DEFAULT is a move destination.
        ini = workdir / "qrscp.ini"
        ini.write_text(
            "[DEFAULT]\n"
            f"ae_title = {aet}\n"
            f"port = {port}\n"
            "max_pdu = 16382\n"
            "acse_timeout = 30\n"
            "dimse_timeout = 30\n"
            # The app's default (30 s) aborts a C-MOVE requestor's association while
            # it still sends the sub-operations (~45 s for 1000 at ~22/s): nothing
            # arrives from the requestor meanwhile. So: 300.
            "network_timeout = 300\n"
            f"bind_address = {HOST}\n"
            f"instance_location = {workdir / 'instances'}\n"
            f"database_location = {workdir / 'instances.sqlite'}\n"
            "log_identifier = False\n"
            f"\n[{MOVE_DEST_AET}]\n"
            f"address = {HOST}\n"
            f"port = {dest_port}\n"
        )
        return [sys.executable, "-m", "benchmarks.sides.pynetdicom_qrscp", "-c", str(ini)]
    if stack == "dcmtk":
        tool = dcmtk_side.find_tool("dcmqrscp")
        if tool is None:
            raise RuntimeError("DCMTK dcmqrscp not found")
        db = workdir / "db"
        db.mkdir(exist_ok=True)
        config = workdir / "dcmqrscp.cfg"
        # Quota: up to 10 studies of up to 1 GB each (the default examples' 64 MB
        # would be close to the 1000 x 42 KB series).
        config.write_text(
            f"NetworkTCPPort  = {port}\n"
            "MaxPDUSize      = 16384\n"
            "MaxAssociations = 16\n"
            "HostTable BEGIN\n"
            f"benchdest = ({MOVE_DEST_AET}, {HOST}, {dest_port})\n"
            "HostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            "AETable BEGIN\n"
            f"{aet}  {db}  RW  (10, 1024mb)  ANY\n"
            "AETable END\n"
        )
        profile = workdir / "profile.cfg"
        profile.write_text(DCMQRSCP_PROFILE)
        return [tool, "-xf", str(profile), "QRIn", "QROut", "--config", str(config), str(port)]
    raise ValueError(f"no archive for {stack}")


def start(
    stack: str,
    workdir: Path,
    aet: str,
    dest_port: int,
    env: dict[str, str],
    cwd: Path,
) -> Archive:
    """Start `stack`'s archive in `workdir` (empty) and wait until it listens."""
    port = free_port()
    argv = archive_argv(stack, workdir, port, aet, dest_port)
    stdout_path, stderr_path = workdir / "archive.out", workdir / "archive.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=cwd if stack != "pynetdicom" else workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    archive = Archive(stack, aet, port, argv, proc, workdir, stdout_path, stderr_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            archive.error = f"exited with {proc.returncode}: {_tail(stderr_path)}"
            return archive
        if _port_open(port):
            return archive
        time.sleep(0.05)
    stop(archive)
    archive.error = f"not listening after {START_TIMEOUT:.0f} s"
    return archive


def seed(archive: Archive, data_dir: Path, n: int, env: dict[str, str], cwd: Path) -> None:
    """Store the first `n` instances of `data_dir` into the archive (not timed as a workload)."""
    argv = [
        sys.executable, "-m", "benchmarks.sides.seed", "--host", HOST, "--port", str(archive.port),
        "--aet", archive.aet, "--data-dir", str(data_dir), "-n", str(n),
    ]  # fmt: skip
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=SEED_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        archive.error = f"seeding did not finish within {SEED_TIMEOUT:.0f} s"
        return
    result: dict[str, Any] = {}
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    archive.seed = {**result, "wall_s": time.monotonic() - t0, "n": n}
    if out.returncode != 0 or result.get("stored") != n:
        archive.error = (
            f"seeding stored {result.get('stored')} of {n}: {out.stderr.strip()[-500:]}"
            f" (archive stderr: {_tail(archive.stderr_path, 500)})"
        )


def stop(archive: Archive) -> str:
    """SIGTERM the archive's process group (dcmqrscp forks), SIGKILL after a while.

    Returns the archive's last stdout line (adicom serve prints its counts).
    """
    if archive.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(archive.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            archive.proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(archive.proc.pid, signal.SIGKILL)  # forked children, if any are left
    if archive.proc.poll() is None:
        archive.proc.wait(STOP_TIMEOUT)
    lines = [line for line in _tail(archive.stdout_path).splitlines() if line.strip()]
    return lines[-1] if lines else ""
