"""Listening sockets and their accept loops, which survive running out of descriptors.

asyncio's own server logs a traceback for every accept() that fails for want
of resources, and retries in a way a flood of connections turns into
thousands of tracebacks. Here an accept that fails with EMFILE, ENFILE,
ENOBUFS or ENOMEM is logged once per interval, the loop backs off (doubling
from 50 ms to 1 s), and the associations already open are served meanwhile;
accepting resumes by itself when descriptors are free again.

Where the loop can watch a descriptor (``loop.add_reader``: every selector
loop, uvloop) the listening socket is watched for good and each wake-up
accepts the connections waiting, up to :data:`ACCEPTS_PER_CALLBACK`, in
that callback: no future, task switch or watch added and removed per
connection, as ``loop.sock_accept`` costs. The rest wait one loop turn (the
watch is level-triggered), so a burst of a thousand connections does not
hold the loop in one callback.

The listen backlog (the connections the kernel has completed and holds
until they are accepted) is :data:`DEFAULT_BACKLOG` unless the caller says
otherwise. Too small a backlog does not refuse a burst of connections: on
Linux the kernel drops the handshakes that find it full and the peers send
their SYN again a second later, so some associations wait a second or more
for no visible reason. The kernel caps it at ``net.core.somaxconn``.
Elsewhere (the proactor loop on Windows) a task per socket awaits
``loop.sock_accept``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence

from adicom.admission import RateLimitedLog
from adicom.client import tcp_socket

log = logging.getLogger("adicom")

__all__ = ["ACCEPTS_PER_CALLBACK", "DEFAULT_BACKLOG", "Listener", "bind"]

#: The listen backlog when the caller gives none (the kernel caps it at
#: net.core.somaxconn, 4096 on Linux since 5.4).
DEFAULT_BACKLOG = 128
#: Connections one wake-up of a listening socket accepts; the rest the next.
ACCEPTS_PER_CALLBACK = 64

#: accept() failures that mean "not now": resources run out, not a broken socket.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_MIN, _RETRY_MAX = 0.05, 1.0
#: accept() failures that concern one connection only (reset while queued).
_GONE_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO})


class Listener:
    """Listens on ``host:port`` (every address it resolves to) and hands on each connection.

    ``on_accept(sock, address)`` is called for each accepted socket, which
    it then owns (it may close it at once).
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_accept: Callable[[socket.socket, tuple[str, int]], None],
        *,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        if backlog < 1:
            raise ValueError(f"the listen backlog must be 1 or more, not {backlog}")
        self.host, self.requested_port = host, port
        self.on_accept = on_accept
        self.backlog = backlog
        self.sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._log = RateLimitedLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Watched sockets (add_reader), and the retry timers of those that
        # ran out of descriptors, with their current back-off.
        self._watched: list[socket.socket] = []
        self._retry: dict[socket.socket, asyncio.TimerHandle] = {}
        self._delay: dict[socket.socket, float] = {}

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Bind and listen; raises OSError (address in use, not ours).

        ``sockets``, when given, are already listening (made by :func:`bind`,
        maybe in a supervising process, see :mod:`adicom.workers`): they are
        used as they are, and closed by :meth:`close`.
        """
        loop = asyncio.get_running_loop()
        if sockets is None:
            sockets = bind(self.host, self.requested_port, backlog=self.backlog)
        self.sockets = list(sockets)
        self._loop = loop
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                loop.add_reader(sock.fileno(), self._readable, sock)
            except NotImplementedError:
                self._tasks.append(loop.create_task(self._accept(sock)))
            else:
                self._watched.append(sock)

    @property
    def port(self) -> int:
        """The port listened on."""
        if not self.sockets:
            raise RuntimeError("the server is not listening")
        port: int = self.sockets[0].getsockname()[1]
        return port

    def _readable(self, sock: socket.socket) -> None:
        """Connections wait on ``sock``: accept up to ACCEPTS_PER_CALLBACK of them now."""
        for _ in range(ACCEPTS_PER_CALLBACK):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE_ERRORS:
                    continue  # that peer gave up before we took it: the next
                if exc.errno not in _RESOURCE_ERRORS:
                    if sock.fileno() != -1:
                        log.error("accepting on port %d failed: %s; no longer", self.port, exc)
                    self._unwatch(sock)
                    return
                delay = self._delay.get(sock, _RETRY_MIN)
                self._out_of_resources(exc, delay)
                self._delay[sock] = min(delay * 2, _RETRY_MAX)
                self._unwatch(sock)
                assert self._loop is not None
                self._retry[sock] = self._loop.call_later(delay, self._rewatch, sock)
                return
            self._delay.pop(sock, None)
            conn.setblocking(False)
            # Its family and type as plain attributes: asyncio reads them
            # thrice as it wraps the connection (see tcp_socket).
            self.on_accept(tcp_socket(conn, sock.family), address)

    def _out_of_resources(self, exc: OSError, delay: float) -> None:
        """Say (at most every few seconds) that accepting waits for descriptors."""
        self._log.warning(
            "accept",
            "cannot accept connections on port %d: %s; serving the open ones, retrying in %.2f s",
            self.port,
            os.strerror(exc.errno or 0),
            delay,
        )

    def _unwatch(self, sock: socket.socket) -> None:
        if sock in self._watched and self._loop is not None:
            self._watched.remove(sock)
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(sock.fileno())

    def _rewatch(self, sock: socket.socket) -> None:
        """Descriptors may be free again: watch ``sock`` once more."""
        self._retry.pop(sock, None)
        if sock.fileno() == -1 or self._loop is None or sock in self._watched:
            return
        self._loop.add_reader(sock.fileno(), self._readable, sock)
        self._watched.append(sock)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        delay = _RETRY_MIN
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    if sock.fileno() == -1:
                        return  # closed under us
                    raise
                self._out_of_resources(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            delay = _RETRY_MIN
            self.on_accept(conn, address)

    def close(self) -> None:
        """Stop accepting and close the listening sockets."""
        for task in self._tasks:
            task.cancel()
        for timer in self._retry.values():
            timer.cancel()
        self._retry.clear()
        for sock in list(self._watched):
            self._unwatch(sock)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []

    async def wait_closed(self) -> None:
        """Wait for the accept loops to end after :meth:`close`."""
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []


def bind(
    host: str, port: int, *, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets on ``host:port``, one per address it resolves to.

    Port 0 picks a free port, the same for every address. With
    ``reuse_port`` each socket gets ``SO_REUSEPORT`` (Linux: the kernel then
    spreads new connections over every socket bound so to the same address
    and port, by a hash of the peer's address and port); the caller may bind
    more on the port the first got. Raises OSError (address in use, not ours).
    """
    # Resolved here, once, at start: asyncio's getaddrinfo would run in
    # a thread, and adicom starts none. A listening address is a
    # literal or a local name (/etc/hosts), which resolves at once.
    infos = socket.getaddrinfo(
        host or None,
        port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            # (accept() reads the listening socket's family and type: see tcp_socket.)
            sock = tcp_socket(socket.socket(family, kind, proto), family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Port 0 picks a free port: every address then uses the one
            # the first was given.
            try:
                sock.bind((address[0], port, *address[2:]))
            except OSError as exc:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise OSError(
                    exc.errno, f"cannot listen on {address[0]}:{port}: {reason}"
                ) from None
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
