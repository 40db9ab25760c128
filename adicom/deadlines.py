"""The association's one loop timer, and the waits it bounds.

Every deadline of an association shares one loop timer: the layers'
(ARTIM, a message's), the idle bound (checked here: _check_idle), and each
bounded wait (the connect, the answer to the A-ASSOCIATE-RQ, each
response, the release, the close, a full transport, a full window). It is
set for the earliest and moved only earlier: a deadline that passes unused
(a wait that ended) or moves later (each message restarts the idle bound)
leaves it as it is, and when it fires the driver does what is due and sets
it again for the rest. An association that connects, echoes and releases
then makes one loop timer, not one per wait (each is a TimerHandle made,
pushed on the loop's heap and cancelled: about 17k instructions on CPython
3.11's asyncio).

:class:`Deadlines` is a base of :class:`adicom.driver.Driver`, which fires
the timer (``_on_timer``); this module does not import it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from adicom.errors import DicomError, DicomTimeout, TimeoutKind
from adicom.fsm import State
from adicom.protocol import UpperLayer

__all__ = ["Deadlines", "Watched", "loop_clock"]

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
    # The one loop timer of the association and when it fires (see _arm;
    # the driver sets both first).
    _timer: asyncio.TimerHandle | None
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
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            # ``at`` is on the association's clock (loop_clock): as a delay,
            # so that a loop whose time() was replaced after the clock was
            # chosen (a test's fake clock) fires it on time all the same.
            self._timer = self._loop.call_later(at - self._clock(), self._on_timer)

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
        if now - self._last_received < idle_timeout:
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
