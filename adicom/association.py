"""The asyncio driver of one association: a socket, an UpperLayer, DIMSE messages.

This module holds no protocol logic. It moves bytes between the transport and
:class:`~adicom.protocol.UpperLayer`, turns upper layer events into DIMSE
messages (:mod:`adicom.dimse`) and futures, runs the ARTIM timer the core asks
for, and maps every failure once, here, to the exceptions of
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
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from adicom import protocol as ul
from adicom.dimse import (
    Command,
    CommandField,
    CommandReceived,
    DatasetReader,
    MessageAssembler,
    Priority,
    StatusCategory,
    c_store_rq,
    describe_status,
    fragment_message,
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
    RemoteProtocolError,
)
from adicom.fsm import State
from adicom.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ, PDataTF
from adicom.presentation import VERIFICATION, PresentationContext

__all__ = [
    "DEFAULT_MAX_PDU",
    "DatasetSink",
    "SinkFactory",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Association",
    "Message",
]

if TYPE_CHECKING:  # storescu builds on this module; only its types are needed here
    import os

    from pydicom.dataset import Dataset

    from adicom.storescu import StoreResult

log = logging.getLogger("adicom")

#: adicom's implementation class UID (PS3.7 D.3.3.2): a UUID-derived UID
#: under the 2.25 root (PS3.5 B.2), so it needs no registered root.
IMPLEMENTATION_CLASS_UID = "2.25.193100295771143521161366717771740821097"
#: Implementation version name (PS3.7 D.3.3.2.3): at most 16 characters.
IMPLEMENTATION_VERSION_NAME = "ADICOM_010"
#: The largest P-DATA-TF PDU we announce we can receive. Larger PDUs mean
#: fewer headers and writes on bulk transfers; each is held once in memory.
DEFAULT_MAX_PDU = 1 << 20
#: Longest time (s) sending one message holds the event loop before
#: letting other work run.
SEND_SLICE = 0.002

#: How many batched messages (pending responses) may wait to leave in one
#: write: a system call per small message cost more than encoding it.
BATCH_MESSAGES = 16
#: A message's PDUs are written once this many bytes are waiting.
WRITE_BYTES = 256 * 1024

#: The asynchronous operations window adicom proposes and accepts at most,
#: each way (PS3.7 D.3.3.3): this many C-STOREs in flight keep both sides
#: busy at once without holding much (their data sets stream).
ASYNC_WINDOW = 16


def check_window(async_window: int) -> int:
    """``async_window`` if it can be proposed (1 to 65535, PS3.7 D.3.3.3.1); else ValueError."""
    if not 1 <= async_window <= 0xFFFF:
        raise ValueError(f"async_window must be 1 to 65535, not {async_window}")
    return async_window


def window_size(proposed: int, limit: int) -> int:
    """A window value agreed down to ``limit`` (0 is "unlimited", PS3.7 D.3.3.3)."""
    if proposed == 0:
        return limit
    return min(proposed, limit)


class DatasetSink(Protocol):
    """Where the data set of an incoming message goes while it arrives.

    ``write`` is called with each fragment as its PDV comes in (from the
    transport's callback: it must not block long); ``abort`` if the
    association ends before the last fragment. A sink keeps its own errors
    (a full disk, say) and reports them when the message is handled.
    """

    def write(self, data: memoryview, /) -> None:
        """Take the next fragment of the data set."""
        ...

    def abort(self) -> None:
        """The data set will never be complete: drop what was written."""
        ...


#: Chooses a sink for the data set of an incoming message (context ID, command),
#: or None to gather it in memory.
SinkFactory = Callable[[int, Command], "DatasetSink | None"]


@dataclass(frozen=True, slots=True)
class Message:
    """A whole DIMSE message received on a presentation context.

    When the command announced a data set, it is in ``dataset`` (encoded in
    the context's transfer syntax) or, when a sink took it as it arrived,
    in ``sink``.
    """

    context_id: int
    command: Command
    dataset: bytes | None = None
    sink: DatasetSink | None = None


_END = Exception("end of messages")


class _Responses:
    """The responses to one request, in order, awaited by one task."""

    __slots__ = ("_error", "_items", "_ready", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._ready = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def put(self, message: Message) -> None:
        self._items.append(message)
        self._wake()

    def fail(self, error: BaseException | None) -> None:
        """End the stream: with an error to raise, or None for a normal end."""
        if self._error is None:
            self._error = error if error is not None else _END
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

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
        self._association._connection_lost(exc)

    def pause_writing(self) -> None:
        self._association._pause_writing()

    def resume_writing(self) -> None:
        self._association._resume_writing()


class Association:
    """One DICOM association, requestor or acceptor, on the running event loop.

    Users get one from :func:`adicom.connect` (requestor) or in a server
    handler (acceptor) rather than building it. ``contexts`` maps each
    presentation context ID to what was negotiated for it.
    """

    def __init__(
        self,
        *,
        requestor: bool,
        max_pdu: int = DEFAULT_MAX_PDU,
        artim_timeout: float = 10.0,
        dimse_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ul = ul.UpperLayer(
            requestor=requestor, max_pdu_length=max_pdu, artim_timeout=artim_timeout
        )
        self.requestor = requestor
        self.max_pdu = max_pdu
        self.dimse_timeout = dimse_timeout
        #: Abort when nothing at all arrives for this long (None: never).
        self.idle_timeout = idle_timeout
        self._last_received = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        #: Negotiated presentation contexts by ID (accepted and rejected).
        self.contexts: dict[int, PresentationContext] = {}
        #: The largest P-DATA-TF PDU the peer accepts (0: no limit).
        self.peer_max_pdu = 0
        #: How many of our requests may await their response at once: the
        #: asynchronous operations window negotiated for our direction
        #: (PS3.7 D.3.3.3; 1 when none was).
        self.max_outstanding = 1
        #: How many of the peer's requests may await our response at once;
        #: one more is a protocol violation (A-ABORT).
        self.max_incoming = 1
        self._unanswered: set[int] = set()
        #: The A-ASSOCIATE-RQ and -AC of this association, once exchanged.
        self.request: AAssociateRQ | None = None
        self.response: AAssociateAC | None = None
        self._transport: asyncio.Transport | None = None
        self._assembler = MessageAssembler()
        self._receiving: tuple[int, Command, list[bytes], DatasetSink | None] | None = None
        self._pending: dict[int, _Responses] = {}
        self._incoming: _Responses = _Responses()
        self._next_message_id = 0
        self._send_lock = asyncio.Lock()
        self._paused = False
        # Batched messages not written yet; a write of them is scheduled
        # while there are any (see send_message's ``batch``).
        self._batched = 0
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._error: DicomError | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._association_answer: asyncio.Future[ul.ULEvent] | None = None
        self._release_done: asyncio.Future[None] | None = None
        self._collision_pending = False
        self._released = False
        self._operations: set[Operation] = set()
        #: Chooses where incoming data sets go (see :class:`DatasetSink`).
        self.on_dataset: SinkFactory | None = None
        #: Called with the A-ASSOCIATE-RQ on the acceptor side.
        self.on_request: Callable[[AAssociateRQ], None] | None = None

    # -- properties --------------------------------------------------------

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

    def context_for(self, abstract_syntax: str) -> PresentationContext:
        """The first accepted context for an abstract syntax; raises if none."""
        for context in self.contexts.values():
            if context.accepted and context.abstract_syntax == abstract_syntax:
                return context
        raise LocalProtocolError(
            f"no accepted presentation context for {abstract_syntax} on this association"
        )

    # -- transport callbacks -------------------------------------------------

    def _connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._last_received = self._loop.time()
        self._arm_idle_timer()
        if not self.requestor:
            # Evt5. The requestor's Evt2 follows its Evt1 in _request().
            self._ul.connection_made(self._loop.time())
            self._after_io()

    def _data_received(self, nbytes: int) -> None:
        self._last_received = now = self._loop.time()
        self._ul.receive_into(nbytes, now)
        self._after_io()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._ul.connection_lost(self._loop.time())
        self._process_events()
        for timer in (self._timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._idle_timer = None
        if self._error is None and not self._ended_normally():
            self._set_error(ConnectionClosed("the peer closed the connection"))
        self._fail_all(self._error or ConnectionClosed("the association has ended"))
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def _pause_writing(self) -> None:
        self._paused = True

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
            "nothing received from %s for %g s; aborting", self.calling_ae, self.idle_timeout
        )
        self._set_error(DicomTimeout("idle", self.idle_timeout, "nothing received from the peer"))
        self._ul.abort(self._loop.time())
        self._close_soon()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._ul.handle_timer(self._loop.time())
        self._after_io()

    # -- the core loop: events in, bytes out --------------------------------

    def _after_io(self) -> None:
        self._process_events()
        self._flush()
        at = self._ul.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = None if at is None else self._loop.call_at(at, self._on_timer)

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
            transport.close()

    def _process_events(self) -> None:
        next_event = self._ul.next_event
        while (event := next_event()) is not None:
            if isinstance(event, ul.PDataReceived):
                self._on_pdata(event.pdu)
            else:
                self._on_control_event(event)

    def _on_control_event(self, event: ul.ULEvent) -> None:
        if isinstance(event, ul.AssociationRequested):
            self.request = event.request
            if self.on_request is not None:
                self.on_request(event.request)
        elif isinstance(event, ul.AssociationAccepted | ul.AssociationRejected):
            answer = self._association_answer
            if answer is not None and not answer.done():
                answer.set_result(event)
        elif isinstance(event, ul.ReleaseRequested):
            if event.collision:
                # PS3.8 9.2.4 / Table 9-10: in a release collision the
                # requestor answers first (Sta9 -> AR-9); the acceptor waits
                # for the requestor's A-RELEASE-RP (Sta10) and answers after.
                if self.requestor:
                    self._ul.respond_release(self._loop.time())
                else:
                    self._collision_pending = True
            else:
                self._ul.respond_release(self._loop.time())
                self._released = True
                self._incoming.fail(None)
                for waiter in self._pending.values():
                    waiter.fail(AssociationError("the peer released the association"))
                self._pending.clear()
        elif isinstance(event, ul.ReleaseConfirmed):
            self._released = True
            if self._collision_pending:
                self._collision_pending = False
                self._ul.respond_release(self._loop.time())
            if self._release_done is not None and not self._release_done.done():
                self._release_done.set_result(None)
        elif isinstance(event, ul.Aborted):
            self._set_error(
                AssociationAborted(
                    event.source, event.reason, local=event.local, detail=event.detail or None
                )
            )
            if event.local:
                log.warning("aborted the association with %s: %s", self.calling_ae, event.detail)
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
                DicomTimeout("ARTIM", self._ul.artim_timeout, f"in {event.state.name.title()}")
            )

    def _on_pdata(self, pdu: PDataTF) -> None:
        feed = self._assembler.feed
        contexts = self.contexts
        try:
            for pdv in pdu.pdvs:
                context = contexts.get(pdv.context_id)
                if context is None or not context.accepted:
                    raise RemoteProtocolError(
                        f"PDV on presentation context {pdv.context_id}, which was not accepted",
                        abort_reason=6,
                    )
                event = feed(pdv.context_id, pdv.is_command, pdv.is_last, pdv.data)
                if event is None:
                    continue
                if isinstance(event, CommandReceived):
                    command = event.command
                    if command.has_dataset:
                        factory = self.on_dataset
                        sink = None if factory is None else factory(event.context_id, command)
                        self._receiving = (event.context_id, command, [], sink)
                    else:
                        self._deliver(Message(event.context_id, command))
                elif self._receiving is not None:
                    context_id, command, parts, sink = self._receiving
                    if sink is not None:
                        sink.write(event.data)  # type: ignore[arg-type]
                    else:
                        parts.append(bytes(event.data))
                    if event.last:
                        self._receiving = None
                        dataset = None if sink is not None else b"".join(parts)
                        self._deliver(Message(context_id, command, dataset, sink))
        except RemoteProtocolError as exc:
            self._violation(exc)

    def _deliver(self, message: Message) -> None:
        command = message.command
        if not command.is_response and command.command_field != CommandField.C_CANCEL_RQ:
            # C-CANCEL-RQ is never answered (PS3.7 9.3.2.3): it takes no room.
            unanswered = self._unanswered
            unanswered.add(command.message_id or 0)
            if len(unanswered) > self.max_incoming:
                if message.sink is not None:
                    message.sink.abort()  # never stored: no half-made file stays
                raise RemoteProtocolError(
                    f"{len(unanswered)} requests await a response, beyond the "
                    f"asynchronous operations window of {self.max_incoming} (PS3.7 D.3.3.3)",
                    abort_reason=0,
                )
        if command.is_response:
            waiter = self._pending.get(command.message_id_being_responded_to or 0)
            if waiter is None:
                log.warning("response to unknown message ID: %s", command.describe())
                return
            if status_category(command.status or 0) is not StatusCategory.PENDING:
                del self._pending[command.message_id_being_responded_to or 0]
            waiter.put(message)
        else:
            self._incoming.put(message)

    def _violation(self, exc: RemoteProtocolError) -> None:
        """The peer broke DIMSE rules: abort (provider source, its reason) and close."""
        log.warning("aborting association: %s", exc)
        self._set_error(AssociationAborted(2, exc.abort_reason, local=True, detail=str(exc)))
        self._ul.abort(self._loop.time(), source=2, reason=exc.abort_reason)
        self._close_soon()

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
        if self._receiving is not None:
            sink = self._receiving[3]
            self._receiving = None
            if sink is not None:
                sink.abort()
        answer = self._association_answer
        if answer is not None and not answer.done():
            answer.set_exception(error)
        for waiter in self._pending.values():
            waiter.fail(error)
        self._pending.clear()
        self._incoming.fail(error)
        done = self._release_done
        if done is not None and not done.done():
            done.set_exception(error)

    # -- sending ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._ul.established and self._ul.state is not State.STA8:
            raise LocalProtocolError(
                f"the association is not established (state {self._ul.state.name.title()})"
            )

    def next_message_id(self) -> int:
        """A fresh Message ID (PS3.7 9.3.1.1: unique among outstanding requests)."""
        self._next_message_id = self._next_message_id % 0xFFFF + 1
        return self._next_message_id

    async def send_message(
        self,
        context_id: int,
        command: Command | bytes,
        dataset: bytes | memoryview | DatasetReader | None = None,
        *,
        batch: bool = False,
    ) -> None:
        """Send a DIMSE message, split into PDUs that fit the peer's maximum.

        ``command`` may be given already encoded (``Command.encode()``), for
        a response sent many times over, such as C-FIND's pending ones.
        ``batch`` says more messages follow at once (a stream of pending
        responses): it may wait for those, up to BATCH_MESSAGES of them or
        one pass of the event loop, and leave in the same write.
        A command and a small data set leave in one write. Waits while the
        transport's buffer is full (backpressure); a peer that stops reading
        for the DIMSE timeout aborts the association. A data set source that
        fails half-way (a file that shrank) aborts it too: a message cannot
        be taken back once part of it is on the wire.
        """
        self._check_open()
        if isinstance(command, bytes):
            encoded = command  # encoded ahead: a pending response, a request made early
        else:
            encoded = command.encode()
            if command.is_response and status_category(command.status or 0) is not (
                StatusCategory.PENDING
            ):
                self._unanswered.discard(command.message_id_being_responded_to or 0)
        async with self._send_lock:
            try:
                clock = self._loop.time
                yielded = clock()
                unwritten = 0
                for pdvs in fragment_message(context_id, encoded, dataset, self.peer_max_pdu):
                    self._check_open()
                    now = clock()
                    self._ul.send_pdata(pdvs, now)
                    # The PDUs of a message leave together, a write per
                    # WRITE_BYTES at the most (a peer's 16 KiB PDUs would
                    # otherwise cost a system call each).
                    unwritten += sum(len(data) for _, _, data in pdvs)
                    if unwritten >= WRITE_BYTES:
                        self._flush()
                        unwritten = 0
                    if now - yielded > SEND_SLICE and not self._paused:
                        # Loopback sockets swallow megabytes without pushing
                        # back, and a large file is read as it goes: let the
                        # loop run other work every few milliseconds.
                        await asyncio.sleep(0)
                        yielded = clock()
                    if self._paused:
                        self._flush()
                        waiter = self._loop.create_future()
                        self._drain_waiters.append(waiter)
                        await self._with_timeout(
                            waiter, "send", self.dimse_timeout, "the peer stopped reading"
                        )
                if batch and self._batched < BATCH_MESSAGES:
                    if not self._batched:
                        self._loop.call_soon(self._flush)
                    self._batched += 1
                else:
                    self._flush()
            except (OSError, DicomTimeout):
                self.abort()
                raise

    def expect_responses(self, message_id: int) -> _Responses:
        """Register interest in the responses to ``message_id`` (before sending it)."""
        waiter = _Responses()
        self._pending[message_id] = waiter
        return waiter

    def forget_responses(self, message_id: int) -> None:
        """Drop interest in the responses to ``message_id`` (they will be logged and ignored)."""
        self._pending.pop(message_id, None)

    async def wait_response(self, message_id: int, responses: _Responses, name: str) -> Command:
        """The (final) response to a request sent after :meth:`expect_responses`.

        Bounded by the DIMSE timeout; raises if the association ends first.
        """
        try:
            reply: Message | None = await self._with_timeout(
                responses.get(), "DIMSE", self.dimse_timeout, f"no {name}"
            )
        finally:
            self._pending.pop(message_id, None)
        if reply is None or reply.command.status is None:
            raise DimseError(0xFFFF, f"{name} without a status")
        return reply.command

    async def receive_request(self) -> Message | None:
        """The next request from the peer.

        Returns None once the peer has released the association; raises the
        reason when it ended any other way.
        """
        return await self._incoming.get()

    async def _with_timeout(
        self, awaitable: Any, which: str, seconds: float | None, detail: str = ""
    ) -> Any:
        if seconds is None:
            return await awaitable
        try:
            async with asyncio.timeout(seconds):
                return await awaitable
        except TimeoutError:
            raise DicomTimeout(which, seconds, detail) from None

    # -- DIMSE services ------------------------------------------------------

    async def send_request(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
    ) -> Command:
        """Send a request with a fresh Message ID and return its (one) response command.

        Bounded by the DIMSE timeout; raises if the association ends first.
        """
        message_id = self.next_message_id()
        command = replace(command, message_id=message_id)
        responses = self.expect_responses(message_id)
        try:
            await self.send_message(context_id, command, dataset)
        except BaseException:
            self._pending.pop(message_id, None)
            raise
        name = _response_name(command.command_field)
        return await self.wait_response(message_id, responses, name)

    async def start_operation(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
    ) -> Operation:
        """Send a request that may be answered many times (C-FIND, C-GET, C-MOVE).

        Take its responses with :meth:`Operation.next_response` until one is
        not pending; :meth:`Operation.cancel` sends C-CANCEL-RQ.
        """
        message_id = self.next_message_id()
        command = replace(command, message_id=message_id)
        responses = self.expect_responses(message_id)
        operation = Operation(
            self, context_id, message_id, _response_name(command.command_field), responses
        )
        self._operations.add(operation)
        try:
            await self.send_message(context_id, command, dataset)
        except BaseException:
            operation._finish()
            raise
        return operation

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

    async def store(self, source: str | os.PathLike[str] | Dataset) -> StoreResult:
        """Send one instance (a path or a pydicom Dataset); see :func:`adicom.store`.

        Returns a :class:`~adicom.storescu.StoreResult`; failures of this
        instance are in the result, not raised.
        """
        from adicom.storescu import store_instance

        return await store_instance(self, source)

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

    # -- association setup and teardown --------------------------------------

    async def _request(self, request: AAssociateRQ, timeout: float | None) -> None:
        """Requestor: send the A-ASSOCIATE-RQ and wait for the answer."""
        self.request = request
        self._association_answer = self._loop.create_future()
        self._ul.request_association(request, self._loop.time())
        assert self._ul.connect_requested
        if self._transport is not None:
            # The transport connected before we asked (it always has).
            self._ul.connection_made(self._loop.time())
            self._after_io()
        event = await self._with_timeout(
            self._association_answer,
            "association",
            timeout,
            f"no answer to the A-ASSOCIATE-RQ from {request.called_ae}",
        )
        if isinstance(event, ul.AssociationRejected):
            rj: AAssociateRJ = event.response
            raise AssociationRejected(rj.result, rj.source, rj.reason)
        self.response = event.response

    async def release(self, timeout: float | None = 10.0) -> None:
        """Release the association (A-RELEASE) and close the connection.

        Aborts instead if the peer does not answer within ``timeout``.
        """
        if self._error is not None or self._ul.state is State.STA1:
            self.close()
            return
        # PS3.7 does not let a requestor release under outstanding
        # operations: cancel them first (bounded; aborts if unanswered).
        for operation in list(self._operations):
            await operation.cancel()
        if self._error is not None:
            self.close()
            return
        self._release_done = self._loop.create_future()
        self._ul.request_release(self._loop.time())
        self._after_io()
        try:
            await self._with_timeout(asyncio.shield(self._release_done), "release", timeout)
        except DicomTimeout:
            self.abort()
            raise
        finally:
            if not self._release_done.done():
                self._release_done.cancel()
        await self.wait_closed(timeout)

    def abort(self) -> None:
        """Abort the association (A-ABORT, service-user source) and close the connection."""
        if self._ul.state not in (State.STA1, State.STA13):
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
            await self._with_timeout(asyncio.shield(self._closed), "close", timeout)
        except DicomTimeout:
            if self._transport is not None:
                self._transport.abort()
            await asyncio.shield(self._closed)

    def _handle_transport(self) -> Callable[[], asyncio.BufferedProtocol]:
        return lambda: _Transport(self)


def _response_name(command_field: int) -> str:
    try:
        return CommandField(command_field | 0x8000).name.replace("_", "-")
    except ValueError:
        return f"response to command 0x{command_field:04X}"


class Operation:
    """An outstanding request and its responses (PS3.7 9.1.2 to 9.1.4).

    Responses come in order; pending ones (0xFF00, 0xFF01) are followed by
    exactly one final response. Waiting for each is bounded by the
    association's DIMSE timeout.
    """

    def __init__(
        self,
        association: Association,
        context_id: int,
        message_id: int,
        name: str,
        responses: _Responses,
    ) -> None:
        self.association = association
        self.context_id = context_id
        self.message_id = message_id
        self.name = name
        self._responses = responses
        #: True once the final response arrived (or the operation was given up).
        self.done = False
        #: True once C-CANCEL-RQ was sent.
        self.cancel_sent = False

    def _finish(self) -> None:
        self.done = True
        self.association._operations.discard(self)
        self.association._pending.pop(self.message_id, None)

    async def next_response(self, timeout: float | None = None) -> Message:
        """The next response; raises DicomTimeout if none comes in time."""
        if self.done:
            raise LocalProtocolError(f"{self.name}: the final response has been received")
        seconds = self.association.dimse_timeout if timeout is None else timeout
        try:
            reply: Message | None = await self.association._with_timeout(
                self._responses.get(), "DIMSE", seconds, f"no {self.name}"
            )
        except BaseException:
            if self.association._error is not None:
                self._finish()
            raise
        if reply is None:
            self._finish()
            raise AssociationError(f"the association ended before the final {self.name}")
        if reply.command.status is None:
            self._finish()
            raise DimseError(0xFFFF, f"{self.name} without a status")
        if status_category(reply.command.status) is not StatusCategory.PENDING:
            self._finish()
        return reply

    async def cancel(self, wait: float = 5.0) -> Message | None:
        """Send C-CANCEL-RQ and wait up to ``wait`` seconds for the final response.

        Returns the final response (usually status 0xFE00, Cancel), or None
        when the peer did not answer in time: the association is then
        aborted, since its state is no longer known (PS3.7 9.3.2.3).
        Pending responses that arrive meanwhile are dropped.
        """
        association = self.association
        if self.done:
            return None
        if not association.is_established:
            self._finish()
            return None
        if not self.cancel_sent:
            self.cancel_sent = True
            cancel = Command(
                CommandField.C_CANCEL_RQ, message_id_being_responded_to=self.message_id
            )
            try:
                await association.send_message(self.context_id, cancel)
            except DicomError:
                self._finish()
                return None
        deadline = association._loop.time() + wait
        try:
            while not self.done:
                remaining = deadline - association._loop.time()
                if remaining <= 0:
                    raise DicomTimeout("cancel", wait)
                reply = await self.next_response(remaining)
                if self.done:
                    return reply
        except DicomTimeout:
            log.warning("%s: no final response %g s after C-CANCEL; aborting", self.name, wait)
            self._finish()
            association.abort()
        except DicomError:
            self._finish()
        return None
