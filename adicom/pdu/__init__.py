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

The package's modules: :mod:`~adicom.pdu.items` (user information
sub-items and presentation context items), :mod:`~adicom.pdu.pdus` (the
PDUs), :mod:`~adicom.pdu.reader` (:class:`PDUReader`) and
:mod:`~adicom.pdu.wire` (headers and fields they share). Nothing here does
I/O, keeps time or imports asyncio.
"""

from adicom.pdu.items import (
    AsyncOperationsWindow,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownSubItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from adicom.pdu.pdus import (
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    BarePDV,
    PDataTF,
    bare_pdata,
    encode_pdata,
    pdata_of,
)
from adicom.pdu.reader import MAX_CONTROL_PDU, MAX_PDVS_PER_PDU, PDUReader, Staging
from adicom.pdu.wire import APPLICATION_CONTEXT

__all__ = [
    "APPLICATION_CONTEXT",
    "MAX_CONTROL_PDU",
    "MAX_PDVS_PER_PDU",
    "PDU",
    "PDV",
    "AAbort",
    "AAssociateAC",
    "AAssociateRJ",
    "AAssociateRQ",
    "AReleaseRP",
    "AReleaseRQ",
    "AsyncOperationsWindow",
    "BarePDV",
    "PDUReader",
    "Staging",
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
    "bare_pdata",
    "encode_pdata",
    "pdata_of",
]
