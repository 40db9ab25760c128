"""The one exception tree of adicom.

Every exception carries its wire meaning, the way h2 puts the error code on the
exception: an abort says who aborted and why (PS3.8 Table 9-26), a rejection
says result, source and reason (PS3.8 Table 9-21), a DIMSE failure its status.
"""

from __future__ import annotations

import enum

__all__ = [
    "ArchiveError",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "ConnectionClosed",
    "DicomError",
    "DicomTimeout",
    "DimseError",
    "IdentityNotConfirmed",
    "LocalProtocolError",
    "PDUTooLarge",
    "PeerUnreachable",
    "ProtocolError",
    "RemoteProtocolError",
    "TimeoutKind",
    "TlsError",
]


class DicomError(Exception):
    """Base class of every error adicom raises."""


class ProtocolError(DicomError):
    """The upper layer protocol (PS3.8) was broken by one side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid PDU, or a PDU the state forbids.

    ``abort_reason`` is the A-ABORT reason we send for it (PS3.8 Table 9-26,
    source 2, "service-provider"): 0 not specified, 1 unrecognized PDU,
    2 unexpected PDU, 4 unrecognized PDU parameter, 5 unexpected PDU parameter,
    6 invalid PDU parameter value.
    """

    def __init__(self, message: str, abort_reason: int = 0) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


class PDUTooLarge(RemoteProtocolError):
    """A PDU's length field is larger than the limit we accept."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"PDU length {length} exceeds the accepted maximum of {limit} bytes",
            abort_reason=6,
        )
        self.length = length
        self.limit = limit


class LocalProtocolError(ProtocolError):
    """Our own code asked for something the current state does not allow."""


class AssociationError(DicomError):
    """An association could not be set up or ended abnormally."""


_REJECT_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_REJECT_SOURCE = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (presentation related function)",
}
# PS3.8 Table 9-21: the reason's meaning depends on the source.
_REJECT_REASON = {
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}


def describe_reject(result: int, source: int, reason: int) -> str:
    """Say in words what an A-ASSOCIATE-RJ's result, source and reason mean."""
    res = _REJECT_RESULT.get(result, f"result {result}")
    src = _REJECT_SOURCE.get(source, f"source {source}")
    rsn = _REJECT_REASON.get(source, {}).get(reason, f"reason {reason}")
    return f"{rsn} ({res}, by the {src})"


class AssociationRejected(AssociationError):
    """The acceptor answered A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        super().__init__("association rejected: " + describe_reject(result, source, reason))

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed (result 2)."""
        return self.result == 2


_ABORT_SOURCE = {0: "the peer (service-user)", 2: "the peer's upper layer (service-provider)"}
_ABORT_REASON = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


class AssociationAborted(AssociationError):
    """The association was aborted (A-ABORT or A-P-ABORT, PS3.8 7.3 and 7.4).

    ``source`` and ``reason`` are those of the A-ABORT PDU (PS3.8 Table 9-26)
    when one was received; ``local`` is True when we aborted it ourselves.
    """

    def __init__(
        self, source: int, reason: int, *, local: bool = False, detail: str | None = None
    ) -> None:
        self.source = source
        self.reason = reason
        self.local = local
        if local:
            text = "association aborted locally"
        else:
            who = _ABORT_SOURCE.get(source, f"source {source}")
            why = _ABORT_REASON.get(reason, f"reason {reason}") if source == 2 else ""
            text = f"association aborted by {who}" + (f": {why}" if why else "")
        if detail:
            text += f" ({detail})"
        super().__init__(text)


class ConnectionClosed(AssociationError):
    """The peer closed the TCP connection without releasing or aborting."""


class IdentityNotConfirmed(AssociationError):
    """We asked for a positive response to our user identity (PS3.7 D.3.3.7) and got none.

    The peer accepted the association without saying it accepted who we
    are: it may not check identities at all.
    """


class PeerUnreachable(DicomError):
    """The TCP connection to the peer could not be opened."""


class TlsError(DicomError):
    """A TLS handshake failed.

    The peer's certificate is not trusted, ours was refused or missing, or
    the peer does not speak TLS on that port (or speaks it where we do not).
    """


class TimeoutKind(enum.StrEnum):
    """Which bounded wait ran out (:attr:`DicomTimeout.which`)."""

    #: Opening the TCP connection.
    CONNECT = "connect"
    #: The answer to our A-ASSOCIATE-RQ.
    ASSOCIATION = "association"
    #: A response to one of our DIMSE requests.
    DIMSE = "DIMSE"
    #: The peer stopped reading what we send.
    SEND = "send"
    #: The answer to our A-RELEASE-RQ.
    RELEASE = "release"
    #: The peer closing the connection after a release or abort.
    CLOSE = "close"
    #: The final response after our C-CANCEL-RQ.
    CANCEL = "cancel"
    #: Nothing at all received from the peer.
    IDLE = "idle"
    #: PS3.8 ARTIM: no A-ASSOCIATE-RQ after connecting, or no close after the end.
    ARTIM = "ARTIM"
    #: A whole high-level operation (a DicomClient call).
    OPERATION = "operation"


class DicomTimeout(DicomError, TimeoutError):
    """A bounded wait ran out; ``which`` (a :class:`TimeoutKind`) names it."""

    def __init__(self, which: TimeoutKind, seconds: float, detail: str = "") -> None:
        self.which = which
        self.seconds = seconds
        text = f"{which} timeout after {seconds:g} s"
        super().__init__(f"{text}: {detail}" if detail else text)


class ArchiveError(DicomError):
    """The reference archive cannot start (its index is unusable, its folder not writable)."""


class DimseError(DicomError):
    """A DIMSE operation ended with a failure status (PS3.7 Annex C)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"0x{status:04X}: {message}")
