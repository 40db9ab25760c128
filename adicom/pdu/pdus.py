"""The seven PDUs of PS3.8 9.3: A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from adicom.pdu.items import PresentationContextAC, PresentationContextRQ, UserInformation
from adicom.pdu.wire import (
    APPLICATION_CONTEXT,
    PDATA_HEADER,
    PDU_HEADER,
    PDV_HEADER,
    U16,
    ae_bytes,
    frozen_builder,
    invalid,
    item,
    read_ae,
    read_uid,
    split_items,
)

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

    @property
    def carries_credentials(self) -> bool:
        """Whether it has a user identity sub-item: never to be kept past its association.

        PS3.7 D.3.3.7: a username and passcode, a Kerberos ticket, a SAML
        assertion or a JWT, or the acceptor's response to one.
        """
        user = self.user_information
        return user.user_identity_rq is not None or user.user_identity_ac is not None

    def _encode(self, contexts: bytes) -> bytes:
        # PS3.8 9.3.2: version, reserved, called AE, calling AE, 32 reserved bytes.
        fixed = (
            U16.pack(self.protocol_version)
            + b"\0\0"
            + ae_bytes(self.called_ae)
            + ae_bytes(self.calling_ae)
            + bytes(32)
        )
        body = (
            fixed
            + item(0x10, self.application_context.encode("ascii"))
            + contexts
            + self.user_information.encode()
        )
        return PDU_HEADER.pack(self.pdu_type, len(body)) + body

    @staticmethod
    def _decode_common(body: memoryview, context_type: int) -> tuple[Any, list[memoryview]]:
        """The fields both PDUs share, and the raw presentation context items."""
        if len(body) < 68:
            raise invalid(f"A-ASSOCIATE PDU body is {len(body)} bytes, shorter than 68")
        application_context, contexts, user = _associate_items(split_items(body[68:]), context_type)
        fields = {
            "protocol_version": U16.unpack_from(body, 0)[0],
            "called_ae": read_ae(body[4:20]),
            "calling_ae": read_ae(body[20:36]),
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
        return _encoded(self)

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
        return _encoded(self)

    @classmethod
    def decode(cls, body: memoryview) -> AAssociateAC:
        """Parse a PDU body (everything after the 6-byte header)."""
        fields, contexts = cls._decode_common(body, 0x21)
        return cls(
            presentation_contexts=tuple(PresentationContextAC.decode(c) for c in contexts),
            **fields,
        )


#: A-ASSOCIATE-RQ and -AC PDUs encoded lately, by identity: a requestor
#: that associates again and again sends the same request object (see
#: adicom.negotiation.build_request), and an acceptor gives the same
#: answer to it (adicom.negotiation.negotiate). The entry holds the PDU, so
#: its id cannot be reused while it is here.
_ENCODED: dict[int, tuple[AAssociateRQ | AAssociateAC, bytes]] = {}
_ENCODED_SIZE = 64


def _encoded(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    entry = _ENCODED.get(id(pdu))
    if entry is not None and entry[0] is pdu:
        return entry[1]
    raw = pdu._encode(b"".join(pc.encode() for pc in pdu.presentation_contexts))
    if pdu.carries_credentials:
        return raw  # not kept past the association (see carries_credentials)
    if len(_ENCODED) >= _ENCODED_SIZE:
        _ENCODED.clear()
    _ENCODED[id(pdu)] = (pdu, raw)
    return raw


def _associate_items(
    items: list[tuple[int, memoryview]], context_type: int
) -> tuple[str, list[memoryview], UserInformation]:
    application_context: str | None = None
    contexts: list[memoryview] = []
    user: UserInformation | None = None
    for item_type, value in items:
        if item_type == 0x10:
            application_context = read_uid(value)
        elif item_type == context_type:
            contexts.append(value)
        elif item_type == 0x50:
            user = UserInformation.decode(value)
        elif item_type in (0x20, 0x21):
            raise invalid(f"presentation context item 0x{item_type:02X} in the wrong PDU", reason=5)
        # PS3.8 9.3.1: other item types are not ours to refuse; ignore them.
    if application_context is None:
        raise invalid("A-ASSOCIATE PDU has no application context item", reason=6)
    if user is None:
        raise invalid("A-ASSOCIATE PDU has no user information item", reason=6)
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
        return PDU_HEADER.pack(0x03, 4) + bytes((0, self.result, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> AAssociateRJ:
        """Parse a PDU body."""
        if len(body) < 4:
            raise invalid(f"A-ASSOCIATE-RJ body is {len(body)} bytes, not 4")
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
    if len(pdvs) == 1:
        context_id, control, data = pdvs[0]
        size = len(data)
        if size <= 1024:
            # The usual small message: a command set alone, in one piece.
            return [PDATA_HEADER.pack(0x04, size + 6, size + 2, context_id, control) + data]
    elif len(pdvs) == 2:
        (context_id, control, data), (context_2, control_2, data_2) = pdvs
        size, size_2 = len(data), len(data_2)
        if size <= 1024 and size_2 <= 1024:
            # A command and a small data set (a C-FIND response and its
            # match), in one piece: the same bytes as the loop below.
            return [
                PDATA_HEADER.pack(0x04, size + size_2 + 12, size + 2, context_id, control)
                + data
                + PDV_HEADER.pack(size_2 + 2, context_2, control_2)
                + data_2
            ]
    total = sum(6 + len(d) for _, _, d in pdvs)
    head = bytearray(PDU_HEADER.pack(0x04, total))
    out: list[bytes | memoryview] = []
    for context_id, control, data in pdvs:
        head += PDV_HEADER.pack(len(data) + 2, context_id, control)
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
        end = len(body)
        if end >= 6:
            length, context_id, control = PDV_HEADER.unpack_from(body, 0)
            if length + 4 == end and length >= 2 and cls is PDataTF:
                # The usual PDU: one PDV that fills it (a command, a data set
                # fragment). The loop below gives the same, a list later.
                return _new_pdata(
                    (_new_pdv(context_id, bool(control & 1), bool(control & 2), body[6:]),)
                )
        pdvs: list[PDV] = []
        pos = 0
        while pos < end:
            if end - pos < 6:
                raise invalid(f"{end - pos} trailing bytes where a PDV header was expected")
            length, context_id, control = PDV_HEADER.unpack_from(body, pos)
            if length < 2 or pos + 4 + length > end:
                raise invalid(f"PDV item length {length} does not fit its PDU")
            data = body[pos + 6 : pos + 4 + length]
            pdvs.append(_new_pdv(context_id, bool(control & 1), bool(control & 2), data))
            pos += 4 + length
            if max_pdvs and len(pdvs) >= max_pdvs and pos < end:
                raise invalid(f"a P-DATA-TF PDU carries more than the {max_pdvs} PDVs accepted")
        if not pdvs:
            # PS3.8 9.3.5: "one or more" PDV items.
            raise invalid("P-DATA-TF PDU carries no PDV item")
        return _new_pdata(tuple(pdvs)) if cls is PDataTF else cls(tuple(pdvs))


_new_pdv = frozen_builder(PDV)
_new_pdata = frozen_builder(PDataTF)

#: A P-DATA-TF PDU of one PDV, as :class:`~adicom.pdu.PDUReader` hands it to
#: the upper layer: (presentation context ID, message control header, data).
#: A tuple costs a fraction of the PDV, its tuple and the PDataTF (~6k
#: instructions per PDU, for a C-ECHO ~7% of an SCP's); see :func:`bare_pdata`.
BarePDV: TypeAlias = tuple[int, int, memoryview]


def pdata_of(pdvs: Iterable[tuple[int, int, bytes | memoryview]]) -> PDataTF:
    """The :class:`PDataTF` of (presentation context ID, message control header, data) triples."""
    return _new_pdata(
        tuple(_new_pdv(c, bool(control & 1), bool(control & 2), d) for c, control, d in pdvs)
    )


def bare_pdata(bare: BarePDV) -> PDataTF:
    """The :class:`PDataTF` of a :data:`BarePDV`, for what needs the PDU (a trace, a user)."""
    return pdata_of((bare,))


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    """A-RELEASE-RQ (type 0x05, PS3.8 9.3.6)."""

    pdu_type: ClassVar[int] = 0x05

    def encode(self) -> bytes:
        """The PDU's bytes."""
        return PDU_HEADER.pack(0x05, 4) + bytes(4)

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
        return PDU_HEADER.pack(0x06, 4) + bytes(4)

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
        return PDU_HEADER.pack(0x07, 4) + bytes((0, 0, self.source, self.reason))

    @classmethod
    def decode(cls, body: memoryview) -> AAbort:
        """Parse a PDU body."""
        if len(body) < 4:
            raise invalid(f"A-ABORT body is {len(body)} bytes, not 4")
        return cls(body[2], body[3])


PDU: TypeAlias = (
    AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort
)

DECODERS: dict[int, Callable[[memoryview], PDU]] = {
    0x01: AAssociateRQ.decode,
    0x02: AAssociateAC.decode,
    0x03: AAssociateRJ.decode,
    0x04: PDataTF.decode,
    0x05: AReleaseRQ.decode,
    0x06: AReleaseRP.decode,
    0x07: AAbort.decode,
}
