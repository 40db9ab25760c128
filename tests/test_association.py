"""The asyncio driver over loopback: associations, release, abort, timers, bad peers.

Raw peers here are asyncio streams written by the test, so every byte on the
wire is chosen; each ends with an assertion on what adicom sent back, what it
raised, and that the server still serves the next association.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import math
import pathlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

import adicom
import adicom.negotiation
from adicom.dimse import Command, CommandField, Message
from adicom.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    ConnectionClosed,
    DicomTimeout,
    LocalProtocolError,
    PeerUnreachable,
)
from adicom.operation import MessageQueue
from adicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    UserIdentityRQ,
    UserInformation,
)
from adicom.presentation import VERIFICATION

pytestmark = pytest.mark.anyio

#: How long a test waits for the server to close a connection it should close.
CLOSE_BOUND = 5.0

ECHO_RQ = AAssociateRQ(
    called_ae="ADICOM",
    calling_ae="RAW",
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, ("1.2.840.10008.1.2",)),),
    user_information=UserInformation(16384, "1.2.3.4"),
)


@contextlib.asynccontextmanager
async def serving(**options: object) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("ADICOM", port=0, **options) as server:  # type: ignore[arg-type]
        yield server


async def echo_works(server: adicom.Server) -> None:
    async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
        assert await assoc.echo() == 0


async def read_pdus(reader: asyncio.StreamReader, limit: float = CLOSE_BOUND) -> list[object]:
    """Read what the peer sends until it closes; fails if it does not close in time."""
    pdus: list[object] = []
    decoder = PDUReader()
    async with asyncio.timeout(limit):
        while chunk := await reader.read(65536):
            decoder.feed(chunk)
            while (pdu := decoder.next_pdu()) is not None:
                pdus.append(pdu)
    return pdus


async def raw(server: adicom.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def raw_associated(
    server: adicom.Server,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that has sent ECHO_RQ and read the A-ASSOCIATE-AC."""
    reader, writer = await raw(server)
    writer.write(ECHO_RQ.encode())
    decoder = PDUReader()
    async with asyncio.timeout(CLOSE_BOUND):
        while (answer := decoder.next_pdu()) is None:
            decoder.feed(await reader.read(65536))
    assert isinstance(answer, AAssociateAC)
    return reader, writer


async def test_echo_and_release_without_threads() -> None:
    assert threading.active_count() == 1
    async with serving() as server:
        async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
            assert threading.active_count() == 1
            assert await assoc.echo() == 0x0000
            assert threading.active_count() == 1
            assert assoc.is_established
        assert assoc.state.name == "STA1"
        assert server.stats["accepted"] == 1
    assert threading.active_count() == 1


def test_library_imports_no_threads() -> None:
    forbidden = {"threading", "concurrent", "concurrent.futures", "_thread", "multiprocessing"}
    root = pathlib.Path(adicom.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr in (
                "to_thread",
                "run_in_executor",
            ):
                names = [node.attr]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
            found += [f"{path.name}: {n}" for n in names if n in ("to_thread", "run_in_executor")]
    assert found == []


async def test_many_concurrent_associations_on_one_loop() -> None:
    async with serving() as server:
        await asyncio.gather(*(echo_works(server) for _ in range(50)))
        assert server.stats["accepted"] == 50
        assert server.stats["released"] == 50


@pytest.mark.parametrize(
    ("options", "called", "calling", "expected"),
    [
        ({}, "WRONG", "ADICOM", (1, 1, 7)),
        ({"allowed_calling_aes": ["FRIEND"]}, "ADICOM", "STRANGER", (1, 1, 3)),
        ({"max_associations": 0}, "ADICOM", "ADICOM", (2, 3, 2)),
    ],
)
async def test_rejections_carry_the_standard_reason(
    options: dict[str, object], called: str, calling: str, expected: tuple[int, int, int]
) -> None:
    async with serving(**options) as server:
        with pytest.raises(AssociationRejected) as info:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae=called, calling_ae=calling
            ):
                pass
        assert (info.value.result, info.value.source, info.value.reason) == expected
        assert server.stats["rejected"] == 1


async def test_no_acceptable_context_is_rejected_and_named() -> None:
    async with serving() as server:
        with pytest.raises(AssociationRejected) as info:
            async with adicom.connect(
                "127.0.0.1",
                server.port,
                called_ae="ADICOM",
                contexts=[("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2"])],
            ):
                pass
        assert (info.value.result, info.value.source, info.value.reason) == (1, 1, 1)
        assert "no-reason-given" in str(info.value)


async def test_user_identity_hook_accepts_and_rejects() -> None:
    seen: list[bytes] = []

    async def check(identity: UserIdentityRQ, info: object) -> bytes | None:
        seen.append(identity.primary_field)
        return b"welcome" if identity.secondary_field == b"secret" else None

    async with serving(user_identity=check) as server:
        good = UserIdentityRQ(2, b"alice", b"secret", positive_response_requested=True)
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ADICOM", user_identity=good
        ) as assoc:
            assert assoc.response is not None
            ac = assoc.response.user_information.user_identity_ac
            assert ac is not None and ac.server_response == b"welcome"
        bad = UserIdentityRQ(2, b"mallory", b"guess")
        with pytest.raises(AssociationRejected):
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="ADICOM", user_identity=bad
            ):
                pass
        assert seen == [b"alice", b"mallory"]


async def test_transfer_syntax_chosen_by_acceptor_preference() -> None:
    async with (
        serving(transfer_syntaxes=["1.2.840.10008.1.2"]) as server,
        adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="ADICOM",
            contexts=[(VERIFICATION, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])],
        ) as assoc,
    ):
        (context,) = assoc.contexts.values()
        assert context.transfer_syntax == "1.2.840.10008.1.2"


async def test_client_abort_is_seen_by_server_which_goes_on() -> None:
    async with serving() as server:
        with pytest.raises(RuntimeError):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
                await assoc.echo()
                raise RuntimeError("the caller's own failure")
        # The server saw an A-ABORT, not a release.
        async with asyncio.timeout(CLOSE_BOUND):
            await server.wait_idle()
        assert server.stats["aborted"] == 1 and server.stats["released"] == 0
        await echo_works(server)


async def test_server_close_aborts_open_association() -> None:
    async with serving() as server:
        port = server.port
        assoc = await adicom.open_association("127.0.0.1", port, called_ae="ADICOM")
        await server.close()
        with pytest.raises(AssociationAborted) as info:
            await assoc.echo()
        assert info.value.source == 0  # service-user abort by the server
        await assoc.wait_closed(CLOSE_BOUND)


async def test_server_close_with_grace_lets_the_peer_release_then_aborts_the_rest() -> None:
    """close(grace=...): no new connection, open associations may still release; then aborted."""
    async with serving() as server:
        port = server.port
        leaving = await adicom.open_association("127.0.0.1", port, called_ae="ADICOM")
        staying = await adicom.open_association("127.0.0.1", port, called_ae="ADICOM")
        # Connected, never asked for an association: closed at the grace's start.
        silent, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(server.close(grace=2.0))
        async with asyncio.timeout(1.0):  # not the grace's end
            assert await silent.read() == b""
        silent_writer.close()
        assert not closing.done()
        with pytest.raises(PeerUnreachable):
            await adicom.open_association("127.0.0.1", port, called_ae="ADICOM", timeout=2)
        await leaving.echo()  # still served during the grace
        await leaving.release()
        async with asyncio.timeout(CLOSE_BOUND):
            await closing  # the grace is a bound: the one that stays is aborted
        assert server.stats["released"] == 1
        with pytest.raises(AssociationAborted):
            await staying.echo()
        await staying.wait_closed(CLOSE_BOUND)
        for wrong in (-1.0, math.nan):
            with pytest.raises(ValueError, match="grace must be 0 or more seconds"):
                await server.close(grace=wrong)


async def test_a_close_cancelled_during_its_grace_still_aborts_what_is_open() -> None:
    async with serving() as server:
        staying = await adicom.open_association("127.0.0.1", server.port, called_ae="ADICOM")
        closing = asyncio.create_task(server.close(grace=5))
        await asyncio.sleep(0.05)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(AssociationAborted):
            await staying.echo()
        await staying.wait_closed(CLOSE_BOUND)
        async with asyncio.timeout(CLOSE_BOUND):
            await server.wait_idle()


def accepted_by_hand(count: int) -> tuple[list[socket.socket], list[tuple[socket.socket, Any]]]:
    """``count`` connected pairs: the peers' sockets and the accepted ends (with addresses)."""
    peers, accepted = [], []
    with socket.create_server(("127.0.0.1", 0)) as listening:
        for _ in range(count):
            peer = socket.create_connection(listening.getsockname())
            peer.setblocking(False)
            peers.append(peer)
            conn, address = listening.accept()
            conn.setblocking(False)
            accepted.append((conn, address))
    return peers, accepted


PATHS = pytest.mark.parametrize("adopted", [True, False], ids=["adopted", "wrapped-by-its-task"])


@PATHS
@pytest.mark.parametrize("cancelled", [False, True], ids=["closed", "close-cancelled"])
async def test_a_close_before_a_connection_s_task_ran_closes_it_and_counts_nothing(
    adopted: bool, cancelled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection accepted in the turn the server closes: its task never runs, yet it ends.

    The task is cancelled before its first step, so none of its own
    clean-up runs: the server must close the socket (adopted: its
    transport) and forget the connection itself, also when that close is
    cancelled while it waits for the tasks.
    """
    if not adopted:
        # The path of uvloop and TLS: the connection's task makes its transport.
        monkeypatch.setattr(adicom.server, "adopts", lambda loop: False)
    loop = asyncio.get_running_loop()
    peers, accepted = accepted_by_hand(1)
    (peer,), ((conn, address),) = peers, accepted
    with peer:
        server = adicom.Server("ADICOM", port=0)
        await server.start()
        server._accepted(conn, address)  # as the listener does
        assert len(server.associations) == 1 and not server.idle
        if cancelled:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0):
                    await server.close()  # before the connection's task has run
        else:
            await server.close()
        async with asyncio.timeout(CLOSE_BOUND):
            assert await loop.sock_recv(peer, 1) == b""
            await server.wait_idle()
        assert server.associations == []
        assert (server.admission.pending, server.admission.associated) == (0, 0)
        assert conn.fileno() == -1


@PATHS
async def test_a_connection_not_yet_connected_is_closed_as_a_grace_starts(
    adopted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close(grace=...) closes what is not associated at once: one whose transport is not made too.

    Its association is in Sta1, where an abort does nothing; left alone, its
    task would make the transport during the grace and accept it.
    """
    if not adopted:
        monkeypatch.setattr(adicom.server, "adopts", lambda loop: False)
    peers, accepted = accepted_by_hand(1)
    async with serving() as server:
        server._accepted(*accepted[0])
        closing = asyncio.create_task(server.close(grace=30.0))
        reader, writer = await asyncio.open_connection(sock=peers[0])
        writer.write(ECHO_RQ.encode())
        assert await read_pdus(reader) == []  # closed without a word, not at the grace's end
        writer.close()
        async with asyncio.timeout(CLOSE_BOUND):
            await closing
        assert server.stats["accepted"] == 0
        assert (server.admission.pending, server.admission.associated) == (0, 0)


async def test_a_released_peer_that_keeps_its_connection_counts_until_artim_or_close() -> None:
    """After the release the connection waits for the peer's close without its task.

    It still counts (admission, ``idle``) until the peer closes, ARTIM
    ends it, or the server closes; close() ends it at once, not at ARTIM.
    """
    async with serving(artim_timeout=30.0) as server:
        reader, writer = await raw_associated(server)
        writer.write(AReleaseRQ().encode())
        decoder = PDUReader()
        async with asyncio.timeout(CLOSE_BOUND):
            while (answer := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert isinstance(answer, AReleaseRP)
        await asyncio.sleep(0.05)  # the server's task has ended meanwhile
        assert server.associations == [] and not server._tasks
        assert not server.idle and server.admission.pending == 1
        async with asyncio.timeout(2):  # not ARTIM (30 s)
            await server.close()
            assert await reader.read() == b""
        writer.close()
        assert server.idle and server.admission.pending == 0


_STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


async def _many_matches(identifier: object, context: object) -> AsyncIterator[bytes]:
    """A C-FIND handler with far more 4 KB matches than a transport holds."""
    name = b"X" * 4000
    match = b"\x10\x00\x10\x00" + len(name).to_bytes(4, "little") + name  # implicit VR
    for _ in range(10_000):
        yield match


@contextlib.asynccontextmanager
async def flooded(
    server: adicom.Server,
) -> AsyncIterator[tuple[adicom.Association, adicom.Association]]:
    """A client that asked for many C-FIND matches and reads none: (client, served).

    Yielded once the server's responses wait in its own write buffer; the
    test resumes the client's reading if it likes.
    """
    before = set(server.associations)
    assoc = await adicom.open_association(
        "127.0.0.1",
        server.port,
        called_ae="ADICOM",
        contexts=[(_STUDY_FIND, ["1.2.840.10008.1.2"])],
        timeout=None,
    )
    (served,) = set(server.associations) - before
    assoc._transport.pause_reading()  # type: ignore[union-attr]
    finding = asyncio.create_task(
        assoc.send_request(
            next(iter(assoc.contexts)),
            Command(
                CommandField.C_FIND_RQ,
                affected_sop_class_uid=_STUDY_FIND,
                command_data_set_type=0x0000,  # present
            ),
            b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ",
        )
    )
    try:
        async with asyncio.timeout(CLOSE_BOUND):
            while not served._transport.get_write_buffer_size():  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        yield assoc, served
    finally:
        finding.cancel()
        await asyncio.wait({finding})
        assoc._transport.abort()  # type: ignore[union-attr]


async def test_a_peers_abort_behind_data_it_never_reads_frees_the_servers_place() -> None:
    """The peer aborts while our C-FIND responses wait unread, and keeps its socket.

    The server's task ends with the association (Sta1, where the standard
    runs no ARTIM). The connection, which a graceful close would keep
    behind data that will never be read, counts until the driver drops it
    at the ARTIM timeout.
    """
    async with serving(on_find=_many_matches, artim_timeout=0.5) as server:
        async with flooded(server) as (assoc, served):
            # The peer's A-ABORT, past its own state machine: it then holds
            # the connection open and reads nothing.
            assoc._transport.write(AAbort(0, 0).encode())  # type: ignore[union-attr]
            async with asyncio.timeout(CLOSE_BOUND):  # ARTIM is 0.5 s
                while not server.idle:
                    await asyncio.sleep(0.01)
            assert served.closed and not server._tasks
            assert (server.admission.pending, server.admission.associated) == (0, 0)


async def test_our_abort_behind_unread_data_still_reaches_a_peer_that_reads_late() -> None:
    """The server aborts (idle) behind C-FIND responses the peer has not read yet.

    The peer reads again later, within ARTIM: it reads the responses, then
    the A-ABORT, not a reset, although the server's task, ending, calls
    abort() again on the association it already aborted.
    """
    async with serving(on_find=_many_matches, idle_timeout=0.5, artim_timeout=10.0) as server:
        async with flooded(server) as (assoc, _):
            async with asyncio.timeout(CLOSE_BOUND):
                while server.associations:  # the idle abort, and the task's end
                    await asyncio.sleep(0.01)
            assoc.dimse_timeout = None
            assoc._transport.resume_reading()  # type: ignore[union-attr]
            async with asyncio.timeout(CLOSE_BOUND):
                await assoc.wait_closed(None)
            error = assoc._error
            assert isinstance(error, AssociationAborted) and not error.local, repr(error)
        async with asyncio.timeout(CLOSE_BOUND):
            while not server.idle:
                await asyncio.sleep(0.01)


async def test_close_with_a_grace_lets_a_release_answer_reach_a_peer_that_reads_late() -> None:
    """A peer releases behind responses it has not read yet as the server closes with a grace.

    The connection's task has ended (the association is over); the grace
    still covers the connection, so the A-RELEASE-RP reaches the peer when
    it reads again, and close() returns once the peer has closed.
    """
    async with serving(on_find=_many_matches, artim_timeout=10.0) as server:
        async with flooded(server) as (assoc, served):
            assoc._transport.write(AReleaseRQ().encode())  # type: ignore[union-attr]
            async with asyncio.timeout(CLOSE_BOUND):
                while server.associations:  # released: the task ends
                    await asyncio.sleep(0.01)
            closing = asyncio.create_task(server.close(grace=CLOSE_BOUND))
            await asyncio.sleep(0.2)
            assert not closing.done() and not served.closed
            assoc.dimse_timeout = None
            assoc._transport.resume_reading()  # type: ignore[union-attr]
            async with asyncio.timeout(CLOSE_BOUND):
                await assoc.wait_closed(None)
                await closing
            # Our client's own state machine never sent the A-RELEASE-RQ
            # (the test wrote it), so it takes the answer for a stray PDU:
            # what matters is that the answer arrived, not a reset.
            assert "A-RELEASE-RP" in str(assoc._error), repr(assoc._error)
            assert served.closed and server.idle


async def test_connections_evicted_for_room_are_dropped_not_closed_behind_unread_data() -> None:
    """Two released peers hold their connections behind responses they never read.

    With --max-per-address 2, each new connection from that address evicts
    one of them; an evicted one must go at once (it counts until it has
    closed), not close gracefully up to ARTIM (10 s), or the next
    connections from that address are refused meanwhile.
    """
    async with serving(on_find=_many_matches, artim_timeout=10.0, max_per_address=2) as server:
        async with flooded(server) as (first, _), flooded(server) as (second, _):
            for assoc in (first, second):
                assoc._transport.write(AReleaseRQ().encode())  # type: ignore[union-attr]
            async with asyncio.timeout(CLOSE_BOUND):
                while server.associations:  # both released: their tasks end
                    await asyncio.sleep(0.01)
            assert server.admission.pending == 2
            async with asyncio.timeout(CLOSE_BOUND):
                for _ in range(4):
                    await echo_works(server)
                    # Its own connection gone first: else, once the held
                    # ones are evicted, the next echo would evict this one
                    # (released, lingering) and pass whatever they do.
                    while server.admission.pending > 2:
                        await asyncio.sleep(0.01)


@PATHS
async def test_connections_not_yet_connected_are_not_taken_for_ended_ones(
    adopted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three connections from one address in one turn, two allowed: the third is refused.

    Until its transport is made (by its task, on uvloop and with TLS) an
    association is in Sta1: not one that has ended and may make room for
    the next connection from its address. Both kept get their answer.
    """
    if not adopted:
        monkeypatch.setattr(adicom.server, "adopts", lambda loop: False)
    async with serving(max_per_address=2) as server:
        peers, accepted = accepted_by_hand(3)
        for conn, address in accepted:
            server._accepted(conn, address)  # one listener callback's worth
        assert server.stats["refused"] == 1 and len(server.associations) == 2
        streams = [await asyncio.open_connection(sock=peer) for peer in peers]
        for _, writer in streams:
            writer.write(ECHO_RQ.encode())
        assert await read_pdus(streams[2][0]) == []  # refused: closed without a word
        for reader, _ in streams[:2]:
            decoder = PDUReader()
            async with asyncio.timeout(CLOSE_BOUND):
                while (answer := decoder.next_pdu()) is None:
                    decoder.feed(await reader.read(65536))
            assert isinstance(answer, AAssociateAC)
        for _, writer in streams:
            writer.close()
        async with asyncio.timeout(CLOSE_BOUND):
            await server.wait_idle()
        assert (server.admission.pending, server.admission.associated) == (0, 0)


async def abort_behind_unread_data(server: adicom.Server, **options: Any) -> None:
    """Abort from the test's task while ``server`` reads nothing of a 64 MB C-STORE.

    The A-ABORT waits behind data the peer never reads, so the close
    cannot complete; no transport callback runs to arm the association's
    timer, and with no idle bound (a client's default) nothing else would:
    the driver's bound on the close (ARTIM, 0.5 s) must end it, with
    nobody waiting in wait_closed. ``options`` go to open_association.
    """
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assoc = await adicom.open_association(
        "127.0.0.1",
        server.port,
        called_ae=server.ae_title,
        contexts=[(ct, ["1.2.840.10008.1.2.1"])],
        timeout=None,
        artim_timeout=0.5,
        **options,
    )
    (served,) = server.associations
    served._transport.pause_reading()  # type: ignore[union-attr]  # the peer reads no more
    context_id = next(iter(assoc.contexts))
    sending = asyncio.create_task(assoc.send_c_store(context_id, ct, "1.2.3.4", bytes(64 << 20)))
    async with asyncio.timeout(CLOSE_BOUND):
        while not assoc._transport.get_write_buffer_size():  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    assoc.abort()
    with pytest.raises(AssociationAborted):
        await sending
    async with asyncio.timeout(CLOSE_BOUND):  # ARTIM is 0.5 s
        while not assoc.closed:
            await asyncio.sleep(0.01)


async def test_an_abort_from_a_task_behind_unread_data_ends_at_artim(
    tmp_path: pathlib.Path,
) -> None:
    """abort() called by a task while the peer reads nothing: ARTIM still ends the connection."""
    async with serving(storage=adicom.DiskStorage(tmp_path)) as server:
        await abort_behind_unread_data(server)


_CT = "1.2.840.10008.5.1.4.1.1.2"


@contextlib.asynccontextmanager
async def holding_peer(
    last_word: Callable[[asyncio.StreamWriter], None],
) -> AsyncIterator[tuple[adicom.Association, asyncio.Event]]:
    """An association (ARTIM 0.5 s) with a peer that accepts it, then reads nothing more.

    Setting the yielded event has the peer say ``last_word(writer)``; it
    then holds its connection open, unread, until the block ends.
    """
    speak = asyncio.Event()
    release = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = PDUReader()
        try:
            async with asyncio.timeout(4 * CLOSE_BOUND):
                while (rq := decoder.next_pdu()) is None:
                    decoder.feed(await reader.read(65536))
                assert isinstance(rq, AAssociateRQ)
                writer.write(accept(rq))
                await speak.wait()  # reads nothing more meanwhile
                last_word(writer)
                await release.wait()
        finally:
            writer.close()

    listener = await asyncio.start_server(peer, "127.0.0.1", 0)
    async with listener:
        assoc = await adicom.open_association(
            "127.0.0.1",
            listener.sockets[0].getsockname()[1],
            contexts=[(_CT, ["1.2.840.10008.1.2.1"])],
            timeout=None,
            artim_timeout=0.5,
        )
        try:
            yield assoc, speak
        finally:
            release.set()
            assoc.drop()


async def test_the_peers_abort_behind_data_it_never_reads_ends_at_artim() -> None:
    """The peer aborts (AA-3: Sta1) but keeps its socket open and reads nothing.

    Our close waits behind the data it never reads; the standard starts no
    ARTIM in Sta1, and a client has no idle bound: only the driver's bound
    on a close that waits (ARTIM long) ends the connection.
    """

    def last_word(writer: asyncio.StreamWriter) -> None:
        writer.write(AAbort(0, 0).encode())

    async with holding_peer(last_word) as (assoc, speak):
        context_id = next(iter(assoc.contexts))
        sending = asyncio.create_task(
            assoc.send_c_store(context_id, _CT, "1.2.3.4", bytes(64 << 20))
        )
        async with asyncio.timeout(CLOSE_BOUND):
            while not assoc._transport.get_write_buffer_size():  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        speak.set()
        with pytest.raises(AssociationAborted):
            await sending
        assert not assoc.closed  # the close waits behind the unread data
        async with asyncio.timeout(CLOSE_BOUND):  # ARTIM is 0.5 s
            while not assoc.closed:  # nobody waits in wait_closed either
                await asyncio.sleep(0.01)


async def test_a_peer_that_half_closes_and_never_reads_is_dropped_at_artim() -> None:
    """The peer sends FIN and reads nothing more while our data waits to be written.

    Our side closes too, behind the unread data (uvloop's loop starts that
    close itself); the close ends at the ARTIM timeout on every loop, and
    an abort from a task afterwards changes nothing.
    """
    async with holding_peer(lambda writer: writer.write_eof()) as (assoc, speak):
        context_id = next(iter(assoc.contexts))
        # All of the message queued at once: the sender then waits for its
        # response, not for the transport (nothing wakes it at the abort).
        assoc._transport.set_write_buffer_limits(high=256 << 20)  # type: ignore[union-attr]
        sending = asyncio.create_task(
            assoc.send_c_store(context_id, _CT, "1.2.3.4", bytes(32 << 20))
        )
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                while assoc.outstanding == 0:  # sent: all of it in the write buffer
                    await asyncio.sleep(0.01)
            assert assoc._transport.get_write_buffer_size()  # type: ignore[union-attr]
            speak.set()
            async with asyncio.timeout(CLOSE_BOUND):
                while not assoc._transport.is_closing():  # type: ignore[union-attr]
                    await asyncio.sleep(0.01)
            assoc.abort()  # from a task, once closing: bounded all the same
            async with asyncio.timeout(CLOSE_BOUND):  # ARTIM is 0.5 s
                while not assoc.closed:  # nobody waits in wait_closed
                    await asyncio.sleep(0.01)
            with pytest.raises(adicom.DicomError):
                await sending
        finally:
            sending.cancel()


async def test_connection_refused_is_peer_unreachable() -> None:
    async with serving() as server:
        port = server.port
    with pytest.raises(PeerUnreachable, match="Connection refused"):
        async with adicom.connect("127.0.0.1", port):
            pass


# -- timers -------------------------------------------------------------------


async def test_artim_closes_a_connection_that_never_asks() -> None:
    async with serving(artim_timeout=0.2) as server:
        reader, writer = await raw(server)
        assert await read_pdus(reader) == []  # closed, without a word, within the bound
        writer.close()
        await echo_works(server)


async def test_idle_association_is_aborted() -> None:
    async with serving(idle_timeout=0.3) as server:
        assoc = await adicom.open_association("127.0.0.1", server.port, called_ae="ADICOM")
        await assoc.wait_closed(CLOSE_BOUND)
        with pytest.raises(AssociationAborted):
            await assoc.echo()
        await echo_works(server)


async def test_association_timeout_when_the_peer_never_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                await reader.read()  # never answers; returns when the client gives up
        finally:
            writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(DicomTimeout) as info:
            async with adicom.connect("127.0.0.1", port, timeout=0.2):
                pass
        assert info.value.which == "association"


async def test_dimse_timeout_when_no_response_comes_aborts() -> None:
    # A late response could be taken for another request's: after a DIMSE
    # timeout the association is aborted, not left up.
    peer = FakePeer(answer=lambda rq: [accept(rq)])
    async with peer.running() as port, adicom.connect("127.0.0.1", port, timeout=0.3) as assoc:
        with pytest.raises(DicomTimeout) as info:
            await assoc.echo()
        assert info.value.which == "DIMSE"
        assert not assoc.is_established
        with pytest.raises(AssociationAborted):
            await assoc.echo()
        async with asyncio.timeout(CLOSE_BOUND):
            await peer.done.wait()
    assert peer.received[-1] == AAbort(0, 0)


async def test_response_waits_share_one_watchdog_that_moves_earlier_and_later() -> None:
    # Each wait for a response is bounded by the association's one watchdog
    # timer (Driver._watch): a shorter wait after a longer one must move it
    # earlier, and one that outlasts it must survive its firing.
    peer = FakePeer(answer=lambda rq: [accept(rq)])
    async with peer.running() as port, adicom.connect("127.0.0.1", port, timeout=5.0) as assoc:
        command = Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=VERIFICATION)
        operation = await assoc.start_operation(assoc.context_for(VERIFICATION).context_id, command)
        clock = asyncio.get_running_loop().time
        # A wait of 0.3 s given up after 0.05 s leaves the watchdog set for 0.3 s.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await operation.next_response(timeout=0.3)
        assert assoc.is_established
        started = clock()
        with pytest.raises(DicomTimeout) as info:
            async with asyncio.timeout(CLOSE_BOUND):
                await operation.next_response(timeout=0.6)
        waited = clock() - started
        # Not ended when the watchdog first fired (~0.25 s from here), but at its own time.
        assert 0.55 <= waited < 3.0
        assert info.value.which == "DIMSE" and info.value.seconds == 0.6
        assert not assoc.is_established


async def test_a_shorter_response_wait_moves_the_watchdog_earlier() -> None:
    peer = FakePeer(answer=lambda rq: [accept(rq)])
    async with peer.running() as port, adicom.connect("127.0.0.1", port, timeout=30.0) as assoc:
        command = Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=VERIFICATION)
        operation = await assoc.start_operation(assoc.context_for(VERIFICATION).context_id, command)
        clock = asyncio.get_running_loop().time
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await operation.next_response()  # the watchdog is set 30 s ahead
        started = clock()
        with pytest.raises(DicomTimeout):
            async with asyncio.timeout(CLOSE_BOUND):
                await operation.next_response(timeout=0.2)
        assert 0.15 <= clock() - started < 3.0
        assert not assoc.is_established


async def _accept_association(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw peer's side of the association: read the A-ASSOCIATE-RQ, accept it."""
    decoder = PDUReader(max_pdata_length=0)
    while (pdu := decoder.next_pdu()) is None:
        decoder.feed(await reader.read(65536))
    writer.write(accept(pdu))  # type: ignore[arg-type]


async def _cancel_a_store_held_by_flow_control(
    port: int, artim_timeout: float = 10.0
) -> adicom.Association:
    """Associate, start an 8 MB C-STORE the peer does not read, cancel it half-sent."""
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.add_new(0x00091010, "LO", "ADICOM TEST")
    dataset.add_new(0x00091011, "OB", bytes(8 << 20))
    assoc = await adicom.open_association(
        "127.0.0.1",
        port,
        contexts=[(dataset.SOPClassUID, ["1.2.840.10008.1.2"])],
        artim_timeout=artim_timeout,
    )
    task = asyncio.get_running_loop().create_task(adicom.store_instance(assoc, dataset))
    async with asyncio.timeout(CLOSE_BOUND):
        while assoc._transport is None or not assoc._paused:
            await asyncio.sleep(0.01)  # bounded: until flow control holds the sender
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return assoc


async def test_a_message_cut_off_by_cancellation_aborts_the_association() -> None:
    # The peer stops reading; our C-STORE of 8 MB waits on flow control and
    # is cancelled half-way: half a message cannot stay on the wire of an
    # association still marked established.
    peer_reading = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = PDUReader(max_pdata_length=0)
        received: list[object] = []
        try:
            async with asyncio.timeout(CLOSE_BOUND * 2):
                await _accept_association(reader, writer)
                await peer_reading.wait()  # not reading: the sender fills the socket
                while chunk := await reader.read(1 << 20):
                    decoder.feed(chunk)
                    while (pdu := decoder.next_pdu()) is not None:
                        received.append(pdu)
        finally:
            writer.close()
            results.append(received)
            peer_done.set()

    results: list[list[object]] = []
    peer_done = asyncio.Event()
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        assoc = await _cancel_a_store_held_by_flow_control(listener.sockets[0].getsockname()[1])
        assert not assoc.is_established
        peer_reading.set()
        async with asyncio.timeout(CLOSE_BOUND):
            await assoc.wait_closed()
            await peer_done.wait()
    # The peer read the data that had gone, then our A-ABORT.
    assert results[0][-1] == AAbort(0, 0)


async def test_an_abort_to_a_peer_that_stopped_reading_closes_when_artim_expires() -> None:
    # Our A-ABORT waits behind a C-STORE the peer never reads, so the
    # connection's close cannot complete. ARTIM bounds the wait for that
    # close (PS3.8 Table 9-9: AA-1 starts it, AA-2 closes on Evt18 in
    # Sta13): on its expiry the connection is dropped, buffered data and
    # all, not kept until the peer reads or the kernel gives up.
    release_peer = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLOSE_BOUND * 2):
                await _accept_association(reader, writer)
                await release_peer.wait()  # never reads again
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        assoc = await _cancel_a_store_held_by_flow_control(port, artim_timeout=0.3)
        assert not assoc.closed  # the A-ABORT waits behind unread data
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                while not assoc.closed:
                    await asyncio.sleep(0.02)  # bounded: until ARTIM drops the connection
        finally:
            release_peer.set()
        with pytest.raises(adicom.AssociationAborted):
            assoc._check_open()


# -- bad input sent to the server ----------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a PDU at all
        bytes([0x08, 0, 0, 0, 0, 4, 0, 0, 0, 0]),  # a PDU type the standard lacks
        bytes([0x01, 0, 0, 0, 0, 10]) + bytes(10),  # length too short for its fields
        bytes([0x01, 0, 0xFF, 0xFF, 0xFF, 0xFF]),  # claims 4 GiB
        AReleaseRQ().encode(),  # unexpected for the state (nothing associated yet)
    ],
    ids=["http", "unknown-type", "length-short", "length-4GiB", "unexpected"],
)
async def test_bad_bytes_before_association_get_abort_and_close(data: bytes) -> None:
    # Before any A-ASSOCIATE-RQ (Sta2) every one of these is AA-1: an
    # A-ABORT with service-user source (PS3.8 Tables 9-9, 9-10).
    async with serving() as server:
        reader, writer = await raw(server)
        writer.write(data)
        pdus = await read_pdus(reader)
        assert pdus == [AAbort(0, 0)]
        writer.close()
        await echo_works(server)


async def test_length_that_lies_long_then_silence_hits_artim() -> None:
    async with serving(artim_timeout=0.3) as server:
        reader, writer = await raw(server)
        encoded = ECHO_RQ.encode()
        writer.write(encoded[:6] + encoded[6:20])  # the header promises more than comes
        assert await read_pdus(reader) == []
        writer.close()
        await echo_works(server)


async def test_unexpected_pdu_after_association_is_aborted() -> None:
    async with serving() as server:
        reader, writer = await raw_associated(server)
        writer.write(ECHO_RQ.encode())  # a second A-ASSOCIATE-RQ in Sta6
        assert await read_pdus(reader) == [AAbort(2, 2)]
        writer.close()
        await echo_works(server)


async def test_peer_vanishing_mid_pdu_leaves_server_serving() -> None:
    async with serving() as server:
        _, writer = await raw_associated(server)
        # A P-DATA-TF header promising 256 bytes, then 7 of them.
        writer.write(bytes([0x04, 0, 0, 0, 0x01, 0x00]) + b"partial")
        await writer.drain()
        writer.transport.abort()  # vanish: RST, no release, no abort
        async with asyncio.timeout(CLOSE_BOUND):
            await server.wait_idle()
        assert server.stats["aborted"] == 1
        await echo_works(server)


async def test_pdv_on_a_context_that_was_not_accepted_is_aborted() -> None:
    async with serving() as server:
        reader, writer = await raw_associated(server)
        writer.write(PDataTF((PDV(7, True, True, bytes(12)),)).encode())
        assert await read_pdus(reader) == [AAbort(2, 6)]
        writer.close()
        await echo_works(server)


# -- bad input sent to the client ----------------------------------------------


def accept(rq: AAssociateRQ, maximum_length: int = 16384) -> bytes:
    return AAssociateAC(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        presentation_contexts=tuple(
            PresentationContextAC(pc.context_id, 0, pc.transfer_syntaxes[0])
            for pc in rq.presentation_contexts
        ),
        user_information=UserInformation(maximum_length, "1.2.3"),
    ).encode()


class FakePeer:
    """An SCP written byte by byte: ``answer`` maps the A-ASSOCIATE-RQ to what it sends."""

    def __init__(
        self, answer: Callable[[AAssociateRQ], list[bytes]], *, hang_up: bool = False
    ) -> None:
        self.answer = answer
        self.hang_up = hang_up
        self.received: list[object] = []
        self.done = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = PDUReader()
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                while chunk := await reader.read(65536):
                    decoder.feed(chunk)
                    while (pdu := decoder.next_pdu()) is not None:
                        self.received.append(pdu)
                        if isinstance(pdu, AAssociateRQ):
                            for data in self.answer(pdu):
                                writer.write(data)
                            if self.hang_up:
                                return
        finally:
            writer.close()
            self.done.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        listener = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        async with listener:
            yield listener.sockets[0].getsockname()[1]


async def test_wait_closed_closes_a_connection_the_peer_keeps_open() -> None:
    # The bound of wait_closed runs out while the peer keeps the connection
    # open: we close it ourselves (transport.abort) and return once it is
    # closed, not before.
    peer = FakePeer(answer=lambda rq: [accept(rq)])
    async with peer.running() as port:
        assoc = await adicom.open_association("127.0.0.1", port, timeout=CLOSE_BOUND)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(CLOSE_BOUND):
            await assoc.wait_closed(0.2)
        assert assoc.closed
        assert 0.15 <= loop.time() - started < CLOSE_BOUND
        await assoc.wait_closed(0)  # closed: returns at once
        async with asyncio.timeout(CLOSE_BOUND):
            await peer.done.wait()


async def expect(
    answer: Callable[[AAssociateRQ], list[bytes]],
    action: Callable[[adicom.Association], Awaitable[object]] | None = None,
    *,
    hang_up: bool = False,
) -> tuple[BaseException, list[object]]:
    peer = FakePeer(answer, hang_up=hang_up)
    async with peer.running() as port:
        with pytest.raises(adicom.DicomError) as info:
            async with adicom.connect("127.0.0.1", port, timeout=2.0) as assoc:
                if action is not None:
                    await action(assoc)
        async with asyncio.timeout(CLOSE_BOUND):
            await peer.done.wait()
    return info.value, peer.received


async def test_client_gets_abort_with_source_and_reason() -> None:
    error, _ = await expect(lambda rq: [AAbort(2, 5).encode()])
    assert isinstance(error, AssociationAborted)
    assert (error.source, error.reason, error.local) == (2, 5, False)
    assert "unexpected PDU parameter" in str(error)


async def test_client_gets_rejection_from_raw_peer() -> None:
    error, _ = await expect(lambda rq: [AAssociateRJ(2, 3, 1).encode()])
    assert isinstance(error, AssociationRejected) and error.transient
    assert "temporary-congestion" in str(error)


async def test_client_aborts_on_garbage_and_tells_the_peer() -> None:
    error, received = await expect(lambda rq: [b"\xff" * 10])
    assert isinstance(error, AssociationAborted) and error.local
    assert "unrecognized PDU type 0xFF" in str(error)
    assert received[-1] == AAbort(2, 1)


async def test_client_sees_peer_closing_mid_association() -> None:
    async def echo_then_check(assoc: adicom.Association) -> None:
        await assoc.echo()

    error, _ = await expect(
        lambda rq: [accept(rq), bytes([0x04, 0, 0, 0, 0, 99])], echo_then_check, hang_up=True
    )
    # The peer promised a 99-byte P-DATA-TF, then closed: the connection
    # ended under an open association.
    assert isinstance(error, ConnectionClosed)
    assert "closed the connection" in str(error)


# -- negotiation details --------------------------------------------------------


async def test_tcp_nodelay_on_both_sides() -> None:
    import socket

    async with serving() as server:
        async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
            both = [assoc, *server.associations]
            sockets = [a._transport.get_extra_info("socket") for a in both]  # type: ignore[union-attr]
            assert len(sockets) == 2
            for sock in sockets:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.selector_loop_only
async def test_on_asyncios_selector_loop_the_server_adopts_accepted_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # transport.adopt on the acceptor's side: no connect_accepted_socket (its
    # coroutines, future and loop turn) for a plain TCP connection.
    loop = asyncio.get_running_loop()
    assert type(loop) is asyncio.SelectorEventLoop, (
        "asyncio's selector loop only (not collected by test_uvloop)"
    )

    async def refusing(*args: object, **kwargs: object) -> None:
        raise AssertionError("connect_accepted_socket is not used for plain TCP here")

    monkeypatch.setattr(loop, "connect_accepted_socket", refusing)
    async with serving() as server:
        for _ in range(2):
            async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
                assert await assoc.echo() == 0
        async with asyncio.timeout(CLOSE_BOUND):
            await server.wait_idle()
        assert server.stats["released"] == 2 and server.stats["aborted"] == 0


@pytest.mark.parametrize("side", ["server", "client"])
async def test_smallest_maximum_pdu_is_respected_in_both_directions(side: str) -> None:
    # At the smallest maximum adicom agrees to, a 5 KB data set must be split
    # into several PDUs; a receiver refuses any PDU over its limit, so the
    # store succeeds only if the sender honoured the announced maximum.
    from pydicom.dataset import Dataset

    from adicom.negotiation import MIN_PEER_MAX_PDU

    small = MIN_PEER_MAX_PDU
    server_pdu, client_pdu = (small, 1 << 20) if side == "server" else (1 << 20, small)
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.ImageComments = "X" * 5000  # LT: up to 10240 characters
    storage = adicom.MemoryStorage()
    async with (
        serving(max_pdu=server_pdu, storage=storage) as server,
        adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="ADICOM",
            max_pdu=client_pdu,
            contexts=[(dataset.SOPClassUID, ["1.2.840.10008.1.2"])],
        ) as assoc,
    ):
        assert assoc.peer_max_pdu == server_pdu
        result = await adicom.store_instance(assoc, dataset)
        assert result.status == 0
    assert storage.datasets[0].ImageComments == "X" * 5000


async def test_whole_messages_wait_behind_a_message_sent_in_pieces() -> None:
    # A message sent PDU by PDU holds the send lock across its awaits (here
    # a full transport buffer); a C-ECHO-RQ asked for meanwhile must not
    # take the whole-message way between its PDUs (PS3.8 E.2: the peer
    # would read a command in the middle of a data set and abort). The
    # lock is made only by the first message that needs it.
    from pydicom.dataset import Dataset

    from adicom.negotiation import MIN_PEER_MAX_PDU

    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4.6"
    dataset.ImageComments = "Y" * 9000  # several PDUs of the server's maximum
    storage = adicom.MemoryStorage()
    async with (
        serving(max_pdu=MIN_PEER_MAX_PDU, storage=storage) as server,
        adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="ADICOM",
            contexts=[
                (dataset.SOPClassUID, ["1.2.840.10008.1.2"]),
                (VERIFICATION, ["1.2.840.10008.1.2"]),
            ],
        ) as assoc,
    ):
        assert await assoc.echo() == 0
        assert assoc._send_lock is None  # whole messages need none
        assoc._paused = True  # as if the transport's buffer were full: the store waits
        store = asyncio.create_task(adicom.store_instance(assoc, dataset))
        async with asyncio.timeout(CLOSE_BOUND):
            while not assoc._drain_waiters:
                await asyncio.sleep(0)  # the store is half-sent, waiting to drain
        echo = asyncio.create_task(assoc.echo())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not echo.done() and assoc._sending == 2
        assoc._resume_writing()
        async with asyncio.timeout(CLOSE_BOUND):
            result, status = await asyncio.gather(store, echo)
        assert result.status == 0 and status == 0
        assert assoc.is_established and assoc._sending == 0
        assert await assoc.echo() == 0
    assert storage.datasets[0].ImageComments == "Y" * 9000


async def test_an_acceptor_refuses_a_maximum_pdu_too_small_to_send_in() -> None:
    # PS3.8 sets no floor, but a peer announcing 64 bytes would make us send
    # a large data set as millions of PDUs: rejected, and the server serves on.
    async with serving() as server:
        reader, writer = await raw(server)
        request = AAssociateRQ(
            called_ae="ADICOM",
            calling_ae="TINY",
            presentation_contexts=(
                PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
            ),
            user_information=UserInformation(64, "1.2.3"),
        )
        writer.write(request.encode())
        decoder = PDUReader()
        async with asyncio.timeout(CLOSE_BOUND):
            while (answer := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert answer == AAssociateRJ(1, 1, 1)
        writer.close()  # the requestor closes after a rejection (PS3.8 AE-4)
        await echo_works(server)


async def test_a_requestor_aborts_when_the_acceptor_announces_a_tiny_maximum_pdu() -> None:
    seen: list[object] = []
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = PDUReader()
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                while chunk := await reader.read(65536):
                    decoder.feed(chunk)
                    while (pdu := decoder.next_pdu()) is not None:
                        seen.append(pdu)
                        if isinstance(pdu, AAssociateRQ):
                            writer.write(accept(pdu, maximum_length=7))
        finally:
            writer.close()
            closed.set()  # adicom closed the connection after its A-ABORT

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(AssociationAborted, match="maximum PDU length of 7 bytes") as info:
            await adicom.open_association("127.0.0.1", port)
        assert (info.value.source, info.value.reason, info.value.local) == (2, 6, True)
        async with asyncio.timeout(CLOSE_BOUND):
            await closed.wait()
    assert seen[1:] == [AAbort(2, 6)]


async def test_release_collision_as_requestor() -> None:
    # The peer answers our A-RELEASE-RQ with its own, then with the
    # A-RELEASE-RP once we have answered it (PS3.8 Sta7 -> Sta9 -> Sta11 -> Sta1).
    got_rp = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = PDUReader()
        try:
            async with asyncio.timeout(CLOSE_BOUND):
                while chunk := await reader.read(65536):
                    decoder.feed(chunk)
                    while (pdu := decoder.next_pdu()) is not None:
                        if isinstance(pdu, AAssociateRQ):
                            writer.write(accept(pdu))
                        elif isinstance(pdu, AReleaseRQ):
                            writer.write(AReleaseRQ().encode())
                        elif type(pdu).__name__ == "AReleaseRP":
                            got_rp.set()
                            writer.write(pdu.encode())
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listener:
        port = listener.sockets[0].getsockname()[1]
        async with adicom.connect("127.0.0.1", port) as assoc:
            pass
        assert got_rp.is_set()
        assert assoc.state.name == "STA1"


async def test_role_selection_and_async_window_are_answered() -> None:
    from adicom.pdu import RoleSelection

    async with serving() as server:
        # The requestor asks to be SCU and SCP of Verification; this server
        # lets nobody act as SCP towards it yet, so it answers SCU only.
        async with adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="ADICOM",
            roles=[RoleSelection(VERIFICATION, scu_role=True, scp_role=True)],
            async_window=1,
        ) as assoc:
            assert assoc.response is not None
            answer = assoc.response.user_information
            assert answer.role_selections == (RoleSelection(VERIFICATION, True, False),)
            (context,) = assoc.contexts.values()
            assert (context.scu_role, context.scp_role) == (True, False)
            assert answer.implementation_class_uid == adicom.negotiation.IMPLEMENTATION_CLASS_UID
            assert answer.async_operations_window is None  # not asked, not answered


@pytest.mark.parametrize(
    ("asked", "answered"),
    [((5, 5), (5, 5)), ((0, 0), (16, 16)), ((100, 3), (16, 3)), ((1, 1), (1, 1))],
)
async def test_an_async_window_is_agreed_down_to_ours(
    asked: tuple[int, int], answered: tuple[int, int]
) -> None:
    """PS3.7 D.3.3.3: the acceptor answers at most what was asked, 0 meaning unlimited."""
    from adicom.pdu import AsyncOperationsWindow

    peer_request = ECHO_RQ.__class__(
        called_ae="ADICOM",
        calling_ae="RAW",
        presentation_contexts=ECHO_RQ.presentation_contexts,
        user_information=UserInformation(
            16384, "1.2.3.4", async_operations_window=AsyncOperationsWindow(*asked)
        ),
    )
    async with serving() as server:
        reader, writer = await raw(server)
        writer.write(peer_request.encode())
        decoder = PDUReader()
        async with asyncio.timeout(CLOSE_BOUND):
            while (answer_pdu := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert isinstance(answer_pdu, AAssociateAC)
        window = answer_pdu.user_information.async_operations_window
        assert window == AsyncOperationsWindow(*answered)
        writer.write(AReleaseRQ().encode())
        async with asyncio.timeout(CLOSE_BOUND):
            while (answer_pdu := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert type(answer_pdu).__name__ == "AReleaseRP"
        writer.close()  # the requestor closes after A-RELEASE-RP (PS3.8 AR-3)


@pytest.mark.parametrize("window", [1, 2, 16])
async def test_requests_beyond_the_async_window_are_aborted(window: int) -> None:
    """Within the negotiated window every request is answered; one more gets an A-ABORT."""
    from adicom.dimse import Command, CommandField

    async with (
        serving() as server,
        adicom.connect("127.0.0.1", server.port, called_ae="ADICOM", async_window=window) as assoc,
    ):
        assert (assoc.max_outstanding, assoc.max_incoming) == (window, window)
        (context,) = assoc.contexts.values()
        echo = Command(CommandField.C_ECHO_RQ, affected_sop_class_uid=VERIFICATION)
        operations = [await assoc.start_operation(context.context_id, echo) for _ in range(window)]
        for operation in operations:
            assert (await operation.result()).status == 0x0000

        # Now window + 1 in one write, past our own window (so none is
        # answered before the last arrives): the server must abort. Our own
        # DIMSE layer would refuse the extra one, so it goes as raw PDUs.
        from adicom.dimse import fragment_message
        from adicom.pdu import encode_pdata

        wire = []
        for message_id in range(1000, 1000 + window + 1):
            raw = replace(echo, message_id=message_id).encode()
            for pdvs in fragment_message(context.context_id, raw, None, 0):
                wire.extend(encode_pdata(pdvs))
        assert assoc._transport is not None
        assoc._transport.writelines(wire)
        await assoc.wait_closed(CLOSE_BOUND)
        with pytest.raises(AssociationAborted) as info:
            await assoc.echo()
        # The server aborted (not us): service-provider source, reason not specified.
        assert not info.value.local
        assert (info.value.source, info.value.reason) == (2, 0)
    assert server.stats["aborted"] == 1


@pytest.mark.parametrize("window", [0, -1, 65536])
async def test_an_async_window_out_of_range_is_a_clear_error(window: int) -> None:
    with pytest.raises(ValueError, match="async_window must be 1 to 65535"):
        adicom.Server("ADICOM", port=0, async_window=window)
    with pytest.raises(ValueError, match="async_window must be 1 to 65535"):
        # Refused before any connection is tried (nothing listens on port 9).
        await adicom.open_association("127.0.0.1", 9, async_window=window)


async def test_associations_are_freed_by_reference_counting_on_both_sides() -> None:
    # No reference cycle holds an association once its connection is gone
    # (its protocol object, a request hook): freed at once, not by a pass
    # of the cyclic garbage collector over everything that hangs off it.
    import gc
    import weakref

    server_sides: list[weakref.ref[adicom.Association]] = []
    gc.collect()
    gc.disable()
    try:
        async with serving() as server:
            original = server._handle_requests

            async def handle(association: adicom.Association) -> None:
                server_sides.append(weakref.ref(association))
                await original(association)

            server._handle_requests = handle  # type: ignore[method-assign]
            assoc = await adicom.open_association("127.0.0.1", server.port, called_ae="ADICOM")
            assert await assoc.echo() == 0
            await assoc.release()
            ours = weakref.ref(assoc)
            del assoc
            async with asyncio.timeout(CLOSE_BOUND):
                await server.wait_idle()
            await asyncio.sleep(0)
            assert ours() is None
            assert len(server_sides) == 1 and server_sides[0]() is None
    finally:
        gc.enable()


async def test_a_bounded_wait_on_a_future_ends_it_in_time_and_leaves_no_timer() -> None:
    from adicom.errors import TimeoutKind
    from adicom.operation import bounded

    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[int] = loop.create_future()
    start = loop.time()
    with pytest.raises(DicomTimeout, match="no answer") as caught:
        await bounded(waiter, TimeoutKind.RELEASE, 0.05, "no answer")
    assert caught.value.which is TimeoutKind.RELEASE
    assert 0.04 <= loop.time() - start < 2
    assert waiter.done()  # failed, so a late answer finds it done
    answered: asyncio.Future[int] = loop.create_future()
    loop.call_soon(answered.set_result, 7)
    assert await bounded(answered, TimeoutKind.RELEASE, 0.05) == 7
    await asyncio.sleep(0.1)  # its timer was cancelled: nothing fires on a done future
    # Cancelled while waiting: the cancellation goes through, the future is cancelled.
    pending: asyncio.Future[int] = loop.create_future()
    task = asyncio.ensure_future(bounded(pending, TimeoutKind.RELEASE, 5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pending.cancelled()


@pytest.mark.parametrize("window", [1, 4])
async def test_echoes_beyond_the_window_wait_for_room_and_each_gets_its_answer(
    window: int,
) -> None:
    # An echo leaves at once while the window has room, else waits its turn.
    async with serving() as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ADICOM", async_window=window
        ) as assoc:
            assert assoc.max_outstanding == window
            async with asyncio.timeout(CLOSE_BOUND):
                statuses = await asyncio.gather(*(assoc.echo() for _ in range(3 * window + 2)))
            assert statuses == [0] * (3 * window + 2)
            assert assoc.outstanding == 0


async def test_message_queue_arrival_then_take_is_get_in_two_steps() -> None:
    # Operation.next_response waits with arrival() and takes with take():
    # the same messages, end and errors as get().
    loop = asyncio.get_running_loop()
    queue = MessageQueue()
    with pytest.raises(LocalProtocolError):
        queue.take()  # nothing there: a bug of the caller's
    message = Message(1, Command(CommandField.C_ECHO_RSP, status=0))
    waiter = queue.arrival(loop)
    assert not waiter.done()
    loop.call_soon(queue.put, message)
    async with asyncio.timeout(5):
        await waiter
    assert queue.take() is message
    queue.fail(None)
    assert queue.ready and queue.take() is None and await queue.get() is None
    failed = MessageQueue()
    waiter = failed.arrival(loop)
    failed.fail(AssociationError("gone"))
    assert waiter.done()
    with pytest.raises(AssociationError, match="gone"):
        failed.take()
    interrupted = MessageQueue()
    waiter = interrupted.arrival(loop)
    interrupted.interrupt(TimeoutError("late"))
    with pytest.raises(TimeoutError, match="late"):
        await waiter


def test_the_response_template_follows_the_request_and_the_status() -> None:
    # The last template taken is kept (see _response_template): another
    # status or SOP class right after must not get it.
    from adicom.association import _response_template
    from adicom.dimse import Command, CommandField, c_store_rq

    echo = Command(CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid="1.2.840.10008.1.1")
    store = c_store_rq("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", message_id=2)
    store_ct = c_store_rq("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", message_id=3)
    for request, status in [
        (echo, 0),
        (echo, 0x0110),
        (echo, 0),
        (store, 0),
        (store_ct, 0),  # only the SOP class differs from the last
        (store, 0xA700),
    ]:
        response = _response_template(request, status).command(7, request.affected_sop_instance_uid)
        assert response.command_field == request.command_field | 0x8000
        assert response.affected_sop_class_uid == request.affected_sop_class_uid
        assert response.status == status and response.message_id_being_responded_to == 7
    assert _response_template(echo, 0) is _response_template(echo, 0)


def association_made_on(loop: asyncio.AbstractEventLoop) -> adicom.Association:
    """A requestor Association made on ``loop`` (which is then not running)."""

    async def make() -> adicom.Association:
        return adicom.Association(requestor=True)

    return loop.run_until_complete(make())


def test_an_association_used_from_another_loop_fails_rather_than_hangs() -> None:
    # Made on one loop (left open), waited on from another: its futures are
    # its own loop's, so the wait fails at once ("attached to a different
    # loop"), rather than waiting on a future nothing sets under a bound
    # kept by the other loop's timer.
    first = asyncio.new_event_loop()
    try:
        assoc = association_made_on(first)

        async def use() -> None:
            async with asyncio.timeout(2):
                await assoc.wait_closed(timeout=0.2)

        with pytest.raises(RuntimeError, match="different loop"):
            asyncio.run(use())
    finally:
        first.close()


def test_a_request_prepared_outside_the_running_loop_is_answered_on_the_associations() -> None:
    # prepare_request is a plain method, callable between run_until_complete
    # calls: the answer's future is the association's loop's all the same.
    from adicom.client import DEFAULT_CONTEXTS

    loop = asyncio.new_event_loop()
    try:
        assoc = association_made_on(loop)
        request = adicom.negotiation.build_request(
            calling_ae="A", called_ae="B", contexts=DEFAULT_CONTEXTS
        )
        assoc.prepare_request(request)
        answer = assoc._association_answer
        assert answer is not None and answer.get_loop() is loop
        assoc.cancel_request()
    finally:
        loop.close()
