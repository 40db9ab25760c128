"""The DIMSE connection: upper layer events in, whole DIMSE messages out (sans-I/O).

:class:`DimseConnection` sits on an :class:`~adicom.protocol.UpperLayer` the
way aioquic's HTTP/3 layer sits on QUIC. The driver hands it each upper
layer event with :meth:`~DimseConnection.handle_event` and gets back DIMSE
events: :class:`RequestReceived` and :class:`ResponseReceived` for whole
messages, and the upper layer's own events (association, release, abort)
passed through once their DIMSE consequences are dealt with. To send, the
driver asks :meth:`~DimseConnection.send` for an :class:`OutgoingMessage`
and takes its PDUs one at a time, so it can wait on flow control between
them; the PDUs go into the upper layer's output.

What this layer decides, so that no driver has to:

* reassembly of PDVs into messages, and their order (PS3.8 Annex E);
* where a data set goes while it arrives: in memory, or streamed into a
  :class:`DatasetSink` that the sink factory chooses when the command is in
  (a C-STORE's data set is written to disk as it arrives);
* Message IDs: fresh ones for our requests (PS3.7 9.3.1.1: unique among
  those outstanding), and which request each response answers;
* the asynchronous operations window (PS3.7 D.3.3.3): ours is never
  exceeded, and a peer that exceeds its own is aborted;
* a message cannot be taken back once part of it is on the wire: one left
  half-sent aborts the association;
* an A-RELEASE-RQ from the peer is answered at once (a release cannot be
  refused, PS3.8 7.2); release collisions are the upper layer's business.

A peer that breaks these rules gets an A-ABORT (service-provider source,
PS3.8 Table 9-26) and the driver an :class:`~adicom.protocol.Aborted` event
with ``local`` set, exactly as for a malformed PDU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from adicom import protocol as ul
from adicom.dimse.commands import NO_DATASET, Command, CommandField, is_n
from adicom.dimse.framing import (
    MAX_SEND_PDU,
    CommandReceived,
    DatasetReader,
    MessageAssembler,
    fragment_message,
)
from adicom.errors import LocalProtocolError, RemoteProtocolError
from adicom.fsm import State
from adicom.negotiation import Agreement
from adicom.pdu import MAX_PDVS_PER_PDU, PDataTF
from adicom.pdu.pdus import BarePDV, bare_pdata
from adicom.pdu.wire import frozen_builder
from adicom.presentation import PresentationContext

__all__ = [
    "DatasetSink",
    "DimseConnection",
    "DimseEvent",
    "Limits",
    "Message",
    "OutgoingMessage",
    "RequestReceived",
    "ResponseReceived",
    "SinkFactory",
]

log = logging.getLogger("adicom.dimse")


class DatasetSink(Protocol):
    """Where the data set of an incoming message goes while it arrives.

    ``write`` is called with each fragment as its PDV comes in (from the
    transport's callback: it must not block long, and must copy what it
    keeps, since the buffer is reused); ``abort`` if the association ends
    before the last fragment. A sink keeps its own errors (a full disk, say)
    and reports them when the message is handled.
    """

    def write(self, data: memoryview, /) -> None:
        """Take the next fragment of the data set.

        ``data`` is a view of the buffer the fragment was received in (the
        driver's, shared by its loop's associations), valid only during the
        call: the next read overwrites it. Write it out or copy it
        (``bytes(data)``); never keep the view. The view is released when
        the call returns, so a kept one raises ``ValueError`` at its next
        use; a buffer still exported from it then (an iterator over it,
        say) gets the instance refused. A slice of it is not caught: copy.
        """
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
    in ``sink``. ``refused`` says why a data set was dropped as it arrived
    (larger than :attr:`Limits.max_instance`): the message is whole, the data
    set gone, and the request is to be answered with a failure status.
    """

    context_id: int
    command: Command
    dataset: bytes | None = None
    sink: DatasetSink | None = None
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one peer can make the DIMSE layer hold or wait for.

    Each is checked as the bytes arrive. ``max_command``: the bytes of one
    command set (they are a few hundred); ``max_dataset``: a data set kept
    in memory (identifiers, and anything no sink takes), beyond which the
    association is aborted (identifiers are decoded on the event loop, about
    a second per megabyte of small elements, so this bounds that work too);
    ``max_instance`` (None: no limit): a data set streamed to a sink (a
    C-STORE's), beyond which it is dropped and the request refused with a
    failure status; ``max_pdvs``: the PDVs of one P-DATA-TF PDU (the work
    one PDU can cost; beyond it, A-ABORT 2/6); ``message_timeout`` (None: none):
    seconds from a message's first PDV to its last, whatever trickles in
    between; ``max_n_dataset``: the data set of a DIMSE-N message, held and
    decoded like an identifier but larger by nature (a Storage Commitment
    request lists every instance of a study: about 120 bytes each, so the
    default takes some 4,000). Zero means no limit for the sizes.
    """

    max_command: int = 64 * 1024
    max_dataset: int = 64 * 1024
    max_pdvs: int = MAX_PDVS_PER_PDU
    max_instance: int | None = None
    message_timeout: float | None = 300.0
    max_n_dataset: int = 512 * 1024


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer sent a request (C-CANCEL-RQ included)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The peer answered one of our outstanding requests.

    ``final`` is False for pending responses (PS3.7 C.2): more follow.
    """

    message: Message
    final: bool

    @property
    def message_id(self) -> int:
        """The Message ID of the request this answers."""
        return self.message.command.message_id_being_responded_to or 0


DimseEvent = RequestReceived | ResponseReceived | ul.ULEvent


# Read on every message, as a plain int: an Enum member read through its
# class costs a descriptor call (Python 3.11).
_C_CANCEL_RQ = int(CommandField.C_CANCEL_RQ)
_decode_command = Command.decode
_STA8 = State.STA8
# Made once (an X | Y in an isinstance call makes a union object each time).
_ENDS = (ul.Aborted, ul.ConnectionLost, ul.ArtimExpired)

#: The limits of a connection given none (frozen: one serves them all).
_DEFAULT_LIMITS = Limits()

# The same as calling the classes, faster (one each per message received).
_new_message = frozen_builder(Message)
_new_request_received = frozen_builder(RequestReceived)
_new_response_received = frozen_builder(ResponseReceived)


@dataclass(slots=True)
class _Receiving:
    """The message whose data set is arriving."""

    context_id: int
    command: Command
    parts: list[bytes]
    sink: DatasetSink | None
    size: int = 0
    refused: str | None = None


class OutgoingMessage:
    """One DIMSE message on its way out, a P-DATA-TF PDU at a time.

    Call :meth:`next_pdu` until it returns None; a data set read from a file
    is read only as its PDUs are taken. :meth:`close` when giving up: a
    message with PDUs already on the wire and some not cannot be taken
    back, so the association is aborted (PS3.8 has no way to retract it).
    """

    __slots__ = ("_command", "_connection", "_fragments", "_started", "finished")

    def __init__(
        self, connection: DimseConnection, command: Command, fragments: Iterator[list[Pdv]]
    ) -> None:
        self._connection = connection
        self._command = command
        self._fragments = fragments
        self._started = False
        #: True once every PDU of the message is queued (or it was given up).
        self.finished = False

    def next_pdu(self, now: float) -> int | None:
        """Queue the next PDU in the upper layer; its payload size, or None when done.

        Raises :class:`~adicom.errors.LocalProtocolError` once the
        association can carry no data, and OSError when a data set source
        ends early (the message is then half-sent: the caller closes it).
        """
        if self.finished:
            return None
        pdvs = next(self._fragments, None)
        if pdvs is None:
            self.finished = True
            self._connection._sent(self._command)
            return None
        self._started = True
        self._connection.ul.send_pdata(pdvs, now)
        return sum(len(data) for _, _, data in pdvs)

    def close(self, now: float) -> None:
        """Give up on the message; aborts the association if it was half-sent."""
        if self.finished:
            return
        self.finished = True
        self._connection._sending = None
        upper = self._connection.ul
        if self._started and upper.state is not State.STA1 and upper.state is not State.STA13:
            # (Once the association has ended, by an abort or a close,
            # there is nothing left to abort, and nothing to warn of.)
            log.warning("a DIMSE message was left half-sent; aborting the association")
            upper.abort(now)


#: (presentation context ID, message control header, data), PS3.8 E.2.
Pdv = tuple[int, int, "bytes | memoryview"]


class DimseConnection:
    """The DIMSE side of one association, without I/O.

    Created with the association's :class:`~adicom.protocol.UpperLayer`;
    :meth:`agree` gives it what negotiation settled before any message
    flows. ``sink_factory``, when set, chooses where incoming data sets go.
    """

    def __init__(self, upper_layer: ul.UpperLayer, limits: Limits | None = None) -> None:
        self.ul = upper_layer
        self.limits = limits or _DEFAULT_LIMITS
        #: Negotiated presentation contexts by ID (accepted and rejected).
        self.contexts: dict[int, PresentationContext] = {}
        #: The largest P-DATA-TF PDU the peer accepts (0: no limit).
        self.peer_max_pdu = 0
        #: How many of our requests may await their response at once
        #: (PS3.7 D.3.3.3; 1 when no window was negotiated).
        self.max_outstanding = 1
        #: How many of the peer's requests may await our response at once;
        #: one more is a protocol violation (A-ABORT).
        self.max_incoming = 1
        #: Chooses where incoming data sets go (see :class:`DatasetSink`).
        self.sink_factory: SinkFactory | None = None
        self._assembler = MessageAssembler(self.limits.max_command)
        self._receiving: _Receiving | None = None
        self._deadline: float | None = None
        #: Our requests awaiting a final response: Message ID -> command field.
        self._outstanding: dict[int, int] = {}
        #: The peer's requests we have not answered finally yet.
        self._unanswered: set[int] = set()
        self._last_message_id = 0
        self._sending: OutgoingMessage | None = None

    def agree(self, agreement: Agreement) -> None:
        """Take what negotiation settled (contexts, peer's maximum PDU, window)."""
        self.contexts = dict(agreement.contexts)
        self.peer_max_pdu = agreement.peer_max_pdu
        self.max_outstanding = agreement.max_outstanding
        self.max_incoming = agreement.max_incoming

    # -- our requests ---------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """How many of our requests await a final response."""
        return len(self._outstanding)

    @property
    def can_request(self) -> bool:
        """True when the window has room for one more request of ours."""
        return len(self._outstanding) < self.max_outstanding

    def is_outstanding(self, message_id: int) -> bool:
        """True while the request ``message_id`` awaits its final response."""
        return message_id in self._outstanding

    def next_message_id(self) -> int:
        """A fresh Message ID (PS3.7 9.3.1.1: unique among outstanding requests)."""
        message_id = self._last_message_id % 0xFFFF + 1
        if message_id not in self._outstanding:  # the usual case: no loop (a range costs ~1.5k)
            self._last_message_id = message_id
            return message_id
        for _ in range(0x10000):
            message_id = message_id % 0xFFFF + 1
            if message_id not in self._outstanding:
                self._last_message_id = message_id
                return message_id
        raise LocalProtocolError("every Message ID is in use")  # pragma: no cover

    def forget(self, message_id: int) -> None:
        """Stop expecting responses to ``message_id``; later ones are logged and dropped."""
        self._outstanding.pop(message_id, None)

    # -- sending --------------------------------------------------------------

    def send(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | DatasetReader | None = None,
        *,
        encoded: bytes | None = None,
    ) -> OutgoingMessage:
        """Start sending a message: its PDUs are taken from the returned object.

        ``encoded`` is ``command`` already encoded (a pending response sent
        many times, a request made ready while the peer was busy). A
        request must carry its Message ID and fit in the window
        (:attr:`can_request`); C-CANCEL-RQ is never answered and takes no
        room. Only one message can be on its way at a time: PDVs of two
        messages must not interleave (PS3.8 E.2).
        """
        self._check_send(context_id, command)
        raw = command.encode() if encoded is None else encoded
        fragments = fragment_message(context_id, raw, dataset, self.peer_max_pdu)
        self._sending = OutgoingMessage(self, command, fragments)
        return self._sending

    def send_whole(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | memoryview | None,
        now: float,
        *,
        encoded: bytes | None = None,
    ) -> bool:
        """Send a small message at once, in one PDU: True if done, False if it does not fit.

        The same message as :meth:`send` would give, without its per-PDU
        machinery: a command and a data set (in memory) that fit the
        peer's maximum PDU together leave as one P-DATA-TF PDU (two PDVs,
        PS3.8 E.2). Returns False, having done nothing, when they do not
        fit; :meth:`send` then splits the message.
        """
        raw = command.encode() if encoded is None else encoded
        # The PDU's length: a 6-byte header per PDV (PS3.8 9.3.5.1).
        size = len(raw) + 6 + (0 if dataset is None else len(dataset) + 6)
        limit = self.peer_max_pdu
        if (limit and size > limit) or size > MAX_SEND_PDU:
            return False
        self._check_send(context_id, command)
        if dataset is None:
            self.ul.send_pdv(context_id, 3, raw, now)
        else:
            self.ul.send_pdata(((context_id, 3, raw), (context_id, 2, dataset)), now)
        self._sent(command)
        return True

    def send_request_now(
        self, context_id: int, command_field: int, message_id: int, encoded: bytes, now: float
    ) -> bool:
        """:meth:`send_whole` of a request without a data set, given as its bytes alone.

        For a request made from a template (a C-ECHO-RQ: see
        :class:`~adicom.dimse.RequestTemplate`) that nobody needs as a
        Command: the checks and the count of outstanding requests read only
        its Command Field and Message ID. Not for C-CANCEL-RQ (it takes no
        room in the window). False, having done nothing, when it does not
        fit one PDU.
        """
        size = len(encoded) + 6  # the PDU's length: the PDV's header and data
        limit = self.peer_max_pdu
        if (limit and size > limit) or size > MAX_SEND_PDU:
            return False
        # self._check_context(context_id), inline (every templated request):
        context = self.contexts.get(context_id)
        if self._sending is not None or context is None or context.result != 0:
            self._check_context(context_id)  # raises
        outstanding = self._outstanding
        if message_id in outstanding or len(outstanding) >= self.max_outstanding:
            self._check_send(context_id, Command(command_field, message_id=message_id))  # raises
        self.ul.send_pdv(context_id, 3, encoded, now)
        outstanding[message_id] = command_field  # what _sent counts of a request
        return True

    def send_response(
        self, context_id: int, responded_to: int, status: int, encoded: bytes, now: float
    ) -> bool:
        """:meth:`send_whole` of a response without a data set, given as its bytes alone.

        For a response made from a template (a C-STORE-RSP, a C-ECHO-RSP:
        see :class:`~adicom.dimse.ResponseTemplate`), which then needs no
        Command made: the checks and the count of the peer's requests not
        answered yet read only the Message ID it answers and its status.
        False, having done nothing, when it does not fit one PDU.
        """
        size = len(encoded) + 6  # the PDU's length: the PDV's header and data
        limit = self.peer_max_pdu
        if (limit and size > limit) or size > MAX_SEND_PDU:
            return False
        # self._check_context(context_id), inline (every response):
        context = self.contexts.get(context_id)
        if self._sending is not None or context is None or context.result != 0:
            self._check_context(context_id)  # raises
        self.ul.send_pdv(context_id, 3, encoded, now)
        if status != 0xFF00 and status != 0xFF01:  # final, not pending (PS3.7 C.4): see _sent
            self._unanswered.discard(responded_to)
        return True

    def _check_context(self, context_id: int) -> None:
        """Raise LocalProtocolError unless a message may be sent now on ``context_id``."""
        if self._sending is not None:
            raise LocalProtocolError("another message is still being sent")
        context = self.contexts.get(context_id)
        if context is None or context.result != 0:  # not context.accepted
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")

    def _check_send(self, context_id: int, command: Command) -> None:
        """Raise LocalProtocolError unless ``command`` may be sent now on ``context_id``."""
        self._check_context(context_id)
        if not command.command_field & 0x8000 and command.command_field != _C_CANCEL_RQ:
            message_id = command.message_id
            if message_id is None:
                raise LocalProtocolError("a request needs a Message ID (next_message_id)")
            if message_id in self._outstanding:
                raise LocalProtocolError(f"Message ID {message_id} is already outstanding")
            if len(self._outstanding) >= self.max_outstanding:  # not self.can_request
                raise LocalProtocolError(
                    f"{len(self._outstanding)} requests are outstanding: the asynchronous "
                    f"operations window of {self.max_outstanding} is full"
                )

    def _sent(self, command: Command) -> None:
        """A message is wholly queued: count a request as outstanding, or a final answer.

        No response can come before the whole request has gone, so a request
        counted only now loses nothing; one given up before it was whole
        never counts.
        """
        self._sending = None
        if command.command_field & 0x8000:  # command.is_response
            status = command.status
            if status != 0xFF00 and status != 0xFF01:  # not pending (PS3.7 C.4)
                self._unanswered.discard(command.message_id_being_responded_to or 0)
        elif command.command_field != _C_CANCEL_RQ:
            self._outstanding[command.message_id or 0] = command.command_field

    # -- receiving ------------------------------------------------------------

    def handle_event(self, event: ul.ULEvent, now: float) -> list[DimseEvent]:
        """Take one upper layer event; return what it means for DIMSE, in order."""
        if type(event) is ul.PDataReceived:
            return self.receive_pdata(event.pdu, now)
        if isinstance(event, ul.ReleaseRequested) and not event.collision:
            # Still waiting for our answer (Sta8)? Events are queued as the
            # bytes are parsed: an A-ABORT read in the same breath may have
            # ended the association already.
            if self.ul._fsm._state is _STA8:  # self.ul.state
                self.ul.respond_release(now)
        elif isinstance(event, _ENDS):
            self._drop_receiving()
        return [event]

    def receive_pdata(self, pdu: PDataTF | BarePDV, now: float) -> list[DimseEvent]:
        """:meth:`handle_event` of a :class:`~adicom.protocol.PDataReceived` of ``pdu``.

        For a driver that takes the upper layer's P-DATA indications as
        their PDUs (or, for a PDU of one PDV, that PDV bare: see
        :meth:`adicom.pdu.PDUReader.next_bare`), making no event object for them.
        """
        if self.ul._abort_sent:  # ul.abort_sent
            return []  # parsed before our A-ABORT went out: moot now
        data: bytes | memoryview
        if isinstance(pdu, tuple):
            context_id, control, data = pdu  # the usual PDU, one PDV bare
        elif len(pdu.pdvs) == 1:
            pdv = pdu.pdvs[0]
            context_id, control, data = pdv.context_id, pdv.control, pdv.data
        else:
            return self._receive_general(pdu, now)
        # The usual PDU while a data set arrives: one PDV, the next
        # fragment of the message in progress (a C-STORE's, 16 KiB at a
        # time from DCMTK). _receive_pdata's checks for it, without its
        # loop and calls: data, not a command; on the context of the
        # message (accepted: its command came on it, and contexts do not
        # change on an association); a command announced it and no last
        # fragment came yet (PS3.8 E.2). Anything else goes the general way.
        assembler = self._assembler
        receiving = self._receiving
        if (
            receiving is not None
            and not control & 1
            and assembler._expect_data
            and context_id == assembler._context
        ):
            try:
                if (
                    control & 2
                    and not receiving.parts
                    and receiving.sink is None
                    and receiving.refused is None
                ):
                    # The whole data set in this PDV (a C-FIND match, an
                    # N-service's): what _take and _received do with it,
                    # without the list of parts.
                    receiving.size += len(data)
                    self._check_memory(receiving)
                    message = _new_message(
                        receiving.context_id, receiving.command, bytes(data), None, None
                    )
                else:
                    self._take(receiving, data)
                    if not control & 2:
                        return []  # the message's deadline runs from its first PDV
                    message = self._received(receiving)
                assembler._expect_data = False  # assembler.data_in_order's end
                assembler._context = None
                self._receiving = None
                self._deadline = None  # idle: between messages
                delivered = self._deliver(message)
            except RemoteProtocolError as exc:
                return [self._violation(exc, now)]
            return [] if delivered is None else [delivered]
        if control & 3 == 3 and assembler._context is None:  # a command's last fragment
            # The usual PDU between messages: one PDV holding a whole
            # command set (a request, a pending C-GET / C-MOVE / C-FIND
            # response, a C-STORE-RQ before its data set).
            # _receive_pdata's checks for it, without its loop: on an
            # accepted context; between messages, a command may start
            # on any (PS3.8 E.2).
            context = self.contexts.get(context_id)
            if context is not None and context.result == 0:  # context.accepted
                try:
                    limit = assembler.max_command
                    if limit and len(data) > limit:
                        assembler.whole_command(context_id, data)  # raises
                    command = _decode_command(data)
                    if command.command_data_set_type == NO_DATASET:
                        # What whole_command and _command_in do with a
                        # message without a data set, inline (the
                        # assembler stays idle).
                        delivered = self._deliver(
                            _new_message(context_id, command, None, None, None)
                        )
                        return [] if delivered is None else [delivered]
                    assembler._expect_data = True  # whole_command's, as it returns
                    assembler._context = context_id
                    delivered = self._command_in(context_id, command)
                except RemoteProtocolError as exc:
                    return [self._violation(exc, now)]
                if self._receiving is not None:
                    # Its data set is to come: Limits.message_timeout
                    # runs from the command.
                    timeout = self.limits.message_timeout
                    if timeout is not None:
                        self._deadline = now + timeout
                    return []
                return [] if delivered is None else [delivered]
        return self._receive_general(bare_pdata(pdu) if isinstance(pdu, tuple) else pdu, now)

    def _receive_general(self, pdu: PDataTF, now: float) -> list[DimseEvent]:
        """:meth:`receive_pdata` for any PDU (its fast path gives the same, sooner)."""
        out: list[DimseEvent] = []
        try:
            self._receive_pdata(pdu, out)
        except RemoteProtocolError as exc:
            out.append(self._violation(exc, now))
            return out
        # The message's deadline (Limits.message_timeout) runs from its
        # first PDV to its last.
        if self._assembler._context is None:  # idle: between messages
            self._deadline = None
        elif self._deadline is None and self.limits.message_timeout is not None:
            self._deadline = now + self.limits.message_timeout
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called: the deadline of the message arriving."""
        return self._deadline

    def handle_timer(self, now: float) -> list[DimseEvent]:
        """Abort if the message arriving has not come whole by its deadline."""
        if self._deadline is None or now < self._deadline:
            return []
        seconds = self.limits.message_timeout
        return [
            self._violation(
                RemoteProtocolError(
                    f"a message was not complete {seconds:g} s after its first fragment",
                    abort_reason=0,
                ),
                now,
            )
        ]

    def _command_in(
        self, context_id: int, command: Command
    ) -> RequestReceived | ResponseReceived | None:
        """A whole command set received: its data set is awaited, or its message delivered."""
        if command.command_data_set_type != NO_DATASET:  # command.has_dataset
            factory = self.sink_factory
            sink = None if factory is None else factory(context_id, command)
            self._receiving = _Receiving(context_id, command, [], sink)
            return None
        return self._deliver(_new_message(context_id, command, None, None, None))

    def _receive_pdata(self, pdu: PDataTF, out: list[DimseEvent]) -> None:
        assembler = self._assembler
        contexts = self.contexts
        for pdv in pdu.pdvs:
            context_id = pdv.context_id
            context = contexts.get(context_id)
            if context is None or context.result != 0:  # not context.accepted
                raise RemoteProtocolError(
                    f"PDV on presentation context {context_id}, which was not accepted",
                    abort_reason=6,
                )
            # The usual PDVs (a whole command set between messages, a data
            # set fragment in order) skip the assembler's events; the others
            # go through feed(), which gathers a split command and refuses
            # what breaks PS3.8 E.2. Both ways give the same.
            if pdv.is_command:
                if pdv.is_last and assembler._context is None:  # assembler.idle
                    command = assembler.whole_command(context_id, pdv.data)
                else:
                    event = assembler.feed(context_id, True, pdv.is_last, pdv.data)
                    if event is None:
                        continue
                    assert isinstance(event, CommandReceived)
                    command = event.command
                if (delivered := self._command_in(context_id, command)) is not None:
                    out.append(delivered)
                continue
            last = pdv.is_last
            if not assembler.data_in_order(context_id, last):
                assembler.feed(context_id, False, last, pdv.data)  # raises
                raise AssertionError("the assembler took a data set PDV out of order")
            receiving = self._receiving
            assert receiving is not None  # the assembler saw the command first
            self._take(receiving, pdv.data)
            if last:
                self._receiving = None
                if (delivered := self._deliver(self._received(receiving))) is not None:
                    out.append(delivered)

    @staticmethod
    def _received(receiving: _Receiving) -> Message:
        """The message whose last data set fragment has come."""
        dataset = None if receiving.sink is not None else b"".join(receiving.parts)
        return _new_message(
            receiving.context_id,
            receiving.command,
            dataset if receiving.refused is None else None,
            receiving.sink,
            receiving.refused,
        )

    def _take(self, receiving: _Receiving, data: bytes | memoryview) -> None:
        """One data set fragment: into the sink, or memory, within the limits."""
        receiving.size += len(data)
        if receiving.refused is not None:
            return  # dropped as it comes: the request will be refused
        sink = receiving.sink
        if sink is not None:
            limit = self.limits.max_instance
            if limit and receiving.size > limit:
                # Not a protocol error: the SCP refuses this instance
                # (PS3.4 B.2.3, out of resources) once the message is in.
                receiving.refused = (
                    f"the data set is larger than the {limit} bytes this SCP accepts"
                )
                receiving.sink = None
                sink.abort()
                return
            # The fragment is lent (a view of the loop's receive buffer,
            # which the next read overwrites): the sink gets a view of its
            # own, released when write() returns, so a sink that kept it
            # fails loudly at its next use instead of reading later bytes.
            view = memoryview(data)
            sink.write(view)
            try:
                view.release()
            except BufferError:
                # The sink holds a buffer export of the view past the call:
                # what it would read later is not this instance. Refused
                # (the storage's own fault, PS3.4 B.2.3), and nothing filed.
                log.error(
                    "%s kept a buffer of a received data set fragment past write(); "
                    "a sink must write or copy what it is given (bytes(data))",
                    type(sink).__name__,
                )
                receiving.refused = "the storage kept a received fragment it must copy"
                receiving.sink = None
                sink.abort()
            return
        self._check_memory(receiving)
        receiving.parts.append(bytes(data))

    def _check_memory(self, receiving: _Receiving) -> None:
        """Abort a data set held in memory that grew beyond its limit (RemoteProtocolError)."""
        command = receiving.command
        limit = (
            self.limits.max_n_dataset if is_n(command.command_field) else self.limits.max_dataset
        )
        if limit and receiving.size > limit:
            raise RemoteProtocolError(
                f"a {receiving.command.name} data set larger than "
                f"the {limit} bytes accepted in memory",
                abort_reason=0,
            )

    def _deliver(self, message: Message) -> RequestReceived | ResponseReceived | None:
        command = message.command
        if command.command_field & 0x8000:  # command.is_response
            message_id = command.message_id_being_responded_to or 0
            if message_id not in self._outstanding:
                # Late (we gave up on it) or never asked for: not a reason to
                # abort, but nobody is waiting for it.
                log.warning("response to no outstanding request: %s", command.describe())
                if message.sink is not None:
                    message.sink.abort()
                return None
            # Pending is 0xFF00 and 0xFF01 (PS3.7 C.4; status_category).
            status = command.status
            final = status != 0xFF00 and status != 0xFF01
            if final:
                del self._outstanding[message_id]
            return _new_response_received(message, final)
        if command.command_field != _C_CANCEL_RQ:
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
        return _new_request_received(message)

    def _violation(self, exc: RemoteProtocolError, now: float) -> ul.Aborted:
        """The peer broke DIMSE rules or a limit: A-ABORT (provider source, its reason)."""
        self._drop_receiving()
        self.ul.abort(now, source=2, reason=exc.abort_reason)
        return ul.Aborted(2, exc.abort_reason, local=True, detail=str(exc))

    def _drop_receiving(self) -> None:
        """The association ended under a message: keep nothing of it."""
        self._assembler.reset()
        self._deadline = None
        receiving, self._receiving = self._receiving, None
        if receiving is not None and receiving.sink is not None:
            receiving.sink.abort()
