"""The seven PDUs of the DICOM upper layer (PS3.8 9.3) and their items.

Encoding is ``pdu.encode()``; decoding goes through :class:`PDUReader`, which
takes bytes in chunks of any size and gives back whole PDUs.

Rules followed here that are easy to miss:

* Reserved fields are sent as zeros (or, in A-ASSOCIATE-AC, echoed as the
  standard asks) and never tested on receipt (PS3.8 9.3: "shall be sent with
  a value 00H ... but not tested to this value when received").
* A PDU's length is checked against our limit as soon as its 6-byte header has
  arrived, before anything of that size is allocated; the body is gathered
  only as its bytes come in.
* UIDs in items are not padded (PS3.8 Annex F); a trailing NUL or space sent
  by a peer is tolerated on receipt. AE titles are 16 bytes, space padded, and
  leading and trailing spaces are not significant (PS3.5 6.2).
* Unknown user information sub-items are kept and sent again as they came, so
  nothing is lost through a decode and encode (PS3.7 D.3.3 lets new sub-items
  appear). Unknown items elsewhere in an A-ASSOCIATE PDU are ignored.

Nothing here does I/O, keeps time or imports asyncio.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from adicom.errors import PDUTooLarge, RemoteProtocolError

__all__ = [
    "APPLICATION_CONTEXT",
    "PDU",
    "PDV",
    "AAbort",
    "AAssociateAC",
    "AAssociateRJ",
    "AAssociateRQ",
    "AReleaseRP",
    "AReleaseRQ",
    "AsyncOperationsWindow",
    "PDUReader",
    "PDataTF",
    "PresentationContextAC",
    "PresentationContextRQ",
    "RoleSelection",
    "SOPClassCommonExtendedNegotiation",
    "SOPClassExtendedNegotiation",
    "UnknownSubItem",
    "UserIdentityAC",
    "UserIdentityRQ",
    "UserInformation",
    "encode_pdata",
]

#: The one DICOM application context name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

_HEADER = struct.Struct(">BxL")  # PDU type, reserved, length (PS3.8 9.3.1)
_ITEM = struct.Struct(">BxH")  # item type, reserved, length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")
_PDV = struct.Struct(">LBB")  # PDV item length, context ID, message control header


def _bad(message: str, reason: int = 6) -> RemoteProtocolError:
    return RemoteProtocolError(message, abort_reason=reason)


def _uid(raw: bytes | memoryview) -> str:
    try:
        return bytes(raw).rstrip(b"\0 ").decode("ascii")
    except UnicodeDecodeError:
        raise _bad(f"UID is not ASCII: {bytes(raw)[:64]!r}") from None


def _ae(raw: bytes | memoryview) -> str:
    # The default repertoire is ASCII (PS3.5 6.1.2); a stray byte becomes
    # "?" so the title can still be logged and echoed in an A-ASSOCIATE-AC.
    return bytes(raw).decode("ascii", "replace").replace("\ufffd", "?").strip(" \0")


def _ae_bytes(title: str) -> bytes:
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(16)


def _item(item_type: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} is {len(payload)} bytes, over 65535")
    return _ITEM.pack(item_type, len(payload)) + payload


def _lv(data: bytes) -> bytes:
    """A 2-byte length followed by the data (used inside user info sub-items)."""
    return _U16.pack(len(data)) + data


def _items(data: memoryview) -> list[tuple[int, memoryview]]:
    """Split a run of items (type, reserved, 2-byte length, value) into pairs."""
    out: list[tuple[int, memoryview]] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise _bad(f"{end - pos} trailing bytes where an item header was expected")
        item_type, length = _ITEM.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise _bad(f"item 0x{item_type:02X} claims {length} bytes but {end - pos} remain")
        out.append((item_type, data[pos : pos + length]))
        pos += length
    return out


class _Cursor:
    """Reads the length-prefixed fields of user information sub-items."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: memoryview, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise _bad(f"{self.what} sub-item is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def lv(self) -> memoryview:
        return self.take(self.u16())

    def rest(self) -> memoryview:
        return self.take(len(self.data) - self.pos)


# ---------------------------------------------------------------------------
# User information sub-items (PS3.7 Annex D.3.3, PS3.8 Annex D)


@dataclass(frozen=True, slots=True)
class AsyncOperationsWindow:
    """Asynchronous operations window sub-item (0x53, PS3.7 D.3.3.3); 0 means unlimited."""

    invoked: int = 1
    performed: int = 1


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU role selection sub-item (0x54, PS3.7 D.3.3.4) for one SOP class.

    In a request the flags say which roles the requestor proposes for itself;
    in an acceptance they say which the acceptor allows it.
    """

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """SOP class extended negotiation sub-item (0x56, PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_information: bytes


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """SOP class common extended negotiation sub-item (0x57, PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """User identity negotiation request sub-item (0x58, PS3.7 D.3.3.7.1).

    ``identity_type``: 1 username, 2 username and passcode, 3 Kerberos,
    4 SAML, 5 JWT.
    """

    identity_type: int
    primary_field: bytes
    secondary_field: bytes = b""
    positive_response_requested: bool = False


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """User identity negotiation acceptance sub-item (0x59, PS3.7 D.3.3.7.2)."""

    server_response: bytes = b""


@dataclass(frozen=True, slots=True)
class UnknownSubItem:
    """A user information sub-item this code does not know, kept as it came."""

    item_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UserInformation:
    """The user information item (0x50, PS3.8 9.3.2.3) of A-ASSOCIATE-RQ and -AC.

    ``maximum_length`` is the largest P-DATA-TF PDU length the sender will
    receive; 0 means no limit (PS3.8 D.1). Required in both PDUs, as is the
    implementation class UID (PS3.7 D.3.3.2).
    """

    maximum_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    async_operations_window: AsyncOperationsWindow | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    sop_class_extended: tuple[SOPClassExtendedNegotiation, ...] = ()
    sop_class_common_extended: tuple[SOPClassCommonExtendedNegotiation, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown: tuple[UnknownSubItem, ...] = ()

    def encode(self) -> bytes:
        """The whole 0x50 item, sub-items in the order PS3.7 D.3.3 lists them."""
        parts = [_item(0x51, _U32.pack(self.maximum_length))]
        parts.append(_item(0x52, self.implementation_class_uid.encode("ascii")))
        if self.async_operations_window is not None:
            w = self.async_operations_window
            parts.append(_item(0x53, _U16.pack(w.invoked) + _U16.pack(w.performed)))
        for role in self.role_selections:
            body = _lv(role.sop_class_uid.encode("ascii"))
            parts.append(_item(0x54, body + bytes((role.scu_role, role.scp_role))))
        if self.implementation_version_name is not None:
            parts.append(_item(0x55, self.implementation_version_name.encode("ascii")))
        for ext in self.sop_class_extended:
            body = _lv(ext.sop_class_uid.encode("ascii")) + ext.application_information
            parts.append(_item(0x56, body))
        for common in self.sop_class_common_extended:
            related = b"".join(_lv(u.encode("ascii")) for u in common.related_general_sop_classes)
            body = (
                _lv(common.sop_class_uid.encode("ascii"))
                + _lv(common.service_class_uid.encode("ascii"))
                + _lv(related)
            )
            parts.append(_item(0x57, body))
        if self.user_identity_rq is not None:
            rq = self.user_identity_rq
            head = bytes((rq.identity_type, rq.positive_response_requested))
            body = head + _lv(rq.primary_field) + _lv(rq.secondary_field)
            parts.append(_item(0x58, body))
        if self.user_identity_ac is not None:
            parts.append(_item(0x59, _lv(self.user_identity_ac.server_response)))
        for unknown in self.unknown:
            parts.append(_item(unknown.item_type, unknown.data))
        return _item(0x50, b"".join(parts))

    @classmethod
    def decode(cls, data: memoryview) -> UserInformation:
        """Parse the value of a 0x50 item."""
        values: dict[str, object] = {}
        roles: list[RoleSelection] = []
        ext: list[SOPClassExtendedNegotiation] = []
        common: list[SOPClassCommonExtendedNegotiation] = []
        unknown: list[UnknownSubItem] = []
        seen_max = False
        for item_type, value in _items(data):
            cur = _Cursor(value, f"user information 0x{item_type:02X}")
            if item_type == 0x51:
                if len(value) != 4:
                    raise _bad(f"maximum length sub-item has {len(value)} bytes, not 4")
                values["maximum_length"] = _U32.unpack(value)[0]
                seen_max = True
            elif item_type == 0x52:
                values["implementation_class_uid"] = _uid(value)
            elif item_type == 0x53:
                values["async_operations_window"] = AsyncOperationsWindow(cur.u16(), cur.u16())
            elif item_type == 0x54:
                uid = _uid(cur.lv())
                roles.append(RoleSelection(uid, bool(cur.u8()), bool(cur.u8())))
            elif item_type == 0x55:
                values["implementation_version_name"] = _ae(value)
            elif item_type == 0x56:
                uid = _uid(cur.lv())
                ext.append(SOPClassExtendedNegotiation(uid, bytes(cur.rest())))
            elif item_type == 0x57:
                sop, service = _uid(cur.lv()), _uid(cur.lv())
                related_cur = _Cursor(cur.lv(), "related general SOP class")
                related: list[str] = []
                while related_cur.pos < len(related_cur.data):
                    related.append(_uid(related_cur.lv()))
                common.append(SOPClassCommonExtendedNegotiation(sop, service, tuple(related)))
            elif item_type == 0x58:
                identity_type, positive = cur.u8(), bool(cur.u8())
                primary, secondary = bytes(cur.lv()), bytes(cur.lv())
                values["user_identity_rq"] = UserIdentityRQ(
                    identity_type, primary, secondary, positive
                )
            elif item_type == 0x59:
                values["user_identity_ac"] = UserIdentityAC(bytes(cur.lv()))
            else:
                unknown.append(UnknownSubItem(item_type, bytes(value)))
        if not seen_max:
            # PS3.8 D.1 makes the sub-item mandatory; some old peers omit it.
            # Treat that as "no limit announced" rather than refusing them.
            values["maximum_length"] = 0
        return cls(
            role_selections=tuple(roles),
            sop_class_extended=tuple(ext),
            sop_class_common_extended=tuple(common),
            unknown=tuple(unknown),
            **values,  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------------
# Presentation context items (PS3.8 9.3.2.2, 9.3.3.2)


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """A proposed presentation context (item 0x20): an abstract syntax and its transfer syntaxes.

    ``context_id`` is odd, 1 to 255 (PS3.8 9.3.2.2).
    """

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def encode(self) -> bytes:
        """The item's bytes."""
        body = [bytes((self.context_id, 0, 0, 0)), _item(0x30, self.abstract_syntax.encode())]
        body.extend(_item(0x40, ts.encode("ascii")) for ts in self.transfer_syntaxes)
        return _item(0x20, b"".join(body))

    @classmethod
    def decode(cls, data: memoryview) -> PresentationContextRQ:
        """Parse the value of a 0x20 item."""
        if len(data) < 4:
            raise _bad("presentation context item is shorter than 4 bytes")
        abstract: str | None = None
        transfers: list[str] = []
        for item_type, value in _items(data[4:]):
            if item_type == 0x30:
                abstract = _uid(value)
            elif item_type == 0x40:
                transfers.append(_uid(value))
        if abstract is None:
            raise _bad(f"presentation context {data[0]} has no abstract syntax", reason=6)
        return cls(data[0], abstract, tuple(transfers))


#: Meanings of the result/reason field of a presentation context AC (PS3.8 Table 9-18).
PRESENTATION_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """The acceptor's answer for one presentation context (item 0x21).

    ``result`` is 0 acceptance, 1 user rejection, 2 no reason, 3 abstract
    syntax not supported, 4 transfer syntaxes not supported (PS3.8 Table 9-18).
    The transfer syntax is significant only when accepted.
    """

    context_id: int
    result: int
    transfer_syntax: str = ""

    def encode(self) -> bytes:
        """The item's bytes."""
        body = bytes((self.context_id, 0, self.result, 0))
        body += _item(0x40, self.transfer_syntax.encode("ascii"))
        return _item(0x21, body)

    @classmethod
    def decode(cls, data: memoryview) -> PresentationContextAC:
        """Parse the value of a 0x21 item."""
        if len(data) < 4:
            raise _bad("presentation context item is shorter than 4 bytes")
        transfer = ""
        for item_type, value in _items(data[4:]):
            if item_type == 0x40:
                transfer = _uid(value)
        return cls(data[0], data[2], transfer)


# ---------------------------------------------------------------------------
# The PDUs


@dataclass(frozen=True, slots=True)
class _AssociatePDU:
    called_ae: str
    calling_ae: str
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1

    pdu_type: ClassVar[int]

    def _encode(self, contexts: bytes) -> bytes:
        # PS3.8 9.3.2: version, reserved, called AE, calling AE, 32 reserved bytes.
        fixed = (
            _U16.pack(self.protocol_version)
            + b"\0\0"
            + _ae_bytes(self.called_ae)
            + _ae_bytes(self.calling_ae)
            + bytes(32)
        )
        body = (
            fixed
            + _item(0x10, self.application_context.encode("ascii"))
            + contexts
            + self.user_information.encode()
        )
        return _HEADER.pack(self.pdu_type, len(body)) + body

    @staticmethod
    def _decode_common(body: memoryview, context_type: int) -> tuple[Any, list[memoryview]]:
        """The fields both PDUs share, and the raw presentation context items."""
        if len(body) < 68:
            raise _bad(f"A-ASSOCIATE PDU body is {len(body)} bytes, shorter than 68")
        application_context, contexts, user = _associate_items(_items(body[68:]), context_type)
        fields = {
            "protocol_version": _U16.unpack_from(body, 0)[0],
            "called_ae": _ae(body[4:20]),
            "calling_ae": _ae(body[20:36]),
            "application_context": application_context,
            "user_information": user,
        }
        return fields, contexts


@dataclass(frozen=True, slots=True)
class AAssociateRQ(_AssociatePDU):
    """A-ASSOCIATE-RQ (type 0x01, PS3.8 9.3.2)."""

    presentation_contexts: tuple[PresentationContextRQ, ...] = ()
    pdu_type: ClassVar[int] = 0x01

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return self._encode(b"".join(pc.encode() for pc in self.presentation_contexts))

    @classmethod
    def decode(cls, body: memoryview) -> AAssociateRQ:
        """Parse a PDU body (everything after the 6-byte header)."""
        fields, contexts = cls._decode_common(body, 0x20)
        return cls(
            presentation_contexts=tuple(PresentationContextRQ.decode(c) for c in contexts),
            **fields,
        )


@dataclass(frozen=True, slots=True)
class AAssociateAC(_AssociatePDU):
    """A-ASSOCIATE-AC (type 0x02, PS3.8 9.3.3).

    The called and calling AE titles are echoed from the request: PS3.8 says
    they are sent with the request's values and not tested on receipt.
    """

    presentation_contexts: tuple[PresentationContextAC, ...] = ()
    pdu_type: ClassVar[int] = 0x02

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return self._encode(b"".join(pc.encode() for pc in self.presentation_contexts))

    @classmethod
    def decode(cls, body: memoryview) -> AAssociateAC:
        """Parse a PDU body (everything after the 6-byte header)."""
        fields, contexts = cls._decode_common(body, 0x21)
        return cls(
            presentation_contexts=tuple(PresentationContextAC.decode(c) for c in contexts),
            **fields,
        )


def _associate_items(
    items: list[tuple[int, memoryview]], context_type: int
) -> tuple[str, list[memoryview], UserInformation]:
    application_context: str | None = None
    contexts: list[memoryview] = []
    user: UserInformation | None = None
    for item_type, value in items:
        if item_type == 0x10:
            application_context = _uid(value)
        elif item_type == context_type:
            contexts.append(value)
        elif item_type == 0x50:
            user = UserInformation.decode(value)
        elif item_type in (0x20, 0x21):
            raise _bad(f"presentation context item 0x{item_type:02X} in the wrong PDU", reason=5)
        # PS3.8 9.3.1: other item types are not ours to refuse; ignore them.
    if application_context is None:
        raise _bad("A-ASSOCIATE PDU has no application context item", reason=6)
    if user is None:
        raise _bad("A-ASSOCIATE PDU has no user information item", reason=6)
    return application_context, contexts, user


@dataclass(frozen=True, slots=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ (type 0x03, PS3.8 9.3.4); see :func:`adicom.errors.describe_reject`."""

    result: int
    source: int
    reason: int
    pdu_type: ClassVar[int] = 0x03

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return _HEADER.pack(0x03, 4) + bytes((0, self.result, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> AAssociateRJ:
        """Parse a PDU body."""
        if len(body) < 4:
            raise _bad(f"A-ASSOCIATE-RJ body is {len(body)} bytes, not 4")
        return cls(body[1], body[2], body[3])


@dataclass(frozen=True, slots=True)
class PDV:
    """One presentation data value (PS3.8 9.3.5.1 and Annex E).

    The message control header's bit 0 says command (1) or data set (0),
    bit 1 says last fragment (1) or not (0).
    """

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview

    @property
    def control(self) -> int:
        """The message control header byte (PS3.8 E.2)."""
        return self.is_command | (self.is_last << 1)


def encode_pdata(pdvs: Sequence[tuple[int, int, bytes | memoryview]]) -> list[bytes | memoryview]:
    """Encode one P-DATA-TF PDU from (context ID, control byte, data) triples.

    Returns the pieces to write in order (``writer.writelines``), so large
    data is never copied into a joined buffer.
    """
    total = sum(6 + len(d) for _, _, d in pdvs)
    head = bytearray(_HEADER.pack(0x04, total))
    out: list[bytes | memoryview] = []
    for context_id, control, data in pdvs:
        head += _PDV.pack(len(data) + 2, context_id, control)
        if len(data) > 1024:
            out.append(bytes(head))
            out.append(data)
            head = bytearray()
        else:
            head += data
    if head:
        out.append(bytes(head))
    return out


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF (type 0x04, PS3.8 9.3.5): one or more PDVs."""

    pdvs: tuple[PDV, ...]
    pdu_type: ClassVar[int] = 0x04

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return b"".join(encode_pdata([(p.context_id, p.control, p.data) for p in self.pdvs]))

    @classmethod
    def decode(cls, body: memoryview, max_pdvs: int = 0) -> PDataTF:
        """Parse a PDU body; PDV data are zero-copy views into it.

        ``max_pdvs`` (0: no limit) bounds the PDVs of one PDU, and so the
        work one PDU can cost: PS3.8 sets no limit, but a megabyte of
        one-byte PDVs is 150,000 objects made in one go.
        """
        pdvs: list[PDV] = []
        pos, end = 0, len(body)
        while pos < end:
            if end - pos < 6:
                raise _bad(f"{end - pos} trailing bytes where a PDV header was expected")
            length, context_id, control = _PDV.unpack_from(body, pos)
            if length < 2 or pos + 4 + length > end:
                raise _bad(f"PDV item length {length} does not fit its PDU")
            data = body[pos + 6 : pos + 4 + length]
            pdvs.append(PDV(context_id, bool(control & 1), bool(control & 2), data))
            pos += 4 + length
            if max_pdvs and len(pdvs) >= max_pdvs and pos < end:
                raise _bad(f"a P-DATA-TF PDU carries more than the {max_pdvs} PDVs accepted")
        if not pdvs:
            # PS3.8 9.3.5: "one or more" PDV items.
            raise _bad("P-DATA-TF PDU carries no PDV item")
        return cls(tuple(pdvs))


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    """A-RELEASE-RQ (type 0x05, PS3.8 9.3.6)."""

    pdu_type: ClassVar[int] = 0x05

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return _HEADER.pack(0x05, 4) + bytes(4)

    @classmethod
    def decode(cls, body: memoryview) -> AReleaseRQ:
        """Parse a PDU body (the 4 reserved bytes are not tested)."""
        return cls()


@dataclass(frozen=True, slots=True)
class AReleaseRP:
    """A-RELEASE-RP (type 0x06, PS3.8 9.3.7)."""

    pdu_type: ClassVar[int] = 0x06

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return _HEADER.pack(0x06, 4) + bytes(4)

    @classmethod
    def decode(cls, body: memoryview) -> AReleaseRP:
        """Parse a PDU body (the 4 reserved bytes are not tested)."""
        return cls()


@dataclass(frozen=True, slots=True)
class AAbort:
    """A-ABORT (type 0x07, PS3.8 9.3.8).

    ``source`` 0 service-user, 2 service-provider (1 is reserved); ``reason``
    is significant only for source 2 (PS3.8 Table 9-26).
    """

    source: int = 0
    reason: int = 0
    pdu_type: ClassVar[int] = 0x07

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return _HEADER.pack(0x07, 4) + bytes((0, 0, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> AAbort:
        """Parse a PDU body."""
        if len(body) < 4:
            raise _bad(f"A-ABORT body is {len(body)} bytes, not 4")
        return cls(body[2], body[3])


PDU: TypeAlias = (
    AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort
)

_DECODERS: dict[int, Callable[[memoryview], PDU]] = {
    0x01: AAssociateRQ.decode,
    0x02: AAssociateAC.decode,
    0x03: AAssociateRJ.decode,
    0x04: PDataTF.decode,
    0x05: AReleaseRQ.decode,
    0x06: AReleaseRP.decode,
    0x07: AAbort.decode,
}

#: Largest body accepted for a PDU other than P-DATA-TF. An A-ASSOCIATE-RQ
#: with the full 128 presentation contexts, each with a dozen transfer
#: syntaxes, stays far below this.
MAX_CONTROL_PDU = 1 << 20
#: The most PDVs accepted in one P-DATA-TF PDU. Peers put one to a few in
#: each (a command and its data set; DCMTK and pynetdicom one); this bounds
#: the work of decoding one PDU to a few milliseconds.
MAX_PDVS_PER_PDU = 1024


class PDUReader:
    """Incremental PDU decoder: feed bytes as they arrive, take whole PDUs out.

    ``max_pdata_length`` bounds the length field of P-DATA-TF PDUs (the
    maximum length we announced; 0 means no limit), ``max_control_length``
    that of every other PDU. A length over its bound raises
    :class:`~adicom.errors.PDUTooLarge` as soon as the header is in, before the
    body is gathered.

    Bytes come in through :meth:`feed`, or, for a driver that can read into
    a buffer it is given (``asyncio.BufferedProtocol``), through
    :meth:`get_buffer` and :meth:`buffer_updated`: then the body of a large
    PDU is received straight into the buffer it is decoded from, and its
    bytes are copied once, by the kernel.

    >>> r = PDUReader()
    >>> r.feed(AReleaseRQ().encode()[:3])
    >>> r.next_pdu() is None
    True
    >>> r.feed(AReleaseRQ().encode()[3:])
    >>> r.next_pdu()
    AReleaseRQ()
    """

    __slots__ = (
        "_body",
        "_body_pos",
        "_body_type",
        "_body_view",
        "_buf",
        "_read_size",
        "_staging",
        "max_control_length",
        "max_pdata_length",
        "max_pdvs",
    )

    #: A PDU body at least this long gets a buffer of its own.
    LARGE = 1 << 16
    #: ... unless it is longer than this (a peer that announced no limit
    #: cannot make us allocate more than this ahead of its bytes).
    PREALLOCATE_MAX = 1 << 24
    #: Small PDUs are received into a staging buffer, and every PDU of one
    #: read is decoded in one loop callback. So a read takes room for about
    #: READ_PDUS PDUs of the size last seen, between STAGING_MIN and
    #: STAGING: 64 KiB of C-FIND responses (~180) held a C-FIND SCU's loop
    #: for 3 ms, while 16 KiB reads cost a DCMTK peer's 16 KiB PDUs two
    #: reads each (10% of the C-STORE rate).
    STAGING = 1 << 16
    STAGING_MIN = 1 << 14
    READ_PDUS = 16

    def __init__(
        self,
        max_pdata_length: int = 0,
        max_control_length: int = MAX_CONTROL_PDU,
        max_pdvs: int = MAX_PDVS_PER_PDU,
    ):
        self._buf = bytearray()
        self._body: bytearray | None = None
        self._body_view: memoryview | None = None
        self._body_pos = 0
        self._body_type = 0
        self._staging: memoryview | None = None
        self._read_size = self.STAGING_MIN
        self.max_pdata_length = max_pdata_length
        self.max_control_length = max_control_length
        self.max_pdvs = max_pdvs

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        view = self._body_view
        if view is not None:
            take = min(len(data), len(view) - self._body_pos)
            view[self._body_pos : self._body_pos + take] = data[:take]
            self._body_pos += take
            if take < len(data):
                self._buf += data[take:]
        else:
            self._buf += data

    def get_buffer(self) -> memoryview:
        """Where the next received bytes should go (then call :meth:`buffer_updated`)."""
        view = self._body_view
        if view is not None:
            return view[self._body_pos :]
        size = self._read_size
        staging = self._staging
        if staging is None or len(staging) < size:
            # Grown only when large PDUs come: an idle association keeps 16 KiB.
            staging = self._staging = memoryview(bytearray(size))
        return staging if len(staging) == size else staging[:size]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the buffer :meth:`get_buffer` returned."""
        if self._body_view is not None:
            self._body_pos += nbytes
        else:
            assert self._staging is not None
            self._buf += self._staging[:nbytes]

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their PDU."""
        return len(self._buf) + self._body_pos

    def next_pdu(self) -> PDU | None:
        """Return the next whole PDU, or None if more bytes are needed.

        Raises :class:`~adicom.errors.RemoteProtocolError` for bytes that are
        not a valid PDU; the reader must not be used after that.
        """
        body = self._body
        if body is not None:
            if self._body_pos < len(body):
                return None
            self._body = self._body_view = None
            self._body_pos = 0
            self._read_size = self.STAGING
            return self._decode(self._body_type, memoryview(body))
        buf = self._buf
        if len(buf) < 6:
            if buf and buf[0] not in _DECODERS:
                raise self._unknown(buf[0])
            return None
        pdu_type, length = _HEADER.unpack_from(buf, 0)
        if pdu_type not in _DECODERS:
            raise self._unknown(pdu_type)
        limit = self.max_pdata_length if pdu_type == 0x04 else self.max_control_length
        if limit and length > limit:
            raise PDUTooLarge(length, limit)
        have = len(buf) - 6
        if have < length:
            if self.LARGE <= length <= self.PREALLOCATE_MAX:
                # Gather the rest of the body in place (see get_buffer).
                self._body = bytearray(length)
                self._body_view = memoryview(self._body)
                self._body_view[:have] = buf[6:]
                self._body_pos = have
                self._body_type = pdu_type
                buf.clear()
            return None
        with memoryview(buf) as view:
            data = bytes(view[6 : 6 + length])
        del buf[: 6 + length]
        self._read_size = min(self.STAGING, max(self.STAGING_MIN, self.READ_PDUS * (6 + length)))
        return self._decode(pdu_type, memoryview(data))

    def _decode(self, pdu_type: int, body: memoryview) -> PDU:
        if pdu_type == 0x04:
            return PDataTF.decode(body, self.max_pdvs)
        return _DECODERS[pdu_type](body)

    @staticmethod
    def _unknown(pdu_type: int) -> RemoteProtocolError:
        # PS3.8 Table 9-26, reason 1: unrecognized PDU.
        return RemoteProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", abort_reason=1)
