"""DIMSE messages (PS3.7 Chapter 9, Annex E): command sets, statuses, PDV framing.

A DIMSE message is a command set, optionally followed by a data set, each
carried in one or more PDVs on one presentation context (PS3.8 Annex E).

Command sets are always Implicit VR Little Endian group 0000 elements
(PS3.7 6.3.1). They are small, fixed in shape and on every message's path, so
they have their own codec here instead of a round trip through pydicom's
general data set reader; data sets are pydicom's business.

Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from adicom.errors import RemoteProtocolError

__all__ = [
    "NO_DATASET",
    "Command",
    "CommandField",
    "CommandReceived",
    "DatasetReader",
    "DataReceived",
    "MessageAssembler",
    "Priority",
    "StatusCategory",
    "describe_status",
    "fragment_message",
    "status_category",
]


class CommandField(enum.IntEnum):
    """Values of Command Field (0000,0100), PS3.7 Table E.1-1 and 9.3."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    C_CANCEL_RQ = 0x0FFF


class Priority(enum.IntEnum):
    """Priority (0000,0700) of C-STORE, C-FIND, C-GET and C-MOVE requests."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


#: Command Data Set Type (0000,0800) value meaning "no data set" (PS3.7 E.1-1);
#: any other value means a data set follows.
NO_DATASET = 0x0101


class StatusCategory(enum.Enum):
    """The classes of DIMSE status codes (PS3.7 Annex C)."""

    SUCCESS = "success"
    PENDING = "pending"
    CANCEL = "cancel"
    WARNING = "warning"
    FAILURE = "failure"


_WARNING_CODES = frozenset({0x0001, 0x0107, 0x0116})


def status_category(status: int) -> StatusCategory:
    """Classify a DIMSE status code (PS3.7 C.1 to C.5 and Annex C.4 of PS3.4)."""
    if status == 0x0000:
        return StatusCategory.SUCCESS
    if status in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    if status == 0xFE00:
        return StatusCategory.CANCEL
    if status in _WARNING_CODES or 0xB000 <= status <= 0xBFFF:
        return StatusCategory.WARNING
    return StatusCategory.FAILURE


# Names of the status codes, as PS3.7 Annex C and the service classes of
# PS3.4 (B.2.3 storage, C.4.1.1.4 find, C.4.2.1.5 move, C.4.3.1.4 get) say.
_STATUS_NAMES: dict[int, str] = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes are not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0x0110: "Failure: processing failure",
    0x0111: "Failure: duplicate SOP instance",
    0x0112: "Failure: no such SOP instance",
    0x0117: "Failure: invalid SOP instance",
    0x0118: "Failure: no such SOP class",
    0x0119: "Failure: class-instance conflict",
    0x0120: "Failure: missing attribute",
    0x0121: "Failure: missing attribute value",
    0x0122: "Failure: SOP class not supported",
    0x0124: "Refused: not authorized",
    0x0210: "Failure: duplicate invocation",
    0x0211: "Failure: unrecognized operation",
    0x0212: "Failure: mistyped argument",
    0x0213: "Failure: resource limitation",
    0xA701: "Refused: out of resources, unable to calculate number of matches",
    0xA702: "Refused: out of resources, unable to perform sub-operations",
    0xA801: "Refused: move destination unknown",
    0xB000: "Warning: coercion of data elements, or sub-operations completed with failures",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0xFE00: "Cancel: operation terminated by cancel request",
    0xFF00: "Pending",
    0xFF01: "Pending: optional keys not supported",
}


def describe_status(status: int) -> str:
    """Name a DIMSE status code in the words of PS3.4 and PS3.7."""
    name = _STATUS_NAMES.get(status)
    if name is not None:
        return name
    high = status & 0xFF00
    if high == 0xA700:
        return "Refused: out of resources"
    if high == 0xA900:
        return "Error: data set or identifier does not match SOP class"
    if status & 0xF000 == 0xC000:
        return "Error: cannot understand, or unable to process"
    category = status_category(status)
    return f"{category.value.capitalize()}: status 0x{status:04X}"


# --------------------------------------------------------------------------
# Command set codec

_US, _UL, _UI, _AE, _LO, _AT = "US", "UL", "UI", "AE", "LO", "AT"

# (element of group 0000, VR, Command attribute name); PS3.7 Table E.1-1.
_ELEMENTS: tuple[tuple[int, str, str], ...] = (
    (0x0002, _UI, "affected_sop_class_uid"),
    (0x0003, _UI, "requested_sop_class_uid"),
    (0x0100, _US, "command_field"),
    (0x0110, _US, "message_id"),
    (0x0120, _US, "message_id_being_responded_to"),
    (0x0600, _AE, "move_destination"),
    (0x0700, _US, "priority"),
    (0x0800, _US, "command_data_set_type"),
    (0x0900, _US, "status"),
    (0x0901, _AT, "offending_element"),
    (0x0902, _LO, "error_comment"),
    (0x0903, _US, "error_id"),
    (0x1000, _UI, "affected_sop_instance_uid"),
    (0x1001, _UI, "requested_sop_instance_uid"),
    (0x1020, _US, "number_of_remaining_suboperations"),
    (0x1021, _US, "number_of_completed_suboperations"),
    (0x1022, _US, "number_of_failed_suboperations"),
    (0x1023, _US, "number_of_warning_suboperations"),
    (0x1030, _AE, "move_originator_ae_title"),
    (0x1031, _US, "move_originator_message_id"),
)
_BY_ELEMENT = {element: (vr, name) for element, vr, name in _ELEMENTS}
_TAG = struct.Struct("<HHL")  # group, element, value length (Implicit VR LE)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


@dataclass(frozen=True, slots=True)
class Command:
    """A DIMSE command set: the group 0000 elements of PS3.7 Table E.1-1.

    Fields left as None are absent from the encoded command. Elements this
    class does not name (for example of the DIMSE-N services) are kept in
    ``other`` as (element, raw value) pairs.
    """

    command_field: int
    message_id: int | None = None
    message_id_being_responded_to: int | None = None
    affected_sop_class_uid: str | None = None
    requested_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    priority: int | None = None
    command_data_set_type: int = NO_DATASET
    status: int | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    error_id: int | None = None
    move_destination: str | None = None
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    other: tuple[tuple[int, bytes], ...] = ()

    @property
    def has_dataset(self) -> bool:
        """True when a data set follows this command (PS3.7 E.1-1, (0000,0800))."""
        return self.command_data_set_type != NO_DATASET

    @property
    def is_response(self) -> bool:
        """True for the *-RSP commands (bit 15 of the command field)."""
        return bool(self.command_field & 0x8000)

    def encode(self) -> bytes:
        """Encode as Implicit VR Little Endian, Command Group Length first."""
        parts: list[bytes] = []
        others = dict(self.other)
        for element, vr, name in _ELEMENTS:
            value = getattr(self, name)
            if value is None:
                continue
            while others and min(others) < element:
                low = min(others)
                parts.append(_TAG.pack(0, low, len(others[low])) + others.pop(low))
            raw = _encode_value(vr, value)
            parts.append(_TAG.pack(0, element, len(raw)) + raw)
        for low in sorted(others):
            parts.append(_TAG.pack(0, low, len(others[low])) + others[low])
        body = b"".join(parts)
        return _TAG.pack(0, 0, 4) + _U32.pack(len(body)) + body

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Command:
        """Parse an encoded command set; raises RemoteProtocolError if malformed."""
        values: dict[str, Any] = {}
        other: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 8:
                raise _bad("command set ends inside an element header")
            group, element, length = _TAG.unpack_from(data, pos)
            pos += 8
            if group != 0 or length > end - pos:
                raise _bad(f"command set element ({group:04X},{element:04X}) is malformed")
            raw = bytes(data[pos : pos + length])
            pos += length
            known = _BY_ELEMENT.get(element)
            if known is None:
                if element != 0x0000:
                    other.append((element, raw))
                continue
            vr, name = known
            values[name] = _decode_value(vr, raw, element)
        if "command_field" not in values:
            raise _bad("command set has no Command Field (0000,0100)")
        return cls(other=tuple(other), **values)

    def describe(self) -> str:
        """A short human-readable form for logs."""
        try:
            name = CommandField(self.command_field).name.replace("_", "-")
        except ValueError:
            name = f"command 0x{self.command_field:04X}"
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("command_field", "other") and getattr(self, f.name) is not None
        ]
        return f"{name}({', '.join(shown)})"


def c_store_rq(
    sop_class_uid: str,
    sop_instance_uid: str,
    *,
    message_id: int | None = None,
    priority: int = Priority.MEDIUM,
    move_originator: tuple[str, int] | None = None,
) -> Command:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1).

    ``move_originator`` (AE title, Message ID) marks a C-MOVE sub-operation.
    """
    return Command(
        CommandField.C_STORE_RQ,
        message_id=message_id,
        affected_sop_class_uid=sop_class_uid,
        affected_sop_instance_uid=sop_instance_uid,
        priority=priority,
        command_data_set_type=0x0000,
        move_originator_ae_title=move_originator[0] if move_originator else None,
        move_originator_message_id=move_originator[1] if move_originator else None,
    )


class CountsTemplate:
    """A response command encoded once; each use writes in its sub-operation counts.

    Pending C-GET and C-MOVE responses differ only in the four counts
    (0000,1020)-(0000,1023), each a US value (PS3.7 9.3.3.2, 9.3.4.2), so
    they need not be built and encoded again for every sub-operation.
    """

    _ELEMENTS = (0x1020, 0x1021, 0x1022, 0x1023)  # remaining, completed, failed, warning

    def __init__(self, command: Command) -> None:
        self._encoded = bytearray(command.encode())
        self._offsets: list[int] = []
        pos = 8 + 4  # after the Command Group Length element
        while pos < len(self._encoded):
            _, element, length = _TAG.unpack_from(self._encoded, pos)
            if element in self._ELEMENTS:
                self._offsets.append(pos + 8)
            pos += 8 + length
        if len(self._offsets) != len(self._ELEMENTS):
            raise ValueError("the command carries no sub-operation counts")

    def encode(self, remaining: int, completed: int, failed: int, warning: int) -> bytes:
        """The command with these counts (a count over 65535 is sent as 65535)."""
        counts = (remaining, completed, failed, warning)
        for offset, value in zip(self._offsets, counts, strict=True):
            _U16.pack_into(self._encoded, offset, min(value, 0xFFFF))
        return bytes(self._encoded)


def _bad(message: str) -> RemoteProtocolError:
    # A DIMSE-level error is still reported as an upper-layer abort reason:
    # "invalid PDU parameter value" (PS3.8 Table 9-26) is the closest.
    return RemoteProtocolError(message, abort_reason=6)


def _encode_value(vr: str, value: Any) -> bytes:
    if vr == _US:
        return _U16.pack(value)
    if vr == _UL:
        return _U32.pack(value)
    if vr == _AT:
        return b"".join(_U16.pack(t >> 16) + _U16.pack(t & 0xFFFF) for t in value)
    raw = str(value).encode("ascii")
    if len(raw) % 2:
        # PS3.5 6.2: UI pads with a NUL, the text VRs with a space.
        raw += b"\0" if vr == _UI else b" "
    return raw


def _decode_value(vr: str, raw: bytes, element: int) -> Any:
    try:
        if vr == _US:
            return _U16.unpack(raw)[0]
        if vr == _UL:
            return _U32.unpack(raw)[0]
        if vr == _AT:
            return tuple(
                (_U16.unpack_from(raw, i)[0] << 16) | _U16.unpack_from(raw, i + 2)[0]
                for i in range(0, len(raw) - 3, 4)
            )
    except struct.error:
        raise _bad(f"element (0000,{element:04X}) has {len(raw)} bytes for VR {vr}") from None
    # Stray non-ASCII bytes become "?" so a response can echo the value.
    text = raw.decode("ascii", "replace").replace("\ufffd", "?")
    return text.rstrip("\0 ") if vr == _UI else text.strip(" \0")


# --------------------------------------------------------------------------
# Fragmenting and reassembling messages (PS3.8 Annex E)


#: The largest P-DATA-TF PDU we send, whatever the peer accepts (0 included):
#: big enough that headers and writes cost nothing, small enough that a data
#: set read from a file is never held whole.
MAX_SEND_PDU = 1 << 20


class DatasetReader(Protocol):
    """A data set read as it is sent (a file from its data set's first byte)."""

    @property
    def size(self) -> int:
        """How many bytes will be read in all."""
        ...

    def read(self, n: int, /) -> bytes:
        """The next ``n`` bytes."""
        ...


def fragment_message(
    context_id: int,
    command: bytes,
    dataset: bytes | memoryview | DatasetReader | None,
    max_pdu: int,
) -> Iterator[list[tuple[int, int, bytes | memoryview]]]:
    """Split a message into P-DATA-TF PDUs that fit the peer's maximum length.

    Yields, PDU by PDU, the (context ID, message control header, data)
    triples that :func:`adicom.pdu.encode_pdata` encodes. ``max_pdu`` is the
    maximum length the peer announced (0: no limit); we never send more than
    :data:`MAX_SEND_PDU`. The command and a data set that fits go in the same
    PDU, so a small message is one write. Each PDV costs 6 bytes of the PDU's
    length (PS3.8 9.3.5.1). A :class:`DatasetReader` is read only as its
    PDUs are taken, so a large file is never in memory whole.
    """
    limit = min(max_pdu, MAX_SEND_PDU) if max_pdu else MAX_SEND_PDU
    if limit < 8:
        raise ValueError(f"maximum PDU length {max_pdu} cannot carry a PDV")
    pdu: list[tuple[int, int, bytes | memoryview]] = []
    room = limit
    pieces: list[tuple[bytes | memoryview | DatasetReader, bool]] = [(command, True)]
    if dataset is not None:
        pieces.append((dataset, False))
    for data, is_command in pieces:
        if isinstance(data, bytes | bytearray | memoryview):
            view: memoryview | None = memoryview(data)
            total = len(data)
            reader = None
        else:
            view, total, reader = None, data.size, data
        pos = 0
        while True:
            if room < 6 + (pos < total):  # room for a PDV header and a byte of data
                yield pdu
                pdu, room = [], limit
            take = min(total - pos, room - 6)
            if view is not None:
                piece: bytes | memoryview = view[pos : pos + take]
            else:
                assert reader is not None
                piece = reader.read(take)
                if len(piece) != take:
                    raise OSError(
                        f"data set source ended after {pos + len(piece)} of {total} bytes"
                    )
            last = pos + take >= total
            pdu.append((context_id, is_command | (last << 1), piece))
            room -= take + 6
            pos += take
            if last:
                break
    if pdu:
        yield pdu


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole command set arrived on a presentation context."""

    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class DataReceived:
    """A fragment of the data set of the message whose command came last."""

    context_id: int
    data: bytes | memoryview
    last: bool


class MessageAssembler:
    """Turns PDVs into DIMSE message events, checking their order (PS3.8 E.2).

    A command's fragments are gathered (command sets are small); data set
    fragments are passed on as they come, so the caller decides whether to
    keep them in memory or stream them elsewhere.
    """

    __slots__ = ("_command_parts", "_context", "_expect_data")

    def __init__(self) -> None:
        self._command_parts: list[bytes | memoryview] = []
        self._context: int | None = None
        self._expect_data = False

    @property
    def idle(self) -> bool:
        """True between messages."""
        return self._context is None

    def feed(
        self, context_id: int, is_command: bool, is_last: bool, data: bytes | memoryview
    ) -> CommandReceived | DataReceived | None:
        """Take one PDV; return what it completes, if anything."""
        if self._context is not None and context_id != self._context:
            raise _bad(
                f"PDV on presentation context {context_id} in the middle of a message "
                f"on context {self._context}"
            )
        if is_command:
            if self._expect_data:
                raise _bad("a command PDV arrived where data set fragments were expected")
            self._context = context_id
            self._command_parts.append(data)
            if not is_last:
                return None
            raw = b"".join(self._command_parts)
            self._command_parts = []
            command = Command.decode(raw)
            if command.has_dataset:
                self._expect_data = True
            else:
                self._context = None
            return CommandReceived(context_id, command)
        if not self._expect_data:
            raise _bad("a data set PDV arrived without a command announcing one")
        if is_last:
            self._expect_data = False
            self._context = None
        return DataReceived(context_id, data, is_last)
