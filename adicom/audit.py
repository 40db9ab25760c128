"""An audit trail: one JSON line per security-relevant event.

Each line names its event after the DICOM audit messages of PS3.15 A.5.3,
so a line can be mapped onto an RFC 3881/ATNA record later:

==================================  =========================================
event                               when
==================================  =========================================
``User Authentication``             an association was accepted (who: AE
                                    title, address, user identity, TLS
                                    certificate subject)
``Security Alert``                  an association was refused (unknown peer,
                                    wrong identity, failed TLS handshake)
``DICOM Instances Transferred``     an instance was received by C-STORE
                                    (stored or refused: ``outcome``)
``Query``                           a C-FIND, with its keys
``Begin Transferring DICOM          a C-GET or C-MOVE started, with its keys
Instances``                         (and, for C-MOVE, the destination)
==================================  =========================================

Every line has ``time`` (UTC, ISO 8601), ``event`` and ``outcome``
("success" or "failure" and why), then what the event knows. With
``patient_data=False`` the patient's name, ID and birth date are left out of
every line (queries keep only that a key was given: ``"<left out>"``).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from adicom.dimse import StatusCategory, status_category

if TYPE_CHECKING:
    from adicom.pdu import AAssociateRQ
    from adicom.storage import StoreContext
    from adicom.tls import TlsInfo

__all__ = ["PATIENT_KEYS", "AuditLog", "identifier_keys"]

#: The user identity types of PS3.7 D.3.3.7.1, as named in audit lines.
IDENTITY_TYPES = {1: "username", 2: "username and passcode", 3: "Kerberos", 4: "SAML", 5: "JWT"}

#: A C-STORE that ends in one of these kept the instance (PS3.4 B.2.3).
_KEPT = (StatusCategory.SUCCESS, StatusCategory.WARNING)

#: At most this many keys of a query identifier are written, each value cut
#: to VALUE_LENGTH characters: a peer's identifier cannot make a line large.
MAX_KEYS = 32
VALUE_LENGTH = 64

#: Identifying keys left out with ``patient_data=False``.
PATIENT_KEYS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames"}
)


class AuditLog:
    """Writes audit lines to a file (appended) or a stream."""

    def __init__(self, target: str | os.PathLike[str] | IO[str], *, patient_data: bool = True):
        if isinstance(target, str | os.PathLike):
            # Line-buffered: each line is on disk (in the page cache) when
            # record() returns; a line is small, so the write does not block.
            self._stream: IO[str] = open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._stream = target
            self._owned = False
        self.patient_data = patient_data

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        """Write one line: the event, its outcome, and the fields that are not None."""
        line: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "outcome": outcome,
        }
        for key, value in fields.items():
            if value is None:
                continue
            if key in PATIENT_KEYS and not self.patient_data:
                continue
            if key == "keys" and isinstance(value, Mapping):
                value = self._keys(value)
            line[key] = value
        self._stream.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._stream.flush()

    def _keys(self, keys: Mapping[str, Any]) -> dict[str, Any]:
        if self.patient_data:
            return dict(keys)
        return {k: ("<left out>" if k in PATIENT_KEYS and v else v) for k, v in keys.items()}

    # -- the events the server records -------------------------------------------

    def association(
        self,
        request: AAssociateRQ,
        address: tuple[str, int] | None,
        tls: TlsInfo | None,
        *,
        refused: str | None = None,
        peer: str | None = None,
    ) -> None:
        """An association accepted ("User Authentication") or refused ("Security Alert").

        The user identity is named by its user name (types 1 and 2) or its
        type alone: a passcode or a token is never written.
        """
        identity = request.user_information.user_identity_rq
        user: str | None = None
        if identity is not None:
            user = (
                identity.primary_field.decode("utf-8", "replace")[:VALUE_LENGTH]
                if identity.identity_type in (1, 2)
                else f"<{IDENTITY_TYPES.get(identity.identity_type, identity.identity_type)}>"
            )
        self.record(
            "Security Alert" if refused else "User Authentication",
            f"failure: {refused}" if refused else "success",
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            address=_address(address),
            user=user,
            tls_subject=tls.peer_subject if tls is not None else None,
            peer=peer,
        )

    def tls_failed(self, address: tuple[str, int] | None, why: str) -> None:
        """A TLS handshake failed ("Security Alert"): no association was attempted."""
        self.record("Security Alert", f"failure: TLS handshake: {why}", address=_address(address))

    def instance(
        self,
        context: StoreContext,
        status: int,
        comment: str | None = None,
        values: Mapping[str, str] | None = None,
    ) -> None:
        """An instance received by C-STORE ("DICOM Instances Transferred"), kept or not."""
        values = values or {}
        self.record(
            "DICOM Instances Transferred",
            "success" if status_category(status) in _KEPT else f"failure: {comment or ''}",
            status=f"0x{status:04X}",
            calling_ae=context.calling_ae,
            address=_address(context.address),
            sop_class_uid=context.sop_class_uid,
            sop_instance_uid=context.sop_instance_uid,
            study_instance_uid=values.get("StudyInstanceUID") or None,
            PatientID=values.get("PatientID") or None,
            PatientName=values.get("PatientName") or None,
        )

    def operation(
        self,
        service: str,
        calling_ae: str,
        address: tuple[str, int] | None,
        identifier: Dataset | str,
        *,
        sop_class_uid: str | None = None,
        destination: str | None = None,
    ) -> None:
        """A C-FIND ("Query") or a C-GET/C-MOVE ("Begin Transferring DICOM Instances").

        ``identifier`` is the request's identifier, or why it did not parse.
        """
        parsed = isinstance(identifier, Dataset)
        self.record(
            "Query" if service == "find" else "Begin Transferring DICOM Instances",
            "success" if parsed else f"failure: {identifier}",
            service=service,
            calling_ae=calling_ae,
            address=_address(address),
            sop_class_uid=sop_class_uid,
            destination=destination,
            keys=identifier_keys(identifier) if isinstance(identifier, Dataset) else None,
        )

    def close(self) -> None:
        """Close the file (a stream given is left open)."""
        if self._owned:
            self._stream.close()


def identifier_keys(identifier: Dataset) -> dict[str, str]:
    """The keys of a query identifier that have a value, by keyword, cut short.

    Sequences are named with their item count; at most :data:`MAX_KEYS`.
    """
    keys: dict[str, str] = {}
    for element in identifier:
        if len(keys) >= MAX_KEYS:
            break
        if element.tag.group == 0x0002 or element.is_empty:
            continue
        name = element.keyword or str(element.tag)
        if element.VR == "SQ":
            keys[name] = f"<{len(element.value)} item(s)>"
        else:
            keys[name] = str(element.value)[:VALUE_LENGTH]
    return keys


def _address(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"
