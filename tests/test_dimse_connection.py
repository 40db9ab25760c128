"""DimseConnection without I/O: two of them over two UpperLayers, wired in memory.

Every byte goes from one side to the other through the real codecs, whole
or in chunks as small as one byte, so these tests see exactly what a peer
would: messages put back together, responses routed by Message ID, the
operations window kept both ways, and the aborts the standard asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adicom import protocol as ul
from adicom.dimse import (
    Command,
    CommandField,
    DimseConnection,
    DimseEvent,
    Limits,
    Message,
    RequestReceived,
    ResponseReceived,
    c_store_rq,
)
from adicom.errors import LocalProtocolError
from adicom.fsm import State
from adicom.negotiation import (
    AcceptorPolicy,
    build_request,
    negotiate,
    requestor_agreement,
)
from adicom.pdu import MAX_PDVS_PER_PDU, AAbort, AReleaseRQ

ECHO = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT = "1.2.840.10008.1.2"


@dataclass
class Sink:
    """A DatasetSink that keeps what it is given, and whether it was aborted."""

    data: bytearray = field(default_factory=bytearray)
    writes: int = 0
    aborted: bool = False

    def write(self, data: memoryview, /) -> None:
        self.data += data
        self.writes += 1

    def abort(self) -> None:
        self.aborted = True


class Side:
    """One end: an UpperLayer, its DimseConnection, and the DIMSE events it gave."""

    def __init__(self, requestor: bool, max_pdu: int) -> None:
        self.ul = ul.UpperLayer(requestor=requestor, max_pdu_length=max_pdu, artim_timeout=5)
        self.dimse = DimseConnection(self.ul)
        self.events: list[DimseEvent] = []

    def take(self, now: float) -> None:
        while (event := self.ul.next_event()) is not None:
            self.events.extend(self.dimse.handle_event(event, now))

    def drain(self) -> list[DimseEvent]:
        events, self.events = self.events, []
        return events

    def send(
        self, context_id: int, command: Command, dataset: bytes | None = None, now: float = 0.0
    ) -> None:
        outgoing = self.dimse.send(context_id, command, dataset)
        for _ in range(100_000):  # bounded: each round queues one PDU
            if outgoing.next_pdu(now) is None:
                return
        raise AssertionError("the message did not end")


class Pair:
    """A requestor and an acceptor, their bytes carried ``chunk`` at a time."""

    def __init__(
        self,
        *,
        chunk: int | None = None,
        window: int = 1,
        max_pdu: int = 16384,
        contexts: tuple[tuple[str, tuple[str, ...]], ...] = (
            (ECHO, (IMPLICIT,)),
            (CT, (IMPLICIT,)),
            (FIND, (IMPLICIT,)),
        ),
    ) -> None:
        self.req = Side(True, max_pdu)
        self.acc = Side(False, max_pdu)
        self.chunk = chunk
        self.now = 0.0
        self._associate(window, max_pdu, contexts)

    def _feed(self, side: Side, data: bytes) -> None:
        step = self.chunk or len(data) or 1
        for pos in range(0, len(data), step):
            side.ul.receive_data(data[pos : pos + step], self.now)
            side.take(self.now)

    def pump(self) -> None:
        for _ in range(1000):  # bounded: each round moves whatever is waiting
            a = b"".join(self.req.ul.data_to_send())
            b = b"".join(self.acc.ul.data_to_send())
            if not a and not b:
                return
            if a:
                self._feed(self.acc, a)
            if b:
                self._feed(self.req, b)
        raise AssertionError("the pair did not settle")

    def _associate(
        self, window: int, max_pdu: int, contexts: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> None:
        request = build_request(
            calling_ae="SCU",
            called_ae="SCP",
            contexts=contexts,
            max_pdu=max_pdu,
            async_window=window,
        )
        self.acc.ul.connection_made(self.now)
        self.req.ul.request_association(request, self.now)
        self.req.ul.connection_made(self.now)
        self.pump()
        assert self.acc.drain() == [ul.AssociationRequested(request)]
        policy = AcceptorPolicy(
            ae_title="SCP",
            supported={abstract: (IMPLICIT,) for abstract, _ in contexts},
            max_pdu=max_pdu,
            async_window=window,
        )
        answer = negotiate(request, policy)
        assert isinstance(answer, tuple)
        response, agreement = answer
        self.acc.dimse.agree(agreement)
        self.acc.ul.accept(response, self.now)
        self.pump()
        assert self.req.drain() == [ul.AssociationAccepted(response)]
        self.req.dimse.agree(requestor_agreement(request, response, window))
        assert self.req.ul.state is State.STA6 and self.acc.ul.state is State.STA6


def collecting(sinks: list[Sink]) -> Callable[[int, Command], Sink]:
    """A sink factory that opens a new Sink per data set and keeps them all."""

    def factory(context_id: int, command: Command) -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    return factory


def echo_rq(message_id: int) -> Command:
    return Command(CommandField.C_ECHO_RQ, message_id=message_id, affected_sop_class_uid=ECHO)


def response_to(request: Command, status: int, has_dataset: bool = False) -> Command:
    return Command(
        request.command_field | 0x8000,
        message_id_being_responded_to=request.message_id,
        affected_sop_class_uid=request.affected_sop_class_uid,
        status=status,
        command_data_set_type=0x0000 if has_dataset else 0x0101,
    )


def only_messages(events: list[DimseEvent]) -> list[Message]:
    out = []
    for event in events:
        assert isinstance(event, RequestReceived | ResponseReceived), event
        out.append(event.message)
    return out


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_echo_request_and_response(chunk: int | None) -> None:
    pair = Pair(chunk=chunk)
    message_id = pair.req.dimse.next_message_id()
    request = echo_rq(message_id)
    pair.req.send(1, request)
    assert pair.req.dimse.is_outstanding(message_id)
    pair.pump()
    (event,) = pair.acc.drain()
    assert event == RequestReceived(Message(1, request))
    pair.acc.send(1, response_to(request, 0x0000))
    pair.pump()
    (answer,) = pair.req.drain()
    assert isinstance(answer, ResponseReceived)
    assert answer.final and answer.message_id == message_id
    assert answer.message.command.status == 0x0000
    assert not pair.req.dimse.is_outstanding(message_id)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_c_store_data_set_streams_into_a_sink_in_order(chunk: int | None) -> None:
    # 1-byte chunks: every PDU header, PDV header and data byte arrives alone.
    pair = Pair(chunk=chunk, max_pdu=1024)
    sinks: list[Sink] = []

    def factory(context_id: int, command: Command) -> Sink:
        assert command.command_field == CommandField.C_STORE_RQ
        sinks.append(Sink())
        return sinks[-1]

    pair.acc.dimse.sink_factory = factory
    dataset = bytes(range(256)) * 20  # 5,120 bytes: six PDUs of at most 1,024
    request = c_store_rq(CT, "1.2.3.4", message_id=pair.req.dimse.next_message_id())
    pair.req.send(3, request, dataset)
    pair.pump()
    (event,) = pair.acc.drain()
    assert isinstance(event, RequestReceived)
    assert event.message.dataset is None  # never gathered in memory
    assert event.message.sink is sinks[0]
    assert bytes(sinks[0].data) == dataset
    assert sinks[0].writes >= 6 and not sinks[0].aborted


def test_without_a_sink_the_data_set_is_gathered() -> None:
    pair = Pair(chunk=3, max_pdu=1024)
    dataset = b"\x08\x00\x50\x00" + b"identifier" * 300
    request = Command(
        CommandField.C_FIND_RQ,
        message_id=pair.req.dimse.next_message_id(),
        affected_sop_class_uid=FIND,
        priority=0,
        command_data_set_type=0,
    )
    pair.req.send(5, request, dataset)
    pair.pump()
    (message,) = only_messages(pair.acc.drain())
    assert message.dataset == dataset and message.sink is None


def test_pending_responses_then_one_final() -> None:
    pair = Pair()
    request = Command(
        CommandField.C_FIND_RQ,
        message_id=pair.req.dimse.next_message_id(),
        affected_sop_class_uid=FIND,
        priority=0,
        command_data_set_type=0,
    )
    pair.req.send(5, request, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    pair.pump()
    pair.acc.drain()
    for match in (b"one", b"two"):
        pair.acc.send(5, response_to(request, 0xFF00, has_dataset=True), match)
    pair.acc.send(5, response_to(request, 0x0000))
    pair.pump()
    events = pair.req.drain()
    assert [e.final for e in events if isinstance(e, ResponseReceived)] == [False, False, True]
    assert [m.dataset for m in only_messages(events)] == [b"one", b"two", None]
    assert pair.req.dimse.outstanding == 0


def test_responses_are_routed_by_message_id_whatever_their_order() -> None:
    pair = Pair(window=3)
    requests = [echo_rq(pair.req.dimse.next_message_id()) for _ in range(3)]
    for request in requests:
        pair.req.send(1, request)
    pair.pump()
    assert [m.command for m in only_messages(pair.acc.drain())] == requests
    for request in reversed(requests):
        pair.acc.send(1, response_to(request, 0x0000))
    pair.pump()
    answered = [e.message_id for e in pair.req.drain() if isinstance(e, ResponseReceived)]
    assert answered == [r.message_id for r in reversed(requests)]
    assert pair.req.dimse.outstanding == 0


def test_our_window_is_never_exceeded_and_c_cancel_takes_no_room() -> None:
    pair = Pair(window=2)
    first, second = (echo_rq(pair.req.dimse.next_message_id()) for _ in range(2))
    pair.req.send(1, first)
    pair.req.send(1, second)
    assert not pair.req.dimse.can_request
    with pytest.raises(LocalProtocolError, match="window of 2 is full"):
        pair.req.dimse.send(1, echo_rq(pair.req.dimse.next_message_id()))
    cancel = Command(CommandField.C_CANCEL_RQ, message_id_being_responded_to=first.message_id)
    pair.req.send(1, cancel)  # no room needed: C-CANCEL is never answered
    pair.pump()
    assert len(pair.acc.drain()) == 3
    assert pair.acc.ul.state is State.STA6


def test_a_request_needs_a_message_id_and_an_accepted_context() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="needs a Message ID"):
        pair.req.dimse.send(1, Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=ECHO))
    with pytest.raises(LocalProtocolError, match="context 9 was not accepted"):
        pair.req.dimse.send(9, echo_rq(1))


def test_one_message_at_a_time() -> None:
    pair = Pair()
    pair.req.dimse.send(1, echo_rq(1))
    with pytest.raises(LocalProtocolError, match="still being sent"):
        pair.req.dimse.send(1, echo_rq(2))


def test_a_peer_beyond_its_window_is_aborted() -> None:
    pair = Pair(window=1)
    # The requestor's own layer would refuse a second request; pretend its
    # window were larger, as a misbehaving peer's is.
    pair.req.dimse.max_outstanding = 2
    sinks: list[Sink] = []
    pair.acc.dimse.sink_factory = collecting(sinks)
    pair.req.send(1, echo_rq(1))
    pair.req.send(3, c_store_rq(CT, "1.2.3", message_id=2), b"\x00" * 100)
    pair.pump()
    events = pair.acc.drain()
    assert isinstance(events[0], RequestReceived)
    aborted = events[1]
    assert isinstance(aborted, ul.Aborted)
    assert (aborted.source, aborted.reason, aborted.local) == (2, 0, True)
    assert "window of 1" in aborted.detail
    assert sinks[0].aborted  # the instance never lands half-made
    (seen,) = pair.req.drain()
    assert seen == ul.Aborted(2, 0, local=False)
    assert pair.acc.ul.state is State.STA13


def test_a_response_to_nothing_outstanding_is_dropped_without_an_abort() -> None:
    pair = Pair()
    pair.acc.send(1, response_to(echo_rq(77), 0x0000))
    pair.pump()
    assert pair.req.drain() == []
    assert pair.req.ul.state is State.STA6


def test_a_pdv_on_a_context_not_accepted_is_aborted_with_reason_6() -> None:
    pair = Pair()
    pair.req.dimse.contexts[7] = replace(pair.req.dimse.contexts[1], context_id=7)
    pair.req.send(7, echo_rq(1))
    pair.pump()
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted)
    assert (aborted.source, aborted.reason) == (2, 6)
    assert "context 7" in aborted.detail


def test_a_message_left_half_sent_aborts_the_association() -> None:
    pair = Pair(max_pdu=1024)
    sinks: list[Sink] = []
    pair.acc.dimse.sink_factory = collecting(sinks)
    outgoing = pair.req.dimse.send(3, c_store_rq(CT, "1.2.3", message_id=1), b"\x00" * 5000)
    assert outgoing.next_pdu(0.0) is not None
    assert outgoing.next_pdu(0.0) is not None
    outgoing.close(0.0)  # a cancelled sender: the rest never comes
    assert pair.req.ul.abort_sent
    pair.pump()
    assert pair.acc.drain() == [ul.Aborted(0, 0, local=False)]
    assert sinks[0].aborted
    # Nothing was sent of a message given up before its first PDU: no abort.
    fresh = Pair()
    fresh.req.dimse.send(1, echo_rq(1)).close(0.0)
    assert not fresh.req.ul.abort_sent
    fresh.req.send(1, echo_rq(2))  # and the next message can go
    fresh.pump()
    assert len(fresh.acc.drain()) == 1


def test_the_peers_release_is_answered_by_the_dimse_layer() -> None:
    pair = Pair()
    pair.req.ul.request_release(pair.now)
    pair.pump()
    assert pair.acc.drain() == [ul.ReleaseRequested(collision=False)]
    assert pair.req.drain() == [ul.ReleaseConfirmed()]
    assert pair.req.ul.state is State.STA1 and pair.acc.ul.state is State.STA13


@pytest.mark.parametrize("chunk", [None, 1])
def test_release_collision_ends_cleanly_on_both_sides(chunk: int | None) -> None:
    pair = Pair(chunk=chunk)
    pair.req.ul.request_release(pair.now)
    pair.acc.ul.request_release(pair.now)
    # Both A-RELEASE-RQs cross on the wire (PS3.8 7.2.2).
    a = b"".join(pair.req.ul.data_to_send())
    b = b"".join(pair.acc.ul.data_to_send())
    pair._feed(pair.acc, a)
    pair._feed(pair.req, b)
    pair.pump()
    expected = [ul.ReleaseRequested(collision=True), ul.ReleaseConfirmed()]
    assert pair.req.drain() == expected
    assert pair.acc.drain() == expected
    assert pair.req.ul.state is State.STA1
    assert pair.acc.ul.state is State.STA13  # waits for the requestor's close (AR-4)


def test_an_abort_mid_data_set_aborts_the_sink() -> None:
    pair = Pair(max_pdu=1024)
    sinks: list[Sink] = []
    pair.acc.dimse.sink_factory = collecting(sinks)
    outgoing = pair.req.dimse.send(3, c_store_rq(CT, "1.2.3", message_id=1), b"\x00" * 5000)
    outgoing.next_pdu(0.0)
    outgoing.next_pdu(0.0)
    pair.pump()
    assert sinks[0].data and not sinks[0].aborted
    pair.req.ul.abort(pair.now)
    pair.pump()
    assert pair.acc.drain() == [ul.Aborted(0, 0, local=False)]
    assert sinks[0].aborted


def test_connection_lost_mid_data_set_aborts_the_sink() -> None:
    pair = Pair(max_pdu=1024)
    sinks: list[Sink] = []
    pair.acc.dimse.sink_factory = collecting(sinks)
    outgoing = pair.req.dimse.send(3, c_store_rq(CT, "1.2.3", message_id=1), b"\x00" * 5000)
    outgoing.next_pdu(0.0)
    pair.pump()
    pair.acc.ul.connection_lost(pair.now)
    pair.acc.take(pair.now)
    assert pair.acc.drain() == [ul.ConnectionLost(State.STA6)]
    assert sinks[0].aborted


def test_message_ids_skip_those_outstanding_and_wrap() -> None:
    pair = Pair(window=3)
    dimse = pair.req.dimse
    dimse._last_message_id = 0xFFFE
    first = dimse.next_message_id()
    pair.req.send(1, echo_rq(first))
    assert first == 0xFFFF
    dimse._last_message_id = 0xFFFE
    assert dimse.next_message_id() == 1  # 0xFFFF is outstanding; 0 is never used
    dimse.forget(first)
    assert not dimse.is_outstanding(first)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    chunk=st.sampled_from([1, 2, 3, 61, 1000, None]),
    max_pdu=st.sampled_from([1024, 4096, 16384]),
)
def test_any_messages_in_any_chunking_arrive_whole_and_in_order(
    sizes: list[int], chunk: int | None, max_pdu: int
) -> None:
    pair = Pair(chunk=chunk, max_pdu=max_pdu, window=len(sizes))
    sent = []
    for index, size in enumerate(sizes):
        dataset = bytes((index + i) % 251 for i in range(size))
        request = c_store_rq(CT, f"1.2.{index}", message_id=pair.req.dimse.next_message_id())
        pair.req.send(3, request, dataset)
        sent.append((request, dataset))
    pair.pump()
    received = [(m.command, m.dataset) for m in only_messages(pair.acc.drain())]
    assert received == sent
    assert pair.acc.ul.state is State.STA6
    assert b"".join(pair.acc.ul.data_to_send()) == b""  # nothing to abort with


# -- limits: what one peer can make the DIMSE layer hold or wait for -----------


def limited(pair: Pair, **limits: object) -> None:
    """Give the acceptor's DIMSE layer these limits (as a Server would)."""
    new = Limits(**limits)  # type: ignore[arg-type]
    pair.acc.dimse.limits = new
    pair.acc.dimse._assembler.max_command = new.max_command


def test_a_command_set_beyond_its_limit_is_aborted() -> None:
    pair = Pair(max_pdu=16384)
    limited(pair, max_command=200)
    raw = echo_rq(1).encode()
    # A command that never says "last": fragments until the limit is passed.
    for _ in range(5):
        pair.req.ul.send_pdata([(1, 0x01, raw)], pair.now)
    pair.pump()
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 6)
    assert "longer than the 200 bytes" in aborted.detail
    assert pair.acc.dimse._assembler._command_parts == []  # nothing kept


def test_a_data_set_kept_in_memory_beyond_its_limit_is_aborted() -> None:
    pair = Pair(max_pdu=16384)
    limited(pair, max_dataset=10_000)
    request = Command(
        CommandField.C_FIND_RQ,
        message_id=1,
        affected_sop_class_uid=FIND,
        priority=0,
        command_data_set_type=0,
    )
    pair.req.send(5, request, b"\x00" * 20_000)
    pair.pump()
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 0)
    assert "C-FIND-RQ data set larger than the 10000 bytes" in aborted.detail
    assert pair.acc.dimse._receiving is None


def test_an_instance_beyond_its_limit_is_refused_not_aborted() -> None:
    pair = Pair(max_pdu=4096, window=2)
    limited(pair, max_instance=10_000)
    sinks: list[Sink] = []
    pair.acc.dimse.sink_factory = collecting(sinks)
    big = c_store_rq(CT, "1.2.3", message_id=1)
    pair.req.send(3, big, b"\x01" * 30_000)
    small = c_store_rq(CT, "1.2.4", message_id=2)
    pair.req.send(3, small, b"\x02" * 5_000)
    pair.pump()
    first, second = only_messages(pair.acc.drain())
    # The first arrives whole but without its data set, to be answered
    # with a failure status; what was written of it is dropped.
    assert first.command == big and first.sink is None and first.dataset is None
    assert first.refused is not None and "larger than the 10000 bytes" in first.refused
    assert sinks[0].aborted and len(sinks[0].data) <= 10_000
    # The association goes on: the next instance is stored as usual.
    assert second.refused is None and bytes(sinks[1].data) == b"\x02" * 5_000
    assert pair.acc.ul.state is State.STA6


def test_a_message_must_arrive_whole_within_its_deadline() -> None:
    pair = Pair(max_pdu=4096)
    limited(pair, message_timeout=10.0)
    outgoing = pair.req.dimse.send(3, c_store_rq(CT, "1.2.3", message_id=1), b"\x00" * 80_000)
    assert pair.acc.dimse.get_timer() is None  # no message under way
    for second in range(0, 10, 2):
        # One PDU every 2 s: each byte is news, but the deadline stands.
        pair.now = float(second)
        outgoing.next_pdu(pair.now)
        pair.pump()
        assert pair.acc.dimse.get_timer() == 10.0
        assert pair.acc.dimse.handle_timer(pair.now) == []
    (aborted,) = pair.acc.dimse.handle_timer(10.0)
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 0)
    assert "not complete 10 s after its first fragment" in aborted.detail
    assert pair.acc.ul.abort_sent


def test_the_deadline_starts_again_with_each_message() -> None:
    pair = Pair(window=2)
    limited(pair, message_timeout=10.0)
    pair.now = 5.0
    pair.req.send(1, echo_rq(1))
    pair.pump()
    assert pair.acc.dimse.get_timer() is None  # whole at once: nothing pending
    outgoing = pair.req.dimse.send(3, c_store_rq(CT, "1.2.3", message_id=2), b"\x00" * 20_000)
    pair.now = 7.0
    outgoing.next_pdu(pair.now)
    pair.pump()
    assert pair.acc.dimse.get_timer() == 17.0


def test_a_pdu_with_too_many_pdvs_is_refused_as_a_bad_pdu() -> None:
    pair = Pair()
    pdvs = [(3, 0, b"x")] * (MAX_PDVS_PER_PDU + 1)
    pair.req.ul.send_pdata(pdvs, pair.now)
    pair.pump()
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 6)
    assert f"more than the {MAX_PDVS_PER_PDU} PDVs" in aborted.detail


@pytest.mark.parametrize("budget", [1, 2, 7])
def test_a_parse_budget_splits_the_work_and_loses_nothing(budget: int) -> None:
    pair = Pair(window=16)
    pair.acc.ul.parse_budget = budget
    requests = [echo_rq(pair.req.dimse.next_message_id()) for _ in range(16)]
    for request in requests:
        pair.req.send(1, request)
    wire = b"".join(pair.req.ul.data_to_send())
    pair.acc.ul.receive_data(wire, pair.now)
    rounds = 1
    pair.acc.take(pair.now)
    while pair.acc.ul.input_pending:
        # Each call parses at most `budget` PDVs' worth; the driver comes back.
        assert len(pair.acc.events) <= rounds * budget
        pair.acc.ul.parse_pending(pair.now)
        pair.acc.take(pair.now)
        rounds += 1
        assert rounds <= 100
    assert rounds >= 16 // budget
    assert [m.command for m in only_messages(pair.acc.drain())] == requests


def test_a_release_request_overtaken_by_an_abort_in_the_same_read_is_not_answered() -> None:
    # Found by tests/test_stateful.py: both PDUs are parsed before the DIMSE
    # layer sees the first; by then the association is over (AA-3, Sta1), and
    # answering the release would be a primitive the state forbids.
    pair = Pair()
    wire = AReleaseRQ().encode() + AAbort(0, 0).encode()
    pair.acc.ul.receive_data(wire, pair.now)
    pair.acc.take(pair.now)
    assert pair.acc.drain() == [ul.ReleaseRequested(collision=False), ul.Aborted(0, 0, local=False)]
    assert pair.acc.ul.state is State.STA1
    assert b"".join(pair.acc.ul.data_to_send()) == b""


# -- the fast paths of receiving: the same result as the general path -------
#
# A command set whole in one PDV between messages is decoded without the
# assembler's events, and a data set fragment in order is taken the same way
# (DimseConnection._receive_pdata). Here each message goes once that way and
# once split so that the assembler gathers it (MessageAssembler.feed): the
# events and the connection's state after them must be equal.


def _as_pdus(
    context_id: int, raw: bytes, dataset: bytes | None, split: bool
) -> list[list[tuple[int, int, bytes]]]:
    """The PDUs of a message: whole (fast path) or its command in two fragments."""
    if not split:
        pdvs = [(context_id, 3, raw)]
        if dataset is not None:
            pdvs.append((context_id, 2, dataset))
        return [pdvs]
    pdus = [[(context_id, 1, raw[:10])], [(context_id, 3, raw[10:])]]
    if dataset is not None:
        half = len(dataset) // 2 & ~1
        pdus += [[(context_id, 0, dataset[:half])], [(context_id, 2, dataset[half:])]]
    return pdus


def _receive(pair: Pair, to_acceptor: bool, pdus: list[list[tuple[int, int, bytes]]]) -> Side:
    sender, receiver = (pair.req, pair.acc) if to_acceptor else (pair.acc, pair.req)
    for pdvs in pdus:
        sender.ul.send_pdata(pdvs, pair.now)
    pair.pump()
    return receiver


def _find_rq(message_id: int) -> Command:
    return Command(
        CommandField.C_FIND_RQ,
        message_id=message_id,
        affected_sop_class_uid=FIND,
        priority=0,
        command_data_set_type=0,
    )


IDENTIFIER = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
# (context, command, data set, sent to the acceptor, a sink takes the data set)
FAST_PATH_CASES = [
    (1, echo_rq(7), None, True, False),
    (3, c_store_rq(CT, "1.2.3.4", message_id=7), b"\x01\x02" * 300, True, True),
    (3, c_store_rq(CT, "1.2.3.4", message_id=7), b"\x01\x02" * 300, True, False),
    (5, _find_rq(7), IDENTIFIER, True, False),
    (5, Command(CommandField.C_CANCEL_RQ, message_id_being_responded_to=7), None, True, False),
    (1, response_to(echo_rq(7), 0x0000), None, False, False),
    (5, response_to(_find_rq(7), 0xFF00, has_dataset=True), IDENTIFIER, False, False),
    (5, response_to(_find_rq(7), 0xFF01, has_dataset=True), IDENTIFIER, False, False),
    (5, response_to(_find_rq(7), 0xA700), None, False, False),
    (5, response_to(_find_rq(8), 0x0000), None, False, False),  # answers nothing outstanding
]


@pytest.mark.parametrize(
    ("context_id", "command", "dataset", "to_acceptor", "sink"), FAST_PATH_CASES
)
def test_a_message_gives_the_same_whole_or_gathered(
    context_id: int, command: Command, dataset: bytes | None, to_acceptor: bool, sink: bool
) -> None:
    results = []
    for split in (False, True):
        pair = Pair()
        if not to_acceptor:  # a request of ours for the response to answer
            request = echo_rq(7) if context_id == 1 else _find_rq(7)
            pair.req.send(context_id, request, None if context_id == 1 else IDENTIFIER)
            pair.pump()
            pair.acc.drain()
        sinks: list[Sink] = []
        if sink:
            pair.acc.dimse.sink_factory = collecting(sinks)
        limited(pair, message_timeout=10.0)
        pair.req.dimse.limits = pair.acc.dimse.limits
        receiver = _receive(
            pair, to_acceptor, _as_pdus(context_id, command.encode(), dataset, split)
        )
        events = receiver.drain()
        dimse = receiver.dimse
        results.append(
            (
                [
                    (type(e), e.message.context_id, e.message.command, e.message.dataset)
                    if isinstance(e, RequestReceived | ResponseReceived)
                    else e
                    for e in events
                ],
                [bytes(s.data) for s in sinks],
                dict(dimse._outstanding),
                set(dimse._unanswered),
                dimse._deadline,
                dimse._receiving,
                dimse._assembler.idle,
                receiver.ul.state,
            )
        )
    whole, gathered = results
    assert whole == gathered
    assert whole[-1] is State.STA6 and whole[-2]  # nothing half-received either way
    if not to_acceptor:
        # Pending (PS3.7 C.4: 0xFF00 and 0xFF01) leaves the request outstanding.
        pending = command.status in (0xFF00, 0xFF01)
        answers_7 = command.message_id_being_responded_to == 7
        assert (7 in whole[2]) is (pending or not answers_7)
        kinds = [e[0] for e in whole[0] if isinstance(e, tuple)]
        assert kinds == ([] if command.message_id_being_responded_to == 8 else [ResponseReceived])
    if command.message_id_being_responded_to == 8:
        assert whole[0] == []  # dropped, not delivered
    else:
        assert [e[2] for e in whole[0] if isinstance(e, tuple)] == [command]


def test_a_whole_command_beyond_its_limit_is_aborted() -> None:
    # One PDV, command and last: the check is the fast path's as much as the
    # gathering path's.
    pair = Pair()
    limited(pair, max_command=60)
    raw = c_store_rq(CT, "1.2.3.4." + "5" * 40, message_id=1).encode()
    assert len(raw) > 60
    _receive(pair, True, [[(3, 3, raw)]])
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 6)
    assert "longer than the 60 bytes" in aborted.detail


def test_a_whole_command_where_a_data_set_is_expected_is_aborted() -> None:
    pair = Pair(window=2)
    store = c_store_rq(CT, "1.2.3", message_id=1).encode()
    _receive(pair, True, [[(3, 3, store), (3, 0, b"\x00\x00")], [(1, 3, echo_rq(2).encode())]])
    (aborted,) = pair.acc.drain()
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 6)
    assert "middle of a message" in aborted.detail


@pytest.mark.parametrize(
    ("pdvs", "detail"),
    [
        ([(3, 2, b"\x00\x00")], "without a command announcing one"),
        (
            [(3, 3, c_store_rq(CT, "1.2.3", message_id=1).encode()), (1, 2, b"\x00\x00")],
            "middle of a message",
        ),
        ([(1, 3, echo_rq(1).encode()), (1, 2, b"\x00\x00")], "without a command announcing one"),
    ],
)
def test_a_data_set_fragment_out_of_order_is_aborted(
    pdvs: list[tuple[int, int, bytes]], detail: str
) -> None:
    pair = Pair()
    _receive(pair, True, [pdvs])
    events = pair.acc.drain()
    aborted = events[-1]
    assert isinstance(aborted, ul.Aborted) and (aborted.source, aborted.reason) == (2, 6)
    assert detail in aborted.detail


def test_a_whole_command_announcing_a_data_set_starts_the_deadline() -> None:
    pair = Pair()
    limited(pair, message_timeout=10.0)
    pair.now = 3.0
    _receive(pair, True, [[(3, 3, c_store_rq(CT, "1.2.3", message_id=1).encode())]])
    assert pair.acc.drain() == []
    assert pair.acc.dimse.get_timer() == 13.0 and not pair.acc.dimse._assembler.idle
    pair.now = 4.0
    _receive(pair, True, [[(3, 2, b"\x00\x00")]])
    (event,) = pair.acc.drain()
    assert isinstance(event, RequestReceived) and event.message.dataset == b"\x00\x00"
    assert pair.acc.dimse.get_timer() is None and pair.acc.dimse._assembler.idle


@pytest.mark.parametrize(("status", "answered"), [(0xFF00, False), (0xFF01, False), (0, True)])
def test_only_a_final_response_sent_answers_a_request(status: int, answered: bool) -> None:
    pair = Pair()
    request = _find_rq(pair.req.dimse.next_message_id())
    pair.req.send(5, request, IDENTIFIER)
    pair.pump()
    pair.acc.drain()
    assert request.message_id in pair.acc.dimse._unanswered
    assert pair.acc.dimse.send_whole(5, response_to(request, status), None, pair.now)
    assert (request.message_id not in pair.acc.dimse._unanswered) is answered


@pytest.mark.parametrize("status", [0x0000, 0xFF00, 0xA700])
def test_a_response_sent_as_its_bytes_alone_is_what_send_whole_sends(status: int) -> None:
    # send_response (a template's bytes, no Command made) queues the PDU
    # send_whole queues for the response, and counts the request answered
    # (or, pending, not yet) the same way.
    from adicom.dimse import ResponseTemplate

    wire, unanswered = [], []
    for as_bytes in (False, True):
        pair = Pair(window=2)
        request = c_store_rq(CT, "1.2.3.45", message_id=pair.req.dimse.next_message_id())
        pair.req.send(3, request, b"\0" * 10)
        pair.pump()
        (event,) = pair.acc.drain()
        assert isinstance(event, RequestReceived)
        template = ResponseTemplate(CommandField.C_STORE_RSP, CT, status)
        command, raw = template.make(request.message_id or 0, "1.2.3.45")
        assert raw == template.encode(request.message_id or 0, "1.2.3.45") == command.encode()
        dimse = pair.acc.dimse
        if as_bytes:
            assert dimse.send_response(3, request.message_id or 0, status, raw, 0.0)
        else:
            assert dimse.send_whole(3, command, None, 0.0, encoded=raw)
        wire.append(b"".join(pair.acc.ul.data_to_send()))
        unanswered.append(set(dimse._unanswered))
        # A context not accepted, or a peer's maximum too small for it.
        with pytest.raises(LocalProtocolError):
            dimse.send_response(9, request.message_id or 0, status, raw, 0.0)
        dimse.peer_max_pdu = len(raw) + 5
        assert not dimse.send_response(3, request.message_id or 0, status, raw, 0.0)
        assert not pair.acc.ul.data_to_send()
    assert wire[0] == wire[1] and len(wire[0]) > 12
    assert unanswered[0] == unanswered[1] == (set() if status != 0xFF00 else {1})


def test_a_request_sent_as_its_bytes_alone_is_checked_and_counted_as_send_is() -> None:
    # send_request_now (a C-ECHO-RQ from its template, no Command made):
    # the same message on the wire, the same checks, the same count.
    from adicom.dimse import RequestTemplate

    pair = Pair(window=2)
    dimse = pair.req.dimse
    template = RequestTemplate(echo_rq(0))
    first = dimse.next_message_id()
    field = CommandField.C_ECHO_RQ
    assert dimse.send_request_now(1, field, first, template.encode(first), pair.now)
    assert dimse.is_outstanding(first)
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        dimse.send_request_now(1, field, first, template.encode(first), pair.now)
    with pytest.raises(LocalProtocolError, match="context 9 was not accepted"):
        dimse.send_request_now(9, field, 7, template.encode(7), pair.now)
    second = dimse.next_message_id()
    assert dimse.send_request_now(1, field, second, template.encode(second), pair.now)
    with pytest.raises(LocalProtocolError, match="window of 2 is full"):
        dimse.send_request_now(1, field, 9, template.encode(9), pair.now)
    pair.pump()
    assert only_messages(pair.acc.drain()) == [
        Message(1, echo_rq(first)),
        Message(1, echo_rq(second)),
    ]
    dimse.peer_max_pdu = len(template.encode(3)) + 5  # one byte short of the PDV
    assert not dimse.send_request_now(1, field, 3, template.encode(3), pair.now)
    assert not dimse.is_outstanding(3)
