"""Serving the requests of an accepted association: the DIMSE half of the server.

:class:`RequestServing` holds the loop over an association's requests
once it is accepted: C-ECHO and C-STORE answered (at once when they can
be), C-FIND, C-GET, C-MOVE and DIMSE-N requests run as tasks so that a
C-CANCEL-RQ is read while they work, and the audit trail of each. The
server (adicom.server) inherits it; this module does not import it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from functools import partial
from ssl import SSLContext
from typing import Any

from pydicom.dataset import Dataset

from adicom.association import Association, Message
from adicom.audit import AuditLog
from adicom.dimse import CommandField, Status, is_n
from adicom.fileformat import decode_dataset
from adicom.nservices import N_REQUESTS, NHandler, NRequest, NResponse, answer_n
from adicom.presentation import WORKLIST_FIND
from adicom.qrscp import (
    Cancelled,
    FindHandler,
    MoveDestinations,
    RetrieveHandler,
    run_find,
    run_get,
    run_move,
)
from adicom.storage import IncomingInstance, StoreContext, answer_store

__all__ = ["RequestServing"]

log = logging.getLogger("adicom")

# Read per request, as plain names: an Enum member read through its class
# costs a descriptor call (Python 3.11, ~1k instructions).
_C_ECHO_RQ, _C_STORE_RQ = CommandField.C_ECHO_RQ, CommandField.C_STORE_RQ
_SUCCESS = Status.SUCCESS


class RequestServing:
    """The request loop of the associations a server accepted (a base of Server).

    It reads what the server sets up (its handlers, audit trail, limits
    and counts, see :class:`~adicom.server.Server`) and adds nothing public.
    """

    ae_title: str
    outgoing_ssl: SSLContext | None
    audit: AuditLog | None
    on_find: FindHandler | None
    on_get: RetrieveHandler | None
    on_move: RetrieveHandler | None
    on_worklist: FindHandler | None
    move_destinations: MoveDestinations
    n_handlers: dict[str, NHandler]
    max_background: int
    stats: dict[str, int]
    _tasks: set[asyncio.Task[None]]
    _background: set[asyncio.Task[None]]

    async def _handle_requests(self, association: Association) -> None:
        # Query/retrieve operations run as tasks so that a C-CANCEL-RQ is
        # read while they work; at most a few run at once (window 1/1).
        operations: dict[int, tuple[asyncio.Task[None], Cancelled]] = {}
        # PS3.4 A.4: the Verification SCP answers Success; a C-ECHO-RQ, and
        # a C-STORE-RQ whose instance is stored at once, are answered in the
        # callback that read them, without waking this task.
        association.on_request = partial(self._answer_now, association)
        try:
            while True:
                message = await association.receive_request()
                if message is None:
                    self.stats["released"] += 1
                    return
                for done in [k for k, (task, _) in operations.items() if task.done()]:
                    task = operations.pop(done)[0]
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if not self._start_operation(association, message, operations):
                    await self._dispatch(association, message, operations)
        finally:
            for task, _ in operations.values():
                task.cancel()
            if operations:
                await asyncio.wait([task for task, _ in operations.values()])

    def _start_operation(
        self,
        association: Association,
        message: Message,
        operations: dict[int, tuple[asyncio.Task[None], Cancelled]],
    ) -> bool:
        field = message.command.command_field
        if field == CommandField.C_STORE_RQ or field == CommandField.C_ECHO_RQ:
            return False  # the hot path: answered by _dispatch
        cancelled = Cancelled()
        runner: Coroutine[Any, Any, None]
        if field == CommandField.C_FIND_RQ and (
            find := self.on_worklist
            if message.command.affected_sop_class_uid == WORKLIST_FIND
            else self.on_find
        ):
            runner = run_find(association, message, find, cancelled)
        elif field == CommandField.C_GET_RQ and self.on_get is not None:
            runner = run_get(association, message, self.on_get, cancelled)
        elif field == CommandField.C_MOVE_RQ and self.on_move is not None:
            runner = run_move(
                association,
                message,
                self.on_move,
                cancelled,
                self.move_destinations,
                self.ae_title,
                self.outgoing_ssl,
            )
        elif (
            field in N_REQUESTS
            and (handler := self.n_handlers.get(message.command.sop_class_uid or "")) is not None
        ):
            runner = self._run_n(association, message, handler)
        else:
            return False
        if self.audit is not None and not is_n(field):
            self._audit_operation(association, message)
        task = asyncio.get_running_loop().create_task(runner)
        task.add_done_callback(lambda done: _operation_ended(done, association))
        operations[message.command.message_id or 0] = (task, cancelled)
        return True

    async def _run_n(self, association: Association, message: Message, handler: NHandler) -> None:
        """Answer a DIMSE-N request; what the handler leaves for later runs as a server task.

        That work outlives the association, so a peer could pile it up
        (a Storage Commitment request a second, each reported later): with
        ``max_background`` pieces pending, a request is answered 0x0213
        (resource limitation, PS3.7 C.5) without calling the handler.
        """
        if len(self._background) >= self.max_background:
            log.warning(
                "refusing %s from %s: %d tasks of earlier requests are still running",
                message.command.name,
                association.calling_ae,
                len(self._background),
            )
            handler = _busy
        response = await answer_n(association, message, handler)
        if response.then is not None:
            self._spawn(response.then(), f"after {message.command.name}")

    def _spawn(self, work: Awaitable[None], what: str) -> None:
        """Run ``work`` beside the associations: until it ends, or the server closes."""

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(run())
        for held in (self._tasks, self._background):
            held.add(task)
            task.add_done_callback(held.discard)

    def _audit_operation(self, association: Association, message: Message) -> None:
        """Record a C-FIND, C-GET or C-MOVE with its keys.

        The identifier is decoded here once more (it is small: Limits.max_dataset
        bounds it) so that the query/retrieve code stays free of auditing.
        """
        assert self.audit is not None
        command = message.command
        transfer = association.contexts[message.context_id].transfer_syntax
        identifier: Dataset | str = "the request carries no identifier"
        if message.dataset is not None and transfer is not None:
            try:
                identifier = decode_dataset(message.dataset, transfer)
            except Exception as exc:  # pydicom raises many kinds on bad data
                identifier = f"the identifier does not parse: {exc}"
        service = {
            CommandField.C_FIND_RQ: "find",
            CommandField.C_GET_RQ: "get",
            CommandField.C_MOVE_RQ: "move",
        }[CommandField(command.command_field)]
        self.audit.operation(
            service,
            association.calling_ae,
            association.peer_address,
            identifier,
            sop_class_uid=command.affected_sop_class_uid,
            destination=command.move_destination,
        )

    def _audit_store(
        self, association: Association, message: Message, sink: IncomingInstance | None
    ) -> None:
        """Record a C-STORE: the instance kept, or refused and why."""
        assert self.audit is not None
        if sink is not None:
            status = Status.SUCCESS if sink.status is None else sink.status
            self.audit.instance(sink.context, status, sink.error or sink.warning, sink.values)
            return
        command = message.command
        context = StoreContext(
            calling_ae=association.calling_ae,
            called_ae=association.called_ae,
            sop_class_uid=command.affected_sop_class_uid or "",
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax=str(association.contexts[message.context_id].transfer_syntax),
            address=association.peer_address,
            message_id=command.message_id or 0,
        )
        self.audit.instance(context, Status.OUT_OF_RESOURCES, message.refused)

    def _answer_now(self, association: Association, message: Message) -> bool:
        """Answer a C-ECHO-RQ or a C-STORE-RQ at once, if it can be (see Driver.on_request).

        A C-STORE-RQ whose storage can finish the instance without waiting
        (:meth:`IncomingInstance.store_now`: a
        :class:`~adicom.diskinstance.DiskInstance` with nothing left to
        write, a MemoryStorage's) is stored here, in the transport callback
        that read its last fragment, and answered Success when the
        association can send now; any other status, or a response that cannot
        leave now, goes the usual way (:func:`answer_store` sends the status
        kept on the instance, with its comment, and does not store it again).
        The status is still sent only once the instance is stored (PS3.4 B.2.2).
        The storage's hooks (:meth:`IncomingInstance.after_answer`: an
        archive's index row) run right after the response is written, in
        this callback; before it when hooks or protocol logging listen to
        the association, so that a handler of the response's MessageSent
        never sees the instance acknowledged but not indexed.
        """
        field = message.command.command_field
        if field == _C_ECHO_RQ:
            return association.respond_now(message, _SUCCESS)
        if field != _C_STORE_RQ or message.refused is not None:
            return False
        sink = message.sink
        if not isinstance(sink, IncomingInstance):
            return False
        if sink.status is None:
            try:
                status = sink.store_now()
            except Exception:
                # In the driver's callback: the task's finish() answers instead
                # (a failure status for what was left half done).
                log.exception("storing %s failed", message.command.affected_sop_instance_uid)
                return False
            if status is None:
                return False
            # Stored: answer_store sends this status if it cannot go now,
            # and never stores the instance twice.
            sink.status = status
        status = sink.status
        if association.watched:
            sink.after_answer()  # told as it is sent: indexed first (see above)
        try:
            # Written at once (write=True): the peer reads it and sends the
            # next instance while the storage's hooks (an archive's index row) run.
            if status != _SUCCESS or not association.respond_now(message, status, write=True):
                return False
        finally:
            # The instance is stored (PS3.4 B.2.2: only then its status); its
            # hooks run here, in this callback, with no await since it was
            # filed: no other code sees it acknowledged but not indexed, and
            # a crash before this leaves a file that Archive.open() indexes.
            sink.after_answer()
        if self.audit is not None:
            self._audit_store(association, message, sink)
        return True

    async def _dispatch(
        self,
        association: Association,
        message: Message,
        operations: dict[int, tuple[asyncio.Task[None], Cancelled]],
    ) -> None:
        field = message.command.command_field
        if field == CommandField.C_ECHO_RQ:
            # PS3.4 A.4: the Verification SCP answers Success.
            await association.respond(message, Status.SUCCESS)
        elif field == CommandField.C_STORE_RQ and (
            message.refused is not None or isinstance(message.sink, IncomingInstance)
        ):
            sink = await answer_store(association, message)
            if self.audit is not None:
                self._audit_store(association, message, sink)
        elif field == CommandField.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: no response to C-CANCEL itself; the operation's
            # final response says Cancel. Unknown IDs are ignored.
            entry = operations.get(message.command.message_id_being_responded_to or 0)
            if entry is not None:
                task, cancelled = entry
                cancelled.is_set = True
                if cancelled.in_handler and not task.done():
                    # The handler may be stuck in an await: stop it there.
                    task.cancel()
        else:
            # PS3.7 C.5: a request this server does not serve.
            await association.respond(message, Status.UNRECOGNIZED_OPERATION)


def _operation_ended(task: asyncio.Task[None], association: Association) -> None:
    """An operation that failed (not with a status: with an exception) aborts at once.

    Its final response can no longer be sent, so the requestor would wait for
    it until its own timeout; the association's loop sees the error only at
    the next request. Aborting now tells the requestor (PS3.8 7.3.1: A-ABORT
    whenever the association cannot go on).
    """
    if task.cancelled() or task.exception() is None:
        return
    log.info("an operation on %s failed: %s", association.calling_ae or "?", task.exception())
    association.abort()


async def _busy(request: NRequest) -> NResponse:
    """The answer while the server's background work is full."""
    return NResponse(Status.RESOURCE_LIMITATION, error_comment="the SCP is busy: try again later")
