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
import copy
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from ssl import SSLContext
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from adicom import batch, qrscu
from adicom.association import Association
from adicom.batch import RetrieveBatch, StoreBatch
from adicom.client import connect, open_association
from adicom.commitment import CommitmentReports, CommitmentResult, Reference, request_commitment
from adicom.dimse import Status
from adicom.diskstorage import DiskStorage
from adicom.errors import DicomError, PeerUnreachable, TimeoutKind
from adicom.events import Hooks
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
    status_text,
)
from adicom.operation import bounded
from adicom.pdu import RoleSelection, UserIdentityRQ
from adicom.pool import AssociationPool
from adicom.presentation import STORAGE_COMMITMENT
from adicom.qrscu import DEFAULT_GET_SOP_CLASSES, Model, RetrieveProgress
from adicom.retry import NO_RETRY, RetryPolicy, retry_reason, retrying
from adicom.server import Server
from adicom.settings import DicomSettings
from adicom.storage import MemoryStorage, StorageHandler
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

#: Called after each response of a retrieve with its counts so far.
ProgressCallback = Callable[[RetrieveProgress], None]

ResultT = TypeVar("ResultT", PatientResult, StudyResult, SeriesResult, ImageResult)
T = TypeVar("T")

_PLURAL = {PatientResult: "patients", StudyResult: "studies", SeriesResult: "series",
           ImageResult: "images"}  # fmt: skip


class DicomClient:
    """An async DICOM client: C-ECHO, C-FIND, C-GET, C-MOVE and C-STORE against one peer per call.

    ``calling_aet`` is our AE title; ``max_pdu`` the largest PDU we accept
    (0: no limit).

    What a C-GET offers to receive (the storage contexts, each with the SCP
    role, PS3.4 C.4.3) is decided per retrieve: an IMAGE level C-FIND asks
    the peer which SOP classes (and, if it says, transfer syntaxes) the
    study, series or instance holds, and each is offered as
    :func:`adicom.qrscu.plan_get_contexts` says; if that C-FIND fails, the
    common classes are offered (:data:`adicom.qrscu.DEFAULT_GET_SOP_CLASSES`).
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

    def __init__(
        self,
        calling_aet: str = "ADICOM",
        max_pdu: int = 16384,
        *,
        connect_timeout: float = 10.0,
        dimse_timeout: float = 30.0,
        timeout: float | None = None,
        get_sop_classes: Sequence[str] | None = None,
        get_offer: Mapping[str, Sequence[str]] | None = None,
        get_all_syntaxes: bool = False,
        model: Model = "study",
        ssl: SSLContext | None = None,
        user_identity: UserIdentityRQ | None = None,
        retry: RetryPolicy = NO_RETRY,
        pool: AssociationPool | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        DicomNode(aet=calling_aet, host="localhost", port=104)  # validates the AE title
        self.calling_aet = calling_aet.strip()
        self.max_pdu = max_pdu
        self.connect_timeout = connect_timeout
        self.dimse_timeout = dimse_timeout
        #: Default bound of a whole operation (None: none beyond dimse_timeout per response).
        self.timeout = timeout
        self.get_sop_classes = None if get_sop_classes is None else tuple(get_sop_classes)
        self.get_offer = (
            None if get_offer is None else {sop: list(ts) for sop, ts in get_offer.items()}
        )
        self.get_all_syntaxes = get_all_syntaxes
        self.model: Model = model
        #: TLS for every association (:func:`adicom.tls.client_context`); None: plain TCP.
        self.ssl = ssl
        #: Sent in every A-ASSOCIATE-RQ (PS3.7 D.3.3.7); None: no user identity.
        self.user_identity = user_identity
        #: When to try again (see :mod:`adicom.retry`); each call may override it.
        self.retry = retry
        #: Where associations are kept for the next call (None: one per call).
        self.pool = pool
        #: Event hooks of every association the client opens (see :mod:`adicom.events`).
        self.hooks = hooks

    @classmethod
    def from_settings(cls, settings: DicomSettings | None = None) -> DicomClient:
        """A client configured from ``ADICOM_*`` environment variables."""
        settings = settings or DicomSettings()
        return cls(
            settings.aet,
            settings.max_pdu,
            connect_timeout=settings.connect_timeout,
            dimse_timeout=settings.dimse_timeout,
            ssl=settings.client_ssl_context(),
            retry=settings.retry_policy(),
        )

    def with_retry(self, retry: RetryPolicy) -> DicomClient:
        """A copy of the client that retries as ``retry`` says: ``client.with_retry(p).echo(n)``."""
        clone = copy.copy(self)
        clone.retry = retry
        return clone

    def _retry(self, association: Association | None = None) -> RetryPolicy:
        """The policy of a call: none on an association the caller opened (it cannot reopen)."""
        return NO_RETRY if association is not None else self.retry

    # -- associations ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _association(
        self,
        peer: DicomNode,
        contexts: list[tuple[str, list[str]]],
        roles: Sequence[RoleSelection] = (),
        association: Association | None = None,
    ) -> AsyncIterator[Association]:
        if association is not None:
            yield association
            return
        options: dict[str, Any] = {
            "calling_ae": self.calling_aet,
            "called_ae": peer.aet,
            "contexts": contexts,
            "roles": roles,
            "max_pdu": self.max_pdu,
            "connect_timeout": self.connect_timeout,
            "timeout": self.dimse_timeout,
            "ssl": self.ssl,
            "user_identity": self.user_identity,
            "hooks": self.hooks,
        }
        if self.pool is None:
            async with connect(peer.host, peer.port, **options) as opened:
                yield opened
            return
        # The same peer, as the same AE, with the same contexts and roles:
        # an association another call left open serves this one too.
        key = (
            peer.host,
            peer.port,
            peer.aet,
            self.calling_aet,
            tuple((abstract, tuple(syntaxes)) for abstract, syntaxes in contexts),
            tuple(roles),
            self.max_pdu,
            id(self.ssl),
            self.user_identity,
            id(self.hooks),
        )

        async def opener() -> Association:
            return await open_association(peer.host, peer.port, **options)

        async with self.pool.lease(key, opener) as leased:
            yield leased

    # -- C-ECHO -----------------------------------------------------------------

    async def echo(self, peer: DicomNode, timeout: float | None = None) -> bool:
        """C-ECHO: True when the peer answers success; raises why otherwise."""

        async def once() -> bool:
            contexts = [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
            async with self._association(peer, contexts) as a:
                seconds = timeout or self.timeout
                return await bounded(a.echo(), TimeoutKind.OPERATION, seconds, "echo") == 0

        return await retrying(self._retry(), once, f"C-ECHO to {peer}")

    # -- C-FIND -----------------------------------------------------------------

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

    # -- C-GET ------------------------------------------------------------------

    async def get_study(
        self,
        study_uid: str,
        peer: DicomNode,
        output_dir: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-GET a study into ``output_dir`` ({study}/{series}/{instance}.dcm)."""
        identifier = _identifier("STUDY", study_uid)
        return await self._get(
            identifier, DiskStorage(output_dir), peer, timeout, progress, association, "study"
        )

    async def get_series(
        self,
        study_uid: str,
        series_uid: str,
        peer: DicomNode,
        output_dir: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-GET a series into ``output_dir``."""
        identifier = _identifier("SERIES", study_uid, series_uid)
        return await self._get(
            identifier, DiskStorage(output_dir), peer, timeout, progress, association, "series"
        )

    async def get_image(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        peer: DicomNode,
        output_dir: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-GET one instance into ``output_dir``."""
        identifier = _identifier("IMAGE", study_uid, series_uid, sop_instance_uid)
        return await self._get(
            identifier, DiskStorage(output_dir), peer, timeout, progress, association, "image"
        )

    async def get_study_to_memory(
        self,
        study_uid: str,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-GET a study into memory: the datasets are in ``result.instances``."""
        identifier = _identifier("STUDY", study_uid)
        return await self._get(
            identifier, MemoryStorage(), peer, timeout, progress, association, "study"
        )

    async def get_series_to_memory(
        self,
        study_uid: str,
        series_uid: str,
        peer: DicomNode,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-GET a series into memory."""
        identifier = _identifier("SERIES", study_uid, series_uid)
        return await self._get(
            identifier, MemoryStorage(), peer, timeout, progress, association, "series"
        )

    async def _get(
        self,
        identifier: Dataset,
        storage: StorageHandler,
        peer: DicomNode,
        timeout: float | None,
        progress: ProgressCallback | None,
        association: Association | None,
        what: str,
    ) -> RetrieveResult:
        started = time.perf_counter()
        timeout = timeout or self.timeout
        held: dict[str, qrscu.HeldInstance] = {}
        if association is None:
            contexts, roles, held = await self._get_contexts(identifier, peer, timeout)
        else:
            contexts, roles = [], []  # what the caller's association agreed
        if timeout is not None:
            timeout = max(timeout - (time.perf_counter() - started), 0.001)
        policy = self._retry(association)
        targets = [identifier]
        done = RetrieveProgress()  # what earlier tries brought
        attempt = 1
        while True:
            state = RetrieveProgress()
            try:
                async with self._association(peer, contexts, roles, association) as a:
                    for target in targets:
                        outcome = await qrscu.get(
                            a,
                            target,
                            storage,
                            model=self.model,
                            progress=progress,
                            timeout=timeout,
                            held=held,
                            report=False,
                            state=state,
                        )
                    agreed = a.contexts
                break
            except Exception as exc:
                reason = retry_reason(exc, timeouts=policy.timeouts)
                wait = policy.delay(attempt + 1)
                late = policy.deadline is not None and (
                    time.perf_counter() - started + wait >= policy.deadline
                )
                if reason is None or attempt >= policy.attempts or late:
                    raise
                # No final response: what arrived and was stored is what completed.
                state.completed = sum(not why for _, _, why in state.received.values())
                _carry(done, state, final=False)
                if not held:
                    found = await self._survey(identifier, peer, self.dimse_timeout)
                    held = found.instances if found is not None else {}
                targets = _still_missing(identifier, held, done)
                if not targets:  # everything had arrived when the association was lost
                    outcome, agreed = RetrieveProgress(status=Status.SUCCESS), {}
                    attempt += 1
                    break
                attempt += 1
                log.warning(
                    "C-GET of %s failed (%s: %s); try %d of %d in %.1f s for %s",
                    what,
                    reason,
                    exc,
                    attempt,
                    policy.attempts,
                    wait,
                    "the whole" if targets == [identifier] else f"{len(targets)} series not in",
                )
                await asyncio.sleep(wait)
        outcome = _carry(done, outcome) if attempt > 1 else outcome
        if association is None and not held and any(not f.sop_class_uid for f in outcome.failures):
            # Offered without asking first: ask now what failed, to say why.
            found = await self._survey(identifier, peer, self.dimse_timeout)
            if found is not None:
                outcome.failures = qrscu.explain_failures(agreed, outcome, found.instances)
        qrscu.log_failures(outcome.failures)
        result = _result(outcome, storage)
        log.info(
            "Retrieved %s: %d completed, %d failed (%.1f s)",
            what,
            result.num_completed,
            result.num_failed,
            time.perf_counter() - started,
        )
        return result

    async def _get_contexts(
        self, identifier: Dataset, peer: DicomNode, timeout: float | None
    ) -> tuple[list[tuple[str, list[str]]], list[RoleSelection], dict[str, qrscu.HeldInstance]]:
        """The contexts a C-GET proposes, and what the peer said it holds (if it was asked)."""
        if self.get_offer is not None:
            contexts, roles = qrscu.plan_get_contexts(
                self.model, self.get_offer, all_syntaxes=self.get_all_syntaxes
            )
            return contexts, roles, {}
        if self.get_sop_classes is not None:
            return (*qrscu.get_contexts(self.model, self.get_sop_classes), {})
        level = str(identifier.QueryRetrieveLevel).lower()
        found = await self._survey(identifier, peer, timeout)
        if found is None:
            log.warning("C-GET: offering the common storage classes")
            return (*qrscu.get_contexts(self.model), {})
        wanted = found.wanted()
        if not wanted:
            # DCMTK's dcmqrscp and pynetdicom's qrscp do not return SOP Class UID.
            log.info(
                "C-GET: the C-FIND %s; offering the common storage classes",
                f"named the SOP class of none of the {len(found.instances)} instances"
                if found.instances
                else f"found no instance of the {level}",
            )
            return (*qrscu.get_contexts(self.model), found.instances)
        contexts, roles = qrscu.plan_get_contexts(
            self.model,
            wanted,
            all_syntaxes=self.get_all_syntaxes,
            also=() if found.complete else DEFAULT_GET_SOP_CLASSES,
        )
        log.info(
            "C-GET: the %s holds %d instances of %d SOP classes; offering %d presentation contexts",
            level,
            len(found.instances),
            len(wanted),
            len(contexts) - 1,
        )
        return contexts, roles, found.instances

    async def _survey(
        self, identifier: Dataset, peer: DicomNode, timeout: float | None
    ) -> qrscu.Survey | None:
        """What the peer says a retrieve of ``identifier`` holds; None (logged) if it cannot say."""
        uids = [str(identifier.get(k, "")) for k in _RETRIEVE_KEYS]
        try:
            async with self._association(peer, qrscu.find_contexts("study")) as a:
                return await bounded(
                    qrscu.survey(a, *uids),
                    TimeoutKind.OPERATION,
                    timeout,
                    "C-FIND of what a C-GET retrieves",
                )
        except PeerUnreachable:
            raise
        except DicomError as exc:
            # PS3.4 C.4.3 does not oblige a C-GET SCP to answer C-FIND.
            log.warning(
                "C-GET: could not ask %s what the %s holds: %s",
                peer.aet,
                str(identifier.QueryRetrieveLevel).lower(),
                exc,
            )
            return None

    # -- C-MOVE -----------------------------------------------------------------

    async def move_study(
        self,
        study_uid: str,
        peer: DicomNode,
        destination_aet: str,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-MOVE a study to ``destination_aet`` (a node the peer knows)."""
        identifier = _identifier("STUDY", study_uid)
        return await self._move(
            identifier, peer, destination_aet, timeout, progress, association, "study"
        )

    async def move_series(
        self,
        study_uid: str,
        series_uid: str,
        peer: DicomNode,
        destination_aet: str,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-MOVE a series to ``destination_aet``."""
        identifier = _identifier("SERIES", study_uid, series_uid)
        return await self._move(
            identifier, peer, destination_aet, timeout, progress, association, "series"
        )

    async def move_image(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        peer: DicomNode,
        destination_aet: str,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        association: Association | None = None,
    ) -> RetrieveResult:
        """C-MOVE one instance to ``destination_aet``."""
        identifier = _identifier("IMAGE", study_uid, series_uid, sop_instance_uid)
        return await self._move(
            identifier, peer, destination_aet, timeout, progress, association, "image"
        )

    async def _move(
        self,
        identifier: Dataset,
        peer: DicomNode,
        destination_aet: str,
        timeout: float | None,
        progress: ProgressCallback | None,
        association: Association | None,
        what: str,
    ) -> RetrieveResult:
        DicomNode(aet=destination_aet, host="localhost", port=104)  # validates the title
        policy = self._retry(association)
        started = time.perf_counter()
        target = identifier
        done = RetrieveProgress()
        attempt = 1
        while True:
            reason = None
            try:
                contexts = qrscu.move_contexts(self.model)
                async with self._association(peer, contexts, (), association) as a:
                    outcome = await qrscu.move(
                        a,
                        target,
                        destination_aet.strip(),
                        model=self.model,
                        progress=progress,
                        timeout=timeout or self.timeout,
                    )
                failed = outcome.failed_sop_instances
                if failed and outcome.completed and target.QueryRetrieveLevel != "STUDY":
                    # Some went, some not: the destination may have been busy.
                    reason = f"{len(failed)} sub-operations failed"
            except Exception as exc:
                reason = retry_reason(exc, timeouts=policy.timeouts)
                if reason is None:
                    raise
                error: Exception | None = exc
            else:
                error = None
            wait = policy.delay(attempt + 1)
            late = policy.deadline is not None and (
                time.perf_counter() - started + wait >= policy.deadline
            )
            if reason is None or attempt >= policy.attempts or late:
                if error is not None:
                    raise error
                break
            attempt += 1
            if error is None:
                # Only the instances the peer reported failed go again.
                _carry(done, outcome, final=False)
                target = _instances(identifier, outcome.failed_sop_instances)
            log.warning(
                "C-MOVE of %s to %s: %s%s; try %d of %d in %.1f s",
                what,
                destination_aet,
                reason,
                f" ({error})" if error is not None else "",
                attempt,
                policy.attempts,
                wait,
            )
            await asyncio.sleep(wait)
        outcome = _carry(done, outcome) if attempt > 1 else outcome
        result = _result(outcome, None)
        log.info(
            "Moved %s to %s: %d completed, %d failed",
            what,
            destination_aet,
            result.num_completed,
            result.num_failed,
        )
        return result

    # -- C-STORE ----------------------------------------------------------------

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

    # -- batches -------------------------------------------------------------------

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

    # -- Storage Commitment (PS3.4 Annex J) ------------------------------------

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
                await stack.enter_async_context(
                    Server(
                        self.calling_aet,
                        host=listen_host,
                        port=listen_port,
                        **reports.server_options(),
                    )
                )
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


def _carry(
    done: RetrieveProgress, latest: RetrieveProgress, *, final: bool = True
) -> RetrieveProgress:
    """Add what a try of a retrieve brought to ``done``; with ``final``, its status too."""
    done.received.update(latest.received)
    done.paths.extend(latest.paths)
    if final:
        done.status = latest.status
        done.remaining = latest.remaining
        done.failed = latest.failed
        done.failed_sop_instances = latest.failed_sop_instances
        done.failures = latest.failures
        done.error_comment = latest.error_comment
        done.cancelled = latest.cancelled
        done.completed += latest.completed
        done.warning += latest.warning
    else:
        done.completed += latest.completed
        done.warning += latest.warning
    return done


def _still_missing(
    identifier: Dataset, held: Mapping[str, qrscu.HeldInstance], done: RetrieveProgress
) -> list[Dataset]:
    """IMAGE level identifiers for what a C-GET has not brought yet, a series each.

    Without a survey that names each instance's series, the whole
    identifier again (what arrived twice is stored once).
    """
    arrived = {uid for uid, (_, _, why) in done.received.items() if not why}
    by_series: dict[str, list[str]] = {}
    for uid, instance in held.items():
        if uid not in arrived:
            by_series.setdefault(instance.series_instance_uid, []).append(uid)
    if not held or "" in by_series:
        return [identifier]
    narrowed = []
    for series, uids in by_series.items():
        target = Dataset()
        target.QueryRetrieveLevel = "IMAGE"
        target.StudyInstanceUID = identifier.StudyInstanceUID
        target.SeriesInstanceUID = series
        target.SOPInstanceUID = uids  # a list of UIDs (PS3.4 C.4.2.2.1)
        narrowed.append(target)
    return narrowed


def _instances(identifier: Dataset, sop_instance_uids: Sequence[str]) -> Dataset:
    """The identifier narrowed to these instances (IMAGE level, a list of UIDs)."""
    narrowed = Dataset()
    narrowed.update(identifier)
    narrowed.QueryRetrieveLevel = "IMAGE"
    narrowed.SOPInstanceUID = list(sop_instance_uids)
    return narrowed


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


def _identifier(level: str, study: str, series: str = "", instance: str = "") -> Dataset:
    """The identifier of a retrieve (PS3.4 C.4.2.1.4.1): the level and its unique keys."""
    needed = {"STUDY": 1, "SERIES": 2, "IMAGE": 3}[level]
    for name, uid in (("study", study), ("series", series), ("SOP instance", instance))[:needed]:
        # PS3.4 C.4.2.2.1 (hierarchical retrieve): a unique key for each level
        # down to the one retrieved. An empty one (a C-FIND match that lacked
        # it) would be universal matching: the whole archive.
        if not uid:
            raise ValueError(f"a {level} retrieve needs the {name} UID; it is empty")
        if len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
            raise ValueError(f"{name} UID {uid!r} is not a valid UID")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = study
    if level in ("SERIES", "IMAGE"):
        identifier.SeriesInstanceUID = series
    if level == "IMAGE":
        identifier.SOPInstanceUID = instance
    return identifier


_RETRIEVE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _result(outcome: RetrieveProgress, storage: StorageHandler | None) -> RetrieveResult:
    instances = storage.datasets if isinstance(storage, MemoryStorage) else []
    # No final status at all is reported as 0xC000, "cannot understand".
    code = outcome.status if outcome.status is not None else Status.CANNOT_UNDERSTAND
    return RetrieveResult(
        status=status_text(code),
        status_code=code,
        num_remaining=outcome.remaining,
        num_completed=outcome.completed,
        num_failed=outcome.failed,
        num_warning=outcome.warning,
        failed_sop_instances=outcome.failed_sop_instances,
        failures=outcome.failures,
        error_comment=outcome.error_comment,
        instances=instances,
        paths=[Path(p) for p in outcome.paths],
    )


async def _aiter(items: Sequence[PreparedInstance]) -> AsyncIterator[PreparedInstance]:
    for item in items:
        yield item
