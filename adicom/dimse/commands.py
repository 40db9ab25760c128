"""DIMSE command sets (PS3.7 Chapter 9, Annex E): the group 0000 elements.

Command sets are always Implicit VR Little Endian group 0000 elements
(PS3.7 6.3.1). They are small, fixed in shape and on every message's path, so
they have their own codec here instead of a round trip through pydicom's
general data set reader; data sets are pydicom's business.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from operator import attrgetter
from typing import Any

from adicom.errors import RemoteProtocolError

__all__ = [
    "DATASET_PRESENT",
    "NO_DATASET",
    "Command",
    "CommandField",
    "CountsTemplate",
    "Priority",
    "RequestTemplate",
    "ResponseTemplate",
    "c_store_rq",
    "is_n",
    "malformed",
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
    # DIMSE-N (PS3.7 10.3)
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150

    @property
    def is_n(self) -> bool:
        """True for the DIMSE-N commands (PS3.7 Chapter 10)."""
        return is_n(self)


def is_n(command_field: int) -> bool:
    """True when a Command Field value is a DIMSE-N request or response (known or not)."""
    return 0x0100 <= (command_field & 0x7FFF) <= 0x01FF


class Priority(enum.IntEnum):
    """Priority (0000,0700) of C-STORE, C-FIND, C-GET and C-MOVE requests."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


#: Command Data Set Type (0000,0800) value meaning "no data set" (PS3.7 E.1-1);
#: any other value means a data set follows.
NO_DATASET = 0x0101
#: The Command Data Set Type adicom sends when a data set follows (any value
#: but NO_DATASET says so; 0x0000 is what PS3.7's examples and most peers use).
DATASET_PRESENT = 0x0000


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
    (0x1002, _US, "event_type_id"),
    (0x1005, _AT, "attribute_identifier_list"),
    (0x1008, _US, "action_type_id"),
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
    class does not name (retired ones, say) are kept in ``other`` as
    (element, raw value) pairs.
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
    event_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    action_type_id: int | None = None
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
        if self.other:
            return self._encode_with_other()
        # The hot path (every message sent): one C call reads every field,
        # and each element's header is prepared once (see _ENCODERS).
        parts: list[bytes] = []
        append = parts.append
        size = 0
        for (head, kind), value in zip(_ENCODERS, _ENCODED_FIELDS(self), strict=True):
            if value is None:
                continue
            if kind is _US:
                raw = head + _U16.pack(value)
            else:
                if kind is _UI:  # the common case inline: what _encode_value does
                    body = str(value).encode("ascii")
                    if len(body) % 2:
                        body += b"\0"
                else:
                    body = _encode_value(kind, value)
                raw = head + _U32.pack(len(body)) + body
            append(raw)
            size += len(raw)
        return _GROUP_LENGTH + _U32.pack(size) + b"".join(parts)

    def _encode_with_other(self) -> bytes:
        """:meth:`encode` of a command carrying elements this class does not name."""
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
        return _GROUP_LENGTH + _U32.pack(len(body)) + body

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Command:
        """Parse an encoded command set; raises RemoteProtocolError if malformed."""
        # A stream of identical commands (the pending C-FIND-RSPs of one
        # query, say) is decoded once: a Command is frozen, so one object
        # serves them all.
        key = bytes(data)
        command = _DECODED.get(key)
        if command is not None:
            return command
        # A stream of commands that differ only in their IDs, status,
        # sub-operation counts and SOP Instance UIDs of one length (C-ECHO
        # requests and responses, the pending C-GET / C-MOVE responses of
        # one retrieve, its C-STORE sub-operations) is decoded once per
        # shape: the same bytes but those values, which go into a copy.
        shapes = _SHAPES.get(len(key))
        if shapes is not None:
            for fixed, kept, read, build in shapes:
                if fixed(key) == kept:
                    # The shape's own builder (see _builder) takes the
                    # values read as its arguments.
                    return build(*read(key))
        command, slots = cls._decode(key)
        if (
            slots
            and len(key) <= _SHAPE_MAX_BYTES
            and len(slots) <= len(_VARYING)
            and (shape := _shape(key, slots, list(_ALL_FIELDS(command)))) is not None
        ):
            shapes = _SHAPES.setdefault(len(key), [])
            if len(shapes) >= _SHAPES_PER_LENGTH or len(_SHAPES) > _SHAPES_SIZE:
                # A peer sending ever new shapes: start again.
                _SHAPES.clear()
                shapes = _SHAPES[len(key)] = []
            shapes.append(shape)
        if len(_DECODED) >= _DECODED_SIZE:
            _DECODED.clear()
        _DECODED[key] = command
        return command

    @classmethod
    def _decode(cls, data: bytes) -> tuple[Command, list[tuple[int, int, int, bool]]]:
        """The command, and where its varying values are (see decode).

        Those are the values of the elements in _VARYING (2-byte US, or a
        UI), as (offset, length, index of the field, whether a UI).
        """
        values = list(_DEFAULTS)
        other: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        unpack_tag = _TAG.unpack_from
        slots: list[tuple[int, int, int, bool]] = []
        while pos < end:
            if end - pos < 8:
                raise malformed("command set ends inside an element header")
            group, element, length = unpack_tag(data, pos)
            pos += 8
            if group != 0 or length > end - pos:
                raise malformed(f"command set element ({group:04X},{element:04X}) is malformed")
            known = _DECODERS.get(element)
            if known is None:
                if element != 0x0000:
                    other.append((element, bytes(data[pos : pos + length])))
            else:
                vr, index = known
                if vr is _US and length == 2:
                    values[index] = _U16.unpack_from(data, pos)[0]
                    if element in _VARYING:
                        slots.append((pos, 2, index, False))
                else:
                    values[index] = _decode_value(vr, bytes(data[pos : pos + length]), element)
                    if vr is _UI and element in _VARYING:
                        slots.append((pos, length, index, True))
            pos += length
        if values[0] is None:
            raise malformed("command set has no Command Field (0000,0100)")
        if other:
            values[-1] = tuple(other)
        return _build(values), slots

    def with_message_id(self, message_id: int) -> Command:
        """A copy with another Message ID (what ``dataclasses.replace`` does, faster)."""
        values = list(_ALL_FIELDS(self))
        values[_MESSAGE_ID] = message_id
        return _build(values)

    @property
    def sop_class_uid(self) -> str | None:
        """The SOP class the command is about: Affected, else Requested (PS3.7 10.3)."""
        return self.affected_sop_class_uid or self.requested_sop_class_uid

    @property
    def sop_instance_uid(self) -> str | None:
        """The SOP instance the command is about: Affected, else Requested."""
        return self.affected_sop_instance_uid or self.requested_sop_instance_uid

    @property
    def name(self) -> str:
        """The command's name as PS3.7 writes it ("C-FIND-RQ"), or its code."""
        try:
            return CommandField(self.command_field).name.replace("_", "-")
        except ValueError:
            return f"command 0x{self.command_field:04X}"

    def describe(self) -> str:
        """A short human-readable form for logs."""
        name = self.name
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("command_field", "other") and getattr(self, f.name) is not None
        ]
        return f"{name}({', '.join(shown)})"


#: Commands decoded lately, by their bytes (see Command.decode).
_DECODED: dict[bytes, Command] = {}
_DECODED_SIZE = 64
_Shape = tuple[
    "Callable[[bytes], tuple[Any, ...]]",
    tuple[bytes, ...],
    "Callable[[bytes], tuple[Any, ...]]",
    "Callable[..., Command]",
]
#: Command shapes decoded lately, by length: (what reads the runs of bytes
#: that do not vary (a Struct's unpack_from), and those runs; what reads the
#: varying values; the shape's builder, which makes the Command of the
#: values read: see _builder). See Command.decode.
_SHAPES: dict[int, list[_Shape]] = {}
#: The elements whose values may differ between commands of one shape:
#: Message ID, Message ID Being Responded To, Status, the sub-operation
#: counts, Move Originator Message ID (US), and the Affected / Requested
#: SOP Instance UID (UI, of the same length) (PS3.7 Table E.1-1).
_VARYING = frozenset(
    {0x0110, 0x0120, 0x0900, 0x1000, 0x1001, 0x1020, 0x1021, 0x1022, 0x1023, 0x1031}
)
_SHAPES_PER_LENGTH = 4
#: Shapes are learned of commands up to this long (a C-STORE-RQ is about
#: 160 bytes, a pending C-GET-RSP about 150) and with at most one slot per
#: varying element (PS3.5 7.1: an element occurs once in a data set; a
#: command that repeats one is decoded in full each time): a peer cannot
#: make a shape's mask, reader or builder as large as its command.
_SHAPE_MAX_BYTES = 1024
_SHAPES_SIZE = 64
#: The code of a shape's builder, by which field each value read goes to
#: (see _builder): few per peer (a C-STORE-RQ, a pending C-GET-RSP, ...).
_BUILDERS: dict[tuple[tuple[int, bool], ...], Callable[..., Callable[..., Command]]] = {}
_BUILDERS_SIZE = 64

_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Command))
#: Every field, in the order of the dataclass (one C call: see _build).
_ALL_FIELDS = attrgetter(*_FIELDS)
_DEFAULTS: tuple[Any, ...] = tuple(
    None if f.default is MISSING else f.default for f in fields(Command)
)
_MESSAGE_ID = _FIELDS.index("message_id")
#: The fields encoded, in the order of their elements (PS3.7 Table E.1-1).
_ENCODED_FIELDS = attrgetter(*(name for _, _, name in _ELEMENTS))
#: Per element: the bytes of its header that do not depend on the value (the
#: whole header for US, whose length is always 2), and its VR.
_ENCODERS: tuple[tuple[bytes, str], ...] = tuple(
    (_TAG.pack(0, element, 2) if vr is _US else _TAG.pack(0, element, 0)[:4], vr)
    for element, vr, _ in _ELEMENTS
)
#: Element -> (VR, index of its field).
_DECODERS: dict[int, tuple[str, int]] = {
    element: (vr, _FIELDS.index(name)) for element, vr, name in _ELEMENTS
}
_GROUP_LENGTH = _TAG.pack(0, 0, 4)
_ELEMENT_INDEX = {element: i for i, (element, _, _) in enumerate(_ELEMENTS)}
_INSTANCE_UID_HEAD = _ENCODERS[_ELEMENT_INDEX[0x1000]][0]
_RESPONDED_TO = _FIELDS.index("message_id_being_responded_to")
_INSTANCE_UID = _FIELDS.index("affected_sop_instance_uid")
_AFFECTED_CLASS = _FIELDS.index("affected_sop_class_uid")
_PRIORITY = _FIELDS.index("priority")
_DATASET_TYPE = _FIELDS.index("command_data_set_type")
_ORIGINATOR_AE = _FIELDS.index("move_originator_ae_title")
_ORIGINATOR_ID = _FIELDS.index("move_originator_message_id")


class _Unfrozen:
    """Command's slots, without the frozen ``__setattr__``: see :func:`_build`."""

    __slots__ = _FIELDS


def _shape(
    key: bytes, slots: list[tuple[int, int, int, bool]], template: list[Any]
) -> _Shape | None:
    """A _SHAPES entry for the command ``key``, whose varying values are at ``slots``.

    None when its builder would be compiled anew with the builders' cache
    full: compiling one costs about 15 times a command's decode, so a peer
    that sends a new kind of command each time must not make every decode
    compile. The first _BUILDERS_SIZE kinds (a peer's few, a process's
    dozens) keep theirs; any later kind is decoded in full each time.
    """
    signature = tuple((index, text) for _, _, index, text in slots)
    factory = _BUILDERS.get(signature)
    if factory is None:
        if len(_BUILDERS) >= _BUILDERS_SIZE:
            return None  # before any of the work below
        factory = _BUILDERS[signature] = _builder(signature)
    # The runs of bytes that do not vary, read as bytes and compared in one
    # C call and a tuple compare (an int of the whole command, masked, cost
    # about 1.4k instructions per command, this about half).
    kept: list[bytes] = []
    fixed = ["<"]
    layout = ["<"]
    pos = 0
    for offset, length, _, text in slots:
        if offset > pos:
            kept.append(key[pos:offset])
            fixed.append(f"{offset - pos}s")
        fixed.append(f"{length}x")
        if text:  # read as bytes, then decoded (see _builder)
            layout.append(f"{offset - pos}x{length}s")
        else:
            layout.append(f"{offset - pos}xH")
        pos = offset + length
    if pos < len(key):
        kept.append(key[pos:])
        fixed.append(f"{len(key) - pos}s")
    return (
        struct.Struct("".join(fixed)).unpack_from,
        tuple(kept),
        struct.Struct("".join(layout)).unpack_from,
        factory(*template),
    )


def _builder(signature: tuple[tuple[int, bool], ...]) -> Callable[..., Callable[..., Command]]:
    """The factory of the builders of shapes whose varying values go to ``signature``'s fields.

    ``signature`` lists, for each value a shape reads, the index of its
    field and whether it is UI bytes to decode. The factory takes every
    field's value in the shape's first command (the template) and returns a
    function of the values read that makes the Command as _build does, the
    template's values from its closure, the others from its arguments: one
    call, no list of the 24 values made and unpacked per command (a pending
    C-GET-RSP read six counts and IDs into a copy of the template, then
    picked each field from the two). Its code depends on the signature
    only, never on a value received: compiled once per signature.
    """
    last: dict[int, tuple[int, bool]] = {}
    for read, (index, text) in enumerate(signature):
        last[index] = (read, text)  # a UI element given twice: the last one wins, decoded once
    lines = ["    c = _new(_Unfrozen)"]
    for index, name in enumerate(_FIELDS):
        if index in last:
            read, text = last[index]
            lines.append(
                f"    c.{name} = _decode_ui(v{read})" if text else f"    c.{name} = v{read}"
            )
        else:
            lines.append(f"    c.{name} = t{index}")
    lines += ["    c.__class__ = _Command", "    return c"]
    values = ", ".join(f"v{read}" for read in range(len(signature)))
    template = ", ".join(f"t{index}" for index in range(len(_FIELDS)))
    source = f"def factory({template}):\n  def build({values}):\n"
    source += "\n".join("  " + line for line in lines) + "\n  return build\n"
    names: dict[str, Any] = {
        "_new": object.__new__,
        "_Unfrozen": _Unfrozen,
        "_Command": Command,
        "_decode_ui": _decode_ui,
    }
    exec(compile(source, "<adicom command shape>", "exec"), names)
    factory: Callable[..., Callable[..., Command]] = names["factory"]
    return factory


def _build(values: Sequence[Any]) -> Command:
    """A Command of every field's value, in field order, without its __init__.

    A frozen dataclass's __init__ sets its 24 fields one by one through
    ``object.__setattr__`` (about 2.5 us); a class with the same slots and
    no frozen guard takes them as plain attribute stores, and then becomes
    a Command (same layout, so Python allows the class change): about
    0.4 us. Decoding builds one per message received.
    """
    command: Any = object.__new__(_Unfrozen)
    (
        command.command_field,
        command.message_id,
        command.message_id_being_responded_to,
        command.affected_sop_class_uid,
        command.requested_sop_class_uid,
        command.affected_sop_instance_uid,
        command.requested_sop_instance_uid,
        command.priority,
        command.command_data_set_type,
        command.status,
        command.offending_element,
        command.error_comment,
        command.error_id,
        command.move_destination,
        command.move_originator_ae_title,
        command.move_originator_message_id,
        command.number_of_remaining_suboperations,
        command.number_of_completed_suboperations,
        command.number_of_failed_suboperations,
        command.number_of_warning_suboperations,
        command.event_type_id,
        command.attribute_identifier_list,
        command.action_type_id,
        command.other,
    ) = values
    command.__class__ = Command
    built: Command = command
    return built


# The statement above names Command's fields in their order: keep it so.
_probe = _build(list(range(len(_FIELDS))))
if type(_probe) is not Command or [getattr(_probe, name) for name in _FIELDS] != list(
    range(len(_FIELDS))
):  # pragma: no cover
    raise ImportError("adicom.dimse.commands._build no longer matches Command's fields")
del _probe


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
    # What Command(...) makes of these fields, without its frozen __init__
    # (see _build): one per instance sent.
    values = list(_DEFAULTS)
    values[0] = CommandField.C_STORE_RQ
    values[_MESSAGE_ID] = message_id
    values[_AFFECTED_CLASS] = sop_class_uid
    values[_INSTANCE_UID] = sop_instance_uid
    values[_PRIORITY] = priority
    values[_DATASET_TYPE] = DATASET_PRESENT
    if move_originator:
        values[_ORIGINATOR_AE], values[_ORIGINATOR_ID] = move_originator
    return _build(values)


class CountsTemplate:
    """A response command encoded once; each use writes in its sub-operation counts.

    Pending C-GET and C-MOVE responses differ only in the four counts
    (0000,1020)-(0000,1023), each a US value (PS3.7 9.3.3.2, 9.3.4.2), so
    they need not be built and encoded again for every sub-operation.
    """

    _ELEMENTS = (0x1020, 0x1021, 0x1022, 0x1023)  # remaining, completed, failed, warning

    def __init__(self, command: Command) -> None:
        #: The command as built (its counts are those of the last ``encode``'s caller).
        self.command = command
        encoded = command.encode()
        offsets: list[int] = []
        pos = 8 + 4  # after the Command Group Length element
        while pos < len(encoded):
            _, element, length = _TAG.unpack_from(encoded, pos)
            if element in self._ELEMENTS:
                offsets.append(pos + 8)
            pos += 8 + length
        if len(offsets) != len(self._ELEMENTS):
            raise ValueError("the command carries no sub-operation counts")
        # The bytes around the four counts, and one Struct that packs them
        # and the counts in a single call (per pending response sent).
        cuts = [0, *(at for offset in offsets for at in (offset, offset + 2)), len(encoded)]
        self._pieces = [encoded[cuts[i] : cuts[i + 1]] for i in range(0, len(cuts), 2)]
        self._pack = struct.Struct("<" + "H".join(f"{len(p)}s" for p in self._pieces)).pack

    def encode(self, remaining: int, completed: int, failed: int, warning: int) -> bytes:
        """The command with these counts (a count over 65535 is sent as 65535)."""
        p0, p1, p2, p3, p4 = self._pieces
        return self._pack(
            p0,
            min(remaining, 0xFFFF),
            p1,
            min(completed, 0xFFFF),
            p2,
            min(failed, 0xFFFF),
            p3,
            min(warning, 0xFFFF),
            p4,
        )


class ResponseTemplate:
    """A C-ECHO-RSP or C-STORE-RSP encoded once; each use fills in what differs.

    Those responses differ from one another only in Message ID Being
    Responded To (US) and Affected SOP Instance UID (PS3.7 9.3.1.2,
    9.3.5.2), whose element (0000,1000) comes after every other one of
    theirs, so it is appended. The command field, SOP class and status
    are the template's.
    """

    __slots__ = ("_bare", "_head", "_size", "_tail", "_values", "_with_uid")

    def __init__(self, command_field: int, affected_sop_class_uid: str | None, status: int) -> None:
        command = Command(
            command_field,
            message_id_being_responded_to=0,
            affected_sop_class_uid=affected_sop_class_uid,
            status=status,
        )
        body = command.encode()[12:]  # after the Command Group Length element
        at = body.index(_ENCODERS[_ELEMENT_INDEX[0x0120]][0]) + 8
        self._head, self._tail = body[:at], body[at + 2 :]
        self._size = len(body)
        self._values = list(_ALL_FIELDS(command))
        # Group length element, its value, the bytes before the ID, the ID,
        # the bytes after it; then, with a SOP Instance UID, its element
        # header and value length (the value itself is appended).
        layout = f"<8sL{len(self._head)}sH{len(self._tail)}s"
        self._bare = struct.Struct(layout).pack
        self._with_uid = struct.Struct(layout + "4sL").pack

    def make(self, message_id: int, sop_instance_uid: str | None) -> tuple[Command, bytes]:
        """The response to request ``message_id`` about ``sop_instance_uid``, and its bytes."""
        return self.command(message_id, sop_instance_uid), self.encode(message_id, sop_instance_uid)

    def command(self, message_id: int, sop_instance_uid: str | None) -> Command:
        """The response to request ``message_id`` about ``sop_instance_uid`` (see :meth:`make`)."""
        values = self._values.copy()
        values[_RESPONDED_TO] = message_id
        values[_INSTANCE_UID] = sop_instance_uid
        return _build(values)

    def encode(self, message_id: int, sop_instance_uid: str | None) -> bytes:
        """The bytes of :meth:`make`'s response alone, for a sender that needs no Command."""
        if sop_instance_uid is None:
            return self._bare(_GROUP_LENGTH, self._size, self._head, message_id, self._tail)
        uid = sop_instance_uid.encode("ascii")
        if len(uid) % 2:
            uid += b"\0"  # PS3.5 6.2: UI pads with a NUL
        size = len(uid)
        head = self._with_uid(
            _GROUP_LENGTH,
            self._size + 8 + size,
            self._head,
            message_id,
            self._tail,
            _INSTANCE_UID_HEAD,
            size,
        )
        return head + uid


class RequestTemplate:
    """A request encoded once; each use fills in its Message ID (0000,0110).

    For a request sent again and again that differs only in its Message ID
    (C-ECHO-RQ, PS3.7 9.3.5.1).
    """

    __slots__ = ("_head", "_pack", "_tail", "_values", "command_field")

    def __init__(self, command: Command) -> None:
        encoded = command.with_message_id(0).encode()
        at = encoded.index(_ENCODERS[_ELEMENT_INDEX[0x0110]][0], 12) + 8
        self._head, self._tail = encoded[:at], encoded[at + 2 :]
        self._pack = struct.Struct(f"<{len(self._head)}sH{len(self._tail)}s").pack
        self._values = list(_ALL_FIELDS(command))
        #: The request's Command Field (C-ECHO-RQ, ...).
        self.command_field = command.command_field

    def make(self, message_id: int) -> tuple[Command, bytes]:
        """The request with ``message_id``, and its bytes."""
        values = self._values.copy()
        values[_MESSAGE_ID] = message_id
        return _build(values), self.encode(message_id)

    def encode(self, message_id: int) -> bytes:
        """The bytes of :meth:`make`'s request alone, for a sender that needs no Command."""
        return self._pack(self._head, message_id, self._tail)


def malformed(message: str) -> RemoteProtocolError:
    """The error for a DIMSE message that breaks PS3.7 or PS3.8 Annex E.

    It is answered with an A-ABORT like a bad PDU: the closest reason of
    PS3.8 Table 9-26 is "invalid PDU parameter value" (6).
    """
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


def _decode_ui(raw: bytes) -> str:
    """A UI value as :func:`_decode_value` reads it."""
    # Stray non-ASCII bytes become "?" so a response can echo the value.
    return raw.decode("ascii", "replace").replace("\ufffd", "?").rstrip("\0 ")


def _decode_value(vr: str, raw: bytes, element: int) -> Any:
    try:
        if vr == _US:
            return _U16.unpack(raw)[0]
        if vr == _UL:
            return _U32.unpack(raw)[0]
        if vr == _AT:
            if len(raw) % 4:
                raise struct.error
            return tuple(
                (_U16.unpack_from(raw, i)[0] << 16) | _U16.unpack_from(raw, i + 2)[0]
                for i in range(0, len(raw) - 3, 4)
            )
    except struct.error:
        raise malformed(f"element (0000,{element:04X}) has {len(raw)} bytes for VR {vr}") from None
    if vr == _UI:
        return _decode_ui(raw)
    # Stray non-ASCII bytes become "?" so a response can echo the value.
    return raw.decode("ascii", "replace").replace("\ufffd", "?").strip(" \0")
