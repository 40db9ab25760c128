"""Tests for adicom.dimse: the command set codec, status classes, and PDV framing.

Command sets are Implicit VR Little Endian group 0000 (PS3.7 6.3.1, E.1);
messages are split into PDVs and put back together as PS3.8 Annex E says.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adicom import pdu
from adicom.dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    Command,
    CommandField,
    CommandReceived,
    CountsTemplate,
    DataReceived,
    MessageAssembler,
    Priority,
    RequestTemplate,
    ResponseTemplate,
    StatusCategory,
    c_store_rq,
    fragment_message,
    status_category,
)
from adicom.errors import RemoteProtocolError
from tests import strategies as s

ROUND_TRIP = settings(max_examples=200, deadline=None)
FUZZ = settings(max_examples=500, deadline=None)

ECHO = "1.2.840.10008.1.1"


def elements(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Split Implicit VR Little Endian bytes into (group, element, value)."""
    out = []
    pos = 0
    while pos < len(raw):
        group, element, length = struct.unpack_from("<HHL", raw, pos)
        pos += 8
        out.append((group, element, raw[pos : pos + length]))
        pos += length
    assert pos == len(raw)
    return out


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, tag, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def group(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return element(0x0000, struct.pack("<L", len(body))) + body


# ---------------------------------------------------------------------------
# Command codec


@ROUND_TRIP
@given(s.commands)
def test_command_round_trip(command: Command) -> None:
    assert Command.decode(command.encode()) == command


@ROUND_TRIP
@given(s.commands)
def test_command_group_length_first_and_right(command: Command) -> None:
    raw = command.encode()
    parsed = elements(raw)
    assert parsed[0][:2] == (0x0000, 0x0000)
    assert len(parsed[0][2]) == 4
    assert struct.unpack("<L", parsed[0][2])[0] == len(raw) - 12


@ROUND_TRIP
@given(s.commands)
def test_command_elements_ascending_group_zero(command: Command) -> None:
    parsed = elements(command.encode())
    tags = [(g << 16) | e for g, e, _ in parsed]
    assert all(g == 0 for g, _, _ in parsed)
    assert tags == sorted(set(tags))
    known = s.KNOWN_COMMAND_ELEMENTS
    for _, e, value in parsed:
        if e in known:
            assert len(value) % 2 == 0, f"(0000,{e:04X}) has odd length {len(value)}"


@ROUND_TRIP
@given(s.commands)
def test_command_decode_by_independent_parser(command: Command) -> None:
    found = {e: v for _, e, v in elements(command.encode())}
    assert struct.unpack("<H", found[0x0100])[0] == command.command_field
    assert struct.unpack("<H", found[0x0800])[0] == command.command_data_set_type
    if command.message_id is None:
        assert 0x0110 not in found
    else:
        assert struct.unpack("<H", found[0x0110])[0] == command.message_id
    if command.affected_sop_class_uid is not None:
        assert found[0x0002].rstrip(b"\0") == command.affected_sop_class_uid.encode()
    for e, value in command.other:
        assert found[e] == value


@ROUND_TRIP
@given(
    st.sampled_from([CommandField.C_ECHO_RSP, CommandField.C_STORE_RSP]),
    st.none() | s.uids,
    s.u16,
    s.u16,
    st.none() | s.uids,
)
def test_response_template_gives_the_command_and_its_encoding(
    field: int, sop_class: str | None, status: int, message_id: int, instance: str | None
) -> None:
    template = ResponseTemplate(field, sop_class, status)
    for _ in range(2):  # a template serves again and again
        command, raw = template.make(message_id, instance)
        built = Command(
            field,
            message_id_being_responded_to=message_id,
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=instance,
            status=status,
        )
        assert command == built
        assert raw == built.encode()
        assert Command.decode(raw) == built
        message_id = (message_id + 1) & 0xFFFF


@ROUND_TRIP
@given(s.commands, s.u16)
def test_request_template_gives_the_command_and_its_encoding(
    command: Command, message_id: int
) -> None:
    template = RequestTemplate(command)
    made, raw = template.make(message_id)
    expected = replace(command, message_id=message_id)
    assert made == expected
    assert raw == expected.encode()


@ROUND_TRIP
@given(s.commands, s.u16)
def test_with_message_id_is_replace(command: Command, message_id: int) -> None:
    assert command.with_message_id(message_id) == replace(command, message_id=message_id)


def test_c_echo_rq_by_hand() -> None:
    # PS3.7 9.3.5.1 / E.1-1, written byte by byte.
    raw = (
        bytes.fromhex(
            "0000 0000 04000000 38000000"  # (0000,0000) UL 56
            "0000 0200 12000000"  # (0000,0002) UI, 18 bytes
        )
        + b"1.2.840.10008.1.1\0"
        + bytes.fromhex(
            "0000 0001 02000000 3000"  # (0000,0100) US C-ECHO-RQ
            "0000 1001 02000000 0100"  # (0000,0110) US message ID 1
            "0000 0008 02000000 0101"  # (0000,0800) US no data set
        )
    )
    command = Command(CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid=ECHO)
    assert command.encode() == raw
    assert Command.decode(raw) == command


def test_c_echo_rsp_by_hand() -> None:
    raw = (
        bytes.fromhex(
            "0000 0000 04000000 42000000"  # (0000,0000) UL 66
            "0000 0200 12000000"
        )
        + b"1.2.840.10008.1.1\0"
        + bytes.fromhex(
            "0000 0001 02000000 3080"  # C-ECHO-RSP
            "0000 2001 02000000 0700"  # responding to message 7
            "0000 0008 02000000 0101"
            "0000 0009 02000000 0000"  # status success
        )
    )
    command = Command(
        CommandField.C_ECHO_RSP,
        message_id_being_responded_to=7,
        affected_sop_class_uid=ECHO,
        status=0,
    )
    assert command.encode() == raw
    assert Command.decode(raw) == command
    assert command.is_response
    assert not command.has_dataset


def test_odd_uid_padded_with_nul_and_text_with_space() -> None:
    command = Command(
        CommandField.C_MOVE_RQ,
        affected_sop_class_uid="1.2.3",
        move_destination="DEST",
        move_originator_ae_title="ABC",
        error_comment="bad",
    )
    found = {e: v for _, e, v in elements(command.encode())}
    assert found[0x0002] == b"1.2.3\0"
    assert found[0x0600] == b"DEST"
    assert found[0x1030] == b"ABC "
    assert found[0x0902] == b"bad "


def test_offending_element_is_at() -> None:
    command = Command(CommandField.C_STORE_RSP, offending_element=(0x00100010, 0x7FE00010))
    found = {e: v for _, e, v in elements(command.encode())}
    assert found[0x0901] == bytes.fromhex("1000 1000 e07f 1000")
    assert Command.decode(command.encode()) == command


def test_unknown_elements_kept_in_other() -> None:
    # (0000,0850) Number of Matches and (0000,5010) Message Set ID are retired
    # elements Command does not name; they are kept and sent back as they came.
    raw = group(
        element(0x0100, us(0x0020)),
        element(0x0110, us(3)),
        element(0x0800, us(NO_DATASET)),
        element(0x0850, us(2)),
        element(0x5010, b"SET1"),
    )
    command = Command.decode(raw)
    assert command.command_field == 0x0020
    assert command.message_id == 3
    assert command.other == ((0x0850, b"\x02\x00"), (0x5010, b"SET1"))
    assert command.encode() == raw


def test_other_interleaved_in_tag_order() -> None:
    command = Command(
        CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_instance_uid="1.2",
        other=((0x0001, b"ab"), (0x0105, b"cd"), (0x2000, b"ef")),
    )
    tags = [e for _, e, _ in elements(command.encode())]
    assert tags == [0x0000, 0x0001, 0x0100, 0x0105, 0x0110, 0x0800, 0x1000, 0x2000]


def test_received_padding_is_removed() -> None:
    raw = group(
        element(0x0002, b"1.2.3\0"),
        element(0x0100, us(0x0021)),
        element(0x0600, b"  DEST  "),
        element(0x1000, b"1.2.34 "),
    )
    command = Command.decode(raw)
    assert command.affected_sop_class_uid == "1.2.3"
    assert command.move_destination == "DEST"
    assert command.affected_sop_instance_uid == "1.2.34"


def test_command_group_length_is_optional_on_receipt() -> None:
    raw = element(0x0100, us(0x0030)) + element(0x0110, us(9))
    assert Command.decode(raw) == Command(CommandField.C_ECHO_RQ, message_id=9)


def test_has_dataset_and_is_response() -> None:
    assert not Command(CommandField.C_ECHO_RQ).has_dataset
    assert Command(CommandField.C_STORE_RQ, command_data_set_type=0x0000).has_dataset
    assert Command(CommandField.C_FIND_RSP, command_data_set_type=0xFEFE).has_dataset
    assert Command(CommandField.C_FIND_RSP).is_response
    assert not Command(CommandField.C_CANCEL_RQ).is_response


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00\x00\x00\x00\x04", id="truncated-element-header"),
        pytest.param(group(element(0x0100, us(0x30))) + b"\x00\x00", id="trailing-partial-header"),
        pytest.param(
            group(element(0x0100, us(0x30))) + struct.pack("<HHL", 8, 0x16, 2) + b"ab",
            id="group-not-zero",
        ),
        pytest.param(group(element(0x0110, us(1))), id="no-command-field"),
        pytest.param(b"", id="empty"),
        pytest.param(
            group(element(0x0100, us(0x30))) + struct.pack("<HHL", 0, 0x0110, 8) + b"\x01\x00",
            id="length-past-end",
        ),
        pytest.param(group(element(0x0100, us(0x30)), element(0x0110, b"\x01")), id="us-one-byte"),
        pytest.param(group(element(0x0100, b"")), id="us-empty"),
        pytest.param(group(element(0x0100, b"\x30\x00\x00\x00")), id="us-four-bytes"),
        pytest.param(
            group(element(0x0100, us(0x30))) + struct.pack("<HHL", 0, 0x0110, 0xFFFFFFFF),
            id="huge-length",
        ),
    ],
)
def test_command_decode_garbage(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Command.decode(raw)
    assert info.value.abort_reason == 6


@FUZZ
@given(st.binary(max_size=200))
def test_command_decode_fuzz(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        assert isinstance(Command.decode(raw), Command)


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(s.commands).encode())
    for _ in range(draw(st.integers(1, 3))):
        if not buf:
            break
        pos = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "u32", "insert"]))
        if kind == "flip":
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "u32":
            buf[pos : pos + 4] = draw(s.u32).to_bytes(4, "little")
        else:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=6))
    return bytes(buf)


@FUZZ
@given(mutated_commands())
def test_command_decode_fuzz_mutated(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        assert isinstance(Command.decode(raw), Command)


def _other_free(command: Command) -> Command:
    return Command(
        **{name: getattr(command, name) for name in Command.__slots__ if name != "other"}
    )


@settings(FUZZ, report_multiple_bugs=False)
@given(st.one_of(mutated_commands(), st.binary(max_size=200)))
def test_decoded_command_encodes_again(raw: bytes) -> None:
    # Responses echo the request's UIDs (affected SOP class and instance), so
    # whatever decodes must encode again, to the same named values.
    try:
        command = Command.decode(raw)
    except RemoteProtocolError:
        return
    again = Command.decode(command.encode())
    assert _other_free(again) == _other_free(command)


def test_non_ascii_uid_decodes_to_something_encodable() -> None:
    # Minimal case of the property above: a C-STORE-RQ whose affected SOP
    # instance UID has a byte over 0x7F. Refusing it (RemoteProtocolError) or
    # decoding it to an encodable value are both fine; a later
    # UnicodeEncodeError while answering is not.
    raw = group(element(0x0100, us(0x0001)), element(0x1000, b"1.\xff\0"))
    try:
        command = Command.decode(raw)
    except RemoteProtocolError:
        return
    command.encode()


# ---------------------------------------------------------------------------
# Status classes (PS3.7 Annex C)


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (0x0000, StatusCategory.SUCCESS),
        (0xFF00, StatusCategory.PENDING),
        (0xFF01, StatusCategory.PENDING),
        (0xFE00, StatusCategory.CANCEL),
        (0x0001, StatusCategory.WARNING),
        (0x0107, StatusCategory.WARNING),
        (0x0116, StatusCategory.WARNING),
        (0xB000, StatusCategory.WARNING),
        (0xB007, StatusCategory.WARNING),
        (0xB006, StatusCategory.WARNING),
        (0xA700, StatusCategory.FAILURE),
        (0xA701, StatusCategory.FAILURE),
        (0xA900, StatusCategory.FAILURE),
        (0xC000, StatusCategory.FAILURE),
        (0xCFFF, StatusCategory.FAILURE),
        (0x0211, StatusCategory.FAILURE),
        (0x0122, StatusCategory.FAILURE),
        (0x0110, StatusCategory.FAILURE),
        (0x0124, StatusCategory.FAILURE),
    ],
)
def test_status_category(status: int, category: StatusCategory) -> None:
    assert status_category(status) is category


# ---------------------------------------------------------------------------
# Fragmenting and reassembling (PS3.8 Annex E)


def command_of_size(extra: int, with_data: bool) -> Command:
    """A C-STORE-RQ padded with an unnamed element to vary its size."""
    return Command(
        CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        affected_sop_instance_uid="1.2.3.4.5",
        priority=0,
        command_data_set_type=0x0000 if with_data else NO_DATASET,
        other=((0x4000, bytes(extra)),),
    )


def send(
    context_id: int, command: bytes, dataset: bytes | None, max_pdu: int
) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """Fragment a message; the encoded PDUs and the flat list of PDVs."""
    encoded: list[bytes] = []
    flat: list[tuple[int, int, bytes]] = []
    for triples in fragment_message(context_id, command, dataset, max_pdu):
        assert triples, "an empty PDU was yielded"
        encoded.append(b"".join(bytes(p) for p in pdu.encode_pdata(triples)))
        flat.extend((c, ctl, bytes(d)) for c, ctl, d in triples)
    return encoded, flat


def receive(encoded: list[bytes], max_pdu: int) -> list[CommandReceived | DataReceived]:
    reader = pdu.PDUReader(max_pdata_length=max_pdu)
    assembler = MessageAssembler()
    events: list[CommandReceived | DataReceived] = []
    for raw in encoded:
        reader.feed(raw)
        got = reader.next_pdu()
        assert isinstance(got, pdu.PDataTF)
        assert reader.buffered == 0
        for pdv in got.pdvs:
            event = assembler.feed(pdv.context_id, pdv.is_command, pdv.is_last, pdv.data)
            if event is not None:
                events.append(event)
    assert assembler.idle
    return events


MAX_PDUS = [8, 9, 13, 100, 16384, 0]


@settings(max_examples=200, deadline=None)
@given(
    max_pdu=st.sampled_from(MAX_PDUS),
    extra=st.integers(0, 300),
    dataset=st.none() | st.binary(max_size=40) | st.integers(0, 3000).map(bytes),
    context_id=st.integers(1, 255),
)
def test_fragment_and_reassemble(
    max_pdu: int, extra: int, dataset: bytes | None, context_id: int
) -> None:
    if max_pdu < 16 and dataset is not None:
        dataset = dataset[:600]  # keep the 2-byte fragments few
    command = command_of_size(extra, dataset is not None)
    raw_command = command.encode()
    encoded, flat = send(context_id, raw_command, dataset, max_pdu)

    for raw in encoded:
        assert raw[0] == 0x04
        if max_pdu:
            assert int.from_bytes(raw[2:6], "big") <= max_pdu

    # Control bits: command fragments first, each part's last bit on its last only.
    assert all(c == context_id for c, _, _ in flat)
    n_command = sum(1 for _, ctl, _ in flat if ctl & 1)
    assert all(ctl & 1 for _, ctl, _ in flat[:n_command])
    assert not any(ctl & 1 for _, ctl, _ in flat[n_command:])
    assert all(ctl & ~3 == 0 for _, ctl, _ in flat)
    for part in (flat[:n_command], flat[n_command:]):
        if part:
            assert [bool(ctl & 2) for _, ctl, _ in part] == [False] * (len(part) - 1) + [True]
    assert b"".join(d for _, _, d in flat[:n_command]) == raw_command
    if dataset is None:
        assert n_command == len(flat)
    else:
        assert b"".join(d for _, _, d in flat[n_command:]) == dataset
        # No empty fragment unless the part itself is empty.
        assert all(d for _, _, d in flat[n_command:]) or dataset == b""
    assert all(d for _, _, d in flat[:n_command])
    # PS3.8 E.1: every fragment is of even length, whatever the peer's
    # (possibly odd) maximum PDU length; only the last fragment of an
    # odd-length part can be odd.
    for part in (flat[:n_command], flat[n_command:]):
        assert all(len(d) % 2 == 0 for _, _, d in part[:-1]), [len(d) for _, _, d in part]

    events = receive(encoded, max_pdu)
    assert events[0] == CommandReceived(context_id, command)
    data_events = [e for e in events[1:] if isinstance(e, DataReceived)]
    assert len(data_events) == len(events) - 1
    if dataset is None:
        assert data_events == []
    else:
        assert b"".join(bytes(e.data) for e in data_events) == dataset
        assert [e.last for e in data_events] == [False] * (len(data_events) - 1) + [True]


@settings(max_examples=100, deadline=None)
@given(
    max_pdu=st.sampled_from(MAX_PDUS),
    extra=st.integers(0, 300),
    dataset=st.none() | st.binary(min_size=1, max_size=3000),
)
def test_message_that_fits_is_one_pdu(max_pdu: int, extra: int, dataset: bytes | None) -> None:
    raw_command = command_of_size(extra, dataset is not None).encode()
    need = 6 + len(raw_command) + (0 if dataset is None else 6 + len(dataset))
    encoded, _ = send(1, raw_command, dataset, max_pdu)
    if max_pdu == 0 or need <= max_pdu:
        assert len(encoded) == 1


@pytest.mark.parametrize("max_pdu", [16384, 0])
def test_small_command_and_data_set_are_one_pdu(max_pdu: int) -> None:
    raw_command = command_of_size(0, True).encode()
    dataset = bytes(range(200))
    encoded, flat = send(5, raw_command, dataset, max_pdu)
    assert len(encoded) == 1
    assert [ctl for _, ctl, _ in flat] == [3, 2]


def test_empty_data_set_that_fits_is_in_the_same_pdu() -> None:
    # The docstring: "The command and a data set that fits go in the same PDU".
    # With max_pdu = 6 + len(command) + 6 an empty data set's PDV (6 bytes)
    # fits exactly after the command's.
    raw_command = command_of_size(0, True).encode()
    max_pdu = 6 + len(raw_command) + 6
    encoded, flat = send(1, raw_command, b"", max_pdu)
    assert [ctl for _, ctl, _ in flat] == [3, 2]
    assert len(encoded) == 1


def test_command_alone_is_one_pdu_exactly_at_the_limit() -> None:
    raw_command = command_of_size(10, False).encode()
    encoded, _ = send(1, raw_command, None, 6 + len(raw_command))
    assert len(encoded) == 1
    encoded, _ = send(1, raw_command, None, 6 + len(raw_command) - 1)
    assert len(encoded) == 2


@pytest.mark.parametrize("max_pdu", [1, 6, 7])
def test_max_pdu_too_small_for_a_pdv(max_pdu: int) -> None:
    with pytest.raises(ValueError):
        list(fragment_message(1, b"abc", None, max_pdu))


def test_max_pdu_8_carries_two_bytes_per_pdu() -> None:
    encoded, flat = send(1, b"abcde", b"xyz", 8)
    assert [d for _, _, d in flat] == [b"ab", b"cd", b"e", b"xy", b"z"]
    assert [ctl for _, ctl, _ in flat] == [1, 1, 3, 0, 2]
    assert all(len(raw) <= 6 + 8 for raw in encoded)


def test_memoryview_data_set_is_not_copied() -> None:
    big = memoryview(bytes(10000))
    fragments = [d for triples in fragment_message(1, b"c" * 20, big, 0) for _, _, d in triples]
    assert isinstance(fragments[-1], memoryview)
    assert fragments[-1].obj is big.obj


# ---------------------------------------------------------------------------
# MessageAssembler order checks


ECHO_RQ = Command(CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid=ECHO).encode()
STORE_RQ = command_of_size(0, True).encode()


def test_assembler_whole_messages() -> None:
    a = MessageAssembler()
    assert a.idle
    assert a.feed(1, True, False, ECHO_RQ[:10]) is None
    assert not a.idle
    event = a.feed(1, True, True, ECHO_RQ[10:])
    assert event == CommandReceived(1, Command.decode(ECHO_RQ))
    assert a.idle
    event = a.feed(3, True, True, STORE_RQ)
    assert isinstance(event, CommandReceived)
    assert event.context_id == 3
    assert not a.idle
    assert a.feed(3, False, False, b"abc") == DataReceived(3, b"abc", False)
    assert a.feed(3, False, True, b"") == DataReceived(3, b"", True)
    assert a.idle
    # Another message on another context afterwards is fine.
    assert isinstance(a.feed(5, True, True, ECHO_RQ), CommandReceived)


def assembler_raises(steps: list[tuple[int, bool, bool, bytes]]) -> RemoteProtocolError:
    a = MessageAssembler()
    *before, bad = steps
    for step in before:
        a.feed(*step)
    with pytest.raises(RemoteProtocolError) as info:
        a.feed(*bad)
    assert info.value.abort_reason == 6
    return info.value


def test_data_before_any_command() -> None:
    assembler_raises([(1, False, True, b"data")])


def test_data_after_command_without_data_set() -> None:
    assembler_raises([(1, True, True, ECHO_RQ), (1, False, True, b"data")])


def test_data_while_command_fragments_are_coming() -> None:
    assembler_raises([(1, True, False, STORE_RQ[:10]), (1, False, True, b"data")])


def test_command_while_data_expected() -> None:
    assembler_raises([(1, True, True, STORE_RQ), (1, True, True, ECHO_RQ)])


def test_command_while_more_data_expected() -> None:
    assembler_raises(
        [(1, True, True, STORE_RQ), (1, False, False, b"part"), (1, True, True, ECHO_RQ)]
    )


def test_other_context_mid_command() -> None:
    assembler_raises([(1, True, False, ECHO_RQ[:10]), (3, True, True, ECHO_RQ[10:])])


def test_other_context_mid_data() -> None:
    assembler_raises([(1, True, True, STORE_RQ), (3, False, True, b"data")])


def test_other_context_after_some_data() -> None:
    assembler_raises([(1, True, True, STORE_RQ), (1, False, False, b"a"), (3, False, True, b"b")])


def test_garbage_command_through_assembler() -> None:
    assembler_raises([(1, True, True, b"\x00\x00\x00\x00\x04")])


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 3]),
            st.booleans(),
            st.booleans(),
            st.sampled_from([ECHO_RQ, STORE_RQ, ECHO_RQ[:9], b"", b"xyz"]),
        ),
        max_size=8,
    )
)
def test_assembler_fuzz(steps: list[tuple[int, bool, bool, bytes]]) -> None:
    a = MessageAssembler()
    try:
        for step in steps:
            event = a.feed(*step)
            assert event is None or isinstance(event, (CommandReceived, DataReceived))
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    "counts", [(0, 0, 0, 0), (999, 1, 0, 0), (3, 2, 1, 4), (0xFFFF, 0, 0, 0), (70000, 5, 0, 0)]
)
def test_the_pending_retrieve_response_template_matches_a_built_command(
    counts: tuple[int, int, int, int],
) -> None:
    from adicom.association import Message
    from adicom.qrscp import _pending_response

    request = Message(
        1,
        Command(
            CommandField.C_GET_RQ,
            message_id=7,
            affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.3",
            priority=0,
            command_data_set_type=0x0000,
        ),
    )
    template = _pending_response(request)
    got = Command.decode(template.encode(*counts))
    assert got.command_field == CommandField.C_GET_RSP
    assert (got.message_id_being_responded_to, got.status, got.has_dataset) == (7, 0xFF00, False)
    assert got.affected_sop_class_uid == "1.2.840.10008.5.1.4.1.2.2.3"
    # US holds up to 65535 (PS3.5 6.2): a larger count is sent as the largest.
    assert (
        got.number_of_remaining_suboperations,
        got.number_of_completed_suboperations,
        got.number_of_failed_suboperations,
        got.number_of_warning_suboperations,
    ) == tuple(min(c, 0xFFFF) for c in counts)


def test_a_counts_template_needs_a_command_with_the_counts() -> None:
    echo_rsp = Command(CommandField.C_ECHO_RSP, message_id_being_responded_to=1, status=0)
    with pytest.raises(ValueError, match="no sub-operation counts"):
        CountsTemplate(echo_rsp)


def test_identical_command_sets_are_decoded_once_and_the_cache_is_bounded() -> None:
    from adicom.dimse import commands

    pending = Command(
        CommandField.C_FIND_RSP,
        message_id_being_responded_to=7,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
        status=0xFF00,
        command_data_set_type=0,
    ).encode()
    first = Command.decode(pending)
    assert Command.decode(memoryview(pending)) is first  # a stream of pending responses
    for message_id in range(commands._DECODED_SIZE + 5):
        raw = replace(first, message_id_being_responded_to=message_id).encode()
        assert Command.decode(raw).message_id_being_responded_to == message_id
        assert len(commands._DECODED) <= commands._DECODED_SIZE


def test_commands_that_differ_only_in_their_message_id_decode_to_their_own_values() -> None:
    # Command.decode learns a command's shape and copies in the ID of the
    # next one alike: each must still come out exactly as a full decode.
    verification = "1.2.840.10008.1.1"
    for message_id in (1, 2, 0x1234, 0xFFFF, 0x0100):
        rq = Command(CommandField.C_ECHO_RQ, message_id=message_id, affected_sop_class_uid="1.2.3")
        assert Command.decode(rq.encode()) == rq
        rsp = Command(
            CommandField.C_ECHO_RSP,
            message_id_being_responded_to=message_id,
            affected_sop_class_uid=verification,
            status=0,
        )
        assert Command.decode(memoryview(rsp.encode())) == rsp
    # Same length, other bytes elsewhere (the SOP class, the status): no shortcut.
    for uid, status in (("1.2.4", 0), (verification, 0x0110), ("1.2.840.10008.1.2", 0xC000)):
        rsp = Command(
            CommandField.C_ECHO_RSP,
            message_id_being_responded_to=9,
            affected_sop_class_uid=uid,
            status=status,
        )
        assert Command.decode(rsp.encode()) == rsp
    # Both IDs present, or a response carrying only a Message ID: each ID
    # goes to its own field.
    both = Command(CommandField.C_ECHO_RSP, message_id=3, message_id_being_responded_to=4, status=0)
    odd = Command(CommandField.C_ECHO_RSP, message_id=5, status=0)
    for _ in range(2):
        assert Command.decode(both.encode()) == both
        assert Command.decode(odd.encode()) == odd
        assert Command.decode(replace(odd, message_id=6).encode()).message_id == 6


def test_retrieve_responses_that_differ_in_ids_status_and_counts_decode_to_their_own_values() -> (
    None
):
    # The pending C-GET/C-MOVE-RSPs of one retrieve share a shape: only the
    # ID, the status and the sub-operation counts change (PS3.7 9.3.3.2).
    base = Command(
        CommandField.C_MOVE_RSP,
        message_id_being_responded_to=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.2",
        status=0xFF00,
        number_of_remaining_suboperations=999,
        number_of_completed_suboperations=0,
        number_of_failed_suboperations=0,
        number_of_warning_suboperations=0,
    )
    for step in range(40):
        command = replace(
            base,
            message_id_being_responded_to=(step * 977) & 0xFFFF,
            status=(0xFF00, 0xFF01, 0x0000, 0xB000)[step % 4],
            number_of_remaining_suboperations=999 - step,
            number_of_completed_suboperations=step * 1601 & 0xFFFF,
            number_of_failed_suboperations=step % 3,
            number_of_warning_suboperations=0x0100 * (step % 2),
        )
        assert Command.decode(command.encode()) == command
    # Same length, another byte where nothing varies: its own values.
    other_class = replace(base, affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.3")
    moved = replace(base, move_originator_message_id=5, number_of_failed_suboperations=None)
    for command in (other_class, moved, replace(moved, move_originator_message_id=6)):
        assert Command.decode(command.encode()) == command


def test_c_store_requests_that_differ_in_their_instance_uid_decode_to_their_own_values() -> None:
    # A retrieve's C-STORE sub-operations share a shape when their SOP
    # Instance UIDs have one length: an odd UID padded with NUL (PS3.5 9.1)
    # and an even one of that length each come out as themselves.
    base = Command(
        CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.3.4.5.600",
        priority=0,
        command_data_set_type=0,
        move_originator_ae_title="MOVER",
        move_originator_message_id=3,
    )
    for message_id, uid in enumerate(
        ["1.2.3.4.5.601", "1.2.3.4.5.6", "1.2.3.4.5.61", "9.8.7.6.5.432", "1.2.3.4.5.60", "1.2"]
    ):
        command = replace(base, message_id=message_id + 7, affected_sop_instance_uid=uid)
        assert Command.decode(command.encode()) == command
        assert Command.decode(memoryview(command.encode())) == command


@pytest.mark.parametrize("message_id", [None, 1, 0xFFFF])
@pytest.mark.parametrize("originator", [None, ("MOVER", 7)])
@pytest.mark.parametrize("priority", [Priority.MEDIUM, Priority.HIGH])
def test_c_store_rq_is_the_command_its_fields_say(
    message_id: int | None, originator: tuple[str, int] | None, priority: int
) -> None:
    # c_store_rq builds without Command's __init__: the same object all the same.
    made = c_store_rq(
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4",
        message_id=message_id,
        priority=priority,
        move_originator=originator,
    )
    assert made == Command(
        CommandField.C_STORE_RQ,
        message_id=message_id,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.3.4",
        priority=priority,
        command_data_set_type=DATASET_PRESENT,
        move_originator_ae_title=originator[0] if originator else None,
        move_originator_message_id=originator[1] if originator else None,
    )
    assert type(made) is Command and made.has_dataset
    assert Command.decode(made.encode()) == made


def _same_length_uid(uid: str, salt: int) -> str:
    """Another UID of the same length: its digits shifted by ``salt``."""
    return "".join(str((int(c) + salt) % 10) if c.isdigit() else c for c in uid)


@ROUND_TRIP
@given(s.commands, st.lists(s.u16, min_size=8, max_size=8), st.integers(1, 9))
def test_a_learned_shape_decodes_like_the_full_parser(
    command: Command, ids: list[int], salt: int
) -> None:
    # Command.decode learns the first command's shape and then reads only
    # the values that may vary (IDs, status, counts, instance UIDs of one
    # length) into a copy of it: every other command of that shape must
    # come out as the full element-by-element parser reads it.
    from adicom.dimse import commands

    commands._SHAPES.clear()
    commands._DECODED.clear()
    Command.decode(command.encode())
    changes: dict[str, Any] = {
        name: value
        for name, value in zip(
            (
                "message_id",
                "message_id_being_responded_to",
                "status",
                "number_of_remaining_suboperations",
                "number_of_completed_suboperations",
                "number_of_failed_suboperations",
                "number_of_warning_suboperations",
                "move_originator_message_id",
            ),
            ids,
            strict=True,
        )
        if getattr(command, name) is not None
    }
    for name in ("affected_sop_instance_uid", "requested_sop_instance_uid"):
        if getattr(command, name) is not None:
            changes[name] = _same_length_uid(getattr(command, name), salt)
    varied = replace(command, **changes)
    raw = varied.encode()
    full, _ = Command._decode(raw)
    assert Command.decode(raw) == full
    assert Command.decode(memoryview(bytearray(raw))) == full
    assert full == Command.decode(varied.encode())


@ROUND_TRIP
@given(s.commands, st.lists(st.integers(0, 0x2FFFF), min_size=4, max_size=4))
def test_a_counts_template_encodes_as_the_general_encoder(
    command: Command, counts: list[int]
) -> None:
    # Any command carrying the four counts, whatever else it holds (other
    # elements, UIDs of any length): the template's bytes are those of the
    # command with the counts set, each capped at 65535 (US, PS3.5 6.2).
    names = (
        "number_of_remaining_suboperations",
        "number_of_completed_suboperations",
        "number_of_failed_suboperations",
        "number_of_warning_suboperations",
    )
    zeros: dict[str, Any] = dict.fromkeys(names, 0)
    template = CountsTemplate(replace(command, **zeros))
    for shift in range(2):  # a template serves again and again
        these = [(c + shift) for c in counts]
        capped: dict[str, Any] = {
            name: min(c, 0xFFFF) for name, c in zip(names, these, strict=True)
        }
        assert template.encode(*these) == replace(command, **capped).encode()


def test_a_shape_with_a_uid_element_given_twice_decodes_like_the_full_parser() -> None:
    # A peer may repeat an element; the last one wins in the full parser,
    # and the learned shape must agree (and decode that UI value once).
    def raw(first: bytes, second: bytes, message_id: int) -> bytes:
        body = (
            struct.pack("<HHLH", 0, 0x0100, 2, CommandField.C_STORE_RQ)
            + struct.pack("<HHLH", 0, 0x0110, 2, message_id)
            + struct.pack("<HHLH", 0, 0x0800, 2, 0)
            + struct.pack("<HHL", 0, 0x1000, len(first))
            + first
            + struct.pack("<HHL", 0, 0x1000, len(second))
            + second
        )
        return struct.pack("<HHLL", 0, 0, 4, len(body)) + body

    from adicom.dimse import commands

    commands._SHAPES.clear()
    commands._DECODED.clear()
    pairs = [
        (b"1.2.3.4\0", b"1.2.3.5\0"),
        (b"9.8.7.6\0", b"5.4.3.2\0"),
        (b"1.1.1.1\0", b"2.2.2.2\0"),
    ]
    for message_id, (first, second) in enumerate(pairs):
        data = raw(first, second, message_id + 1)
        full, _ = Command._decode(data)
        assert full.affected_sop_instance_uid == second.rstrip(b"\0").decode()
        assert Command.decode(data) == full


def test_learned_shapes_build_their_commands_without_the_general_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A learned shape makes its Command with a builder of its own, compiled
    # once per set of varying fields and shared by every shape with that set
    # (C-GET and C-MOVE pending responses, say); values received are only
    # ever its arguments or its closure, never its code.
    from adicom.dimse import commands

    commands._SHAPES.clear()
    commands._DECODED.clear()
    commands._BUILDERS.clear()

    def pending(field: CommandField, sop_class: str, remaining: int) -> Command:
        return Command(
            field,
            message_id_being_responded_to=3,
            affected_sop_class_uid=sop_class,
            status=0xFF00,
            number_of_remaining_suboperations=remaining,
            number_of_completed_suboperations=1,
            number_of_failed_suboperations=0,
            number_of_warning_suboperations=0,
            error_comment="a 'quote\"\n) and more",
        )

    get_rsp = CommandField.C_GET_RSP
    move_rsp = CommandField.C_MOVE_RSP
    Command.decode(pending(get_rsp, "1.2.840.10008.5.1.4.1.2.2.3", 9).encode())
    Command.decode(pending(move_rsp, "1.2.840.10008.5.1.4.1.2.2.2", 9).encode())
    assert len(commands._BUILDERS) == 1

    def refused(values: object) -> Command:
        raise AssertionError("a learned shape went through _build")

    monkeypatch.setattr(commands, "_build", refused)
    for field, sop_class in (
        (get_rsp, "1.2.840.10008.5.1.4.1.2.2.3"),
        (move_rsp, "1.2.840.10008.5.1.4.1.2.2.2"),
    ):
        command = pending(field, sop_class, 7)
        decoded = Command.decode(command.encode())
        assert decoded == command and type(decoded) is Command
    monkeypatch.undo()
    assert (
        Command.decode(pending(get_rsp, "1.2.840.10008.5.1.4.1.2.2.3", 5).encode())
        == (Command._decode(pending(get_rsp, "1.2.840.10008.5.1.4.1.2.2.3", 5).encode())[0])
    )


def test_new_kinds_of_command_past_the_builders_cache_are_decoded_without_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Compiling a shape's builder costs ~15 decodes: with the cache full, a
    # peer that sends a new kind of command each time gets the full parser,
    # not a compile per command; the kinds already cached keep their builders.
    from adicom.dimse import commands

    commands._SHAPES.clear()
    commands._DECODED.clear()
    commands._BUILDERS.clear()
    monkeypatch.setattr(commands, "_BUILDERS_SIZE", 2)
    echo = Command(CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid="1.2.840.10008.1.1")
    Command.decode(echo.encode())  # one kind: Message ID varies
    store = c_store_rq("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", message_id=2)
    Command.decode(store.encode())  # another: Message ID and the instance UID
    assert len(commands._BUILDERS) == 2
    compiled: list[object] = []
    real = commands._builder

    def counted(signature: tuple[tuple[int, bool], ...]) -> Any:
        compiled.append(signature)
        return real(signature)

    monkeypatch.setattr(commands, "_builder", counted)
    for remaining in range(5):
        pending = Command(
            CommandField.C_GET_RSP,
            message_id_being_responded_to=3,
            affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.3",
            status=0xFF00,
            number_of_remaining_suboperations=remaining,
            number_of_completed_suboperations=1,
            number_of_failed_suboperations=0,
            number_of_warning_suboperations=0,
        )
        assert Command.decode(pending.encode()) == pending
    assert compiled == []
    assert len(commands._BUILDERS) == 2
    # The kinds cached still take their builders.
    again = replace(echo, message_id=9)
    assert Command.decode(again.encode()) == again
    assert compiled == []


@pytest.mark.parametrize("repeats, comment", [(11, 0), (1, 1200)], ids=["repeated", "long"])
def test_commands_a_peer_bloats_are_decoded_in_full_and_never_learned(
    repeats: int, comment: int
) -> None:
    # A Message ID given 11 times (PS3.5 7.1 allows it once), or a command
    # over 1 KiB: learning its shape would cost in proportion to the peer's
    # bytes, every time the cache turned over. Such a command is decoded in
    # full each time, as the last of each element says, and nothing is kept.
    from adicom.dimse import commands

    def raw(message_id: int) -> bytes:
        body = struct.pack("<HHLH", 0, 0x0100, 2, CommandField.C_ECHO_RQ)
        body += struct.pack("<HHLH", 0, 0x0110, 2, message_id) * repeats
        body += struct.pack("<HHLH", 0, 0x0800, 2, 0x0101)
        if comment:
            body += struct.pack("<HHL", 0, 0x0902, comment) + b"x" * comment
        return struct.pack("<HHLL", 0, 0, 4, len(body)) + body

    commands._SHAPES.clear()
    commands._DECODED.clear()
    for message_id in range(1, 6):
        command = Command.decode(raw(message_id))
        assert command.message_id == message_id
        assert command.command_field == CommandField.C_ECHO_RQ
    assert len(raw(1)) not in commands._SHAPES
