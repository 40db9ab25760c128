"""The asyncio driver of one association: a socket under the sans-I/O layers.

This module holds no protocol logic. It moves received bytes into
:class:`~adicom.protocol.UpperLayer`, hands each upper layer event to
:class:`~adicom.dimse.DimseConnection`, and turns what comes back into
futures and queues that tasks await; it writes what the layers queue,
respecting the transport's flow control, runs the timers they ask for (ARTIM,
idle), and maps every failure once, here, to the exceptions of
:mod:`adicom.errors`.

It is an ``asyncio.BufferedProtocol``: the loop reads into a buffer we own
and calls us back, so a received PDU costs no task switch, and a response can
be written from the same callback that read its request.

After we send an A-ABORT we close the connection as soon as the PDU is
written instead of waiting up to ARTIM in Sta13 for the peer to close: the
TCP close comes after the A-ABORT in the byte stream, so the peer still reads
the abort first, and nobody waits on a peer that never closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from dataclasses import replace
from typing import Any

from adicom import protocol as ul
from adicom.dimse import (
    Command,
    CommandField,
    DatasetReader,
    DimseConnection,
    DimseEvent,
    Limits,
    Message,
    Priority,
    RequestReceived,
    ResponseReceived,
    SinkFactory,
    StatusCategory,
    c_store_rq,
    describe_status,
    status_category,
)
from adicom.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    ConnectionClosed,
    DicomError,
    DicomTimeout,
    DimseError,
    LocalProtocolError,
    TimeoutKind,
)
from adicom.fsm import State
from adicom.negotiation import (
    ASYNC_WINDOW,
    DEFAULT_MAX_PDU,
    Agreement,
    peer_max_pdu_problem,
    requestor_agreement,
)
from adicom.operation import MessageQueue, Operation, bounded
from adicom.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ
from adicom.presentation import VERIFICATION, PresentationContext

__all__ = ["Association", "Message", "Operation"]

log = logging.getLogger("adicom")

#: Longest time (s) sending one message holds the event loop before
#: letting other work run.
SEND_SLICE = 0.002
#: How many batched messages (pending responses) may wait to leave in one
#: write: a system call per small message cost more than encoding it.
BATCH_MESSAGES = 16
#: A message's PDUs are written once this many bytes are waiting.
WRITE_BYTES = 256 * 1024
#: Received PDVs (or PDUs) handled in one loop callback at most, about a
#: millisecond of work; the rest waits for the next turn (UpperLayer.parse_budget).
PARSE_BUDGET = 256


class _Transport(asyncio.BufferedProtocol):
    """The asyncio side of the socket; forwards everything to the Association.

    The loop reads into buffers the PDU reader hands out, so a large PDU's
    body lands where it is decoded from.
    """

    def __init__(self, association: Association) -> None:
        self._association = association
        self._reader = association._ul.reader

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle's algorithm plus delayed ACKs stall a small request and
            # its response by up to 40 ms each on Linux; DICOM is exactly
            # that pattern (a command PDU, then the peer's response).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert isinstance(transport, asyncio.Transport)
        self._association._connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._association._data_received(nbytes)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._association._connection_lost()

    def pause_writing(self) -> None:
        self._association._paused = True

    def resume_writing(self) -> None:
        self._association._resume_writing()


class Association:
    """One DICOM association, requestor or acceptor, on the running event loop.

    Users get one from :func:`adicom.connect` (requestor) or in a server
    handler (acceptor) rather than building it; drivers of their own (a
    server, a client) use :meth:`protocol`, :meth:`request_association`,
    :meth:`wait_request`, :meth:`accept` and :meth:`reject`.
    """

    def __init__(
        self,
        *,
        requestor: bool,
        max_pdu: int = DEFAULT_MAX_PDU,
        artim_timeout: float = 10.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ul = ul.UpperLayer(
            requestor=requestor, max_pdu_length=max_pdu, artim_timeout=artim_timeout
        )
        self._ul.parse_budget = PARSE_BUDGET
        self._dimse = DimseConnection(self._ul, limits)
        self._input_deferred = False
        self.requestor = requestor
        self.max_pdu = max_pdu
        #: Bounds the wait for each response, and for a peer that stops reading.
        self.dimse_timeout = dimse_timeout
        #: Abort when nothing at all arrives for this long (None: never).
        self.idle_timeout = idle_timeout
        #: The A-ASSOCIATE-RQ and -AC of this association, once exchanged.
        self.request: AAssociateRQ | None = None
        self.response: AAssociateAC | None = None
        self._transport: asyncio.Transport | None = None
        self._last_received = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._operations: dict[int, Operation] = {}
        self._incoming = MessageQueue()
        self._reserved = 0  # requests waiting to be sent, counted in the window
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._send_lock = asyncio.Lock()
        self._paused = False
        # Batched messages not written yet; a write of them is scheduled
        # while there are any (see send_message's ``batch``).
        self._batched = 0
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._error: DicomError | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._request_seen: asyncio.Future[AAssociateRQ] = self._loop.create_future()
        self._association_answer: asyncio.Future[ul.ULEvent] | None = None
        self._release_done: asyncio.Future[None] | None = None
        self._released = False
        self._protocol: _Transport | None = None

    # -- what was negotiated ----------------------------------------------------

    @property
    def state(self) -> State:
        """The upper layer state (PS3.8 Sta1..Sta13)."""
        return self._ul.state

    @property
    def is_established(self) -> bool:
        """True while DIMSE messages can flow (Sta6)."""
        return self._ul.established

    @property
    def calling_ae(self) -> str:
        """The requestor's AE title."""
        return self.request.calling_ae if self.request else ""

    @property
    def called_ae(self) -> str:
        """The AE title the requestor called."""
        return self.request.called_ae if self.request else ""

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The peer's (host, port)."""
        if self._transport is None:
            return None
        peer: Any = self._transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else None

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
        """Chooses where incoming data sets go (see :class:`~adicom.dimse.DatasetSink`)."""
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

    # -- the driver API: setting up and tearing down ------------------------------

    def protocol(self) -> asyncio.BufferedProtocol:
        """The asyncio protocol joining this association to its connection.

        A protocol factory for ``loop.create_connection`` (requestor) or the
        value a ``loop.create_server`` factory returns (acceptor); one per
        association.
        """
        if self._protocol is not None:
            raise LocalProtocolError("this association already has its connection")
        self._protocol = _Transport(self)
        return self._protocol

    async def request_association(
        self, request: AAssociateRQ, timeout: float | None, async_window: int = ASYNC_WINDOW
    ) -> AAssociateAC:
        """Requestor: send the A-ASSOCIATE-RQ, wait for the answer, take what was agreed.

        Raises :class:`~adicom.errors.AssociationRejected`, or
        :class:`~adicom.errors.AssociationAborted` when the acceptor's answer
        cannot be used (a maximum PDU length too small to send in).
        """
        self.request = request
        self._association_answer = self._loop.create_future()
        self._ul.request_association(request, self._loop.time())
        if self._transport is not None:
            # The transport connected before we asked (it always has).
            self._ul.connection_made(self._loop.time())
            self._after_io()
        event = await bounded(
            self._association_answer,
            TimeoutKind.ASSOCIATION,
            timeout,
            f"no answer to the A-ASSOCIATE-RQ from {request.called_ae}",
        )
        if isinstance(event, ul.AssociationRejected):
            rj: AAssociateRJ = event.response
            raise AssociationRejected(rj.result, rj.source, rj.reason)
        assert isinstance(event, ul.AssociationAccepted)
        response = self.response = event.response
        problem = peer_max_pdu_problem(response.user_information.maximum_length)
        if problem is not None:
            # PS3.8 Table 9-26: invalid PDU parameter value.
            self._ul.abort(self._loop.time(), source=2, reason=6)
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
        waiting: list[asyncio.Future[Any]] = [self._request_seen, self._closed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._request_seen.done():
            return self._request_seen.result()
        return None

    def accept(self, response: AAssociateAC, agreement: Agreement) -> None:
        """Acceptor: answer with A-ASSOCIATE-AC and take what was agreed."""
        self.response = response
        self._dimse.agree(agreement)
        self._ul.accept(response, self._loop.time())
        self._after_io()

    def reject(self, response: AAssociateRJ) -> None:
        """Acceptor: answer with A-ASSOCIATE-RJ; the peer then closes (ARTIM bounds it)."""
        self._ul.reject(response, self._loop.time())
        self._after_io()

    async def release(self, timeout: float | None = 10.0) -> None:
        """Release the association (A-RELEASE) and close the connection.

        Outstanding operations are cancelled first (PS3.7 does not let a
        requestor release under them). Aborts instead if the peer does not
        answer within ``timeout``.
        """
        if self._error is not None or self._ul.state is State.STA1:
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
        self._release_done = self._loop.create_future()
        self._ul.request_release(self._loop.time())
        self._after_io()
        try:
            await bounded(asyncio.shield(self._release_done), TimeoutKind.RELEASE, timeout)
        except DicomTimeout:
            self.abort()
            raise
        finally:
            if not self._release_done.done():
                self._release_done.cancel()
        await self.wait_closed(timeout)

    def abort(self) -> None:
        """Abort the association (A-ABORT, service-user source) and close the connection.

        From any state: before an association exists (Sta2) the connection
        is simply closed.
        """
        state = self._ul.state
        if state is State.STA2:
            self.close()
            return
        if state not in (State.STA1, State.STA13):
            self._ul.abort(self._loop.time())
            self._set_error(AssociationAborted(0, 0, local=True))
        self._close_soon()

    def close(self) -> None:
        """Close the connection without a word (used once the association has ended)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    async def wait_closed(self, timeout: float | None = 10.0) -> None:
        """Wait until the connection has closed, closing it ourselves after ``timeout``."""
        try:
            await bounded(asyncio.shield(self._closed), TimeoutKind.CLOSE, timeout)
        except DicomTimeout:
            if self._transport is not None:
                self._transport.abort()
            await asyncio.shield(self._closed)

    @property
    def closed(self) -> bool:
        """True once the connection has closed."""
        return self._closed.done()

    # -- transport callbacks -----------------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._last_received = self._loop.time()
        self._arm_idle_timer()
        if not self.requestor:
            # Evt5. The requestor's Evt2 follows its Evt1 in request_association().
            self._ul.connection_made(self._loop.time())
            self._after_io()

    def _data_received(self, nbytes: int) -> None:
        self._last_received = now = self._loop.time()
        self._ul.receive_into(nbytes, now)
        self._after_io()
        if self._ul.input_pending:
            self._defer_input()

    def _defer_input(self) -> None:
        """The parse budget ran out: go on in a later turn, reading nothing meanwhile.

        So a peer whose PDUs cost much work (a flood of tiny PDVs) is served
        a slice at a time between everyone else's callbacks, and TCP pushes
        back on it while it waits.
        """
        if self._input_deferred or self._transport is None:
            return
        self._input_deferred = True
        self._transport.pause_reading()
        self._loop.call_soon(self._parse_deferred)

    def _parse_deferred(self) -> None:
        self._input_deferred = False
        if self._closed.done():
            return
        self._ul.parse_pending(self._loop.time())
        self._after_io()
        if self._ul.input_pending:
            self._defer_input()
        elif self._transport is not None:
            self._transport.resume_reading()

    def _connection_lost(self) -> None:
        if self._ul.input_pending:
            # What the peer sent before it closed is still its word.
            self._ul.parse_budget = 0
            self._ul.parse_pending(self._loop.time())
        self._ul.connection_lost(self._loop.time())
        self._process_events()
        for timer in (self._timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._idle_timer = None
        if self._error is None and not self._ended_normally():
            self._set_error(ConnectionClosed("the peer closed the connection"))
        self._fail_all(self._error or ConnectionClosed("the association has ended"))
        for waiter in (*self._drain_waiters, *self._room_waiters):
            if not waiter.done():
                waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def _resume_writing(self) -> None:
        self._paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _arm_idle_timer(self) -> None:
        if self.idle_timeout is not None:
            at = self._last_received + self.idle_timeout
            self._idle_timer = self._loop.call_at(at, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        # Re-armed lazily: received data only moves _last_received, so the
        # hot path never touches the timer.
        self._idle_timer = None
        if self._closed.done() or self.idle_timeout is None:
            return
        if self._loop.time() - self._last_received < self.idle_timeout:
            self._arm_idle_timer()
            return
        log.warning(
            "nothing received from %s for %g s; aborting",
            self._peer_name(),
            self.idle_timeout,
        )
        self._set_error(
            DicomTimeout(TimeoutKind.IDLE, self.idle_timeout, "nothing received from the peer")
        )
        self._ul.abort(self._loop.time())
        self._close_soon()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        self._ul.handle_timer(now)
        for event in self._dimse.handle_timer(now):
            self._dispatch(event)
        self._after_io()

    # -- events in, bytes out ----------------------------------------------------

    def _after_io(self) -> None:
        self._process_events()
        self._flush()
        self._arm_timer()

    def _arm_timer(self) -> None:
        """One loop timer for the layers' deadlines (ARTIM, a message's), set lazily.

        A deadline that moves later (each message has its own) leaves the
        timer as it is: it fires early, finds nothing due and is set again.
        So the hot path never cancels and re-creates a timer per message.
        """
        ul_at, dimse_at = self._ul.get_timer(), self._dimse.get_timer()
        at = ul_at if dimse_at is None else dimse_at if ul_at is None else min(ul_at, dimse_at)
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _flush(self) -> None:
        self._batched = 0
        data = self._ul.data_to_send()
        transport = self._transport
        if transport is None:
            return
        if data:
            transport.writelines(data)
        ul_ = self._ul
        if (ul_.close_requested or ul_.abort_sent) and not transport.is_closing():
            if ul_.abort_sent and self._error is None:
                # The DIMSE layer aborted (a message left half-sent).
                self._set_error(AssociationAborted(0, 0, local=True))
            transport.close()

    def _process_events(self) -> None:
        next_event = self._ul.next_event
        handle = self._dimse.handle_event
        while (event := next_event()) is not None:
            for dimse_event in handle(event, self._loop.time()):
                self._dispatch(dimse_event)

    def _dispatch(self, event: DimseEvent) -> None:
        if type(event) is ResponseReceived:
            self._on_response(event)
        elif type(event) is RequestReceived:
            self._incoming.put(event.message)
        else:
            self._on_control_event(event)  # type: ignore[arg-type]

    def _on_response(self, event: ResponseReceived) -> None:
        message_id = event.message_id
        operation = self._operations.get(message_id)
        if operation is None:
            return  # the DIMSE layer keeps only what is awaited; nothing to do
        operation.deliver(event.message)
        if event.final:
            del self._operations[message_id]
            self._wake_room()

    def _on_control_event(self, event: ul.ULEvent) -> None:
        if isinstance(event, ul.AssociationRequested):
            self.request = event.request
            if not self._request_seen.done():
                self._request_seen.set_result(event.request)
        elif isinstance(event, ul.AssociationAccepted | ul.AssociationRejected):
            answer = self._association_answer
            if answer is not None and not answer.done():
                answer.set_result(event)
        elif isinstance(event, ul.ReleaseRequested):
            if not event.collision:
                # The DIMSE layer has answered; the peer's requests end here.
                self._released = True
                self._incoming.fail(None)
                self._fail_operations(AssociationError("the peer released the association"))
        elif isinstance(event, ul.ReleaseConfirmed):
            self._released = True
            if self._release_done is not None and not self._release_done.done():
                self._release_done.set_result(None)
        elif isinstance(event, ul.Aborted):
            self._set_error(
                AssociationAborted(
                    event.source, event.reason, local=event.local, detail=event.detail or None
                )
            )
            if event.local:
                log.warning("aborted the association with %s: %s", self._peer_name(), event.detail)
                self._close_soon()
        elif isinstance(event, ul.ConnectionLost):
            self._set_error(
                ConnectionClosed(
                    f"the peer closed the connection while the association was in "
                    f"{event.state.name.title()}"
                )
            )
        elif isinstance(event, ul.ArtimExpired):
            self._set_error(
                DicomTimeout(
                    TimeoutKind.ARTIM, self._ul.artim_timeout, f"in {event.state.name.title()}"
                )
            )

    def _peer_name(self) -> str:
        """The peer's AE title (the one that is not ours), or its address."""
        title = self.called_ae if self.requestor else self.calling_ae
        return title or str(self.peer_address or "?")

    def _close_soon(self) -> None:
        self._flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _ended_normally(self) -> bool:
        # Released, or never associated at all (a rejected request ends with
        # a close that is no error either).
        return self._released or (self._ul.state is State.STA1 and self.response is None)

    def _set_error(self, error: DicomError) -> None:
        if self._error is None:
            self._error = error
        self._fail_all(error)

    def _fail_all(self, error: DicomError) -> None:
        answer = self._association_answer
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self._fail_operations(error)
        self._incoming.fail(error)
        done = self._release_done
        if done is not None and not done.done():
            done.set_exception(error)

    def _fail_operations(self, error: DicomError) -> None:
        for operation in self._operations.values():
            operation.fail(error)
            self._dimse.forget(operation.message_id)
        self._operations.clear()
        self._wake_room()

    def _wake_room(self) -> None:
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- sending ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._ul.established and self._ul.state is not State.STA8:
            raise LocalProtocolError(
                f"the association is not established (state {self._ul.state.name.title()})"
            )

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
        async with self._send_lock:
            self._check_open()
            outgoing = self._dimse.send(context_id, command, dataset, encoded=encoded)
            clock = self._loop.time
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
            if batch and self._batched < BATCH_MESSAGES:
                if not self._batched:
                    self._loop.call_soon(self._flush)
                self._batched += 1
            else:
                self._flush()

    async def _drain(self) -> None:
        self._flush()
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await bounded(waiter, TimeoutKind.SEND, self.dimse_timeout, "the peer stopped reading")
        self._check_open()

    async def _room(self) -> None:
        """Wait until the window has room for one more request of ours; reserve it."""
        while self._dimse.outstanding + self._reserved >= self._dimse.max_outstanding:
            self._check_open()
            waiter = self._loop.create_future()
            self._room_waiters.append(waiter)
            await bounded(
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
        await self._room()
        try:
            if command.message_id is None:
                if encoded is not None:
                    raise LocalProtocolError("an encoded request must carry its Message ID")
                command = replace(command, message_id=self._dimse.next_message_id())
            message_id = command.message_id
            assert message_id is not None
            operation = Operation(self, context_id, command, _response_name(command))
            self._operations[message_id] = operation
            try:
                await self.send_message(context_id, command, dataset, encoded=encoded)
            except BaseException:
                operation.forget()
                raise
        finally:
            self._reserved -= 1
            self._wake_room()
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

    # -- DIMSE services -------------------------------------------------------------

    async def echo(self) -> int:
        """C-ECHO (PS3.7 9.1.5): returns the status; raises DimseError on failure."""
        context = self.context_for(VERIFICATION)
        command = Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=VERIFICATION)
        status = (await self.send_request(context.context_id, command)).status or 0
        if status_category(status) is StatusCategory.FAILURE:
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

    async def respond(self, request: Message, status: int, **fields: Any) -> None:
        """Send the response to ``request`` with ``status`` (and extra command fields).

        The affected SOP class and instance are echoed from the request, as
        PS3.7 asks of C-STORE-RSP (9.3.1.2) and C-ECHO-RSP.
        """
        rq = request.command
        fields.setdefault("affected_sop_instance_uid", rq.affected_sop_instance_uid)
        command = Command(
            rq.command_field | 0x8000,
            message_id_being_responded_to=rq.message_id,
            affected_sop_class_uid=rq.affected_sop_class_uid,
            status=status,
            **fields,
        )
        await self.send_message(request.context_id, command)


def _response_name(command: Command) -> str:
    try:
        return CommandField(command.command_field | 0x8000).name.replace("_", "-")
    except ValueError:
        return f"response to command 0x{command.command_field:04X}"
