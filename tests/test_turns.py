"""The loop's input budget per turn (adicom.turns): who goes first, and that nothing starves.

The scheduling is checked on its own with stand-in associations whose work
is charged, not timed, so the order is exact; then against a real Server,
where a peer that asks little is answered while many bulk transfers wait.
How long anyone waits is measured in benchmarks/ (``benchmarks.scale``'s
busy-1000), not here.
"""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from pydicom.uid import generate_uid

import adicom
from adicom.dimse import Command, CommandField, c_store_rq
from adicom.pdu import (
    AAssociateAC,
    AAssociateRQ,
    AReleaseRQ,
    PDUReader,
    PresentationContextRQ,
    UserInformation,
    encode_pdata,
)
from adicom.turns import CREDIT, DEFAULT_TURN_BUDGET, LoopTurns, Share, loop_turns

pytestmark = pytest.mark.anyio

BOUND = 20.0
VERIFICATION = "1.2.840.10008.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT = "1.2.840.10008.1.2"


class Counted(LoopTurns):
    """Numbers its turns; with ``clock_free``, sees no work but what is charged.

    The stand-ins' work is charged, not done, so the wall clock between two
    turns is the test machine's noise: without the clock the order is exact.
    """

    __slots__ = ("clock_free", "count")

    def __init__(self, budget: float, *, clock_free: bool = True) -> None:
        super().__init__(asyncio.get_running_loop(), budget)
        self.count = 0
        self.clock_free = clock_free

    def _turn(self) -> None:
        self.count += 1
        if self.clock_free:
            self._started = None
        super()._turn()


class Stand:
    """An association's driver as the queues see it: its work is charged, not done."""

    def __init__(self, turns: Counted, name: str, cost: float, order: list[tuple[int, str]]):
        self.turns, self.name, self.cost, self.order = turns, name, cost, order

    def _parse_deferred(self) -> None:
        self.order.append((self.turns.count, self.name))
        self.turns.charge(self.cost)


def share(turns: LoopTurns, credit: float) -> Share:
    made = turns.share()
    made.credit = credit
    return made


async def until_served(turns: LoopTurns) -> None:
    for _ in range(100):
        if not turns.waiting:
            return
        await asyncio.sleep(0)
    raise AssertionError("the queues did not empty in 100 turns")


def by_turn(order: list[tuple[int, str]]) -> list[list[str]]:
    turns: dict[int, list[str]] = {}
    for turn, name in order:
        turns.setdefault(turn, []).append(name)
    return list(turns.values())


async def test_sparse_go_first_most_credit_first_and_bulk_within_the_budget() -> None:
    turns = Counted(budget=0.010)
    order: list[tuple[int, str]] = []
    for i in range(6):
        turns.defer(Stand(turns, f"bulk{i}", 0.004, order), share(turns, -CREDIT))
    turns.defer(Stand(turns, "little", 0.0001, order), share(turns, 100.0))
    turns.defer(Stand(turns, "least", 0.0001, order), share(turns, CREDIT / 2))
    assert turns.waiting == 8
    await until_served(turns)
    # Sparse first, the one that sent least first; then bulk until the
    # budget is spent: 0.0002 + 3 x 0.004 crosses 0.010 at the third.
    assert by_turn(order) == [
        ["least", "little", "bulk0", "bulk1", "bulk2"],
        ["bulk3", "bulk4", "bulk5"],
    ]


async def test_neither_queue_starves_the_other() -> None:
    turns = Counted(budget=0.010)
    order: list[tuple[int, str]] = []
    for i in range(3):
        # Each sparse one costs more than a whole turn's budget.
        turns.defer(Stand(turns, f"sparse{i}", 0.020, order), share(turns, CREDIT))
        turns.defer(Stand(turns, f"bulk{i}", 0.020, order), share(turns, -CREDIT))
    await until_served(turns)
    assert by_turn(order) == [["sparse0", "bulk0"], ["sparse1", "bulk1"], ["sparse2", "bulk2"]]


async def test_full_credit_is_first_come_first_served() -> None:
    # Credit is capped: one brought up to date longer ago has no more of it
    # (the order was once the uncapped sum, so the clock's noise decided).
    turns = Counted(budget=0.010)
    order: list[tuple[int, str]] = []
    early, late = share(turns, CREDIT), share(turns, CREDIT)
    late.at -= 5.0
    turns.defer(Stand(turns, "early", 0.020, order), early)
    turns.defer(Stand(turns, "late", 0.020, order), late)
    await until_served(turns)
    assert by_turn(order) == [["early"], ["late"]]


async def test_the_other_work_of_a_turn_counts_against_the_next() -> None:
    turns = Counted(budget=0.010, clock_free=False)
    order: list[tuple[int, str]] = []
    for i in range(30):
        turns.defer(Stand(turns, f"bulk{i}", 0.001, order), share(turns, -CREDIT))
    # A handler that computes for 30 ms in the first turn (after the queues).
    asyncio.get_running_loop().call_soon(time.sleep, 0.030)
    await until_served(turns)
    served = [len(names) for names in by_turn(order)]
    # The first turn takes its budget's worth; the second, after 30 ms of
    # other work, only the one it always takes; later ones more again.
    assert served[:2] == [10, 1], served
    assert max(served[2:]) > 1, served


async def test_credit_comes_back_with_time() -> None:
    turns = Counted(budget=0.010)
    order: list[tuple[int, str]] = []
    spent = share(turns, -100.0)
    spent.at -= 20.0  # twenty quiet seconds: refilled, up to CREDIT and not beyond
    turns.defer(Stand(turns, "rested", 0.001, order), spent)
    assert spent.credit == CREDIT
    turns.defer(Stand(turns, "busy", 0.001, order), share(turns, -CREDIT))
    turns.defer(Stand(turns, "new", 0.001, order), turns.share())
    await until_served(turns)
    # The rested one counts as sparse again, ahead of bulk; among equals,
    # first come first served.
    assert by_turn(order) == [["rested", "new", "busy"]]


async def test_no_budget_defers_nothing_by_itself() -> None:
    turns = Counted(budget=0.0)
    turns.charge(100.0)
    assert not turns.exhausted
    order: list[tuple[int, str]] = []
    for i in range(5):
        turns.defer(Stand(turns, f"b{i}", 1.0, order), share(turns, -CREDIT))
    await until_served(turns)
    assert by_turn(order) == [[f"b{i}" for i in range(5)]]  # all in one turn: no budget


async def test_the_loop_has_one() -> None:
    assert loop_turns() is loop_turns(asyncio.get_running_loop())


# -- the PDU reader's part: is there work, without doing it ------------------------


def test_reader_ready_says_when_a_whole_pdu_waits() -> None:
    reader = PDUReader(max_pdata_length=0)
    assert not reader.ready()
    release = AReleaseRQ().encode()
    reader.feed(release[:3])
    assert not reader.ready()
    reader.feed(release[3:])
    assert reader.ready()
    assert isinstance(reader.next_pdu(), AReleaseRQ)
    assert not reader.ready()
    reader.feed(b"\x55")  # no such PDU type: next_pdu has an error to raise
    assert reader.ready()


def test_reader_ready_gathers_a_large_body_in_place() -> None:
    reader = PDUReader(max_pdata_length=0)
    body = b"".join(encode_pdata([(1, 0x02, bytes(200_000))]))
    reader.feed(body[:1000])
    assert not reader.ready()
    # The rest goes straight into the PDU's own buffer, as after next_pdu.
    assert len(reader.get_buffer()) == len(body) - 1000
    rest = body[1000:]
    view = reader.get_buffer()
    view[: len(rest)] = rest
    reader.buffer_updated(len(rest))
    assert reader.ready()
    assert reader.next_pdu() is not None


# -- a real server: a peer that asks little is answered while bulk waits ------------


REQUEST = AAssociateRQ(
    called_ae="ADICOM",
    calling_ae="TURNS",
    presentation_contexts=(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(5, SC, (IMPLICIT,)),
    ),
    user_information=UserInformation(16384, "1.2.3.4"),
)


class Raw:
    """A peer speaking just enough PS3.8, so that only the server's side has a budget."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = PDUReader(max_pdata_length=0)

    @classmethod
    async def associate(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        writer.write(REQUEST.encode())
        accepted = await raw.next_pdu()
        assert isinstance(accepted, AAssociateAC)
        return raw

    async def next_pdu(self) -> object:
        while (pdu := self.decoder.next_pdu()) is None:
            chunk = await self.reader.read(65536)
            assert chunk, "the server closed the connection"
            self.decoder.feed(chunk)
        return pdu

    async def status(self) -> int:
        """The status of the next response (its command fits one PDV here)."""
        pdu = await self.next_pdu()
        command = Command.decode(pdu.pdvs[0].data)  # type: ignore[attr-defined]
        assert command.status is not None
        return command.status


def store_message(size: int) -> bytes:
    command = c_store_rq(SC, generate_uid(), message_id=1).encode()
    # A data set of one OB element, in 16 KiB PDUs (the PDU size we asked for).
    value = bytes(size)
    dataset = struct.pack("<HHI", 0x0009, 0x1010, len(value)) + value
    pdvs = [(5, 0x03, command)]
    step = 16384 - 12
    for at in range(0, len(dataset), step):
        last = at + step >= len(dataset)
        pdvs.append((5, 0x02 if last else 0x00, dataset[at : at + step]))
    return b"".join(b"".join(encode_pdata([pdv])) for pdv in pdvs)


async def test_a_probe_is_answered_while_bulk_stores_wait_their_turn() -> None:
    # A budget so small that every turn is spent by its first callback: the
    # server then parses one bulk input per turn, and sparse input first.
    async with adicom.Server(
        "ADICOM", port=0, storage=adicom.MemoryStorage(), turn_budget=1e-9
    ) as server:
        async with asyncio.timeout(BOUND):
            peers = [await Raw.associate(server.port) for _ in range(30)]
            for peer in peers:
                peer.writer.write(store_message(200_000))
            answered = 0

            async def store(peer: Raw) -> None:
                nonlocal answered
                assert await peer.status() == 0x0000
                answered += 1

            stores = [asyncio.get_running_loop().create_task(store(peer)) for peer in peers]
            probe = await Raw.associate(server.port)
            echo = Command(
                CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION
            )
            probe.writer.write(b"".join(encode_pdata([(1, 0x03, echo.encode())])))
            assert await probe.status() == 0x0000
            # The probe (a new association and a C-ECHO) went ahead of the
            # 30 instances of 200 KB sent before it: most still wait.
            assert answered < 15, f"{answered} of 30 stores were answered before the probe"
            await asyncio.gather(*stores)
            assert answered == 30
            assert loop_turns().waiting == 0
            for raw in (*peers, probe):
                raw.writer.close()


def test_serve_takes_a_turn_budget_and_refuses_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from adicom.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).turn_budget == DEFAULT_TURN_BUDGET
    assert parser.parse_args(["serve", "--turn-budget", "0"]).turn_budget == 0.0
    assert parser.parse_args(["serve", "--turn-budget", "0.002"]).turn_budget == 0.002
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--turn-budget", bad])
        assert "--turn-budget" in capsys.readouterr().err


async def test_a_sparse_peer_is_parsed_at_once_until_a_second_budget_is_spent() -> None:
    turns = LoopTurns(asyncio.get_running_loop(), budget=0.010)
    now = asyncio.get_running_loop().time()
    sparse, bulk = turns.share(), share(turns, -CREDIT)
    turns.charge(0.012)
    assert turns.exhausted
    assert not turns.must_wait(sparse, now)  # the budget is spent, not twice
    assert turns.must_wait(bulk, now)
    turns.charge(0.010)
    assert turns.must_wait(sparse, now)


async def test_the_associations_of_a_loop_share_one_receive_buffer() -> None:
    # 16 KiB each otherwise: 80 MB for 5,000 idle associations.
    async with adicom.Server("SHARED", host="127.0.0.1", port=0) as server:
        async with (
            adicom.connect("127.0.0.1", server.port, called_ae="SHARED") as one,
            adicom.connect("127.0.0.1", server.port, called_ae="SHARED") as two,
        ):
            assert await one.echo() == 0 and await two.echo() == 0
            staging = loop_turns().staging
            assert one._ul.reader.staging is staging
            assert two._ul.reader.staging is staging
            accepted = server.associations
            assert len(accepted) == 2
            assert all(a._ul.reader.staging is staging for a in accepted)


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_a_loop_that_ran_associations_is_not_kept_alive(runner: str) -> None:
    # Each loop's LoopTurns is registered by the loop, weakly; it must not
    # hold its loop either, or every loop that ever ran an association stays
    # (adicom.sync runs one per operation).
    import gc
    import weakref

    import uvloop

    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_association() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with adicom.Server("ANY-SCP", port=0) as server:
            async with asyncio.timeout(5):
                async with adicom.connect("127.0.0.1", server.port, called_ae="ANY-SCP") as assoc:
                    assert await assoc.echo() == 0
                    assert loop_turns().clock() > 0

    run = uvloop.run if runner == "uvloop" else asyncio.run
    for _ in range(3):
        run(one_association())
    gc.collect()
    assert [loop() for loop in loops] == [None, None, None]
