"""The server answers an A-ASSOCIATE-RQ in the transport callback when nothing in it awaits.

Only the user identity hook awaits; without one the request is accepted or
rejected in the callback that read it, and the association's task is woken
only by what needs it (a request it must answer, the release, the close).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import adicom
from adicom import events
from adicom.errors import AssociationAborted, AssociationRejected, ConnectionClosed
from adicom.events import Hooks
from adicom.pdu import UserIdentityRQ
from adicom.server import AssociationInfo

pytestmark = pytest.mark.anyio

#: Bound of every wait in these tests (s).
BOUND = 5.0


def _answered_in(hooks: Hooks) -> list[str]:
    """Where each Accepted or Rejected event was told: in a task, or a transport callback."""
    where: list[str] = []

    def record(event: events.Event) -> None:
        where.append("task" if asyncio.current_task() is not None else "callback")

    hooks.subscribe(events.Accepted, record)
    hooks.subscribe(events.Rejected, record)
    return where


async def test_without_an_identity_hook_the_request_is_answered_in_the_callback() -> None:
    hooks = Hooks()
    where = _answered_in(hooks)
    async with adicom.Server("ANY-SCP", port=0, hooks=hooks) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
            with pytest.raises(AssociationRejected):
                await adicom.open_association("127.0.0.1", server.port, called_ae="OTHER")
            await server.wait_idle()
        assert where == ["callback", "callback"]
        assert server.stats["accepted"] == 1
        assert server.stats["released"] == 1
        assert server.stats["rejected"] == 1
        assert server.stats["aborted"] == 0
        assert (server.admission.pending, server.admission.associated) == (0, 0)


async def test_with_an_identity_hook_the_task_answers() -> None:
    hooks = Hooks()
    where = _answered_in(hooks)
    seen: list[bytes] = []

    async def identity(rq: UserIdentityRQ, info: AssociationInfo) -> bytes | None:
        await asyncio.sleep(0)
        seen.append(rq.primary_field)
        return b""

    async with adicom.Server("ANY-SCP", port=0, hooks=hooks, user_identity=identity) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect(
                "127.0.0.1",
                server.port,
                called_ae="ANY-SCP",
                user_identity=UserIdentityRQ(1, b"alice"),
            ) as assoc:
                assert await assoc.echo() == 0
            await server.wait_idle()
    assert seen == [b"alice"]
    assert where == ["task"]
    assert server.stats["accepted"] == 1


async def test_a_required_identity_missing_is_refused_in_the_callback() -> None:
    hooks = Hooks()
    where = _answered_in(hooks)
    async with adicom.Server("ANY-SCP", port=0, hooks=hooks, require_identity=True) as server:
        async with asyncio.timeout(BOUND):
            with pytest.raises(AssociationRejected):
                await adicom.open_association("127.0.0.1", server.port, called_ae="ANY-SCP")
            await server.wait_idle()
    assert where == ["callback"]
    assert (server.stats["rejected"], server.stats["aborted"]) == (1, 0)


async def test_a_connection_closed_before_its_request_counts_as_nothing() -> None:
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            while server.admission.pending == 0:
                await asyncio.sleep(0.005)
            writer.close()
            await writer.wait_closed()
            await server.wait_idle()
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
            await server.wait_idle()
    assert server.stats == {
        "accepted": 1,
        "rejected": 0,
        "aborted": 0,
        "released": 1,
        "refused": 0,
        "tls_failed": 0,
    }
    assert (server.admission.pending, server.admission.associated) == (0, 0)


async def test_artim_closes_a_connection_that_sends_no_request() -> None:
    async with adicom.Server("ANY-SCP", port=0, artim_timeout=0.2) as server:
        async with asyncio.timeout(BOUND):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            # The server closes it when ARTIM runs out (PS3.8 9.1.5).
            assert await reader.read() == b""
            writer.close()
            await server.wait_idle()
    assert server.stats["aborted"] == 0
    assert (server.admission.pending, server.admission.associated) == (0, 0)


class _FailingAudit:
    """An audit trail that fails on the first association it is told of."""

    def __init__(self) -> None:
        self.failed = False

    def association(self, *args: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("the audit trail broke")

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def test_an_error_answering_in_the_callback_aborts_that_association_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit: Any = _FailingAudit()
    async with adicom.Server("ANY-SCP", port=0, audit=audit) as server:
        async with asyncio.timeout(BOUND):
            with pytest.raises((AssociationAborted, ConnectionClosed)):
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as a:
                    await a.echo()
            await server.wait_idle()
            # The server goes on.
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
            await server.wait_idle()
    assert audit.failed
    assert server.stats["aborted"] == 1
    assert server.stats["released"] == 1
    assert "the audit trail broke" in caplog.text
    assert (server.admission.pending, server.admission.associated) == (0, 0)


async def test_a_pdu_before_the_request_is_no_association() -> None:
    """An A-RELEASE-RQ in Sta2 is answered A-ABORT (AA-1); the server counts no association."""
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
            answer = await reader.read(10)
            writer.close()
            await server.wait_idle()
    assert answer[:1] == b"\x07"  # A-ABORT
    assert server.stats["aborted"] == 0
    assert server.stats["accepted"] == 0


async def test_wait_request_before_and_after_the_request_and_after_a_close() -> None:
    from adicom.association import Association
    from adicom.pdu import AAssociateRJ

    loop = asyncio.get_running_loop()
    acceptors: list[Association] = []

    def protocol() -> asyncio.BaseProtocol:
        acceptor = Association(requestor=False)
        acceptors.append(acceptor)
        return acceptor.protocol()

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(BOUND):
            requestor = asyncio.create_task(
                adicom.open_association("127.0.0.1", port, called_ae="SOMEONE")
            )
            while not acceptors:
                await asyncio.sleep(0.005)
            request = await acceptors[0].wait_request()  # waits for it
            assert request is not None and request.called_ae == "SOMEONE"
            assert await acceptors[0].wait_request() is request  # at once, the second time
            acceptors[0].reject(AAssociateRJ(1, 1, 7))
            with pytest.raises(AssociationRejected):
                await requestor
            await acceptors[0].wait_closed(BOUND)
            # A connection that closes without a request: None, even asked after the close.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            while len(acceptors) < 2 or not acceptors[1].closed:
                await asyncio.sleep(0.005)
            assert await acceptors[1].wait_request() is None
