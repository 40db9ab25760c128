"""``adicom serve --workers N``: N processes on one port, supervised (adicom.workers)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import adicom
from adicom.errors import AssociationRejected
from adicom.workers import describe_exit, listening_groups, reuse_port_spreads

pytestmark = pytest.mark.skipif(os.name != "posix", reason="workers need POSIX")

LISTENING = re.compile(
    r'adicom serve: AE "ADICOM" listening on 127\.0\.0\.1:(\d+), 2 worker processes '
    r"\(pids (\d+), (\d+)\)"
)
SUMMARY = re.compile(
    r"associations accepted per worker: (\d+), (\d+); restarts per worker: (\d+), (\d+)"
)


def environment() -> dict[str, str]:
    """No ADICOM_* variables (and no OPENBLAS_NUM_THREADS: the command line
    itself keeps numpy's OpenBLAS at one thread, so a thread count says what
    adicom started)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("ADICOM_") and k != "OPENBLAS_NUM_THREADS"
    }


@dataclass
class Served:
    process: asyncio.subprocess.Process
    port: int
    pids: list[int]


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """``adicom serve --workers 2`` on a free port, with the extra flags of an indirect param."""
    extra: list[str] = list(getattr(request, "param", []))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--workers", "2", "--host", "127.0.0.1",
        "--port", "0", "--association-timeout", "2", *extra,
        env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = (await process.stdout.readline()).decode()
        found = LISTENING.match(line)
        assert found, line
        yield Served(process, int(found[1]), [int(found[2]), int(found[3])])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def proc_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def sockets_of(pid: int) -> set[str]:
    """The sockets a process holds, as ``socket:[inode]``."""
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return {link for link in links if link.startswith("socket:")}


async def wait_gone(pids: list[int], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while any(alive(pid) for pid in pids):
            await asyncio.sleep(0.05)


async def echo_once(port: int) -> None:
    association = await adicom.open_association("127.0.0.1", port, called_ae="ADICOM")
    try:
        assert await association.echo() == 0
    finally:
        await association.release()


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float = 30) -> str:
    """Lines of ``stream`` up to the first that matches ``pattern``; that line."""
    async with asyncio.timeout(timeout):
        while line := (await stream.readline()).decode():
            if re.search(pattern, line):
                return line
    raise AssertionError(f"the stream ended before {pattern!r}")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


@needs_proc
@pytest.mark.anyio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_two_workers_both_accept_and_stop_cleanly(
    served: Served, sig: signal.Signals
) -> None:
    supervisor = served.process.pid
    for pid in served.pids:
        # Two processes, children of the supervisor, each with one thread.
        assert alive(pid)
        assert int(proc_field(pid, "PPid")) == supervisor
        assert proc_field(pid, "Threads") == "1"
        assert "--worker-fd" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert proc_field(supervisor, "Threads") == "1"
    # Each its own listening socket (SO_REUSEPORT), none of the other's.
    assert not sockets_of(served.pids[0]) & sockets_of(served.pids[1])
    count = 40
    for _ in range(count):
        await echo_once(served.port)
    # One association left open: the stop aborts it.
    held = await adicom.open_association("127.0.0.1", served.port, called_ae="ADICOM")
    served.process.send_signal(sig)
    async with asyncio.timeout(60):
        out, err = await served.process.communicate()
        await held.wait_closed()
    assert served.process.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    summary = SUMMARY.search(out.decode())
    assert summary, out.decode()
    accepted = [int(summary[1]), int(summary[2])]
    # The kernel spread them: every worker took some (all 41 on one: p = 2**-40).
    assert sum(accepted) == count + 1
    assert min(accepted) > 0
    assert (summary[3], summary[4]) == ("0", "0")
    assert out.decode().count("stopping (") == 2
    await wait_gone(served.pids)


@needs_proc
@pytest.mark.anyio
@pytest.mark.parametrize("served", [["--shutdown-grace", "120"]], indirect=True)
async def test_a_second_signal_has_the_workers_abort_at_once(served: Served) -> None:
    # The first signal: the workers drain, an open association is still
    # served. The second: the supervisor tells them to abort now, well
    # before the grace (120 s) or its own SIGKILL would end them.
    assert served.process.stdout is not None
    held = await adicom.open_association("127.0.0.1", served.port, called_ae="ADICOM")
    served.process.send_signal(signal.SIGTERM)
    await read_until(served.process.stdout, r"stopping the workers \(signal again")
    await read_until(served.process.stdout, r"waiting up to 120 s for 1 open associations")
    assert await held.echo() == 0
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        out, err = await served.process.communicate()
        await held.wait_closed()
    assert served.process.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "aborting the open associations" in out.decode()
    assert not held.is_established
    await wait_gone(served.pids)


@needs_proc
@pytest.mark.anyio
async def test_a_killed_worker_is_restarted(served: Served) -> None:
    assert served.process.stderr is not None
    victim = served.pids[1]
    os.kill(victim, signal.SIGKILL)
    line = await read_until(served.process.stderr, "worker 1 was killed by SIGKILL; restarting")
    assert "restarting it in" in line
    line = await read_until(served.process.stderr, r"worker 1 restarted as pid \d+")
    new = int(line.rsplit(" ", 1)[1])
    assert new != victim and alive(new) and alive(served.pids[0])
    for _ in range(20):
        await echo_once(served.port)
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        out, _ = await served.process.communicate()
    assert served.process.returncode == 0
    summary = SUMMARY.search(out.decode())
    assert summary, out.decode()
    assert (summary[3], summary[4]) == ("0", "1")
    await wait_gone([served.pids[0], new])


@needs_proc
@pytest.mark.anyio
async def test_workers_stop_when_the_supervisor_is_killed(served: Served) -> None:
    served.process.kill()
    await served.process.wait()
    # Nothing left behind: each worker sees its link close and stops.
    await wait_gone(served.pids)


@pytest.mark.anyio
@pytest.mark.parametrize("served", [["--max-associations", "1"]], indirect=True)
async def test_max_associations_holds_per_worker(served: Served) -> None:
    held: list[adicom.Association] = []
    rejected = 0
    try:
        for _ in range(60):  # bounded: both workers are hit long before
            try:
                held.append(
                    await adicom.open_association("127.0.0.1", served.port, called_ae="ADICOM")
                )
            except AssociationRejected as exc:
                assert exc.result == 2  # transient: local limit exceeded
                rejected += 1
            if len(held) == 2 and rejected >= 3:
                break
        # One per worker, two in all: the limit is each worker's.
        assert len(held) == 2
        assert rejected >= 3
    finally:
        for association in held:
            await association.release()


@pytest.mark.anyio
async def test_workers_that_cannot_start_say_so_once(tmp_path: Path) -> None:
    storage = tmp_path / "a-file"
    storage.write_text("not a folder")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--workers", "3", "--host", "127.0.0.1",
        "--port", "0", "--storage", str(storage),
        env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 1
    text = err.decode()
    assert "the workers could not start: worker 0 exited with code 1 before it was ready" in text
    # Worker 0 starts alone: its error comes once, not three times.
    assert text.count(str(storage)) == 1, text
    assert "listening" not in out.decode()


@pytest.mark.parametrize(
    ("value", "said"),
    [("0", "0 is too small: give 1 or more"), ("-2", "too small"), ("two", "'two' is not")],
)
def test_bad_worker_counts_are_usage_errors(value: str, said: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adicom", "serve", "--workers", value],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "argument --workers" in result.stderr and said in result.stderr


def test_listening_groups_share_one_port() -> None:
    if reuse_port_spreads():
        groups = listening_groups("127.0.0.1", 0, 3, reuse_port=True)
        try:
            ports = {group[0].getsockname()[1] for group in groups}
            assert len(ports) == 1
            # One socket of its own per worker, each with SO_REUSEPORT.
            assert len({id(group[0]) for group in groups}) == 3
            for (sock,) in groups:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        finally:
            for group in groups:
                for sock in group:
                    sock.close()
    shared = listening_groups("127.0.0.1", 0, 3, reuse_port=False)
    try:
        assert shared[0] is shared[1] is shared[2]
    finally:
        for sock in shared[0]:
            sock.close()


def test_exit_codes_are_described() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"


@pytest.mark.anyio
async def test_workers_share_one_archive_indexed_once(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from tests.test_archive_processes import found_images, fresh

    root = tmp_path / "archive"
    study = generate_uid()
    before = fresh(40, study)
    for ds in before:
        path = root / "old" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "-v", "--workers", "2", "--host", "127.0.0.1",
        "--port", "0", "--storage", str(root),
        env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            found = LISTENING.match((await process.stdout.readline()).decode())
        assert found
        port = int(found[1])
        # 20 associations of 2 instances each: the kernel spreads them.
        batches = [fresh(2, study) for _ in range(20)]
        for batch in batches:
            results = await adicom.store("127.0.0.1", port, batch, called_ae="ADICOM")
            assert all(r.ok for r in results)
        stored = [ds for batch in batches for ds in batch]
        everything = {str(ds.SOPInstanceUID) for ds in before + stored}
        # Whichever worker answers a C-FIND sees what both stored, and what
        # worker 0 indexed at start (once committed: within COMMIT_DELAY).
        async with asyncio.timeout(30):
            for _ in range(6):
                while (seen := await found_images(port, study)) != everything:
                    assert seen <= everything
                    await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    summary = SUMMARY.search(out.decode())
    assert summary, out.decode()
    assert min(int(summary[1]), int(summary[2])) > 0  # both stored or answered
    # The folder was indexed once, by worker 0, not by each worker.
    assert err.decode().count("instances indexed") == 1, err.decode()
    assert "Traceback" not in err.decode()


@needs_proc
@pytest.mark.anyio
@pytest.mark.parametrize("served", [["--worker-sockets", "shared"]], indirect=True)
async def test_workers_can_share_one_listening_socket(served: Served) -> None:
    # Both workers accept on the same socket: the parent made one, not two.
    first, second = (sockets_of(pid) for pid in served.pids)
    assert first & second
    for _ in range(10):
        await echo_once(served.port)
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        out, _ = await served.process.communicate()
    assert served.process.returncode == 0
    summary = SUMMARY.search(out.decode())
    assert summary, out.decode()
    assert int(summary[1]) + int(summary[2]) == 10
    await wait_gone(served.pids)


# The Python API (adicom.workers) with small worker programs.

READY_THEN_EXIT = """
import asyncio, sys
from adicom.workers import WorkerLink

async def main():
    link = await WorkerLink.open(int(sys.argv[1]))
    link.ready()
    await link.aclose()
    await asyncio.sleep(0.5)
    sys.exit(3)

asyncio.run(main())
"""

NEVER_READY = "import time; time.sleep(60)"


@pytest.mark.anyio
async def test_the_supervisor_gives_up_on_a_worker_that_keeps_dying() -> None:
    from adicom.workers import Supervisor, WorkerError

    def command(fd: int) -> list[str]:
        return [sys.executable, "-c", READY_THEN_EXIT, str(fd)]

    supervisor = Supervisor(command, 1, "127.0.0.1", 0, max_failures=2, start_timeout=60)
    async with asyncio.timeout(60):
        # It may die before start() returns: then start() itself fails.
        try:
            await supervisor.start()
            with pytest.raises(WorkerError, match=r"exited with code 3, 2 times in a row"):
                await supervisor.serve(asyncio.Event())
        except WorkerError as exc:
            assert "exited with code 3" in str(exc)
    assert all(pid is None for pid in supervisor.pids)


@pytest.mark.anyio
async def test_a_worker_not_ready_in_time_is_killed_and_start_fails() -> None:
    from adicom.workers import Supervisor, WorkerError

    supervisor = Supervisor(
        lambda fd: [sys.executable, "-c", NEVER_READY], 2, "127.0.0.1", 0, start_timeout=1.0
    )
    async with asyncio.timeout(60):
        with pytest.raises(WorkerError, match="worker 0 was killed by SIGKILL before it was ready"):
            await supervisor.start()
    assert supervisor.pids == [None, None]


@pytest.mark.anyio
async def test_a_second_server_on_the_port_of_the_workers_is_refused(served: Served) -> None:
    # SO_REUSEPORT would let it join the workers' sockets and take a share
    # of their connections; it must fail as on any port in use.
    result = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--workers", "2", "--host", "127.0.0.1",
        "--port", str(served.port), env=environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            out, err = await result.communicate()
    finally:
        if result.returncode is None:
            result.terminate()  # it started: stop it and its workers
            await result.wait()
    assert result.returncode == 1
    assert "address already in use" in err.decode()
    assert "listening" not in out.decode()
    await echo_once(served.port)  # the first goes on


@pytest.mark.anyio
async def test_a_worker_link_takes_abort_and_ends_quietly_on_a_line_too_long() -> None:
    """What the supervisor says on the link after the hello: 'abort', or (never ours) garbage.

    Each 'abort' line is told; anything else is ignored; a line past the
    stream's limit ends the link as if the supervisor had gone, bounded,
    rather than buffering without end.
    """
    from adicom.workers import WorkerLink

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    link = WorkerLink(0, [], None, reader, writer)
    aborts: list[None] = []
    listening = asyncio.create_task(link.orphaned(on_abort=lambda: aborts.append(None)))
    flooding: asyncio.Task[None] | None = None
    try:
        await loop.sock_sendall(ours, b"abort\nsomething else\nabort\n")
        async with asyncio.timeout(5):
            while len(aborts) < 2:
                await asyncio.sleep(0.01)
        assert not listening.done()
        # No newline, past StreamReader's 64 KiB limit (the rest is never read).
        flooding = asyncio.create_task(loop.sock_sendall(ours, b"x" * (1 << 20)))
        async with asyncio.timeout(5):
            await listening
        assert len(aborts) == 2
    finally:
        listening.cancel()
        if flooding is not None:
            flooding.cancel()
            await asyncio.wait({flooding})
        ours.close()
        writer.close()
