"""C-STORE as SCU: send files and datasets, each instance with its own result.

:func:`store` takes paths (files, or folders searched recursively) and
pydicom datasets, proposes presentation contexts from what they are (their
SOP classes and transfer syntaxes), and sends them over one association, or
more when they need more than the 128 contexts PS3.8 allows in one.

A file whose transfer syntax the peer accepted is sent as it lies on disk,
read as it is sent, never decoded. When only another uncompressed syntax was
accepted, pydicom converts it. A compressed instance whose syntax was
refused fails with a reason and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from adicom.association import Association, Operation
from adicom.client import connect
from adicom.dimse import (
    Command,
    c_store_rq,
    describe_status,
)
from adicom.errors import (
    AssociationError,
    DicomError,
    DicomTimeout,
    PeerUnreachable,
    RemoteProtocolError,
)
from adicom.fileformat import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    ConvertedFile,
    encode_dataset,
)
from adicom.negotiation import ASYNC_WINDOW, DEFAULT_MAX_PDU
from adicom.pdu import UserIdentityRQ
from adicom.presentation import MAX_CONTEXTS
from adicom.storesources import (
    CONVERT_LIMIT,
    PRELOAD_LIMIT,
    PreparedInstance,
    StoreResult,
    context_keys,
    expand_sources,
    iter_files,
    prepare,
    prepare_source,
    sop_instance_of,
    storage_contexts,
)

__all__ = [
    "PreparedInstance",
    "StoreResult",
    "iter_files",
    "prepare",
    "send_instances",
    "sop_instance_of",
    "storage_contexts",
    "store",
    "store_instance",
]

log = logging.getLogger("adicom")

_UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN)


class _FileSlice:
    """A file from its data set's first byte, read as it is sent.

    With ``pad``, an odd-length data set is followed by one NUL byte (a
    deflated stream, PS3.5 A.5).
    """

    def __init__(self, path: str, offset: int, pad: bool = False) -> None:
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._file.seek(offset)
        self.size = os.fstat(self._file.fileno()).st_size - offset
        self._pad = pad and self.size % 2 == 1
        self.size += self._pad

    def read(self, n: int, /) -> bytes:
        data = self._file.read(n)
        if self._pad and len(data) < n:
            data += b"\0"  # the end of the file: the pad byte
            self._pad = False
        return data

    def close(self) -> None:
        self._file.close()


def _choose(
    association: Association, instance: PreparedInstance, scp_role_required: bool = False
) -> tuple[int, str] | None:
    """The context to send on and its transfer syntax: the instance's own, else uncompressed.

    ``scp_role_required``: we are the acceptor sending C-GET sub-operations,
    so only contexts where the requestor took the SCP role count.
    """
    fallback = None
    for context in association.contexts.values():
        if not context.accepted or context.abstract_syntax != instance.sop_class_uid:
            continue
        if scp_role_required and not context.scp_role:
            continue
        if context.transfer_syntax == instance.transfer_syntax:
            return context.context_id, instance.transfer_syntax
        if (
            fallback is None
            and instance.transfer_syntax in _UNCOMPRESSED
            and context.transfer_syntax in _UNCOMPRESSED
        ):
            fallback = (context.context_id, str(context.transfer_syntax))
    return fallback


async def store_instance(
    association: Association,
    source: str | os.PathLike[str] | Dataset,
    *,
    scp_role_required: bool = False,
    move_originator: tuple[str, int] | None = None,
) -> StoreResult:
    """Send one instance on an open association and return its result.

    ``move_originator`` (AE title, message ID) marks a C-MOVE sub-operation
    (PS3.7 9.1.1.1.9); ``scp_role_required`` a C-GET sub-operation.
    """
    results: list[StoreResult] = []

    async def keep(_instance: PreparedInstance, result: StoreResult) -> None:
        results.append(result)

    await send_instances(
        association,
        _each([prepare_source(source)]),
        keep,
        scp_role_required=scp_role_required,
        move_originator=move_originator,
    )
    return results[0]


@dataclass(slots=True)
class _Outgoing:
    """An instance ready to go: its context and its data set."""

    instance: PreparedInstance
    context_id: int
    source: bytes | memoryview | _FileSlice | ConvertedFile
    #: Its C-STORE-RQ (with its Message ID), and encoded, while the peer was busy.
    command: Command | None = None
    encoded: bytes = b""

    def close(self) -> None:
        if isinstance(self.source, _FileSlice | ConvertedFile):
            self.source.close()


def _ready(
    association: Association,
    instance: PreparedInstance,
    scp_role_required: bool,
    choices: dict[tuple[str, str], tuple[int, str] | None],
) -> _Outgoing | StoreResult:
    """Choose the context and make the data set ready to send, or say why it cannot go.

    ``choices`` remembers the context chosen per SOP class and transfer
    syntax: a C-GET requestor may offer a hundred contexts or more.
    """
    if instance.error:
        return instance.failed(instance.error)
    key = (instance.sop_class_uid, instance.transfer_syntax)
    if key in choices:
        choice = choices[key]
    else:
        choice = choices[key] = _choose(association, instance, scp_role_required)
    if choice is None:
        return instance.failed(
            f"the peer accepted no presentation context for {UID(instance.sop_class_uid).name} "
            f"in {UID(instance.transfer_syntax).name}"
        )
    context_id, transfer = choice
    source: bytes | memoryview | _FileSlice | ConvertedFile
    # PS3.5 A.5: a deflated stream of odd length is sent with a trailing NUL
    # (files that lack it exist); PS3.8 E.1 wants even fragments, and DCMTK
    # aborts on an odd one.
    pad = transfer == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    try:
        if instance.data is not None and transfer == instance.transfer_syntax:
            source = instance.data
            if pad and len(source) % 2:
                source = bytes(source) + b"\0"
        elif (
            instance.path is not None
            and instance.dataset is None
            and (transfer == instance.transfer_syntax)
        ):
            source = _FileSlice(instance.path, instance.offset, pad)
            if source.size <= PRELOAD_LIMIT:
                # Read now, while the peer is busy with the previous instance.
                slice_, source = source, source.read(source.size)
                slice_.close()
        elif instance.dataset is not None:
            source = encode_dataset(instance.dataset, transfer)
        else:
            assert instance.path is not None
            converted = _converted(instance, transfer)
            if converted is None:
                return instance.failed(
                    f"it must be converted from {UID(instance.transfer_syntax).name} to "
                    f"{UID(transfer).name}: adicom converts files whole only up to "
                    f"{CONVERT_LIMIT >> 20} MiB, and larger ones only little endian with "
                    "their pixel data last"
                )
            source = converted
    except Exception as exc:
        return instance.failed(f"cannot read the instance: {exc}")
    return _Outgoing(instance, context_id, source)


def _converted(instance: PreparedInstance, transfer: str) -> bytes | ConvertedFile | None:
    """The file's data set in ``transfer``, without reading a large file whole.

    The pixel data of a little endian file is streamed as it lies (see
    ConvertedFile); another file is read and converted whole only up to
    CONVERT_LIMIT, which costs the event loop tens of milliseconds at most.
    """
    assert instance.path is not None
    streamed = ConvertedFile.open(
        instance.path, instance.offset, instance.transfer_syntax, transfer
    )
    if streamed is not None:
        return streamed
    if os.path.getsize(instance.path) > CONVERT_LIMIT:
        return None
    return encode_dataset(pydicom.dcmread(instance.path), transfer)


def _result(instance: PreparedInstance, response: Command) -> StoreResult:
    status = response.status
    if status is None:
        return instance.failed("C-STORE-RSP without a status", 0xFFFF)  # no code of PS3.7: ours
    result = StoreResult(instance.source, instance.sop_class_uid, instance.sop_instance_uid, status)
    if not result.ok:
        comment = f": {response.error_comment}" if response.error_comment else ""
        result = instance.failed(describe_status(status) + comment, status)
    return result


async def send_instances(
    association: Association,
    instances: AsyncIterator[PreparedInstance | str | os.PathLike[str] | Dataset],
    on_result: Callable[[PreparedInstance, StoreResult], Awaitable[None]],
    *,
    scp_role_required: bool = False,
    move_originator: tuple[str, int] | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Send instances (paths, datasets) by C-STORE, as many outstanding as the association allows.

    Up to ``association.max_outstanding`` requests are in flight (the
    asynchronous operations window, PS3.7 D.3.3.3; 1 unless negotiated), and
    the next instance is made ready (its file read) while the peer works, so
    both sides are busy at once. ``on_result`` is awaited with each result:
    in the order of the responses for the instances sent, at once for those
    that cannot be sent, with the instance each is about. ``stop`` is asked
    before each new instance; those in flight are still awaited. Errors of
    the association propagate.
    """
    pipeline = _Pipeline(
        association, instances, on_result, scp_role_required, move_originator, stop
    )
    await pipeline.run()


class _Pipeline:
    """One :func:`send_instances` call: what is in flight, what goes next, what to report."""

    def __init__(
        self,
        association: Association,
        instances: AsyncIterator[PreparedInstance | str | os.PathLike[str] | Dataset],
        on_result: Callable[[PreparedInstance, StoreResult], Awaitable[None]],
        scp_role_required: bool,
        move_originator: tuple[str, int] | None,
        stop: Callable[[], bool] | None,
    ) -> None:
        self.association = association
        self.instances = instances
        self.on_result = on_result
        self.scp_role_required = scp_role_required
        self.move_originator = move_originator
        self.stop = stop
        self.window = association.max_outstanding
        self.inflight: deque[tuple[_Outgoing, Operation]] = deque()
        self.choices: dict[tuple[str, str], tuple[int, str] | None] = {}
        self.upcoming: _Outgoing | None = None
        #: The instance whose C-STORE-RQ is leaving (not yet in flight).
        self.sending: _Outgoing | None = None
        #: A result not yet handed to on_result: the next request went first.
        self.unreported: tuple[PreparedInstance, StoreResult] | None = None

    def stopped(self) -> bool:
        return self.stop is not None and self.stop()

    def unanswered(self) -> list[PreparedInstance]:
        """After the association failed: the instances sent (or being sent) without a response."""
        lost = [outgoing.instance for outgoing, _ in self.inflight]
        if self.sending is not None:
            lost.append(self.sending.instance)
        return lost

    async def run(self) -> None:
        try:
            self.upcoming = await self.next_ready()
            while self.upcoming is not None or self.inflight or self.unreported is not None:
                await self.fill_window()
                await self.report()  # when no request could go first
                if not self.inflight:
                    break  # all sent and answered, or stopped
                outgoing, operation = self.inflight[0]
                response = await operation.result()
                self.inflight.popleft()  # kept till now: unanswered() names it if that failed
                # Handed on after the next request leaves, if one can: with
                # one request in flight (a C-GET requestor that takes no
                # window) the peer then waits only for the response to be
                # read, not for what the caller does with the result (a
                # C-GET pending response, a progress callback).
                self.unreported = (outgoing.instance, _result(outgoing.instance, response))
        finally:
            for _, operation in self.inflight:
                operation.forget()
            if self.upcoming is not None:
                self.upcoming.close()

    async def fill_window(self) -> None:
        """Send what is ready while the window has room, readying the next meanwhile."""
        while self.upcoming is not None and len(self.inflight) < self.window:
            outgoing, self.upcoming = self.upcoming, None
            if self.stopped():
                outgoing.close()
                return
            assert outgoing.command is not None
            self.sending = outgoing
            try:
                operation = await self.association.start_operation(
                    outgoing.context_id, outgoing.command, outgoing.source, encoded=outgoing.encoded
                )
            finally:
                outgoing.close()
            self.inflight.append((outgoing, operation))
            self.sending = None
            await self.report()
            self.upcoming = await self.next_ready()  # while the peer works on what was sent

    async def report(self) -> None:
        if self.unreported is not None:
            result, self.unreported = self.unreported, None
            await self.on_result(*result)

    async def next_ready(self) -> _Outgoing | None:
        """The next instance that can go, its C-STORE-RQ made; refused ones are reported."""
        while not self.stopped():
            item = await anext(self.instances, None)
            if item is None:
                return None
            instance = (
                item if isinstance(item, PreparedInstance) else prepare_source(item, preload=True)
            )
            ready = _ready(self.association, instance, self.scp_role_required, self.choices)
            if isinstance(ready, _Outgoing):
                ready.command = c_store_rq(
                    instance.sop_class_uid,
                    instance.sop_instance_uid,
                    message_id=self.association.next_message_id(),
                    move_originator=self.move_originator,
                )
                ready.encoded = ready.command.encode()
                return ready
            await self.on_result(instance, ready)
        return None


#: What ends an association under :func:`store` and may be survived by a new one.
_ASSOCIATION_FAILURES = (AssociationError, DicomTimeout, RemoteProtocolError, PeerUnreachable)


async def store(
    host: str,
    port: int,
    sources: Iterable[str | os.PathLike[str] | Dataset],
    *,
    calling_ae: str = "ADICOM",
    called_ae: str = "ANY-SCP",
    max_pdu: int = DEFAULT_MAX_PDU,
    connect_timeout: float | None = 10.0,
    timeout: float | None = 30.0,
    progress: Callable[[StoreResult], Awaitable[None] | None] | None = None,
    move_originator: tuple[str, int] | None = None,
    stop: Callable[[], bool] | None = None,
    reconnects: int = 0,
    ssl: SSLContext | None = None,
    user_identity: UserIdentityRQ | None = None,
) -> list[StoreResult]:
    """Send instances by C-STORE and return one result per instance, in order.

    ``sources`` are file paths, folders (searched recursively) and pydicom
    datasets. Instances that cannot be sent (not DICOM, no accepted context,
    a failure status) are reported in their result and the rest go on;
    errors of the association itself (unreachable, rejected, aborted)
    propagate. ``progress`` is called (and awaited, if async) with each
    result as it comes. ``move_originator`` marks C-MOVE sub-operations.
    ``stop`` is asked before each instance is sent: once it says True,
    nothing more is sent, those in flight are awaited, and the results
    cover only the instances sent or refused until then.

    ``ssl`` (:func:`adicom.tls.client_context`) sends over TLS;
    ``user_identity`` is sent in each A-ASSOCIATE-RQ (PS3.7 D.3.3.7).

    ``reconnects`` lets the run survive the association: when the peer
    aborts or closes it, or a response times out, a new association goes
    on with the instances not yet answered, up to ``reconnects`` failed
    associations in a row (an association on which a response came resets
    the count). Those in flight at the failure are sent once more, one at
    a time so that an instance that makes the peer abort fails alone: one
    that was in flight at two failures fails with the reason, and so do the
    instances left once the count is exhausted; then ``store`` returns
    instead of raising. Later associations propose no asynchronous window.
    Failing to open the first association still raises (nothing was sent).
    0 (the default): the first failure raises.
    """

    async def report(result: StoreResult) -> None:
        if progress is not None:
            outcome = progress(result)
            if outcome is not None:
                await outcome

    instances = [prepare_source(source) for source in expand_sources(sources)]
    results: list[StoreResult | None] = [None] * len(instances)
    position = {id(instance): i for i, instance in enumerate(instances)}
    run = _Run(reconnects)

    async def keep(instance: PreparedInstance, result: StoreResult) -> None:
        if result.status is not None:
            run.answered = True
        results[position[id(instance)]] = result
        await report(result)

    for batch in _batches(instances):
        if stop is not None and stop():
            break
        for index in batch:
            if instances[index].error:
                await keep(instances[index], instances[index].failed(instances[index].error or ""))
        todo = deque(i for i in batch if not instances[i].error)
        while todo and not (stop is not None and stop()):
            if run.gave_up is not None:
                for index in todo:
                    await keep(instances[index], instances[index].failed(run.gave_up))
                break
            run.answered = False
            pipeline: _Pipeline | None = None
            try:
                async with connect(
                    host,
                    port,
                    calling_ae=calling_ae,
                    called_ae=called_ae,
                    contexts=storage_contexts(instances[i] for i in todo),
                    max_pdu=max_pdu,
                    connect_timeout=connect_timeout,
                    timeout=timeout,
                    async_window=run.window,
                    ssl=ssl,
                    user_identity=user_identity,
                ) as association:
                    run.opened = True
                    pipeline = _Pipeline(
                        association, _take(instances, todo), keep, False, move_originator, stop
                    )
                    await pipeline.run()
            except _ASSOCIATION_FAILURES as exc:
                if not reconnects or not run.opened:
                    raise
                if pipeline is not None:
                    await pipeline.report()  # a response that came before the failure
                    if pipeline.upcoming is not None:  # made ready, never sent
                        todo.appendleft(position[id(pipeline.upcoming.instance)])
                    lost = pipeline.unanswered()
                else:
                    lost = []
                await run.failed(exc, lost, todo, position, keep)
    done = [r for r in results if r is not None]
    failed = sum(not r.ok for r in done)
    log.info("Stored %d instances on %s: %d failed", len(done) - failed, called_ae, failed)
    return done


class _Run:
    """How one :func:`store` call stands with its associations (``reconnects``)."""

    def __init__(self, reconnects: int) -> None:
        self.reconnects = reconnects
        self.opened = False  # an association was established at least once
        self.answered = False  # a response came on the latest association
        self.failures = 0  # associations failed in a row
        self.window = ASYNC_WINDOW
        #: Why the instances left are not sent, once the run gave up.
        self.gave_up: str | None = None
        self.attempts: dict[int, int] = {}

    async def failed(
        self,
        exc: DicomError,
        lost: list[PreparedInstance],
        todo: deque[int],
        position: dict[int, int],
        keep: Callable[[PreparedInstance, StoreResult], Awaitable[None]],
    ) -> None:
        """The association failed: requeue or fail what was unanswered, count the failure."""
        self.failures = 1 if self.answered else self.failures + 1
        # One at a time from now on: if an instance makes the peer abort,
        # only it is in flight when that happens again.
        self.window = 1
        again: list[int] = []
        for instance in lost:
            index = position[id(instance)]
            self.attempts[index] = self.attempts.get(index, 0) + 1
            if self.attempts[index] >= 2:
                reason = f"no response: the association failed while it was sent, twice ({exc})"
                await keep(instance, instance.failed(reason))
            else:
                again.append(index)
        todo.extendleft(reversed(again))
        if not todo:
            return  # it failed while being released: everything was answered
        if self.failures > self.reconnects:
            self.gave_up = f"not sent: {self.failures} associations in a row failed (last: {exc})"
            log.warning("C-STORE: giving up: %s", self.gave_up)
        else:
            log.warning(
                "C-STORE: the association failed (%s); a new one for the %d instances left",
                exc,
                len(todo),
            )
            if not self.answered:
                # Nothing got through: give a restarting peer a moment.
                await asyncio.sleep(min(0.5 * self.failures, 5.0))


async def _take(
    instances: list[PreparedInstance], todo: deque[int]
) -> AsyncIterator[PreparedInstance]:
    """The instances of ``todo``, each taken off it as the pipeline asks for it."""
    while todo:
        yield instances[todo.popleft()]


async def _each(instances: Iterable[PreparedInstance]) -> AsyncIterator[PreparedInstance]:
    for instance in instances:
        yield instance


def _batches(instances: Sequence[PreparedInstance]) -> Iterator[list[int]]:
    """Indices of the instances, in order, cut where 128 contexts would be exceeded."""
    batch: list[int] = []
    keys: set[tuple[str, tuple[str, ...]]] = set()
    for index, instance in enumerate(instances):
        new = set() if instance.error else set(context_keys(instance)) - keys
        if batch and len(keys) + len(new) > MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
            new = set() if instance.error else set(context_keys(instance))
        batch.append(index)
        keys |= new
    if batch:
        yield batch
