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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

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
from adicom.elements import (
    scan_elements,
)
from adicom.errors import DicomError, DimseError
from adicom.fileformat import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Memo,
    decode_dataset,
    encode_dataset,
)
from adicom.presentation import (
    PresentationContext,
)
from adicom.qrcontexts import (
    DEFAULT_GET_SOP_CLASSES,
    GET_SYNTAX_PRIORITY,
    UNCOMPRESSED_SYNTAXES,
    Model,
    find_contexts,
    get_contexts,
    information_model,
    move_contexts,
    plan_get_contexts,
)
from adicom.storage import IncomingInstance, StorageHandler, answer_store, sink_factory

#: Syntaxes in which a match's elements can be read where they lie (see FindResults._values).
_SCANNABLE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})

__all__ = [
    "DEFAULT_GET_SOP_CLASSES",
    "GET_SYNTAX_PRIORITY",
    "FailedSubOperation",
    "FindResults",
    "HeldInstance",
    "Model",
    "RetrieveCancelled",
    "RetrieveProgress",
    "Survey",
    "find",
    "explain_failures",
    "find_contexts",
    "get",
    "get_contexts",
    "log_failures",
    "move",
    "move_contexts",
    "plan_get_contexts",
    "survey",
]

log = logging.getLogger("adicom")


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
        self._sop_class = information_model("C-FIND", model)
        self._identifier = identifier
        self._priority = priority
        self._operation: Operation | None = None
        #: The final status, once the last response arrived.
        self.status: int | None = None
        #: How many matches arrived.
        self.count = 0
        #: The values a match repeats from the ones before (see decode_dataset).
        self._memo: Memo = {}

    def __aiter__(self) -> FindResults:
        return self

    async def __anext__(self) -> Dataset:
        operation = self._operation
        if operation is None or operation.done:
            reply = await self._next_match()
        else:
            # What _next_match does once the request is out, inline: one
            # coroutine less per match.
            reply = await operation.next_response()
            status = reply.command.status
            if status != 0xFF00 and status != 0xFF01:  # final (PS3.7 C.4; status_category)
                self._final(reply)
                raise StopAsyncIteration
            self.count += 1
        if reply is None:
            raise StopAsyncIteration
        return self._decode(reply)

    async def _next_match(self) -> Message | None:
        """The next pending response (a match, not decoded), or None after the final one."""
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
            return None
        reply = await operation.next_response()
        if status_category(reply.command.status or 0) is StatusCategory.PENDING:
            self.count += 1
            return reply
        self._final(reply)
        return None

    def _final(self, reply: Message) -> None:
        """The final response: its status kept, raised as DimseError if a failure."""
        status = reply.command.status or 0
        self.status = status
        if status_category(status) is StatusCategory.FAILURE:
            raise DimseError(status, "C-FIND failed: " + _describe(reply))

    def _values(self, reply: Message, tags: frozenset[int]) -> dict[int, list[str]]:
        """The text values of a few top-level elements of a match, without decoding it whole.

        For the unique keys and UIDs a survey reads: a match is scanned for
        ``tags`` where it lies (little endian syntaxes), about a tenth of
        decoding it into a Dataset; anything else goes through
        :meth:`_decode`. Each value is split at backslashes (PS3.5 6.4),
        its padding (space, NUL) stripped, empty ones left out.
        """
        transfer = self._association.contexts[reply.context_id].transfer_syntax
        data = reply.dataset
        if data is not None and transfer in _SCANNABLE:
            try:
                raw = scan_elements(
                    data, tags, implicit=transfer == IMPLICIT_VR_LITTLE_ENDIAN, complete=True
                )
            except ValueError:
                raw = None  # let the decoder say what is wrong with it
            if raw is not None:
                return {tag: _split_text(value) for tag, value in raw.items()}
        match = self._decode(reply)
        return {tag: _text_values(match[tag].value) for tag in tags if tag in match}

    def _decode(self, reply: Message) -> Dataset:
        if reply.dataset is None:
            raise DimseError(reply.command.status or 0, "a pending C-FIND-RSP without identifier")
        transfer = self._association.contexts[reply.context_id].transfer_syntax
        assert transfer is not None
        try:
            return decode_dataset(reply.dataset, transfer, self._memo)
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
        if self._operation is None or self._operation.done:
            return  # nothing to cancel: no task for the shield to run
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


@dataclass(frozen=True, slots=True)
class HeldInstance:
    """An instance a peer holds, as its IMAGE level C-FIND described it.

    ``sop_class_uid`` is "" when the peer did not return SOP Class UID;
    ``transfer_syntaxes`` is the Available Transfer Syntax UID (0008,3002)
    it returned, empty when it did not say.
    """

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntaxes: tuple[str, ...] = ()
    #: The series it is in (as the survey found it; "" when unknown).
    series_instance_uid: str = ""


@dataclass(slots=True)
class Survey:
    """What a retrieve is about to fetch: the instances and what they are (see :func:`survey`).

    ``complete`` is False when some of it could not be learned (a series
    without its UID, an instance without its class): a C-GET then offers
    the usual classes too.
    """

    instances: dict[str, HeldInstance] = field(default_factory=dict)
    complete: bool = True
    #: True when it stopped at its first match, which had no SOP Class UID
    #: (see :func:`survey`'s ``until_classless``): ``instances`` is then not
    #: the whole of what the retrieve fetches.
    stopped: bool = False

    def wanted(self) -> dict[str, list[str]]:
        """Each SOP class found and the syntaxes its instances are held in ([]: unknown)."""
        classes: dict[str, list[str] | None] = {}
        for held in self.instances.values():
            if not held.sop_class_uid:
                continue
            syntaxes = classes.setdefault(held.sop_class_uid, [])
            if syntaxes is None:
                continue
            if not held.transfer_syntaxes:
                classes[held.sop_class_uid] = None  # one unknown: offer every syntax
            else:
                syntaxes.extend(t for t in held.transfer_syntaxes if t not in syntaxes)
        return {sop: syntaxes or [] for sop, syntaxes in classes.items()}


def _split_text(raw: bytes) -> list[str]:
    """A text element's values as encoded: split at backslashes, padding and empty ones out."""
    values = (item.strip(" \0") for item in raw.decode("latin-1").split("\\"))
    return [value for value in values if value]


def _text_values(value: object) -> list[str]:
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    return [str(item).strip(" \0") for item in items if str(item).strip(" \0")]


_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_AVAILABLE_TRANSFER_SYNTAX_UID = 0x00083002
_SERIES_INSTANCE_UID = 0x0020000E
_SERIES_KEY = frozenset({_SERIES_INSTANCE_UID})
_INSTANCE_KEYS = frozenset({_SOP_CLASS_UID, _SOP_INSTANCE_UID, _AVAILABLE_TRANSFER_SYNTAX_UID})


async def survey(
    association: Association,
    study_uid: str,
    series_uid: str = "",
    sop_instance_uid: str = "",
    *,
    until_classless: bool = False,
) -> Survey:
    """Ask the peer what a retrieve of a study, series or instance would fetch.

    IMAGE level C-FINDs in the Study Root model (PS3.4 C.6.2), hierarchical
    as C.4.1.2.2 requires: for a study, first its series, then the
    instances of each, asking SOP Class UID and Available Transfer Syntax
    UID (0008,3002). ``association`` must have the Study Root C-FIND
    context (:func:`find_contexts`). A failure status raises
    :class:`~adicom.errors.DimseError`.

    With ``until_classless``, a first instance match without SOP Class UID
    (an optional key, PS3.4 C.6.1.1.5, that DCMTK's dcmqrscp and
    pynetdicom's qrscp do not return) ends the survey there, with a
    C-CANCEL: the rest could not say what to offer either, and on a large
    study it costs as long as the retrieve. The result is then ``stopped``.
    """
    found = Survey()
    if series_uid:
        series = [series_uid]
    else:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        series = []
        async with find(association, query) as results:
            while (reply := await results._next_match()) is not None:
                values = results._values(reply, _SERIES_KEY)
                uid = "".join(values.get(_SERIES_INSTANCE_UID, ()))
                if uid:
                    series.append(uid)
                else:
                    found.complete = False
    for uid in dict.fromkeys(series):
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = uid
        query.SOPInstanceUID = sop_instance_uid
        query.SOPClassUID = ""
        query.AvailableTransferSyntaxUID = ""
        async with find(association, query) as results:
            # A match is read for these three keys only: a survey of a large
            # study has thousands, and decoding each whole cost more than
            # the rest of its C-FIND-RSP.
            while (reply := await results._next_match()) is not None:
                values = results._values(reply, _INSTANCE_KEYS)
                instance = "".join(values.get(_SOP_INSTANCE_UID, ()))
                sop = "".join(values.get(_SOP_CLASS_UID, ()))
                if not instance or not sop:
                    found.complete = False
                    if until_classless and not sop and not found.instances:
                        found.stopped = True
                        break  # leaving the find sends the C-CANCEL
                if instance:
                    syntaxes = tuple(values.get(_AVAILABLE_TRANSFER_SYNTAX_UID, ()))
                    found.instances[instance] = HeldInstance(instance, sop, syntaxes, uid)
        if found.stopped:
            break
    return found


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
    #: The Error Comment (0000,0902) of the latest response that had one.
    error_comment: str | None = None
    #: What failed, and why as far as known: see :class:`FailedSubOperation`.
    failures: list[FailedSubOperation] = field(default_factory=list)
    #: The C-STORE sub-operations that reached this side (C-GET): SOP
    #: Instance UID -> (SOP class, transfer syntax, why the storage refused
    #: it, or None).
    received: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)

    def update(self, command: Command) -> None:
        """Take the counts of one response."""
        # Once per sub-operation: plain attribute reads, no loop over names.
        self.status = command.status
        if command.error_comment:
            self.error_comment = command.error_comment
        if (remaining := command.number_of_remaining_suboperations) is not None:
            self.remaining = remaining
        if (completed := command.number_of_completed_suboperations) is not None:
            self.completed = completed
        if (failed := command.number_of_failed_suboperations) is not None:
            self.failed = failed
        if (warning := command.number_of_warning_suboperations) is not None:
            self.warning = warning


@dataclass(frozen=True, slots=True)
class FailedSubOperation:
    """One C-STORE sub-operation of a retrieve that failed, and why as far as known.

    ``sop_class_uid`` and ``transfer_syntax`` come from the C-STORE-RQ when
    it reached us, else from what the peer's C-FIND said (None: unknown).
    ``reason`` says why: refused here (and the storage's reason), no
    accepted presentation context for the class or syntax, or the peer's
    error comment; "the peer gave no reason" when nothing says.
    """

    sop_instance_uid: str
    sop_class_uid: str | None
    transfer_syntax: str | None
    reason: str

    def __str__(self) -> str:
        what = [UID(uid).name for uid in (self.sop_class_uid, self.transfer_syntax) if uid]
        kind = f" ({', '.join(what)})" if what else ""
        return f"{self.sop_instance_uid}{kind}: {self.reason}"


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
    if on_progress is None:
        # Nobody looks at each pending response: they are counted as they
        # arrive, and this task wakes for the final one only.
        operation.take_pending(progress.update)

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
    held: Mapping[str, HeldInstance] | None = None,
    report: bool = True,
    state: RetrieveProgress | None = None,
) -> RetrieveProgress:
    """C-GET: the matching instances come back as C-STOREs on this association.

    They go to ``storage`` (a DiskStorage, MemoryStorage, CallbackStorage)
    as they arrive. ``progress`` is called after each response with the
    counts. ``timeout`` bounds the whole retrieve: when it passes, C-CANCEL
    is sent and :class:`RetrieveCancelled` raised. The final status is in
    the result; a failure status raises nothing, so the counts stay usable.
    ``result.failures`` says for each failed sub-operation what it was and
    why, as far as known: ``held`` (from :func:`survey`) tells the class and
    syntax of instances that never arrived. With ``report``, each is logged
    (see :func:`log_failures`).
    """
    sop_class = information_model("C-GET", model)
    context_id = _context_for(association, sop_class)
    state = RetrieveProgress() if state is None else state
    previous = association.on_dataset
    association.on_dataset = sink_factory(association, storage)
    previous_hook = association.on_request
    association.on_request = partial(_answer_at_once, association, state=state)

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
        await _run_retrieve(operation, state, progress, timeout, association)
    finally:
        server.cancel()
        await asyncio.wait([server])  # our own cancellation still propagates
        if not server.cancelled() and server.exception() is not None:
            log.debug("C-GET sub-operation server ended: %s", server.exception())
        association.on_dataset = previous
        association.on_request = previous_hook
    state.failures = explain_failures(association.contexts, state, held or {})
    if report:
        log_failures(state.failures)
    return state


def explain_failures(
    contexts: Mapping[int, PresentationContext],
    progress: RetrieveProgress,
    held: Mapping[str, HeldInstance],
) -> list[FailedSubOperation]:
    """Why each sub-operation of a C-GET failed, as far as this side can tell.

    The peer names the failed instances in Failed SOP Instance UID List
    (0008,0058) and may say why in Error Comment (0000,0902) (PS3.7
    9.1.3.1.5, C.4.3.1.4); what it does not say follows from the
    ``contexts`` the C-GET's association agreed and, with ``held`` (from
    :func:`survey`), from the class and syntax of each instance.
    """
    refused = [uid for uid, (_, _, why) in progress.received.items() if why]
    failed = list(dict.fromkeys([*refused, *progress.failed_sop_instances]))
    comment = f"; the peer says: {progress.error_comment}" if progress.error_comment else ""
    offered: dict[str, list[PresentationContext]] = {}
    for context in contexts.values():
        offered.setdefault(str(context.abstract_syntax), []).append(context)
    out: list[FailedSubOperation] = []
    for uid in failed:
        if uid in progress.received:
            # It reached us: the failure is the status this side answered.
            got_class, got_syntax, why = progress.received[uid]
            ours = f"refused here: {why or 'the storage answered a failure status'}"
            out.append(FailedSubOperation(uid, got_class or None, got_syntax or None, ours))
            continue
        instance = held.get(uid)
        sop = instance.sop_class_uid if instance else ""
        syntaxes = instance.transfer_syntaxes if instance else ()
        reason: str | None = _no_context(sop, syntaxes, offered.get(sop, [])) if sop else None
        if reason is None:
            reason = (
                f"the peer says: {progress.error_comment}"
                if progress.error_comment
                else "the peer gave no reason"
            )
            if instance is None and held:
                reason += " (its C-FIND did not list this instance)"
            elif instance is not None and not sop:
                reason += (
                    "; its C-FIND did not say the SOP class (if it is one not offered, offer "
                    "it: adicom get --offer, DicomClient(get_offer=...))"
                )
            elif sop and not syntaxes:
                took = sorted(
                    {str(c.transfer_syntax) for c in offered[sop] if c.accepted and c.scp_role}
                )
                reason += (
                    f"; {UID(sop).name} was accepted in {', '.join(UID(t).name for t in took)} "
                    "(the peer did not say the instance's syntax; held in another, it cannot "
                    "go unless the peer converts it)"
                )
        else:
            reason += comment
        held_in = syntaxes[0] if len(syntaxes) == 1 else None
        out.append(FailedSubOperation(uid, sop or None, held_in, reason))
    return out


def log_failures(failures: Sequence[FailedSubOperation], limit: int = 20) -> None:
    """Log each failed sub-operation once (a warning), the first ``limit`` of them."""
    for failure in failures[:limit]:
        log.warning("C-GET sub-operation failed: %s", failure)
    if len(failures) > limit:
        log.warning("C-GET: %d more sub-operations failed", len(failures) - limit)


def _no_context(
    sop: str, syntaxes: Sequence[str], contexts: Sequence[PresentationContext]
) -> str | None:
    """Why no context could carry an instance of ``sop`` held in ``syntaxes``; None if one could."""
    name = UID(sop).name
    if not contexts:
        return f"{name} was not offered (adicom get --offer, DicomClient(get_offer=...))"
    usable = [c for c in contexts if c.accepted and c.scp_role]
    if not usable:
        if any(c.accepted for c in contexts):
            return f"the peer accepted {name} but refused us the SCP role for it"
        return f"the peer accepted no presentation context for {name}"
    accepted = {str(c.transfer_syntax) for c in usable}
    if syntaxes and not accepted & set(syntaxes):
        held = ", ".join(UID(t).name for t in syntaxes)
        took = ", ".join(UID(t).name for t in sorted(accepted))
        if set(syntaxes) <= UNCOMPRESSED_SYNTAXES and accepted & UNCOMPRESSED_SYNTAXES:
            return None  # an uncompressed instance can go in another uncompressed syntax
        return f"held in {held}; the peer accepted {name} only in {took}"
    return None


def _answer_at_once(association: Association, message: Message, state: RetrieveProgress) -> bool:
    """Answer a C-STORE sub-operation in the transport callback, if it needs no waiting.

    For :attr:`Association.on_request`: True when the instance was stored
    (:meth:`IncomingInstance.finish_now`) and a plain response (no comment)
    left at once; False leaves the message to :func:`_answer_sub_operation`,
    which does not store it twice.
    """
    sink = message.sink
    if message.command.command_field != CommandField.C_STORE_RQ or not isinstance(
        sink, IncomingInstance
    ):
        return False
    if sink.status is None:
        status = sink.finish_now()
        if status is None:
            return False
        sink.status = status
    if sink.error is not None or sink.warning is not None:
        return False  # its comment goes in the response: answer_store
    # Written at once: the peer sends its next sub-operation only once it
    # has this response (one C-STORE at a time, as DCMTK's dcmqrscp and
    # adicom's SCP do), so the bookkeeping below waits, not the peer.
    if not association.respond_now(message, sink.status, write=True):
        return False
    _record(association, message, sink, state)
    return True


def _record(
    association: Association,
    message: Message,
    stored: IncomingInstance | None,
    state: RetrieveProgress,
) -> None:
    """Note a C-STORE sub-operation that reached us, and what became of it."""
    command = message.command
    if stored is not None and stored.path is not None:
        state.paths.append(stored.path)
    context = association.contexts.get(message.context_id)
    state.received[str(command.affected_sop_instance_uid or "")] = (
        str(command.affected_sop_class_uid or ""),
        str(context.transfer_syntax) if context and context.transfer_syntax else "",
        message.refused if stored is None else stored.error,
    )


async def _answer_sub_operation(
    association: Association, message: Message, state: RetrieveProgress
) -> None:
    command = message.command
    if command.command_field == CommandField.C_STORE_RQ and (
        message.refused is not None or isinstance(message.sink, IncomingInstance)
    ):
        stored = await answer_store(association, message)
        _record(association, message, stored, state)
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
    sop_class = information_model("C-MOVE", model)
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
    if progress is None:
        # Nobody looks at each pending response, and the peer sends only
        # those on this association (the instances go to the destination):
        # they may be read a few at a time (see Association.gather_pending).
        association.gather_pending(operation)
    try:
        return await _run_retrieve(operation, RetrieveProgress(), progress, timeout, association)
    finally:
        if association.gathering is operation:  # not another move's, begun since
            association.gather_pending(None)
