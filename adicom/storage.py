"""What an SCP does with the instances it receives by C-STORE.

A :class:`StorageHandler` opens an :class:`IncomingInstance` when a
C-STORE-RQ's command arrives; the instance takes the data set's fragments as
their PDVs come in (``write``, from the transport's callback) and, once the
last one is in, ``finish`` decides the status the SCP answers with. So the
status goes out only after the data is where it belongs.

Handlers:

* :class:`~adicom.diskstorage.DiskStorage` streams each instance into a
  temporary file in the storage folder and renames it into place when
  complete and checked (its own module).
* :class:`MemoryStorage` keeps pydicom datasets for the caller.
* :class:`CallbackStorage` hands each dataset (or its file) to an async
  function of yours that returns the status.
* :class:`ForwardStorage` sends each instance on to another node over one
  association that it reuses, and answers with that node's status.

Statuses (PS3.4 B.2.3): 0x0000 success; 0xA700 out of resources (the disk is
full or not writable); 0xC000 cannot understand (the data set does not
parse); a forwarded instance gets the destination's status, or 0xA700 when
the destination cannot be reached.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from adicom.association import Association
from adicom.client import open_association
from adicom.dimse import (
    Command,
    CommandField,
    DatasetSink,
    Message,
    SinkFactory,
    Status,
    StatusCategory,
    status_category,
)
from adicom.errors import DicomError
from adicom.fileformat import (
    encode_file_meta,
)
from adicom.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from adicom.pdu.wire import frozen_builder

__all__ = [
    "CallbackStorage",
    "ForwardStorage",
    "IncomingInstance",
    "MemoryStorage",
    "StorageHandler",
    "StoreContext",
    "answer_store",
    "sink_factory",
]

if TYPE_CHECKING:  # DiskStorage builds on this module; only its type is needed here
    from adicom.diskstorage import DiskStorage

log = logging.getLogger("adicom")


@dataclass(frozen=True, slots=True)
class StoreContext:
    """Who sent an instance and what the C-STORE-RQ said about it."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    address: tuple[str, int] | None = None
    message_id: int = 0

    def file_meta(self) -> bytes:
        """Preamble, ``DICM`` and the file meta group for this instance (PS3.10 7.1).

        Built from the C-STORE-RQ and the presentation context, never from
        the data set: a peer's own group 0002 is not trusted (PS3.7 9.3.1.1).
        """
        return encode_file_meta(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            source_ae=self.calling_ae,
        )


# Made per received instance: without the frozen __init__'s
# object.__setattr__ per field (see frozen_builder), at half the cost.
_store_context = frozen_builder(StoreContext)


class IncomingInstance:
    """One instance as it arrives; subclasses decide where its bytes go.

    ``write`` must not raise: a failure is kept in ``error`` and reported by
    ``finish`` as a status, so the association goes on and the next
    instance is received normally.
    """

    #: Where the instance ended up, when it went to a file (None until then;
    #: a class default, so that a handler's property can stand for it unset).
    path: Path | None = None
    # What follows starts the same for every instance, as class defaults (one
    # is made per received instance): set on the instance when it changes.
    #: Why the instance was not stored (the failure status's comment).
    error: str | None = None
    #: What a warning status means for it (the warning's comment).
    warning: str | None = None
    #: The element a failure is about, for (0000,0901) Offending Element.
    offending_element: int | None = None
    #: The status its C-STORE was answered with (set once it was finished).
    status: int | None = None
    #: Attributes read from the data set by keyword (the UIDs, the
    #: patient's ID and name, ...), as far as the handler read them (a
    #: read-only empty mapping until then).
    values: Mapping[str, str] = MappingProxyType({})
    #: Set by whoever feeds it (the server: its association's
    #: ``hold_input``): ``hold_input(True)`` asks the sender to wait, as
    #: TCP does, until ``hold_input(False)``; for a handler that takes
    #: the data faster than it can put it away (a write-behind backlog).
    hold_input: Callable[[bool], None] | None = None

    def __init__(self, context: StoreContext) -> None:
        self.context = context

    def write(self, data: memoryview, /) -> None:
        """Take the next fragment of the data set.

        ``data`` is a view of the receive buffer, valid only during this
        call: the next read reuses that memory. Write it out or copy it
        (``bytes(data)``); never keep the view.
        """
        raise NotImplementedError

    def abort(self) -> None:
        """The association ended before the last fragment: drop everything."""

    async def finish(self) -> int:
        """The last fragment is in: store the instance and return the status."""
        raise NotImplementedError

    def finish_now(self) -> int | None:
        """Like :meth:`finish`, when storing needs no waiting; None (touching nothing) when it does.

        Called first (by way of :meth:`store_now` in a server), in the
        transport callback that took the last fragment, so that the status
        can go out from there (a C-GET's sub-operation is then answered
        without a pass through the event loop); after None, :meth:`finish`
        is awaited as usual. The default always says None.
        """
        return None

    def store_now(self) -> int | None:
        """:meth:`finish_now`, but what only follows the storing may wait for :meth:`after_answer`.

        For a server that answers in the transport callback: the status is
        final once the instance is stored (PS3.4 B.2.2), so the response
        can go out before the work that only follows (a DiskStorage's
        ``on_filed`` and ``on_stored`` hooks: an archive's index row). The
        caller then runs :meth:`after_answer` in the same callback, with no
        await between, whether or not the response could be sent: no other
        code sees the instance stored but its hooks not run. The default is
        :meth:`finish_now`, which leaves nothing.
        """
        return self.finish_now()

    def after_answer(self) -> None:
        """Run what :meth:`store_now` left for after the response (once; else nothing)."""


class StorageHandler:
    """Decides where received instances go (base class)."""

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance (called from the transport callback)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the handler holds (connections, files)."""


def sink_factory(association: Association, storage: StorageHandler) -> SinkFactory:
    """Route the data sets of C-STORE-RQs on ``association`` to ``storage``.

    Used by the SCP and by a C-GET's requestor, which receives its
    sub-operations on its own association.
    """
    # What does not change while the association lasts, read at its first
    # C-STORE-RQ (an association receives thousands): who sends, and each
    # context's classes as text.
    peers: tuple[str, str, tuple[str, int] | None] | None = None
    syntaxes: dict[int, tuple[str, str]] = {}
    hold_input = association.hold_input  # bound once, not per instance

    def open_sink(context_id: int, command: Command) -> DatasetSink | None:
        nonlocal peers
        if command.command_field != CommandField.C_STORE_RQ:
            return None  # identifiers of queries are small: keep them in memory
        if peers is None:
            # The sender: the requestor on an SCP, the called peer for the
            # sub-operations of our own C-GET.
            called = association.called_ae
            sender = called if association.requestor else association.calling_ae
            peers = (sender, called, association.peer_address)
        syntax = syntaxes.get(context_id)
        if syntax is None:
            context = association.contexts[context_id]
            syntax = (str(context.abstract_syntax), str(context.transfer_syntax))
            syntaxes[context_id] = syntax
        instance = storage.open(
            _store_context(
                peers[0],
                peers[1],
                command.affected_sop_class_uid or syntax[0],
                command.affected_sop_instance_uid or "",
                syntax[1],
                peers[2],
                command.message_id or 0,
            )
        )
        instance.hold_input = hold_input
        return instance

    return open_sink


async def answer_store(association: Association, message: Message) -> IncomingInstance | None:
    """Answer a C-STORE-RQ whose data set went to a storage handler (or was dropped as it came).

    The status goes out only once the instance is stored, or not (PS3.4
    B.2.2), with the handler's comment and offending element (PS3.7 C.4,
    C.5: (0000,0902), (0000,0901)). Returns the handler's instance, None
    when the data set was refused as it arrived (beyond Limits.max_instance).
    """
    if message.refused is not None:
        await association.respond(
            message, Status.OUT_OF_RESOURCES, error_comment=message.refused[:64]
        )
        return None
    sink = message.sink
    assert isinstance(sink, IncomingInstance)
    # Finished already (finish_now) when it could not be answered at once.
    status = sink.status if sink.status is not None else await sink.finish()
    sink.status = status
    category = status_category(status)
    fields: dict[str, object] = {}
    comment = (
        sink.error
        if category is StatusCategory.FAILURE
        else sink.warning
        if category is StatusCategory.WARNING
        else None
    )
    if comment:
        fields["error_comment"] = comment[:64]
    if category is StatusCategory.FAILURE and sink.offending_element is not None:
        fields["offending_element"] = (sink.offending_element,)
    await association.respond(message, status, **fields)
    return sink


# --------------------------------------------------------------------------
# Memory


class _InMemory(IncomingInstance):
    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self._parts: list[bytes] = []

    def write(self, data: memoryview, /) -> None:
        self._parts.append(bytes(data))

    def abort(self) -> None:
        self._parts = []

    def dataset(self) -> Dataset:
        """Decode what arrived, with a file meta group built from the command."""
        raw = self.context.file_meta() + b"".join(self._parts)
        self._parts = []
        return pydicom.dcmread(io.BytesIO(raw))

    def encoded(self) -> bytes:
        """The data set as received."""
        return b"".join(self._parts)


class MemoryStorage(StorageHandler):
    """Keeps every received instance as a pydicom Dataset in :attr:`datasets`."""

    def __init__(self) -> None:
        #: The datasets received so far, in arrival order, with ``file_meta``.
        self.datasets: list[Dataset] = []

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into memory."""
        return _MemoryInstance(context, self.datasets)


class _MemoryInstance(_InMemory):
    def __init__(self, context: StoreContext, into: list[Dataset]) -> None:
        super().__init__(context)
        self._into = into

    async def finish(self) -> int:
        return self.finish_now()

    def finish_now(self) -> int:
        try:
            dataset = self.dataset()
        except Exception as exc:
            log.warning("cannot decode %s: %s", self.context.sop_instance_uid, exc)
            return Status.CANNOT_UNDERSTAND
        self._into.append(dataset)
        return Status.SUCCESS


# --------------------------------------------------------------------------
# Callback

#: An async function given each received dataset (or path) and its context,
#: returning the status to answer (None means success).
StoreCallback = Callable[[Dataset, StoreContext], Awaitable[int | None]]
PathCallback = Callable[[Path, StoreContext], Awaitable[int | None]]


class CallbackStorage(StorageHandler):
    """Calls ``callback(dataset, context)`` for each received instance.

    With ``storage`` (a :class:`DiskStorage`), the instance is first stored
    as a file and ``callback(path, context)`` gets its path instead. The
    callback's return value is the status (None: success); an exception in
    it answers 0xC000 and is logged.
    """

    def __init__(
        self, callback: StoreCallback | PathCallback, *, storage: DiskStorage | None = None
    ) -> None:
        self.callback = callback
        self.storage = storage

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance."""
        inner = self.storage.open(context) if self.storage else None
        return _CallbackInstance(context, self.callback, inner)


class _CallbackInstance(_InMemory):
    def __init__(
        self,
        context: StoreContext,
        callback: StoreCallback | PathCallback,
        inner: IncomingInstance | None,
    ) -> None:
        super().__init__(context)
        self._callback = callback
        self._inner = inner

    def write(self, data: memoryview, /) -> None:
        if self._inner is not None:
            self._inner.write(data)
        else:
            super().write(data)

    def abort(self) -> None:
        if self._inner is not None:
            self._inner.abort()
        super().abort()

    async def finish(self) -> int:
        if self._inner is not None:
            status = await self._inner.finish()
            if status != Status.SUCCESS or self._inner.path is None:
                return status
            self.path = self._inner.path
            argument: object = self.path
        else:
            try:
                argument = self.dataset()
            except Exception as exc:
                log.warning("cannot decode %s: %s", self.context.sop_instance_uid, exc)
                return Status.CANNOT_UNDERSTAND
        try:
            result = await self._callback(argument, self.context)  # type: ignore[arg-type]
        except Exception:
            log.exception("the storage callback failed for %s", self.context.sop_instance_uid)
            return Status.CANNOT_UNDERSTAND
        return Status.SUCCESS if result is None else result


# --------------------------------------------------------------------------
# Forward


class ForwardStorage(StorageHandler):
    """Sends each received instance on to ``host:port`` and answers with its status.

    One association to the destination is opened when first needed and
    reused; when an instance needs a presentation context it lacks, a new
    association proposing everything seen so far replaces it. Instances
    forwarded from several incoming associations take turns on it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        called_ae: str = "ANY-SCP",
        calling_ae: str = "ADICOM",
        timeout: float = 30.0,
    ) -> None:
        self.host, self.port = host, port
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._association: Association | None = None
        self._wanted: dict[tuple[str, str], None] = {}

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance into memory, to forward when complete."""
        return _ForwardInstance(context, self)

    async def forward(self, context: StoreContext, encoded: bytes) -> int:
        """Send one encoded instance on; return the destination's status."""
        key = (context.sop_class_uid, context.transfer_syntax)
        async with self._lock:
            association = self._association
            if association is not None and (
                not association.is_established or _context_id(association, key) is None
            ):
                await _close(association)
                association = self._association = None
            if association is None:
                self._wanted[key] = None
                try:
                    association = await open_association(
                        self.host,
                        self.port,
                        calling_ae=self.calling_ae,
                        called_ae=self.called_ae,
                        contexts=[(sop, [ts]) for sop, ts in list(self._wanted)[-128:]],
                        timeout=self.timeout,
                    )
                except DicomError as exc:
                    log.warning("cannot forward to %s:%d: %s", self.host, self.port, exc)
                    return Status.OUT_OF_RESOURCES
                self._association = association
            context_id = _context_id(association, key)
            if context_id is None:
                log.warning("%s:%d does not accept %s in %s", self.host, self.port, *key)
                return Status.OUT_OF_RESOURCES
            try:
                response = await association.send_c_store(
                    context_id, context.sop_class_uid, context.sop_instance_uid, encoded
                )
            except DicomError as exc:
                log.warning("forwarding %s failed: %s", context.sop_instance_uid, exc)
                self._association = None
                return Status.OUT_OF_RESOURCES
            return response.status if response.status is not None else Status.OUT_OF_RESOURCES

    async def aclose(self) -> None:
        """Release the association to the destination."""
        async with self._lock:
            if self._association is not None:
                await _close(self._association)
                self._association = None


def _context_id(association: Association, key: tuple[str, str]) -> int | None:
    for context in association.contexts.values():
        if context.accepted and (context.abstract_syntax, context.transfer_syntax) == key:
            return context.context_id
    return None


async def _close(association: Association) -> None:
    try:
        await association.release()
    except DicomError:
        association.abort()


class _ForwardInstance(_InMemory):
    def __init__(self, context: StoreContext, forwarder: ForwardStorage) -> None:
        super().__init__(context)
        self._forwarder = forwarder

    async def finish(self) -> int:
        return await self._forwarder.forward(self.context, self.encoded())
