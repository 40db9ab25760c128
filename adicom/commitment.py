"""Storage Commitment Push Model (PS3.4 Annex J): whether the peer really holds what we sent.

The SCU sends an N-ACTION (action type 1) to the well-known SOP instance
1.2.840.10008.1.20.1.1, listing instances by SOP class and instance UID
under a Transaction UID of its own; the SCP answers at once that it has the
request, then reports the result later with an N-EVENT-REPORT: event type 1
when it holds every instance, 2 when some failed, each failure with its
reason (PS3.4 J.3.3). The report may come on the same association, while
the SCU keeps it open, or on a new one the SCP opens to the SCU, in which
it proposes the SCP role for the Storage Commitment class (J.3.3.1.3).

SCU: :func:`request_commitment` sends the request and waits, bounded, for
the result on the association and, through a :class:`CommitmentReports`
handed to a :class:`~adicom.Server` the SCU runs, on new associations.

SCP: :class:`CommitmentSCP` is the N-ACTION handler (``Server(n_handlers=
{STORAGE_COMMITMENT: scp})``): it checks each instance against what the
storage holds and reports on the association when it is still open, else
on a new association to the requestor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from adicom.client import connect
from adicom.dimse import CommandField, Status, describe_status
from adicom.errors import DicomError, DicomTimeout, TimeoutKind
from adicom.fileformat import is_valid_uid
from adicom.nservices import NRequest, NResponse, answer_n, n_action, n_event_report
from adicom.pdu import RoleSelection
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES, STORAGE_COMMITMENT

if TYPE_CHECKING:
    from adicom.association import Association, Message

__all__ = [
    "STORAGE_COMMITMENT",
    "STORAGE_COMMITMENT_INSTANCE",
    "CommitmentFailure",
    "CommitmentReports",
    "CommitmentResult",
    "CommitmentSCP",
    "InvalidCommitment",
    "Reference",
    "request_commitment",
]

log = logging.getLogger("adicom")

#: Its well-known SOP instance, the one every N-ACTION and report names.
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Action Type ID of "Request Storage Commitment" (PS3.4 Table J.3-1).
REQUEST = 1
#: Event Type IDs of the result (PS3.4 Table J.3-2): all held, failures exist.
SUCCESSFUL, FAILURES_EXIST = 1, 2
#: At most this many instances in one request, as SCU and as SCP.
MAX_REFERENCES = 10_000

# Failure Reason (0008,1197) values (PS3.4 J.3.3.1.1, Table J.3-2 notes).
_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


@dataclass(frozen=True, slots=True)
class Reference:
    """An instance named in a commitment request or result."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class CommitmentFailure:
    """An instance the SCP does not commit to, and why (Failure Reason (0008,1197))."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int

    @property
    def meaning(self) -> str:
        """The reason in words."""
        return _REASONS.get(self.reason, f"reason 0x{self.reason:04X}")


@dataclass(frozen=True, slots=True)
class CommitmentResult:
    """A Storage Commitment result: what the SCP holds and what it does not."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[CommitmentFailure, ...]
    #: Where the instances can be retrieved from (0008,0054), when the SCP said.
    retrieve_ae_title: str | None = None

    @property
    def ok(self) -> bool:
        """True when every instance is committed."""
        return not self.failed


class InvalidCommitment(DicomError):
    """A commitment request or result that breaks PS3.4 Annex J (the status says how)."""

    def __init__(self, status: int, message: str, offending: int | None = None) -> None:
        self.status = status
        self.offending = offending
        super().__init__(message)


# --------------------------------------------------------------------------
# Data sets (PS3.4 Tables J.3-1 and J.3-2)


def request_dataset(references: Iterable[Reference], transaction_uid: str) -> Dataset:
    """The N-ACTION's Action Information."""
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    dataset.ReferencedSOPSequence = [_item(r.sop_class_uid, r.sop_instance_uid) for r in references]
    return dataset


def parse_request(dataset: Dataset) -> tuple[str, list[Reference]]:
    """The Transaction UID and instances of a request; :class:`InvalidCommitment` if malformed."""
    transaction = _uid(dataset, "TransactionUID", 0x00081195)
    sequence = dataset.get("ReferencedSOPSequence")
    if sequence is None:
        raise InvalidCommitment(
            Status.MISSING_ATTRIBUTE, "no Referenced SOP Sequence (0008,1199)", 0x00081199
        )
    if not sequence:
        raise InvalidCommitment(
            Status.MISSING_ATTRIBUTE_VALUE, "the Referenced SOP Sequence is empty", 0x00081199
        )
    if len(sequence) > MAX_REFERENCES:
        raise InvalidCommitment(
            Status.RESOURCE_LIMITATION,
            f"{len(sequence)} instances in one request, more than {MAX_REFERENCES}",
            0x00081199,
        )
    return transaction, [_reference(item) for item in sequence]


def result_dataset(result: CommitmentResult) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information."""
    dataset = Dataset()
    dataset.TransactionUID = result.transaction_uid
    if result.retrieve_ae_title:
        dataset.RetrieveAETitle = result.retrieve_ae_title
    if result.committed:
        dataset.ReferencedSOPSequence = [
            _item(r.sop_class_uid, r.sop_instance_uid) for r in result.committed
        ]
    if result.failed:
        items = []
        for failure in result.failed:
            item = _item(failure.sop_class_uid, failure.sop_instance_uid)
            item.FailureReason = failure.reason
            items.append(item)
        dataset.FailedSOPSequence = items
    return (FAILURES_EXIST if result.failed else SUCCESSFUL), dataset


def parse_result(event_type_id: int | None, dataset: Dataset | None) -> CommitmentResult:
    """A result from an N-EVENT-REPORT; :class:`InvalidCommitment` if malformed."""
    if event_type_id not in (SUCCESSFUL, FAILURES_EXIST):
        raise InvalidCommitment(Status.NO_SUCH_EVENT_TYPE, f"event type {event_type_id}")
    if dataset is None:
        raise InvalidCommitment(Status.MISSING_ATTRIBUTE, "the report carries no data set")
    transaction = _uid(dataset, "TransactionUID", 0x00081195)
    committed = tuple(_reference(item) for item in dataset.get("ReferencedSOPSequence") or ())
    failed = []
    for item in dataset.get("FailedSOPSequence") or ():
        reference = _reference(item)
        reason = item.get("FailureReason")
        failed.append(
            CommitmentFailure(
                reference.sop_class_uid,
                reference.sop_instance_uid,
                int(reason) if reason is not None else Status.PROCESSING_FAILURE,
            )
        )
    if event_type_id == FAILURES_EXIST and not failed:
        raise InvalidCommitment(
            Status.MISSING_ATTRIBUTE, "event type 2 without a Failed SOP Sequence", 0x00081198
        )
    retrieve = dataset.get("RetrieveAETitle")
    return CommitmentResult(
        transaction, committed, tuple(failed), str(retrieve).strip() if retrieve else None
    )


def _item(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def _uid(dataset: Dataset, keyword: str, tag: int) -> str:
    value = str(dataset.get(keyword) or "").strip()
    if not value:
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        raise InvalidCommitment(Status.MISSING_ATTRIBUTE, f"no {keyword} {where}", tag)
    if not is_valid_uid(value):
        raise InvalidCommitment(
            Status.INVALID_ATTRIBUTE_VALUE, f"{keyword} {value[:24]!r} is not a UID", tag
        )
    return value


def _reference(item: Dataset) -> Reference:
    return Reference(
        _uid(item, "ReferencedSOPClassUID", 0x00081150),
        _uid(item, "ReferencedSOPInstanceUID", 0x00081155),
    )


# --------------------------------------------------------------------------
# SCU


class CommitmentReports:
    """Where Storage Commitment results arrive, by Transaction UID.

    The :class:`~adicom.Server` the SCU runs to receive reports on new
    associations takes :meth:`server_options` (the handler, and the SCP
    role the reporting peer proposes): ``Server(..., **reports.server_options())``.
    A report for a transaction nobody waits for is answered and logged.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[CommitmentResult]] = {}

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments for the :class:`~adicom.Server` that receives the reports."""
        return {
            "n_handlers": {STORAGE_COMMITMENT: self.handler},
            "scp_role_classes": [STORAGE_COMMITMENT],
        }

    def expect(self, transaction_uid: str) -> asyncio.Future[CommitmentResult]:
        """A future that the report for ``transaction_uid`` completes."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[transaction_uid] = future
        return future

    def forget(self, transaction_uid: str) -> None:
        """Stop waiting for a transaction (its result came, or the wait ended)."""
        self._waiting.pop(transaction_uid, None)

    async def handler(self, request: NRequest) -> NResponse:
        """The N-EVENT-REPORT handler: a result for a transaction (PS3.4 J.3.3.1.3)."""
        if request.field != CommandField.N_EVENT_REPORT_RQ:
            return NResponse(Status.UNRECOGNIZED_OPERATION)
        try:
            result = parse_result(request.command.event_type_id, request.dataset)
        except InvalidCommitment as exc:
            log.warning("a storage commitment report from %s: %s", request.calling_ae, exc)
            return NResponse(exc.status, error_comment=str(exc))
        future = self._waiting.pop(result.transaction_uid, None)
        if future is None or future.done():
            log.warning(
                "a storage commitment report from %s for transaction %s, which nobody awaits",
                request.calling_ae,
                result.transaction_uid,
            )
        else:
            future.set_result(result)
        return NResponse()


async def request_commitment(
    association: Association,
    instances: Iterable[Reference | tuple[str, str]],
    *,
    reports: CommitmentReports | None = None,
    timeout: float = 60.0,
    transaction_uid: str | None = None,
) -> CommitmentResult:
    """Ask the peer to commit to storing ``instances``; wait for its result.

    The association must have a Storage Commitment context. The result is
    awaited, up to ``timeout`` seconds, on this association (which stays
    open meanwhile) and, when ``reports`` is given, on the associations the
    peer opens to our server. Raises :class:`DimseError` when the peer
    refuses the request, :class:`DicomTimeout` when no result comes.
    """
    references = [r if isinstance(r, Reference) else Reference(*r) for r in instances]
    if not references:
        raise ValueError("a storage commitment request needs at least one instance")
    if len(references) > MAX_REFERENCES:
        raise ValueError(f"{len(references)} instances: at most {MAX_REFERENCES} in one request")
    transaction = transaction_uid or generate_uid()
    reports = reports or CommitmentReports()
    result = reports.expect(transaction)
    try:
        response = await n_action(
            association,
            STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_INSTANCE,
            REQUEST,
            request_dataset(references, transaction),
        )
        response.check("the storage commitment request")
        listening = asyncio.get_running_loop().create_task(
            _reports_on(association, reports.handler)
        )
        try:
            async with asyncio.timeout(timeout):
                waiting: set[asyncio.Future[object]] = {result, listening}  # type: ignore[arg-type]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not result.done():
                    # The association ended first: the report may still come on another.
                    await result
        except TimeoutError:
            raise DicomTimeout(
                TimeoutKind.DIMSE,
                timeout,
                f"no storage commitment result for transaction {transaction}",
            ) from None
        finally:
            listening.cancel()
        return result.result()
    finally:
        reports.forget(transaction)
        if not result.done():
            result.cancel()


async def _reports_on(
    association: Association, handler: Callable[[NRequest], Awaitable[NResponse]]
) -> None:
    """Answer the requests the peer sends on our association until it ends."""
    while association.is_established:
        try:
            message: Message | None = await association.receive_request()
        except DicomError:
            return
        if message is None:
            return
        if message.command.command_field == CommandField.N_EVENT_REPORT_RQ:
            await answer_n(association, message, handler)
        else:
            await association.respond(message, Status.UNRECOGNIZED_OPERATION)


# --------------------------------------------------------------------------
# SCP

#: What the SCP holds: SOP Instance UID -> its SOP Class UID, or None.
Holds = Callable[[str], Awaitable[str | None]]
#: Where to open an association to a requestor: AE title -> (host, port), or None.
Destinations = Callable[[str], Awaitable[tuple[str, int] | None]] | Mapping[str, tuple[str, int]]


class CommitmentSCP:
    """The Storage Commitment SCP's N-ACTION handler (PS3.4 J.3.2.1.3, J.3.3.1.2).

    ``holds`` tells, for a SOP Instance UID, the SOP class of the instance
    held (and safely stored), or None. The request is answered at once;
    the result is then reported on the same association while it is open,
    else on a new association to the requestor's address from
    ``destinations`` (by its AE title), proposing the SCP role (J.3.3.1.3).
    ``ssl`` is used for those associations. With ``same_association``
    False, results always go on a new association (as some PACS do).
    """

    def __init__(
        self,
        holds: Holds,
        *,
        ae_title: str = "ADICOM",
        destinations: Destinations | None = None,
        retrieve_ae_title: str | None = None,
        ssl: SSLContext | None = None,
        timeout: float = 30.0,
        same_association: bool = True,
    ) -> None:
        self.holds = holds
        #: Report on the request's association while it is open (else always a new one).
        self.same_association = same_association
        self.ae_title = ae_title
        self.destinations: Destinations = destinations or {}
        self.retrieve_ae_title = retrieve_ae_title
        self.ssl = ssl
        self.timeout = timeout

    async def __call__(self, request: NRequest) -> NResponse:
        """Answer an N-ACTION; the result follows as ``then``."""
        if request.field != CommandField.N_ACTION_RQ:
            return NResponse(Status.UNRECOGNIZED_OPERATION)
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            # PS3.4 J.3.2.1.2: the request names the well-known instance.
            return NResponse(
                Status.NO_SUCH_SOP_INSTANCE,
                error_comment=f"not the Storage Commitment instance {STORAGE_COMMITMENT_INSTANCE}",
            )
        if request.command.action_type_id != REQUEST:
            return NResponse(
                Status.NO_SUCH_ACTION_TYPE, error_comment=f"action {request.command.action_type_id}"
            )
        if request.dataset is None:
            return NResponse(Status.MISSING_ATTRIBUTE, error_comment="no Action Information")
        try:
            transaction, references = parse_request(request.dataset)
        except InvalidCommitment as exc:
            log.warning("a storage commitment request from %s: %s", request.calling_ae, exc)
            return NResponse(
                exc.status,
                error_comment=str(exc),
                offending_element=(exc.offending,) if exc.offending else None,
            )
        association = request.association

        async def report() -> None:
            await self.report(association, transaction, references)

        return NResponse(then=report)

    async def result(self, transaction_uid: str, references: list[Reference]) -> CommitmentResult:
        """Check each instance against what is held (PS3.4 J.3.3.1.2)."""
        committed: list[Reference] = []
        failed: list[CommitmentFailure] = []
        for index, reference in enumerate(references):
            held = await self.holds(reference.sop_instance_uid)
            if held is None:
                failed.append(CommitmentFailure(*_pair(reference), Status.NO_SUCH_SOP_INSTANCE))
            elif held != reference.sop_class_uid:
                failed.append(CommitmentFailure(*_pair(reference), Status.CLASS_INSTANCE_CONFLICT))
            else:
                committed.append(reference)
            if index % 256 == 255:
                await asyncio.sleep(0)  # a long list: let the loop serve the others
        return CommitmentResult(
            transaction_uid, tuple(committed), tuple(failed), self.retrieve_ae_title
        )

    async def report(
        self, association: Association, transaction_uid: str, references: list[Reference]
    ) -> None:
        """Send the result: on ``association`` while it is open, else on a new one."""
        result = await self.result(transaction_uid, references)
        event, information = result_dataset(result)
        requestor = association.calling_ae
        if self.same_association and association.is_established:
            try:
                answer = await n_event_report(
                    association,
                    STORAGE_COMMITMENT,
                    STORAGE_COMMITMENT_INSTANCE,
                    event,
                    information,
                    timeout=self.timeout,
                )
            except DicomError as exc:
                log.info("storage commitment report on the association failed: %s", exc)
            else:
                _log_answer(requestor, transaction_uid, answer.status)
                return
        address = await self._destination(requestor)
        if address is None:
            log.error(
                "storage commitment: cannot report transaction %s to %s: the association "
                "has ended and its address is not known (add it to --move-dest or the peers file)",
                transaction_uid,
                requestor,
            )
            return
        async with connect(
            *address,
            calling_ae=self.ae_title,
            called_ae=requestor,
            contexts=[(STORAGE_COMMITMENT, list(DEFAULT_TRANSFER_SYNTAXES))],
            roles=[RoleSelection(STORAGE_COMMITMENT, scu_role=False, scp_role=True)],
            ssl=self.ssl,
            timeout=self.timeout,
        ) as reporting:
            answer = await n_event_report(
                reporting, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, event, information
            )
        _log_answer(requestor, transaction_uid, answer.status)

    async def _destination(self, ae_title: str) -> tuple[str, int] | None:
        destinations = self.destinations
        if callable(destinations):
            return await destinations(ae_title)
        return destinations.get(ae_title)


def _pair(reference: Reference) -> tuple[str, str]:
    return reference.sop_class_uid, reference.sop_instance_uid


def _log_answer(requestor: str, transaction_uid: str, status: int) -> None:
    if status:
        log.warning(
            "%s answered the storage commitment report of %s with 0x%04X (%s)",
            requestor,
            transaction_uid,
            status,
            describe_status(status),
        )
    else:
        log.info("storage commitment of %s reported to %s", transaction_uid, requestor)
