"""The loop's shared timer (adicom.deadlines.LoopTimer), alone and under associations.

Every association on a loop keeps its one deadline as an entry in the
loop's LoopTimer, a heap under a single loop timer. What that sharing could
get wrong, tested here: owners with different deadlines fired in order and
once each; one dropped while the others wait; a deadline moved earlier or
later; many owners due at once (a bounded batch per callback); an owner
whose callback raises; dropped entries piling up; the registry of loops.
The clock is a test's own where the order of firing is what is checked, so
no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

import adicom
from adicom import deadlines
from adicom.deadlines import FIRE_BATCH, POP_BATCH, LoopTimer, TimerEntry, loop_timer
from adicom.errors import DicomTimeout, TimeoutKind

pytestmark = pytest.mark.anyio

#: Bound of every wait in these tests (s).
BOUND = 5.0


class Clock:
    """A clock that moves only when told (the entries' times are on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """Records when its entry fired; can set another deadline from its callback."""

    def __init__(self, name: str, fired: list[str], clock: Clock | None = None) -> None:
        self.name = name
        self.fired = fired
        self.clock = clock
        self.entry: TimerEntry | None = None

    def _on_timer(self) -> None:
        self.entry = None
        self.fired.append(self.name)


def fire_all(timer: LoopTimer, turns: int = 100) -> int:
    """Call the loop timer's callback while it has something due; how many calls it took."""
    calls = 0
    while timer._heap and timer._heap[0][0] <= timer._clock() and calls < turns:
        timer._fire()
        calls += 1
    return calls


async def test_owners_fire_in_order_of_their_deadlines_once_each() -> None:
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    offsets = [7, 3, 9, 1, 5, 5, 2, 8]
    for index, offset in enumerate(offsets):
        timer.add(Owner(f"{offset}:{index}", fired, clock), clock.now + offset)
    assert len(timer) == len(offsets)
    clock.now += 4
    fire_all(timer)
    assert fired == ["1:3", "2:6", "3:1"]  # only what is due
    clock.now += 100
    fire_all(timer)
    # Equal times fire in the order they were set.
    assert fired == ["1:3", "2:6", "3:1", "5:4", "5:5", "7:0", "8:7", "9:2"]
    assert len(timer) == 0 and not timer._heap
    fire_all(timer)
    assert len(fired) == len(offsets)


async def test_a_dropped_entry_never_fires_and_is_not_kept_alive() -> None:
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    first = Owner("first", fired)
    timer.add(first, clock.now + 1)
    gone = Owner("gone", fired)
    entry = timer.add(gone, clock.now + 2)
    timer.add(Owner("last", fired), clock.now + 3)
    timer.drop(entry)
    assert len(timer) == 2
    dead = weakref.ref(gone)
    del gone
    gc.collect()
    assert dead() is None  # the heap keeps no dropped owner alive
    clock.now += 10
    fire_all(timer)
    assert fired == ["first", "last"]


async def test_a_deadline_moved_earlier_moves_the_loop_timer_and_fires_once() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock()
    timer = LoopTimer(loop, clock)
    fired: list[str] = []
    other = Owner("other", fired)
    timer.add(other, clock.now + 30)
    later = timer._handle
    assert later is not None and timer._at == clock.now + 30
    moved = Owner("moved", fired)
    entry = timer.add(moved, clock.now + 60)
    assert timer._handle is later  # later than the loop timer: left as it is
    # Moved earlier, as Deadlines._arm does it: a new entry, the old dropped.
    timer.drop(entry)
    timer.add(moved, clock.now + 10)
    assert timer._at == clock.now + 10 and later.cancelled()
    # (uvloop counts whole milliseconds: its sums round either way)
    assert timer._handle is not None and timer._handle.when() <= loop.time() + 10.001
    clock.now += 10
    fire_all(timer)
    assert fired == ["moved"]
    # Set again for what is left, the other owner's deadline.
    assert timer._at == clock.now + 20
    clock.now += 20
    fire_all(timer)
    assert fired == ["moved", "other"]
    timer._handle = None


async def test_a_deadline_moved_later_fires_after_the_earlier_ones() -> None:
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    moved = Owner("moved", fired)
    entry = timer.add(moved, clock.now + 1)
    timer.add(Owner("other", fired), clock.now + 5)
    timer.drop(entry)
    timer.add(moved, clock.now + 9)
    clock.now += 6
    fire_all(timer)
    assert fired == ["other"]
    clock.now += 3
    fire_all(timer)
    assert fired == ["other", "moved"]


async def test_many_owners_due_at_once_are_fired_a_batch_per_callback() -> None:
    # 5,000 associations due at the same moment must not hold the loop for
    # all of them in one callback: a batch, then the next loop turn.
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    count = 3 * FIRE_BATCH + 5
    for index in range(count):
        timer.add(Owner(str(index), fired), clock.now + 1)
    clock.now += 1
    timer._fire()
    assert len(fired) == FIRE_BATCH
    # The rest is due: the loop timer is set again, for now.
    assert timer._handle is not None and timer._at <= clock.now
    assert fire_all(timer) == 3
    assert fired == [str(index) for index in range(count)]


async def test_dropped_entries_are_taken_off_a_bounded_number_per_callback() -> None:
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    # More live entries than dropped ones (so no compaction), the dropped
    # ones earliest: one callback takes off at most POP_BATCH of them.
    live = 2 * POP_BATCH
    dropped = [timer.add(Owner("x", fired), clock.now + 1) for _ in range(POP_BATCH + 100)]
    for index in range(live):
        timer.add(Owner(str(index), fired), clock.now + 2)
    for entry in dropped:
        timer.drop(entry)
    assert len(timer._heap) == live + POP_BATCH + 100
    clock.now += 5
    timer._fire()
    assert fired == [] and len(timer._heap) == live + 100
    timer._fire()
    assert len(fired) == FIRE_BATCH and len(timer) == live - FIRE_BATCH


async def test_dropped_entries_never_outnumber_the_live_ones_for_long() -> None:
    # An association that connects and closes drops its entry; at 3,000
    # associations a second, each with a 30 s deadline, the heap would hold
    # 90,000 dropped entries until their time came. They are swept once
    # they are half of it.
    clock = Clock()
    timer = LoopTimer(asyncio.get_running_loop(), clock)
    fired: list[str] = []
    keep = [Owner(str(index), fired) for index in range(10)]
    for owner in keep:
        timer.add(owner, clock.now + 30)
    longest = 0
    for step in range(10_000):
        entry = timer.add(Owner("brief", fired), clock.now + 30 + step * 1e-3)
        timer.drop(entry)
        longest = max(longest, len(timer._heap))
    assert len(timer) == len(keep)
    assert longest <= 2 * 64 + 1
    clock.now += 100
    fire_all(timer)
    assert sorted(fired) == sorted(owner.name for owner in keep)


async def test_an_owner_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The exception goes to the loop's handler, as from a timer of the
    # owner's own, and the owners due after it still fire (next turn).
    loop = asyncio.get_running_loop()
    timer = LoopTimer(loop, loop.time)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    done: asyncio.Future[None] = loop.create_future()

    class Failing:
        def _on_timer(self) -> None:
            raise RuntimeError("broken owner")

    class Last:
        def _on_timer(self) -> None:
            done.set_result(None)

    try:
        now = loop.time()
        timer.add(Failing(), now + 0.01)
        timer.add(Last(), now + 0.02)
        async with asyncio.timeout(BOUND):
            await done
    finally:
        loop.set_exception_handler(None)
    assert [str(context.get("exception")) for context in errors] == ["broken owner"]


def test_each_loop_has_its_own_loop_timer_and_it_goes_with_the_loop() -> None:
    async def get() -> tuple[weakref.ref[LoopTimer], weakref.ref[asyncio.AbstractEventLoop]]:
        loop = asyncio.get_running_loop()
        timer = loop_timer(loop, loop.time)
        assert loop_timer(loop, loop.time) is timer
        assert deadlines._TIMERS[id(loop)]() is timer
        timer.add(Owner("pending", []), timer._clock() + 60)  # a loop timer left pending
        return weakref.ref(timer), weakref.ref(loop)

    first, first_loop = asyncio.run(get())
    second, second_loop = asyncio.run(get())
    gc.collect()
    # Both loops are closed and gone, and so are their timers (the registry
    # keeps neither alive), and their keys.
    assert first() is None and second() is None
    assert first_loop() is None and second_loop() is None
    assert all(ref() is not None for ref in deadlines._TIMERS.values())


async def test_associations_with_different_deadlines_one_cancelled_time_out_in_order() -> None:
    # Three associations on one loop to a peer that never answers the
    # A-ASSOCIATE-RQ, each bounded differently: the one cancelled meanwhile
    # takes its deadline with it, the others time out in the order of their
    # bounds, each with its own DicomTimeout.
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    # Held here: the registry holds it weakly, and it would go with the
    # last association (the deadlines' clock: the loop's, as theirs).
    timer = loop_timer(loop, deadlines.loop_clock(loop))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await done
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server, asyncio.timeout(BOUND):
        port = server.sockets[0].getsockname()[1]

        def opening(timeout: float) -> asyncio.Task[adicom.Association]:
            return asyncio.ensure_future(
                adicom.open_association("127.0.0.1", port, connect_timeout=None, timeout=timeout)
            )

        late = opening(1.5)
        early = opening(0.2)
        cancelled = opening(0.1)
        await asyncio.sleep(0.05)
        cancelled.cancel()
        finished, pending = await asyncio.wait({early, late}, return_when=asyncio.FIRST_COMPLETED)
        assert finished == {early} and pending == {late}
        with pytest.raises(DicomTimeout) as first:
            early.result()
        assert first.value.which is TimeoutKind.ASSOCIATION and first.value.seconds == 0.2
        with pytest.raises(DicomTimeout) as second:
            await late
        assert second.value.which is TimeoutKind.ASSOCIATION and second.value.seconds == 1.5
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        done.set_result(None)
    # They used the loop's timer, and nothing of theirs is left on it.
    assert deadlines._TIMERS[id(loop)]() is timer and len(timer) == 0


def test_on_uvloop_a_deadline_fires_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop keeps time and timers in whole milliseconds: a loop timer set
    # less than one ahead may run while the clock still reads before its
    # time; then nothing is due and it would be set again, and again, until
    # the next millisecond (hundreds of calls). LoopTimer sets none shorter.
    import uvloop

    from adicom.deadlines import loop_clock
    from tests.test_association_timer import Calls

    woken = Calls(monkeypatch, LoopTimer, "_fire")

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        clock = loop_clock(loop)
        timer = LoopTimer(loop, clock)
        counts = []
        for delay in (0.0102, 0.0011, 0.0021, 0.0505, 0.0309, 0.0157, 0.0233, 0.0071):
            done: asyncio.Future[None] = loop.create_future()

            class Owner:
                def __init__(self, done: asyncio.Future[None]) -> None:
                    self.done = done

                def _on_timer(self) -> None:
                    self.done.set_result(None)

            before = woken.count
            timer.add(Owner(done), clock() + delay)
            await asyncio.wait_for(done, 5)
            counts.append((delay, woken.count - before))
        return counts

    counts = uvloop.run(main())
    assert all(n <= 3 for _, n in counts), counts


async def test_an_entry_never_fires_before_its_time() -> None:
    now = [1000.0]
    timer = LoopTimer(asyncio.get_running_loop(), lambda: now[0])
    fired: list[Any] = []

    class Owner:
        def _on_timer(self) -> None:
            fired.append(self)

    timer.add(Owner(), 1001.0)
    now[0] = 1000.999
    timer._fire()
    assert fired == []
    now[0] = 1001.0
    timer._fire()
    assert len(fired) == 1
    if timer._handle is not None:
        timer._handle.cancel()
