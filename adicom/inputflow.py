"""An association's input flow: the holds, the slices and the gathering pause.

Three things stop the reading of an association's connection, each on its
own, and reading resumes when the last of them lets go
(:meth:`InputFlow._read_again`):

- a consumer's holds (:meth:`InputFlow.hold_input`): a storage handler
  whose backlog is full;
- the driver's slices (:meth:`InputFlow._defer_input`): a peer whose input
  costs much work is parsed a slice per loop turn, and the loop's budget of
  input work per turn (:mod:`adicom.turns`) is shared by all its peers;
- a gathering pause (:meth:`InputFlow._gather`): pending responses nobody
  waits for are read a few at a time.

TCP pushes back on the peer meanwhile: what it sends stays in the kernel's
buffers, so none of these makes us keep more than one read.

:class:`InputFlow` is a base of :class:`adicom.driver.Driver`, which reads
(``_data_received``) and hands on what the layers give (``_after_io``);
this module does not import it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from adicom import protocol as ul
from adicom.operation import Operation
from adicom.turns import LoopTurns, Share

__all__ = ["InputFlow"]


class InputFlow:
    """What holds an association's input, and reading again (a base of the Driver)."""

    _loop: asyncio.AbstractEventLoop
    _clock: Callable[[], float]
    _transport: asyncio.Transport | None
    _ul: ul.UpperLayer
    _closed: bool
    #: The loop's input budget per turn, and this association's share of it.
    _turns: LoopTurns
    _share: Share
    #: The driver's outstanding operations, and requests waiting to be sent.
    _operations: dict[int, Operation]
    _reserved: int

    #: How many consumers of its input hold it (see hold_input).
    _input_holds = 0
    #: Input waits to be parsed in a later turn, reading nothing meanwhile.
    _input_deferred = False
    # An operation whose pending responses are read a few at a time (see
    # Association.gather_pending), and for how long reading pauses after a
    # read that brought only those. What the read being handled brought: 0
    # nothing yet, 1 only such responses, -1 something else too (the
    # driver's slot, set by its dispatch). And when the last such read was,
    # or the next is due after a pause; and the pause's timer while reading
    # pauses (an input hold of its own).
    _gathering: Operation | None = None
    _gather_delay = 0.0
    _gather_now: int
    _gather_last = -math.inf
    _gather_pause: asyncio.TimerHandle | None

    def _after_io(self, now: float | None = None) -> None:
        """Hand on the layers' events, write their output, arm their timers (the driver's)."""
        raise NotImplementedError

    def hold_input(self, hold: bool) -> None:
        """Stop reading from the peer (``hold``) or read again; TCP makes it wait meanwhile.

        For a consumer of received data that falls behind, such as a storage
        handler writing a large instance to disk a slice per loop turn: it
        holds the input while its backlog is full. Calls pair up, and
        several consumers may hold at once (two instances in flight): the
        input is read again when the last lets go. The driver's own pause
        (input parsed a slice per turn) wins: input it holds stays held.
        """
        self._input_holds = max(0, self._input_holds + (1 if hold else -1))
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._input_holds:
            transport.pause_reading()
        else:
            self._read_again()

    def _gather(self, now: float) -> None:
        """The read brought only pending responses nobody waits for: read again a little later.

        Reading pauses for ``_gather_delay`` (see Association.gather_pending),
        so that the next read takes the responses that came meanwhile at
        once, in one loop turn, not one turn (or two: a DCMTK peer writes a
        PDU's headers apart from its data) per response. The pause is an
        input hold of its own, beside a slow storage's
        (:meth:`hold_input`) and the driver's slices: reading resumes
        when none of them holds it; TCP keeps what arrives meanwhile.

        Only while they come often, the last read of them less than a pause
        ago (or when the pause after it ended): one every few seconds (large
        instances, a slow destination) would gather nothing, and pay a timer
        and two changes of the loop's watch for each. So the first pending
        response of a retrieve is read as it comes, and a retrieve of one
        instance (a pending response, then the final one) waits for nothing.

        And only while that operation is the association's only one: the
        response to any other (a C-ECHO beside the move, a second retrieve)
        must not wait for the pause; one started during a pause ends it
        (:meth:`_end_gather`).
        """
        last, self._gather_last = self._gather_last, now
        if now - last >= self._gather_delay or len(self._operations) > 1 or self._reserved:
            return
        transport = self._transport
        if transport is None or transport.is_closing() or self._gather_pause is not None:
            return
        transport.pause_reading()
        self._gather_pause = self._loop.call_later(self._gather_delay, self._gathered)
        self._gather_last = now + self._gather_delay  # when the next read comes, at the soonest

    def _gathered(self) -> None:
        """The pause of :meth:`_gather` is over: read again, unless input is held otherwise."""
        self._gather_pause = None
        self._read_again()

    def _read_again(self) -> None:
        """Resume reading unless input is still held.

        Three things hold it, each on its own: a consumer's holds
        (:meth:`hold_input`), the driver's slices (:meth:`_defer_input`)
        and a gathering pause (:meth:`_gather`); the last to let go reads again.
        """
        transport = self._transport
        if (
            transport is not None
            and not self._input_holds
            and not self._input_deferred
            and self._gather_pause is None
            and not transport.is_closing()
        ):
            transport.resume_reading()

    def _end_gather(self) -> None:
        """End a pause of :meth:`_gather` now (a request of ours is going out)."""
        pause = self._gather_pause
        if pause is not None:
            pause.cancel()
            self._gathered()

    def _defer_input(self) -> None:
        """Go on in a later turn, reading nothing meanwhile.

        Either this association's parse budget ran out (a peer whose PDUs
        cost much work, a flood of tiny PDVs, is served a slice at a time),
        or the loop's did (adicom.turns: many peers at once). TCP pushes
        back on the peer while it waits.
        """
        if self._input_deferred or self._transport is None:
            return
        self._input_deferred = True
        self._transport.pause_reading()
        self._turns.defer(self, self._share)

    def _parse_deferred(self) -> None:
        self._input_deferred = False
        if self._closed:
            return
        now = self._clock()
        self._ul.parse_pending(now)
        self._after_io()
        self._gather_now = 0  # reading resumes here, not after a pause (see _gather)
        self._turns.charge(self._clock() - now)
        if self._ul.input_pending:
            self._defer_input()
        else:
            self._read_again()
