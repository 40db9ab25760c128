"""What tasks await on an association: message queues and outstanding operations.

An :class:`Operation` is one request of ours and the responses it gets (PS3.7
9.1.2 to 9.1.4); a :class:`MessageQueue` hands messages to the one task that
waits for them (an operation's responses, or the peer's requests). The
association delivers into both from its transport callbacks; tasks take from
them with bounded waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from adicom.dimse import Command, CommandField, Message
from adicom.errors import (
    AssociationError,
    DicomError,
    DicomTimeout,
    DimseError,
    LocalProtocolError,
    TimeoutKind,
)

if TYPE_CHECKING:  # the association creates operations; only its type is needed here
    from adicom.association import Association

__all__ = ["MessageQueue", "Operation", "bounded"]

log = logging.getLogger("adicom")
_T = TypeVar("_T")

#: The requests C-CANCEL-RQ applies to (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3).
_CANCELLABLE = frozenset({CommandField.C_FIND_RQ, CommandField.C_GET_RQ, CommandField.C_MOVE_RQ})


async def bounded(
    awaitable: Awaitable[_T], which: TimeoutKind, seconds: float | None, detail: str = ""
) -> _T:
    """``await awaitable``, raising DicomTimeout(which) after ``seconds`` (None: no bound).

    The association's own waits are bounded by its one timer instead
    (:meth:`adicom.deadlines.Deadlines._bounded`); this is for the
    operations built on it (a C-FIND collected whole, an echo).
    """
    if seconds is None:
        return await awaitable
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise DicomTimeout(which, seconds, detail) from None


_END = Exception("end of messages")


class MessageQueue:
    """Messages for one consumer task, ended normally or with an error."""

    __slots__ = ("_error", "_items", "_ready", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._ready = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def put(self, message: Message) -> None:
        """Add a message (from a transport callback)."""
        self._items.append(message)
        self._wake()

    def fail(self, error: BaseException | None) -> None:
        """End the stream: with an error to raise, or None for a normal end."""
        if self._error is None:
            self._error = error if error is not None else _END
        self._wake()

    @property
    def ready(self) -> bool:
        """True when :meth:`get` would not wait: a message is there, or the stream ended."""
        return bool(self._items) or self._error is not None

    def interrupt(self, error: BaseException) -> None:
        """Raise ``error`` in the task waiting in :meth:`get`, if any; the stream goes on."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def arrival(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future set when a message arrives or the stream ends (for :meth:`take`).

        :meth:`get` in two steps, for a consumer that waits while nothing is
        there (:attr:`ready` False): await this (then clear ``_waiter``),
        then :meth:`take`; one coroutine less per message than :meth:`get`.
        """
        waiter = self._waiter = loop.create_future()
        return waiter

    def take(self) -> Message | None:
        """The next message, once :attr:`ready`: None when the stream ended normally."""
        if self._items:
            return self._items.popleft()
        if self._error is _END:
            return None
        if self._error is not None:
            raise self._error
        raise LocalProtocolError("no message to take: wait for one first")

    async def get(self) -> Message | None:
        """The next message; None once the stream ended normally.

        A backlog (a fast peer's C-FIND responses) is handed out with a
        pass through the event loop every few messages, so decoding it
        never holds the loop for long.
        """
        if self._items:
            self._ready += 1
            if self._ready >= 16:
                self._ready = 0
                await asyncio.sleep(0)
        while not self._items:
            if self._error is _END:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Operation:
    """An outstanding request and its responses (PS3.7 9.1.2 to 9.1.4).

    Responses come in order; pending ones (0xFF00, 0xFF01) are followed by
    exactly one final response. Waiting for each is bounded by the
    association's DIMSE timeout; when it runs out the association is
    aborted, since a late response could no longer be told from another's.
    Made by :meth:`Association.start_operation
    <adicom.association.Association.start_operation>`.
    """

    __slots__ = (
        "_deadline",
        "_name",
        "_pending_taker",
        "_responses",
        "_timeout",
        "association",
        "cancel_sent",
        "command_field",
        "context_id",
        "done",
        "message_id",
    )

    def __init__(
        self,
        association: Association,
        context_id: int,
        message_id: int,
        command_field: int,
        name: str | None = None,
    ) -> None:
        self.association = association
        self.context_id = context_id
        #: The request's Message ID (PS3.7 9.3.1.1).
        self.message_id = message_id
        #: The request's Command Field (C-FIND-RQ, C-STORE-RQ, ...).
        self.command_field = command_field
        self._name = name
        self._responses = MessageQueue()
        #: While a wait for a response is bounded: when it ends (loop time),
        #: and its length (see Association._watch).
        self._deadline = 0.0
        self._timeout = 0.0
        #: Takes pending responses in the transport callback (see take_pending).
        self._pending_taker: Callable[[Command], None] | None = None
        #: True once the final response arrived (or the operation was given up).
        self.done = False
        #: True once C-CANCEL-RQ was sent.
        self.cancel_sent = False

    @property
    def name(self) -> str:
        """The name of the responses, e.g. ``"C-FIND-RSP"`` (for messages and logs)."""
        if self._name is None:
            try:
                self._name = CommandField(self.command_field | 0x8000).name.replace("_", "-")
            except ValueError:
                self._name = f"response to command 0x{self.command_field:04X}"
        return self._name

    @property
    def cancellable(self) -> bool:
        """True for C-FIND, C-GET and C-MOVE, which C-CANCEL-RQ can stop."""
        return self.command_field in _CANCELLABLE

    def take_pending(self, taker: Callable[[Command], None] | None) -> None:
        """Hand pending responses to ``taker`` as they arrive; None: queue them again.

        For a caller that only counts them (a C-GET or C-MOVE without a
        progress callback): each pending response is then taken in the
        transport callback that received it, and the task waiting in
        :meth:`next_response` wakes only for the final one, not once per
        sub-operation. ``taker`` runs in that callback: it must be quick
        and must not raise. A pending response still re-arms the wait's
        DIMSE timeout, as each response restarts it (PS3.7 9.1.2.1, and
        PS3.4 C.4.2.3 / C.4.3.3: a retrieve's responses come one per
        sub-operation). Responses queued before stay queued, in order.
        """
        self._pending_taker = taker

    def deliver(self, message: Message) -> None:
        """A response arrived (called by the association)."""
        taker = self._pending_taker
        if taker is not None and not self._responses.ready:
            command = message.command
            status = command.status
            if status == 0xFF00 or status == 0xFF01:  # pending (PS3.7 C.4)
                taker(command)
                if self._deadline:
                    # A task waits (bounded): the response restarts its wait.
                    self._deadline = self.association._clock() + self._timeout
                return
        self._responses.put(message)

    def fail(self, error: DicomError) -> None:
        """The association ended before the final response (called by the association)."""
        self._responses.fail(error)

    def forget(self) -> None:
        """Give up on the responses: later ones are logged and dropped."""
        self.done = True
        self.association.forget(self)

    async def next_response(self, timeout: float | None = None) -> Message:
        """The next response; raises DicomTimeout (and aborts) if none comes in time."""
        if self.done:
            raise LocalProtocolError(f"{self.name}: the final response has been received")
        association = self.association
        seconds = association.dimse_timeout if timeout is None else timeout
        responses = self._responses
        try:
            if seconds is None or responses._items or responses._error is not None:  # .ready
                reply = await responses.get()
            else:
                # Bounded by the association's watchdog: one deadline for
                # all its waits, not a timer made and cancelled per response.
                # Nothing is there yet: what get() does, without its
                # coroutine (arrival, then take).
                association._watch(self, seconds)
                try:
                    # responses.arrival(), then take(), inline (every response).
                    responses._waiter = waiter = association._new_future()
                    await waiter
                finally:
                    responses._waiter = None
                    association._watched.pop(self, None)  # association._unwatch(self)
                    self._deadline = 0.0  # no wait to re-arm (see deliver)
                reply = responses._items.popleft() if responses._items else responses.take()
        except DicomTimeout:
            self.forget()
            association.abort()
            raise
        except DicomError:
            self.forget()
            raise
        if reply is None:
            self.forget()
            raise AssociationError(f"the association ended before the final {self.name}")
        status = reply.command.status
        if status is None:
            self.forget()
            raise DimseError(0xFFFF, f"{self.name} without a status")
        if status != 0xFF00 and status != 0xFF01:  # not pending (PS3.7 C.4; status_category)
            self.done = True
        return reply

    def _expired(self) -> None:
        """The wait for a response ran out (called by the association's watchdog)."""
        self._responses.interrupt(DicomTimeout(TimeoutKind.DIMSE, self._timeout, f"no {self.name}"))

    async def result(self) -> Command:
        """The final response's command (pending responses before it are skipped)."""
        while True:
            reply = await self.next_response()
            if self.done:
                return reply.command

    async def cancel(self, wait: float = 5.0) -> Message | None:
        """Send C-CANCEL-RQ and wait up to ``wait`` seconds for the final response.

        Returns the final response (usually status 0xFE00, Cancel), or None
        when the peer did not answer in time: the association is then
        aborted, since its state is no longer known (PS3.7 9.3.2.3).
        Pending responses that arrive meanwhile are dropped.
        """
        association = self.association
        # The wait for the final response is bounded by ``wait`` in all:
        # pending responses are queued again, so none restarts it.
        self._pending_taker = None
        if self.done:
            return None
        if not association.is_established:
            self.forget()
            return None
        if not self.cancel_sent:
            self.cancel_sent = True
            cancel = Command(
                CommandField.C_CANCEL_RQ, message_id_being_responded_to=self.message_id
            )
            try:
                await association.send_message(self.context_id, cancel)
            except DicomError:
                self.forget()
                return None
        clock = asyncio.get_running_loop().time
        deadline = clock() + wait
        try:
            while not self.done:
                remaining = deadline - clock()
                if remaining <= 0:
                    raise DicomTimeout(TimeoutKind.CANCEL, wait)
                reply = await self.next_response(remaining)
                if self.done:
                    return reply
        except DicomTimeout:
            log.warning("%s: no final response %g s after C-CANCEL; aborting", self.name, wait)
            self.forget()
            association.abort()
        except DicomError:
            self.forget()
        return None
