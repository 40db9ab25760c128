"""Two UpperLayer + DimseConnection pairs, driven by hypothesis: primitives, chunkings, garbage.

Whatever the order of sends, answers, releases, aborts, timer firings and
bytes of garbage, and however the wire cuts the bytes:

* receiving never raises (a bad peer is answered on the wire, not with an
  exception); a primitive raises only LocalProtocolError, when the state
  forbids it;
* while no garbage was injected and nobody aborted, every message sent
  arrives whole, once, in order, and every final response frees its
  request;
* after garbage, the receiver aborts or was already past caring (Sta13);
* both sides stay in states of PS3.8 Table 9-10 and each call's output is
  bounded by what went in.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adicom import protocol as ul
from adicom.dimse import Command, RequestReceived, ResponseReceived, c_store_rq
from adicom.errors import LocalProtocolError
from adicom.fsm import State
from tests.test_dimse_connection import CT, Pair, echo_rq, response_to


class DimsePairMachine(RuleBasedStateMachine):
    """A requestor sends C-ECHOs and C-STOREs; the acceptor answers; the wire misbehaves."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(window=4, max_pdu=4096)
        self.sent: list[tuple[Command, bytes | None]] = []
        self.received: list[tuple[Command, bytes | None]] = []
        self.to_answer: list[Command] = []
        self.answered: list[int] = []
        self.spoiled = False  # garbage injected, or an abort: delivery no longer promised

    # -- what the peers do ---------------------------------------------------------

    def _established(self) -> bool:
        return self.pair.req.ul.state is State.STA6 and self.pair.acc.ul.state is State.STA6

    @precondition(lambda self: self._established() and self.pair.req.dimse.can_request)
    @rule(size=st.one_of(st.none(), st.integers(0, 9000)))
    def send_request(self, size: int | None) -> None:
        dimse = self.pair.req.dimse
        message_id = dimse.next_message_id()
        if size is None:
            command, dataset = echo_rq(message_id), None
        else:
            command = c_store_rq(CT, f"1.2.{message_id}", message_id=message_id)
            dataset = bytes(i % 251 for i in range(size))
        self.pair.req.send(1 if dataset is None else 3, command, dataset)
        self.sent.append((command, dataset))

    @precondition(lambda self: self._established() and self.to_answer)
    @rule()
    def answer(self) -> None:
        request = self.to_answer.pop(0)
        context = 1 if request.affected_sop_class_uid == "1.2.840.10008.1.1" else 3
        self.pair.acc.send(context, response_to(request, 0x0000))

    @rule(chunk=st.sampled_from([None, 1, 2, 7, 100, 4096]))
    def carry(self, chunk: int | None) -> None:
        self.pair.chunk = chunk
        self.pair.pump()
        self._take_events()
        if not self.spoiled:
            # The wire is empty now: everything sent has arrived.
            assert self.received == self.sent

    # -- what arrives --------------------------------------------------------------

    def _take_events(self) -> None:
        for event in self.pair.acc.drain():
            if isinstance(event, RequestReceived):
                message = event.message
                self.received.append((message.command, message.dataset))
                self.to_answer.append(message.command)
            elif isinstance(event, ul.Aborted):
                self.spoiled = True
        for event in self.pair.req.drain():
            if isinstance(event, ResponseReceived):
                assert event.final
                self.answered.append(event.message_id)
            elif isinstance(event, ul.Aborted | ul.ConnectionLost):
                self.spoiled = True

    @invariant()
    def delivered_whole_once_in_order(self) -> None:
        if not self.spoiled:
            assert self.received == self.sent[: len(self.received)]
            assert len(set(self.answered)) == len(self.answered)
            outstanding = {c.message_id for c, _ in self.sent} - set(self.answered)
            assert self.pair.req.dimse.outstanding == len(outstanding)

    @invariant()
    def states_are_the_tables(self) -> None:
        for side in (self.pair.req, self.pair.acc):
            assert isinstance(side.ul.state, State)


class HostileWireMachine(DimsePairMachine):
    """The same peers, and releases, aborts, timers and garbage thrown in."""

    @rule(side=st.sampled_from(["req", "acc"]))
    def release(self, side: str) -> None:
        layer = getattr(self.pair, side).ul
        try:
            layer.request_release(self.pair.now)
        except LocalProtocolError:
            pass  # not allowed in this state: that is the point of the error
        else:
            self.spoiled = True  # outstanding work may be cut short

    @rule(side=st.sampled_from(["req", "acc"]))
    def abort(self, side: str) -> None:
        getattr(self.pair, side).ul.abort(self.pair.now)
        self.spoiled = True

    @rule(garbage=st.binary(min_size=1, max_size=40))
    def garbage(self, garbage: bytes) -> None:
        acceptor = self.pair.acc
        before = acceptor.ul.state
        acceptor.ul.receive_data(garbage, self.pair.now)
        acceptor.take(self.pair.now)
        self.spoiled = True
        after = acceptor.ul.state
        # Garbage is either answered with an abort, or lands where nothing
        # more can be expected; a PDU whose header promises more bytes may
        # also simply wait for them.
        assert after in (State.STA13, State.STA1) or acceptor.ul.abort_sent or after is before

    @rule(seconds=st.floats(0, 400))
    def time_passes(self, seconds: float) -> None:
        self.pair.now += seconds
        for side in (self.pair.req, self.pair.acc):
            side.ul.handle_timer(self.pair.now)
            side.take(self.pair.now)
            side.events.extend(side.dimse.handle_timer(self.pair.now))
        self._take_events()


SETTINGS = settings(max_examples=80, stateful_step_count=40, deadline=None)
DimsePairMachine.TestCase.settings = SETTINGS
HostileWireMachine.TestCase.settings = SETTINGS
test_messages_arrive_whole_in_order = DimsePairMachine.TestCase
test_a_hostile_wire_never_raises = HostileWireMachine.TestCase
