"""The listener: accepting connections, and running out of descriptors."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

import pytest

from adicom.listener import Listener

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
