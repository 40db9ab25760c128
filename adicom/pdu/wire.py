"""The pieces every PDU is made of: headers, items, fields (PS3.8 9.3).

Shared by :mod:`adicom.pdu.items` and :mod:`adicom.pdu.pdus`; not part of
:mod:`adicom.pdu`'s public API.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

from adicom.errors import RemoteProtocolError

_T = TypeVar("_T")

#: The one DICOM application context name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

PDU_HEADER = struct.Struct(">BxL")  # PDU type, reserved, length (PS3.8 9.3.1)
ITEM_HEADER = struct.Struct(">BxH")  # item type, reserved, length
U16 = struct.Struct(">H")
U32 = struct.Struct(">L")
PDV_HEADER = struct.Struct(">LBB")  # PDV item length, context ID, message control header
#: A P-DATA-TF PDU's header and its first PDV's, packed at once.
PDATA_HEADER = struct.Struct(">BxLLBB")


def invalid(message: str, reason: int = 6) -> RemoteProtocolError:
    """The error for bytes that are not a valid PDU (PS3.8 Table 9-26 reason, default 6)."""
    return RemoteProtocolError(message, abort_reason=reason)


def read_uid(raw: bytes | memoryview) -> str:
    """A UID field's value, a trailing NUL or space tolerated (PS3.8 Annex F)."""
    try:
        return bytes(raw).rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        raise invalid(f"UID is not ASCII: {bytes(raw)[:64]!r}") from None


def read_ae(raw: bytes | memoryview) -> str:
    """An AE title field's value, without padding."""
    # The default repertoire is ASCII (PS3.5 6.1.2); a stray byte becomes
    # "?" so the title can still be logged and echoed in an A-ASSOCIATE-AC.
    return bytes(raw).decode("ascii", "replace").replace("\ufffd", "?").strip(" \0")


def ae_bytes(title: str) -> bytes:
    """An AE title as its 16-byte, space-padded field (PS3.5 6.2)."""
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(16)


def item(item_type: int, payload: bytes) -> bytes:
    """An item: type, reserved byte, 2-byte length, payload."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} is {len(payload)} bytes, over 65535")
    return ITEM_HEADER.pack(item_type, len(payload)) + payload


def length_value(data: bytes) -> bytes:
    """A 2-byte length followed by the data (used inside user info sub-items)."""
    return U16.pack(len(data)) + data


def split_items(data: memoryview) -> list[tuple[int, memoryview]]:
    """Split a run of items (type, reserved, 2-byte length, value) into pairs."""
    out: list[tuple[int, memoryview]] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise invalid(f"{end - pos} trailing bytes where an item header was expected")
        item_type, length = ITEM_HEADER.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise invalid(f"item 0x{item_type:02X} claims {length} bytes but {end - pos} remain")
        out.append((item_type, data[pos : pos + length]))
        pos += length
    return out


class Cursor:
    """Reads the length-prefixed fields of user information sub-items."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: memoryview, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes; raises if the sub-item ends first."""
        if self.pos + n > len(self.data):
            raise invalid(f"{self.what} sub-item is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        """The next byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """The next 2-byte big endian number."""
        value: int = U16.unpack(self.take(2))[0]
        return value

    def lv(self) -> memoryview:
        """The next length-prefixed field."""
        return self.take(self.u16())

    def rest(self) -> memoryview:
        """What remains."""
        return self.take(len(self.data) - self.pos)


def frozen_builder(cls: type[_T]) -> Callable[..., _T]:
    """A fast constructor of the frozen, slotted dataclass ``cls``: every field, in order.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (its own ``__setattr__`` refuses); a class with
    the same slots and no such guard takes them as plain stores, and then
    becomes ``cls`` (the same layout, so Python allows the class change).
    That is two to three times faster, for the objects made per PDU or
    message received. ``cls`` must have no ``__post_init__`` and no
    ``InitVar``; the builder is checked once, here.
    """
    names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    twin = type(f"_{cls.__name__}Slots", (), {"__slots__": names})
    source = (
        f"def build({', '.join(names)}):\n"
        "    _o = _new(_twin)\n"
        + "".join(f"    _o.{name} = {name}\n" for name in names)
        + "    _o.__class__ = _cls\n"
        "    return _o\n"
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": cls}
    exec(source, namespace)  # the names are the dataclass's own fields
    build: Callable[..., _T] = namespace["build"]
    probe = build(*range(len(names)))
    if type(probe) is not cls or [getattr(probe, n) for n in names] != list(range(len(names))):
        raise TypeError(f"{cls.__name__} cannot be built field by field")  # pragma: no cover
    return build
