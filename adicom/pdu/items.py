"""Items of the A-ASSOCIATE PDUs: user information sub-items and presentation contexts.

PS3.7 Annex D.3.3 and PS3.8 Annex D for the user information item and its
sub-items; PS3.8 9.3.2.2 and 9.3.3.2 for the presentation context items.
"""

from __future__ import annotations

from dataclasses import dataclass

from adicom.pdu.wire import (
    U16,
    U32,
    Cursor,
    invalid,
    item,
    length_value,
    read_ae,
    read_uid,
    split_items,
)

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
        parts = [item(0x51, U32.pack(self.maximum_length))]
        parts.append(item(0x52, self.implementation_class_uid.encode("ascii")))
        if self.async_operations_window is not None:
            w = self.async_operations_window
            parts.append(item(0x53, U16.pack(w.invoked) + U16.pack(w.performed)))
        for role in self.role_selections:
            body = length_value(role.sop_class_uid.encode("ascii"))
            parts.append(item(0x54, body + bytes((role.scu_role, role.scp_role))))
        if self.implementation_version_name is not None:
            parts.append(item(0x55, self.implementation_version_name.encode("ascii")))
        for ext in self.sop_class_extended:
            body = length_value(ext.sop_class_uid.encode("ascii")) + ext.application_information
            parts.append(item(0x56, body))
        for common in self.sop_class_common_extended:
            related = b"".join(
                length_value(u.encode("ascii")) for u in common.related_general_sop_classes
            )
            body = (
                length_value(common.sop_class_uid.encode("ascii"))
                + length_value(common.service_class_uid.encode("ascii"))
                + length_value(related)
            )
            parts.append(item(0x57, body))
        if self.user_identity_rq is not None:
            rq = self.user_identity_rq
            head = bytes((rq.identity_type, rq.positive_response_requested))
            body = head + length_value(rq.primary_field) + length_value(rq.secondary_field)
            parts.append(item(0x58, body))
        if self.user_identity_ac is not None:
            parts.append(item(0x59, length_value(self.user_identity_ac.server_response)))
        for unknown in self.unknown:
            parts.append(item(unknown.item_type, unknown.data))
        return item(0x50, b"".join(parts))

    @classmethod
    def decode(cls, data: memoryview) -> UserInformation:
        """Parse the value of a 0x50 item."""
        values: dict[str, object] = {}
        roles: list[RoleSelection] = []
        ext: list[SOPClassExtendedNegotiation] = []
        common: list[SOPClassCommonExtendedNegotiation] = []
        unknown: list[UnknownSubItem] = []
        seen_max = False
        for item_type, value in split_items(data):
            cur = Cursor(value, f"user information 0x{item_type:02X}")
            if item_type == 0x51:
                if len(value) != 4:
                    raise invalid(f"maximum length sub-item has {len(value)} bytes, not 4")
                values["maximum_length"] = U32.unpack(value)[0]
                seen_max = True
            elif item_type == 0x52:
                values["implementation_class_uid"] = read_uid(value)
            elif item_type == 0x53:
                values["async_operations_window"] = AsyncOperationsWindow(cur.u16(), cur.u16())
            elif item_type == 0x54:
                uid = read_uid(cur.lv())
                roles.append(RoleSelection(uid, bool(cur.u8()), bool(cur.u8())))
            elif item_type == 0x55:
                values["implementation_version_name"] = read_ae(value)
            elif item_type == 0x56:
                uid = read_uid(cur.lv())
                ext.append(SOPClassExtendedNegotiation(uid, bytes(cur.rest())))
            elif item_type == 0x57:
                sop, service = read_uid(cur.lv()), read_uid(cur.lv())
                related_cur = Cursor(cur.lv(), "related general SOP class")
                related: list[str] = []
                while related_cur.pos < len(related_cur.data):
                    related.append(read_uid(related_cur.lv()))
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
        body = [bytes((self.context_id, 0, 0, 0)), item(0x30, self.abstract_syntax.encode())]
        body.extend(item(0x40, ts.encode("ascii")) for ts in self.transfer_syntaxes)
        return item(0x20, b"".join(body))

    @classmethod
    def decode(cls, data: memoryview) -> PresentationContextRQ:
        """Parse the value of a 0x20 item."""
        if len(data) < 4:
            raise invalid("presentation context item is shorter than 4 bytes")
        abstract: str | None = None
        transfers: list[str] = []
        for item_type, value in split_items(data[4:]):
            if item_type == 0x30:
                abstract = read_uid(value)
            elif item_type == 0x40:
                transfers.append(read_uid(value))
        if abstract is None:
            raise invalid(f"presentation context {data[0]} has no abstract syntax", reason=6)
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
        body += item(0x40, self.transfer_syntax.encode("ascii"))
        return item(0x21, body)

    @classmethod
    def decode(cls, data: memoryview) -> PresentationContextAC:
        """Parse the value of a 0x21 item."""
        if len(data) < 4:
            raise invalid("presentation context item is shorter than 4 bytes")
        transfer = ""
        for item_type, value in split_items(data[4:]):
            if item_type == 0x40:
                transfer = read_uid(value)
        return cls(data[0], data[2], transfer)
