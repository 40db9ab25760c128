"""Each association keeps its deadlines on one loop timer (Driver._arm), and little else.

The connect's bound, the wait for the A-ASSOCIATE-AC, each response, the
release, the close, ARTIM and the idle bound all share it: an association
that connects, echoes and releases makes one loop timer on each side, not
one per wait. The bounds themselves are tested where they apply
(test_client_connect, test_association); here, that they share the timer
and that none outlives its association.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import adicom
from adicom.association import Association
from adicom.client import DEFAULT_CONTEXTS
from adicom.errors import DicomError, DicomTimeout, PeerUnreachable, TimeoutKind
from adicom.negotiation import build_request

pytestmark = pytest.mark.anyio

#: Bound of every wait in these tests (s).
BOUND = 5.0


@contextlib.contextmanager
def timers_made() -> Iterator[list[tuple[Callable[..., Any], asyncio.TimerHandle]]]:
    """Every loop timer made meanwhile (asyncio's loop: call_later goes through call_at)."""
    loop = asyncio.get_running_loop()
    made: list[tuple[Callable[..., Any], asyncio.TimerHandle]] = []
    call_at = loop.call_at

    def recording(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        handle = call_at(when, callback, *args, **kwargs)
        made.append((callback, handle))
        return handle

    loop.call_at = recording  # type: ignore[method-assign,assignment]
    try:
        yield made
    finally:
        del loop.call_at


def owners(made: list[tuple[Callable[..., Any], asyncio.TimerHandle]]) -> list[Any]:
    """Whose each timer is: the association whose timer it is, or the callback itself."""
    return [getattr(callback, "__self__", callback) for callback, _ in made]


async def test_an_association_cycle_makes_one_timer_on_each_side() -> None:
    # Server defaults: ARTIM and the idle bound armed on each association
    # it accepts; the client bounds the connect, the answer, the echo's
    # response and the release.
    async with adicom.Server("ANY-SCP", port=0) as server:
        assert server.idle_timeout is not None
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as warm:
                await warm.echo()
            await server.wait_idle()
            with timers_made() as made:
                async with adicom.connect(
                    "127.0.0.1", server.port, called_ae="ANY-SCP", connect_timeout=BOUND
                ) as assoc:
                    assert await assoc.echo() == 0
                await server.wait_idle()
    made_by = owners(made)
    requestors = [o for o in made_by if isinstance(o, Association) and o.requestor]
    acceptors = [o for o in made_by if isinstance(o, Association) and not o.requestor]
    assert requestors == [assoc]
    assert len(acceptors) == 1
    assert len(made_by) == 2, made_by  # no timer of anyone else's per association
    # Each was cancelled when its connection closed.
    assert all(handle.cancelled() for _, handle in made)


async def test_a_response_wait_set_earlier_moves_the_one_timer() -> None:
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ANY-SCP", connect_timeout=None, timeout=30.0
            ) as assoc:
                with timers_made() as made:
                    assert await assoc.echo() == 0  # 30 s: later than the timer, left as it is
                assert made == []
                loop = asyncio.get_running_loop()
                with timers_made() as made:
                    # A shorter bound than any so far: the timer moves earlier.
                    operation_timeout = 0.5
                    assoc.dimse_timeout = operation_timeout
                    assert await assoc.echo() == 0
                    assoc.dimse_timeout = 30.0
                ((callback, handle),) = made
                assert getattr(callback, "__self__", None) is assoc
                assert handle.when() <= loop.time() + operation_timeout


async def test_a_refused_connect_leaves_no_timer_behind() -> None:
    # No connection, so no connection_lost: the connect's bound is
    # cancelled by the failure itself, not left to fire later.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with timers_made() as made:
        with pytest.raises(PeerUnreachable):
            async with asyncio.timeout(BOUND):
                await adicom.open_association("127.0.0.1", port, connect_timeout=BOUND)
    assert made, "the connect is bounded"
    assert all(handle.cancelled() for _, handle in made)


async def test_the_answer_to_the_request_is_bounded_by_the_timer() -> None:
    # A peer that accepts the connection and never answers the
    # A-ASSOCIATE-RQ: the wait for the answer ends at its timeout, on the
    # association's timer (armed for the connect's longer bound first).
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await done
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        start = loop.time()
        with pytest.raises(DicomTimeout) as info:
            async with asyncio.timeout(BOUND):
                with timers_made() as made:
                    await adicom.open_association(
                        "127.0.0.1", port, connect_timeout=BOUND - 1, timeout=0.3
                    )
        done.set_result(None)
        assert info.value.which is TimeoutKind.ASSOCIATION
        assert 0.25 <= loop.time() - start < BOUND - 1
        # The connect's bound set the timer, the answer's shorter one moved
        # it earlier: both the association's own timer, nobody else's.
        made_by = owners(made)
        assert len(made_by) == 2 and made_by[0] is made_by[1]
        assert isinstance(made_by[0], Association) and made_by[0].requestor
        assert made[0][1].cancelled() and made[1][1].when() < made[0][1].when()


async def test_an_established_association_keeps_nothing_of_its_waits() -> None:
    # What a server holding thousands of associations keeps per association
    # is scanned by every full garbage collection: the objects of a wait
    # that is over (the answer to the A-ASSOCIATE-RQ, a response's bound)
    # go when it ends, and the send lock is made only when a message must
    # be sent in pieces.
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                assert await assoc.echo() == 0
                assert assoc._association_answer is None
                assert assoc._send_lock is None
                assert not assoc._watched
                assert not assoc.closed
            assert assoc.closed and assoc._timer is None


async def test_a_wait_begun_after_the_close_arms_no_timer() -> None:
    # The peer closes before the A-ASSOCIATE-RQ is answered; a request made
    # after that fails at once, and no timer is left to keep the closed
    # association alive until its bound.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with listener, asyncio.timeout(BOUND):
        port = listener.sockets[0].getsockname()[1]
        request = build_request(
            calling_ae="ANY-SCU", called_ae="ANY-SCP", contexts=DEFAULT_CONTEXTS
        )
        assoc = Association(requestor=True)
        assoc.prepare_request(request)
        await asyncio.get_running_loop().create_connection(assoc.protocol, "127.0.0.1", port)
        while not assoc.closed:
            await asyncio.sleep(0.01)
        with pytest.raises(DicomError):
            await assoc.request_association(request, 30)
        assert assoc._timer is None and not assoc._watched


async def test_the_idle_bound_closes_a_connection_that_never_asks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Sta2: connected, no A-ASSOCIATE-RQ. The idle bound, shorter than
    # ARTIM here, closes the connection (there is no association to abort)
    # and raises nothing in the timer's callback.
    async with adicom.Server("ANY-SCP", port=0, idle_timeout=0.3, artim_timeout=BOUND) as server:
        async with asyncio.timeout(BOUND):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            started = asyncio.get_running_loop().time()
            assert await reader.read() == b""  # closed, without a PDU
            assert asyncio.get_running_loop().time() - started < BOUND / 2
            writer.close()
    assert not [r for r in caplog.records if "Exception in callback" in r.getMessage()]


async def test_a_loop_clock_replaced_later_fires_the_timer_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The association reads the loop's clock as time.monotonic (chosen once
    # per loop); a time() installed on the loop afterwards (a test's fake
    # clock, ahead by 1,000 s) must not make its timer fire at once and
    # again at every turn: it is armed as a delay, not as a loop time.
    from adicom.driver import Driver

    loop = asyncio.get_running_loop()
    fired = 0
    on_timer = Driver._on_timer

    def counting(self: Driver) -> None:
        nonlocal fired
        fired += 1
        on_timer(self)

    monkeypatch.setattr(Driver, "_on_timer", counting)
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as first:
                await first.echo()
        real_time = loop.time
        with monkeypatch.context() as patched:
            patched.setattr(loop, "time", lambda: real_time() + 1000.0)
            # (No asyncio.timeout here: it reads the replaced clock too. The
            # association's own bounds hold: connect, ARTIM, DIMSE.)
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ANY-SCP", timeout=BOUND
            ) as idle:
                before = fired
                await asyncio.sleep(0.2)
                assert fired - before <= 2  # nothing is due within 0.2 s
                assert await idle.echo() == 0
