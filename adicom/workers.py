"""Several processes serving one port: a supervisor and its workers (``adicom serve --workers N``).

One event loop runs on one core. To use more, run several processes, each
with its own loop and its own :class:`~adicom.server.Server`, all accepting
on the same port. The supervisor (:class:`Supervisor`) makes the listening
sockets, starts the workers, hands each its sockets, restarts a worker that
dies, and stops them all when told to. A worker (:class:`WorkerLink`) gets
its sockets and its instructions from the supervisor, says when it is
ready, reports its counts when it stops, and stops by itself if the
supervisor goes away.

How connections reach the workers. On Linux each worker gets its own
listening socket, all bound to the same address and port with
``SO_REUSEPORT``: the kernel spreads new connections over them by a hash of
the peer's address and port, so the spread is even over many connections
and says nothing of how busy each worker is. The supervisor keeps its copy
of every socket, so a worker's socket stays in the group while the worker
restarts, and the connections hashed to it wait in its backlog until the
new worker accepts them. Elsewhere one listening socket is shared by all
the workers and whichever wakes first takes a connection.

No threads, no executors, no ``multiprocessing`` (its pools and queues run
threads): the workers are started with :class:`subprocess.Popen` (fork and
exec), and their ends are watched on the event loop, through a pidfd where
the system has one (Linux 5.3 and later). asyncio's own subprocess support
is not used because on Python 3.11 it waits for each child in a thread.

Between the supervisor and each worker runs a pair of connected UNIX
sockets (:func:`socket.socketpair`). The supervisor writes one framed
message on it: the worker's number, the descriptors of its listening sockets
(inherited through ``pass_fds``) and a payload (for ``adicom serve``, its
parsed options), pickled. The worker answers ``ready`` once it listens, and
``stats {json}`` when it stops; the supervisor may later say ``abort`` (a
second signal: abort what is open now rather than wait out the grace). End
of file tells each side that the other has gone: a worker whose supervisor
was killed stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adicom.listener import DEFAULT_BACKLOG, bind

__all__ = ["Supervisor", "WorkerError", "WorkerLink", "listening_groups"]

log = logging.getLogger("adicom.workers")

#: The largest first message a worker accepts from its supervisor.
MAX_HELLO = 1 << 20
#: A worker that dies sooner than this after it became ready counts as a
#: failure in a row; one that lived longer starts the count again.
STABLE_AFTER = 10.0
_READY, _STATS, _ABORT = b"ready", b"stats ", b"abort"


class WorkerError(Exception):
    """The workers could not start, or one kept dying and the supervisor gave up."""


def reuse_port_spreads() -> bool:
    """Whether ``SO_REUSEPORT`` here spreads connections over the sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_groups(
    host: str,
    port: int,
    count: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool | None = None,
) -> list[list[socket.socket]]:
    """The listening sockets of ``count`` workers on ``host:port``: one list per worker.

    With ``reuse_port`` (default: where it spreads connections, see
    :func:`reuse_port_spreads`) each worker gets sockets of its own, bound
    with ``SO_REUSEPORT``; otherwise every worker gets the same sockets.
    Port 0 picks a free port, the same for all. Raises OSError.
    """
    if reuse_port is None:
        reuse_port = reuse_port_spreads()
    if not reuse_port:
        shared = bind(host, port, backlog=backlog)
        return [shared] * count
    if port != 0:
        # SO_REUSEPORT would let us join sockets another process of this
        # user already listens with (a second server started by mistake):
        # traffic would be split between the two without a word. A plain
        # bind first fails with "address in use" when anyone listens there.
        for sock in bind(host, port, backlog=1):
            sock.close()
    groups: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            group = bind(host, port, backlog=backlog, reuse_port=True)
            groups.append(group)
            port = group[0].getsockname()[1]
    except BaseException:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def describe_exit(code: int) -> str:
    """A child's exit code as words: ``exited with code 1``, ``was killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


async def _exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait, on the event loop and without a thread, until ``proc`` ends; its exit code."""
    if proc.returncode is not None:
        return proc.returncode
    pidfd_open = getattr(os, "pidfd_open", None)
    pidfd = None
    if pidfd_open is not None:
        with contextlib.suppress(OSError):
            pidfd = pidfd_open(proc.pid)
    if pidfd is None:
        # No pidfd (not Linux, or an old kernel): look every 0.2 s.
        while (code := proc.poll()) is None:
            await asyncio.sleep(0.2)
        return code
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    # The pidfd turns readable when the process ends (pidfd_open(2)).

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return proc.wait()  # already over: reaps it at once


@dataclass(eq=False)
class _Slot:
    """One worker's place: its sockets, and the process now in it."""

    index: int
    sockets: list[socket.socket]
    proc: subprocess.Popen[bytes] | None = None
    ready: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None
    writer: asyncio.StreamWriter | None = None
    #: What the last worker in this place reported when it stopped.
    stats: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0


class Supervisor:
    """Runs ``count`` worker processes accepting on ``host:port``, and restarts any that dies.

    ``command(fd)`` is the argv of a worker, given the descriptor of its end
    of the link; the worker calls :meth:`WorkerLink.open` with it.
    ``payload`` (picklable) is handed to every worker. A worker must say it
    is ready within ``start_timeout`` seconds. :meth:`stop` sends SIGTERM
    to every worker and SIGKILL to those still there ``stop_timeout``
    seconds later. A worker that dies is restarted (after 0.25 s, doubling
    up to 8 s while it keeps dying within :data:`STABLE_AFTER` seconds);
    after ``max_failures`` such failures in a row the supervisor gives up.

    Use it so (``adicom serve --workers N`` does)::

        supervisor = Supervisor(command, 2, "127.0.0.1", 11112, payload=options)
        await supervisor.start()  # raises WorkerError if they cannot start
        await supervisor.serve(stop)  # until stop (an asyncio.Event) is set
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        count: int,
        host: str,
        port: int,
        *,
        payload: Any = None,
        backlog: int = DEFAULT_BACKLOG,
        reuse_port: bool | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        max_failures: int = 5,
    ) -> None:
        if count < 1:
            raise ValueError(f"workers must be 1 or more, not {count}")
        self.command, self.count = command, count
        self.host, self._requested_port = host, port
        self.payload = payload
        self.backlog = backlog
        self.reuse_port = reuse_port_spreads() if reuse_port is None else reuse_port
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.max_failures = max_failures
        self._slots: list[_Slot] = []
        self._stopping = False
        self._aborting = False
        self._starting = False
        self._failed: asyncio.Future[None] | None = None

    @property
    def port(self) -> int:
        """The port the workers accept on (useful after ``port=0``)."""
        if not self._slots:
            raise RuntimeError("the workers are not started")
        port: int = self._slots[0].sockets[0].getsockname()[1]
        return port

    @property
    def pids(self) -> list[int | None]:
        """The process ID of each worker now (None while one is being restarted)."""
        return [
            slot.proc.pid if slot.proc is not None and slot.proc.returncode is None else None
            for slot in self._slots
        ]

    @property
    def stats(self) -> list[dict[str, Any]]:
        """What each worker reported when it stopped (its server's counts), in order."""
        return [slot.stats for slot in self._slots]

    @property
    def restarts(self) -> list[int]:
        """How many times each worker was restarted."""
        return [slot.restarts for slot in self._slots]

    async def start(self) -> None:
        """Bind, start worker 0 and wait until it is ready, then the others.

        Worker 0 first, alone: what must happen once (an archive indexing
        what its folder holds, an error in the options) happens once. Raises
        OSError (the address) or WorkerError (a worker exited or was not
        ready in time); then nothing is left running.
        """
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        groups = listening_groups(
            self.host,
            self._requested_port,
            self.count,
            backlog=self.backlog,
            reuse_port=self.reuse_port,
        )
        self._slots = [_Slot(index, group) for index, group in enumerate(groups)]
        self._starting = True
        try:
            await self._launch(self._slots[:1])
            await self._launch(self._slots[1:])
            if self._failed.done():  # one that was ready died meanwhile
                self._failed.result()
        except BaseException:
            await self.stop()
            raise
        finally:
            self._starting = False

    async def _launch(self, slots: Sequence[_Slot]) -> None:
        """Start these workers; return when all are ready, raise at the first that is not."""
        if not slots:
            return
        loop = asyncio.get_running_loop()
        for slot in slots:
            slot.ready = loop.create_future()
            slot.task = loop.create_task(self._follow(slot))
        ready = [slot.ready for slot in slots if slot.ready is not None]
        done, _ = await asyncio.wait(ready, return_when=asyncio.FIRST_EXCEPTION)
        errors = [f.exception() for f in done]  # each retrieved, so never logged as lost
        for error in errors:
            if error is not None:
                raise error

    async def serve(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop`` is set, then :meth:`stop`; WorkerError if one kept dying."""
        assert self._failed is not None, "start() first"
        stopped = asyncio.get_running_loop().create_task(stop.wait())
        try:
            waits: set[asyncio.Future[Any]] = {stopped, self._failed}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            await self.stop()
        if self._failed.done():
            self._failed.result()  # raises the WorkerError

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those not gone within ``stop_timeout``.

        Bounded; closes the listening sockets. Each worker stops accepting,
        aborts its open associations and reports its counts (see
        :attr:`stats`) before it exits.
        """
        self._stopping = True
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
            elif slot.task is not None:
                slot.task.cancel()  # waiting to restart a dead worker: no more
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for slot in self._slots:
                if slot.task in late and slot.proc is not None and slot.proc.returncode is None:
                    log.warning(
                        "worker %d (pid %d) still running %.0f s after SIGTERM: killing it",
                        slot.index,
                        slot.proc.pid,
                        self.stop_timeout,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            if late:
                _, late = await asyncio.wait(late, timeout=5.0)
            for task in late:
                task.cancel()
        closed: set[int] = set()
        for slot in self._slots:
            for sock in slot.sockets:
                if id(sock) not in closed:
                    closed.add(id(sock))
                    sock.close()
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)

    def abort(self) -> None:
        """Have every worker abort its open associations and exit now, without its grace.

        For a stop under way (a second signal); :meth:`stop` is still to be
        awaited. No worker is restarted from here on, and one starting now
        is told as soon as its link is open.
        """
        self._stopping = self._aborting = True
        for slot in self._slots:
            writer = slot.writer
            if writer is not None and not writer.is_closing():
                writer.write(_ABORT + b"\n")

    async def _follow(self, slot: _Slot) -> None:
        """Run the worker of ``slot`` again and again until stopping or giving up."""
        loop = asyncio.get_running_loop()
        assert self._failed is not None
        failures = 0
        while True:
            began = loop.time()
            try:
                code, was_ready = await self._run_once(slot)
                error = WorkerError(
                    f"worker {slot.index} {describe_exit(code)}"
                    + ("" if was_ready else " before it was ready")
                )
            except WorkerError as exc:  # could not even be started
                error, was_ready = exc, False
            if self._stopping:
                return
            if self._starting:
                # While start() runs, any worker that ends fails the start.
                if slot.ready is not None and not slot.ready.done():
                    slot.ready.set_exception(error)
                elif not self._failed.done():
                    self._failed.set_exception(error)
                return
            quick = not was_ready or loop.time() - began < STABLE_AFTER
            failures = failures + 1 if quick else 1
            if failures >= self.max_failures:
                if not self._failed.done():
                    self._failed.set_exception(
                        WorkerError(f"{error}, {failures} times in a row: giving up")
                    )
                return
            delay = min(8.0, 0.25 * 2 ** (failures - 1))
            log.warning("%s; restarting it in %.2f s", error, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            slot.restarts += 1

    async def _run_once(self, slot: _Slot) -> tuple[int, bool]:
        """Start a worker in ``slot`` and follow it to its end: (exit code, was it ready)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(sock.fileno() for sock in slot.sockets)]
        try:
            proc = subprocess.Popen(
                list(self.command(theirs.fileno())),
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                # Its own process group: a terminal's Ctrl-C reaches only the
                # supervisor, which stops the workers in order.
                process_group=0,
            )
        except OSError as exc:
            ours.close()
            theirs.close()
            raise WorkerError(f"cannot start worker {slot.index}: {exc}") from None
        theirs.close()
        slot.proc = proc
        ended = loop.create_task(_exited(proc))
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        slot.writer = writer
        hello = pickle.dumps(
            {"index": slot.index, "fds": fds[1:], "payload": self.payload},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        was_ready = False
        late = loop.call_later(self.start_timeout, self._too_slow, slot, proc)
        try:
            writer.write(len(hello).to_bytes(4, "big") + hello)
            if self._aborting:  # started as abort() was called (see abort)
                writer.write(_ABORT + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
                while line := await reader.readline():
                    if line.rstrip() == _READY:
                        was_ready = True
                        late.cancel()
                        if slot.restarts:
                            log.warning("worker %d restarted as pid %d", slot.index, proc.pid)
                        if slot.ready is not None and not slot.ready.done():
                            slot.ready.set_result(None)
                    elif line.startswith(_STATS):
                        with contextlib.suppress(ValueError):
                            slot.stats = json.loads(line[len(_STATS) :])
            code = await ended
        finally:
            late.cancel()
            writer.close()
            if not ended.done():  # cancelled: do not leave it behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                ended.cancel()
        return code, was_ready

    def _too_slow(self, slot: _Slot, proc: subprocess.Popen[bytes]) -> None:
        if proc.returncode is None:
            log.warning(
                "worker %d (pid %d) not ready after %.0f s: killing it",
                slot.index,
                proc.pid,
                self.start_timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


class WorkerLink:
    """A worker's end of the link to its supervisor (see :class:`Supervisor`).

    In the worker process::

        link = await WorkerLink.open(fd)  # the fd given to command(fd)
        await server.start(link.sockets)
        link.ready()
        ...  # serve until link.orphaned() returns or a signal says stop
        link.report(server.stats)
    """

    def __init__(
        self,
        index: int,
        sockets: list[socket.socket],
        payload: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        #: This worker's number, 0 to count - 1 (a restarted worker keeps it).
        self.index = index
        #: Its listening sockets, ready to accept on.
        self.sockets = sockets
        #: What the supervisor handed every worker.
        self.payload = payload
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, fd: int, timeout: float = 30.0) -> WorkerLink:
        """Read the supervisor's message from the link ``fd`` (bounded by ``timeout``)."""
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        async with asyncio.timeout(timeout):
            size = int.from_bytes(await reader.readexactly(4), "big")
            if size > MAX_HELLO:
                raise WorkerError(f"the supervisor's message is too long ({size} bytes)")
            # Our own parent, over a socket pair only it and we hold.
            hello = pickle.loads(await reader.readexactly(size))
        sockets = [socket.socket(fileno=number) for number in hello["fds"]]
        return cls(hello["index"], sockets, hello["payload"], reader, writer)

    def ready(self) -> None:
        """Tell the supervisor this worker accepts connections."""
        self._writer.write(_READY + b"\n")

    def report(self, stats: dict[str, Any]) -> None:
        """Send the supervisor this worker's counts (before it exits)."""
        if not self._writer.is_closing():
            self._writer.write(_STATS + json.dumps(stats).encode() + b"\n")

    async def orphaned(self, on_abort: Callable[[], None] | None = None) -> None:
        """Return when the supervisor has gone (its end of the link closed).

        ``on_abort`` is called each time the supervisor says abort
        (:meth:`Supervisor.abort`).
        """
        with contextlib.suppress(ConnectionError, ValueError):  # ValueError: a line too long
            while line := await self._reader.readline():
                if line.rstrip() == _ABORT and on_abort is not None:
                    on_abort()

    async def aclose(self) -> None:
        """Flush what was said (bounded) and close the link."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._writer.drain()
        self._writer.close()
