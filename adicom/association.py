"""An association: the API over its asyncio driver.

:class:`Association` is what :func:`adicom.connect` returns and a server's
handlers get: DIMSE requests and responses (``start_operation``,
``send_message``, ``echo``, ...), release and abort, and the driver API that
:class:`~adicom.server.Server` and :func:`~adicom.client.open_association`
use (``request_association``, ``wait_request``, ``accept``, ``reject``).
The connection itself, its timers and its events are
:class:`~adicom.driver.Driver`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from adicom import events as ev
from adicom import protocol as ul
from adicom.dimse import (
    Command,
    CommandField,
    DatasetReader,
    Message,
    Priority,
    RequestTemplate,
    ResponseTemplate,
    SinkFactory,
    StatusCategory,
    c_store_rq,
    describe_status,
    status_category,
)
from adicom.driver import Driver
from adicom.errors import (
    AssociationAborted,
    AssociationRejected,
    DicomError,
    DicomTimeout,
    DimseError,
    LocalProtocolError,
    TimeoutKind,
)
from adicom.fsm import State
from adicom.negotiation import (
    ASYNC_WINDOW,
    Agreement,
    peer_max_pdu_problem,
    requestor_agreement,
)
from adicom.operation import Operation
from adicom.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ
from adicom.presentation import VERIFICATION, PresentationContext

__all__ = ["Association", "Message", "Operation"]

log = logging.getLogger("adicom")

# Members used once per association, looked up once: an Enum class attribute
# costs a slot call on Python 3.11 (EnumType.__getattr__).
_STA1 = State.STA1
_ASSOCIATION = TimeoutKind.ASSOCIATION
_RELEASE = TimeoutKind.RELEASE

#: Longest time (s) sending one message holds the event loop before
#: letting other work run.
SEND_SLICE = 0.002
#: How many batched messages (pending responses) may wait to leave in one
#: write: a system call per small message cost more than encoding it.
BATCH_MESSAGES = 16
#: A message's PDUs are written once this many bytes are waiting.
WRITE_BYTES = 256 * 1024
#: How long reading pauses after a read of only pending responses that
#: nobody waits for (see Association.gather_pending): a C-MOVE's final
#: response comes up to this much later, and its pending ones cost a loop
#: turn and a read for several rather than one or two each.
GATHER_DELAY = 0.002


#: C-ECHO-RQ, encoded once (its Message ID is filled in).
_ECHO_RQ = RequestTemplate(Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=VERIFICATION))
#: Requests whose plain responses (no field but the status) come from templates.
_TEMPLATED = frozenset({CommandField.C_ECHO_RQ, CommandField.C_STORE_RQ, CommandField.C_FIND_RQ})
# Read per message, as plain names: an Enum member read through its class
# costs a descriptor call (Python 3.11).
_STA6, _STA8 = State.STA6, State.STA8
_C_ECHO_RQ, _C_STORE_RQ = int(CommandField.C_ECHO_RQ), int(CommandField.C_STORE_RQ)
_FAILURE = StatusCategory.FAILURE
#: Responses encoded once, by (request's command field, SOP class, status).
_RESPONSES: dict[tuple[int, str | None, int], ResponseTemplate] = {}
#: The key and template of the last of them taken (a tuple key is made,
#: hashed and compared per response otherwise): one tuple, read once, so
#: that loops in two threads never see the key of one and the template of
#: another.
_last_response: tuple[int, str | None, int, ResponseTemplate] | None = None


class Association(Driver):
    """One DICOM association, requestor or acceptor, on the running event loop.

    Users get one from :func:`adicom.connect` (requestor) or in a server
    handler (acceptor) rather than building it; drivers of their own (a
    server, a client) use :meth:`protocol`, :meth:`request_association`,
    :meth:`wait_request`, :meth:`accept` and :meth:`reject`.
    """

    #: How long reading pauses after a read of only pending responses
    #: nobody waits for, by default (see :meth:`gather_pending`; 0: never).
    gather_delay: float = GATHER_DELAY
    #: The ID of the accepted Verification context, once echo() found it.
    _echo_context: int | None = None

    @property
    def contexts(self) -> dict[int, PresentationContext]:
        """Negotiated presentation contexts by ID (accepted and rejected)."""
        return self._dimse.contexts

    @property
    def peer_max_pdu(self) -> int:
        """The largest P-DATA-TF PDU the peer accepts (0: no limit)."""
        return self._dimse.peer_max_pdu

    @property
    def max_outstanding(self) -> int:
        """How many of our requests may await their response at once (PS3.7 D.3.3.3)."""
        return self._dimse.max_outstanding

    @property
    def max_incoming(self) -> int:
        """How many of the peer's requests may await our response at once."""
        return self._dimse.max_incoming

    @property
    def outstanding(self) -> int:
        """How many of our requests await their final response now."""
        return self._dimse.outstanding

    @property
    def on_dataset(self) -> SinkFactory | None:
        """Chooses where incoming data sets go (see :class:`~adicom.dimse.DatasetSink`).

        A sink's ``write`` gets views of the receive buffer, valid only
        during the call: it copies what it keeps.
        """
        return self._dimse.sink_factory

    @on_dataset.setter
    def on_dataset(self, factory: SinkFactory | None) -> None:
        self._dimse.sink_factory = factory

    def context_for(self, abstract_syntax: str) -> PresentationContext:
        """The first accepted context for an abstract syntax; raises if none."""
        for context in self._dimse.contexts.values():
            if context.accepted and context.abstract_syntax == abstract_syntax:
                return context
        raise LocalProtocolError(
            f"no accepted presentation context for {abstract_syntax} on this association"
        )

    def prepare_request(self, request: AAssociateRQ) -> None:
        """Requestor: the A-ASSOCIATE-RQ to send the moment the connection is made.

        Called before connecting (Evt1, Sta1 to Sta4, PS3.8 9.2): the
        transport's ``connection_made`` callback then sends the request
        itself (Evt2), a loop turn before the connecting task runs again.
        :meth:`request_association` waits for the answer.
        """
        self.request = request
        self._association_answer = self._new_future()
        self._ul.request_association(request, self._clock())
        if self._transport is not None:
            self._send_request()  # connected already

    def cancel_request(self) -> None:
        """Requestor: give up a prepared request (the connect failed): abort, quietly."""
        answer = self._association_answer
        if answer is not None:
            # Nobody will wait for the answer: no "exception never retrieved".
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()
        self.abort()
        if self._transport is None:
            # No connection, so no connection_lost to stop the timer (the
            # connect's bound set it): it would hold the association until
            # it fired.
            self._stop_timer()

    async def request_association(
        self, request: AAssociateRQ, timeout: float | None, async_window: int = ASYNC_WINDOW
    ) -> AAssociateAC:
        """Requestor: send the A-ASSOCIATE-RQ, wait for the answer, take what was agreed.

        ``request`` may have been given to :meth:`prepare_request` before
        connecting (then it is already on its way). Raises
        :class:`~adicom.errors.AssociationRejected`, or
        :class:`~adicom.errors.AssociationAborted` when the acceptor's answer
        cannot be used (a maximum PDU length too small to send in).
        """
        if self.request is not request or self._association_answer is None:
            self.prepare_request(request)
        assert self._association_answer is not None
        try:
            event = await self._bounded(
                self._association_answer,
                _ASSOCIATION,
                timeout,
                f"no answer to the A-ASSOCIATE-RQ from {request.called_ae}",
            )
        finally:
            # Answered (or given up): the future and the event it holds go
            # now, not with the association (two objects less for the
            # collector while it lives).
            self._association_answer = None
        if isinstance(event, ul.AssociationRejected):
            rj: AAssociateRJ = event.response
            raise AssociationRejected(rj.result, rj.source, rj.reason)
        assert isinstance(event, ul.AssociationAccepted)
        response = self.response = event.response
        problem = peer_max_pdu_problem(response.user_information.maximum_length)
        if problem is not None:
            # PS3.8 Table 9-26: invalid PDU parameter value.
            self._ul.abort(self._clock(), source=2, reason=6)
            error = AssociationAborted(2, 6, local=True, detail=problem)
            self._set_error(error)
            self._after_io()
            raise error
        self._dimse.agree(requestor_agreement(request, response, async_window))
        return response

    async def wait_request(self) -> AAssociateRQ | None:
        """Acceptor: the peer's A-ASSOCIATE-RQ, or None if the connection closed first.

        ARTIM (PS3.8 9.1.5) bounds the wait: when it runs out the connection
        is closed.
        """
        if self.requestor:
            raise LocalProtocolError("a requestor receives no A-ASSOCIATE-RQ")
        if self.request is not None:
            return self.request
        if self._closed:
            return None
        # Set with the request, or with None when the connection closes;
        # made by the first wait (a server that answers the request in the
        # transport callback has none).
        seen = self._request_seen
        if seen is None:
            seen = self._request_seen = self._new_future()
        return await seen

    def accept(self, response: AAssociateAC, agreement: Agreement) -> None:
        """Acceptor: answer with A-ASSOCIATE-AC and take what was agreed."""
        self.response = response
        self._dimse.agree(agreement)
        self._ul.accept(response, self._clock())
        self._after_io()
        if self._emitter is not None:
            self._emitter.emit(ev.Accepted(self, response))

    def reject(self, response: AAssociateRJ) -> None:
        """Acceptor: answer with A-ASSOCIATE-RJ; the peer then closes (ARTIM bounds it)."""
        self._ul.reject(response, self._clock())
        self._after_io()
        if self._emitter is not None:
            self._ended = True
            self._emitter.emit(ev.Rejected(self, response))

    async def release(self, timeout: float | None = 10.0) -> None:
        """Release the association (A-RELEASE) and close the connection.

        Outstanding operations are cancelled first (PS3.7 does not let a
        requestor release under them). Aborts instead if the peer does not
        answer within ``timeout``.
        """
        if self._error is not None or self._ul.state is _STA1:
            self.close()
            return
        for operation in list(self._operations.values()):
            if operation.cancellable:
                await operation.cancel()
            else:
                with contextlib.suppress(DicomError):
                    await operation.result()
        if self._error is not None:
            self.close()
            return
        # Done when the connection has closed after the A-RELEASE-RP (we
        # close it, AR-3), or failed: one wait, not one for the answer and
        # another for the close.
        self._release_done = self._new_future()
        self._ul.request_release(self._clock())
        self._after_io()
        deadline = None if timeout is None else self._clock() + timeout
        try:
            await self._bounded(self._release_done, _RELEASE, timeout)
            if not self._closed:
                # Told when we closed (see Driver._flush), and the close is
                # not done yet (TLS says goodbye first): wait for it, within
                # what is left of the bound.
                left = None if deadline is None else max(0.0, deadline - self._clock())
                await self.wait_closed(left)
        except DicomTimeout:
            if not self._released:
                self.abort()
                raise
            # Released, but the connection lingers (a peer that stopped reading).
            await self.wait_closed(0)
        finally:
            if not self._release_done.done():
                self._release_done.cancel()

    def gather_pending(self, operation: Operation | None, seconds: float | None = None) -> None:
        """Read ``operation``'s pending responses a few at a time; None: one at a time again.

        For an operation whose pending responses nobody waits for (taken in
        the transport callback: :meth:`Operation.take_pending`) and whose
        peer sends nothing else meanwhile: a C-MOVE SCP sends one per
        sub-operation while it stores to a third party (PS3.4 C.4.2.3), as
        fast as that goes. After a read that brought only such responses,
        reading pauses for ``seconds`` (default :attr:`gather_delay`; 0: no
        pause), so that the next read takes what came meanwhile in one loop
        turn, not one or two turns per response (a DCMTK peer writes a PDU's
        headers apart from its data). Only while they come often: the first
        of a retrieve, and one that comes more than ``seconds`` after the
        last, begin no pause. The final response then comes up to
        ``seconds`` later. Anything else in a read (a request of the peer,
        the final response, another operation's response, an A-ABORT) is
        handled as ever and lets the next read come at once. No pause begins
        while another operation is outstanding, and one starting ends a
        pause. The pause is kept under a tenth of :attr:`dimse_timeout` and
        :attr:`idle_timeout`, so no wait ends for it.
        """
        bounds = [self.gather_delay if seconds is None else seconds]
        bounds += [limit / 10 for limit in (self.dimse_timeout, self.idle_timeout) if limit]
        self._gather_delay = min(bounds)
        self._gathering = operation if self._gather_delay > 0 else None
        if self._gathering is None:
            self._end_gather()

    @property
    def gathering(self) -> Operation | None:
        """The operation whose pending responses are read a few at a time (gather_pending)."""
        return self._gathering

    def forget(self, operation: Operation) -> None:
        """Stop routing responses to ``operation``; later ones are logged and dropped."""
        if self._operations.get(operation.message_id) is operation:
            del self._operations[operation.message_id]
            self._dimse.forget(operation.message_id)
            self._wake_room()

    def next_message_id(self) -> int:
        """A fresh Message ID (PS3.7 9.3.1.1: unique among outstanding requests)."""
        return self._dimse.next_message_id()

    async def send_message(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
        *,
        encoded: bytes | None = None,
        batch: bool = False,
    ) -> None:
        """Send a DIMSE message, split into PDUs that fit the peer's maximum.

        ``encoded`` is ``command`` already encoded, for a response sent many
        times over (C-FIND's pending ones) or a request made ready early.
        ``batch`` says more messages follow at once (a stream of pending
        responses): it may wait for those, up to BATCH_MESSAGES of them or
        one pass of the event loop, and leave in the same write. A command
        and a small data set leave in one write. Waits while the transport's
        buffer is full (backpressure); a peer that stops reading for the
        DIMSE timeout aborts the association. A message cut off half-way (a
        cancelled task, a file that shrank) aborts the association too: it
        cannot be taken back once part of it is on the wire.
        """
        self._check_open()
        if (
            not self._sending
            and (dataset is None or type(dataset) is bytes or type(dataset) is memoryview)
            and self._dimse.send_whole(
                context_id,
                command,
                dataset,
                self._clock(),
                encoded=encoded,
            )
        ):
            # The whole message left in one PDU without awaiting anything, so
            # no other message can have come between (PS3.8 E.2).
            self._sent_now(context_id, command, dataset, batch)
            return
        # A message sent in pieces holds the send lock across its awaits; the
        # lock is made by the first (most associations never need one), and
        # _sending counts the tasks holding it or waiting for it, so the
        # whole-message paths above check a number, not the lock.
        lock = self._send_lock
        if lock is None:
            lock = self._send_lock = asyncio.Lock()
        self._sending += 1
        try:
            async with lock:
                self._check_open()
                outgoing = self._dimse.send(context_id, command, dataset, encoded=encoded)
                clock = self._clock
                try:
                    yielded = clock()
                    unwritten = 0
                    while (size := outgoing.next_pdu(now := clock())) is not None:
                        # The PDUs of a message leave together, a write per
                        # WRITE_BYTES at the most (a peer's 16 KiB PDUs would
                        # otherwise cost a system call each).
                        unwritten += size
                        if unwritten >= WRITE_BYTES:
                            self._flush()
                            unwritten = 0
                        if now - yielded > SEND_SLICE and not self._paused:
                            # Loopback sockets swallow megabytes without pushing
                            # back, and a large file is read as it goes: let the
                            # loop run other work every few milliseconds.
                            await asyncio.sleep(0)
                            self._check_open()
                            yielded = clock()
                        if self._paused:
                            await self._drain()
                except BaseException:
                    outgoing.close(clock())
                    self._after_io()
                    raise
                self._sent_now(context_id, command, dataset, batch)
        finally:
            self._sending -= 1

    def _sent_now(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None,
        batch: bool,
    ) -> None:
        """A message is wholly queued: tell the hooks, and write it (or soon, in a batch)."""
        if self._emitter is not None:
            self._emit_sent(context_id, command, dataset)
        if batch and self._batched < BATCH_MESSAGES:
            if not self._batched:
                self._loop.call_soon(self._flush)
            self._batched += 1
        else:
            self._flush()

    def _emit_sent(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None,
    ) -> None:
        assert self._emitter is not None
        self._emit_trace()  # the message's PDUs come before it, as when receiving
        if self._emitter.wants(ev.MessageSent):
            self._emitter.emit(ev.MessageSent(self, context_id, command, dataset))

    async def _drain(self) -> None:
        self._flush()
        waiter = self._loop.create_future()
        waiters = self._drain_waiters
        if isinstance(waiters, tuple):  # the first wait of this association
            self._drain_waiters = waiters = deque()
        waiters.append(waiter)
        await self._bounded(
            waiter, TimeoutKind.SEND, self.dimse_timeout, "the peer stopped reading"
        )
        self._check_open()

    async def _room(self) -> None:
        """Wait until the window has room for one more request of ours; reserve it."""
        while self._dimse.outstanding + self._reserved >= self._dimse.max_outstanding:
            self._check_open()
            waiter = self._loop.create_future()
            waiters = self._room_waiters
            if isinstance(waiters, tuple):  # the first wait of this association
                self._room_waiters = waiters = deque()
            waiters.append(waiter)
            await self._bounded(
                waiter, TimeoutKind.DIMSE, self.dimse_timeout, "no room in the operations window"
            )
        self._reserved += 1

    async def start_operation(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
        *,
        encoded: bytes | None = None,
    ) -> Operation:
        """Send a request and return the :class:`Operation` that takes its responses.

        A command without a Message ID gets a fresh one; one that has it
        (made ready early, with ``encoded``) keeps it. Waits, bounded by the
        DIMSE timeout, while the asynchronous operations window is full.
        """
        self._check_open()
        if encoded is not None and dataset is None:
            started = self._start_now(context_id, command, encoded)
            if started is not None:
                return started
        dimse = self._dimse
        if self._room_waiters or dimse.outstanding + self._reserved >= dimse.max_outstanding:
            await self._room()
        else:
            self._reserved += 1  # what _room() does when there is room
        try:
            if command.message_id is None:
                if encoded is not None:
                    raise LocalProtocolError("an encoded request must carry its Message ID")
                command = command.with_message_id(dimse.next_message_id())
            message_id = command.message_id
            assert message_id is not None
            operation = self._track(context_id, command.command_field, message_id)
            try:
                await self.send_message(context_id, command, dataset, encoded=encoded)
            except BaseException:
                operation.forget()
                raise
        finally:
            self._reserved -= 1
            self._wake_room()
        return operation

    def _track(self, context_id: int, command_field: int, message_id: int) -> Operation:
        """The Operation that takes the responses to the request about to be sent."""
        operation = Operation(self, context_id, message_id, command_field)
        self._operations[message_id] = operation
        if self._gather_pause is not None:
            self._end_gather()  # its answer must not wait for a pause
        return operation

    def _start_now(self, context_id: int, command: Command, encoded: bytes) -> Operation | None:
        """:meth:`start_operation` of an encoded request alone, if it can leave at once.

        None, having done nothing, when it would wait (for room in the
        window, for another message being sent) or not fit one PDU; the
        caller then takes the way that waits.
        """
        dimse = self._dimse
        message_id = command.message_id
        if (
            message_id is None
            or self._room_waiters
            or len(dimse._outstanding) + self._reserved >= dimse.max_outstanding
            or self._sending
        ):
            return None
        operation = self._track(context_id, command.command_field, message_id)
        try:
            sent = dimse.send_whole(context_id, command, None, self._clock(), encoded=encoded)
        except BaseException:
            operation.forget()
            raise
        if not sent:
            del self._operations[message_id]
            return None
        # PS3.8 E.2: the whole message left in one PDU, nothing between.
        self._sent_now(context_id, command, None, False)
        return operation

    def _request_now(
        self, context_id: int, template: RequestTemplate, message_id: int
    ) -> Operation | None:
        """:meth:`_start_now` of a templated request, made as bytes alone.

        Only while nothing listens to the association's events (a hook
        would be told the request's Command, which is then made and sent by
        :meth:`_start_now`). None, having done nothing, when it would wait.
        """
        dimse = self._dimse
        if (
            self._emitter is not None
            or self._room_waiters
            or len(dimse._outstanding) + self._reserved >= dimse.max_outstanding
            or self._sending
        ):
            return None
        command_field = template.command_field
        encoded = template.encode(message_id)
        if not dimse.send_request_now(
            context_id, command_field, message_id, encoded, self._clock()
        ):
            return None
        # PS3.8 E.2: the whole message left in one PDU, nothing between;
        # tracked once sent (no response can come before this callback ends).
        # self._track(...), inline (every templated request):
        operation = Operation(self, context_id, message_id, command_field)
        self._operations[message_id] = operation
        if self._gather_pause is not None:
            self._end_gather()  # its answer must not wait for a pause
        self._flush()  # what _sent_now does unbatched, with no hook to tell
        return operation

    async def send_request(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
    ) -> Command:
        """Send a request with a fresh Message ID and return its (final) response command.

        Bounded by the DIMSE timeout; raises if the association ends first.
        """
        operation = await self.start_operation(context_id, command, dataset)
        return await operation.result()

    async def receive_request(self) -> Message | None:
        """The next request from the peer.

        Returns None once the peer has released the association; raises the
        reason when it ended any other way.
        """
        return await self._incoming.get()

    async def echo(self) -> int:
        """C-ECHO (PS3.7 9.1.5): returns the status; raises DimseError on failure."""
        context_id = self._echo_context
        if context_id is None:
            # Contexts are settled once per association (negotiation).
            context_id = self._echo_context = self.context_for(VERIFICATION).context_id
        # self._check_open()'s test, inline (every echo): it raises why.
        state = self._ul._fsm._state
        if self._error is not None or (state is not _STA6 and state is not _STA8):
            self._check_open()
        message_id = self._dimse.next_message_id()
        operation = self._request_now(context_id, _ECHO_RQ, message_id)
        if operation is None:
            command, encoded = _ECHO_RQ.make(message_id)
            operation = self._start_now(context_id, command, encoded)
            if operation is None:
                operation = await self.start_operation(context_id, command, encoded=encoded)
        reply = await operation.next_response()
        while not operation.done:  # a pending C-ECHO-RSP is no answer yet
            reply = await operation.next_response()
        status = reply.command.status or 0
        if status and status_category(status) is _FAILURE:  # 0: success (PS3.7 C.1)
            raise DimseError(status, "C-ECHO failed: " + describe_status(status))
        return status

    async def send_c_store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: bytes | memoryview | DatasetReader,
        *,
        priority: int = Priority.MEDIUM,
        move_originator_ae: str | None = None,
        move_originator_message_id: int | None = None,
    ) -> Command:
        """C-STORE-RQ (PS3.7 9.1.1) of an encoded data set; returns the C-STORE-RSP.

        The data set must already be in the context's transfer syntax. The
        status is the caller's to judge (a failure status raises nothing).
        """
        originator = (
            None
            if move_originator_ae is None or move_originator_message_id is None
            else (move_originator_ae, move_originator_message_id)
        )
        command = c_store_rq(
            sop_class_uid, sop_instance_uid, priority=priority, move_originator=originator
        )
        return await self.send_request(context_id, command, dataset)

    def respond_now(self, request: Message, status: int, *, write: bool = False) -> bool:
        """Answer a C-ECHO-RQ or C-STORE-RQ with ``status`` at once, if nothing else is sending.

        For :attr:`on_request`, in the transport callback: the response is
        queued and written when the callback ends (with the others of its
        read, in one write), or with ``write`` at once, for a peer that
        waits for it before it sends anything more (then the callback's
        other work comes after). Returns False, having sent nothing, when it
        must wait (another message is on its way, the association cannot
        send) or is not one of those requests; then use :meth:`respond`.
        """
        if self._sending or self._error is not None:
            return False
        state = self._ul._fsm._state  # self._ul.state
        if state is not _STA6 and state is not _STA8:
            return False
        rq = request.command
        if rq.message_id is None or (
            rq.command_field != _C_ECHO_RQ and rq.command_field != _C_STORE_RQ
        ):
            return False
        # Its bytes alone: the Command is made only for hooks that want it.
        # _response_template(rq, status) as the last one, inline (every answer).
        last = _last_response
        if (
            last is not None
            and last[0] == rq.command_field
            and last[2] == status
            and last[1] == rq.affected_sop_class_uid
        ):
            template = last[3]
        else:
            template = _response_template(rq, status)
        message_id, instance = rq.message_id, rq.affected_sop_instance_uid
        if not self._dimse.send_response(
            request.context_id,
            message_id,
            status,
            template.encode(message_id, instance),
            self._clock(),
        ):
            return False
        if self._emitter is not None:
            self._emit_sent(request.context_id, template.command(message_id, instance), None)
        if write:
            self._write_now()
        return True

    async def respond(self, request: Message, status: int, **fields: Any) -> None:
        """Send the response to ``request`` with ``status`` (and extra command fields).

        The affected SOP class and instance are echoed from the request, as
        PS3.7 asks of C-STORE-RSP (9.3.1.2) and C-ECHO-RSP.
        """
        rq = request.command
        if not fields and rq.message_id is not None and rq.command_field in _TEMPLATED:
            # The common answers, encoded once (see ResponseTemplate).
            command, encoded = _response_template(rq, status).make(
                rq.message_id, rq.affected_sop_instance_uid
            )
            await self.send_message(request.context_id, command, encoded=encoded)
            return
        fields.setdefault("affected_sop_instance_uid", rq.affected_sop_instance_uid)
        command = Command(
            rq.command_field | 0x8000,
            message_id_being_responded_to=rq.message_id,
            affected_sop_class_uid=rq.affected_sop_class_uid,
            status=status,
            **fields,
        )
        await self.send_message(request.context_id, command)


def _response_template(request: Command, status: int) -> ResponseTemplate:
    """The template of the response to ``request`` (C-ECHO-RQ, C-STORE-RQ) with ``status``."""
    global _last_response
    field, sop_class = request.command_field, request.affected_sop_class_uid
    last = _last_response
    if last is not None and last[0] == field and last[2] == status and last[1] == sop_class:
        return last[3]  # as the last (C-ECHOs, one SOP class's C-STOREs)
    key = (field, sop_class, status)
    template = _RESPONSES.get(key)
    if template is None:
        if len(_RESPONSES) >= 1024:
            _RESPONSES.clear()  # a peer naming ever new SOP classes
        template = _RESPONSES[key] = ResponseTemplate(field | 0x8000, sop_class, status)
    _last_response = (field, sop_class, status, template)
    return template
