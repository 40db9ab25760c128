"""Tests for adicom.pdu: the seven PDUs of PS3.8 9.3, their items, and PDUReader.

Round trips go through PDUReader fed whole, a byte at a time, in random
chunks and with the start of a second PDU behind the first (h11's way). The
fuzz invariant is h11's afl harness: any bytes either decode to PDUs or raise
RemoteProtocolError, never anything else, never a hang, never a huge
allocation. The byte vectors are written by hand from the PS3.8 tables.
"""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adicom import pdu
from adicom.errors import PDUTooLarge, RemoteProtocolError
from tests import strategies as s

ROUND_TRIP = settings(max_examples=200, deadline=None)
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drain(reader: pdu.PDUReader) -> list[pdu.PDU]:
    """Every whole PDU the reader has; bounded because each one consumes bytes."""
    out: list[pdu.PDU] = []
    for _ in range(reader.buffered // 6 + 1):
        got = reader.next_pdu()
        if got is None:
            return out
        out.append(got)
    raise AssertionError("next_pdu returned more PDUs than the bytes can hold")


def decode_one(data: bytes) -> pdu.PDU:
    reader = pdu.PDUReader()
    reader.feed(data)
    got = reader.next_pdu()
    assert got is not None
    assert reader.buffered == 0
    assert reader.next_pdu() is None
    return got


def decode_outcome(data: bytes, reader: pdu.PDUReader) -> tuple[list[pdu.PDU], int | None]:
    """Feed whole; the PDUs decoded and the abort reason of the error, if any."""
    reader.feed(data)
    got: list[pdu.PDU] = []
    try:
        for _ in range(len(data) // 6 + 1):
            one = reader.next_pdu()
            if one is None:
                return got, None
            got.append(one)
    except RemoteProtocolError as exc:
        return got, exc.abort_reason
    raise AssertionError("feeding did not stop")


def header(pdu_type: int, length: int) -> bytes:
    return bytes([pdu_type, 0]) + length.to_bytes(4, "big")


def item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + len(value).to_bytes(2, "big") + value


# ---------------------------------------------------------------------------
# Round trips


@ROUND_TRIP
@given(s.any_pdu)
def test_round_trip_whole(x: pdu.PDU) -> None:
    assert decode_one(x.encode()) == x


@ROUND_TRIP
@given(s.any_pdu)
def test_round_trip_one_byte_at_a_time(x: pdu.PDU) -> None:
    data = x.encode()
    reader = pdu.PDUReader()
    for i, byte in enumerate(data):
        assert reader.next_pdu() is None
        reader.feed(bytes([byte]))
        assert reader.buffered == i + 1
    assert reader.next_pdu() == x
    assert reader.buffered == 0


@ROUND_TRIP
@given(s.any_pdu, st.lists(st.integers(1, 300), min_size=1, max_size=20))
def test_round_trip_random_chunks(x: pdu.PDU, sizes: list[int]) -> None:
    data = x.encode()
    reader = pdu.PDUReader()
    got: list[pdu.PDU] = []
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        reader.feed(data[pos : pos + step])
        pos += step
        i += 1
        got.extend(drain(reader))
    assert got == [x]
    assert reader.buffered == 0


@ROUND_TRIP
@given(s.any_pdu, s.any_pdu, st.data())
def test_round_trip_with_trailing_pdu(x: pdu.PDU, y: pdu.PDU, data: st.DataObject) -> None:
    second = y.encode()
    cut = data.draw(st.integers(1, len(second) - 1), label="cut")
    reader = pdu.PDUReader()
    reader.feed(x.encode() + second[:cut])
    assert reader.next_pdu() == x
    assert reader.buffered == cut
    assert reader.next_pdu() is None
    reader.feed(second[cut:])
    assert reader.next_pdu() == y
    assert reader.buffered == 0


@ROUND_TRIP
@given(st.lists(s.any_pdu, min_size=2, max_size=5))
def test_several_pdus_in_one_feed(xs: list[pdu.PDU]) -> None:
    reader = pdu.PDUReader()
    reader.feed(b"".join(x.encode() for x in xs))
    assert drain(reader) == xs
    assert reader.buffered == 0


@ROUND_TRIP
@given(s.presentation_contexts_rq)
def test_presentation_context_rq_item_round_trip(pc: pdu.PresentationContextRQ) -> None:
    raw = pc.encode()
    assert raw[0] == 0x20
    assert int.from_bytes(raw[2:4], "big") == len(raw) - 4
    assert pdu.PresentationContextRQ.decode(memoryview(raw)[4:]) == pc


@ROUND_TRIP
@given(s.presentation_contexts_ac)
def test_presentation_context_ac_item_round_trip(pc: pdu.PresentationContextAC) -> None:
    raw = pc.encode()
    assert raw[0] == 0x21
    assert int.from_bytes(raw[2:4], "big") == len(raw) - 4
    assert pdu.PresentationContextAC.decode(memoryview(raw)[4:]) == pc


@ROUND_TRIP
@given(s.user_information)
def test_user_information_item_round_trip(user: pdu.UserInformation) -> None:
    raw = user.encode()
    assert raw[0] == 0x50
    assert int.from_bytes(raw[2:4], "big") == len(raw) - 4
    assert pdu.UserInformation.decode(memoryview(raw)[4:]) == user


USER = pdu.UserInformation(16384, "1.2.3")

# One strategy per optional sub-item: the bare user information with just that
# sub-item added (a one-element tuple where the item may repeat).
SUB_ITEMS: dict[str, st.SearchStrategy[pdu.UserInformation]] = {
    "async": s.async_operations_windows.map(
        lambda v: dataclasses.replace(USER, async_operations_window=v)
    ),
    "role": s.role_selections.map(lambda v: dataclasses.replace(USER, role_selections=(v,))),
    "ext": s.sop_class_extended.map(lambda v: dataclasses.replace(USER, sop_class_extended=(v,))),
    "common": s.common_extended.map(
        lambda v: dataclasses.replace(USER, sop_class_common_extended=(v,))
    ),
    "identity_rq": s.user_identities_rq.map(
        lambda v: dataclasses.replace(USER, user_identity_rq=v)
    ),
    "identity_ac": s.user_identities_ac.map(
        lambda v: dataclasses.replace(USER, user_identity_ac=v)
    ),
    "unknown": s.unknown_sub_items.map(lambda v: dataclasses.replace(USER, unknown=(v,))),
    "version": s.version_names.map(
        lambda v: dataclasses.replace(USER, implementation_version_name=v)
    ),
}


@pytest.mark.parametrize("name", sorted(SUB_ITEMS))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_each_sub_item_round_trip(name: str, data: st.DataObject) -> None:
    user = data.draw(SUB_ITEMS[name])
    assert pdu.UserInformation.decode(memoryview(user.encode())[4:]) == user


# ---------------------------------------------------------------------------
# The fuzz invariant


def check_invariant(data: bytes, max_pdata_length: int) -> None:
    """Decode or RemoteProtocolError, the same whether fed whole or byte by byte."""
    whole = decode_outcome(data, pdu.PDUReader(max_pdata_length=max_pdata_length))
    reader = pdu.PDUReader(max_pdata_length=max_pdata_length)
    got: list[pdu.PDU] = []
    reason: int | None = None
    try:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
            got.extend(drain(reader))
    except RemoteProtocolError as exc:
        reason = exc.abort_reason
    assert (got, reason) == whole
    for one in got:
        assert isinstance(one, pdu.PDU)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([0, 16384]))
def test_fuzz_any_bytes(data: bytes, limit: int) -> None:
    check_invariant(data, limit)


@FUZZ
@given(st.binary(max_size=300), st.integers(1, 7))
def test_fuzz_any_bytes_behind_a_valid_header(data: bytes, pdu_type: int) -> None:
    # Random bodies under a valid header with the right length reach the decoders.
    check_invariant(header(pdu_type, len(data)) + data, 16384)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid PDU's bytes, then flips, truncations and altered length fields."""
    buf = bytearray(draw(s.any_pdu).encode())
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        kind = draw(st.sampled_from(["flip", "truncate", "pdu_length", "u16", "insert", "delete"]))
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1), label="pos")
        if kind == "flip":
            buf[pos] ^= draw(st.integers(1, 255), label="mask")
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "pdu_length" and len(buf) >= 6:
            near = st.integers(max(0, len(buf) - 16), len(buf) + 4)
            length = draw(st.one_of(near, s.u32), label="length")
            buf[2:6] = length.to_bytes(4, "big")
        elif kind == "u16" and pos + 2 <= len(buf):
            # Most fields at even offsets past the header are item lengths.
            buf[pos : pos + 2] = draw(s.u16, label="value").to_bytes(2, "big")
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8), label="inserted")
        elif kind == "delete":
            del buf[pos : pos + draw(st.integers(1, 8), label="deleted")]
    return bytes(buf)


@FUZZ
@given(mutated_encodings(), st.sampled_from([0, 16384]))
def test_fuzz_mutated_encodings(data: bytes, limit: int) -> None:
    check_invariant(data, limit)


@st.composite
def item_length_altered(draw: st.DrawFn) -> bytes:
    """An A-ASSOCIATE PDU with one item or sub-item length set to another value."""
    x = draw(s.a_associate_rq | s.a_associate_ac)
    data = bytearray(x.encode())
    heads = item_headers(bytes(data))
    offset = draw(st.sampled_from(heads), label="item")
    old = int.from_bytes(data[offset + 2 : offset + 4], "big")
    new = draw(st.integers(0, old + 16) | s.u16, label="length")
    data[offset + 2 : offset + 4] = new.to_bytes(2, "big")
    return bytes(data)


@FUZZ
@given(item_length_altered())
def test_fuzz_altered_item_lengths(data: bytes) -> None:
    check_invariant(data, 16384)


def check_decoded_encode_again(data: bytes) -> None:
    """What decodes can be sent again, and sending it again changes nothing."""
    reader = pdu.PDUReader(max_pdata_length=16384)
    reader.feed(data)
    try:
        got = drain(reader)
    except RemoteProtocolError:
        return
    for one in got:
        assert decode_one(one.encode()) == one


@st.composite
def associate_byte_replaced(draw: st.DrawFn) -> bytes:
    """An A-ASSOCIATE PDU with one byte of its AE titles, or anywhere, replaced."""
    raw = bytearray(draw(s.a_associate_rq | s.a_associate_ac).encode())
    anywhere = st.integers(0, len(raw) - 1)
    pos = draw(st.integers(6 + 4, 6 + 35) | anywhere, label="pos")
    raw[pos] = draw(s.u8, label="byte")
    return bytes(raw)


@settings(FUZZ, report_multiple_bugs=False)
@given(
    st.one_of(
        mutated_encodings(),
        associate_byte_replaced(),
        st.integers(1, 7).flatmap(
            lambda t: st.binary(max_size=300).map(lambda b: header(t, len(b)) + b)
        ),
    )
)
def test_fuzz_decoded_pdus_encode_again(data: bytes) -> None:
    # A server echoes the request's AE titles in its A-ASSOCIATE-AC, so a
    # decoded value that cannot be encoded is a crash waiting for a peer.
    check_decoded_encode_again(data)


@pytest.mark.parametrize("where", ["called", "calling", "version"])
def test_non_ascii_text_fields_decode_to_something_encodable(where: str) -> None:
    # PS3.5 6.2: AE titles are the default repertoire. A peer may still send
    # other bytes; they must either be refused as a protocol error or come
    # out as a value that encodes again.
    raw = bytearray(HAND_RQ)
    if where == "called":
        raw[6 + 4] = 0xE9
    elif where == "calling":
        raw[6 + 20] = 0xE9
    else:
        raw[-1] = 0xE9  # last byte of the implementation version name
    check_decoded_encode_again(bytes(raw))


def test_four_gib_pdata_is_refused_at_the_header() -> None:
    reader = pdu.PDUReader(max_pdata_length=16384)
    claim = b"\x04\x00\xff\xff\xff\xff"
    reader.feed(claim[:5])
    assert reader.next_pdu() is None
    reader.feed(claim[5:])
    tracemalloc.start()
    try:
        with pytest.raises(PDUTooLarge) as info:
            reader.next_pdu()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.length == 0xFFFF_FFFF
    assert info.value.limit == 16384
    assert info.value.abort_reason == 6
    assert peak < 1 << 20


def test_four_gib_pdata_without_limit_just_waits() -> None:
    reader = pdu.PDUReader(max_pdata_length=0)
    reader.feed(b"\x04\x00\xff\xff\xff\xff")
    tracemalloc.start()
    try:
        for _ in range(10):
            assert reader.next_pdu() is None
            reader.feed(bytes(100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.buffered == 6 + 1000
    assert peak < 1 << 20


@pytest.mark.parametrize("pdu_type", [1, 2, 3, 5, 6, 7])
def test_four_gib_control_pdu_is_refused_even_without_pdata_limit(pdu_type: int) -> None:
    reader = pdu.PDUReader(max_pdata_length=0)
    reader.feed(header(pdu_type, 0xFFFF_FFFF))
    with pytest.raises(PDUTooLarge) as info:
        reader.next_pdu()
    assert info.value.limit == pdu.MAX_CONTROL_PDU


def test_pdata_at_the_limit_is_accepted() -> None:
    body = struct.pack(">LBB", 16384 - 4, 1, 3) + bytes(16384 - 6)
    reader = pdu.PDUReader(max_pdata_length=16384)
    reader.feed(header(4, len(body)) + body)
    got = reader.next_pdu()
    assert isinstance(got, pdu.PDataTF)
    reader = pdu.PDUReader(max_pdata_length=16383)
    reader.feed(header(4, len(body)))
    with pytest.raises(PDUTooLarge):
        reader.next_pdu()


# ---------------------------------------------------------------------------
# Specific bad inputs

APP_CONTEXT = item(0x10, b"1.2.840.10008.3.1.1.1")
USER_INFO = item(0x50, item(0x51, b"\x00\x00\x40\x00") + item(0x52, b"1.2.3.4"))
FIXED_RQ = b"\x00\x01\x00\x00" + b"CALLED".ljust(16) + b"CALLING".ljust(16) + bytes(32)


def associate_rq(items: bytes, pdu_type: int = 1) -> bytes:
    body = FIXED_RQ + items
    return header(pdu_type, len(body)) + body


def pc_rq(abstract: bytes = b"1.2.840.10008.1.1", context_id: int = 1) -> bytes:
    value = bytes([context_id, 0, 0, 0]) + item(0x30, abstract) + item(0x40, b"1.2.840.10008.1.2")
    return item(0x20, value)


def raises_reason(data: bytes, reason: int) -> RemoteProtocolError:
    reader = pdu.PDUReader()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(reader)
    assert info.value.abort_reason == reason
    return info.value


def test_valid_hand_built_rq_decodes() -> None:
    # The baseline the bad inputs below are variations of.
    x = decode_one(associate_rq(APP_CONTEXT + pc_rq() + USER_INFO))
    assert isinstance(x, pdu.AAssociateRQ)
    assert x.presentation_contexts[0].abstract_syntax == "1.2.840.10008.1.1"


def test_http_request_is_not_a_pdu() -> None:
    raises_reason(b"GET / HTTP/1.1\r\n", 1)


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0x47, 0xFF])
def test_unknown_pdu_type_raises_after_the_first_byte(pdu_type: int) -> None:
    reader = pdu.PDUReader()
    reader.feed(bytes([pdu_type]))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.abort_reason == 1
    assert not isinstance(info.value, PDUTooLarge)


@pytest.mark.parametrize("pdu_type", [1, 2])
def test_associate_length_too_short_for_fixed_fields(pdu_type: int) -> None:
    raises_reason(header(pdu_type, 10) + bytes(10), 6)


@pytest.mark.parametrize(
    ("pdu_type", "length"), [(3, 0), (3, 3), (7, 0), (7, 2)], ids=["rj0", "rj3", "ab0", "ab2"]
)
def test_short_rj_and_abort(pdu_type: int, length: int) -> None:
    raises_reason(header(pdu_type, length) + bytes(length), 6)


def test_item_running_past_its_pdu() -> None:
    raw = bytearray(associate_rq(APP_CONTEXT + pc_rq() + USER_INFO))
    # The user information item is last; make it claim 10 bytes more than remain.
    ui_at = len(raw) - len(USER_INFO)
    raw[ui_at + 2 : ui_at + 4] = (len(USER_INFO) - 4 + 10).to_bytes(2, "big")
    raises_reason(bytes(raw), 6)


def test_sub_item_running_past_its_item() -> None:
    inner = item(0x51, b"\x00\x00\x40\x00") + b"\x52\x00\x00\x20" + b"1.2.3"
    raises_reason(associate_rq(APP_CONTEXT + pc_rq() + item(0x50, inner)), 6)


def test_item_header_cut_short() -> None:
    raises_reason(associate_rq(APP_CONTEXT + pc_rq() + USER_INFO + b"\x50\x00"), 6)


def test_pdata_with_no_pdv() -> None:
    raises_reason(header(4, 0), 6)


@pytest.mark.parametrize("pdv_length", [0, 1])
def test_pdv_length_below_two(pdv_length: int) -> None:
    body = struct.pack(">LBB", pdv_length, 1, 3)
    raises_reason(header(4, len(body)) + body, 6)


def test_pdv_length_past_its_pdu() -> None:
    body = struct.pack(">LBB", 10, 1, 3) + b"abcd"
    raises_reason(header(4, len(body)) + body, 6)


def test_pdv_header_cut_short() -> None:
    body = struct.pack(">LBB", 3, 1, 3) + b"a" + b"\x00\x00\x00"
    raises_reason(header(4, len(body)) + body, 6)


@pytest.mark.parametrize("pdu_type", [1, 2])
def test_associate_without_user_information(pdu_type: int) -> None:
    pc = pc_rq() if pdu_type == 1 else item(0x21, b"\x01\x00\x00\x00")
    raises_reason(associate_rq(APP_CONTEXT + pc, pdu_type), 6)


@pytest.mark.parametrize("pdu_type", [1, 2])
def test_associate_without_application_context(pdu_type: int) -> None:
    raises_reason(associate_rq(USER_INFO, pdu_type), 6)


def test_presentation_context_without_abstract_syntax() -> None:
    pc = item(0x20, b"\x01\x00\x00\x00" + item(0x40, b"1.2.840.10008.1.2"))
    raises_reason(associate_rq(APP_CONTEXT + pc + USER_INFO), 6)


def test_presentation_context_shorter_than_four_bytes() -> None:
    raises_reason(associate_rq(APP_CONTEXT + item(0x20, b"\x01\x00") + USER_INFO), 6)


def test_ac_context_item_in_rq() -> None:
    pc = item(0x21, b"\x01\x00\x00\x00" + item(0x40, b"1.2.840.10008.1.2"))
    raises_reason(associate_rq(APP_CONTEXT + pc + USER_INFO), 5)


@pytest.mark.parametrize("where", ["abstract", "transfer", "context", "implementation", "role"])
def test_uid_with_non_ascii_bytes(where: str) -> None:
    bad = b"1.2.\xff.3"
    app, pc, ui_tail = APP_CONTEXT, pc_rq(), b""
    if where == "abstract":
        pc = pc_rq(abstract=bad)
    elif where == "transfer":
        pc = item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2") + item(0x40, bad))
    elif where == "context":
        app = item(0x10, bad)
    elif where == "role":
        ui_tail = item(0x54, len(bad).to_bytes(2, "big") + bad + b"\x01\x00")
    ui_value = item(0x51, b"\x00\x00\x40\x00")
    ui_value += item(0x52, bad if where == "implementation" else b"1.2.3")
    raises_reason(associate_rq(app + pc + item(0x50, ui_value + ui_tail)), 6)


@pytest.mark.parametrize(
    ("sub_type", "value"),
    [
        (0x51, b"\x00\x00\x40"),  # maximum length is exactly 4 bytes
        (0x51, b"\x00\x00\x40\x00\x00"),
        (0x53, b"\x00\x01\x00"),  # async window cut short
        (0x54, b"\x00\x05" + b"1.2"),  # role selection UID runs past its item
        (0x54, b"\x00\x03" + b"1.2" + b"\x01"),  # no SCP role byte
        (0x56, b"\x00\x09" + b"1.2"),
        (0x57, b"\x00\x03" + b"1.2"),  # no service class UID
        (0x57, b"\x00\x01" + b"1" + b"\x00\x01" + b"2" + b"\x00\x04" + b"\x00\x05ab"),
        (0x58, b"\x01"),
        (0x58, b"\x01\x00\x00\x04ab"),
        (0x58, b"\x02\x00\x00\x02ab"),  # no secondary field length
        (0x59, b"\x00"),
        (0x59, b"\x00\x03ab"),
    ],
)
def test_truncated_user_information_sub_items(sub_type: int, value: bytes) -> None:
    ui = item(0x50, item(0x51, b"\x00\x00\x40\x00") + item(0x52, b"1.2") + item(sub_type, value))
    raises_reason(associate_rq(APP_CONTEXT + pc_rq() + ui), 6)


# ---------------------------------------------------------------------------
# Reserved fields are sent as zeros and not tested on receipt (PS3.8 9.3)


def item_headers(data: bytes) -> list[int]:
    """Offsets of every item and sub-item header in an A-ASSOCIATE PDU."""
    out: list[int] = []

    def walk(start: int, end: int, nested: bool) -> None:
        pos = start
        while pos < end:
            out.append(pos)
            item_type = data[pos]
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            value = pos + 4
            if nested and item_type in (0x20, 0x21):
                walk(value + 4, value + length, False)
            elif nested and item_type == 0x50:
                walk(value, value + length, False)
            pos = value + length

    walk(6 + 68, len(data), True)
    return out


def context_item_bodies(data: bytes) -> list[int]:
    return [at + 4 for at in item_headers(data) if data[at] in (0x20, 0x21)]


@st.composite
def dirty_reserved(draw: st.DrawFn) -> tuple[pdu.PDU, bytes]:
    x = draw(s.a_associate_rq | s.a_associate_ac)
    raw = bytearray(x.encode())
    junk = st.integers(1, 255)
    raw[1] = draw(junk)
    body = 6
    raw[body + 2 : body + 4] = draw(st.binary(min_size=2, max_size=2))
    raw[body + 36 : body + 68] = draw(st.binary(min_size=32, max_size=32))
    frozen = bytes(raw)
    for at in item_headers(frozen):
        raw[at + 1] = draw(junk)
    for at in context_item_bodies(frozen):
        raw[at + 1] = draw(junk)
        raw[at + 3] = draw(junk)
        if frozen[at - 4] == 0x20:
            raw[at + 2] = draw(junk)  # reserved in the RQ item; the result in the AC item
    return x, bytes(raw)


@ROUND_TRIP
@given(dirty_reserved())
def test_associate_reserved_fields_not_tested(case: tuple[pdu.PDU, bytes]) -> None:
    x, raw = case
    assert decode_one(raw) == x


def test_hand_built_rq_reserved_fields_not_tested() -> None:
    clean = associate_rq(APP_CONTEXT + pc_rq() + USER_INFO)
    dirty = bytearray(clean)
    dirty[1] = 0xAA
    dirty[6 + 2 : 6 + 4] = b"\xff\xff"  # body bytes 3-4
    dirty[6 + 36 : 6 + 68] = b"\x5a" * 32  # body bytes 37-68
    for at in item_headers(clean):
        dirty[at + 1] = 0x77
    pc_body = context_item_bodies(clean)[0]
    dirty[pc_body + 1 : pc_body + 4] = b"\x11\x22\x33"
    assert decode_one(bytes(dirty)) == decode_one(clean)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (bytes.fromhex("05 ff 00000004 deadbeef"), pdu.AReleaseRQ()),
        (bytes.fromhex("06 01 00000004 01020304"), pdu.AReleaseRP()),
        (bytes.fromhex("07 01 00000004 ffff 0206"), pdu.AAbort(2, 6)),
        (bytes.fromhex("03 01 00000004 ff 020301"), pdu.AAssociateRJ(2, 3, 1)),
        (bytes.fromhex("04 ff 0000000a 00000006 0102 cafe f00d"), None),
    ],
    ids=["release-rq", "release-rp", "abort", "rj", "pdata"],
)
def test_small_pdus_reserved_fields_not_tested(raw: bytes, expected: pdu.PDU | None) -> None:
    got = decode_one(raw)
    if expected is None:
        expected = pdu.PDataTF((pdu.PDV(1, False, True, b"\xca\xfe\xf0\x0d"),))
    assert got == expected


def test_unknown_items_in_associate_are_ignored() -> None:
    plain = associate_rq(APP_CONTEXT + pc_rq() + USER_INFO)
    extra = associate_rq(item(0x7E, b"xyz") + APP_CONTEXT + pc_rq() + item(0x60, b"") + USER_INFO)
    assert decode_one(extra) == decode_one(plain)


# ---------------------------------------------------------------------------
# Byte vectors written from PS3.8 9.3 by hand

ECHO = b"1.2.840.10008.1.1"  # 17 bytes
IVRLE = b"1.2.840.10008.1.2"  # 17 bytes

HAND_RQ = bytes.fromhex(
    "01 00 000000b0"  # A-ASSOCIATE-RQ, 176 bytes
    "0001 0000"  # protocol version 1, reserved
    "414e592d53435020202020202020 2020"  # called "ANY-SCP" padded to 16
    "4543484f53435520202020202020 2020"  # calling "ECHOSCU" padded to 16
    + "00" * 32
    + "10 00 0015"  # application context, 21 bytes
    + b"1.2.840.10008.3.1.1.1".hex()
    + "20 00 002e 01 00 00 00"  # presentation context 1, 46 bytes
    + "30 00 0011"
    + ECHO.hex()
    + "40 00 0011"
    + IVRLE.hex()
    + "50 00 001d"  # user information, 29 bytes
    + "51 00 0004 00004000"  # maximum length 16384
    + "52 00 0007"
    + b"1.2.3.4".hex()
    + "55 00 0006"
    + b"ADICOM".hex()
)

HAND_RQ_VALUE = pdu.AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    user_information=pdu.UserInformation(16384, "1.2.3.4", "ADICOM"),
    presentation_contexts=(pdu.PresentationContextRQ(1, ECHO.decode(), (IVRLE.decode(),)),),
)

HAND_AC = bytes.fromhex(
    "02 00 0000009b"  # A-ASSOCIATE-AC, 155 bytes
    "0001 0000"
    "414e592d53435020202020202020 2020"
    "4543484f53435520202020202020 2020"
    + "00" * 32
    + "10 00 0015"
    + b"1.2.840.10008.3.1.1.1".hex()
    + "21 00 0019 01 00 00 00"  # context 1 accepted, 25 bytes
    + "40 00 0011"
    + IVRLE.hex()
    + "50 00 001d"
    + "51 00 0004 00010000"  # maximum length 65536
    + "52 00 0007"
    + b"1.2.3.4".hex()
    + "55 00 0006"
    + b"ADICOM".hex()
)

HAND_AC_VALUE = pdu.AAssociateAC(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    user_information=pdu.UserInformation(65536, "1.2.3.4", "ADICOM"),
    presentation_contexts=(pdu.PresentationContextAC(1, 0, IVRLE.decode()),),
)

VECTORS: list[tuple[str, bytes, pdu.PDU]] = [
    ("abort", bytes.fromhex("07 00 00000004 0000 0201"), pdu.AAbort(2, 1)),
    ("abort-user", bytes.fromhex("07 00 00000004 0000 0000"), pdu.AAbort(0, 0)),
    ("rj", bytes.fromhex("03 00 00000004 00 010107"), pdu.AAssociateRJ(1, 1, 7)),
    ("rj-transient", bytes.fromhex("03 00 00000004 00 020301"), pdu.AAssociateRJ(2, 3, 1)),
    ("release-rq", bytes.fromhex("05 00 00000004 00000000"), pdu.AReleaseRQ()),
    ("release-rp", bytes.fromhex("06 00 00000004 00000000"), pdu.AReleaseRP()),
    (
        "pdata",
        bytes.fromhex("04 00 0000000a 00000006 01 03 aabbccdd"),
        pdu.PDataTF((pdu.PDV(1, True, True, b"\xaa\xbb\xcc\xdd"),)),
    ),
    (
        "pdata-two-pdvs",
        bytes.fromhex("04 00 0000000f 00000003 03 00 11 00000004 03 02 2233"),
        pdu.PDataTF((pdu.PDV(3, False, False, b"\x11"), pdu.PDV(3, False, True, b"\x22\x33"))),
    ),
    ("associate-rq", HAND_RQ, HAND_RQ_VALUE),
    ("associate-ac", HAND_AC, HAND_AC_VALUE),
]


@pytest.mark.parametrize(("raw", "value"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_known_vector_decodes(raw: bytes, value: pdu.PDU) -> None:
    assert decode_one(raw) == value


@pytest.mark.parametrize(("raw", "value"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_known_vector_encodes(raw: bytes, value: pdu.PDU) -> None:
    assert value.encode() == raw


@pytest.mark.parametrize(("raw", "value"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_known_vector_one_byte_at_a_time(raw: bytes, value: pdu.PDU) -> None:
    reader = pdu.PDUReader()
    for i in range(len(raw)):
        assert reader.next_pdu() is None
        reader.feed(raw[i : i + 1])
    assert reader.next_pdu() == value


@ROUND_TRIP
@given(s.a_associate_rq | s.a_associate_ac)
def test_encode_puts_zeros_in_reserved_fields(x: pdu.AAssociateRQ | pdu.AAssociateAC) -> None:
    raw = x.encode()
    assert raw[1] == 0
    assert raw[6 + 2 : 6 + 4] == b"\0\0"
    assert raw[6 + 36 : 6 + 68] == bytes(32)
    for at in item_headers(raw):
        assert raw[at + 1] == 0, f"item 0x{raw[at]:02X} at {at}"
    for at in context_item_bodies(raw):
        assert raw[at + 1] == 0
        assert raw[at + 3] == 0
        if raw[at - 4] == 0x20:
            assert raw[at + 2] == 0


@ROUND_TRIP
@given(st.one_of(s.a_associate_rj, s.a_abort, s.a_release_rq, s.a_release_rp, s.p_data_tf))
def test_encode_zeros_in_small_pdus(x: pdu.PDU) -> None:
    raw = x.encode()
    assert raw[1] == 0
    if isinstance(x, pdu.AAbort):
        assert raw[6:8] == b"\0\0"
    elif isinstance(x, pdu.AAssociateRJ):
        assert raw[6] == 0
    elif isinstance(x, (pdu.AReleaseRQ, pdu.AReleaseRP)):
        assert raw[6:] == bytes(4)


@ROUND_TRIP
@given(s.ae_titles, s.ae_titles)
def test_ae_titles_space_padded_to_16(called: str, calling: str) -> None:
    raw = pdu.AAssociateRQ(called, calling, pdu.UserInformation(0, "1.2")).encode()
    assert raw[6 + 4 : 6 + 20] == called.encode().ljust(16, b" ")
    assert raw[6 + 20 : 6 + 36] == calling.encode().ljust(16, b" ")


def test_ae_title_longer_than_16_is_refused() -> None:
    with pytest.raises(ValueError):
        pdu.AAssociateRQ("A" * 17, "B", pdu.UserInformation(0, "1.2")).encode()


def test_received_ae_titles_lose_padding_on_both_sides() -> None:
    raw = bytearray(HAND_RQ)
    raw[6 + 4 : 6 + 20] = b"  ANY-SCP\0\0     "
    got = decode_one(bytes(raw))
    assert isinstance(got, pdu.AAssociateRQ)
    assert got.called_ae == "ANY-SCP"


def test_received_uids_lose_a_trailing_nul_or_space() -> None:
    pc = item(0x20, b"\x01\x00\x00\x00" + item(0x30, ECHO + b"\0") + item(0x40, IVRLE + b" "))
    ui = item(0x50, item(0x51, b"\x00\x00\x40\x00") + item(0x52, b"1.2.3.4\0"))
    got = decode_one(associate_rq(item(0x10, b"1.2.840.10008.3.1.1.1\0") + pc + ui))
    assert isinstance(got, pdu.AAssociateRQ)
    assert got.application_context == pdu.APPLICATION_CONTEXT
    assert got.presentation_contexts[0] == pdu.PresentationContextRQ(
        1, ECHO.decode(), ("1.2.840.10008.1.2",)
    )
    assert got.user_information.implementation_class_uid == "1.2.3.4"


def test_missing_maximum_length_means_no_limit() -> None:
    ui = item(0x50, item(0x52, b"1.2.3.4"))
    got = decode_one(associate_rq(APP_CONTEXT + pc_rq() + ui))
    assert isinstance(got, pdu.AAssociateRQ)
    assert got.user_information.maximum_length == 0


def test_hand_built_user_information_sub_items() -> None:
    uid = b"1.2.840.10008.5.1.4.1.1.2"  # 25 bytes, CT Image Storage
    sub = (
        item(0x51, b"\x00\x00\x80\x00")
        + item(0x52, b"1.2.3.4")
        + item(0x53, b"\x00\x05\x00\x00")
        + item(0x54, b"\x00\x19" + uid + b"\x00\x01")
        + item(0x55, b"ADICOM 1")
        + item(0x56, b"\x00\x19" + uid + b"\x01\x00\x01")
        + item(0x57, b"\x00\x19" + uid + b"\x00\x03" + b"1.2" + b"\x00\x05" + b"\x00\x03" + b"4.5")
        + item(0x58, b"\x02\x01" + b"\x00\x03bob" + b"\x00\x02pw")
        + item(0x59, b"\x00\x02ok")
    )
    got = decode_one(associate_rq(APP_CONTEXT + pc_rq() + item(0x50, sub)))
    assert isinstance(got, pdu.AAssociateRQ)
    u = got.user_information
    assert u.maximum_length == 0x8000
    assert u.implementation_class_uid == "1.2.3.4"
    assert u.implementation_version_name == "ADICOM 1"
    assert u.async_operations_window == pdu.AsyncOperationsWindow(5, 0)
    assert u.role_selections == (pdu.RoleSelection(uid.decode(), False, True),)
    assert u.sop_class_extended == (pdu.SOPClassExtendedNegotiation(uid.decode(), b"\x01\x00\x01"),)
    assert u.sop_class_common_extended == (
        pdu.SOPClassCommonExtendedNegotiation(uid.decode(), "1.2", ("4.5",)),
    )
    assert u.user_identity_rq == pdu.UserIdentityRQ(2, b"bob", b"pw", True)
    assert u.user_identity_ac == pdu.UserIdentityAC(b"ok")
    assert u.unknown == ()
    # The sub-items were written in the order encode uses, so the bytes come back.
    assert got.encode() == associate_rq(APP_CONTEXT + pc_rq() + item(0x50, sub))


# ---------------------------------------------------------------------------
# Unknown user information sub-items pass through


def test_unknown_sub_items_survive_byte_identical() -> None:
    unknown = item(0x7F, b"\x00\x01\x02 future") + item(0xE0, b"") + item(0x5F, b"\xff" * 3)
    ui = item(0x50, item(0x51, b"\x00\x00\x40\x00") + item(0x52, b"1.2.3.4") + unknown)
    raw = associate_rq(APP_CONTEXT + pc_rq() + ui)
    got = decode_one(raw)
    assert isinstance(got, pdu.AAssociateRQ)
    assert got.user_information.unknown == (
        pdu.UnknownSubItem(0x7F, b"\x00\x01\x02 future"),
        pdu.UnknownSubItem(0xE0, b""),
        pdu.UnknownSubItem(0x5F, b"\xff\xff\xff"),
    )
    assert got.encode() == raw


@ROUND_TRIP
@given(s.user_information, st.lists(s.unknown_sub_items, min_size=1, max_size=4))
def test_unknown_sub_items_interleaved_keep_their_bytes(
    user: pdu.UserInformation, unknown: list[pdu.UnknownSubItem]
) -> None:
    # Put the unknown sub-items among the known ones: each still comes back
    # with the same bytes and in the same order relative to the others.
    user = dataclasses.replace(user, unknown=())
    known = user.encode()[4:]
    parts = [known[at:end] for at, end in _sub_item_spans(known)]
    raw_unknown = [item(u.item_type, u.data) for u in unknown]
    mixed = [p for pair in zip(parts, raw_unknown, strict=False) for p in pair]
    mixed += parts[len(raw_unknown) :] + raw_unknown[len(parts) :]
    fixed = pdu.AAssociateRQ("A", "B", user_information=user).encode()
    body = fixed[6 : len(fixed) - len(user.encode())] + item(0x50, b"".join(mixed))
    got = decode_one(header(1, len(body)) + body)
    assert isinstance(got, pdu.AAssociateRQ)
    assert got.user_information == dataclasses.replace(user, unknown=tuple(unknown))
    out = got.encode()
    pos = 0
    for chunk in raw_unknown:
        found = out.find(chunk, pos)
        assert found >= 0
        pos = found + len(chunk)


def _sub_item_spans(value: bytes) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < len(value):
        end = pos + 4 + int.from_bytes(value[pos + 2 : pos + 4], "big")
        out.append((pos, end))
        pos = end
    return out


# ---------------------------------------------------------------------------
# encode_pdata


@ROUND_TRIP
@given(st.lists(s.pdvs, min_size=1, max_size=6))
def test_encode_pdata_pieces_equal_pdatatf_encode(pdvs: list[pdu.PDV]) -> None:
    pieces = pdu.encode_pdata([(p.context_id, p.control, p.data) for p in pdvs])
    joined = b"".join(bytes(piece) for piece in pieces)
    assert joined == pdu.PDataTF(tuple(pdvs)).encode()
    assert decode_one(joined) == pdu.PDataTF(tuple(pdvs))


def _pdata_bytes(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU written out field by field (PS3.8 9.3.5, 9.3.5.1)."""
    items = b"".join(struct.pack(">LBB", len(d) + 2, c, m) + d for c, m, d in pdvs)
    return struct.pack(">BxL", 4, len(items)) + items


@pytest.mark.parametrize("sizes", [(0, 0), (1, 2), (200, 700), (1024, 1024), (1025, 3), (3, 1025)])
@pytest.mark.parametrize("views", [False, True])
def test_encode_pdata_of_two_pdvs_is_the_pdu_field_by_field(
    sizes: tuple[int, int], views: bool
) -> None:
    # Two small PDVs (a command and its identifier) are packed in one piece,
    # larger ones the general way: the bytes are the same.
    first, second = bytes(range(256)) * 5, b"\xab" * 2000
    pdvs = [(1, 3, first[: sizes[0]]), (3, 2, second[: sizes[1]])]
    given = [(c, m, memoryview(d) if views else d) for c, m, d in pdvs]
    pieces = pdu.encode_pdata(given)
    assert b"".join(bytes(piece) for piece in pieces) == _pdata_bytes(pdvs)
    assert (len(pieces) == 1) is (max(sizes) <= 1024)


def test_encode_pdata_does_not_copy_large_data() -> None:
    big = memoryview(bytes(5000))
    pieces = pdu.encode_pdata([(1, 2, big)])
    assert any(piece is big for piece in pieces)


@pytest.mark.parametrize(
    ("is_command", "is_last", "control"),
    [(False, False, 0), (True, False, 1), (False, True, 2), (True, True, 3)],
)
def test_pdv_control_byte(is_command: bool, is_last: bool, control: int) -> None:
    assert pdu.PDV(1, is_command, is_last, b"").control == control


def _receive(reader: pdu.PDUReader, data: bytes) -> list[pdu.PDU]:
    """Feed ``data`` the way the asyncio driver does: into get_buffer(), read by read."""
    out: list[pdu.PDU] = []
    while data:
        buffer = reader.get_buffer()
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        reader.buffer_updated(n)
        data = data[n:]
        out += drain(reader)
    return out


def test_a_read_takes_room_for_a_few_pdus_of_the_size_last_seen() -> None:
    # Every PDU of one read is decoded in one loop callback: small PDUs are
    # read 16 KiB at a time (a bounded callback), 16 KiB PDUs 64 KiB at a
    # time (one read for several, not two reads each).
    reader = pdu.PDUReader()
    assert len(reader.get_buffer()) == pdu.PDUReader.STAGING_MIN
    small = b"".join(b"".join(pdu.encode_pdata([(1, 3, bytes(300))])) for _ in range(100))
    assert len(_receive(reader, small)) == 100
    assert len(reader.get_buffer()) == pdu.PDUReader.STAGING_MIN
    large = b"".join(b"".join(pdu.encode_pdata([(1, 0, bytes(16378))])) for _ in range(8))
    received = _receive(reader, large)
    assert [len(p.pdvs[0].data) for p in received] == [16378] * 8  # type: ignore[union-attr]
    assert len(reader.get_buffer()) == pdu.PDUReader.STAGING
    assert len(_receive(reader, small)) == 100
    assert len(reader.get_buffer()) == pdu.PDUReader.STAGING_MIN


def test_readers_sharing_one_staging_buffer_read_in_turn() -> None:
    # One loop's associations read in turn into one buffer (each read copied
    # out before the next): their PDUs arrive whole and their own, in any
    # interleaving, large reads growing the shared buffer included.
    shared = pdu.Staging()
    readers = [pdu.PDUReader(), pdu.PDUReader(), pdu.PDUReader()]
    for reader in readers:
        reader.staging = shared
    streams = [
        b"".join(b"".join(pdu.encode_pdata([(1, 3, bytes([n]) * size)])) for _ in range(40))
        for n, size in enumerate((300, 16378, 5))
    ]
    got: list[list[pdu.PDU]] = [[], [], []]
    while any(streams):
        for i, reader in enumerate(readers):
            if streams[i]:
                buffer = reader.get_buffer()
                n = min(len(buffer), len(streams[i]), 7000)
                buffer[:n] = streams[i][:n]
                reader.buffer_updated(n)
                streams[i] = streams[i][n:]
                got[i] += drain(reader)
    for n, (size, received) in enumerate(zip((300, 16378, 5), got, strict=True)):
        assert [p.pdvs[0].data for p in received] == [bytes([n]) * size] * 40  # type: ignore[union-attr]
    # The 16 KiB PDUs grew the shared buffer for everyone.
    assert len(shared.view) == pdu.PDUReader.STAGING


#: A plain A-ASSOCIATE-RQ (Verification, no identity), for the cache's tests.
VERIFICATION_RQ = pdu.AAssociateRQ(
    called_ae="SCP",
    calling_ae="SCU",
    presentation_contexts=(
        pdu.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
    ),
    user_information=pdu.UserInformation(16384, "1.2.3.4"),
)


def test_association_pdus_are_decoded_once_per_distinct_bytes() -> None:
    from adicom.pdu import reader

    rq = VERIFICATION_RQ
    decoded = []
    for _ in range(2):
        r = pdu.PDUReader()
        r.feed(rq.encode())
        decoded.append(r.next_pdu())
    assert decoded[0] == rq and decoded[1] is decoded[0]  # the cached object
    # Bounded: ever new requests never grow it past its size.
    for n in range(reader._ASSOCIATE_CACHE_SIZE + 10):
        r = pdu.PDUReader()
        r.feed(dataclasses.replace(rq, calling_ae=f"SCU{n}").encode())
        assert r.next_pdu() is not None
        assert len(reader._ASSOCIATE_CACHE) <= reader._ASSOCIATE_CACHE_SIZE


@pytest.mark.parametrize(
    "user",
    [
        pdu.UserInformation(16384, "1.2.3.4", user_identity_rq=pdu.UserIdentityRQ(2, b"u", b"pw")),
        pdu.UserInformation(16384, "1.2.3.4", user_identity_ac=pdu.UserIdentityAC(b"ticket")),
    ],
)
def test_association_pdus_with_credentials_are_never_cached(user: pdu.UserInformation) -> None:
    from adicom.pdu import reader

    reader._ASSOCIATE_CACHE.clear()
    for cls in (pdu.AAssociateRQ, pdu.AAssociateAC):
        raw = cls(called_ae="SCP", calling_ae="SCU", user_information=user).encode()
        decoded = []
        for _ in range(2):
            r = pdu.PDUReader()
            r.feed(raw)
            decoded.append(r.next_pdu())
        assert decoded[0] == decoded[1] and decoded[1] is not decoded[0]
        assert decoded[0].user_information == user  # type: ignore[union-attr]
    assert not reader._ASSOCIATE_CACHE  # the passcode's bytes are not kept either


@pytest.mark.parametrize("hidden", ["second user item", "identity at the top level"])
def test_an_association_pdu_hiding_credentials_from_its_decoder_is_not_cached(
    hidden: str,
) -> None:
    from adicom.pdu import reader

    identity = pdu.UserInformation(
        16384, "1.2.3.4", user_identity_rq=pdu.UserIdentityRQ(2, b"u", b"s3cret-pass")
    )
    plain = pdu.UserInformation(16384, "1.2.3.4")
    for cls in (pdu.AAssociateRQ, pdu.AAssociateAC):
        reader._ASSOCIATE_CACHE.clear()
        raw = cls(called_ae="SCP", calling_ae="SCU", user_information=plain).encode()
        # A peer's odd PDU: the decoder keeps the last User Information item
        # (or passes over a 0x58 sub-item out of place), so the object shows
        # no identity while the bytes carry one.
        secret = identity.encode() if hidden == "second user item" else identity.encode()[4:]
        if hidden == "second user item":
            body = raw[6 : -len(plain.encode())] + secret + plain.encode()
        else:
            body = raw[6:] + secret
        odd = raw[:2] + len(body).to_bytes(4, "big") + body
        r = pdu.PDUReader()
        r.feed(odd)
        decoded = r.next_pdu()
        assert isinstance(decoded, cls)
        assert decoded.user_information == plain
        assert not any(b"s3cret-pass" in key for _, key in reader._ASSOCIATE_CACHE)
        assert not reader._ASSOCIATE_CACHE
        # The same PDU without the odd part is cached as before.
        r = pdu.PDUReader()
        r.feed(raw)
        assert r.next_pdu() == decoded and len(reader._ASSOCIATE_CACHE) == 1


def test_an_association_request_with_reserved_bytes_set_is_cached() -> None:
    from adicom.pdu import reader

    # DCMTK sends 0xFF in a presentation context item's third reserved byte
    # (PS3.8 9.3.2.2: "not tested"): its requests are cached as any other,
    # though they do not encode back to the same bytes (a check on that
    # had kept every DCMTK request out of the cache).
    rq = VERIFICATION_RQ
    raw = bytearray(rq.encode())
    at = raw.index(b"\x20\x00", 6 + 68)  # the presentation context item
    assert raw[at + 4 : at + 8] == b"\x01\x00\x00\x00"
    raw[at + 6] = 0xFF
    reader._ASSOCIATE_CACHE.clear()
    first, second = pdu.PDUReader(), pdu.PDUReader()
    first.feed(bytes(raw))
    second.feed(bytes(raw))
    assert first.next_pdu() == rq
    (cached,) = reader._ASSOCIATE_CACHE.values()
    assert second.next_pdu() is cached


def test_a_cached_association_pdu_cannot_be_changed_for_the_next_association() -> None:
    rq = VERIFICATION_RQ
    r = pdu.PDUReader()
    r.feed(rq.encode())
    first = r.next_pdu()
    assert isinstance(first, pdu.AAssociateRQ)
    # Everything in it is frozen: an association cannot change it for the next.
    for obj, name in (
        (first, "calling_ae"),
        (first.user_information, "maximum_length"),
        (first.presentation_contexts[0], "transfer_syntaxes"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, None)
    assert isinstance(first.presentation_contexts, tuple)
    assert isinstance(first.presentation_contexts[0].transfer_syntaxes, tuple)
    r = pdu.PDUReader()
    r.feed(rq.encode())
    assert r.next_pdu() == rq


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "carries no PDV item"),
        (b"\x00\x00\x00\x01\x01", "trailing bytes where a PDV header"),
        (b"\x00\x00\x00\x01\x01\x03", "PDV item length 1 does not fit"),
        (b"\x00\x00\x00\x06\x01\x03abc", "PDV item length 6 does not fit"),
        (b"\x00\x00\x00\x03\x01\x03abc", "2 trailing bytes where a PDV header"),
        (b"\x00\x00\x00\x03\x01\x03a\x00", "trailing bytes where a PDV header"),
    ],
)
def test_a_pdata_body_that_is_not_whole_pdvs_is_invalid(body: bytes, error: str) -> None:
    # The one-PDV short way (the PDV fills the body) and the loop refuse alike.
    with pytest.raises(RemoteProtocolError, match=error):
        pdu.PDataTF.decode(memoryview(body))


def test_one_pdv_decodes_the_short_way_as_the_loop_does() -> None:
    one = pdu.PDataTF.decode(memoryview(b"\x00\x00\x00\x05\x07\x02abc"))
    two = pdu.PDataTF.decode(memoryview(b"\x00\x00\x00\x05\x07\x02abc\x00\x00\x00\x03\x07\x01d"))
    assert one == pdu.PDataTF((pdu.PDV(7, False, True, b"abc"),))
    assert two.pdvs[0] == one.pdvs[0] and two.pdvs[1] == pdu.PDV(7, True, False, b"d")


def test_a_lent_pdata_of_one_pdv_comes_bare_from_next_bare_and_whole_from_next_pdu() -> None:
    raw = pdu.PDataTF((pdu.PDV(3, True, True, b"command"),)).encode()
    taken: list[object] = []
    for take in (pdu.PDUReader.next_bare, pdu.PDUReader.next_pdu):
        r = pdu.PDUReader()
        r.get_buffer()[: len(raw)] = raw
        r.buffer_lent(len(raw))
        taken.append(take(r))
        assert r.empty
    bare, whole = taken
    # (context ID, message control header, data): the PDU's one PDV, bare.
    assert isinstance(bare, tuple) and bare[:2] == (3, 3) and bytes(bare[2]) == b"command"
    assert whole == pdu.PDataTF((pdu.PDV(3, True, True, b"command"),))
    from adicom.pdu.pdus import bare_pdata

    assert bare_pdata(bare) == whole
