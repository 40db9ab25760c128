"""The bytes the hostile peers send: association request, commands, P-DATA-TF PDUs, a deflate bomb.

Everything is built with adicom's own encoders (`adicom.pdu`, `adicom.dimse`)
except the data sets, which are written element by element here so that no
attack needs pydicom or holds its payload in memory: a stream of zeros is one
PDU written again and again, and the deflate bomb is one compressed block of
1 MiB of zeros repeated.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from functools import cache

from adicom.dimse import Command, CommandField, c_store_rq
from adicom.pdu import (
    PDV,
    AAssociateAC,
    AAssociateRQ,
    PDataTF,
    PresentationContextRQ,
    UserInformation,
    encode_pdata,
)

#: The well-behaved probe connects from here (the default source address) ...
PROBE_ADDR = "127.0.0.1"
#: ... the attackers from here: Linux routes all of 127/8 to the loopback, so
#: the SCP sees two peers and its per-address limits can tell them apart.
ATTACKER_ADDR = "127.0.0.2"


def attacker_address(index: int) -> str:
    """The `index`-th attacker address: 127.0.0.2, 127.0.0.3, ... (at most 250 of them)."""
    return f"127.0.0.{2 + index % 250}"


CALLED_AE = "ADICOM"
ATTACKER_AE = "ATTACKER"

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

#: Context ID -> (abstract syntax, transfer syntax): each abstract syntax is
#: proposed twice, once per transfer syntax, so the attack knows exactly which
#: transfer syntax a context has when it is accepted.
CONTEXTS: dict[int, tuple[str, str]] = {
    1: (VERIFICATION, IMPLICIT_LE),
    3: (VERIFICATION, DEFLATED_LE),
    5: (STUDY_ROOT_FIND, IMPLICIT_LE),
    7: (STUDY_ROOT_FIND, DEFLATED_LE),
    9: (SECONDARY_CAPTURE, IMPLICIT_LE),
    11: (SECONDARY_CAPTURE, DEFLATED_LE),
}
ECHO_CONTEXT, FIND_CONTEXT, STORE_CONTEXT, DEFLATED_STORE_CONTEXT = 1, 5, 9, 11

#: Message control headers (PS3.8 E.2): bit 0 command, bit 1 last fragment.
DATA_MORE, COMMAND_MORE, DATA_LAST, COMMAND_LAST = 0x00, 0x01, 0x02, 0x03

#: The largest PDU an attacker writes, whatever the SCP accepts (0 = no limit).
MAX_WRITE_PDU = 1 << 18
#: What the attacker says it receives: the SCP's responses are small.
ATTACKER_MAX_PDU = 1 << 16

_IMPLICIT = struct.Struct("<HHL")  # group, element, length
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")  # group, element, VR, reserved, 32-bit length


def new_uid() -> str:
    """A fresh UID (PS3.5 B.2: 2.25 and a UUID as an integer)."""
    return f"2.25.{uuid.uuid4().int}"


@cache
def association_request(called_ae: str = CALLED_AE) -> bytes:
    """The attackers' A-ASSOCIATE-RQ: Verification, Study Root C-FIND and Secondary
    Capture storage, each in implicit VR LE and in deflated explicit VR LE."""
    request = AAssociateRQ(
        called_ae=called_ae,
        calling_ae=ATTACKER_AE,
        presentation_contexts=tuple(
            PresentationContextRQ(cid, abstract, (syntax,))
            for cid, (abstract, syntax) in CONTEXTS.items()
        ),
        user_information=UserInformation(ATTACKER_MAX_PDU, "1.2.826.0.1.3680043.10.1"),
    )
    return request.encode()


def accepted_contexts(ac: AAssociateAC) -> set[int]:
    return {pc.context_id for pc in ac.presentation_contexts if pc.result == 0}


def write_pdu_length(ac: AAssociateAC) -> int:
    """The PDU length to write: the SCP's maximum (PS3.8 D.1: 0 is none), capped."""
    announced = ac.user_information.maximum_length
    return min(announced, MAX_WRITE_PDU) if announced else MAX_WRITE_PDU


# --------------------------------------------------------------------------- P-DATA-TF


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV."""
    return b"".join(encode_pdata([(context_id, control, data)]))


def fragments(context_id: int, control: int, data: bytes, pdu_length: int) -> list[bytes]:
    """`data` as PDUs of at most `pdu_length` bytes, the last one marked last."""
    room = pdu_length - 6  # the PDV item header: length (4), context ID, control
    pieces = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
    last = len(pieces) - 1
    return [pdata(context_id, control | (DATA_LAST if i == last else 0), piece)
            for i, piece in enumerate(pieces)]  # fmt: skip


def filler_pdu(context_id: int, control: int, pdu_length: int) -> tuple[bytes, int]:
    """A PDU of zeros as large as the SCP takes, and how many data bytes it carries."""
    room = pdu_length - 6
    return pdata(context_id, control, bytes(room)), room


def tiny_pdvs_pdu(context_id: int, count: int, pdv_bytes: int = 1) -> bytes:
    """One P-DATA-TF of `count` data set PDVs of `pdv_bytes` each, none of them the last."""
    piece = bytes(pdv_bytes)
    return PDataTF(tuple(PDV(context_id, False, False, piece) for _ in range(count))).encode()


# --------------------------------------------------------------------------- commands


def echo_rq_with_dataset() -> bytes:
    """A C-ECHO-RQ whose Command Data Set Type says a data set follows (it never should)."""
    return Command(
        CommandField.C_ECHO_RQ,
        message_id=1,
        affected_sop_class_uid=VERIFICATION,
        command_data_set_type=0,
    ).encode()


def find_rq() -> bytes:
    return Command(
        CommandField.C_FIND_RQ,
        message_id=1,
        affected_sop_class_uid=STUDY_ROOT_FIND,
        priority=0,
        command_data_set_type=0,
    ).encode()


def store_rq(sop_instance_uid: str, message_id: int = 1) -> bytes:
    return c_store_rq(SECONDARY_CAPTURE, sop_instance_uid, message_id=message_id).encode()


# --------------------------------------------------------------------------- data sets


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def explicit_element(group: int, element: int, vr: str, value: bytes) -> bytes:
    """An element in explicit VR little endian (short-length VRs: UI, LO, PN, CS)."""
    value = _even(value, b"\x00" if vr == "UI" else b" ")
    return _EXPLICIT_SHORT.pack(group, element, vr.encode(), len(value)) + value


def implicit_element(group: int, element: int, value: bytes) -> bytes:
    return _IMPLICIT.pack(group, element, len(value)) + value


def stream_head(total: int) -> bytes:
    """The start of a data set of `total` bytes in implicit VR LE: a Query/Retrieve
    Level, then a private element whose value (zeros) fills the rest."""
    head = implicit_element(0x0008, 0x0052, b"STUDY ") + implicit_element(0x0009, 0x0010, b"ADV ")
    rest = max(0, total - len(head) - _IMPLICIT.size)
    return head + _IMPLICIT.pack(0x0009, 0x1010, rest)


def _deflate_segment(data: bytes, final: bool) -> bytes:
    """`data` compressed by a fresh raw deflater: no reference reaches before its start,
    and a full flush ends it byte-aligned, so segments can be concatenated."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


@cache
def _zeros_block() -> bytes:
    """1 MiB of zeros, deflated: about 1 KB."""
    return _deflate_segment(bytes(1 << 20), final=False)


def deflate_bomb(inflated_mib: int, sop_instance_uid: str) -> bytes:
    """A Secondary Capture data set in deflated explicit VR LE that inflates to
    `inflated_mib` MiB (and a few bytes): SOP Class and Instance UIDs, then a
    private OB element of zeros, then Patient's Name and the Study and Series
    Instance UIDs, which an SCP filing by study has to inflate everything to reach.
    About 1 KB on the wire per MiB inflated."""
    size = inflated_mib << 20
    head = (
        explicit_element(0x0008, 0x0016, "UI", SECONDARY_CAPTURE.encode())
        + explicit_element(0x0008, 0x0018, "UI", sop_instance_uid.encode())
        + explicit_element(0x0009, 0x0010, "LO", b"ADVERSITY")
        + _EXPLICIT_LONG.pack(0x0009, 0x1010, b"OB", size)
    )
    tail = (
        explicit_element(0x0010, 0x0010, "PN", b"BOMB^DEFLATE")
        + explicit_element(0x0020, 0x000D, "UI", new_uid().encode())
        + explicit_element(0x0020, 0x000E, "UI", new_uid().encode())
    )
    return (
        _deflate_segment(head, final=False)
        + _zeros_block() * inflated_mib
        + _deflate_segment(tail, final=True)
    )
