"""The association's deadlines, on one timer shared by every association of the loop.

Every deadline of an association is kept as one: the layers' (ARTIM, a
message's), the idle bound (checked here: _check_idle), and each bounded
wait (the connect, the answer to the A-ASSOCIATE-RQ, each response, the
release, the close, a full transport, a full window). It is set for the
earliest and moved only earlier: a deadline that passes unused (a wait that
ended) or moves later (each message restarts the idle bound) leaves it as it
is, and when it fires the driver does what is due and sets it again for the
rest.

That one deadline per association is an entry in its loop's
:class:`LoopTimer`: a heap of every association's deadline under a single
loop timer, set for the earliest. An association's timer is thus a list
pushed on a heap and, when its connection closes, marked dropped; no loop
timer is made for it (a TimerHandle made, pushed on the loop's heap,
cancelled and popped again costs about 8k instructions on CPython 3.11's
asyncio, each time an association connects, echoes and releases), unless
its deadline is the earliest of the whole loop. Dropped entries are taken
off the heap when they reach its top, or all at once when they are half of
it, so the heap holds at most about twice as many entries as associations
have timers set. The loop timer's callback fires at most
:data:`FIRE_BATCH` associations and takes at most :data:`POP_BATCH`
entries off the heap; the rest waits for the next loop turn.

:class:`Deadlines` is a base of :class:`adicom.driver.Driver`, which fires
its timer (``_on_timer``); this module does not import it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import weakref
from collections.abc import Callable
from heapq import heapify, heappop, heappush
from typing import Any, Protocol, TypeVar

from adicom.errors import DicomError, DicomTimeout, TimeoutKind
from adicom.fsm import State
from adicom.protocol import UpperLayer

__all__ = [
    "FIRE_BATCH",
    "POP_BATCH",
    "Deadlines",
    "LoopTimer",
    "Watched",
    "loop_clock",
    "loop_timer",
]

log = logging.getLogger("adicom")
_T = TypeVar("_T")
_ASYNCIO_TIME = asyncio.BaseEventLoop.time


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or the C function it calls when it is asyncio's own.

    asyncio's ``BaseEventLoop.time`` is ``time.monotonic()`` behind a
    Python call (about twice the cost of the C call alone, read several
    times per message). A loop whose ``time`` is another (uvloop's, a
    test's fake clock, one set on the loop object) is read as it is.
    """
    clock = loop.time
    if getattr(clock, "__func__", None) is _ASYNCIO_TIME:
        return time.monotonic
    return clock


#: Associations one callback of the loop timer fires at most (each does
#: what is due on it: an abort, a wait failed); the rest are fired by the
#: next callback, in the next loop turn.
FIRE_BATCH = 64
#: Heap entries one callback of the loop timer takes off at most, dropped
#: ones included (the rest: the next loop turn).
POP_BATCH = 1024
# The shortest delay a loop timer is set for (see LoopTimer._set).
_MIN_DELAY = 0.001
# A heap at least this long is rebuilt without its dropped entries once
# they are more than half of it.
_COMPACT_MIN = 64


class TimerOwner(Protocol):
    """What a :class:`LoopTimer` fires: an association's driver."""

    def _on_timer(self) -> None:
        """Its deadline has come (called once per entry, by the loop timer)."""


#: An entry of a LoopTimer's heap: [when (loop_clock), order, owner or None once dropped].
#: A list, so that the heap compares entries in C (by time, then order)
#: and never their owners.
TimerEntry = list[Any]


class LoopTimer:
    """One loop timer for the deadlines of every association on an event loop.

    Get the loop's with :func:`loop_timer`. :meth:`add` gives an owner an
    entry (its deadline), :meth:`drop` takes it back (the owner no longer
    wants it, or wants another); at its time the owner's ``_on_timer()`` is
    called, from the loop timer's callback. The loop timer is set for the
    earliest entry and moved only earlier (see the module's text).
    """

    __slots__ = ("__weakref__", "_at", "_clock", "_handle", "_heap", "_loop", "_order", "_stale")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self._loop = loop
        #: The clock the entries' times are on (the associations', loop_clock).
        self._clock = clock
        self._heap: list[TimerEntry] = []
        self._order = itertools.count()  # equal times: first set, first fired
        self._stale = 0  # dropped entries still on the heap
        self._handle: asyncio.TimerHandle | None = None
        # When the loop timer fires (inf: not set; -inf: firing, set at the end).
        self._at = math.inf

    def __len__(self) -> int:
        """How many entries are set (not dropped)."""
        return len(self._heap) - self._stale

    def add(self, owner: TimerOwner, at: float) -> TimerEntry:
        """Call ``owner._on_timer()`` at ``at`` (on the clock), unless the entry is dropped."""
        entry = [at, next(self._order), owner]
        heappush(self._heap, entry)
        if at < self._at:
            self._set(at)
        return entry

    def drop(self, entry: TimerEntry) -> None:
        """Forget ``entry`` (from :meth:`add`, not fired yet): its owner is not called."""
        entry[2] = None  # nor kept alive by the heap
        self._stale = stale = self._stale + 1
        heap = self._heap
        if stale > len(heap) >> 1 and len(heap) >= _COMPACT_MIN:
            heap[:] = [kept for kept in heap if kept[2] is not None]
            heapify(heap)
            self._stale = 0

    def _set(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        # As a delay: ``at`` is on the associations' clock (loop_clock), and
        # a loop whose time() was replaced after it was chosen (a test's fake
        # clock) fires it on time all the same. At least a millisecond ahead:
        # uvloop keeps time and timers in whole milliseconds, so a shorter
        # one may run while its clock still reads before ``at``, find nothing
        # due and be set again, a busy loop until the next millisecond.
        delay = at - self._clock()
        if 0.0 < delay < _MIN_DELAY:
            delay = _MIN_DELAY
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        """The loop timer: fire the owners that are due, set it again for the rest."""
        self._handle = None
        self._at = -math.inf  # an owner that sets a deadline now sets no loop timer
        heap = self._heap
        now = self._clock()
        fired = popped = 0
        try:
            while heap and popped < POP_BATCH:
                entry = heap[0]
                owner = entry[2]
                if owner is None:  # dropped: taken off whatever its time
                    heappop(heap)
                    self._stale -= 1
                elif entry[0] <= now and fired < FIRE_BATCH:
                    heappop(heap)
                    fired += 1
                    # An exception goes to the loop's handler, as from a loop
                    # timer of the owner's own; the rest fire next turn.
                    owner._on_timer()
                else:
                    break
                popped += 1
        finally:
            self._at = math.inf
            if heap:
                # What is due and left (a batch's end) is fired next turn.
                self._set(heap[0][0])


# The LoopTimer of each loop by id(loop), held weakly (the associations on
# the loop and its pending loop timer hold it): a dict read and a call per
# association.
_TIMERS: dict[int, weakref.ref[LoopTimer]] = {}


def loop_timer(loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> LoopTimer:
    """The :class:`LoopTimer` of ``loop``, made on first use with ``clock`` (its loop_clock).

    The registry holds it weakly: it goes once nothing on the loop needs it,
    and never keeps a closed loop alive.
    """
    key = id(loop)
    ref = _TIMERS.get(key)
    timer = None if ref is None else ref()
    if timer is not None:
        # Alive, it holds its loop, so no other loop can have taken its id.
        return timer
    timer = LoopTimer(loop, clock)

    def forget(dead: weakref.ref[LoopTimer]) -> None:
        if _TIMERS.get(key) is dead:
            del _TIMERS[key]

    _TIMERS[key] = weakref.ref(timer, forget)
    return timer


class Watched(Protocol):
    """A wait bounded by its association's timer (see Deadlines._watch): an Operation, ..."""

    #: When it runs out (loop time), and its length in seconds; set by _watch.
    _deadline: float
    _timeout: float

    def _expired(self) -> None:
        """It ran out (called by the association's timer, once)."""


class _FutureWait:
    """A future of the association bounded by its timer: failed with DicomTimeout when due."""

    __slots__ = ("_deadline", "_detail", "_future", "_timeout", "_which")

    def __init__(self, future: asyncio.Future[Any], which: TimeoutKind, detail: str) -> None:
        self._future = future
        self._which = which
        self._detail = detail
        self._deadline = self._timeout = 0.0

    def _expired(self) -> None:
        if not self._future.done():
            self._future.set_exception(DicomTimeout(self._which, self._timeout, self._detail))


class Deadlines:
    """The timer of one association and the waits it watches (a base of the Driver)."""

    _loop: asyncio.AbstractEventLoop
    #: The loop's clock (loop_clock): what ``_loop.time()`` returns.
    _clock: Callable[[], float]
    #: Bounded waits (an operation's for its response, ...), each until its
    #: deadline (the driver makes the dict).
    _watched: dict[Watched, None]
    #: The connection is closed (the driver's; its timer is stopped for good).
    _closed: bool
    #: The loop's LoopTimer (the driver's: loop_timer).
    _loop_timer: LoopTimer
    # The association's entry in it and its time (see _arm; the driver sets
    # both first).
    _timer: TimerEntry | None
    _timer_at: float

    #: Abort when nothing at all arrives for this long (None: never).
    idle_timeout: float | None
    #: When something last arrived (the driver's, on the clock).
    _last_received: float
    _ul: UpperLayer

    def _on_timer(self) -> None:
        """The timer fired: do what is due, set it again (the driver's)."""
        raise NotImplementedError

    def _set_error(self, error: DicomError) -> None:
        """The association failed with ``error`` (the driver's)."""
        raise NotImplementedError

    def _close_soon(self) -> None:
        """Write what is queued, then close (the driver's)."""
        raise NotImplementedError

    def _peer_name(self) -> str:
        """The peer's AE title or address, for logs (the driver's)."""
        raise NotImplementedError

    def _arm(self, at: float) -> None:
        """Have the association's timer fire at ``at`` or earlier (never once closed).

        Once the connection is closed the timer stays stopped: a wait begun
        or a deadline set then is settled by the close, and a timer would
        only keep the association alive.
        """
        if at < self._timer_at and not self._closed:
            timers = self._loop_timer
            if self._timer is not None:
                timers.drop(self._timer)
            self._timer_at = at
            self._timer = timers.add(self, at)

    def _arm_idle_timer(self) -> None:
        """Have the timer fire when the idle bound runs out, if there is one."""
        if self.idle_timeout is not None:
            self._arm(self._last_received + self.idle_timeout)

    def _check_idle(self, now: float) -> None:
        """The timer fired: abort if nothing arrived for idle_timeout, else set it again."""
        # Received data only moves _last_received: the hot path never
        # touches the timer.
        idle_timeout = self.idle_timeout
        assert idle_timeout is not None
        # The same sum as the deadline set (_arm_idle_timer), so both agree
        # on whether it is due (now - last could round the other way).
        if self._last_received + idle_timeout > now:
            self._arm_idle_timer()
            return
        log.warning(
            "nothing received from %s for %g s; aborting",
            self._peer_name(),
            idle_timeout,
        )
        self._set_error(
            DicomTimeout(TimeoutKind.IDLE, idle_timeout, "nothing received from the peer")
        )
        if self._ul.state is not State.STA2:
            self._ul.abort(self._clock())
        # In Sta2 no A-ASSOCIATE-RQ came: there is no association to abort
        # (PS3.8 Table 9-10 has no A-ABORT request there), only the
        # connection to close, as ARTIM's expiry would (AA-2).
        self._close_soon()

    def _stop_timer(self) -> None:
        entry = self._timer
        if entry is not None:
            self._timer = None
            self._loop_timer.drop(entry)
        self._timer_at = math.inf

    def _watch(self, wait: Watched, seconds: float) -> None:
        """Bound ``wait`` (an operation's wait for its next response, ...) to ``seconds``.

        When the association's timer finds it due, it is dropped and its
        ``_expired()`` is called; :meth:`_unwatch` ends it before then.
        """
        deadline = self._clock() + seconds
        wait._deadline = deadline
        wait._timeout = seconds
        self._watched[wait] = None
        if deadline < self._timer_at:  # _arm's first test, inline: a call less per message
            self._arm(deadline)

    def _unwatch(self, wait: Watched) -> None:
        """``wait`` no longer waits (see :meth:`_watch`)."""
        self._watched.pop(wait, None)

    async def _bounded(
        self,
        future: asyncio.Future[_T],
        which: TimeoutKind,
        seconds: float | None,
        detail: str = "",
    ) -> _T:
        """``await future``, failed with DicomTimeout(which) after ``seconds`` (None: no bound).

        :func:`adicom.operation.bounded` for a future of this association,
        bounded by its one timer rather than a timer of its own.
        """
        if seconds is None:
            return await future
        wait = _FutureWait(future, which, detail)
        self._watch(wait, seconds)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # failed as the task was cancelled: retrieved
            raise
        finally:
            self._watched.pop(wait, None)

    def _expire_waits(self, now: float) -> None:
        # A loop timer may fire a hair before its time: a millisecond early
        # is as good as due for waits measured in seconds.
        now += 0.001
        later = math.inf
        for wait in list(self._watched):
            if wait._deadline <= now:
                del self._watched[wait]
                wait._expired()
            else:
                later = min(later, wait._deadline)
        if later < math.inf:
            self._arm(later)
