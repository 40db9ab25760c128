"""Query/retrieve as SCP: turn user handlers into C-FIND, C-GET and C-MOVE responses.

Handlers are async generators, one per service:

* find: ``async def on_find(identifier, context) -> AsyncIterator[Dataset | bytes]``
  yields each match (the identifier to send back), as a pydicom Dataset or
  as bytes already encoded in ``context.transfer_syntax`` (an archive that
  encodes its rows itself skips pydicom on the hot path);
* get and move: ``async def on_get(identifier, context)`` yields first the
  number of instances (an int, for the "remaining" count), then each
  instance as a pydicom Dataset or a file path.

The server runs each operation in its own task, so a C-CANCEL-RQ is read
while the handler works; on cancel, the handler is closed and the final
response says Cancel (0xFE00) with the counts so far (PS3.4 C.4.1.3.2,
C.4.2.3.2, C.4.3.3.2). A handler that raises :class:`QueryFailed` answers
with its status; any other exception answers 0xC000 (unable to process).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

from pydicom.dataset import Dataset

from adicom.association import Association, Message
from adicom.dimse import (
    DATASET_PRESENT,
    NO_DATASET,
    Command,
    CountsTemplate,
    Status,
    describe_status,
)
from adicom.elements import DataSetTruncated
from adicom.errors import DicomError
from adicom.fileformat import IMPLICIT_VR_LITTLE_ENDIAN, decode_dataset, encode_dataset
from adicom.negotiation import NO_QR_OPTIONS, QROptions, agreed_options
from adicom.storescu import StoreResult, send_instances, sop_instance_of, store

__all__ = [
    "FindHandler",
    "MoveDestinations",
    "QRContext",
    "QueryFailed",
    "RetrieveHandler",
    "run_find",
    "run_get",
    "run_move",
]

log = logging.getLogger("adicom")


@dataclass(frozen=True, slots=True)
class QRContext:
    """What a query/retrieve handler knows about the request."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str
    address: tuple[str, int] | None
    message_id: int
    move_destination: str | None = None
    #: The transfer syntax of the request's presentation context, in which
    #: identifiers yielded as bytes must be encoded.
    transfer_syntax: str = IMPLICIT_VR_LITTLE_ENDIAN
    #: The Query/Retrieve options agreed for the request's SOP class by
    #: extended negotiation (PS3.4 C.5): with ``relational`` false, only
    #: hierarchical queries and retrieves (C.4.1.3.1, C.4.2.3.1) are owed.
    options: QROptions = NO_QR_OPTIONS


class QueryFailed(DicomError):
    """Raise from a handler to answer with a failure status, e.g. 0xA900 or 0xC000."""

    def __init__(self, status: int, comment: str) -> None:
        self.status = status
        self.comment = comment
        super().__init__(f"0x{status:04X}: {comment}")


FindHandler = Callable[[Dataset, QRContext], AsyncIterator["Dataset | bytes"]]
RetrieveHandler = Callable[
    [Dataset, QRContext], AsyncIterator["int | Dataset | str | os.PathLike[str]"]
]
#: AE title -> (host, port), or a function that answers None for unknown titles.
MoveDestinations = (
    Mapping[str, tuple[str, int]] | Callable[[str], Awaitable[tuple[str, int] | None]]
)


class Cancelled:
    """Set by the server when a C-CANCEL-RQ names the operation.

    ``in_handler`` is true while the operation awaits its handler: only then
    may the server cancel the operation's task, so that a handler stuck in
    an await stops at once, while a message half on the wire is never cut.
    """

    __slots__ = ("in_handler", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self.in_handler = False


async def _interruptible(generator: AsyncIterator[Any], cancelled: Cancelled) -> AsyncIterator[Any]:
    """The handler's items, ending early on a C-CANCEL, even one that comes mid-await."""
    while not cancelled.is_set:
        cancelled.in_handler = True
        try:
            item = await anext(generator)
        except StopAsyncIteration:
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # The server cancels the task for a C-CANCEL (stop here and
            # answer Cancel) or because the association ended (go on out).
            if cancelled.is_set and task is not None and task.uncancel() == 0:
                return
            raise
        finally:
            cancelled.in_handler = False
        yield item


def _context(association: Association, message: Message) -> QRContext:
    command = message.command
    abstract_syntax = str(association.contexts[message.context_id].abstract_syntax)
    # The association keeps the request and its answer; what they agreed
    # is read from them (a handful of sub-items at most).
    agreed = agreed_options(association.request, association.response)
    return QRContext(
        calling_ae=association.calling_ae,
        called_ae=association.called_ae,
        sop_class_uid=command.affected_sop_class_uid or "",
        address=association.peer_address,
        message_id=command.message_id or 0,
        move_destination=command.move_destination,
        transfer_syntax=str(association.contexts[message.context_id].transfer_syntax),
        options=agreed.get(abstract_syntax, NO_QR_OPTIONS),
    )


def _identifier(association: Association, message: Message) -> Dataset:
    transfer = association.contexts[message.context_id].transfer_syntax
    if message.dataset is None or transfer is None:
        raise QueryFailed(Status.CANNOT_UNDERSTAND, "the request carries no identifier")
    try:
        return decode_dataset(message.dataset, transfer)
    except DataSetTruncated as exc:
        # The Error Comment holds 64 characters (LO): the element first.
        where = "" if exc.tag is None else f" in ({exc.tag >> 16:04X},{exc.tag & 0xFFFF:04X})"
        raise QueryFailed(Status.CANNOT_UNDERSTAND, f"the identifier is cut short{where}") from None
    except Exception as exc:
        raise QueryFailed(Status.CANNOT_UNDERSTAND, f"identifier does not parse: {exc}") from None


def _response_command(request: Message, status: int, has_dataset: bool, **fields: Any) -> Command:
    rq = request.command
    return Command(
        rq.command_field | 0x8000,
        message_id_being_responded_to=rq.message_id,
        affected_sop_class_uid=rq.affected_sop_class_uid,
        status=status,
        command_data_set_type=DATASET_PRESENT if has_dataset else NO_DATASET,
        **fields,
    )


async def _respond(
    association: Association,
    request: Message,
    status: int,
    identifier: Dataset | None = None,
    **fields: Any,
) -> None:
    """A response to a C-FIND/GET/MOVE-RQ, with an identifier data set if given."""
    if identifier is None and not fields and request.command.affected_sop_instance_uid is None:
        # The usual final response: the association's template of it.
        await association.respond(request, status)
        return
    command = _response_command(request, status, identifier is not None, **fields)
    data = None
    if identifier is not None:
        transfer = association.contexts[request.context_id].transfer_syntax
        assert transfer is not None
        data = encode_dataset(identifier, transfer)
    await association.send_message(request.context_id, command, data)


async def run_find(
    association: Association, request: Message, handler: FindHandler, cancelled: Cancelled
) -> None:
    """Answer one C-FIND-RQ: a pending response per match, then the final one."""
    matches = 0
    try:
        identifier = _identifier(association, request)
        context = _context(association, request)
        generator = handler(identifier, context)
        # Every pending response carries the same command set: encode it once.
        pending = _response_command(request, Status.PENDING, has_dataset=True)
        pending_encoded = pending.encode()
        try:
            async for match in _interruptible(generator, cancelled):
                data = (
                    match
                    if isinstance(match, bytes)
                    else (encode_dataset(match, context.transfer_syntax))
                )
                await association.send_message(
                    request.context_id, pending, data, encoded=pending_encoded, batch=True
                )
                matches += 1
        finally:
            await _close(generator)
        # A C-CANCEL that came after the last match still gets Cancel.
        await _respond(association, request, Status.CANCEL if cancelled.is_set else Status.SUCCESS)
    except QueryFailed as exc:
        await _respond(association, request, exc.status, error_comment=exc.comment[:64])
    except DicomError:
        raise  # the association broke: nothing more to send
    except Exception as exc:
        log.exception("C-FIND handler failed after %d matches", matches)
        await _respond(association, request, Status.CANNOT_UNDERSTAND, error_comment=str(exc)[:64])


async def _close(generator: AsyncIterator[Any]) -> None:
    close = getattr(generator, "aclose", None)
    if close is not None:
        await close()


@dataclass
class _Counts:
    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    #: SOP Instance UIDs of the failed sub-operations (PS3.4 C.4.2.1.5).
    failed_uids: list[str] = field(default_factory=list)
    #: Why they failed, counted, for the log.
    reasons: Counter[str] = field(default_factory=Counter)

    def fields(self, final: bool = False) -> dict[str, Any]:
        # PS3.7 9.3.3.2 / 9.3.4.2: "remaining" is absent from the final response.
        return {
            "number_of_remaining_suboperations": None if final else self.remaining,
            "number_of_completed_suboperations": self.completed,
            "number_of_failed_suboperations": self.failed,
            "number_of_warning_suboperations": self.warning,
        }

    def values(self) -> tuple[int, int, int, int]:
        """Remaining, completed, failed, warning: the order of their elements."""
        return self.remaining, self.completed, self.failed, self.warning

    def count(self, result: StoreResult) -> None:
        self.remaining = max(self.remaining - 1, 0)
        if not result.ok:
            self.fail(result.sop_instance_uid, _reason(result))
        elif result.status:
            self.warning += 1
        else:
            self.completed += 1

    def fail(self, sop_instance_uid: str, reason: str) -> None:
        self.failed += 1
        self.failed_uids.append(sop_instance_uid)
        self.reasons[reason] += 1

    def failed_identifier(self) -> Dataset | None:
        """The final response's identifier: Failed SOP Instance UID List (PS3.4 C.4.2.1.5)."""
        if not self.failed_uids:
            return None
        identifier = Dataset()
        identifier.FailedSOPInstanceUIDList = self.failed_uids
        return identifier

    def explain(self) -> str:
        """The reasons for the failures, most frequent first."""
        return "; ".join(
            f"{n} x {reason}" if n > 1 else reason for reason, n in self.reasons.most_common()
        )


def _reason(result: StoreResult) -> str:
    if result.error:
        return result.error
    if result.status is not None:
        return describe_status(result.status)
    return "no response"


def _pending_response(request: Message) -> CountsTemplate:
    """The pending C-GET/C-MOVE-RSP of ``request``, encoded once (PS3.7 9.3.3.2, 9.3.4.2)."""
    return CountsTemplate(_response_command(request, Status.PENDING, False, **_Counts().fields()))


def _final_status(counts: _Counts) -> int:
    # PS3.4 C.4.2.1.5 / C.4.3.1.4: all failed -> failure; some -> warning.
    if counts.failed and not counts.completed and not counts.warning:
        return Status.OUT_OF_RESOURCES_SUB_OPERATIONS
    if counts.failed or counts.warning:
        return Status.SUB_OPERATIONS_WARNING
    return Status.SUCCESS


async def _run_retrieve(
    association: Association,
    request: Message,
    handler: RetrieveHandler,
    cancelled: Cancelled,
    send: Callable[[AsyncIterator[Any], _Counts], Awaitable[bool]],
) -> None:
    """What C-GET and C-MOVE share: start the handler, count, send the final response.

    ``send`` takes the handler's instances (after the announced count) and
    returns False if it stopped on a C-CANCEL.
    """
    counts = _Counts()
    try:
        identifier = _identifier(association, request)
        generator = handler(identifier, _context(association, request))
        try:
            items = _interruptible(generator, cancelled)
            first = await anext(items, None)
            if isinstance(first, int):
                counts.remaining = first
            else:
                items = _prepend(first, items)
            finished = await send(items, counts) and not cancelled.is_set
        finally:
            await _close(generator)
        status = _final_status(counts) if finished else Status.CANCEL
        if counts.failed:
            # The requestor sees only counts and UIDs; the operator sees why.
            log.warning(
                "%s from %s: %d of %d sub-operations failed: %s",
                request.command.name,
                association.calling_ae,
                counts.failed,
                counts.failed + counts.completed + counts.warning,
                counts.explain(),
            )
        await _respond(
            association, request, status, counts.failed_identifier(), **counts.fields(True)
        )
    except QueryFailed as exc:
        await _respond(association, request, exc.status, error_comment=exc.comment[:64])
    except DicomError:
        raise
    except Exception as exc:
        log.exception("retrieve handler failed")
        await _respond(association, request, Status.CANNOT_UNDERSTAND, error_comment=str(exc)[:64])


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is not None:
        yield first
    async for item in rest:
        yield item


async def run_get(
    association: Association, request: Message, handler: RetrieveHandler, cancelled: Cancelled
) -> None:
    """Answer one C-GET-RQ: each instance as a C-STORE on this association (PS3.4 C.4.3).

    Instances are sent as the handler yields them, each followed by a
    pending response with the counts.
    """
    pending_response = _pending_response(request)

    async def send(items: AsyncIterator[Any], counts: _Counts) -> bool:
        async def sent(_instance: Any, result: StoreResult) -> None:
            counts.count(result)
            # Batched: it may leave with the next sub-operation's C-STORE-RQ.
            await association.send_message(
                request.context_id,
                pending_response.command,
                encoded=pending_response.encode(*counts.values()),
                batch=True,
            )

        # As many sub-operations in flight as the requestor agreed to perform
        # (PS3.7 D.3.3.3), the next file read while it stores the last.
        await send_instances(
            association, items, sent, scp_role_required=True, stop=lambda: cancelled.is_set
        )
        return not cancelled.is_set

    await _run_retrieve(association, request, handler, cancelled, send)


async def run_move(
    association: Association,
    request: Message,
    handler: RetrieveHandler,
    cancelled: Cancelled,
    destinations: MoveDestinations,
    ae_title: str,
    ssl: SSLContext | None = None,
) -> None:
    """Answer one C-MOVE-RQ: send the instances to the named destination (PS3.4 C.4.2).

    ``ssl`` runs the association to the destination over TLS.
    """
    name = (request.command.move_destination or "").strip()
    if callable(destinations):
        address = await destinations(name)
    else:
        address = destinations.get(name)
    if address is None:
        await _respond(
            association,
            request,
            Status.MOVE_DESTINATION_UNKNOWN,
            error_comment=f"unknown move destination {name!r}"[:64],
        )
        return
    host, port = address
    pending_response = _pending_response(request)

    async def send(found: AsyncIterator[Any], counts: _Counts) -> bool:
        # The sub-association needs its contexts up front, so gather the
        # (usually file path) items first; PS3.4 C.4.2.2.
        items = [item async for item in found]
        if cancelled.is_set:
            return False  # cancelled before anything was sent
        if counts.remaining == 0:
            counts.remaining = len(items)
        if not items:
            return True
        pending: list[StoreResult] = []

        async def progress(result: StoreResult) -> None:
            pending.append(result)
            counts.count(result)
            await association.send_message(
                request.context_id,
                pending_response.command,
                encoded=pending_response.encode(*counts.values()),
            )

        try:
            # On a C-CANCEL nothing more is sent; the sub-operations already
            # sent are awaited and counted (they are at the destination).
            await store(
                host,
                port,
                items,
                calling_ae=ae_title,
                called_ae=name,
                progress=progress,
                move_originator=(association.calling_ae, request.command.message_id or 0),
                stop=lambda: cancelled.is_set,
                ssl=ssl,
            )
        except DicomError as exc:
            # The destination is unreachable or refused us: every instance not sent failed.
            log.warning("C-MOVE to %s at %s:%d failed: %s", name, host, port, exc)
            for item in items[len(pending) :]:
                counts.remaining = max(counts.remaining - 1, 0)
                counts.fail(sop_instance_of(item), f"move destination {name}: {exc}")
        return not cancelled.is_set

    await _run_retrieve(association, request, handler, cancelled, send)
