"""Batch operations: many instances or studies over a few associations at once.

:func:`store_many` spreads instances over ``concurrency`` associations;
:func:`get_studies` and :func:`move_studies` retrieve many studies, at most
``concurrency`` at a time. Each reports through one progress stream, adds
its results up, and holds a bounded amount whatever the size of the batch:
sources are read lazily in chunks, and only the failures are kept (every
result goes to ``progress`` as it comes). Cancelling a batch cancels its
operations on the wire (C-CANCEL for retrieves; C-STOREs in flight are
awaited by their association's abort) and logs what had completed.

These are methods of :class:`adicom.DicomClient` (``client.store_many``,
``client.get_studies``, ``client.move_studies``); the functions here take
the client as their first argument.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from adicom.models import DicomNode, RetrieveResult
from adicom.storescu import StoreResult, iter_files

if TYPE_CHECKING:
    from adicom.dicomclient import DicomClient

__all__ = ["CHUNK", "RetrieveBatch", "StoreBatch", "get_studies", "move_studies", "store_many"]

log = logging.getLogger("adicom")

#: Instances per association of a store batch: read, proposed and sent together.
CHUNK = 256

Source = str | os.PathLike[str] | Dataset


@dataclass(slots=True)
class StoreBatch:
    """What a :func:`store_many` did: counts, and the results that were not a success."""

    sent: int = 0
    warned: int = 0
    failed: int = 0
    skipped: int = 0
    #: The results of the instances that failed or were skipped, in order.
    failures: list[StoreResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every instance was stored (warnings included)."""
        return not self.failed

    def add(self, result: StoreResult) -> None:
        """Count one instance's result."""
        if result.skipped is not None:
            self.skipped += 1
            self.failures.append(result)
        elif not result.ok:
            self.failed += 1
            self.failures.append(result)
        elif result.status:
            self.warned += 1
        else:
            self.sent += 1


@dataclass(slots=True)
class RetrieveBatch:
    """What :func:`get_studies` or :func:`move_studies` did, study by study."""

    #: Study Instance UID -> its retrieve's result (each study's own, as it ended).
    results: dict[str, RetrieveResult] = field(default_factory=dict)
    #: Study Instance UID -> why it could not be retrieved at all (unreachable, ...).
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def num_completed(self) -> int:
        """Sub-operations completed, over all studies."""
        return sum(r.num_completed for r in self.results.values())

    @property
    def num_failed(self) -> int:
        """Sub-operations failed, over all studies."""
        return sum(r.num_failed for r in self.results.values())

    @property
    def ok(self) -> bool:
        """True when every study was retrieved whole."""
        return not self.errors and all(r.status == "success" for r in self.results.values())


def _chunks(sources: Iterable[Source], size: int) -> Iterator[list[Source]]:
    """The sources, folders expanded lazily, ``size`` at a time."""

    def expanded() -> Iterator[Source]:
        for source in sources:
            if isinstance(source, Dataset):
                yield source
            else:
                yield from iter_files([source])

    stream = expanded()
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


async def store_many(
    client: DicomClient,
    sources: Iterable[Source],
    peer: DicomNode,
    *,
    concurrency: int = 4,
    progress: Callable[[StoreResult], None] | None = None,
    chunk: int = CHUNK,
) -> StoreBatch:
    """C-STORE every instance of ``sources`` over ``concurrency`` associations at once.

    Each association takes the next ``chunk`` instances when it is free, so
    a slow one does not hold the others up; ``progress`` gets each result as
    it comes. The client's retry policy and pool apply to each chunk.
    """
    if concurrency < 1 or chunk < 1:
        raise ValueError("concurrency and chunk must be at least 1")
    batch = StoreBatch()
    chunks = _chunks(sources, chunk)

    def report(result: StoreResult) -> None:
        batch.add(result)
        if progress is not None:
            progress(result)

    async def worker() -> None:
        # next() on the shared iterator is atomic on the event loop: each
        # chunk goes to exactly one worker.
        for part in chunks:
            await client.store(part, peer, progress=report)

    await _workers(
        concurrency,
        worker,
        lambda: (
            f"store batch to {peer} cancelled: {batch.sent} sent, {batch.warned} warned, "
            f"{batch.failed} failed so far"
        ),
    )
    log.info(
        "Stored a batch on %s: %d sent, %d warned, %d failed, %d skipped",
        peer,
        batch.sent,
        batch.warned,
        batch.failed,
        batch.skipped,
    )
    return batch


async def get_studies(
    client: DicomClient,
    study_uids: Iterable[str],
    peer: DicomNode,
    output_dir: str | os.PathLike[str],
    *,
    concurrency: int = 2,
    progress: Callable[[str, RetrieveResult], None] | None = None,
) -> RetrieveBatch:
    """C-GET each study into ``output_dir``, at most ``concurrency`` at once.

    ``progress`` is called with each study's UID and result as it ends. A
    study that cannot be retrieved at all is in ``errors``; the others go on.
    """
    folder = Path(output_dir)
    return await _retrieve_many(
        study_uids,
        concurrency,
        progress,
        lambda uid: client.get_study(uid, peer, folder),
        "C-GET",
    )


async def move_studies(
    client: DicomClient,
    study_uids: Iterable[str],
    peer: DicomNode,
    destination_aet: str,
    *,
    concurrency: int = 2,
    progress: Callable[[str, RetrieveResult], None] | None = None,
) -> RetrieveBatch:
    """C-MOVE each study to ``destination_aet``, at most ``concurrency`` at once."""
    return await _retrieve_many(
        study_uids,
        concurrency,
        progress,
        lambda uid: client.move_study(uid, peer, destination_aet),
        "C-MOVE",
    )


async def _retrieve_many(
    study_uids: Iterable[str],
    concurrency: int,
    progress: Callable[[str, RetrieveResult], None] | None,
    retrieve: Callable[[str], Awaitable[RetrieveResult]],
    what: str,
) -> RetrieveBatch:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    batch = RetrieveBatch()
    uids = iter(dict.fromkeys(study_uids))  # each study once, lazily

    async def worker() -> None:
        for uid in uids:
            try:
                result = await retrieve(uid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                batch.errors[uid] = str(exc)
                log.warning("%s of study %s failed: %s", what, uid, exc)
                continue
            batch.results[uid] = result
            if progress is not None:
                progress(uid, result)

    await _workers(
        concurrency,
        worker,
        lambda: (
            f"{what} batch cancelled: {len(batch.results)} studies done, "
            f"{batch.num_completed} sub-operations completed"
        ),
    )
    return batch


async def _workers(
    count: int, worker: Callable[[], Coroutine[Any, Any, None]], cancelled: Callable[[], str]
) -> None:
    """Run ``count`` workers to the end; on cancellation log what ``cancelled`` says.

    The first failure of one (unreachable, rejected) ends them all and is raised.
    """
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(worker())
    except asyncio.CancelledError:
        log.warning("%s", cancelled())
        raise
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
