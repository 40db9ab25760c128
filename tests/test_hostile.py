"""Hostile peers against a real Server over loopback: each is stopped, and others are served.

The attacker connects from 127.0.0.2 (Linux routes all of 127/8 to the
loopback), the well-behaved probe from 127.0.0.1, so the per-address limits
see two peers. Every test ends with the probe's C-ECHO answered: one peer's
misbehaviour must cost that peer, never everyone. Speed and memory under
attack are measured in benchmarks/ (the adversity workload), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.dimse import Command, CommandField, Limits, c_store_rq
from adicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PDUReader,
    PresentationContextRQ,
    UserInformation,
    encode_pdata,
)

pytestmark = pytest.mark.anyio

BOUND = 10.0  # every wait in these tests ends within this many seconds
ATTACKER = "127.0.0.2"
VERIFICATION = "1.2.840.10008.1.1"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT = "1.2.840.10008.1.2"

REQUEST = AAssociateRQ(
    called_ae="ADICOM",
    calling_ae="ATTACKER",
    presentation_contexts=(
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, FIND, (IMPLICIT,)),
        PresentationContextRQ(5, SC, (IMPLICIT,)),
    ),
    user_information=UserInformation(1 << 20, "1.2.3.4"),
)


@contextlib.asynccontextmanager
async def serving(**options: object) -> AsyncIterator[adicom.Server]:
    async with adicom.Server(
        "ADICOM",
        port=0,
        storage=adicom.MemoryStorage(),
        on_find=_no_matches,
        **options,  # type: ignore[arg-type]
    ) as server:
        yield server


async def _no_matches(identifier: Dataset, context: adicom.QRContext) -> AsyncIterator[Dataset]:
    return
    yield


async def probe(server: adicom.Server) -> None:
    """The well-behaved peer, from another address: its C-ECHO must be answered."""
    async with asyncio.timeout(BOUND):
        async with adicom.connect("127.0.0.1", server.port, called_ae="ADICOM") as assoc:
            assert await assoc.echo() == 0x0000


async def attacker(server: adicom.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(ATTACKER, 0))


async def associated(server: adicom.Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An attacker's connection that has its association."""
    reader, writer = await attacker(server)
    writer.write(REQUEST.encode())
    assert isinstance(await next_pdu(reader), AAssociateAC)
    return reader, writer


async def next_pdu(reader: asyncio.StreamReader, decoder: PDUReader | None = None) -> object:
    """The next PDU the server sends, or None when it closes first."""
    decoder = decoder or PDUReader(max_pdata_length=0)
    async with asyncio.timeout(BOUND):
        while (pdu := decoder.next_pdu()) is None:
            chunk = await reader.read(65536)
            if not chunk:
                return None
            decoder.feed(chunk)
    return pdu


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes this connection (within the bound)."""
    async with asyncio.timeout(BOUND):
        while await reader.read(65536):
            pass
    return True


async def release_and_close(
    server: adicom.Server,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *others: asyncio.StreamWriter,
) -> None:
    """Release the association on ``writer``, close it and ``others``; wait for the counts."""
    writer.write(AReleaseRQ().encode())
    assert isinstance(await next_pdu(reader), AReleaseRP)
    for held in (writer, *others):
        held.close()
    async with asyncio.timeout(BOUND):
        while server.admission.pending or server.admission.associated:
            await asyncio.sleep(0.01)


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    return b"".join(encode_pdata([(context_id, control, data)]))


# -- connections that never associate ---------------------------------------------


async def test_silent_connections_cannot_lock_out_associations() -> None:
    async with serving(max_pending=8, max_per_address=4) as server:
        silent = [await attacker(server) for _ in range(12)]
        # The first four from that address wait for their A-ASSOCIATE-RQ;
        # the others are closed at once, before anything is allocated.
        refused = 0
        for reader, _ in silent[4:]:
            refused += await closed_by_server(reader)
        assert refused == 8 and server.stats["refused"] == 8
        await probe(server)  # the silent ones take no association's room
        for _, writer in silent:
            writer.close()


async def test_connections_reset_as_they_open_leave_no_trace() -> None:
    # A peer that connects and resets at once (SO_LINGER 0), before or as
    # the server makes its transport (on asyncio's loop transport.adopt, on
    # uvloop connect_accepted_socket): each ends, the counts go back to
    # nothing, and the server still serves.
    import socket
    import struct

    async with serving() as server:
        for _ in range(20):
            sock = socket.socket()
            sock.bind((ATTACKER, 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(BOUND)
            sock.connect(("127.0.0.1", server.port))
            sock.close()  # a reset, not a FIN
        # The probe's connection is accepted after theirs (one queue).
        await probe(server)
        async with asyncio.timeout(BOUND):
            while server.admission.pending or server.admission.associated or server._tasks:
                await asyncio.sleep(0.01)
        assert server.stats["accepted"] == 1  # the probe's


async def test_a_dribbled_association_request_is_closed_by_artim() -> None:
    async with serving(artim_timeout=0.5) as server:
        reader, writer = await attacker(server)
        encoded = REQUEST.encode()

        async def dribble() -> None:
            for byte in encoded:  # a byte every 50 ms: slower than ARTIM allows
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        task = asyncio.get_running_loop().create_task(dribble())
        await probe(server)  # served while the dribble goes on
        assert await closed_by_server(reader)
        task.cancel()
        writer.close()


async def test_one_address_cannot_hold_every_association() -> None:
    async with serving(max_per_address=3, max_associations=10) as server:
        held = [await associated(server) for _ in range(3)]
        reader, writer = await attacker(server)
        assert await closed_by_server(reader)  # the fourth from that address
        await probe(server)
        for _, held_writer in [*held, (reader, writer)]:
            held_writer.close()


async def test_released_connections_the_peer_keeps_open_still_count_and_make_room() -> None:
    # A peer that releases and then never closes (PS3.8 7.2 says it should)
    # keeps each socket until ARTIM. Meanwhile the connection still counts
    # for its address: a new one from there closes the oldest of them
    # instead of piling up sockets no limit counts.
    async with serving(max_per_address=2, max_pending=4, artim_timeout=BOUND * 3) as server:
        held = []
        for _ in range(6):
            reader, writer = await associated(server)
            writer.write(AReleaseRQ().encode())
            assert isinstance(await next_pdu(reader), AReleaseRP)
            held.append((reader, writer))
        for reader, _ in held[:4]:
            assert await closed_by_server(reader)  # made room for the next
        async with asyncio.timeout(BOUND):
            while server.admission.pending != 2:  # the two newest, waiting for the close
                await asyncio.sleep(0.01)
        assert server.admission.associated == 0
        await probe(server)
        for _, writer in held:
            writer.close()


async def test_a_peer_reconnecting_after_its_release_closes_only_its_own_connection() -> None:
    async with serving(max_pending=2, max_per_address=1, artim_timeout=BOUND * 3) as server:
        reader, writer = await associated(server)
        writer.write(AReleaseRQ().encode())
        assert isinstance(await next_pdu(reader), AReleaseRP)  # and it keeps the socket
        # Another peer connects and has not sent its A-ASSOCIATE-RQ yet.
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(BOUND):
            while server.admission.pending < 2:  # both counted: the pending cap is full
                await asyncio.sleep(0.01)
        again = await attacker(server)  # the released peer comes back
        assert await closed_by_server(reader)  # its old connection made room ...
        other_writer.write(REQUEST.encode())  # ... and only that one
        assert isinstance(await next_pdu(other_reader), AAssociateAC)
        for held_writer in (writer, other_writer, again[1]):
            held_writer.close()


async def test_a_peer_that_aborts_and_reconnects_at_once_is_not_refused() -> None:
    # The A-ABORT and the new connection (with its request) reach the server
    # in the same turn of its loop: the aborted association must not still
    # fill the address's only place when the new connection is counted.
    import socket

    async with serving(max_per_address=1, max_pending=4) as server:
        for _ in range(3):
            _, writer = await associated(server)
            writer.write(AAbort(0, 0).encode())  # sent now: the buffer was empty
            sock = socket.socket()
            sock.bind((ATTACKER, 0))
            sock.settimeout(BOUND)
            sock.connect(("127.0.0.1", server.port))  # queued; the loop has not run
            sock.sendall(REQUEST.encode())
            sock.setblocking(False)
            reader, again = await asyncio.open_connection(sock=sock)
            assert isinstance(await next_pdu(reader), AAssociateAC)
            await release_and_close(server, reader, again, writer)


async def test_a_request_and_its_abort_in_one_read_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A requestor cancelled as it connected: its A-ASSOCIATE-RQ and A-ABORT
    # (or the close) reach the server in one read. The request is not
    # answered (Sta1: nothing to answer; the driver does not ask), the
    # connection ends before an association, and nothing is an error.
    caplog.set_level(logging.INFO, "adicom")
    async with serving() as server:
        for end in (AAbort(0, 0).encode(), b""):
            _, writer = await attacker(server)
            writer.write(REQUEST.encode() + end)
            writer.close()
            await writer.wait_closed()

        def ended() -> bool:
            return any(
                line.startswith(f"connection from ('{ATTACKER}', ")
                and line.endswith(") closed before an association")
                for line in (r.getMessage() for r in caplog.records)
            )

        async with asyncio.timeout(BOUND):
            while not ended():
                await asyncio.sleep(0.01)
            while server._tasks:  # both connections dealt with
                await asyncio.sleep(0.01)
        await probe(server)
    said = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], said


async def test_a_peer_that_aborts_during_the_identity_hook_and_reconnects_leaves_counts_right() -> (
    None
):
    # Its association ends (Sta1) while its task awaits the user identity
    # hook; the reconnect tells admission so at once. When the hook returns,
    # the ended association must not be counted as an association again.
    from dataclasses import replace

    from adicom.fsm import State
    from adicom.pdu import UserIdentityRQ

    called, go = asyncio.Event(), asyncio.Event()

    async def hook(identity: object, info: object) -> bytes:
        called.set()
        await go.wait()
        return b"welcome"

    request = replace(
        REQUEST,
        user_information=replace(
            REQUEST.user_information, user_identity_rq=UserIdentityRQ(2, b"user", b"secret")
        ),
    )
    async with serving(user_identity=hook, max_per_address=1) as server:
        _, writer = await attacker(server)
        writer.write(request.encode())
        async with asyncio.timeout(BOUND):
            await called.wait()
            writer.write(AAbort(0, 0).encode())
            while server.associations[0].state != State.STA1:  # the abort is read
                await asyncio.sleep(0.01)
        reader, again = await attacker(server)  # let in: the ended one made room
        again.write(REQUEST.encode())
        assert isinstance(await next_pdu(reader), AAssociateAC)
        go.set()
        await release_and_close(server, reader, again, writer)
        await probe(server)


@pytest.mark.parametrize("vr", ["LO", "SQ"])  # the quick decoder's, and pydicom's reader's
async def test_a_find_identifier_cut_short_is_answered_with_the_element_it_ends_in(
    vr: str,
) -> None:
    async with serving() as server:
        reader, writer = await associated(server)
        command = Command(
            command_field=CommandField.C_FIND_RQ,
            affected_sop_class_uid=FIND,
            message_id=7,
            priority=0,
            command_data_set_type=0x0001,
        )
        level = struct.pack("<HHL", 0x0008, 0x0052, 6) + b"STUDY "
        if vr == "SQ":  # a sequence: the quick decoder leaves it to pydicom's reader
            level += struct.pack("<HHL", 0x0008, 0x1110, 0)
        cut = level + struct.pack("<HHL", 0x0010, 0x0020, 12) + b"1234"  # 8 bytes short
        writer.write(pdata(3, 0x03, command.encode()) + pdata(3, 0x02, cut))
        decoder = PDUReader(max_pdata_length=1 << 20)
        response = await next_pdu(reader, decoder)
        assert isinstance(response, PDataTF)
        answer = Command.decode(b"".join(bytes(pdv.data) for pdv in response.pdvs))
        assert answer.status == 0xC000 and answer.message_id_being_responded_to == 7
        assert "(0010,0020)" in (answer.error_comment or ""), answer.error_comment
        assert len(answer.error_comment or "") <= 64
        writer.close()


# -- messages that never end, or end too big --------------------------------------


async def test_a_command_set_that_never_ends_is_aborted() -> None:
    async with serving(limits=Limits(max_command=4096)) as server:
        reader, writer = await associated(server)
        piece = bytes(1000)
        for _ in range(10):  # command fragments, none of them the last
            writer.write(pdata(1, 0x01, piece))
        assert await next_pdu(reader) == AAbort(2, 6)
        assert await closed_by_server(reader)
        writer.close()
        await probe(server)


async def test_an_oversized_identifier_is_aborted() -> None:
    async with serving(limits=Limits(max_dataset=64 * 1024)) as server:
        reader, writer = await associated(server)
        command = Command(
            CommandField.C_FIND_RQ,
            message_id=1,
            affected_sop_class_uid=FIND,
            priority=0,
            command_data_set_type=0,
        )
        writer.write(pdata(3, 0x03, command.encode()))
        for _ in range(20):  # 200 KB of identifier, 10 KB a PDV
            writer.write(pdata(3, 0x00, bytes(10_000)))
        assert await next_pdu(reader) == AAbort(2, 0)
        writer.close()
        await probe(server)


async def test_a_data_set_on_a_c_echo_is_bounded_too() -> None:
    async with serving(limits=Limits(max_dataset=64 * 1024)) as server:
        reader, writer = await associated(server)
        echo = Command(
            CommandField.C_ECHO_RQ,
            message_id=1,
            affected_sop_class_uid=VERIFICATION,
            command_data_set_type=0,
        )
        writer.write(pdata(1, 0x03, echo.encode()))
        for _ in range(20):
            writer.write(pdata(1, 0x00, bytes(10_000)))
        assert await next_pdu(reader) == AAbort(2, 0)
        writer.close()
        await probe(server)


async def test_a_dribbled_message_is_aborted_at_its_deadline() -> None:
    # Bytes keep coming (the idle timer never fires), but the message must
    # be whole within message_timeout of its first fragment.
    async with serving(limits=Limits(message_timeout=0.5), idle_timeout=60) as server:
        reader, writer = await associated(server)
        command = c_store_rq(SC, generate_uid(), message_id=1)
        writer.write(pdata(5, 0x03, command.encode()))

        async def dribble() -> None:
            for _ in range(200):
                writer.write(pdata(5, 0x00, b"\x00\x00"))
                await asyncio.sleep(0.05)

        task = asyncio.get_running_loop().create_task(dribble())
        assert await next_pdu(reader) == AAbort(2, 0)
        task.cancel()
        writer.close()
        await probe(server)


async def test_an_instance_beyond_max_instance_is_refused_and_the_association_goes_on() -> None:
    storage = adicom.MemoryStorage()

    def instance(size: int) -> Dataset:
        dataset = Dataset()
        dataset.SOPClassUID = SC
        dataset.SOPInstanceUID = generate_uid()
        dataset.ImageComments = "x" * size
        return dataset

    async with adicom.Server(
        "ADICOM", port=0, storage=storage, limits=Limits(max_instance=50_000)
    ) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="ADICOM", contexts=[(SC, [IMPLICIT])]
        ) as assoc:
            big = await adicom.store_instance(assoc, instance(9_000))
            too_big = await adicom.store_instance(assoc, _big(100_000))
            small = await adicom.store_instance(assoc, instance(1_000))
    assert big.status == 0x0000
    assert too_big.status == 0xA700 and "larger than the 50000 bytes" in (too_big.error or "")
    assert small.status == 0x0000
    assert len(storage.datasets) == 2


def _big(size: int) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = SC
    dataset.SOPInstanceUID = generate_uid()
    dataset.add_new(0x00091010, "LO", "ADICOM TEST")
    dataset.add_new(0x00091011, "OB", bytes(size))
    return dataset


# -- work per callback -------------------------------------------------------------


def _echo_rq() -> bytes:
    """A whole C-ECHO-RQ: a PDU the server parses where the read landed."""
    command = Command(
        CommandField.C_ECHO_RQ,
        message_id=1,
        affected_sop_class_uid=VERIFICATION,
        command_data_set_type=0x0101,
    )
    return pdata(1, 0x03, command.encode())


@pytest.mark.parametrize("cut", [None, 2, 5])
async def test_a_pdu_longer_than_our_maximum_is_aborted_wherever_the_read_cuts_it(
    cut: int | None,
) -> None:
    # The over-long header comes after a whole PDU, in the same read (the
    # receive buffer is parsed in place), or cut inside its 6 bytes so that
    # its start is kept and the rest arrives in the next read. The server
    # must refuse it from the header alone, before holding its bytes.
    async with serving() as server:
        reader, writer = await associated(server)
        header = struct.pack(">BxL", 0x04, (1 << 20) + 1) + bytes(100)
        if cut is None:
            writer.write(_echo_rq() + header)
        else:
            writer.write(_echo_rq() + header[:cut])
            await writer.drain()
            assert isinstance(await next_pdu(reader), PDataTF)  # the C-ECHO-RSP
            await asyncio.sleep(0.05)
            writer.write(header[cut:])
        aborted = await next_pdu(reader)
        if isinstance(aborted, PDataTF):
            aborted = await next_pdu(reader)
        assert aborted == AAbort(2, 6)
        assert await closed_by_server(reader)
        writer.close()
        await probe(server)


async def test_a_large_pdu_that_never_completes_costs_its_association_only() -> None:
    # A P-DATA-TF within our maximum (900 KB: gathered in a buffer of its
    # own as soon as its header is read) of which 100 bytes ever come: the
    # buffer is bounded by the maximum PDU, and the silence by idle_timeout.
    async with serving(idle_timeout=0.5) as server:
        reader, writer = await associated(server)
        started = struct.pack(">BxL", 0x04, 900_000) + bytes(100)
        writer.write(_echo_rq() + started)
        assert isinstance(await next_pdu(reader), PDataTF)  # answered before it
        await probe(server)  # served while the attacker's PDU hangs
        assert isinstance(await next_pdu(reader), AAbort)  # at the idle timeout
        assert await closed_by_server(reader)
        writer.close()
        await probe(server)


async def test_a_pdu_of_too_many_pdvs_is_refused() -> None:
    async with serving() as server:
        reader, writer = await associated(server)
        body = b"".join(struct.pack(">LBB", 3, 5, 0) + b"x" for _ in range(5000))
        writer.write(struct.pack(">BxL", 0x04, len(body)) + body)
        assert await next_pdu(reader) == AAbort(2, 6)
        writer.close()
        await probe(server)


@pytest.mark.parametrize("pdvs_per_pdu", [250, 1])
async def test_a_flood_of_small_pdvs_is_served_in_slices_and_others_still_are(
    pdvs_per_pdu: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Legal PDUs of 250 one-byte PDVs each, or 250 PDUs of one such PDV
    # each (read where they land, each handed on bare: PDUReader.next_bare),
    # streamed without pause into a C-STORE: the server takes them a slice
    # per loop turn, pausing that peer in between, and the probe is
    # answered while the flood goes on.
    bare = 0
    next_bare = PDUReader.next_bare

    def counting(reader: PDUReader) -> object:
        nonlocal bare
        pdu = next_bare(reader)
        bare += type(pdu) is tuple
        return pdu

    monkeypatch.setattr(PDUReader, "next_bare", counting)
    async with serving(limits=Limits(message_timeout=None)) as server:
        _, writer = await associated(server)
        command = c_store_rq(SC, generate_uid(), message_id=1)
        writer.write(pdata(5, 0x03, command.encode()))
        pdu = PDataTF(tuple(_one_byte_pdv() for _ in range(pdvs_per_pdu))).encode()
        flood = pdu * (250 // pdvs_per_pdu)
        stop = asyncio.Event()

        async def pour() -> int:
            sent = 0
            while not stop.is_set() and sent < 8000:
                writer.write(flood)
                await writer.drain()  # the server's pauses push back here
                sent += 1
            return sent

        task = asyncio.get_running_loop().create_task(pour())
        await asyncio.sleep(0.1)  # let the flood start
        await probe(server)
        stop.set()
        async with asyncio.timeout(BOUND):
            assert await task > 0
        writer.close()
    if pdvs_per_pdu == 1:
        # The flood went the bare way (all but the PDUs a read cut in two).
        assert bare > 100, bare


def _one_byte_pdv() -> PDV:
    return PDV(5, False, False, b"\x00")


# -- shutdown from any state ------------------------------------------------------


async def test_closing_the_server_under_a_connection_not_yet_associated_is_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    server = adicom.Server("ADICOM", port=0)
    await server.start()
    reader, writer = await attacker(server)  # Sta2: connected, no A-ASSOCIATE-RQ
    reader2, writer2 = await associated(server)  # Sta6
    async with asyncio.timeout(BOUND):
        await server.close()
    assert await closed_by_server(reader)
    assert await next_pdu(reader2) == AAbort(0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    writer.close()
    writer2.close()


async def test_silent_connections_from_many_addresses_make_room_for_a_real_peer() -> None:
    # Past the per-address cap, an attacker spreads its silent connections
    # over many addresses and fills the cap on connections not yet
    # associated: the longest silent one is closed to let a new one in, so
    # the probe, which sends its A-ASSOCIATE-RQ at once, still associates.
    async with serving(max_pending=8, max_per_address=4) as server:
        silent = []
        for index in range(16):  # four addresses, four each: twice the pending cap
            address = f"127.0.0.{2 + index // 4}"
            silent.append(
                await asyncio.open_connection("127.0.0.1", server.port, local_addr=(address, 0))
            )
        evicted = 0
        for reader, _ in silent[:8]:
            evicted += await closed_by_server(reader)  # the eight oldest made room
        assert evicted == 8
        await probe(server)
        for _, writer in silent:
            writer.close()
