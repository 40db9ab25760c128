"""The receive path for reads parsed where they land (PDUReader.buffer_lent).

Each test compares the lent path with the general one (feed, or
buffer_updated: the read copied out first) on the same bytes, and checks
that the lent path really is taken (PDV data are views into the staging
buffer), so that a broken or silently disabled fast path fails here.
"""

from __future__ import annotations

import random

import pytest

from adicom import pdu
from adicom import protocol as ul
from adicom.errors import PDUTooLarge, RemoteProtocolError
from adicom.fsm import State

#: A C-STORE's bytes as DCMTK storescu sends them with 16 KiB PDUs: a
#: command PDU, then data set fragments of one PDV each; then PDUs of several
#: PDVs, a tiny one, a control PDU, and a larger P-DATA-TF.
_DATASET = bytes(random.Random(17).randbytes(42_000))


def _pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    return b"".join(pdu.encode_pdata(list(pdvs)))


def _c_store() -> bytes:
    parts = [_pdata((1, 3, b"C" * 160))]
    for at in range(0, len(_DATASET), 16378):
        piece = _DATASET[at : at + 16378]
        parts.append(_pdata((1, 2 if at + 16378 >= len(_DATASET) else 0, piece)))
    return b"".join(parts)


def _stream(release: bool = True) -> bytes:
    parts = [_c_store()]
    parts.append(_pdata((3, 3, b"D" * 100), (3, 0, b"x" * 10), (3, 2, b"y" * 11)))
    parts.append(_pdata((5, 2, b"z")))
    if release:
        parts.append(pdu.AReleaseRQ().encode())
    parts.append(_pdata((1, 2, _DATASET[:30_000])))
    return b"".join(parts) * 3


def _as_bytes(item: pdu.PDU) -> object:
    """A PDU with its PDV data as bytes (taken at once, as a sink would)."""
    if isinstance(item, pdu.PDataTF):
        return [(p.context_id, p.control, bytes(p.data)) for p in item.pdvs]
    return item


def _general(data: bytes) -> list[object]:
    reader = pdu.PDUReader()
    reader.feed(data)
    out = []
    while (item := reader.next_pdu()) is not None:
        out.append(_as_bytes(item))
    return out


def _lent(
    reader: pdu.PDUReader, data: bytes, sizes: random.Random, take: int = 0
) -> tuple[list[object], int]:
    """Receive ``data`` read by read with buffer_lent; PDUs taken at once.

    ``take`` (0: all) stops after that many PDUs per read and keeps the rest,
    as UpperLayer does when its parse budget runs out. Also counts the PDV
    data that were views into the staging buffer.
    """
    out: list[object] = []
    in_place = 0
    while data or not reader.empty:
        buffer = reader.get_buffer()
        n = min(len(buffer), len(data), sizes.randint(1, 70_000))
        buffer[:n] = data[:n]
        data = data[n:]
        reader.buffer_lent(n)
        taken = 0
        while (item := reader.next_pdu()) is not None:
            if isinstance(item, pdu.PDataTF):
                in_place += sum(p.data.obj is reader.staging.view.obj for p in item.pdvs)  # type: ignore[union-attr]
            out.append(_as_bytes(item))
            taken += 1
            if take and taken >= take:
                reader.keep()
                break
        if not n and not taken:
            break
    return out, in_place


@pytest.mark.parametrize("seed", range(6))
def test_lent_reads_give_the_pdus_of_the_general_path(seed: int) -> None:
    data = _stream()
    got, in_place = _lent(pdu.PDUReader(), data, random.Random(seed))
    assert got == _general(data)
    # Most PDUs were decoded where they landed, not copied out first.
    assert in_place > len(got) // 3


def test_whole_reads_of_16_kib_pdus_copy_nothing() -> None:
    # storescu's C-STORE read at once: every PDV is a view of the staging
    # buffer (the two copies per PDU of the general path are gone).
    reader = pdu.PDUReader()
    reader._read_size = pdu.PDUReader.STAGING  # as after a first 16 KiB PDU
    one = _c_store()
    buffer = reader.get_buffer()
    buffer[: len(one)] = one
    reader.buffer_lent(len(one))
    pdus = []
    while (item := reader.next_pdu()) is not None:
        assert isinstance(item, pdu.PDataTF)
        assert all(p.data.obj is reader.staging.view.obj for p in item.pdvs)  # type: ignore[union-attr]
        pdus.append(_as_bytes(item))
    assert pdus == _general(one)
    assert len(pdus) == 4 and reader.empty


def test_a_budget_that_stops_early_keeps_the_rest_of_the_read() -> None:
    data = _stream()
    got, _ = _lent(pdu.PDUReader(), data, random.Random(7), take=1)
    assert got == _general(data)


def test_lent_readers_sharing_one_staging_buffer() -> None:
    # Reader A keeps what is left of its read before B's read lands in the
    # same buffer (UpperLayer calls keep(); get_buffer does it too).
    shared = pdu.Staging()
    readers = [pdu.PDUReader(), pdu.PDUReader()]
    for reader in readers:
        reader.staging = shared
    streams = [_stream(), _stream()]
    got: list[list[object]] = [[], []]
    sizes = random.Random(3)
    while any(streams):
        for i, reader in enumerate(readers):
            if not streams[i]:
                continue
            buffer = reader.get_buffer()
            n = min(len(buffer), len(streams[i]), sizes.randint(1, 40_000))
            buffer[:n] = streams[i][:n]
            streams[i] = streams[i][n:]
            reader.buffer_lent(n)
            if (item := reader.next_pdu()) is not None:  # one PDU, then the other reader
                got[i].append(_as_bytes(item))
            reader.keep()
    for i, reader in enumerate(readers):
        while (item := reader.next_pdu()) is not None:
            got[i].append(_as_bytes(item))
        assert got[i] == _general(_stream())


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b"\x09\x00\x00\x00\x00\x04abcd", RemoteProtocolError),  # unknown type
        (b"\x04\x00" + (1 << 30).to_bytes(4, "big"), PDUTooLarge),  # over our maximum
        (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x09\x01\x00ab", RemoteProtocolError),  # bad PDV
    ],
)
@pytest.mark.parametrize("cut", [0, 3, 8])
def test_lent_reads_refuse_what_the_general_path_refuses(
    bad: bytes, error: type[Exception], cut: int
) -> None:
    # After a whole PDU, and with the bad one's bytes split over two reads.
    good = _pdata((1, 3, b"C" * 20))
    data = good + bad
    general = pdu.PDUReader(max_pdata_length=1 << 20)
    general.feed(data)
    assert general.next_pdu() is not None
    with pytest.raises(error):
        general.next_pdu()
    reader = pdu.PDUReader(max_pdata_length=1 << 20)
    split = len(good) + min(cut, len(bad) - 1) if cut else len(data)
    buffer = reader.get_buffer()
    buffer[:split] = data[:split]
    reader.buffer_lent(split)
    with pytest.raises(error):  # the second read, if any, raises
        assert reader.next_pdu() is not None
        item = reader.next_pdu()
        if item is None:
            reader.keep()
            buffer = reader.get_buffer()
            buffer[: len(data) - split] = data[split:]
            reader.buffer_lent(len(data) - split)
            reader.next_pdu()


def _established(lend: bool, trace: bool = False) -> ul.UpperLayer:
    layer = ul.UpperLayer(requestor=False, max_pdu_length=1 << 20)
    layer._fsm._state = State.STA6  # associated (the negotiation is tested elsewhere)
    layer.lend_reads = lend
    if trace:
        layer.trace = []
    return layer


def _receive_all(layer: ul.UpperLayer, data: bytes, seed: int) -> list[object]:
    """Read by read into receive_into; every event taken in the same "callback"."""
    sizes = random.Random(seed)
    out: list[object] = []
    while data:
        buffer = layer.reader.get_buffer()
        n = min(len(buffer), len(data), sizes.randint(1, 70_000))
        buffer[:n] = data[:n]
        data = data[n:]
        layer.receive_into(n, 0.0)
        while (event := layer.next_event()) is not None:
            out.append(_as_bytes(event.pdu) if isinstance(event, ul.PDataReceived) else event)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_upper_layer_gives_the_same_events_lent_or_not(seed: int) -> None:
    data = _stream(release=False)  # Sta6 throughout
    general = _receive_all(_established(False), data, seed)
    assert len(general) == 21 and isinstance(general[-1], list)
    assert _receive_all(_established(True), data, seed) == general


def test_upper_layer_with_a_budget_and_lent_reads() -> None:
    data = _stream(release=False)
    layer = _established(True)
    layer.parse_budget = 2
    out: list[object] = []
    sizes = random.Random(5)
    while data or layer.input_pending:
        if layer.input_pending:
            layer.parse_pending(0.0)  # a later turn, after other reads landed
            layer.reader.staging.view[:] = bytes(len(layer.reader.staging.view))
        else:
            buffer = layer.reader.get_buffer()
            n = min(len(buffer), len(data), sizes.randint(1, 70_000))
            buffer[:n] = data[:n]
            data = data[n:]
            layer.receive_into(n, 0.0)
        while (event := layer.next_event()) is not None:
            out.append(_as_bytes(event.pdu) if isinstance(event, ul.PDataReceived) else event)
    assert out == _receive_all(_established(False), _stream(release=False), 0)


def test_traced_pdus_own_their_bytes() -> None:
    # A trace keeps PDUs for hooks: their data must survive later reads, so
    # a traced layer does not lend its reads.
    data = _stream(release=False)
    layer = _established(True, trace=True)
    _receive_all(layer, data, 1)
    assert layer.trace is not None
    kept = [_as_bytes(p) for p, sent in layer.trace if not sent]
    assert kept == _general(data)
