"""UpperLayer without I/O: two connection objects wired together in memory."""

from __future__ import annotations

import pytest

from adicom import protocol as ul
from adicom.errors import LocalProtocolError
from adicom.fsm import TABLE, Action, Effect, Event, InvalidTransition, State, StateMachine
from adicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    encode_pdata,
)

RQ = AAssociateRQ(
    called_ae="SCP",
    calling_ae="SCU",
    presentation_contexts=(PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    user_information=UserInformation(16384, "1.2.3.4"),
)
AC = AAssociateAC(
    called_ae="SCP",
    calling_ae="SCU",
    presentation_contexts=(PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
    user_information=UserInformation(16384, "1.2.3.5"),
)


def state_of(side: ul.UpperLayer) -> State:
    """The side's PS3.8 state, read afresh.

    mypy keeps ``side.state`` narrowed after an ``assert ... is State.X`` even
    across calls that move the machine on; a call result is never narrowed.
    """
    return side.state


class Pair:
    """A requestor and an acceptor joined by an in-memory wire."""

    def __init__(self, artim: float = 5.0) -> None:
        self.req = ul.UpperLayer(requestor=True, max_pdu_length=16384, artim_timeout=artim)
        self.acc = ul.UpperLayer(requestor=False, max_pdu_length=16384, artim_timeout=artim)
        self.now = 0.0

    def pump(self) -> None:
        for _ in range(100):  # bounded: each round moves whatever is waiting
            a = b"".join(self.req.data_to_send())
            b = b"".join(self.acc.data_to_send())
            if not a and not b:
                return
            if a:
                self.acc.receive_data(a, self.now)
            if b:
                self.req.receive_data(b, self.now)
        raise AssertionError("the pair did not settle")

    def events(self, side: ul.UpperLayer) -> list[ul.ULEvent]:
        out = []
        while (event := side.next_event()) is not None:
            out.append(event)
        return out

    def associate(self) -> None:
        self.acc.connection_made(self.now)
        self.req.request_association(RQ, self.now)
        assert self.req.connect_requested
        self.req.connection_made(self.now)
        self.pump()
        assert self.events(self.acc) == [ul.AssociationRequested(RQ)]
        self.acc.accept(AC, self.now)
        self.pump()
        assert self.events(self.req) == [ul.AssociationAccepted(AC)]
        assert state_of(self.req) is State.STA6 and state_of(self.acc) is State.STA6


def test_associate_exchange_data_and_release() -> None:
    pair = Pair()
    pair.associate()
    pair.req.send_pdata([(1, 3, b"command")], pair.now)
    pair.pump()
    (event,) = pair.events(pair.acc)
    assert isinstance(event, ul.PDataReceived)
    assert bytes(event.pdu.pdvs[0].data) == b"command"
    assert event.pdu.pdvs[0].is_command and event.pdu.pdvs[0].is_last

    pair.req.request_release(pair.now)
    pair.pump()
    assert pair.events(pair.acc) == [ul.ReleaseRequested()]
    pair.acc.respond_release(pair.now)
    pair.pump()
    assert pair.events(pair.req) == [ul.ReleaseConfirmed()]
    # The requestor closes (AR-3); the acceptor waits in Sta13 with ARTIM.
    assert pair.req.close_requested and state_of(pair.req) is State.STA1
    assert state_of(pair.acc) is State.STA13 and pair.acc.get_timer() == pair.now + 5.0
    pair.acc.connection_lost(pair.now)
    assert state_of(pair.acc) is State.STA1 and pair.acc.get_timer() is None


def test_reject_closes_both_sides() -> None:
    pair = Pair()
    pair.acc.connection_made(pair.now)
    pair.req.request_association(RQ, pair.now)
    pair.req.connection_made(pair.now)
    pair.pump()
    pair.events(pair.acc)
    pair.acc.reject(AAssociateRJ(1, 1, 7), pair.now)
    pair.pump()
    assert pair.events(pair.req) == [ul.AssociationRejected(AAssociateRJ(1, 1, 7))]
    assert state_of(pair.req) is State.STA1 and pair.req.close_requested
    assert state_of(pair.acc) is State.STA13


def test_release_collision_ends_idle_on_both_sides() -> None:
    pair = Pair()
    pair.associate()
    pair.req.request_release(pair.now)
    pair.acc.request_release(pair.now)
    # Deliver both A-RELEASE-RQs at once: a true collision (PS3.8 9.2.4).
    a = b"".join(pair.req.data_to_send())
    b = b"".join(pair.acc.data_to_send())
    pair.acc.receive_data(a, pair.now)
    pair.req.receive_data(b, pair.now)
    # The requestor answered at once (Sta9 -> AR-9 -> Sta11); the acceptor
    # waits for that answer in Sta10 before answering in turn.
    assert state_of(pair.req) is State.STA11 and state_of(pair.acc) is State.STA10
    assert pair.events(pair.req) == [ul.ReleaseRequested(collision=True)]
    assert pair.events(pair.acc) == [ul.ReleaseRequested(collision=True)]
    pair.pump()
    # The acceptor confirmed (AR-10, Sta12) and answered by itself (AR-4).
    assert pair.events(pair.acc) == [ul.ReleaseConfirmed()]
    assert state_of(pair.acc) is State.STA13
    assert pair.events(pair.req) == [ul.ReleaseConfirmed()]
    assert state_of(pair.req) is State.STA1


def test_release_collision_answered_exactly_once_by_each_side() -> None:
    pair = Pair()
    pair.associate()
    pair.req.request_release(pair.now)
    pair.acc.request_release(pair.now)
    a = b"".join(pair.req.data_to_send())
    b = b"".join(pair.acc.data_to_send())
    pair.acc.receive_data(a, pair.now)
    pair.req.receive_data(b, pair.now)
    sent_by_req = b"".join(pair.req.data_to_send())
    assert sent_by_req == AReleaseRP().encode()
    pair.acc.receive_data(sent_by_req, pair.now)
    assert b"".join(pair.acc.data_to_send()) == AReleaseRP().encode()
    # Nothing is left for the user to answer: a respond_release now is a bug.
    with pytest.raises(LocalProtocolError):
        pair.acc.respond_release(pair.now)


def test_unexpected_pdu_in_sta6_aborts_with_reason_unexpected() -> None:
    pair = Pair()
    pair.associate()
    pair.acc.receive_data(RQ.encode(), pair.now)  # a second A-ASSOCIATE-RQ
    (event,) = pair.events(pair.acc)
    assert isinstance(event, ul.Aborted)
    assert (event.source, event.reason, event.local) == (2, 2, True)
    assert "A-ASSOCIATE-RQ" in event.detail
    assert b"".join(pair.acc.data_to_send()) == AAbort(2, 2).encode()
    assert state_of(pair.acc) is State.STA13


def test_garbage_in_sta6_aborts_with_reason_unrecognized_pdu() -> None:
    pair = Pair()
    pair.associate()
    pair.acc.receive_data(b"GET / HTTP/1.1\r\n\r\n", pair.now)
    (event,) = pair.events(pair.acc)
    assert isinstance(event, ul.Aborted) and event.reason == 1
    assert b"".join(pair.acc.data_to_send()) == AAbort(2, 1).encode()
    # Whatever follows is not parsed any more.
    pair.acc.receive_data(AReleaseRQ().encode(), pair.now)
    assert pair.events(pair.acc) == []


def test_abort_received_is_indicated_with_its_source_and_reason() -> None:
    pair = Pair()
    pair.associate()
    pair.req.receive_data(AAbort(2, 6).encode(), pair.now)
    assert pair.events(pair.req) == [ul.Aborted(2, 6, local=False)]
    assert state_of(pair.req) is State.STA1 and pair.req.close_requested


def test_transport_lost_under_association_is_p_abort() -> None:
    pair = Pair()
    pair.associate()
    pair.req.connection_lost(pair.now)
    assert pair.events(pair.req) == [ul.ConnectionLost(State.STA6)]
    assert state_of(pair.req) is State.STA1


def test_artim_expires_when_no_associate_rq_arrives() -> None:
    pair = Pair(artim=2.0)
    pair.acc.connection_made(0.0)
    assert state_of(pair.acc) is State.STA2 and pair.acc.get_timer() == 2.0
    pair.acc.handle_timer(1.9)  # not yet
    assert state_of(pair.acc) is State.STA2
    pair.acc.handle_timer(2.0)
    assert pair.events(pair.acc) == [ul.ArtimExpired(State.STA2)]
    assert state_of(pair.acc) is State.STA1 and pair.acc.close_requested


def test_artim_bounds_the_wait_for_close_after_rejection() -> None:
    pair = Pair(artim=3.0)
    pair.acc.connection_made(0.0)
    pair.acc.receive_data(RQ.encode(), 0.5)
    pair.events(pair.acc)
    pair.acc.reject(AAssociateRJ(1, 1, 1), 1.0)
    assert state_of(pair.acc) is State.STA13 and pair.acc.get_timer() == 4.0
    pair.acc.handle_timer(4.0)
    assert state_of(pair.acc) is State.STA1 and pair.acc.close_requested


def test_protocol_version_without_bit_0_is_rejected_by_the_provider() -> None:
    pair = Pair()
    pair.acc.connection_made(0.0)
    bad = AAssociateRQ(
        called_ae="SCP",
        calling_ae="SCU",
        user_information=UserInformation(0, "1.2"),
        protocol_version=2,
    )
    pair.acc.receive_data(bad.encode(), 0.0)
    assert pair.events(pair.acc) == []
    assert b"".join(pair.acc.data_to_send()) == AAssociateRJ(1, 2, 2).encode()
    assert state_of(pair.acc) is State.STA13


def test_primitive_in_wrong_state_is_a_local_error() -> None:
    side = ul.UpperLayer(requestor=True)
    with pytest.raises(LocalProtocolError, match="Sta1"):
        side.send_pdata([(1, 3, b"x")], 0.0)
    with pytest.raises(LocalProtocolError):
        side.request_release(0.0)


def test_oversized_pdata_is_refused_from_its_header() -> None:
    pair = Pair()
    pair.associate()
    # A P-DATA-TF header announcing 1 MiB against our 16 KiB limit.
    pair.acc.receive_data(bytes([4, 0]) + (1 << 20).to_bytes(4, "big"), pair.now)
    (event,) = pair.events(pair.acc)
    assert isinstance(event, ul.Aborted) and event.reason == 6
    assert "exceeds" in event.detail


@pytest.mark.parametrize(
    "pdu_bytes",
    [
        AReleaseRQ().encode(),
        b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x06\x01\x03echo",  # a P-DATA-TF
        b"\x99\x00\x00\x00\x00\x00",  # no PDU at all (Evt19)
    ],
    ids=["release-rq", "p-data", "unrecognized"],
)
@pytest.mark.parametrize("read", ["copied", "in-place"])
def test_a_pdu_before_any_association_request_gets_a_service_user_abort(
    pdu_bytes: bytes, read: str
) -> None:
    # PS3.8 Table 9-10, Sta2: AA-1, which Table 9-9 says sends the A-ABORT
    # with service-user source, and no indication (no user knows of it yet).
    acceptor = ul.UpperLayer(requestor=False, artim_timeout=5)
    acceptor.connection_made(0.0)
    if read == "copied":
        acceptor.receive_data(pdu_bytes, 0.0)
    else:
        # Received into the reader's buffer and parsed where it landed: a
        # P-DATA-TF of one PDV then comes bare (PDUReader.next_bare), and
        # goes through the state table as any PDU does.
        acceptor.lend_reads = True
        buffer = acceptor.reader.get_buffer()
        buffer[: len(pdu_bytes)] = pdu_bytes
        acceptor.receive_into(len(pdu_bytes), 0.0)
    assert b"".join(acceptor.data_to_send()) == AAbort(0, 0).encode()
    assert acceptor.next_event() is None
    assert acceptor.state is State.STA13 and acceptor.get_timer() == 5.0


# -- the P-DATA shortcuts agree with Table 9-10 -----------------------------------


def _cell_only(state: State, event: Event, effect: Effect) -> bool:
    """True when, for both roles and both AE-6 answers, ``event`` in ``state`` does
    just ``effect``, stays in ``state`` and leaves ARTIM alone (read from the table)."""
    for acceptable in (True, False):
        for requestor in (True, False):
            machine = StateMachine(requestor=requestor)
            machine._state = state
            machine._artim_running = True
            try:
                transition = machine.step(event, acceptable=acceptable)
            except InvalidTransition:
                return False
            if (transition.effects, transition.new, machine.artim_running) != (
                (effect,),
                state,
                True,
            ):
                return False
    return True


def test_the_pdata_shortcuts_are_exactly_the_tables_staying_cells() -> None:
    sends = {s for s in State if _cell_only(s, Event.EVT9, Effect.SEND_P_DATA)}
    indicates = {s for s in State if _cell_only(s, Event.EVT10, Effect.INDICATE_DATA)}
    assert ul._SENDS_PDATA == sends == {State.STA6, State.STA8}  # DT-1, AR-7
    assert ul._INDICATES_PDATA == indicates == {State.STA6, State.STA7}  # DT-2, AR-6
    assert TABLE[State.STA6, Event.EVT9] is Action.DT_1
    assert TABLE[State.STA6, Event.EVT10] is Action.DT_2


def _in_state(state: State, *, requestor: bool) -> ul.UpperLayer:
    side = ul.UpperLayer(requestor=requestor, max_pdu_length=16384)
    side._fsm._state = state
    return side


def _outcome(side: ul.UpperLayer) -> tuple[object, ...]:
    events = []
    while (event := side.next_event()) is not None:
        events.append(event)
    out = b"".join(side.data_to_send())
    return (side.state, events, out, side.get_timer(), side.close_requested, side.abort_sent)


PDVS = ((1, 3, b"command bytes!"), (1, 2, b"and a data set"))


@pytest.mark.parametrize("pdvs", [PDVS, PDVS[:1]])
@pytest.mark.parametrize("requestor", [True, False])
@pytest.mark.parametrize("state", list(State))
def test_pdata_shortcuts_and_the_tables_step_give_the_same(
    state: State,
    requestor: bool,
    pdvs: tuple[tuple[int, int, bytes], ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every state, sending and receiving P-DATA with the shortcuts on and off
    # (every step through StateMachine): the same state, events and bytes.
    # One PDV is also sent with send_pdv (its headers packed at once) and
    # decoded the short way (PDataTF.decode): the same again.
    wire = b"".join(encode_pdata(pdvs))
    results = []
    for shortcuts in (True, False):
        if not shortcuts:
            monkeypatch.setattr(ul, "_SENDS_PDATA", frozenset())
            monkeypatch.setattr(ul, "_INDICATES_PDATA", frozenset())
        sender = _in_state(state, requestor=requestor)
        sender.trace = []
        try:
            sender.send_pdata(pdvs, 1.0)
            sent: tuple[object, ...] = (*_outcome(sender), sender.trace)
        except LocalProtocolError as exc:
            sent = ("refused", str(exc))
        if len(pdvs) == 1:
            single = _in_state(state, requestor=requestor)
            single.trace = []
            try:
                single.send_pdv(*pdvs[0], 1.0)
                assert (*_outcome(single), single.trace) == sent
            except LocalProtocolError as exc:
                assert sent == ("refused", str(exc))
        receiver = _in_state(state, requestor=requestor)
        try:
            receiver.receive_data(wire, 1.0)
            received: tuple[object, ...] = _outcome(receiver)
        except InvalidTransition as exc:  # Sta4: no transport to receive on yet
            received = ("impossible", str(exc))
        results.append((sent, received))
    assert results[0] == results[1]
    if state is State.STA6:
        sent, received = results[0]
        pdu = PDataTF(tuple(PDV(c, bool(m & 1), bool(m & 2), d) for c, m, d in pdvs))
        assert sent[2] == wire and received[1] == [ul.PDataReceived(pdu)]
        assert sent[-1] == [(pdu, True)]


@pytest.mark.parametrize("tail", [b"", b"\x04\x00", b"\x04\x00\x00\x00\x00\x20"])
def test_pdus_in_one_read_are_all_parsed_and_a_part_is_kept(tail: bytes) -> None:
    # The parse stops when the reader is empty, not before: two PDUs read at
    # once are both indicated, and the start of a third waits for its rest.
    pair = Pair()
    pair.associate()
    wire = b"".join(encode_pdata([(1, 3, b"one")])) + b"".join(encode_pdata([(1, 2, b"two")]))
    pair.acc.receive_data(wire + tail, pair.now)
    events = pair.events(pair.acc)
    assert [bytes(e.pdu.pdvs[0].data) for e in events if isinstance(e, ul.PDataReceived)] == [
        b"one",
        b"two",
    ]
    assert pair.acc.reader.empty is (tail == b"")
    assert pair.acc.reader.buffered == len(tail)
