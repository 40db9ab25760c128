"""The upper layer connection object: bytes in, events out; primitives in, bytes out.

:class:`UpperLayer` joins the PDU codec (:mod:`adicom.pdu`) and the state
machine of PS3.8 Table 9-10 (:mod:`adicom.fsm`) in the shape of h11's
``Connection``: the driver hands it received bytes with
:meth:`UpperLayer.receive_data`, takes :meth:`UpperLayer.next_event` until it
returns None, calls primitives such as :meth:`UpperLayer.send_pdata` or
:meth:`UpperLayer.request_release`, and writes what
:meth:`UpperLayer.data_to_send` returns. It never touches a socket or a clock:
time is a parameter (``now``), and the ARTIM timer is a deadline the driver
reads with :meth:`UpperLayer.get_timer` and fires with
:meth:`UpperLayer.handle_timer`.

Every PDU received and every primitive asked for is one event of Table 9-10;
the action the table names is carried out as its list of effects. A received
PDU the state does not allow is answered the way the table says (mostly
AA-8: A-ABORT to the peer, A-P-ABORT to us). A primitive the state does not
allow is our own bug and raises :class:`~adicom.errors.LocalProtocolError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adicom import fsm
from adicom.errors import LocalProtocolError, RemoteProtocolError
from adicom.fsm import Effect, Event, State
from adicom.pdu import (
    MAX_CONTROL_PDU,
    MAX_PDVS_PER_PDU,
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    Staging,
    encode_pdata,
)
from adicom.pdu.pdus import BarePDV, bare_pdata, pdata_of
from adicom.pdu.wire import PDATA_HEADER, frozen_builder

__all__ = [
    "Aborted",
    "ArtimExpired",
    "AssociationAccepted",
    "AssociationRejected",
    "AssociationRequested",
    "ConnectionLost",
    "PDataReceived",
    "ReleaseConfirmed",
    "ReleaseRequested",
    "ULEvent",
    "UpperLayer",
]


# --------------------------------------------------------------------------
# Events handed to the driver (named in the past tense, as h2 does)


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """A-ASSOCIATE indication: a requestor asks for an association (acceptor side)."""

    request: AAssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """A-ASSOCIATE confirmation, accepted (requestor side)."""

    response: AAssociateAC


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """A-ASSOCIATE confirmation, rejected (requestor side)."""

    response: AAssociateRJ


@dataclass(frozen=True, slots=True)
class PDataReceived:
    """P-DATA indication: one P-DATA-TF PDU's PDVs."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication: the peer asks to release.

    Answer with ``respond_release`` unless ``collision``: in a release
    collision both sides asked at once, and the upper layer answers itself.
    """

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation: the association is released."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT or A-P-ABORT indication.

    ``source`` and ``reason`` are the A-ABORT PDU's fields (PS3.8 Table 9-26):
    the one received when ``local`` is False, the one we sent when our upper
    layer aborted because of what the peer sent (``local`` True).
    """

    source: int
    reason: int
    local: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """A-P-ABORT indication: the transport closed under an open association (AA-4)."""

    state: State


@dataclass(frozen=True, slots=True)
class ArtimExpired:
    """The ARTIM timer ran out (Evt18) in ``state``; the transport is to be closed."""

    state: State


ULEvent = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | PDataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
    | ConnectionLost
    | ArtimExpired
)

# The P-DATA shortcuts: states where a P-DATA request (Evt9) only sends the
# PDU and a received P-DATA-TF (Evt10) is only indicated, both staying put
# (DT-1 and AR-7; DT-2 and AR-6). Read from Table 9-10 itself as this module
# loads (fsm.states_where), so the shortcut is the table's cell, not a copy.
_SENDS_PDATA: frozenset[State] = fsm.states_where(Event.EVT9, (Effect.SEND_P_DATA,))
_INDICATES_PDATA: frozenset[State] = fsm.states_where(Event.EVT10, (Effect.INDICATE_DATA,))
if State.STA6 not in _SENDS_PDATA or State.STA6 not in _INDICATES_PDATA:  # pragma: no cover
    raise ImportError("PS3.8 Table 9-10 as written in adicom.fsm lost DT-1 or DT-2 in Sta6")

# The members the hot paths test, as module constants: a class attribute
# of an Enum is looked up through EnumType.__getattr__'s slot on Python
# 3.11 (~0.7k instructions each).
_STA1 = State.STA1
_STA6 = State.STA6
_STA12 = State.STA12
_STA7 = State.STA7
_STA9 = State.STA9
_EVT6 = Event.EVT6
_EVT1 = Event.EVT1
_EVT2 = Event.EVT2
_EVT5 = Event.EVT5
_EVT7 = Event.EVT7
_EVT8 = Event.EVT8
_EVT9 = Event.EVT9
_EVT11 = Event.EVT11
_EVT14 = Event.EVT14
_EVT15 = Event.EVT15
_EVT17 = Event.EVT17
_EVT18 = Event.EVT18
_EVT19 = Event.EVT19

# The two A-RELEASE indications, made once (frozen; one per association
# released by the peer otherwise, built through a keyword).
_RELEASE_REQUESTED = ReleaseRequested(False)
_RELEASE_COLLISION = ReleaseRequested(True)

#: PDataReceived(pdu), faster (one per P-DATA-TF PDU received).
_new_pdata_received = frozen_builder(PDataReceived)

_PDU_EVENTS: dict[type, Event] = {
    AAssociateAC: Event.EVT3,
    AAssociateRJ: Event.EVT4,
    AAssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    AReleaseRQ: Event.EVT12,
    AReleaseRP: Event.EVT13,
    AAbort: Event.EVT16,
}


_PDU_NAMES = {
    AAssociateAC: "A-ASSOCIATE-AC",
    AAssociateRJ: "A-ASSOCIATE-RJ",
    AAssociateRQ: "A-ASSOCIATE-RQ",
    PDataTF: "P-DATA-TF",
    AReleaseRQ: "A-RELEASE-RQ",
    AReleaseRP: "A-RELEASE-RP",
    AAbort: "A-ABORT",
}


class UpperLayer:
    """One DICOM upper layer connection, without I/O.

    ``max_pdu_length`` is the largest P-DATA-TF PDU we accept (the value we
    announce in our user information; 0 means no limit). ``artim_timeout`` is
    how long ARTIM runs (PS3.8 9.1.5): waiting for the A-ASSOCIATE-RQ after a
    connection arrives, and for the peer to close after a rejection, release
    or abort. ``staging`` is the PDU reader's staging buffer (a driver's:
    its loop's, see :class:`~adicom.pdu.reader.Staging`; default: one of
    its own).
    """

    def __init__(
        self,
        requestor: bool,
        max_pdu_length: int = 0,
        artim_timeout: float = 10.0,
        staging: Staging | None = None,
    ) -> None:
        self.requestor = requestor
        self.artim_timeout = artim_timeout
        # Positional arguments: a class called with keywords costs a dict
        # built for them and taken apart again (~1.5k instructions on 3.11).
        self._fsm = fsm.StateMachine(requestor)
        self._reader = PDUReader(max_pdu_length, MAX_CONTROL_PDU, MAX_PDVS_PER_PDU, staging)
        self._reader_failed = False
        #: Received PDVs (and PDUs) parsed in one call at most (0: all there
        #: are); see :attr:`input_pending`.
        self.parse_budget = 0
        self._input_pending = False
        # Indications and confirmations, in order; a P-DATA indication is
        # its PDU alone, or the PDU's one PDV bare (PDUReader.next_bare;
        # next_event wraps either in PDataReceived), so a driver that takes
        # from here directly makes no event object per PDU.
        self._events: deque[ULEvent | PDataTF | BarePDV] = deque()
        self._out: list[bytes | memoryview] = []
        self._artim_deadline: float | None = None
        self._close_requested = False
        self._abort_sent = False
        self._connect_requested = False
        self._request: AAssociateRQ | None = None
        self._sent_abort: AAbort | None = None
        #: True when every P-DATA indication is consumed before control goes
        #: back to the event loop (the driver's case: it hands each to the
        #: DIMSE layer in the callback that read it). Then a read received
        #: with :meth:`receive_into` is parsed where it landed, and a P-DATA
        #: indication's PDV data are views into the reader's staging buffer,
        #: valid until the next read (see PDUReader.buffer_lent); not while
        #: :attr:`trace` keeps the PDUs.
        self.lend_reads = False
        #: When a list (the driver sets one for debugging hooks), every PDU
        #: sent or received is appended to it as ``(pdu, sent)``, in order,
        #: for the driver to take out. None, the default, costs one test per
        #: PDU and builds no PDU object for P-DATA sent.
        self.trace: list[tuple[PDU, bool]] | None = None

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> State:
        """The PS3.8 state (Sta1..Sta13)."""
        return self._fsm._state

    @property
    def established(self) -> bool:
        """True in Sta6, where data may be sent both ways."""
        return self._fsm._state is _STA6

    @property
    def close_requested(self) -> bool:
        """True once an action said to close the transport; the driver closes it."""
        return self._close_requested

    @property
    def abort_sent(self) -> bool:
        """True once an A-ABORT PDU was queued (AA-1, AA-7, AA-8).

        The table then waits in Sta13 for the peer to close; a driver may
        close as soon as the A-ABORT is written instead.
        """
        return self._abort_sent

    @property
    def sent_abort(self) -> AAbort | None:
        """The A-ABORT PDU we queued, if any (its source and reason)."""
        return self._sent_abort

    @property
    def connect_requested(self) -> bool:
        """True once AE-1 asked for a transport connection (requestor side)."""
        return self._connect_requested

    def get_timer(self) -> float | None:
        """The time at which :meth:`handle_timer` must be called, if any."""
        return self._artim_deadline

    # -- driver inputs -----------------------------------------------------

    def connection_made(self, now: float) -> None:
        """The transport is open: Evt2 (requestor) or Evt5 (acceptor)."""
        self._step(_EVT2 if self.requestor else _EVT5, now)

    @property
    def reader(self) -> PDUReader:
        """The PDU reader, for drivers that receive into its buffers."""
        return self._reader

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed received bytes; whole PDUs become events."""
        if self._reader_failed or self._fsm._state is _STA1:
            return
        self._reader.feed(data)
        self._parse(now)

    def receive_into(self, nbytes: int, now: float) -> None:
        """``nbytes`` were received into ``reader.get_buffer()``; whole PDUs become events."""
        if self._reader_failed or self._fsm._state is _STA1:
            return
        reader = self._reader
        if nbytes < 0:
            pass  # from _parse: nothing new arrived; what waits is parsed
        elif self.lend_reads and self.trace is None:
            if reader._body_view is None and reader._lent is None and not reader._carried:
                # reader.buffer_lent(nbytes) of the usual read, inline: a
                # read from where the last one's PDUs ended, parsed where it
                # landed (see PDUReader.buffer_lent).
                if nbytes:
                    reader._lent = reader.staging.view
                    reader._lent_pos = 0
                    reader._lent_end = nbytes
            else:
                reader.buffer_lent(nbytes)
        else:
            reader.buffer_updated(nbytes)
        # The parse, here rather than in a call of its own (every read).
        budget = self.parse_budget
        spent = 0
        self._input_pending = False
        while not self._reader_failed and self._fsm._state is not _STA1:
            if budget and spent >= budget:
                reader.keep()  # what is left of a lent read waits in our own buffer
                self._input_pending = reader.buffered > 0
                return
            try:
                pdu = reader.next_bare()
            except RemoteProtocolError as exc:
                self._reader_failed = True
                self._invalid_pdu(exc, now)
                return
            if pdu is None:
                return
            # The work a PDU costs grows with its PDVs (and each is a message
            # fragment handed on); other PDUs cost about one. A P-DATA-TF of
            # one PDV may come bare (see PDUReader.next_bare): handed on so.
            if self.trace is not None:
                if isinstance(pdu, tuple):
                    pdu = bare_pdata(pdu)
                self.trace.append((pdu, False))
            if isinstance(pdu, (tuple, PDataTF)) and self._fsm._state in _INDICATES_PDATA:
                # Hot path: Sta6 + Evt10 is DT-2 (P-DATA indication), Sta7 +
                # Evt10 AR-6, both staying put (see _INDICATES_PDATA).
                spent += 1 if isinstance(pdu, tuple) else len(pdu.pdvs)
                self._events.append(pdu)  # PDataReceived(pdu): see _events
            else:
                if isinstance(pdu, tuple):
                    pdu = bare_pdata(pdu)  # Evt10 in another state: the table's
                spent += len(pdu.pdvs) if type(pdu) is PDataTF else 1
                self._receive_pdu(pdu, now)
            if not reader._buf and reader._body is None and reader._lent is None:  # reader.empty
                # The usual case, a PDU per read: no second look at the reader.
                return
        reader.keep()  # closed or failed: nothing is to stay in the shared staging buffer

    def receive_later(self, nbytes: int) -> bool:
        """Like :meth:`receive_into`, but parse nothing now.

        True when there is something to parse (then call :meth:`parse_pending`
        in a later turn): the loop's input budget is spent (see
        :mod:`adicom.turns`).
        """
        if self._reader_failed or self._fsm._state is _STA1:
            return False
        reader = self._reader
        reader.buffer_updated(nbytes)
        self._input_pending = pending = reader.ready()
        return pending

    @property
    def input_pending(self) -> bool:
        """True when :attr:`parse_budget` ran out with received bytes not yet parsed.

        The driver then calls :meth:`parse_pending` in a later turn of its
        loop (and should stop reading meanwhile), so one peer's flood of
        small PDVs never holds everyone else's work.
        """
        return self._input_pending

    def parse_pending(self, now: float) -> None:
        """Parse what the last call left for later (within the budget again)."""
        if self._reader_failed or self._fsm._state is _STA1:
            self._input_pending = False
            return
        self._parse(now)

    def _parse(self, now: float) -> None:
        """Make events of the whole PDUs the reader holds, within :attr:`parse_budget`."""
        self.receive_into(-1, now)  # -1: nothing new received

    def connection_lost(self, now: float) -> None:
        """The transport closed (Evt17)."""
        if self._fsm._state is not _STA1:
            self._step(_EVT17, now)

    def handle_timer(self, now: float) -> None:
        """Fire ARTIM (Evt18) if its deadline has passed."""
        if self._artim_deadline is not None and now >= self._artim_deadline:
            self._artim_deadline = None
            state = self.state
            self._step(_EVT18, now)
            self._events.append(ArtimExpired(state))

    @property
    def has_events(self) -> bool:
        """True when :meth:`next_event` has an event to give."""
        return bool(self._events)

    def next_event(self) -> ULEvent | None:
        """The next indication or confirmation, or None."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, tuple):
            event = bare_pdata(event)
        return _new_pdata_received(event) if type(event) is PDataTF else event  # type: ignore[return-value]

    def data_to_send(self) -> list[bytes | memoryview]:
        """Take the bytes waiting to be written, in order."""
        out, self._out = self._out, []
        return out

    # -- primitives (local service user) -----------------------------------

    def request_association(self, request: AAssociateRQ, now: float) -> None:
        """A-ASSOCIATE request (Evt1); sent once :meth:`connection_made` is called."""
        self._request = request
        self._primitive(_EVT1, now)

    def accept(self, response: AAssociateAC, now: float) -> None:
        """A-ASSOCIATE response, accept (Evt7)."""
        self._primitive(_EVT7, now, response)

    def reject(self, response: AAssociateRJ, now: float) -> None:
        """A-ASSOCIATE response, reject (Evt8)."""
        self._primitive(_EVT8, now, response)

    def send_pdata(self, pdvs: Sequence[tuple[int, int, bytes | memoryview]], now: float) -> None:
        """P-DATA request (Evt9): one P-DATA-TF PDU of (context, control, data) PDVs."""
        if self._fsm._state in _SENDS_PDATA:
            # The hot path: Sta6 -> DT-1 and Sta8 -> AR-7 both just send the
            # PDU and stay put (see _SENDS_PDATA), so skip the table's step
            # and the PDU object.
            self._out.extend(encode_pdata(pdvs))
            if self.trace is not None:
                self.trace.append((pdata_of(pdvs), True))
            return
        self._primitive(_EVT9, now, pdvs)

    def send_pdv(self, context_id: int, control: int, data: bytes, now: float) -> None:
        """P-DATA request (Evt9) of one PDV: ``send_pdata(((context_id, control, data),))``.

        The same PDU, its two headers packed at once (a command alone, the
        usual message without a data set).
        """
        if self._fsm._state in _SENDS_PDATA:  # DT-1, AR-7: see send_pdata
            size = len(data)
            self._out.append(
                PDATA_HEADER.pack(0x04, size + 6, size + 2, context_id, control) + data
            )
            if self.trace is not None:
                self.trace.append((pdata_of(((context_id, control, data),)), True))
            return
        self._primitive(_EVT9, now, ((context_id, control, data),))

    def request_release(self, now: float) -> None:
        """A-RELEASE request (Evt11)."""
        self._primitive(_EVT11, now, AReleaseRQ())

    def respond_release(self, now: float) -> None:
        """A-RELEASE response (Evt14) to a :class:`ReleaseRequested` without collision.

        In a release collision the upper layer answers by itself (see
        :mod:`adicom.fsm`), so the user never has to.
        """
        self._primitive(_EVT14, now, AReleaseRP())

    def abort(self, now: float, *, source: int = 0, reason: int = 0) -> None:
        """A-ABORT request (Evt15); a no-op once idle or already closing.

        ``source`` 0 is the service-user; a DIMSE layer aborting because the
        peer broke its rules may say 2 with a PS3.8 Table 9-26 reason.
        """
        if self.state in (State.STA1, State.STA13):
            return
        self._primitive(_EVT15, now, AAbort(source, reason))

    # -- internals ---------------------------------------------------------

    def _primitive(self, event: Event, now: float, payload: object = None) -> None:
        try:
            self._step(event, now, payload)
        except fsm.InvalidTransition as exc:
            raise LocalProtocolError(str(exc)) from None

    def _receive_pdu(self, pdu: PDU, now: float) -> None:
        # A P-DATA-TF in Sta6 or Sta7 took _parse's hot path; any other PDU
        # goes through the table.
        event = _PDU_EVENTS[type(pdu)]
        acceptable = True
        if event is _EVT6:
            # AE-6: the service provider checks what it can; a protocol
            # version without bit 0 set is refused (PS3.8 9.3.2, 9.3.4).
            acceptable = bool(pdu.protocol_version & 1)  # type: ignore[union-attr]
        self._step(event, now, pdu, acceptable=acceptable)

    def _invalid_pdu(self, exc: RemoteProtocolError, now: float) -> None:
        # Evt19: unrecognized or invalid PDU. In most states AA-8 answers
        # with an A-ABORT whose reason says what was wrong (PS3.8 9.3.8).
        self._step(_EVT19, now, exc)

    def _step(
        self, event: Event, now: float, payload: object = None, *, acceptable: bool = True
    ) -> None:
        old = self._fsm._state
        transition = self._fsm.step(event, acceptable=acceptable)
        # The transition's effects, each as the function that carries it out
        # (found once per transition when this module loads, see _PLANS),
        # in the table's order.
        for effect in _PLANS[id(transition)]:
            effect(self, transition, old, event, now, payload)
        if transition.new is _STA1:
            self._artim_deadline = None
        elif transition.new is _STA9 or transition.new is _STA12:
            # Release collision (PS3.8 7.2.2; the essay in adicom.fsm): a
            # release cannot be refused, so the answer is ours to give, at
            # the moment the table allows it. The requestor answers as soon
            # as it hears of the collision (Sta9, AR-9); the acceptor after
            # its own release is confirmed (Sta12, AR-4).
            self._step(_EVT14, now, AReleaseRP())

    def _send(self, pdu: PDU) -> None:
        """Queue a PDU other than P-DATA-TF (encoded here), and trace it if asked."""
        if type(pdu) is AAbort:
            self._abort_sent = True
            self._sent_abort = pdu
        self._out.append(pdu.encode())
        if self.trace is not None:
            self.trace.append((pdu, True))

    def _p_abort(self, old: State, event: Event, payload: object) -> Aborted | ConnectionLost:
        if event is _EVT17:
            return ConnectionLost(old)
        if isinstance(payload, RemoteProtocolError):
            return Aborted(2, payload.abort_reason, local=True, detail=str(payload))
        name = _PDU_NAMES.get(type(payload), "PDU")
        return Aborted(2, 2, local=True, detail=f"unexpected {name} in {old.name.title()}")


# -- the effects of PS3.8 Tables 9-6 to 9-9, one function each -----------------
# Called as f(upper, transition, old, event, now, payload) by UpperLayer._step.


def _send_p_data(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._out.extend(encode_pdata(payload))  # type: ignore[arg-type]
    if ul.trace is not None:
        ul.trace.append((pdata_of(payload), True))  # type: ignore[arg-type]


def _indicate_data(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(payload)  # type: ignore[arg-type]  # PDataReceived: see _events


def _connect_transport(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._connect_requested = True


def _send_associate_rq(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    assert ul._request is not None
    ul._send(ul._request)


def _send_payload(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    # A-ASSOCIATE-AC, A-RELEASE-RQ, A-RELEASE-RP: the primitive's PDU.
    ul._send(payload)  # type: ignore[arg-type]


def _send_associate_rj(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    if isinstance(payload, AAssociateRJ):
        ul._send(payload)
    else:
        # AE-6 refused by the provider: protocol version not
        # supported (result 1, source 2, reason 2; PS3.8 Table 9-21).
        ul._send(AAssociateRJ(1, 2, 2))


def _send_abort(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    if isinstance(payload, AAbort):
        ul._send(payload)  # the user's own (Evt15)
    elif t.action is fsm.Action.AA_1:
        # A PDU, readable or not, before any A-ASSOCIATE-RQ (Sta2):
        # PS3.8 Table 9-9 has AA-1 send the A-ABORT with service-user
        # source, whose reason is "not significant" (9.3.8).
        ul._send(AAbort(0, 0))
    elif isinstance(payload, RemoteProtocolError):
        ul._send(AAbort(2, payload.abort_reason))
    else:
        # AA-7 (Sta13): an A-ASSOCIATE-RQ where none can come.
        ul._send(AAbort(2, 2))


def _send_abort_provider(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    reason = payload.abort_reason if isinstance(payload, RemoteProtocolError) else 2
    ul._send(AAbort(2, reason))


def _indicate_associate(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(AssociationRequested(payload))  # type: ignore[arg-type]


def _confirm_accept(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(AssociationAccepted(payload))  # type: ignore[arg-type]


def _confirm_reject(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(AssociationRejected(payload))  # type: ignore[arg-type]


def _indicate_release(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(_RELEASE_COLLISION if old is _STA7 else _RELEASE_REQUESTED)


def _confirm_release(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(ReleaseConfirmed())


def _indicate_abort(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    if isinstance(payload, AAbort):
        ul._events.append(Aborted(payload.source, payload.reason, local=False))
    else:
        ul._events.append(ConnectionLost(old))


def _indicate_p_abort(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._events.append(ul._p_abort(old, event, payload))


def _start_artim(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._artim_deadline = now + ul.artim_timeout


def _stop_artim(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._artim_deadline = None


def _close_transport(
    ul: UpperLayer, t: fsm.Transition, old: State, event: Event, now: float, payload: object
) -> None:
    ul._close_requested = True


_Do = Callable[[UpperLayer, fsm.Transition, State, Event, float, object], None]

# TRANSPORT_RESPONSE (AE-5) and IGNORE (AA-6) need nothing from us: the
# driver accepted the connection before telling us about it.
_EFFECTS: dict[Effect, _Do] = {
    Effect.SEND_P_DATA: _send_p_data,
    Effect.INDICATE_DATA: _indicate_data,
    Effect.CONNECT_TRANSPORT: _connect_transport,
    Effect.SEND_ASSOCIATE_RQ: _send_associate_rq,
    Effect.SEND_ASSOCIATE_AC: _send_payload,
    Effect.SEND_RELEASE_RQ: _send_payload,
    Effect.SEND_RELEASE_RP: _send_payload,
    Effect.SEND_ASSOCIATE_RJ: _send_associate_rj,
    Effect.SEND_ABORT: _send_abort,
    Effect.SEND_ABORT_PROVIDER: _send_abort_provider,
    Effect.INDICATE_ASSOCIATE: _indicate_associate,
    Effect.CONFIRM_ACCEPT: _confirm_accept,
    Effect.CONFIRM_REJECT: _confirm_reject,
    Effect.INDICATE_RELEASE: _indicate_release,
    Effect.CONFIRM_RELEASE: _confirm_release,
    Effect.INDICATE_ABORT: _indicate_abort,
    Effect.INDICATE_P_ABORT: _indicate_p_abort,
    Effect.START_ARTIM: _start_artim,
    Effect.STOP_ARTIM: _stop_artim,
    Effect.CLOSE_TRANSPORT: _close_transport,
}
if set(_EFFECTS) | {Effect.TRANSPORT_RESPONSE, Effect.IGNORE} != set(Effect):  # pragma: no cover
    raise ImportError("adicom.protocol carries out no function for some effect of adicom.fsm")

#: Each transition of the table (fsm.StateMachine.step returns these very
#: objects) as the functions of its effects, in order, keyed by the
#: transition's id: _step walks no chain of tests per effect, and
#: hashes no Effect member (Enum.__hash__ is a Python function on 3.11).
_PLANS: dict[int, tuple[_Do, ...]] = {
    id(transition): tuple(_EFFECTS[e] for e in transition.effects if e in _EFFECTS)
    for transition, _ in fsm._RESOLVED.values()
}
