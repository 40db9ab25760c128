"""Query/retrieve as SCU: C-FIND, C-GET, C-MOVE and C-CANCEL (PS3.4 Annex C, PS3.7 9.1.2-9.1.4).

These work on an open :class:`~adicom.association.Association` that
negotiated the right contexts (see :func:`find_contexts`,
:func:`get_contexts`, :func:`move_contexts`); :class:`adicom.DicomClient`
wraps them with association handling and pydantic models.

Stopping early is part of the protocol: leaving a :func:`find` loop, a
timeout or a cancelled task sends C-CANCEL-RQ and waits a short, bounded
time for the final response; a peer that does not answer then is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from adicom.association import Association, Message, Operation
from adicom.dimse import (
    DATASET_PRESENT,
    Command,
    CommandField,
    Priority,
    Status,
    StatusCategory,
    describe_status,
    status_category,
)
from adicom.errors import DicomError, DimseError
from adicom.fileformat import decode_dataset, encode_dataset
from adicom.pdu import RoleSelection
from adicom.presentation import DEFAULT_TRANSFER_SYNTAXES
from adicom.storage import IncomingInstance, StorageHandler, answer_store, sink_factory

__all__ = [
    "DEFAULT_GET_SOP_CLASSES",
    "FindResults",
    "RetrieveCancelled",
    "RetrieveProgress",
    "find",
    "find_contexts",
    "get",
    "get_contexts",
    "move",
    "move_contexts",
]

log = logging.getLogger("adicom")

Model = Literal["patient", "study", "composite", "worklist"]

# Information model SOP classes (PS3.4 C.6 and K.6).
_FIND = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.1",
    "study": "1.2.840.10008.5.1.4.1.2.2.1",
    "worklist": "1.2.840.10008.5.1.4.31",
}
_MOVE = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.2",
    "study": "1.2.840.10008.5.1.4.1.2.2.2",
    "composite": "1.2.840.10008.5.1.4.1.2.4.2",
}
_GET = {
    "patient": "1.2.840.10008.5.1.4.1.2.1.3",
    "study": "1.2.840.10008.5.1.4.1.2.2.3",
    "composite": "1.2.840.10008.5.1.4.1.2.4.3",
}

#: Image storage classes a C-GET offers to receive compressed as well.
_IMAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "2", "2.1", "4", "4.1", "1", "1.1", "1.1.1", "1.2", "6.1", "3.1", "7", "7.4",
        "12.1", "20", "128", "481.1",
    )
)  # fmt: skip
#: ... and the other classes, uncompressed only (SR, RT, documents, ...).
_OTHER_SOP_CLASSES: tuple[str, ...] = tuple(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "481.2", "481.3", "481.5", "88.11", "88.22", "88.33", "88.59", "11.1", "66.4",
        "104.1", "66",
    )
)  # fmt: skip
#: Storage SOP classes a C-GET offers to receive by default: the common
#: image, structured report, RT and document classes (PS3.4 Annex B).
DEFAULT_GET_SOP_CLASSES: tuple[str, ...] = _IMAGE_SOP_CLASSES + _OTHER_SOP_CLASSES

#: The compressed syntaxes offered for image classes, each in a context of
#: its own: an SCP picks one syntax per context, so only separate contexts
#: let it send each instance as it is stored (JPEG, JPEG-LS, JPEG 2000, RLE).
GET_COMPRESSED_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)

_QUERY_SYNTAXES = list(DEFAULT_TRANSFER_SYNTAXES[:2])


def _sop(table: dict[str, str], model: str, what: str) -> str:
    try:
        return table[model]
    except KeyError:
        raise ValueError(f"no {what} in the {model!r} information model") from None


def find_contexts(model: Model = "study") -> list[tuple[str, list[str]]]:
    """The presentation context a C-FIND in ``model`` needs."""
    return [(_sop(_FIND, model, "C-FIND"), _QUERY_SYNTAXES)]


def move_contexts(model: Model = "study") -> list[tuple[str, list[str]]]:
    """The presentation context a C-MOVE in ``model`` needs."""
    return [(_sop(_MOVE, model, "C-MOVE"), _QUERY_SYNTAXES)]


def get_contexts(
    model: Model = "study", sop_classes: Sequence[str] = DEFAULT_GET_SOP_CLASSES
) -> tuple[list[tuple[str, list[str]]], list[RoleSelection]]:
    """Contexts and role selections for a C-GET: the model, and each storage class as SCP.

    PS3.4 C.4.3.1: the C-STOREs come back on the same association, so the
    requestor proposes the SCP role for every storage SOP class it wants
    (PS3.7 D.3.3.4). Each class gets an uncompressed context; image classes
    also one context per common compressed syntax. Raises ValueError past
    PS3.8's 128 contexts.
    """
    contexts = [(_sop(_GET, model, "C-GET"), _QUERY_SYNTAXES)]
    for sop in sop_classes:
        # Compressed contexts come first: some SCPs (DCMTK's dcmqrscp) send
        # each sub-operation on the first accepted context of its class,
        # whatever the file's syntax, and accept compressed contexts only
        # for syntaxes they hold; others (pynetdicom) match the syntax.
        if sop in _IMAGE_SOP_CLASSES:
            contexts += [(sop, [syntax]) for syntax in GET_COMPRESSED_SYNTAXES]
        contexts.append((sop, list(DEFAULT_TRANSFER_SYNTAXES[:2])))
    if len(contexts) > 128:
        raise ValueError(
            f"{len(sop_classes)} storage SOP classes need {len(contexts)} presentation "
            "contexts for a C-GET; PS3.8 allows 128"
        )
    roles = [RoleSelection(sop, scu_role=False, scp_role=True) for sop in sop_classes]
    return contexts, roles


def _context_for(association: Association, sop_class: str) -> int:
    return association.context_for(sop_class).context_id


def _identifier_bytes(association: Association, context_id: int, identifier: Dataset) -> bytes:
    transfer = association.contexts[context_id].transfer_syntax
    assert transfer is not None
    return encode_dataset(identifier, transfer)


# --------------------------------------------------------------------------
# C-FIND


class FindResults:
    """The matches of a C-FIND, as they arrive; an async iterator of Datasets.

    Use it as ``async with`` (or call :meth:`aclose`) when you may stop
    early: leaving sends C-CANCEL-RQ so the peer stops searching. After
    the loop, :attr:`status` holds the final status. A failure status
    raises :class:`~adicom.errors.DimseError` from the loop.
    """

    def __init__(
        self,
        association: Association,
        identifier: Dataset,
        model: Model = "study",
        priority: int = Priority.MEDIUM,
    ) -> None:
        self._association = association
        self._sop_class = _sop(_FIND, model, "C-FIND")
        self._identifier = identifier
        self._priority = priority
        self._operation: Operation | None = None
        #: The final status, once the last response arrived.
        self.status: int | None = None
        #: How many matches arrived.
        self.count = 0

    def __aiter__(self) -> FindResults:
        return self

    async def __anext__(self) -> Dataset:
        operation = self._operation
        if operation is None:
            context_id = _context_for(self._association, self._sop_class)
            command = Command(
                CommandField.C_FIND_RQ,
                affected_sop_class_uid=self._sop_class,
                priority=self._priority,
                command_data_set_type=DATASET_PRESENT,
            )
            data = _identifier_bytes(self._association, context_id, self._identifier)
            operation = self._operation = await self._association.start_operation(
                context_id, command, data
            )
        if operation.done:
            raise StopAsyncIteration
        reply = await operation.next_response()
        status = reply.command.status or 0
        category = status_category(status)
        if category is StatusCategory.PENDING:
            self.count += 1
            return self._decode(reply)
        self.status = status
        if category is StatusCategory.FAILURE:
            raise DimseError(status, "C-FIND failed: " + _describe(reply))
        raise StopAsyncIteration

    def _decode(self, reply: Message) -> Dataset:
        if reply.dataset is None:
            raise DimseError(reply.command.status or 0, "a pending C-FIND-RSP without identifier")
        transfer = self._association.contexts[reply.context_id].transfer_syntax
        assert transfer is not None
        try:
            return decode_dataset(reply.dataset, transfer)
        except Exception as exc:
            # The peer's bytes, not the caller's mistake: a DicomError, so it
            # is never taken for a usage error (a ValueError).
            raise DimseError(
                reply.command.status or 0,
                f"C-FIND match {self.count}: the identifier does not decode "
                f"as {transfer.name}: {exc}",
            ) from None

    async def aclose(self) -> None:
        """Stop: send C-CANCEL-RQ if the peer is still searching (bounded wait)."""
        if self._operation is not None and not self._operation.done:
            final = await self._operation.cancel()
            if final is not None:
                self.status = final.command.status

    async def __aenter__(self) -> FindResults:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.aclose())


def find(
    association: Association,
    identifier: Dataset,
    *,
    model: Model = "study",
    priority: int = Priority.MEDIUM,
) -> FindResults:
    """C-FIND with ``identifier``; iterate the result for the matches."""
    return FindResults(association, identifier, model, priority)


def _describe(reply: Message) -> str:
    status = reply.command.status or 0
    text = describe_status(status)
    if reply.command.error_comment:
        text += f" ({reply.command.error_comment})"
    return text


# --------------------------------------------------------------------------
# C-GET and C-MOVE


@dataclass
class RetrieveProgress:
    """Where a C-GET or C-MOVE stands: the counts of its latest response (PS3.7 9.3.3.2).

    ``status`` is the latest status; ``failed_sop_instances`` comes with the
    final response (Failed SOP Instance UID List, (0008,0058)). ``paths``
    lists the files a C-GET stored, when its storage wrote files.
    """

    status: int | None = None
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instances: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    cancelled: bool = False

    def update(self, command: Command) -> None:
        """Take the counts of one response."""
        self.status = command.status
        if command.number_of_remaining_suboperations is not None:
            self.remaining = command.number_of_remaining_suboperations
        for name in ("completed", "failed", "warning"):
            value = getattr(command, f"number_of_{name}_suboperations")
            if value is not None:
                setattr(self, name, value)


class RetrieveCancelled(DicomError):
    """A C-GET or C-MOVE was stopped before its end.

    ``why`` is "timeout" (the operation's timeout passed) ; ``acknowledged``
    says whether the peer answered the C-CANCEL-RQ (else the association was
    aborted). ``progress`` holds what was retrieved until then: instances
    already stored stay stored.
    """

    def __init__(self, why: str, acknowledged: bool, progress: RetrieveProgress) -> None:
        self.why = why
        self.acknowledged = acknowledged
        self.progress = progress
        answer = (
            "the peer acknowledged the C-CANCEL"
            if acknowledged
            else "the peer did not answer the C-CANCEL, so the association was aborted"
        )
        super().__init__(f"retrieve stopped ({why}) after {progress.completed} instances; {answer}")


async def _run_retrieve(
    operation: Operation,
    progress: RetrieveProgress,
    on_progress: Callable[[RetrieveProgress], None] | None,
    timeout: float | None,
    association: Association,
) -> RetrieveProgress:
    async def responses() -> None:
        while not operation.done:
            reply = await operation.next_response()
            progress.update(reply.command)
            if operation.done and reply.dataset is not None:
                progress.failed_sop_instances = _failed_list(association, reply)
            if on_progress is not None:
                on_progress(progress)

    try:
        if timeout is None:
            await responses()
        else:
            async with asyncio.timeout(timeout):
                await responses()
    except TimeoutError:
        final = await operation.cancel()
        progress.cancelled = True
        if final is not None:
            progress.update(final.command)
        raise RetrieveCancelled("timeout", final is not None, progress) from None
    except asyncio.CancelledError:
        # The caller's task was cancelled: tell the peer, then let the
        # cancellation go on (PS3.7 9.3.2.3).
        progress.cancelled = True
        await asyncio.shield(operation.cancel())
        raise
    return progress


def _failed_list(association: Association, reply: Message) -> list[str]:
    transfer = association.contexts[reply.context_id].transfer_syntax
    assert transfer is not None and reply.dataset is not None
    try:
        identifier = decode_dataset(reply.dataset, transfer)
    except Exception:
        return []
    if "FailedSOPInstanceUIDList" not in identifier:
        return []
    raw = identifier.FailedSOPInstanceUIDList
    items = list(raw) if isinstance(raw, list | tuple | MultiValue) else str(raw).split("\\")
    return [str(uid) for uid in items if uid]


async def get(
    association: Association,
    identifier: Dataset,
    storage: StorageHandler,
    *,
    model: Model = "study",
    priority: int = Priority.MEDIUM,
    progress: Callable[[RetrieveProgress], None] | None = None,
    timeout: float | None = None,
) -> RetrieveProgress:
    """C-GET: the matching instances come back as C-STOREs on this association.

    They go to ``storage`` (a DiskStorage, MemoryStorage, CallbackStorage)
    as they arrive. ``progress`` is called after each response with the
    counts. ``timeout`` bounds the whole retrieve: when it passes, C-CANCEL
    is sent and :class:`RetrieveCancelled` raised. The final status is in
    the result; a failure status raises nothing, so the counts stay usable.
    """
    sop_class = _sop(_GET, model, "C-GET")
    context_id = _context_for(association, sop_class)
    state = RetrieveProgress()
    previous = association.on_dataset
    association.on_dataset = sink_factory(association, storage)

    async def serve_stores() -> None:
        while True:
            message = await association.receive_request()
            if message is None:
                return
            await _answer_sub_operation(association, message, state)

    command = Command(
        CommandField.C_GET_RQ,
        affected_sop_class_uid=sop_class,
        priority=priority,
        command_data_set_type=DATASET_PRESENT,
    )
    server = asyncio.get_running_loop().create_task(serve_stores())
    try:
        operation = await association.start_operation(
            context_id, command, _identifier_bytes(association, context_id, identifier)
        )
        return await _run_retrieve(operation, state, progress, timeout, association)
    finally:
        server.cancel()
        await asyncio.wait([server])  # our own cancellation still propagates
        if not server.cancelled() and server.exception() is not None:
            log.debug("C-GET sub-operation server ended: %s", server.exception())
        association.on_dataset = previous


async def _answer_sub_operation(
    association: Association, message: Message, state: RetrieveProgress
) -> None:
    command = message.command
    if command.command_field == CommandField.C_STORE_RQ and (
        message.refused is not None or isinstance(message.sink, IncomingInstance)
    ):
        stored = await answer_store(association, message)
        if stored is not None and stored.path is not None:
            state.paths.append(stored.path)
    elif not command.is_response and command.command_field != CommandField.C_CANCEL_RQ:
        # Only C-STORE sub-operations belong here (PS3.4 C.4.3.3).
        await association.respond(message, Status.UNRECOGNIZED_OPERATION)


async def move(
    association: Association,
    identifier: Dataset,
    destination_ae: str,
    *,
    model: Model = "study",
    priority: int = Priority.MEDIUM,
    progress: Callable[[RetrieveProgress], None] | None = None,
    timeout: float | None = None,
) -> RetrieveProgress:
    """C-MOVE: the peer sends the matching instances to ``destination_ae``.

    The counts and cancellation work as for :func:`get`. A destination the
    peer does not know is its failure status 0xA801 in the result.
    """
    sop_class = _sop(_MOVE, model, "C-MOVE")
    context_id = _context_for(association, sop_class)
    command = Command(
        CommandField.C_MOVE_RQ,
        affected_sop_class_uid=sop_class,
        priority=priority,
        command_data_set_type=DATASET_PRESENT,
        move_destination=destination_ae,
    )
    operation = await association.start_operation(
        context_id, command, _identifier_bytes(association, context_id, identifier)
    )
    return await _run_retrieve(operation, RetrieveProgress(), progress, timeout, association)
