"""The listener: accepting connections, and running out of descriptors."""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest

from adicom.listener import ACCEPTS_PER_CALLBACK, DEFAULT_BACKLOG, Listener
from adicom.server import Server

pytestmark = pytest.mark.anyio


class _Flaky(socket.socket):
    """A listening socket whose first accepts fail as if descriptors ran out."""

    failures = 0

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def _listening(sock: socket.socket) -> socket.socket:
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def _until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


async def test_every_connection_of_a_burst_is_accepted_and_handed_on() -> None:
    accepted: list[socket.socket] = []
    listener = Listener("127.0.0.1", 0, lambda conn, _: accepted.append(conn))
    await listener.start()
    try:
        streams = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", listener.port) for _ in range(20))
        )
        await _until(lambda: len(accepted) == 20, "20 accepted")
        assert all(not conn.getblocking() for conn in accepted)  # ready for the loop
        # Their family and type are read without converting them (adicom.client.tcp_socket).
        assert all(type(conn) is not socket.socket for conn in accepted)
        assert all(conn.family == socket.AF_INET for conn in accepted)
    finally:
        listener.close()
        await listener.wait_closed()
        for conn in accepted:
            conn.close()
        for _, writer in streams:
            writer.close()
    assert listener.sockets == []


async def test_running_out_of_descriptors_pauses_accepting_then_it_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accepted: list[socket.socket] = []
    sock = _Flaky(socket.AF_INET, socket.SOCK_STREAM)
    sock.failures = 2
    _listening(sock)
    listener = Listener("127.0.0.1", 0, lambda conn, _: accepted.append(conn))
    await listener.start([sock])
    loop = asyncio.get_running_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="adicom"):
            start = loop.time()
            _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            await _until(lambda: len(accepted) == 1, "accepted after the back-off")
        # Two failures: waited 50 ms, then 100 ms, then took the connection.
        assert sock.failures == 0
        assert loop.time() - start >= 0.14
        warnings = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
        assert 1 <= len(warnings) <= 2  # rate-limited
        # Accepting goes on as before.
        _, second = await asyncio.open_connection("127.0.0.1", listener.port)
        await _until(lambda: len(accepted) == 2, "accepted at once")
    finally:
        listener.close()
        await listener.wait_closed()
        for conn in accepted:
            conn.close()
        writer.close()
        second.close()


def _connected_at_once(port: int, count: int) -> tuple[int, list[socket.socket]]:
    """Start ``count`` connects to ``port`` without giving the loop a turn.

    On loopback the handshake completes inside ``connect``, unless the
    listening socket's accept queue is full: then the kernel drops the SYN
    (and the peer would send it again a second later). So how many are
    connected at once, before anything is accepted, is the backlog plus one.
    """
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLOUT)
    return sum(1 for _, events in poller.poll(0) if events & select.POLLOUT), socks


@pytest.mark.skipif(sys.platform != "linux", reason="how a full accept queue behaves is Linux's")
@pytest.mark.parametrize(
    ("options", "backlog"),
    [({}, 500), ({"max_associations": 20}, DEFAULT_BACKLOG), ({"backlog": 12}, 12)],
)
async def test_the_server_listens_with_its_backlog(options: dict[str, Any], backlog: int) -> None:
    server = Server("SCP", port=0, **options)
    assert server.backlog == backlog
    async with server:
        connected, socks = _connected_at_once(server.port, backlog + 40)
        try:
            # The kernel holds backlog + 1 completed connections for accept().
            assert connected == backlog + 1
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize("backlog", [0, -3])
def test_a_backlog_below_one_is_refused(backlog: int) -> None:
    with pytest.raises(ValueError, match="listen backlog must be 1 or more"):
        Server("SCP", port=0, backlog=backlog)
    with pytest.raises(ValueError, match="listen backlog must be 1 or more"):
        Listener("127.0.0.1", 0, lambda conn, _: None, backlog=backlog)


async def test_one_wake_up_accepts_a_bounded_number_and_the_rest_next_turn() -> None:
    batches: list[int] = []
    accepted: list[socket.socket] = []

    def on_accept(conn: socket.socket, _: object) -> None:
        accepted.append(conn)
        batches[-1] += 1

    listener = Listener("127.0.0.1", 0, on_accept, backlog=4 * ACCEPTS_PER_CALLBACK)
    original = listener._readable

    def readable(sock: socket.socket) -> None:
        batches.append(0)
        original(sock)

    listener._readable = readable  # type: ignore[method-assign]
    await listener.start()
    count = 2 * ACCEPTS_PER_CALLBACK + 10
    connected, socks = _connected_at_once(listener.port, count)
    try:
        assert connected == count
        await _until(lambda: len(accepted) == count, "all accepted")
        # No wake-up took more than its share; the queue drained over several turns.
        assert max(batches) == ACCEPTS_PER_CALLBACK
        assert len([b for b in batches if b]) >= 3
    finally:
        listener.close()
        await listener.wait_closed()
        for sock in socks + accepted:
            sock.close()
