"""``DicomClient``: the high-level async API for query, retrieve and store.

Each call opens its own association (so calls can run at once with
``asyncio.gather``), does its work and releases it; pass ``association=`` to
reuse one you opened with :func:`adicom.connect`. Timeouts: ``timeout`` on a
call bounds the whole operation, and a retrieve or query that runs out is
cancelled on the wire (C-CANCEL) before the error is raised; the client's
``dimse_timeout`` bounds each single response.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TypeVar

from pydicom.dataset import Dataset

from adicom import batch, qrscu
from adicom.association import Association
from adicom.batch import RetrieveBatch, StoreBatch
from adicom.clientretrieve import ProgressCallback, RetrieveMethods
from adicom.commitment import CommitmentReports, CommitmentResult, Reference, request_commitment
from adicom.errors import TimeoutKind
from adicom.models import (
    DicomNode,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    RetrieveResult,
    SeriesQuery,
    SeriesResult,
    StudyQuery,
    StudyResult,
    WorklistQuery,
    WorklistResult,
)
from adicom.operation import bounded
from adicom.presentation import STORAGE_COMMITMENT
from adicom.qrscu import Model
from adicom.retry import retry_reason, retrying
from adicom.server import Server
from adicom.storescu import (
    PreparedInstance,
    StoreResult,
    prepare,
    send_instances,
    storage_contexts,
    store,
)

__all__ = ["DicomClient", "ProgressCallback"]

log = logging.getLogger("adicom")

#: Seconds :meth:`DicomClient.commit`'s own listener waits, once the result
#: is in, for the peer to release the association that brought it.
REPORT_RELEASE_GRACE = 2.0


ResultT = TypeVar("ResultT", PatientResult, StudyResult, SeriesResult, ImageResult)
T = TypeVar("T")

_PLURAL = {PatientResult: "patients", StudyResult: "studies", SeriesResult: "series",
           ImageResult: "images"}  # fmt: skip


class DicomClient(RetrieveMethods):
    """An async DICOM client: C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE against one peer per call.

    ``calling_aet`` is our AE title; ``max_pdu`` the largest PDU we accept
    (0: no limit).

    What a C-GET offers to receive (the storage contexts, each with the SCP
    role, PS3.4 C.4.3) is decided per retrieve: an IMAGE level C-FIND asks
    the peer which SOP classes (and, if it says, transfer syntaxes) the
    study, series or instance holds, and each is offered as
    :func:`adicom.qrscu.plan_get_contexts` says; if that C-FIND fails, or its
    first match does not name its SOP class (it is then cancelled), the
    common classes are offered (:data:`adicom.qrscu.DEFAULT_GET_SOP_CLASSES`).
    A peer whose C-FIND did not name the class is remembered for 10
    minutes: the client's next C-GETs from it make that offer without the
    C-FIND.
    ``get_offer`` says instead what to offer, without the C-FIND: SOP class
    to transfer syntaxes (an empty list: every syntax pydicom knows).
    ``get_all_syntaxes`` offers every syntax for each class, whatever the
    peer says it holds. ``get_sop_classes`` offers those classes with the
    usual syntaxes, as adicom did before it asked.

    ``retry`` (:class:`~adicom.retry.RetryPolicy`; every call takes
    ``retry=`` too) tries again after failures worth it: an unreachable
    peer, a transient rejection, an association lost before a result, a
    timeout of a query. A query or echo is repeated whole; a store sends
    again only the instances the peer did not answer; a retrieve asks again
    only for the instances that did not arrive (C-GET) or that the peer
    reported failed (C-MOVE). With ``association=`` given, nothing is retried.

    ``pool`` (:class:`~adicom.pool.AssociationPool`) keeps associations open
    between calls to the same peer with the same presentation contexts;
    close it (``await pool.aclose()``, or ``async with``) when done.
    """

    async def echo(self, peer: DicomNode, timeout: float | None = None) -> bool:
        """C-ECHO: True when the peer answers success; raises why otherwise."""

        async def once() -> bool:
            contexts = [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
            async with self._association(peer, contexts) as a:
                seconds = timeout or self.timeout
                return await bounded(a.echo(), TimeoutKind.OPERATION, seconds, "echo") == 0

        return await retrying(self._retry(), once, f"C-ECHO to {peer}")

    async def find_patients(
        self,
        query: PatientQuery,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        association: Association | None = None,
    ) -> list[PatientResult]:
        """C-FIND at PATIENT level (Patient Root unless the client's model says otherwise)."""
        model: Model = "patient" if self.model == "study" else self.model
        return await self._find(
            query.to_identifier(), PatientResult, peer, timeout, association, model
        )

    async def find_studies(
        self,
        query: StudyQuery,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        association: Association | None = None,
    ) -> list[StudyResult]:
        """C-FIND at STUDY level."""
        return await self._find(query.to_identifier(), StudyResult, peer, timeout, association)

    async def find_series(
        self,
        query: SeriesQuery,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        association: Association | None = None,
    ) -> list[SeriesResult]:
        """C-FIND at SERIES level (within one study)."""
        return await self._find(query.to_identifier(), SeriesResult, peer, timeout, association)

    async def find_images(
        self,
        query: ImageQuery,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        association: Association | None = None,
    ) -> list[ImageResult]:
        """C-FIND at IMAGE level (within one series)."""
        return await self._find(query.to_identifier(), ImageResult, peer, timeout, association)

    async def find_worklist(
        self,
        query: WorklistQuery | Dataset,
        peer: DicomNode | None = None,
        *,
        timeout: float | None = None,
        association: Association | None = None,
    ) -> list[WorklistResult]:
        """C-FIND in the Modality Worklist model (PS3.4 K.6): the scheduled procedures that match.

        ``query`` is a :class:`~adicom.models.WorklistQuery`, or an
        identifier data set made by hand (sent as it is). ``peer`` may be
        left out when ``association`` is given (one that agreed the Modality
        Worklist Information Model - FIND context). A failure status raises
        :class:`~adicom.errors.DimseError`: 0xA900 when the peer could not
        match the identifier, 0xA700 when it had more matches than it sends.
        """
        if peer is None and association is None:
            raise ValueError("find_worklist needs a peer, or an association to use")
        identifier = query.to_identifier() if isinstance(query, WorklistQuery) else query
        where = str(peer) if peer is not None else "the given association"
        log.info("Searching the worklist on %s", where)
        found: list[WorklistResult] = []

        async def once() -> None:
            found.clear()  # a retry starts over
            opener = (
                self._association(peer, qrscu.find_contexts("worklist"), (), association)
                if peer is not None
                else contextlib.nullcontext(association)
            )
            async with opener as opened:
                assert opened is not None
                async with qrscu.find(opened, identifier, model="worklist") as results:

                    async def collect() -> None:
                        async for dataset in results:
                            found.append(WorklistResult.from_dataset(dataset))

                    await bounded(
                        collect(),
                        TimeoutKind.OPERATION,
                        timeout or self.timeout,
                        "C-FIND of the worklist",
                    )

        await retrying(self._retry(association), once, f"C-FIND of the worklist on {where}")
        log.info("Found %d worklist items", len(found))
        return found

    async def _find(
        self,
        identifier: Dataset,
        result_type: type[ResultT],
        peer: DicomNode,
        timeout: float | None,
        association: Association | None,
        model: Model | None = None,
    ) -> list[ResultT]:
        model = model or self.model
        what = _PLURAL[result_type]
        log.info("Searching %s on %s@%s:%d", what, peer.aet, peer.host, peer.port)
        found: list[ResultT] = []
        contexts = qrscu.find_contexts(model)

        async def once() -> None:
            found.clear()  # a retry starts over: a query may be repeated
            async with (
                self._association(peer, contexts, (), association) as opened,
                qrscu.find(opened, identifier, model=model) as results,
            ):

                async def collect() -> None:
                    async for dataset in results:
                        found.append(result_type.from_dataset(dataset))

                await bounded(
                    collect(), TimeoutKind.OPERATION, timeout or self.timeout, f"C-FIND of {what}"
                )

        await retrying(self._retry(association), once, f"C-FIND of {what} on {peer}")
        incomplete = sum(result.missing_unique_key for result in found)
        if incomplete:
            keyword = result_type.keywords[result_type.unique_key]
            log.info("Found %d %s (%d without %s)", len(found), what, incomplete, keyword)
        else:
            log.info("Found %d %s", len(found), what)
        return found

    async def store(
        self,
        sources: Iterable[str | os.PathLike[str] | Dataset],
        peer: DicomNode,
        *,
        progress: Callable[[StoreResult], None] | None = None,
        reconnects: int = 0,
    ) -> list[StoreResult]:
        """C-STORE files, folders and datasets to ``peer``; one result per instance.

        ``reconnects``: how many failed associations in a row (the peer
        aborted, closed, stopped answering) a new one replaces before the
        rest fail; 0 raises at the first (see :func:`adicom.store`). With a
        retry policy, the first association is retried as the policy says
        (nothing was sent yet), and an association lost later is replaced
        up to ``attempts - 1`` times in a row for the instances the peer had
        not answered: an instance the peer answered is never sent again.
        """
        policy = self.retry
        sources = list(sources)

        async def once(items: list[str | os.PathLike[str] | Dataset]) -> list[StoreResult]:
            if self.pool is not None:
                return await self._store_pooled(items, peer, progress)
            return await store(
                peer.host,
                peer.port,
                items,
                calling_ae=self.calling_aet,
                called_ae=peer.aet,
                max_pdu=self.max_pdu,
                connect_timeout=self.connect_timeout,
                timeout=self.dimse_timeout,
                progress=progress,
                reconnects=max(reconnects, policy.attempts - 1),
                ssl=self.ssl,
                user_identity=self.user_identity,
            )

        what = f"C-STORE to {peer}"
        results = await retrying(policy, lambda: once(sources), what, idempotent=False)
        # Instances no response answered (the peer went away and stayed away
        # through the reconnects) go again after a wait; answered ones never.
        datasets = {str(d.get("SOPInstanceUID", "")): d for d in sources if isinstance(d, Dataset)}
        started, attempt = time.perf_counter(), 1
        while attempt < policy.attempts:
            lost = [i for i, r in enumerate(results) if r.status is None and r.skipped is None]
            wait = policy.delay(attempt + 1)
            late = policy.deadline is not None and (
                time.perf_counter() - started + wait >= policy.deadline
            )
            if not lost or late:
                break
            attempt += 1
            log.warning(
                "%s: %d instances not answered (%s); try %d of %d in %.1f s",
                what,
                len(lost),
                results[lost[0]].error,
                attempt,
                policy.attempts,
                wait,
            )
            await asyncio.sleep(wait)
            again: list[str | os.PathLike[str] | Dataset] = [
                datasets.get(results[i].source) or results[i].source for i in lost
            ]
            try:
                retried = await retrying(
                    policy, functools.partial(once, again), what, idempotent=False
                )
            except Exception as exc:
                if retry_reason(exc) is None:
                    raise
                continue  # still away: the next round waits longer
            for index, result in zip(lost, retried, strict=True):
                results[index] = result
        return results

    async def _store_pooled(
        self,
        sources: list[str | os.PathLike[str] | Dataset],
        peer: DicomNode,
        progress: Callable[[StoreResult], None] | None,
    ) -> list[StoreResult]:
        """C-STORE on a pooled association proposing the contexts these instances need."""
        instances = prepare(sources)
        results: dict[int, StoreResult] = {}
        position = {id(instance): index for index, instance in enumerate(instances)}

        async def keep(instance: PreparedInstance, result: StoreResult) -> None:
            results[position[id(instance)]] = result
            if progress is not None:
                progress(result)

        for instance in instances:
            if instance.error:
                await keep(instance, instance.failed(instance.error))
        ready = [i for i in instances if not i.error]
        if ready:
            contexts = storage_contexts(ready)
            async with self._association(peer, contexts) as association:
                await send_instances(association, _aiter(ready), keep)
        return [results[index] for index in sorted(results)]

    async def store_many(
        self,
        sources: Iterable[str | os.PathLike[str] | Dataset],
        peer: DicomNode,
        *,
        concurrency: int = 4,
        progress: Callable[[StoreResult], None] | None = None,
    ) -> StoreBatch:
        """C-STORE many instances over ``concurrency`` associations (see :mod:`adicom.batch`).

        Returns the counts and the results that were not a success; each
        result goes to ``progress`` as it comes. Memory stays bounded
        whatever the number of instances (they are read in chunks).
        """
        return await batch.store_many(
            self, sources, peer, concurrency=concurrency, progress=progress
        )

    async def get_studies(
        self,
        study_uids: Iterable[str],
        peer: DicomNode,
        output_dir: str | os.PathLike[str],
        *,
        concurrency: int = 2,
        progress: Callable[[str, RetrieveResult], None] | None = None,
    ) -> RetrieveBatch:
        """C-GET many studies into ``output_dir``, ``concurrency`` at a time."""
        return await batch.get_studies(
            self, study_uids, peer, output_dir, concurrency=concurrency, progress=progress
        )

    async def move_studies(
        self,
        study_uids: Iterable[str],
        peer: DicomNode,
        destination_aet: str,
        *,
        concurrency: int = 2,
        progress: Callable[[str, RetrieveResult], None] | None = None,
    ) -> RetrieveBatch:
        """C-MOVE many studies to ``destination_aet``, ``concurrency`` at a time."""
        return await batch.move_studies(
            self, study_uids, peer, destination_aet, concurrency=concurrency, progress=progress
        )

    async def commit(
        self,
        instances: Iterable[Reference | tuple[str, str] | Dataset | StoreResult],
        peer: DicomNode,
        *,
        timeout: float | None = None,
        reports: CommitmentReports | None = None,
        listen_port: int | None = None,
        listen_host: str = "0.0.0.0",
        association: Association | None = None,
    ) -> CommitmentResult:
        """Ask ``peer`` to commit to holding ``instances``; return what it holds and not.

        ``instances`` are (SOP Class UID, SOP Instance UID) pairs, data sets,
        or the results of :meth:`store`. The result is awaited up to
        ``timeout`` seconds (default: the client's ``timeout``, else 60) on
        the association, and on the associations the peer opens to us: to a
        :class:`~adicom.Server` you run with ``**reports.server_options()``
        (pass ``reports``), or to one this call runs on ``listen_port`` until
        the result is in (the peer must know our AE title at that address).
        Raises :class:`~adicom.errors.DimseError` if the peer refuses the
        request, :class:`~adicom.errors.DicomTimeout` if no result comes.
        """
        references = [_reference(item) for item in instances]
        seconds = timeout or self.timeout or 60.0
        contexts = [(STORAGE_COMMITMENT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])]
        async with contextlib.AsyncExitStack() as stack:
            if listen_port is not None:
                reports = reports or CommitmentReports()
                listener = Server(
                    self.calling_aet, host=listen_host, port=listen_port, **reports.server_options()
                )
                await listener.start()
                # The peer that brought the report on its own association
                # releases it after our response: let it, rather than abort
                # it as it does (bounded: then the rest are aborted).
                stack.push_async_callback(listener.close, grace=REPORT_RELEASE_GRACE)
            opened = await stack.enter_async_context(
                self._association(peer, contexts, (), association)
            )
            log.info("Asking %s to commit to %d instances", peer, len(references))
            result = await request_commitment(opened, references, reports=reports, timeout=seconds)
        log.info(
            "%s committed to %d instances, not to %d",
            peer,
            len(result.committed),
            len(result.failed),
        )
        return result


def _reference(item: Reference | tuple[str, str] | Dataset | StoreResult) -> Reference:
    """An instance to commit, named by its SOP class and instance UIDs."""
    if isinstance(item, Reference):
        return item
    if isinstance(item, StoreResult):
        return Reference(item.sop_class_uid, item.sop_instance_uid)
    if isinstance(item, Dataset):
        return Reference(str(item.SOPClassUID), str(item.SOPInstanceUID))
    sop_class, sop_instance = item
    return Reference(sop_class, sop_instance)


async def _aiter(items: Sequence[PreparedInstance]) -> AsyncIterator[PreparedInstance]:
    for item in items:
        yield item
