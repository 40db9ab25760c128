"""The retrieves of :class:`adicom.DicomClient`: C-GET and C-MOVE, retried as the policy says."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from pydicom.dataset import Dataset

from adicom import qrscu
from adicom.association import Association
from adicom.clientbase import ClientBase
from adicom.dimse import Status
from adicom.diskstorage import DiskStorage
from adicom.errors import DicomError, PeerUnreachable, TimeoutKind
from adicom.models import (
    DicomNode,
    RetrieveResult,
    status_text,
)
from adicom.operation import bounded
from adicom.pdu import RoleSelection
from adicom.presentation import PresentationContext
from adicom.qrscu import DEFAULT_GET_SOP_CLASSES, RetrieveProgress
from adicom.retry import RetryPolicy, retry_reason
from adicom.storage import MemoryStorage, StorageHandler

log = logging.getLogger("adicom")

#: Called after each response of a retrieve with its counts so far.
ProgressCallback = Callable[[RetrieveProgress], None]

_RETRIEVE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class RetrieveMethods(ClientBase):
    """C-GET and C-MOVE of a study, a series or an instance, to disk, memory or elsewhere."""

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
        targets = [identifier]
        agreed: Mapping[int, PresentationContext] = {}
        state = RetrieveProgress()

        async def attempt() -> tuple[RetrieveProgress, str | None]:
            nonlocal agreed, state
            state = RetrieveProgress()
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
            return outcome, None  # what failed had its chance: no retry for it

        async def again(outcome: RetrieveProgress | None, done: RetrieveProgress) -> str | None:
            nonlocal held, targets, agreed
            # The association was lost (a C-GET is not retried otherwise), so
            # there is no final response: what arrived and was stored is
            # what completed.
            state.completed = sum(not why for _, _, why in state.received.values())
            _carry(done, state, final=False)
            if not held:
                found = await self._survey(identifier, peer, self.dimse_timeout)
                held = found.instances if found is not None else {}
            targets = _still_missing(identifier, held, done)
            if not targets:  # everything had arrived when the association was lost
                agreed = {}
                return None
            return (
                "all of it"
                if targets == [identifier]
                else f"what is missing of {len(targets)} series"
            )

        outcome = await _with_retries(
            "C-GET", what, self._retry(association), started, attempt, again
        )
        if association is None and not held and any(not f.sop_class_uid for f in outcome.failures):
            # Offered without asking first: ask now what failed, to say why.
            found = await self._survey(identifier, peer, self.dimse_timeout)
            if found is not None:
                outcome.failures = qrscu.explain_failures(agreed, outcome, found.instances)
                if found.wanted():
                    self._classless.forget(peer)  # it says them now: ask it next time
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
        if self._classless.knows(peer):
            # Asked a moment ago: its C-FIND does not say SOP classes, so a
            # C-FIND now would only cost an association (one with dcmqrscp
            # forks a process) to learn that again.
            log.info(
                "C-GET: %s's C-FIND did not say SOP classes lately; offering the common ones",
                peer.aet,
            )
            return (*qrscu.get_contexts(self.model), {})
        found = await self._survey(identifier, peer, timeout, for_offer=True)
        if found is None:
            log.warning("C-GET: offering the common storage classes")
            return (*qrscu.get_contexts(self.model), {})
        if found.stopped:
            # What is held stays unknown: asked again only if something fails.
            log.info("C-GET: the C-FIND does not say SOP classes; offering the common ones")
            self._classless.note(peer)
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
        self,
        identifier: Dataset,
        peer: DicomNode,
        timeout: float | None,
        *,
        for_offer: bool = False,
    ) -> qrscu.Survey | None:
        """What the peer says a retrieve of ``identifier`` holds; None (logged) if it cannot say.

        ``for_offer``: only to choose what to offer, so it may stop early
        (qrscu.survey's ``until_classless``).
        """
        uids = [str(identifier.get(k, "")) for k in _RETRIEVE_KEYS]
        try:
            async with self._association(peer, qrscu.find_contexts("study")) as a:
                return await bounded(
                    qrscu.survey(a, *uids, until_classless=for_offer),
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
        target = identifier

        async def attempt() -> tuple[RetrieveProgress, str | None]:
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
                return outcome, f"{len(failed)} sub-operations failed"
            return outcome, None

        async def again(outcome: RetrieveProgress | None, done: RetrieveProgress) -> str | None:
            nonlocal target
            if outcome is None:  # lost before a final response: nothing is known
                return "all of it" if target is identifier else "the same instances again"
            # Only the instances the peer reported failed go again.
            _carry(done, outcome, final=False)
            target = _instances(identifier, outcome.failed_sop_instances)
            return f"the {len(outcome.failed_sop_instances)} that failed"

        outcome = await _with_retries(
            "C-MOVE",
            f"{what} to {destination_aet}",
            self._retry(association),
            time.perf_counter(),
            attempt,
            again,
        )
        result = _result(outcome, None)
        log.info(
            "Moved %s to %s: %d completed, %d failed",
            what,
            destination_aet,
            result.num_completed,
            result.num_failed,
        )
        return result


async def _with_retries(
    kind: str,
    what: str,
    policy: RetryPolicy,
    started: float,
    attempt: Callable[[], Awaitable[tuple[RetrieveProgress, str | None]]],
    again: Callable[[RetrieveProgress | None, RetrieveProgress], Awaitable[str | None]],
) -> RetrieveProgress:
    """Run a retrieve's tries until one does, or ``policy`` gives up; what they brought together.

    ``attempt`` is one try: its outcome, and why to try again although it
    ended (some sub-operations failed), or None. A try that raises is tried
    again when :func:`~adicom.retry.retry_reason` says it is worth it. Before
    each retry, ``again(outcome, done)`` (``outcome`` None after an
    exception) adds what the try brought to ``done`` and aims the next try
    at what is left; it says which part that is (for the log), or None
    when nothing is (then the retrieve succeeded). The waits and the
    deadline, counted from ``started``, are the policy's. The last failure
    is raised as it was.
    """
    done = RetrieveProgress()  # what earlier tries brought
    outcome = RetrieveProgress()
    tries = 1
    while True:
        error: Exception | None = None
        try:
            outcome, reason = await attempt()
        except Exception as exc:
            reason = retry_reason(exc, timeouts=policy.timeouts)
            if reason is None:
                raise
            error = exc
        if reason is None:
            break
        wait = policy.delay(tries + 1)
        late = policy.deadline is not None and (
            time.perf_counter() - started + wait >= policy.deadline
        )
        if tries >= policy.attempts or late:
            if error is not None:
                raise error
            break
        tries += 1
        scope = await again(outcome if error is None else None, done)
        if scope is None:
            outcome = RetrieveProgress(status=Status.SUCCESS)
            break
        log.warning(
            "%s of %s failed (%s%s); try %d of %d in %.1f s, asking for %s",
            kind,
            what,
            reason,
            f": {error}" if error is not None else "",
            tries,
            policy.attempts,
            wait,
            scope,
        )
        await asyncio.sleep(wait)
    return _carry(done, outcome) if tries > 1 else outcome


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
        paths=list(outcome.paths),  # Paths already: a new one each cost ~15 us
    )
