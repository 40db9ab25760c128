"""The receive path for reads parsed where they land (PDUReader.buffer_lent).

Each test compares the lent path with the general one (feed, or
buffer_updated: the read copied out first) on the same bytes, and checks
that the lent path really is taken (PDV data are views into the staging
buffer), so that a broken or silently disabled fast path fails here.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from adicom import pdu
from adicom import protocol as ul
from adicom.dimse import DimseEvent, Limits, RequestReceived, ResponseReceived
from adicom.dimse.commands import Command, CommandField, c_store_rq
from adicom.errors import PDUTooLarge, RemoteProtocolError
from adicom.fsm import State
from adicom.pdu.pdus import BarePDV
from tests.test_dimse_connection import (
    CT,
    FIND,
    Pair,
    Sink,
    collecting,
    echo_rq,
    limited,
    response_to,
)

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
    # Large enough to be gathered in a buffer of its own (PDUReader.LARGE).
    parts.append(_pdata((1, 2, _DATASET * 3)))
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
    assert len(general) == 24 and isinstance(general[-1], list)
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


# -- the DIMSE layer's fast path for a data set fragment ------------------------


def _store_rq(message_id: int, context_id: int = 3) -> pdu.PDataTF:
    command = c_store_rq(CT, f"1.2.3.{message_id}", message_id=message_id)
    return pdu.PDataTF((pdu.PDV(context_id, True, True, command.encode()),))


def _fragment(data: bytes, last: bool, context_id: int = 3) -> pdu.PDataTF:
    return pdu.PDataTF((pdu.PDV(context_id, False, last, memoryview(data)),))


def _c_store_pdus(message_id: int, size: int = 42_000, context_id: int = 3) -> list[pdu.PDataTF]:
    data = _DATASET[:size]
    pdus = [_store_rq(message_id, context_id)]
    for at in range(0, size, 16378):
        pdus.append(_fragment(data[at : at + 16378], at + 16378 >= size, context_id))
    return pdus


def _outcome(events: list[object]) -> list[object]:
    """Events comparable across two connections (a sink by what it holds)."""
    out: list[object] = []
    for event in events:
        message = getattr(event, "message", None)
        if message is None:
            out.append(event)
            continue
        sink = message.sink
        held = None if sink is None else (bytes(sink.data), sink.aborted)
        out.append((type(event).__name__, message.command, message.dataset, held, message.refused))
    return out


def _count_general(dimse: Any) -> list[int]:
    """Count the PDUs that take ``dimse``'s general receive path: one list item each."""
    calls: list[int] = []
    take_general: Callable[[pdu.PDataTF, float], list[DimseEvent]] = dimse._receive_general

    def counting(pdu_: pdu.PDataTF, now: float) -> list[DimseEvent]:
        calls.append(1)
        return take_general(pdu_, now)

    dimse._receive_general = counting
    return calls


def _bare(pdus: list[pdu.PDataTF]) -> list[pdu.PDataTF | BarePDV]:
    """``pdus``, those of one PDV as the reader hands them on bare (PDUReader.next_bare)."""
    return [
        (p.pdvs[0].context_id, p.pdvs[0].control, memoryview(bytes(p.pdvs[0].data)))
        if len(p.pdvs) == 1
        else p
        for p in pdus
    ]


def _run(
    pdus: list[pdu.PDataTF],
    general: bool,
    sink: bool = True,
    window: int = 1,
    bare: bool = False,
    **limits: object,
) -> tuple[list[object], list[float | None], bool, list[tuple[int, bool]], int]:
    pair = Pair(window=window)
    dimse = pair.acc.dimse
    if limits:
        limited(pair, **limits)
    sinks: list[Sink] = []
    if sink:
        dimse.sink_factory = collecting(sinks)
    general_calls = _count_general(dimse)
    events: list[object] = []
    deadlines = []
    for now, item in enumerate(_bare(pdus) if bare else pdus):
        if general:  # receive_pdata without its fast path
            assert isinstance(item, pdu.PDataTF)
            taken = [] if pair.acc.ul.abort_sent else dimse._receive_general(item, now)
        else:
            taken = dimse.receive_pdata(item, now)
        events += taken
        deadlines.append(dimse._deadline)
    aborted = pair.acc.ul.abort_sent
    sent = [(len(s.data), s.aborted) for s in sinks]
    return _outcome(events), deadlines, aborted, sent, len(general_calls)


_SCENARIOS = {
    "two stores": [*_c_store_pdus(1), *_c_store_pdus(2)],
    "odd sizes": [*_c_store_pdus(1, 16378), *_c_store_pdus(2, 1), *_c_store_pdus(3, 16379)],
    "fragment on another context": [*_c_store_pdus(1)[:2], _fragment(b"ab", False, 5)],
    "fragment on a context not accepted": [*_c_store_pdus(1)[:2], _fragment(b"ab", False, 7)],
    "command where data is due": [*_c_store_pdus(1)[:2], _store_rq(2)],
    "data after the last fragment": [*_c_store_pdus(1), _fragment(b"ab", False)],
    "data before any command": [_fragment(b"ab", True)],
    "beyond the window": [*_c_store_pdus(1), *_c_store_pdus(2)],  # nothing answered
    # A data set in one PDV (a C-FIND match), then one in several.
    "one fragment each": [*_c_store_pdus(1, 1000), *_c_store_pdus(2, 16378), *_c_store_pdus(3)],
    "an empty data set": [_store_rq(1), _fragment(b"", True)],
}


@pytest.mark.parametrize("sink", [True, False])
@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_data_fragment_fast_path_gives_what_the_general_path_gives(name: str, sink: bool) -> None:
    pdus = _SCENARIOS[name]
    limits: dict[str, Any] = {} if sink else {"max_dataset": 1 << 20}
    window = 1 if name == "beyond the window" else 4
    fast = _run(pdus, general=False, sink=sink, window=window, **limits)
    slow = _run(pdus, general=True, sink=sink, window=window, **limits)
    assert fast[:4] == slow[:4]
    # The PDUs of one PDV handed on bare, as the reader does: the same again.
    assert _run(pdus, general=False, sink=sink, window=window, bare=True, **limits) == fast
    # The fast path took every data set fragment in order (3 per 42 KB
    # message); the general path what else there was.
    in_order = sum(1 for p in pdus if not p.pdvs[0].is_command)
    assert fast[4] < slow[4] or in_order == 0 or name == "data before any command"


def test_data_fragment_fast_path_keeps_the_limits() -> None:
    pdus = _c_store_pdus(1)
    # In memory beyond max_dataset: aborted (reason 0), the same both ways.
    fast = _run(pdus, general=False, sink=False, max_dataset=20_000)
    assert fast[:4] == _run(pdus, general=True, sink=False, max_dataset=20_000)[:4]
    assert fast[2] and isinstance(fast[0][-1], ul.Aborted)
    # The same for a data set in one PDV, in memory.
    fast = _run(_c_store_pdus(1, 5000), general=False, sink=False, max_dataset=2000)
    assert fast[:4] == _run(_c_store_pdus(1, 5000), general=True, sink=False, max_dataset=2000)[:4]
    assert fast[2] and isinstance(fast[0][-1], ul.Aborted)
    assert "data set larger than the 2000 bytes" in fast[0][-1].detail
    # To a sink beyond max_instance: refused, not aborted.
    fast = _run(pdus, general=False, max_instance=20_000)
    assert fast[:4] == _run(pdus, general=True, max_instance=20_000)[:4]
    assert not fast[2] and fast[0][-1][-1] is not None  # type: ignore[index]
    # The two stores of "beyond the window" abort at the second's last fragment.
    fast = _run(_SCENARIOS["beyond the window"], general=False)
    assert fast[2] and isinstance(fast[0][-1], ul.Aborted)
    # A whole message, fast: the deadline ran from the command to the last
    # fragment, and the general path was not taken at all.
    fast = _run(_c_store_pdus(1), general=False)
    assert fast[1] == [300.0, 300.0, 300.0, None] and fast[4] == 0


# -- the DIMSE layer's fast path for a whole command set -------------------------


def _command(command: Command, context_id: int = 5, control: int = 3) -> pdu.PDataTF:
    return pdu.PDataTF(
        (pdu.PDV(context_id, bool(control & 1), bool(control & 2), command.encode()),)
    )


_FIND_RQ = Command(
    CommandField.C_FIND_RQ, message_id=7, affected_sop_class_uid=FIND, command_data_set_type=0
)
_PENDING = replace(response_to(_FIND_RQ, 0xFF00), number_of_remaining_suboperations=9)
_FINAL = response_to(_FIND_RQ, 0x0000)
_COMMAND_SCENARIOS: dict[str, list[pdu.PDataTF]] = {
    "pending responses, then the final one": [
        *[_command(replace(_PENDING, number_of_remaining_suboperations=n)) for n in range(3)],
        _command(_FINAL),
    ],
    "a pending response with a data set": [
        _command(response_to(_FIND_RQ, 0xFF00, has_dataset=True)),
        _fragment(b"ident", True, 5),
        _command(_FINAL),
    ],
    "responses to no outstanding request": [
        _command(replace(_PENDING, message_id_being_responded_to=8)),
        _command(replace(response_to(_FIND_RQ, 0xFF00, True), message_id_being_responded_to=8)),
        _fragment(b"ident", True, 5),
        _command(_FINAL),
    ],
    "requests of the peer, beyond the window": [_command(echo_rq(n), 1) for n in (1, 2)],
    "a C-STORE-RQ and its data set": [*_c_store_pdus(3, context_id=3), _command(_FINAL)],
    "a command on a context not accepted": [_command(_PENDING, 7)],
    "a command in two PDVs": [
        pdu.PDataTF(
            (
                pdu.PDV(5, True, False, _PENDING.encode()[:20]),
                pdu.PDV(5, True, True, _PENDING.encode()[20:]),
            )
        ),
        _command(_FINAL),
    ],
    "a command whose last fragment comes alone": [
        pdu.PDataTF((pdu.PDV(5, True, False, _PENDING.encode()[:20]),)),
        pdu.PDataTF((pdu.PDV(5, True, True, _PENDING.encode()[20:]),)),
    ],
    "a malformed command": [pdu.PDataTF((pdu.PDV(5, True, True, b"\x00\x00\x00"),))],
    "a command longer than accepted": [_command(_PENDING)],
    "a command where data is due": [
        _command(response_to(_FIND_RQ, 0xFF00, True)),
        _command(_FINAL),
    ],
}


def _receive_responses(
    pdus: list[pdu.PDataTF], general: bool, bare: bool = False, **limits: object
) -> tuple[list[object], list[float | None], bool, list[tuple[int, bool]], int]:
    # The requestor, with a C-FIND outstanding, takes ``pdus``: as the
    # acceptor does in _run, fast or general.
    pair = Pair(window=1)
    side = pair.req
    dimse = side.dimse
    if limits:
        dimse.limits = Limits(**limits)  # type: ignore[arg-type]
        dimse._assembler.max_command = dimse.limits.max_command
    assert dimse.send_whole(5, _FIND_RQ, b"\x08\x00\x52\x00\x00\x00\x00\x00", 0.0)
    sinks: list[Sink] = []
    dimse.sink_factory = collecting(sinks)
    general_calls = _count_general(dimse)
    events: list[object] = []
    deadlines = []
    for now, item in enumerate(_bare(pdus) if bare else pdus, 1):
        if general:
            assert isinstance(item, pdu.PDataTF)
            taken = [] if side.ul.abort_sent else dimse._receive_general(item, now)
        else:
            taken = dimse.receive_pdata(item, now)
        events += taken
        deadlines.append(dimse._deadline)
    return (
        _outcome(events),
        deadlines,
        side.ul.abort_sent,
        [(len(s.data), s.aborted) for s in sinks],
        len(general_calls),
    )


@pytest.mark.parametrize("name", list(_COMMAND_SCENARIOS))
def test_whole_command_fast_path_gives_what_the_general_path_gives(name: str) -> None:
    pdus = _COMMAND_SCENARIOS[name]
    limits: dict[str, Any] = (
        {"max_command": 100} if name == "a command longer than accepted" else {}
    )
    fast = _receive_responses(pdus, general=False, **limits)
    slow = _receive_responses(pdus, general=True, **limits)
    assert fast[:4] == slow[:4]
    assert _receive_responses(pdus, general=False, bare=True, **limits) == fast  # as the reader's
    # The fast paths took every PDU of one whole command PDV between
    # messages (or a data set fragment in order): the general path only
    # what else there was.
    assert fast[4] == _GENERAL.get(name, 0)
    assert slow[4] == len(pdus)


#: PDUs the general path takes (the others: none).
_GENERAL = {
    "a command on a context not accepted": 1,
    "a command in two PDVs": 1,  # two PDVs in one PDU
    "a command whose last fragment comes alone": 2,
    "a command where data is due": 1,
}


def test_whole_command_fast_path_outcomes() -> None:
    # What the scenarios above give, both ways: pending responses delivered
    # as not final, the last as final; the window and the context enforced.
    events, deadlines, aborted, _, calls = _receive_responses(
        _COMMAND_SCENARIOS["pending responses, then the final one"], general=False
    )
    assert [e[0] for e in events] == ["ResponseReceived"] * 4  # type: ignore[index]
    assert deadlines == [None] * 4 and not aborted and calls == 0
    assert [e.final for e in _receive_responses_events()] == [False, False, False, True]
    events, deadlines, aborted, sinks, _ = _receive_responses(
        _COMMAND_SCENARIOS["a C-STORE-RQ and its data set"], general=False
    )
    assert deadlines[0] == 301.0 and deadlines[-2:] == [None, None]
    assert sinks == [(42_000, False)] and not aborted
    for name in ("requests of the peer, beyond the window", "a command on a context not accepted"):
        events, _, aborted, _, _ = _receive_responses(_COMMAND_SCENARIOS[name], general=False)
        assert aborted and isinstance(events[-1], ul.Aborted)


def _receive_responses_events() -> list[ResponseReceived]:
    pair = Pair(window=1)
    dimse = pair.req.dimse
    assert dimse.send_whole(5, _FIND_RQ, b"\x08\x00\x52\x00\x00\x00\x00\x00", 0.0)
    out: list[ResponseReceived] = []
    for item in _COMMAND_SCENARIOS["pending responses, then the final one"]:
        for event in dimse.receive_pdata(item, 1.0):
            assert isinstance(event, ResponseReceived)
            out.append(event)
    return out


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x02\x01\x03",  # one PDV, no data
        b"\x00\x00\x00\x03\x01\x02z",  # one PDV, one byte
        b"\x00\x00\x00\x03\x01\x02z\x00\x00\x00\x02\x01\x00",  # two PDVs
        b"\x00\x00\x00\x04\x01\x02z",  # a PDV longer than its PDU
        b"\x00\x00\x00\x01\x01\x02",  # a PDV too short for its header
        b"\x00\x00\x00\x02\x01",  # a truncated PDV header
        b"",  # no PDV at all
    ],
)
def test_one_pdu_lent_or_fed_decodes_alike(body: bytes) -> None:
    data = b"\x04\x00" + len(body).to_bytes(4, "big") + body
    general = pdu.PDUReader()
    general.feed(data)
    try:
        expected: object = _as_bytes(general.next_pdu())  # type: ignore[arg-type]
    except RemoteProtocolError as exc:
        expected = (type(exc), str(exc))
    reader = pdu.PDUReader()
    buffer = reader.get_buffer()
    buffer[: len(data)] = data
    reader.buffer_lent(len(data))
    try:
        got: object = _as_bytes(reader.next_pdu())  # type: ignore[arg-type]
    except RemoteProtocolError as exc:
        got = (type(exc), str(exc))
    assert got == expected


def _dcmtk_reads(reader: pdu.PDUReader, parts: list[bytes]) -> list[pdu.PDU]:
    """Each of ``parts`` in reads of its own, as far as get_buffer allows; PDUs taken at once."""
    out: list[pdu.PDU] = []
    for part in parts:
        while part:
            buffer = reader.get_buffer()
            n = min(len(buffer), len(part))
            buffer[:n] = part[:n]
            part = part[n:]
            reader.buffer_lent(n)
            while (item := reader.next_pdu()) is not None:
                out.append(item)
    return out


def test_the_rest_of_a_pdu_whose_headers_came_alone_is_one_read_parsed_where_it_lands() -> None:
    # DCMTK writes a PDU's two headers (12 bytes) apart from its PDV's data,
    # so a read often holds just them: the next read takes the rest of a
    # 41,920-byte fragment at once (not 16 KiB, sized for the small command
    # before it), with the headers put back in front of it, so the PDU is
    # decoded in the staging buffer, not copied into the reader's own.
    command = _pdata((1, 3, b"C" * 158))
    fragment = _pdata((1, 2, _DATASET[:41_920]))
    reader = pdu.PDUReader()
    (first,) = _dcmtk_reads(reader, [command, fragment[:12]])
    assert _as_bytes(first) == _general(command)[0] and len(reader._buf) == 12
    buffer = reader.get_buffer()
    assert len(buffer) >= len(fragment) - 12
    buffer[: len(fragment) - 12] = fragment[12:]
    reader.buffer_lent(len(fragment) - 12)
    item = reader.next_pdu()
    assert isinstance(item, pdu.PDataTF) and reader.empty
    assert item.pdvs[0].data.obj is reader.staging.view.obj  # type: ignore[union-attr]
    assert _as_bytes(item) == _general(fragment)[0]


def test_headers_carried_into_the_next_read_survive_a_read_that_failed() -> None:
    # get_buffer puts the kept headers in front of the read it hands out; a
    # read that then fails (no buffer_updated) loses nothing, and another
    # reader's read in between (one staging buffer per loop) neither.
    fragment = _pdata((1, 2, _DATASET[:5_000]))
    shared = pdu.Staging()
    reader, other = pdu.PDUReader(), pdu.PDUReader()
    reader.staging = other.staging = shared
    assert _dcmtk_reads(reader, [fragment[:12]]) == []
    reader.get_buffer()  # the read fails: nothing lands
    other_pdu = _pdata((3, 3, b"x" * 4_000))
    assert [_as_bytes(p) for p in _dcmtk_reads(other, [other_pdu])] == _general(other_pdu)
    got = _dcmtk_reads(reader, [fragment[12:]])
    assert [_as_bytes(p) for p in got] == _general(fragment)


def test_a_pdata_header_over_our_maximum_is_refused_as_soon_as_it_is_read() -> None:
    reader = pdu.PDUReader(max_pdata_length=16_384)
    buffer = reader.get_buffer()
    header = b"\x04\x00" + (40_000).to_bytes(4, "big") + b"\x00\x00\x9c\x3c\x01\x02"
    buffer[:12] = header
    reader.buffer_lent(12)
    with pytest.raises(PDUTooLarge):
        reader.next_pdu()


def test_a_large_pdu_begun_in_a_lent_read_goes_to_its_own_buffer_at_once() -> None:
    large = _pdata((1, 2, _DATASET * 3))
    reader = pdu.PDUReader()
    reader._read_size = pdu.PDUReader.STAGING
    buffer = reader.get_buffer()
    buffer[:50_000] = large[:50_000]
    reader.buffer_lent(50_000)
    assert reader.next_pdu() is None
    assert not reader._buf and reader._body is not None  # not copied into ours first
    rest = large[50_000:]
    while rest:
        buffer = reader.get_buffer()
        n = min(len(buffer), len(rest))
        buffer[:n] = rest[:n]
        rest = rest[n:]
        reader.buffer_lent(n)
    assert _as_bytes(reader.next_pdu()) == _general(large)[0]  # type: ignore[arg-type]
    assert reader.empty


class _Keeper:
    """A sink that breaks the contract: it keeps what write() gives it."""

    def __init__(self, export: bool = False) -> None:
        self.kept: list[memoryview] = []
        self.exports: list[object] = []
        self.export = export
        self.aborted = False

    def write(self, data: memoryview, /) -> None:
        self.kept.append(data)
        if self.export:
            # An iterator over the view holds a buffer export of it.
            self.exports.append(struct.iter_unpack("B", data))

    def abort(self) -> None:
        self.aborted = True


def _store_into(sink: object) -> DimseEvent:
    pair = Pair(chunk=None, max_pdu=1024)
    pair.acc.dimse.sink_factory = lambda context_id, command: sink  # type: ignore[assignment,return-value]
    request = c_store_rq(CT, "1.2.3.4", message_id=pair.req.dimse.next_message_id())
    pair.req.send(3, request, bytes(range(256)) * 20)
    pair.pump()
    (event,) = pair.acc.drain()
    return event


def test_a_sink_that_keeps_the_fragment_fails_loudly_not_with_later_bytes() -> None:
    sink = _Keeper()
    event = _store_into(sink)
    assert isinstance(event, RequestReceived)
    assert event.message.refused is None and len(sink.kept) >= 5
    # Each fragment's view was released when write() returned: using it
    # later raises, where it would have read whatever the buffer held next.
    with pytest.raises(ValueError, match="released memoryview"):
        bytes(sink.kept[0])


def test_a_sink_that_holds_an_export_of_the_fragment_gets_the_instance_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = _Keeper(export=True)
    with caplog.at_level(logging.ERROR, logger="adicom.dimse"):
        event = _store_into(sink)
    assert isinstance(event, RequestReceived)
    # Refused (nothing filed from bytes the next read overwrites), the sink aborted.
    assert event.message.refused is not None and "must copy" in event.message.refused
    assert event.message.sink is None and sink.aborted
    assert len(sink.kept) == 1  # no more fragments went to it
    assert "_Keeper kept a buffer of a received data set fragment" in caplog.text


def test_a_sink_that_copies_gets_every_byte() -> None:
    sink = Sink()
    event = _store_into(sink)
    assert isinstance(event, RequestReceived) and event.message.refused is None
    assert bytes(sink.data) == bytes(range(256)) * 20 and not sink.aborted


# -- the C-STORE-RSP sent from the transport callback ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("hooked", [False, True])
async def test_a_store_answered_at_once_makes_its_response_command_only_for_hooks(
    hooked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Association.respond_now sends a template's bytes (DimseConnection.
    # send_response): no Command is made for the C-STORE-RSP unless a hook
    # listens for the messages sent, which then sees the right one.
    import asyncio

    from pydicom.data import get_testdata_file

    import adicom
    from adicom import events
    from adicom.dimse import ResponseTemplate

    made: list[Command] = []
    command_of = ResponseTemplate.command

    def counted(self: ResponseTemplate, message_id: int, uid: str | None) -> Command:
        made.append(command_of(self, message_id, uid))
        return made[-1]

    def refused(*args: object) -> object:
        raise AssertionError("respond_now made the response with make()")

    monkeypatch.setattr(ResponseTemplate, "command", counted)
    monkeypatch.setattr(ResponseTemplate, "make", refused)
    hooks = events.Hooks()
    sent: list[events.MessageSent] = []
    if hooked:
        hooks.subscribe(events.MessageSent, sent.append)
    storage = adicom.MemoryStorage()
    contexts = [(CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])]
    async with adicom.Server(port=0, ae_title="ANY-SCP", storage=storage, hooks=hooks) as scp:
        async with adicom.connect("127.0.0.1", scp.port, contexts=contexts) as assoc:
            result = await adicom.store_instance(assoc, str(get_testdata_file("CT_small.dcm")))
        async with asyncio.timeout(10):
            await scp.wait_idle()
    assert result.status == 0 and len(storage.datasets) == 1
    if hooked:
        (response,) = [e.command for e in sent if e.command.command_field & 0x8000]
        assert made == [response] and response.status == 0
        assert response.command_field == CommandField.C_STORE_RSP
    else:
        assert made == []
