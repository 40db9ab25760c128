"""DIMSE-N (PS3.7 Chapter 10): N-EVENT-REPORT, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE.

The DIMSE-C services work on composite instances (an image, a report);
the DIMSE-N services work on normalized SOP instances the SCP manages: a
Storage Commitment request (N-ACTION, answered later by N-EVENT-REPORT), a
Modality Performed Procedure Step (N-CREATE, then N-SET), a print job.

As SCU: :func:`n_action`, :func:`n_event_report`, :func:`n_get`,
:func:`n_set`, :func:`n_create` and :func:`n_delete` send a request on an
open association and return an :class:`NResult`; a failure status raises
nothing (the caller judges, as with C-STORE). As SCP: a :data:`NHandler`
per SOP class, given to :class:`adicom.Server` as ``n_handlers``, turns an
:class:`NRequest` into an :class:`NResponse`.

Which command carries which UID (PS3.7 Tables 10.3-1 to 10.3-12): the
requests of N-GET, N-SET, N-ACTION and N-DELETE name the *Requested* SOP
class and instance, those of N-EVENT-REPORT and N-CREATE the *Affected*
ones; every response names the *Affected* ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from adicom.dimse import (
    DATASET_PRESENT,
    Command,
    CommandField,
    Status,
    StatusCategory,
    status_category,
)
from adicom.errors import DimseError
from adicom.fileformat import decode_dataset, encode_dataset

if TYPE_CHECKING:
    from adicom.association import Association, Message

__all__ = [
    "N_REQUESTS",
    "NHandler",
    "NRequest",
    "NResponse",
    "NResult",
    "answer_n",
    "n_action",
    "n_create",
    "n_delete",
    "n_event_report",
    "n_get",
    "n_set",
]

log = logging.getLogger("adicom")

#: The six DIMSE-N requests (PS3.7 10.3).
N_REQUESTS = frozenset(
    {
        CommandField.N_EVENT_REPORT_RQ,
        CommandField.N_GET_RQ,
        CommandField.N_SET_RQ,
        CommandField.N_ACTION_RQ,
        CommandField.N_CREATE_RQ,
        CommandField.N_DELETE_RQ,
    }
)
_REQUESTED = frozenset(
    {
        CommandField.N_GET_RQ,
        CommandField.N_SET_RQ,
        CommandField.N_ACTION_RQ,
        CommandField.N_DELETE_RQ,
    }
)


@dataclass(frozen=True, slots=True)
class NResult:
    """The response to a DIMSE-N request.

    ``dataset`` is the response's data set (N-GET's attributes, N-ACTION's
    reply, N-CREATE's or N-SET's attributes as the SCP holds them), None
    when it carried none. ``sop_instance_uid`` is the Affected SOP Instance
    UID of the response: for N-CREATE the instance the SCP made.
    """

    status: int
    command: Command
    dataset: Dataset | None = None

    @property
    def ok(self) -> bool:
        """True for success and warning statuses (the operation was performed)."""
        return status_category(self.status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)

    @property
    def sop_instance_uid(self) -> str | None:
        """The response's Affected SOP Instance UID."""
        return self.command.affected_sop_instance_uid

    @property
    def error_comment(self) -> str | None:
        """The peer's Error Comment (0000,0902), when it gave one."""
        return self.command.error_comment

    def check(self, what: str = "") -> NResult:
        """Return self, or raise :class:`DimseError` for a failure status."""
        if not self.ok:
            name = what or self.command.name.removesuffix("-RSP")
            detail = f" ({self.error_comment})" if self.error_comment else ""
            raise DimseError(self.status, f"{name} failed{detail}")
        return self


# --------------------------------------------------------------------------
# SCU


async def _request(
    association: Association,
    field: CommandField,
    sop_class_uid: str,
    sop_instance_uid: str | None,
    dataset: Dataset | None,
    *,
    context_class: str | None = None,
    timeout: float | None = None,
    **fields: object,
) -> NResult:
    context = association.context_for(context_class or sop_class_uid)
    transfer = str(context.transfer_syntax)
    requested = field in _REQUESTED
    command = Command(
        field,
        affected_sop_class_uid=None if requested else sop_class_uid,
        requested_sop_class_uid=sop_class_uid if requested else None,
        affected_sop_instance_uid=None if requested else sop_instance_uid,
        requested_sop_instance_uid=sop_instance_uid if requested else None,
        command_data_set_type=DATASET_PRESENT if dataset is not None else 0x0101,
        **fields,  # type: ignore[arg-type]
    )
    data = None if dataset is None else encode_dataset(dataset, transfer)
    operation = await association.start_operation(context.context_id, command, data)
    reply = await operation.next_response(timeout)
    while not operation.done:  # DIMSE-N has no pending responses; skip any, bounded
        reply = await operation.next_response(timeout)
    response = reply.command
    answer = None
    if reply.dataset is not None:
        try:
            answer = decode_dataset(reply.dataset, transfer)
        except Exception as exc:  # pydicom raises many kinds on bad data
            raise DimseError(
                Status.PROCESSING_FAILURE, f"the {response.name} data set does not parse: {exc}"
            ) from None
    return NResult(response.status or 0, response, answer)


async def n_event_report(
    association: Association,
    sop_class_uid: str,
    sop_instance_uid: str,
    event_type_id: int,
    event_information: Dataset | None = None,
    *,
    timeout: float | None = None,
) -> NResult:
    """N-EVENT-REPORT-RQ (PS3.7 10.1.1): tell the peer an event of an instance."""
    return await _request(
        association,
        CommandField.N_EVENT_REPORT_RQ,
        sop_class_uid,
        sop_instance_uid,
        event_information,
        timeout=timeout,
        event_type_id=event_type_id,
    )


async def n_get(
    association: Association,
    sop_class_uid: str,
    sop_instance_uid: str,
    attributes: Sequence[int] = (),
    *,
    timeout: float | None = None,
) -> NResult:
    """N-GET-RQ (PS3.7 10.1.2): these attributes (tags) of an instance; none: all."""
    return await _request(
        association,
        CommandField.N_GET_RQ,
        sop_class_uid,
        sop_instance_uid,
        None,
        timeout=timeout,
        attribute_identifier_list=tuple(attributes) if attributes else None,
    )


async def n_set(
    association: Association,
    sop_class_uid: str,
    sop_instance_uid: str,
    modifications: Dataset,
    *,
    timeout: float | None = None,
) -> NResult:
    """N-SET-RQ (PS3.7 10.1.3): change attributes of an instance."""
    return await _request(
        association,
        CommandField.N_SET_RQ,
        sop_class_uid,
        sop_instance_uid,
        modifications,
        timeout=timeout,
    )


async def n_action(
    association: Association,
    sop_class_uid: str,
    sop_instance_uid: str,
    action_type_id: int,
    action_information: Dataset | None = None,
    *,
    timeout: float | None = None,
) -> NResult:
    """N-ACTION-RQ (PS3.7 10.1.4): ask the peer to perform an action on an instance."""
    return await _request(
        association,
        CommandField.N_ACTION_RQ,
        sop_class_uid,
        sop_instance_uid,
        action_information,
        timeout=timeout,
        action_type_id=action_type_id,
    )


async def n_create(
    association: Association,
    sop_class_uid: str,
    attributes: Dataset | None = None,
    sop_instance_uid: str | None = None,
    *,
    timeout: float | None = None,
) -> NResult:
    """N-CREATE-RQ (PS3.7 10.1.5): create an instance (its UID ours, or the SCP's)."""
    return await _request(
        association,
        CommandField.N_CREATE_RQ,
        sop_class_uid,
        sop_instance_uid,
        attributes,
        timeout=timeout,
    )


async def n_delete(
    association: Association,
    sop_class_uid: str,
    sop_instance_uid: str,
    *,
    timeout: float | None = None,
) -> NResult:
    """N-DELETE-RQ (PS3.7 10.1.6): delete an instance."""
    return await _request(
        association,
        CommandField.N_DELETE_RQ,
        sop_class_uid,
        sop_instance_uid,
        None,
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# SCP


@dataclass(frozen=True, slots=True)
class NRequest:
    """A DIMSE-N request as an SCP's handler sees it."""

    #: The request's command set (its event, action and attribute lists are there).
    command: Command
    #: Its data set, decoded; None when it carried none.
    dataset: Dataset | None
    #: The association it came on (to answer later on it, while it is open).
    association: Association

    @property
    def field(self) -> CommandField:
        """Which request it is (CommandField.N_ACTION_RQ, ...)."""
        return CommandField(self.command.command_field)

    @property
    def sop_class_uid(self) -> str:
        """The SOP class it is about."""
        return self.command.sop_class_uid or ""

    @property
    def sop_instance_uid(self) -> str | None:
        """The SOP instance it is about (None: N-CREATE leaving the UID to the SCP)."""
        return self.command.sop_instance_uid

    @property
    def calling_ae(self) -> str:
        """Who sent it."""
        return self.association.calling_ae


@dataclass(slots=True)
class NResponse:
    """What an SCP's handler answers.

    ``sop_instance_uid`` overrides the instance named in the response (N-CREATE
    without one: the UID the SCP made). ``then``, when given, runs after the
    response has been sent, as a task of the server that outlives the
    association (a Storage Commitment result, reported later).
    """

    status: int = Status.SUCCESS
    dataset: Dataset | None = None
    sop_instance_uid: str | None = None
    error_comment: str | None = None
    #: Error ID (0000,0903): a service's own code for the failure (PS3.7 C.5).
    error_id: int | None = None
    offending_element: tuple[int, ...] | None = None
    then: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)


#: An SCP's handler of the DIMSE-N requests of one SOP class.
NHandler = Callable[[NRequest], Awaitable[NResponse]]


async def answer_n(association: Association, message: Message, handler: NHandler) -> NResponse:
    """Decode a DIMSE-N request, run ``handler`` and send its response (PS3.7 10.3).

    A data set that does not parse is answered 0x0110 (processing failure)
    without calling the handler; so is a handler that raises (logged). The
    response echoes the Action or Event Type ID as PS3.7 10.3.1 and 10.3.4 ask.
    """
    command = message.command
    transfer = str(association.contexts[message.context_id].transfer_syntax)
    response: NResponse
    dataset = None
    try:
        if message.dataset is not None:
            dataset = decode_dataset(message.dataset, transfer)
            for _ in dataset.iterall():  # pydicom parses lazily: every value now
                pass
    except Exception as exc:  # pydicom raises many kinds on bad data
        response = NResponse(
            Status.PROCESSING_FAILURE, error_comment=f"the data set does not parse: {exc}"
        )
    else:
        try:
            response = await handler(NRequest(command, dataset, association))
        except Exception:
            log.exception("the %s handler failed", command.name)
            response = NResponse(Status.PROCESSING_FAILURE, error_comment="the SCP failed")
    data = None if response.dataset is None else encode_dataset(response.dataset, transfer)
    reply = Command(
        command.command_field | 0x8000,
        message_id_being_responded_to=command.message_id,
        affected_sop_class_uid=command.sop_class_uid,
        affected_sop_instance_uid=response.sop_instance_uid or command.sop_instance_uid,
        status=response.status,
        command_data_set_type=DATASET_PRESENT if data is not None else 0x0101,
        event_type_id=command.event_type_id,
        action_type_id=command.action_type_id,
        error_comment=response.error_comment[:64] if response.error_comment else None,
        offending_element=response.offending_element,
        error_id=response.error_id,
    )
    await association.send_message(message.context_id, reply, data)
    return response
