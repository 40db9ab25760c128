"""Each association keeps its deadlines as one, on the loop's shared timer (LoopTimer).

The connect's bound, the wait for the A-ASSOCIATE-AC, each response, the
release, the close, ARTIM and the idle bound all share the association's
one entry in its loop's LoopTimer: an association that connects, echoes and
releases makes no loop timer of its own, on either side. The bounds
themselves are tested where they apply (test_client_connect,
test_association); here, that they share the timer and that none outlives
its association. The LoopTimer itself: test_deadlines.
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
from adicom.deadlines import LoopTimer, TimerEntry, TimerOwner
from adicom.errors import DicomError, DicomTimeout, PeerUnreachable, TimeoutKind
from adicom.negotiation import build_request

pytestmark = pytest.mark.anyio

#: Bound of every wait in these tests (s).
BOUND = 5.0


class Calls:
    """Counts the calls of ``kind.name`` (patched for the test: ``count``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kind: type, name: str) -> None:
        self.count = 0
        original = getattr(kind, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(kind, name, counting)


@contextlib.contextmanager
def timers_made() -> Iterator[list[tuple[Callable[..., Any], asyncio.TimerHandle]]]:
    """Every loop timer made meanwhile (asyncio's call_later goes through call_at; uvloop's not)."""
    loop = asyncio.get_running_loop()
    made: list[tuple[Callable[..., Any], asyncio.TimerHandle]] = []
    name = "call_at" if isinstance(loop, asyncio.BaseEventLoop) else "call_later"
    original = getattr(loop, name)

    def recording(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        handle = original(when, callback, *args, **kwargs)
        made.append((callback, handle))
        return handle

    setattr(loop, name, recording)
    try:
        yield made
    finally:
        delattr(loop, name)


@contextlib.contextmanager
def entries_added(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[tuple[TimerOwner, float, TimerEntry]]]:
    """Every entry given to an owner by a LoopTimer meanwhile: (owner, time, entry)."""
    added: list[tuple[TimerOwner, float, TimerEntry]] = []
    add = LoopTimer.add

    def recording(self: LoopTimer, owner: TimerOwner, at: float) -> TimerEntry:
        entry = add(self, owner, at)
        added.append((owner, at, entry))
        return entry

    with monkeypatch.context() as patched:
        patched.setattr(LoopTimer, "add", recording)
        yield added


def owners(made: list[tuple[Callable[..., Any], asyncio.TimerHandle]]) -> list[Any]:
    """Whose each timer is: the object whose method it calls, or the callback itself."""
    return [getattr(callback, "__self__", callback) for callback, _ in made]


async def test_an_association_cycle_makes_no_loop_timer_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Server defaults: ARTIM and the idle bound kept for each association
    # it accepts; the client bounds the connect, the answer, the echo's
    # response and the release. The first cycle sets the loop's timer; a
    # second one, with the same bounds, comes later than it and makes none.
    async with adicom.Server("ANY-SCP", port=0) as server:
        assert server.idle_timeout is not None
        async with asyncio.timeout(BOUND):
            with timers_made() as first:
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as warm:
                    await warm.echo()
                await server.wait_idle()
            with timers_made() as made, entries_added(monkeypatch) as added:
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                    entry = assoc._timer
                    assert entry is not None and entry[2] is assoc  # kept, on the loop's timer
                    assert await assoc.echo() == 0
                await server.wait_idle()
            timer = assoc._loop_timer
    # What the first cycle made was the loop's timer, not an association's.
    assert first and all(isinstance(owner, LoopTimer) for owner in owners(first))
    assert made == []
    added_by = [owner for owner, _, _ in added]
    requestors = [o for o in added_by if isinstance(o, Association) and o.requestor]
    acceptors = [o for o in added_by if isinstance(o, Association) and not o.requestor]
    assert set(requestors) == {assoc}
    assert len(set(acceptors)) == 1
    assert len(added_by) == len(requestors) + len(acceptors)
    # Each was dropped when its connection closed: the heap holds neither.
    assert assoc._timer is None and acceptors[0]._timer is None
    assert all(entry[2] is None for _, _, entry in added)
    assert len(timer) == 0


async def test_a_response_wait_set_earlier_moves_the_loop_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with adicom.Server("ANY-SCP", port=0) as server:
        async with asyncio.timeout(BOUND):
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ANY-SCP", connect_timeout=None, timeout=30.0
            ) as assoc:
                with timers_made() as made, entries_added(monkeypatch) as added:
                    assert await assoc.echo() == 0  # 30 s: later than its deadline, left as it is
                assert made == [] and added == []
                loop = asyncio.get_running_loop()
                with timers_made() as made, entries_added(monkeypatch) as added:
                    # A shorter bound than any so far: the association's
                    # deadline moves earlier, and so does the loop's timer.
                    operation_timeout = 0.5
                    assoc.dimse_timeout = operation_timeout
                    assert await assoc.echo() == 0
                    assoc.dimse_timeout = 30.0
                ((owner, at, _),) = added
                assert owner is assoc and at <= assoc._clock() + operation_timeout
                ((callback, handle),) = made
                assert getattr(callback, "__self__", None) is assoc._loop_timer
                # (uvloop counts whole milliseconds: its sums round either way)
                assert handle.when() <= loop.time() + operation_timeout + 0.001


async def test_a_refused_connect_leaves_no_timer_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # No connection, so no connection_lost: the connect's bound is dropped
    # by the failure itself, not left to fire later.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with entries_added(monkeypatch) as added:
        with pytest.raises(PeerUnreachable):
            async with asyncio.timeout(BOUND):
                await adicom.open_association("127.0.0.1", port, connect_timeout=BOUND)
    assert added, "the connect is bounded"
    assert all(entry[2] is None for _, _, entry in added)


async def test_the_answer_to_the_request_is_bounded_by_the_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A peer that accepts the connection and never answers the
    # A-ASSOCIATE-RQ: the wait for the answer ends at its timeout, on the
    # association's deadline (set for the connect's longer bound first).
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
                with entries_added(monkeypatch) as added:
                    await adicom.open_association(
                        "127.0.0.1", port, connect_timeout=BOUND - 1, timeout=0.3
                    )
        done.set_result(None)
        assert info.value.which is TimeoutKind.ASSOCIATION
        assert 0.25 <= loop.time() - start < BOUND - 1
        # The connect's bound set the deadline, the answer's shorter one
        # moved it earlier: both the association's own, nobody else's.
        (first_owner, first_at, first), (owner, at, _) = added
        assert first_owner is owner and isinstance(owner, Association) and owner.requestor
        assert at < first_at and first[2] is None  # the later one dropped when moved


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
    # again at every turn: the loop timer is armed as a delay, not as a loop
    # time. Counted where it would spin (the shared timer, which calls an
    # association only when its entry is due) and at the association.
    from adicom.driver import Driver

    loop = asyncio.get_running_loop()
    fired = Calls(monkeypatch, Driver, "_on_timer")
    woken = Calls(monkeypatch, LoopTimer, "_fire")
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
                before = fired.count, woken.count
                await asyncio.sleep(0.2)
                # nothing is due within 0.2 s
                assert fired.count - before[0] <= 2 and woken.count - before[1] <= 2
                assert await idle.echo() == 0


async def test_the_idle_bound_is_not_fired_again_and_again_in_one_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shared timer's entry is due when last + idle <= now; the driver's
    # idle check must sum the same way: now - last < idle can round the
    # other way (last = 32740.552, idle = 30), and the driver would set the
    # same due entry again, fired again in the same callback, FIRE_BATCH
    # times.
    from adicom.driver import Driver

    now = [32740.552 + 30.0]
    assoc = Association(requestor=False, idle_timeout=30.0)
    timer = LoopTimer(asyncio.get_running_loop(), lambda: now[0])
    assoc._clock = lambda: now[0]
    assoc._loop_timer = timer
    assoc._last_received = 32740.552
    fired = Calls(monkeypatch, Driver, "_on_timer")
    assoc._arm_idle_timer()
    timer._fire()
    if timer._handle is not None:
        timer._handle.cancel()
    assert fired.count == 1
    assoc.abort()
