"""A C-MOVE's pending responses, read a few at a time (Association.gather_pending).

The peer is a raw C-MOVE SCP that writes each response as DCMTK does, its
PDU's headers apart from its data, at a pace the test sets; the SCU's reads
are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

import adicom
from adicom import qrscu
from adicom.association import GATHER_DELAY
from adicom.dimse import Command, CommandField
from adicom.driver import Driver
from adicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    AsyncOperationsWindow,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    UserInformation,
)
from adicom.qrcontexts import information_model
from adicom.tls import client_context, server_context
from tests.test_tls import Pki

pytestmark = pytest.mark.anyio

BOUND = 20.0  # every wait of a test, at most
MOVE = information_model("C-MOVE", "study")


def _response(status: int, remaining: int, completed: int, context_id: int) -> list[bytes]:
    """A C-MOVE-RSP as two writes: the PDU and PDV headers, then the command set."""
    command = Command(
        CommandField.C_MOVE_RSP,
        affected_sop_class_uid=MOVE,
        message_id_being_responded_to=1,
        status=status,
        number_of_remaining_suboperations=remaining if status == 0xFF00 else None,
        number_of_completed_suboperations=completed,
        number_of_failed_suboperations=0,
        number_of_warning_suboperations=0,
    ).encode()
    pdu = PDataTF((PDV(context_id, True, True, command),)).encode()
    return [pdu[:12], pdu[12:]]


class MoveSCP:
    """Accepts an association, answers one C-MOVE-RQ with ``script``, then a release.

    ``script`` is a list of steps: ``("pending", n)`` sends n pending
    responses ``gap`` seconds apart, ``("final",)`` the final one,
    ``("sleep", s)`` waits, ``("abort",)`` sends an A-ABORT and stops,
    ``("echo-rq+pending",)`` writes a C-ECHO-RQ of the peer and a pending
    response at once, ``("pending+final",)`` a pending response and the
    final one at once.
    """

    def __init__(
        self, script: list[tuple[Any, ...]], gap: float = 0.0, window: int | None = None
    ) -> None:
        self.script = script
        self.gap = gap
        # The asynchronous operations window it accepts (PS3.7 D.3.3.3); None: one.
        self.window = window
        self.total = sum(
            step[1] if step[0] == "pending" else step[0] in ("echo-rq+pending", "pending+final")
            for step in script
        )
        self.final_sent_at = 0.0

    async def _pdus(
        self, reader: asyncio.StreamReader, decoder: PDUReader
    ) -> AsyncIterator[object]:
        while True:
            while (pdu := decoder.next_pdu()) is not None:
                yield pdu
            chunk = await reader.read(65536)
            if not chunk:
                return
            decoder.feed(chunk)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(BOUND):
                await self._serve(reader, writer)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pdus = self._pdus(reader, PDUReader())
        rq = await anext(pdus)
        assert isinstance(rq, AAssociateRQ)
        context_id = rq.presentation_contexts[0].context_id
        writer.write(
            AAssociateAC(
                called_ae=rq.called_ae,
                calling_ae=rq.calling_ae,
                presentation_contexts=tuple(
                    PresentationContextAC(pc.context_id, 0, pc.transfer_syntaxes[0])
                    for pc in rq.presentation_contexts
                ),
                user_information=UserInformation(
                    16384,
                    "1.2.3",
                    async_operations_window=None
                    if self.window is None
                    else AsyncOperationsWindow(self.window, self.window),
                ),
            ).encode()
        )
        last_seen = False
        while not last_seen:  # the C-MOVE-RQ's command, then its identifier
            pdu = await anext(pdus)
            assert isinstance(pdu, PDataTF)
            last_seen = any(not pdv.is_command and pdv.is_last for pdv in pdu.pdvs)
        completed = 0
        loop = asyncio.get_running_loop()
        for step in self.script:
            if step[0] == "pending":
                for _ in range(step[1]):
                    completed += 1
                    for part in _response(0xFF00, self.total - completed, completed, context_id):
                        writer.write(part)
                        await writer.drain()
                    await asyncio.sleep(self.gap)
            elif step[0] == "sleep":
                await asyncio.sleep(step[1])
            elif step[0] == "echo-rq+pending":
                completed += 1
                echo = Command(
                    CommandField.C_ECHO_RQ,
                    message_id=7,
                    affected_sop_class_uid="1.2.840.10008.1.1",
                ).encode()
                writer.write(
                    PDataTF((PDV(context_id, True, True, echo),)).encode()
                    + b"".join(_response(0xFF00, self.total - completed, completed, context_id))
                )
            elif step[0] == "pending+final":
                completed += 1
                self.final_sent_at = loop.time()
                writer.write(
                    b"".join(_response(0xFF00, 0, completed, context_id))
                    + b"".join(_response(0x0000, 0, completed, context_id))
                )
            elif step[0] == "abort":
                writer.write(AAbort(0, 0).encode())
                await writer.drain()
                return
            else:
                assert step[0] == "final"
                self.final_sent_at = loop.time()
                for part in _response(0x0000, 0, completed, context_id):
                    writer.write(part)
        async for pdu in pdus:
            if isinstance(pdu, AReleaseRQ):
                writer.write(AReleaseRP().encode())
                await writer.drain()
                return

    @contextlib.asynccontextmanager
    async def running(self, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        async with server:
            yield server.sockets[0].getsockname()[1]


@contextlib.contextmanager
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of bytes of each read of every association made meanwhile."""
    reads: list[int] = []
    original = Driver._data_received

    def counting(self: Driver, nbytes: int) -> None:
        reads.append(nbytes)
        original(self, nbytes)

    monkeypatch.setattr(Driver, "_data_received", counting)
    yield reads


def identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    return ds


async def _move(
    peer: MoveSCP, delay: float, pki: Pki | None = None, **options: Any
) -> tuple[qrscu.RetrieveProgress, float, adicom.Association]:
    """Run a C-MOVE against ``peer`` with gather_delay ``delay``; its outcome and its end time.

    With ``pki``, over TLS.
    """
    served = None if pki is None else server_context(cert=pki.server_pem)
    context = None if pki is None else client_context(ca=pki.ca_pem)
    async with peer.running(served) as port, asyncio.timeout(BOUND):
        async with adicom.connect(
            "127.0.0.1", port, contexts=qrscu.move_contexts(), timeout=60.0, ssl=context
        ) as assoc:
            assoc.gather_delay = delay
            result = await qrscu.move(assoc, identifier(), "DEST", **options)
            ended = asyncio.get_running_loop().time()
            assert assoc._gathering is None  # off again once the move is over
    return result, ended, assoc


@pytest.mark.parametrize("tls", [False, True])
async def test_pending_responses_nobody_watches_are_read_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, tls: bool
) -> None:
    # Twelve pending responses 10 ms apart, each written as two pieces: read
    # one by one, 12 to 24 reads. With reading paused 0.3 s after a read of
    # them, they come in a few (over TLS too: its transport pauses as well).
    peer = MoveSCP([("pending", 12), ("final",)], gap=0.01)
    with counted_reads(monkeypatch) as reads:
        result, _, assoc = await _move(peer, 0.3, Pki(tmp_path) if tls else None)
    assert (assoc.tls is not None) is tls
    assert (result.status, result.completed, result.remaining) == (0x0000, 12, 0)
    assert 1 <= len(reads) - 1 <= 5, reads  # the first read: the A-ASSOCIATE-AC


async def test_with_a_progress_callback_every_response_is_read_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Someone watches each pending response: no pause, whatever gather_delay.
    peer = MoveSCP([("pending", 12), ("final",)], gap=0.01)
    seen: list[int] = []
    with counted_reads(monkeypatch) as reads:
        result, _, _ = await _move(peer, 0.3, progress=lambda p: seen.append(p.completed))
    assert result.completed == 12 and seen[:12] == list(range(1, 13))
    assert len(reads) - 1 >= 12, reads


async def test_the_final_response_waits_at_most_the_pause() -> None:
    # Two pending responses 0.1 s apart (each its own read, even if this
    # process is slow to read the first), then the final one 50 ms later:
    # the second began a pause (0.4 s), so the final one is read after it,
    # not sooner, not much later.
    peer = MoveSCP([("pending", 2), ("sleep", 0.05), ("final",)], gap=0.1)
    result, ended, _ = await _move(peer, 0.4)
    assert (result.status, result.completed) == (0x0000, 2)
    waited = ended - peer.final_sent_at
    assert 0.2 < waited < 0.4 + 2.0, waited
    # gather_delay 0: the final response is read when it comes.
    peer = MoveSCP([("pending", 2), ("sleep", 0.05), ("final",)], gap=0.01)
    result, ended, _ = await _move(peer, 0.0)
    assert result.completed == 2 and ended - peer.final_sent_at < 0.2


async def test_sparse_pending_responses_are_read_as_they_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One pending response, then the final one: the first of a retrieve
    # begins no pause, so a move of one instance waits for nothing. Nor do
    # responses further apart than the pause (0.05 s): each is read as it
    # comes, no timer made for it.
    peer = MoveSCP([("pending", 1), ("sleep", 0.05), ("final",)])
    result, ended, _ = await _move(peer, 1.0)
    assert result.completed == 1 and ended - peer.final_sent_at < 0.5
    peer = MoveSCP([("pending", 4), ("final",)], gap=0.15)
    timers: list[float] = []
    loop = asyncio.get_running_loop()
    call_later = loop.call_later

    def counted(delay: float, *args: Any) -> asyncio.TimerHandle:
        if delay == 0.05:
            timers.append(delay)
        return call_later(delay, *args)

    monkeypatch.setattr(loop, "call_later", counted)
    with counted_reads(monkeypatch) as reads:
        result, _, _ = await _move(peer, 0.05)
    assert result.completed == 4 and len(reads) - 1 >= 5  # each response a read
    assert timers == []


async def test_a_read_that_brings_anything_else_does_not_pause_reading() -> None:
    # A request of the peer (here a C-ECHO-RQ) in the read with a pending
    # response (the second: the first begins no pause anyway): the next read
    # comes at once, so the final response is not held for the 1 s pause.
    peer = MoveSCP([("pending", 1), ("sleep", 0.01), ("echo-rq+pending",), ("sleep", 0.05),
                    ("final",)])  # fmt: skip
    result, ended, _ = await _move(peer, 1.0)
    assert result.completed == 2
    assert ended - peer.final_sent_at < 0.5


async def test_an_abort_during_a_pause_is_seen_when_it_ends() -> None:
    peer = MoveSCP([("pending", 2), ("sleep", 0.05), ("abort",)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with peer.running() as port, asyncio.timeout(BOUND):
        async with adicom.connect("127.0.0.1", port, contexts=qrscu.move_contexts()) as assoc:
            assoc.gather_delay = 0.3
            with pytest.raises(adicom.AssociationAborted):
                await qrscu.move(assoc, identifier(), "DEST")
    assert loop.time() - started < 0.3 * 3 + 2.0
    # The move that raised turned its gathering off, and no pause outlives the connection.
    assert assoc.gathering is None and assoc._gather_pause is None


async def test_the_final_response_in_a_read_ends_the_pausing() -> None:
    # The third pending response and the final one come in one read, after
    # a pause (1 s) began by the second: reading goes on at once after that
    # read, so the release's A-RELEASE-RP is not held for another pause.
    peer = MoveSCP([("pending", 2), ("sleep", 0.05), ("pending+final",)], gap=0.01)
    loop = asyncio.get_running_loop()
    async with peer.running() as port, asyncio.timeout(BOUND):
        async with adicom.connect("127.0.0.1", port, contexts=qrscu.move_contexts()) as assoc:
            assoc.gather_delay = 1.0
            result = await qrscu.move(assoc, identifier(), "DEST")
            assert (result.status, result.completed) == (0x0000, 3)
            started = loop.time()
        assert assoc._released  # the release, once the block ends
        assert loop.time() - started < 0.5


async def test_responses_someone_waits_for_never_pause_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gather_pending on an operation whose responses are queued for a reader
    # (not taken in the transport callback): every read comes at once.
    peer = MoveSCP([("pending", 6), ("final",)], gap=0.01)
    pauses: list[object] = []
    gather = Driver._gather

    def counted(self: Driver, now: float) -> None:
        gather(self, now)
        if self._gather_pause is not None:
            pauses.append(self._gather_pause)

    monkeypatch.setattr(Driver, "_gather", counted)
    async with peer.running() as port, asyncio.timeout(BOUND):
        async with adicom.connect("127.0.0.1", port, contexts=qrscu.move_contexts()) as assoc:
            context = assoc.context_for(MOVE).context_id
            command = Command(
                CommandField.C_MOVE_RQ, affected_sop_class_uid=MOVE, move_destination="DEST"
            )
            operation = await assoc.start_operation(context, command, _identifier_bytes())
            assoc.gather_pending(operation, 1.0)
            responses = 0
            while not operation.done:
                await operation.next_response()
                responses += 1
                await asyncio.sleep(0.005)  # a slow reader: responses wait in the queue
            assoc.gather_pending(None)
    assert responses == 7 and pauses == []


def _identifier_bytes() -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, identifier())
    return out.getvalue()


async def test_another_operation_ends_a_pause_and_none_begins_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A C-ECHO started during a pause (1 s) ends it: its answer must not
    # wait. While the C-ECHO is outstanding (this peer never answers it),
    # the move's later pending responses, 10 ms apart, begin no pause.
    peer = MoveSCP([("pending", 2), ("sleep", 0.3), ("pending", 4), ("final",)], gap=0.01, window=4)
    pauses: list[float] = []
    gather = Driver._gather

    def counted(self: Driver, now: float) -> None:
        had = self._gather_pause
        gather(self, now)
        if self._gather_pause is not None and self._gather_pause is not had:
            pauses.append(now)

    monkeypatch.setattr(Driver, "_gather", counted)
    contexts = [*qrscu.move_contexts(), ("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
    async with peer.running() as port, asyncio.timeout(BOUND):
        async with adicom.connect("127.0.0.1", port, contexts=contexts) as assoc:
            assoc.gather_delay = 1.0
            move = asyncio.create_task(qrscu.move(assoc, identifier(), "DEST"))
            for _ in range(200):  # the second pending response begins a pause
                if assoc._gather_pause is not None:
                    break
                await asyncio.sleep(0.005)
            assert assoc._gather_pause is not None and len(pauses) == 1
            echo = Command(CommandField.C_ECHO_RQ, affected_sop_class_uid="1.2.840.10008.1.1")
            # The window lets the C-ECHO go beside the move (else it would wait for its end).
            await assoc.start_operation(assoc.context_for("1.2.840.10008.1.1").context_id, echo)
            assert not move.done()
            assert assoc._gather_pause is None and assoc._transport.is_reading()
            result = await move
            assert (result.status, result.completed) == (0x0000, 6)
            assert len(pauses) == 1
            assoc.abort()  # the C-ECHO is never answered


async def test_a_flood_of_pending_responses_is_read_in_bounded_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hostile SCP writes 3,000 pending responses back to back: the pauses
    # gather them into few reads, but each read is still parsed a budget at
    # a time (the driver's slices win over a pause, which never starts while
    # input waits), every pause ends, and nothing is lost.
    peer = MoveSCP([("pending", 1), ("sleep", 0.02), ("pending", 3000), ("final",)])
    deferred: list[int] = []
    defer = Driver._defer_input

    def counted(self: Driver) -> None:
        deferred.append(1)
        defer(self)

    monkeypatch.setattr(Driver, "_defer_input", counted)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with counted_reads(monkeypatch) as reads:
        async with peer.running() as port, asyncio.timeout(BOUND):
            async with adicom.connect("127.0.0.1", port, contexts=qrscu.move_contexts()) as assoc:
                assoc.gather_delay = 0.05
                assoc._ul.parse_budget = 64  # PDUs per slice, small for the test
                result = await qrscu.move(assoc, identifier(), "DEST")
                transport = assoc._transport
                assert transport is not None and transport.is_reading()
                assert assoc._gather_pause is None
    assert (result.status, result.completed, result.remaining) == (0x0000, 3001, 0)
    assert deferred  # parsed in slices, pause or not
    assert len(reads) < 3001  # gathered, not a read per response
    assert loop.time() - started < BOUND / 2


async def test_the_pause_stays_under_a_tenth_of_the_timeouts() -> None:
    peer = MoveSCP([("final",)])
    async with peer.running() as port, asyncio.timeout(BOUND):
        async with adicom.connect(
            "127.0.0.1", port, contexts=qrscu.move_contexts(), timeout=0.5
        ) as assoc:
            assert assoc.gather_delay == GATHER_DELAY
            assoc.gather_pending(None, 1.0)  # the DIMSE timeout is 0.5 s
            assert assoc._gather_delay == pytest.approx(0.05) and assoc._gathering is None
            assoc.idle_timeout = 0.2
            assoc.gather_pending(None, 1.0)
            assert assoc._gather_delay == pytest.approx(0.02)
            assoc.gather_pending(None, 0.0)  # off
            assert assoc._gather_delay == 0.0
            result = await qrscu.move(assoc, identifier(), "DEST")
    assert result.status == 0x0000
