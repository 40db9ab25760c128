"""The asyncio driver under an association: transport callbacks, timers, writes.

:class:`Driver` holds no protocol logic. It moves received bytes into
:class:`~adicom.protocol.UpperLayer`, hands each upper layer event to
:class:`~adicom.dimse.DimseConnection`, and turns what comes back into
futures and queues that tasks await; it writes what the layers queue, runs
the timers they ask for (ARTIM, a message's deadline, idle), serves a peer
whose input costs much work a slice per loop turn, and maps every failure
once, here, to the exceptions of :mod:`adicom.errors`. Its bases hold the
rest: the association's deadline on its loop's shared timer
(:mod:`adicom.deadlines`), the events told to hooks
(:mod:`adicom.driverevents`), what holds the input and reading again
(:mod:`adicom.inputflow`).
:class:`~adicom.association.Association` adds the API on top.

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
import logging
import math
from collections import deque
from collections.abc import Callable
from functools import partial
from ssl import SSLError
from typing import Any

from adicom import events as ev
from adicom import protocol as ul
from adicom.deadlines import Deadlines, Watched, loop_clock, loop_timer
from adicom.dimse import (
    DimseConnection,
    DimseEvent,
    Limits,
    Message,
    RequestReceived,
    ResponseReceived,
)
from adicom.driverevents import Emission
from adicom.errors import (
    AssociationAborted,
    AssociationError,
    ConnectionClosed,
    DicomError,
    DicomTimeout,
    LocalProtocolError,
    TimeoutKind,
    TlsError,
)
from adicom.fsm import State
from adicom.inputflow import InputFlow
from adicom.negotiation import DEFAULT_MAX_PDU
from adicom.operation import MessageQueue, Operation
from adicom.pdu import AAssociateAC, AAssociateRQ, PDataTF
from adicom.tls import TlsInfo, describe_tls_failure, tls_info
from adicom.transport import TransportProtocol, break_cycle
from adicom.turns import loop_turns

__all__ = ["PARSE_BUDGET", "Driver"]

log = logging.getLogger("adicom")

# Enum members as plain names: an Enum class attribute costs a slot call on
# Python 3.11 (EnumType.__getattr__). Read once per association ...
_STA4 = State.STA4
_CLOSE = TimeoutKind.CLOSE
# ... and on every message sent.
_STA6 = State.STA6
_STA8 = State.STA8

#: asyncio's own create_future (see Driver._new_future).
_ASYNCIO_CREATE_FUTURE = asyncio.BaseEventLoop.create_future

# Made once (an X | Y in an isinstance call makes a union object each time).
_ANSWERS = (ul.AssociationAccepted, ul.AssociationRejected)

#: Received PDVs (or PDUs) handled in one loop callback at most, about a
#: millisecond of work; the rest waits for the next turn (UpperLayer.parse_budget).
PARSE_BUDGET = 256


class Driver(Deadlines, Emission, InputFlow):
    """One connection's asyncio side, under the sans-I/O layers of its association.

    Not used alone: :class:`~adicom.association.Association` is this driver
    with the API for users and for servers and clients. ``hooks``
    (:class:`adicom.events.Hooks`) are told what happens on it.
    """

    # What the constructor sets, and what every message reads, are slots,
    # the cheapest reads (Python 3.11 specializes no read of a class
    # attribute through an instance, ~250 instructions each); the instance
    # dict keeps the rest (past 30 names it loses its shared keys: slower).
    __slots__ = (
        "_association_answer",
        "_batched",
        "_clock",
        "_close_waiters",
        "_closed",
        "_closing_at",
        "_dimse",
        "_drain_waiters",
        "_emitter",
        "_error",
        "_gather_now",
        "_gather_pause",
        "_incoming",
        "_last_received",
        "_loop",
        "_loop_timer",
        "_new_future",
        "_operations",
        "_protocol",
        "_release_done",
        "_request_seen",
        "_reserved",
        "_room_waiters",
        "_sending",
        "_share",
        "_timer",
        "_timer_at",
        "_transport",
        "_turns",
        "_ul",
        "_watched",
        "dimse_timeout",
        "idle_timeout",
        "max_pdu",
        "on_request",
        "requestor",
    )

    # What every association starts with otherwise, as class attributes:
    # an association costs only the stores of what differs (a requestor
    # opens one per operation, so its constructor is on the hot path).
    # Containers that most associations never fill start as a shared empty
    # tuple and are made when first needed.

    #: Abort when nothing at all arrives for this long (None: never).
    idle_timeout: float | None
    #: The A-ASSOCIATE-RQ and -AC of this association, once exchanged.
    request: AAssociateRQ | None = None
    response: AAssociateAC | None = None
    _transport: asyncio.Transport | None
    _tls: TlsInfo | None = None
    #: Answers a request of the peer at once, in the transport callback
    #: that received it (a C-ECHO-RQ, say), saving a task switch:
    #: returns True if it did, False to queue it for receive_request.
    on_request: Callable[[Message], bool] | None
    #: Acceptor: told the peer's A-ASSOCIATE-RQ in the transport callback
    #: that received it, once, to answer it there (accept or reject) when
    #: the answer needs no await; wait_request sees the request either way.
    on_association_request: Callable[[AAssociateRQ], None] | None = None
    #: Called once, in connection_lost, when the connection has closed.
    on_closed: Callable[[], None] | None = None
    _reserved: int  # requests waiting to be sent, counted in the window
    # Tasks waiting for room in the operations window, for the transport
    # to drain, for the close (a deque or list once one waits).
    _room_waiters: deque[asyncio.Future[None]] | tuple[()]
    _drain_waiters: deque[asyncio.Future[None]] | tuple[()]
    _close_waiters: list[asyncio.Future[None]] | tuple[()]
    _paused = False
    # Made by the first message sent in pieces; _sending counts the tasks
    # that hold it or wait for it (see Association.send_message).
    _send_lock: asyncio.Lock | None = None
    _sending: int
    # Batched messages not written yet; a write of them is scheduled
    # while there are any (see send_message's ``batch``).
    _batched: int
    _error: DicomError | None
    # The acceptor's, once wait_request waits: set with the peer's
    # A-ASSOCIATE-RQ, or None when the connection closes first.
    _request_seen: asyncio.Future[AAssociateRQ | None] | None
    _association_answer: asyncio.Future[ul.ULEvent] | None
    _release_done: asyncio.Future[None] | None
    _released = False
    #: True once the connection has closed (connection_lost); tasks that
    #: wait for that wait on futures of their own (_close_waiters).
    _closed: bool
    #: Plain TCP on asyncio's selector loop (see _end_connection).
    _plain_selector = False
    _protocol: TransportProtocol | None
    _ended = False  # released, rejected or aborted has been told

    def __init__(
        self,
        *,
        requestor: bool,
        max_pdu: int = DEFAULT_MAX_PDU,
        artim_timeout: float = 10.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
        limits: Limits | None = None,
        hooks: ev.Hooks | None = None,
    ) -> None:
        self._loop = loop = asyncio.get_running_loop()
        #: ``loop.create_future``, or on asyncio's own loops the class it
        #: calls, bound to this loop: ``asyncio.Future(loop=loop)`` costs
        #: ~0.4k instructions less than create_future's call of it. Not a
        #: bare ``asyncio.Future()``: that takes whatever loop is running
        #: (or none: prepare_request may be called outside one), and a
        #: future on another loop than the association's timers would wait
        #: for ever instead of failing ("attached to a different loop").
        self._new_future: Callable[[], asyncio.Future[Any]] = (
            partial(asyncio.Future, loop=loop)
            if type(loop).create_future is _ASYNCIO_CREATE_FUTURE
            else loop.create_future
        )
        #: The loop's input budget per turn, shared by every association on it.
        self._turns = turns = loop_turns(loop)
        # Positional: a class called with keywords costs a dict built for
        # them and taken apart again (Python 3.11). One receive buffer per
        # loop (turns.staging).
        self._ul = upper = ul.UpperLayer(requestor, max_pdu, artim_timeout, turns.staging)
        upper.parse_budget = PARSE_BUDGET
        self._dimse = dimse = DimseConnection(upper, limits)
        upper._reader.max_pdvs = dimse.limits.max_pdvs  # upper.reader, read directly
        self._share = turns.share()
        self.requestor = requestor
        self.max_pdu = max_pdu
        #: Bounds the wait for each response, and for a peer that stops reading.
        self.dimse_timeout = dimse_timeout
        self.idle_timeout = idle_timeout
        # The loop's own (not turns.clock, which on uvloop reaches its loop
        # through a weak reference, to be read a few times per message).
        self._clock = clock = loop_clock(loop)
        #: Every association's deadlines on one loop timer (adicom.deadlines).
        self._loop_timer = loop_timer(loop, clock)
        self._last_received = clock()
        # The slots' starting values (see __slots__).
        self._error = self._transport = self._gather_pause = self.on_request = None
        self._protocol = self._request_seen = self._association_answer = None
        self._release_done = None
        self._closed = False
        self._timer = None
        self._timer_at = self._closing_at = math.inf
        self._sending = self._reserved = self._batched = self._gather_now = 0
        self._room_waiters = self._drain_waiters = self._close_waiters = ()
        self._operations: dict[int, Operation] = {}
        # Bounded waits (an operation's for its response, ...), each until
        # its deadline, watched by the association's timer (see _watch).
        self._watched: dict[Watched, None] = {}
        self._incoming = MessageQueue()
        # Event hooks and protocol logging (adicom.events): None when nothing
        # listens, and then every place an event could arise costs one test.
        self._emitter = emitter = ev.emitter(hooks)
        if emitter is not None and emitter.pdus:
            upper.trace = []
        # Every P-DATA indication goes to the DIMSE layer in the callback that
        # read it (_after_io), and sinks copy what they keep: reads can be
        # parsed where they land (UpperLayer.lend_reads), unless traced.
        upper.lend_reads = True

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
    def tls(self) -> TlsInfo | None:
        """TLS version, cipher and the peer's certificate; None on plain TCP."""
        return self._tls

    def protocol(self) -> asyncio.BufferedProtocol:
        """The asyncio protocol joining this association to its connection.

        A protocol factory for ``loop.create_connection`` (requestor) or the
        value a ``loop.create_server`` factory returns (acceptor); one per
        association.
        """
        if self._protocol is not None:
            raise LocalProtocolError("this association already has its connection")
        self._protocol = TransportProtocol(self)
        return self._protocol

    def abort(self) -> None:
        """Abort the association (A-ABORT, service-user source) and close the connection.

        From any state: before an association exists (Sta2) the connection
        is dropped (:meth:`drop`). Once the association has ended (Sta13,
        Sta1) its close goes on as it was, within ARTIM: an A-ABORT of ours
        still queued behind data the peer has not read yet still reaches
        it if the peer reads in time.
        """
        state = self._ul.state
        if state is State.STA2:
            self.drop()
            return
        if state is not State.STA1 and state is not State.STA13:
            self._ul.abort(self._clock())
            self._set_error(AssociationAborted(0, 0, local=True))
        self._close_soon()

    def drop(self) -> None:
        """Close the connection at once: what the socket takes now is written, the rest dropped.

        For a connection given up whatever the peer does (a server closing,
        a place needed for another): it does not wait, even within ARTIM,
        for a peer to read. What is lost is what the socket had not taken
        yet: nothing, usually, before an association or once it has ended.
        """
        self._flush()
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close the connection without a word (used once the association has ended)."""
        transport = self._transport
        if transport is not None:
            if not transport.is_closing():
                self._end_connection(transport)
            else:  # closing already, maybe by the loop itself (see _eof_received)
                self._bound_close(transport)

    @property
    def watched(self) -> bool:
        """True when hooks or protocol logging listen to this association's events."""
        return self._emitter is not None

    async def wait_closed(self, timeout: float | None = 10.0) -> None:
        """Wait until the connection has closed, closing it ourselves after ``timeout``."""
        if self._closed:
            return
        try:
            await self._bounded(self._close_waiter(), _CLOSE, timeout)
        except DicomTimeout:
            if self._transport is not None:
                self._transport.abort()
            if not self._closed:
                await self._close_waiter()  # connection_lost follows the abort at once

    def _close_waiter(self) -> asyncio.Future[None]:
        """A future of its own for one wait, set by _connection_lost without a loop pass."""
        waiter: asyncio.Future[None] = self._new_future()
        waiters = self._close_waiters
        if isinstance(waiters, tuple):  # the first wait
            self._close_waiters = waiters = []
        waiters.append(waiter)
        return waiter

    @property
    def closed(self) -> bool:
        """True once the connection has closed."""
        return self._closed

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        # Read once: after the handshake (asyncio reports a TLS connection
        # made only then) and before the connection can go away.
        self._tls = tls_info(transport)
        if self._tls is None and isinstance(self._loop, asyncio.SelectorEventLoop):
            self._plain_selector = True
        self._last_received = now = self._clock()
        if not self.requestor:
            # Evt5.
            self._ul.connection_made(now)
            self._after_io()
        elif self._ul._fsm._state is _STA4:  # self._ul.state
            # Evt2: the request was prepared before connecting
            # (Association.prepare_request); it leaves from this callback.
            self._send_request()
        # After ARTIM (Evt5 starts it), which comes sooner: the timer is set
        # once, for ARTIM, rather than for the idle bound and then moved.
        self._arm_idle_timer()

    def _end_connection(self, transport: asyncio.Transport) -> None:
        """Close the connection: what we had to send is written first, within ARTIM.

        Every close of ours comes here. One that must wait (data the peer
        has not read yet; TLS, whose close_notify may queue behind buffers
        its transport does not report) is bounded by the ARTIM timeout
        whatever the state (PS3.8 Table 9-9 bounds the close in Sta13 so,
        AA-1 and AA-2; after the peer's A-ABORT, AA-3 to Sta1, nothing in
        the standard does). Once it passes, the connection is dropped with
        what is unwritten; a peer that stops reading would otherwise hold it
        open for as long as it liked.

        On asyncio's selector loop, a plain TCP transport with nothing left
        to write is closed with ``abort()``: the documented difference is
        only that buffered data is dropped, and there is none, so the same
        close follows (the socket closed, connection_lost called soon).
        ``close()`` would also take the descriptor off the selector's write
        watch, where it is not, a lookup that fails (a KeyError raised and
        re-raised with a formatted message: ~17k instructions) on every
        association.
        """
        if self._plain_selector and not transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
            self._bound_close(transport)

    def _bound_close(self, transport: asyncio.Transport) -> None:
        """Have a close that must wait end at the ARTIM timeout (see _end_connection)."""
        if (
            self._closing_at == math.inf
            and not self._closed
            and (self._tls is not None or transport.get_write_buffer_size())
        ):
            self._closing_at = self._clock() + self._ul.artim_timeout
            self._arm(self._closing_at)

    def _eof_received(self) -> None:
        """The peer closed its side: ours closes too, bounded as every close of ours.

        Plain TCP: by _end_connection. TLS: by the loop, once this returns
        (a TLS transport cannot be half-closed), bounded here.
        """
        transport = self._transport
        if transport is not None:
            if self._tls is None and not transport.is_closing():
                self._end_connection(transport)
            else:
                self._bound_close(transport)

    def _send_request(self) -> None:
        """Requestor, connected, A-ASSOCIATE-RQ given (Sta4): send it (Evt2, AE-2)."""
        if self._emitter is not None and self.request is not None:
            this: Any = self
            self._emitter.emit(ev.Requested(this, self.request))
        self._ul.connection_made(self._clock())
        self._after_io()

    def _data_received(self, nbytes: int) -> None:
        self._last_received = now = self._clock()
        share = self._share
        share.credit -= nbytes
        turns = self._turns
        if 0.0 < turns.budget <= turns.spent and turns.must_wait(share, now):
            # This turn's input budget is spent (adicom.turns): keep the
            # bytes, parse them in a later turn.
            if self._ul.receive_later(nbytes):
                self._defer_input()
            return
        upper = self._ul
        upper.receive_into(nbytes, now)
        self._after_io(now)
        # turns.charge(self._clock() - now), inline (every read):
        turns.spent += self._clock() - now
        if not turns._scheduled and turns.spent * 4.0 >= turns.budget > 0.0:
            turns.charge(0.0)  # schedules the next turn's work
        if upper._input_pending:  # upper.input_pending
            self._defer_input()
        elif self._gather_now:  # what the read brought matters (see _gather)
            if self._gather_now > 0:
                self._gather(now)
            self._gather_now = 0

    def _connection_lost(self, exc: Exception | None = None) -> None:
        try:
            if self._gather_pause is not None:
                self._gather_pause.cancel()
                self._gather_pause = None
            if isinstance(exc, SSLError) and self._error is None:
                # TLS 1.3 checks a client certificate after the client's side of
                # the handshake is done: the refusal arrives as an alert on read.
                self._set_error(
                    TlsError(f"TLS with {self._peer_name()}: {describe_tls_failure(exc)}")
                )
            if self._ul._input_pending:  # ul.input_pending
                # What the peer sent before it closed is still its word.
                self._ul.parse_budget = 0
                self._ul.parse_pending(self._clock())
            self._ul.connection_lost(self._clock())
            self._process_events()
            self._stop_timer()
            if self._error is None and not self._ended_normally():
                self._set_error(ConnectionClosed("the peer closed the connection"))
            if self._emitter is not None:
                self._emit_end()
            done = self._release_done
            if self._released and done is not None and not done.done():
                done.set_result(None)  # release() waits for the close after the answer
            self._fail_all(self._error or ConnectionClosed("the association has ended"))
            break_cycle(self._transport)
            # A hook that holds the association (a partial of it) would keep it
            # in a reference cycle: nothing comes to answer any more.
            self.on_request = self.on_association_request = None
        finally:
            # Even if the above failed: nobody waits for this connection,
            # and nobody counts it (the server's admission), for good.
            self._closed = True
            seen = self._request_seen
            if seen is not None and not seen.done():
                seen.set_result(None)  # closed before any A-ASSOCIATE-RQ
            for waiter in (*self._drain_waiters, *self._room_waiters, *self._close_waiters):
                if not waiter.done():
                    waiter.set_result(None)
            self._close_waiters = ()
            if (closed := self.on_closed) is not None:
                self.on_closed = None
                closed()

    def _resume_writing(self) -> None:
        self._paused = False
        waiters = self._drain_waiters
        while waiters:
            waiter = waiters.popleft()  # not empty: a deque
            if not waiter.done():
                waiter.set_result(None)

    # -- timers (the deadline and the loop's shared timer: adicom.deadlines) ---

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self._clock()
        try:
            # The layers fire what is due, nothing else (handle_timer).
            self._ul.handle_timer(now)
            for event in self._dimse.handle_timer(now):
                self._dispatch(event)
            self._after_io()  # sets the timer again for the layers' deadlines
        finally:
            # One timer carries every deadline: whatever the layers did, the
            # waits and the idle bound are still kept.
            if self._watched:
                self._expire_waits(now)
            if self.idle_timeout is not None and not self._closed:
                self._check_idle(now)
            if self._closing_at != math.inf and not self._closed:
                if self._closing_at <= now:
                    self._transport.abort()  # type: ignore[union-attr]  # see _end_connection
                else:
                    self._arm(self._closing_at)

    def _after_io(self, now: float | None = None) -> None:
        """Hand on the layers' events, write their output, arm their timers.

        Each step is called only when it has something to do: this runs
        after every read (a response sent from the read's callback has been
        written already), so the layers' queues and flags are read directly.
        """
        upper = self._ul
        events = upper._events
        if upper.trace or self._emitter is not None:
            if events or upper.trace:
                self._process_events(now)
        elif len(events) == 1 and (type(events[0]) is tuple or type(events[0]) is PDataTF):
            # _process_events of the usual read, one P-DATA-TF (its one PDV
            # bare, mostly: see UpperLayer._events) and nothing traced,
            # inline (every read).
            pdu: Any = events.popleft()  # a BarePDV or PDataTF, as tested
            for dimse_event in self._dimse.receive_pdata(
                pdu, self._clock() if now is None else now
            ):
                self._dispatch(dimse_event)
            if events:  # queued meanwhile (a DIMSE abort's events)
                self._process_events(now)
        elif events:
            self._process_events(now)
        if (
            upper._out
            or upper._close_requested
            or upper._abort_sent
            or self._batched
            or self._emitter is not None
        ):
            self._flush()
        if upper._artim_deadline is not None or self._dimse._deadline is not None:
            self._arm_timer()

    def _arm_timer(self) -> None:
        """The association's one deadline for the layers' (ARTIM, a message's), set lazily.

        A deadline that moves later (each message has its own) leaves the
        timer as it is: it fires early, finds nothing due and is set again.
        So the hot path never cancels and re-creates a timer per message.
        """
        # get_timer() of each layer, read directly (every read and every send).
        ul_at, dimse_at = self._ul._artim_deadline, self._dimse._deadline
        at = ul_at if dimse_at is None else dimse_at if ul_at is None else min(ul_at, dimse_at)
        if at is not None and at < self._timer_at:
            self._arm(at)

    def _write_now(self) -> None:
        """Write the PDUs the layers queued now, not when the transport callback ends.

        Data only: a close or an abort the layers asked for is left to the
        callback's end (_after_io), as ever; so are the trace's events.
        """
        upper = self._ul
        data = upper._out
        transport = self._transport
        if data and transport is not None and not upper._close_requested and not upper._abort_sent:
            upper._out = []
            if len(data) == 1:
                transport.write(data[0])
            else:
                transport.writelines(data)

    def _flush(self) -> None:
        self._batched = 0
        ul_ = self._ul
        transport = self._transport
        data = ul_._out
        if data:  # what ul_.data_to_send() gives, without a new list when empty
            ul_._out = []
            if transport is not None:
                if len(data) == 1:
                    transport.write(data[0])  # the usual small message
                else:
                    transport.writelines(data)
        if transport is None:
            return
        if self._emitter is not None:
            self._emit_trace()
        # ul_.close_requested, ul_.abort_sent, read directly (every write).
        if (ul_._close_requested or ul_._abort_sent) and not transport.is_closing():
            if ul_._abort_sent and self._error is None:
                # The DIMSE layer aborted (a message left half-sent).
                self._set_error(AssociationAborted(0, 0, local=True))
            self._end_connection(transport)
            done = self._release_done
            if self._released and done is not None and not done.done():
                # Released, and we close (AR-3, PS3.8 9.2): release() may go
                # on. The transport has just scheduled its connection_lost
                # (no data waits to be written), so that runs before the
                # waiting task does: a loop turn sooner than being told by
                # connection_lost. release() waits for the close otherwise.
                done.set_result(None)

    def _process_events(self, now: float | None = None) -> None:
        if self._emitter is not None:
            self._emit_trace()
        events = self._ul._events  # what next_event() takes from, read directly
        if not events:
            return
        take = events.popleft
        dimse = self._dimse
        dispatch = self._dispatch
        if now is None:
            now = self._clock()  # one callback: one moment
        while events:
            event = take()
            # A P-DATA indication is queued as its PDU, or its one PDV bare
            # (see UpperLayer._events).
            if type(event) is tuple or type(event) is PDataTF:
                for dimse_event in dimse.receive_pdata(event, now):
                    dispatch(dimse_event)
            else:
                for dimse_event in dimse.handle_event(event, now):  # type: ignore[arg-type]
                    dispatch(dimse_event)

    def _dispatch(self, event: DimseEvent) -> None:
        if type(event) is ResponseReceived:
            if self._emitter is not None:
                self._emit_received(event.message)
            self._on_response(event)
        elif type(event) is RequestReceived:
            self._gather_now = -1  # a request of the peer is answered without delay
            if self._emitter is not None:
                self._emit_received(event.message)
            answer = self.on_request
            # In order: one queued before it is answered first. And not
            # while more of the peer's messages wait to be handled: the
            # DIMSE layer counts those against the operations window
            # (PS3.7 D.3.3.3) as unanswered, as the peer sent them.
            incoming = self._incoming
            if (
                answer is None
                or incoming._items  # incoming.ready, read directly
                or incoming._error is not None
                or self._ul._events  # ul.has_events
                or not answer(event.message)
            ):
                self._incoming.put(event.message)
        else:
            self._gather_now = -1
            self._on_control_event(event)  # type: ignore[arg-type]

    def _on_response(self, event: ResponseReceived) -> None:
        message = event.message
        message_id = message.command.message_id_being_responded_to or 0  # event.message_id
        operation = self._operations.get(message_id)
        if operation is None:
            return  # the DIMSE layer keeps only what is awaited; nothing to do
        if operation._pending_taker is None:
            # operation.deliver(message): its queue's put, inline (every response).
            responses = operation._responses
            responses._items.append(message)
            waiter = responses._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            operation.deliver(message)
        if event.final:
            self._gather_now = -1
            del self._operations[message_id]
            if self._room_waiters:
                self._wake_room()
        else:
            # A pending response that nobody waits for (taken in this
            # callback: the queue stayed empty) lets the reads gather, unless
            # the read brought something else too (see _gather).
            if operation is not self._gathering or operation._responses._items:
                self._gather_now = -1
            elif not self._gather_now:
                self._gather_now = 1

    def _on_control_event(self, event: ul.ULEvent) -> None:
        if self._emitter is not None:
            self._lifecycle_event(event)
        if isinstance(event, ul.AssociationRequested):
            self.request = event.request
            seen = self._request_seen
            if seen is not None and not seen.done():
                seen.set_result(event.request)
            hook = self.on_association_request
            if hook is not None:
                self.on_association_request = None
                # A read's events come after all its bytes: an A-ABORT, a
                # close or a PDU we abort for, read with the request, has
                # ended what it began (Sta1, Sta13). Nothing to answer then;
                # the acceptor sees the connection end before an association.
                if self._ul.state is State.STA3:
                    hook(event.request)
        elif isinstance(event, _ANSWERS):
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
            # release() is told when the connection has closed (_connection_lost).
            self._released = True
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
            if self._tls is not None and event.state == State.STA5:
                # TLS 1.3 checks a client certificate once the client's side
                # of the handshake is done: a server that refuses ours (or
                # our lack of one) hangs up before any A-ASSOCIATE-AC.
                self._set_error(
                    TlsError(
                        f"TLS with {self._peer_name()}: the peer closed the connection after "
                        "the handshake, before answering the A-ASSOCIATE-RQ: it may require "
                        "a client certificate, or not trust ours"
                    )
                )
            else:
                hint = ""
                if event.state == State.STA5:
                    hint = " (before any answer to our A-ASSOCIATE-RQ: a port that wants TLS?)"
                self._set_error(
                    ConnectionClosed(
                        f"the peer closed the connection while the association was in "
                        f"{event.state.name.title()}{hint}"
                    )
                )
        elif isinstance(event, ul.ArtimExpired):
            self._set_error(
                DicomTimeout(
                    TimeoutKind.ARTIM, self._ul.artim_timeout, f"in {event.state.name.title()}"
                )
            )
            # ARTIM bounds the wait for the close (PS3.8 Table 9-9: AA-1
            # starts it, AA-2 closes on its expiry): what is still unwritten
            # then (an A-ABORT behind data the peer stopped reading) is
            # dropped with the connection. A graceful close would wait for a
            # peer that may never read.
            if self._transport is not None:
                self._transport.abort()

    def _peer_name(self) -> str:
        """The peer's AE title (the one that is not ours), or its address."""
        title = self.called_ae if self.requestor else self.calling_ae
        return title or str(self.peer_address or "?")

    def _close_soon(self) -> None:
        self._flush()
        self.close()

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
        # A sender waiting for the transport or for room in the window
        # learns of the end now (_check_open), not when the connection goes.
        for waiter in (*self._drain_waiters, *self._room_waiters):
            if not waiter.done():
                waiter.set_result(None)
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
        waiters = self._room_waiters
        while waiters:
            waiter = waiters.popleft()  # not empty: a deque
            if not waiter.done():
                waiter.set_result(None)
                return

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        state = self._ul._fsm._state  # self._ul.state
        if state is not _STA6 and state is not _STA8:
            raise LocalProtocolError(
                f"the association is not established (state {self._ul.state.name.title()})"
            )
