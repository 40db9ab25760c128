"""A reference query/retrieve archive: a folder of DICOM files with an index.

``Archive(root)`` gives a :class:`~adicom.DiskStorage` that indexes what it
stores, and C-FIND, C-GET and C-MOVE handlers over the index, ready for
:class:`~adicom.Server` (``adicom serve --storage DIR`` is exactly that)::

    archive = Archive("/data/archive")
    await archive.open()          # indexes files already there (unchanged ones are skipped)
    async with Server("ARCHIVE", port=11112, **archive.handlers(destinations)) as server:
        ...

Files deleted behind the index's back are reported as failed sub-operations
of a retrieve and dropped from the index; a corrupt database on start is a
clear :class:`ArchiveError`.

The index is SQLite beside the files by default, or a PostgreSQL database
that several archives (nodes) share (``index="postgresql://..."``, see
:mod:`adicom.archive.backends` and docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any, Literal

from pydicom.dataset import Dataset

from adicom.archive.answers import (
    MissingInstance,
    answer_dataset,
    answer_elements,
    answer_template,
    identifier_keys,
    index_file,
    patient_root,
)
from adicom.archive.backends import (
    DEFAULT_INDEX_POOL,
    DEFAULT_INDEX_TIMEOUT,
    IndexBackend,
    IndexUnavailable,
    SQLiteIndex,
    index_url,
    open_index,
)
from adicom.archive.files import FileStore, SharedFolder
from adicom.archive.index import IndexBusy, IndexUnusable, chunks
from adicom.archive.matching import ATTRIBUTES, PATH, MatchError, make_row
from adicom.archive.sequences import SequenceKeys
from adicom.commitment import CommitmentSCP
from adicom.dimse import Status
from adicom.diskstorage import DEFAULT_LAYOUT, DiskStorage, Filed
from adicom.errors import ArchiveError
from adicom.fileformat import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    encode_text_elements,
)
from adicom.mpps import MppsStore
from adicom.negotiation import SERVED_QR_OPTIONS
from adicom.presentation import MPPS, STORAGE_COMMITMENT
from adicom.qrscp import MoveDestinations, QRContext, QueryFailed
from adicom.storage import IncomingInstance, StoreContext
from adicom.storescu import iter_files

__all__ = ["Archive", "ArchiveError", "IndexBackend", "IndexUnavailable"]

log = logging.getLogger("adicom")

#: Seconds between an index change and its commit (see Index.commit).
COMMIT_DELAY = 0.05
#: Seconds between tries to write the index after a failure (a full disk).
COMMIT_RETRY = 1.0
#: Default of ``Archive(max_pending=)``: index changes waiting to be written
#: (about 450 bytes each: 4.5 MB) beyond which C-STOREs are refused.
DEFAULT_MAX_PENDING = 10_000
#: How long Archive.open() tries to write a batch while other processes
#: sharing the index hold its lock (seconds).
OPEN_WAIT = 30.0

_INDEX_NAME = ".adicom-index.sqlite"
# Stores whose index write failed half-way, kept to be undone (at most).
_MAX_DOUBTFUL = 10_000


class Archive:
    """A folder of DICOM files, indexed, served by C-FIND/C-GET/C-MOVE.

    ``index`` is a URL (``sqlite:PATH``, the default being the file
    ``.adicom-index.sqlite`` in the folder, or ``postgresql://...``) or an
    :class:`IndexBackend`; ``index_pool`` and ``index_timeout`` bound what
    a database server may cost (connections, seconds per call).

    With a shared index (PostgreSQL), each instance is indexed before its
    C-STORE success is sent, under a file name no other node can take; the
    database settles two stores of one SOP Instance UID, and the loser's
    file is removed. A database that does not answer within
    ``index_timeout`` fails the operation (C-STORE 0xA700, C-FIND 0xA700,
    C-GET/C-MOVE 0xA701), and the next operation tries again.

    With SQLite, stored instances are indexed in memory and committed
    within COMMIT_DELAY, at most a chunk (:data:`~adicom.archive.index.COMMIT_CHUNK`
    changes) per event-loop callback. While the index cannot be written
    (another process holds its lock, its disk is full) the changes wait in
    memory; past ``max_pending`` of them a C-STORE is refused at once with
    0xA700 (PS3.4 B.2.3, out of resources), nothing of it written, until
    the index has written half of them. A working index is never behind
    by that many for long: past twice ``max_pending`` stores are refused
    whatever the reason, so that the memory stays bounded.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        layout: str = DEFAULT_LAYOUT,
        *,
        on_duplicate: Literal["replace", "keep", "reject"] = "replace",
        fsync: bool = False,
        index: str | IndexBackend | None = None,
        index_pool: int = DEFAULT_INDEX_POOL,
        index_timeout: float = DEFAULT_INDEX_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be 1 or more, not {max_pending}")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if index is None or isinstance(index, str):
                url = index_url(index or "", self.root / _INDEX_NAME)
                index = open_index(url, pool=index_pool, timeout=index_timeout)
        except IndexUnusable as exc:
            raise ArchiveError(str(exc)) from None
        except OSError as exc:
            raise ArchiveError(f"cannot use {self.root}: {exc.strerror or exc}") from None
        #: The index (a backend: await its methods).
        self.index: IndexBackend = index
        #: Whether :meth:`open` reads the folder (default: not with a shared
        #: index, where the database, not the folder, says what is stored).
        self.scan = not index.shared
        # SQLite's synchronous index, used directly on the store path.
        self._sqlite = index.db if isinstance(index, SQLiteIndex) else None
        if self._sqlite is not None:
            # One copy per SOP Instance UID, wherever it was filed (the same
            # UID may come again under another study): the index knows where.
            self.storage: DiskStorage = _IndexedStorage(
                self._admit,
                self.root,
                layout,
                extra_keywords=ATTRIBUTES,
                on_filed=self._stored,
                lookup=self._sqlite.path_of,
                # Under "replace", a copy filed elsewhere is found when the
                # index commits, for all the instances of a burst at once
                # (_stored): no read of the database per instance.
                lookup_replaced=False,
                on_duplicate=on_duplicate,
                fsync=fsync,
            )
        else:
            self.storage = DiskStorage(
                self.root,
                layout,
                extra_keywords=ATTRIBUTES,
                filer=self._file_shared,
                on_duplicate=on_duplicate,
                fsync=fsync,
            )
            # Nodes on several hosts share the folder: each host receives into
            # a folder of its own, so that one starting never takes another
            # host's files in progress for those of a dead process (process
            # ids are per host).
            self.storage.incoming = self.root / ".incoming" / socket.gethostname()
            self.storage.remove_leftovers()
        #: Where the instances' bytes go with a shared index (the seam for
        #: object storage); None with SQLite, whose DiskStorage files them.
        self.files: FileStore | None = (
            None if self._sqlite is not None else SharedFolder(self.storage, fsync)
        )
        self._exists = os.path.isfile if self.files is None else self.files.exists
        # The next commit: a timer (COMMIT_DELAY, or a retry's), or the next
        # loop turn (a backlog's next chunk).
        self._commit_timer: asyncio.Handle | None = None
        self._commit_delayed = False
        # The last commit failed (a full disk, say: logged once) ...
        self._commit_failing = False
        # ... or failed or found the index busy: a burst does not hasten the
        # retry (each try of a busy index waits out its busy timeout).
        self._commit_held = False
        # wait_committed(): the change number each waits for.
        self._commit_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Index changes waiting to be written beyond which a C-STORE is
        #: refused (0xA700) until half are written (SQLite index; see _admit).
        self.max_pending = max_pending
        # How many waiting changes bring the commit forward to the next
        # loop turn (see _many_pending).
        self._hurry = min(
            self._sqlite.chunk if self._sqlite is not None else max_pending,
            max(1, max_pending // 2),
        )
        self._closed = False
        # Stores whose index write failed half-way (a timeout, a cancel): the
        # row may have been written for a file that is removed; dropped once
        # the database answers again.
        self._doubtful: dict[str, str] = {}
        self._settling: asyncio.Task[None] | None = None
        #: The MPPS instances it keeps (made by :meth:`handlers`).
        self.mpps: MppsStore | None = None

    def _stored(
        self,
        name: str,
        values: dict[str, str],
        context: StoreContext,
        raw: dict[str, bytes],
        stat: os.stat_result,
    ) -> None:
        index = self._sqlite
        assert index is not None
        storage = self.storage
        policy: str = storage.on_duplicate
        if storage.duplicate_policy is not None:
            policy = storage.duplicate_policy(context) or policy
        # "keep" and "reject" asked the index before storing (DiskStorage's
        # lookup); under "replace" the same SOP Instance UID filed elsewhere
        # goes now if that copy is not committed yet, else with the commit,
        # which looks the whole burst up at once (Index.add(displace=True)).
        displace = policy == "replace"
        # The pending row's path comes back from add(): no lookup of its own.
        before = index.add(
            values,
            name,
            context.transfer_syntax,
            stat.st_mtime_ns,
            stat.st_size,
            raw=raw,
            displace=displace,
        )
        if before is not None:
            with contextlib.suppress(OSError):
                os.unlink(before)
        # A chunk's worth waiting (or half of max_pending): see _many_pending
        # (one comparison per instance otherwise).
        pending = index.pending
        if pending >= self._hurry:
            self._many_pending(pending)
        if self._commit_timer is None:
            self._schedule_commit(COMMIT_DELAY)

    def _many_pending(self, pending: int) -> None:
        """Many changes wait: commit at the next turn, or refuse stores (max_pending).

        Stores are refused only while the index cannot be written (the last
        try found it locked or failing), or past twice ``max_pending``
        whatever the reason: a small ``max_pending`` must not refuse stores
        that a working index writes a moment later.
        """
        handle = self._commit_timer
        held = self._commit_held
        if handle is not None and self._commit_delayed and not held:
            handle.cancel()
            self._commit_timer = None
            self._schedule_commit(0.0)
        storage = self.storage
        if (
            pending >= self.max_pending
            and (held or pending >= 2 * self.max_pending)
            and isinstance(storage, _IndexedStorage)
            and not storage.refusing
        ):
            storage.refusing = True
            log.warning(
                "archive %s: %d index changes wait to be written (max_pending); "
                "C-STOREs are refused with 0xA700 until half of them are",
                self.root,
                pending,
            )

    async def _file_shared(
        self,
        temp: Path,
        values: dict[str, str],
        context: StoreContext,
        raw: dict[str, bytes],
        policy: str,
    ) -> Filed:
        """File one instance with a shared index: on disk under a name of its own, then indexed.

        The success status is sent only once the row is in the database
        (another node may be asked for it the next moment); a database that
        fails leaves no file and no row (PS3.4 B.2.3: 0xA700).
        """
        uid = values.get("SOPInstanceUID", "")
        files = self.files
        assert files is not None
        try:
            placed = files.place(temp, self.storage.final_path(values))
            stat = os.stat(placed)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            log.warning("storing %s failed: %s", uid, exc)
            return Status.OUT_OF_RESOURCES, None, "the instance could not be written"
        row = make_row(values, placed, context.transfer_syntax, stat.st_mtime_ns, stat.st_size, raw)
        done = False
        try:
            stored, other = await self.index.put(row, replace=policy == "replace")
            done = True
        except IndexUnavailable as exc:
            log.warning("storing %s refused: %s", uid, exc)
            return Status.OUT_OF_RESOURCES, None, "the archive's index is unavailable"
        finally:
            if not done:
                # Whether the row went in is unknown: the file goes, and the
                # row with it when the database answers again.
                with contextlib.suppress(OSError):
                    files.remove(placed)
                if len(self._doubtful) < _MAX_DOUBTFUL:
                    self._doubtful[uid] = placed
        if self._doubtful and self._settling is None:
            # In the background: this store's answer does not wait for it.
            self._settling = asyncio.get_running_loop().create_task(self._settle_doubtful())
        if not stored:
            # Another copy is held (a node stored it first): ours goes.
            with contextlib.suppress(OSError):
                files.remove(placed)
            kept = Path(other) if other else None
            if policy == "reject":
                return Status.DUPLICATE_SOP_INSTANCE, kept, "this SOP instance is stored already"
            log.info("%s is stored already; keeping the first copy", uid)
            return Status.SUCCESS, kept, ""
        if other and other != placed:
            # The copy this one replaced, whichever node filed it.
            with contextlib.suppress(OSError):
                files.remove(other)
        return Status.SUCCESS, Path(placed), ""

    async def _settle_doubtful(self) -> None:
        """Drop the rows of stores that failed half-way (their files are gone)."""
        try:
            while self._doubtful:
                uid, path = self._doubtful.popitem()
                try:
                    found = await self.index.path_of(uid)
                    if found is not None and str(found) == path and not self._exists(path):
                        await self.index.remove_path(path)
                except IndexUnavailable:
                    self._doubtful[uid] = path
                    return  # at the next successful store
        finally:
            self._settling = None

    def _commit_soon(self) -> None:
        """Commit the index within COMMIT_DELAY: one commit for a burst of changes."""
        if self._commit_timer is None:
            self._schedule_commit(COMMIT_DELAY)

    def _schedule_commit(self, delay: float) -> None:
        if self._closed:
            return  # an instance filed after close(): opening the archive again indexes it
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._commit_timer = None
            self._write(None)  # no loop (a script): everything, at once
            return
        if self._commit_timer is None:
            self._commit_delayed = delay > 0
            self._commit_timer = (
                loop.call_later(delay, self._commit) if delay > 0 else loop.call_soon(self._commit)
            )

    def _commit(self) -> None:
        self._commit_timer = None
        self._write(self._sqlite.chunk if self._sqlite is not None else None)

    def _write(self, limit: int | None) -> None:
        """Commit ``limit`` changes (None: all); the next chunk at the next loop turn."""
        index = self._sqlite
        if index is None:
            return
        try:
            index.commit(limit)
        except IndexBusy:
            # Another process sharing the index is writing: try again soon
            # rather than block the loop waiting for its lock.
            self._commit_held = True
            self._retry_commit(COMMIT_DELAY)
            return
        except sqlite3.Error as exc:
            # A full disk, say: the files are stored and the changes kept;
            # they are written at a later try, or when the archive is opened
            # again (which indexes the files).
            if not self._commit_failing:
                log.error("archive %s: the index could not be written (%s)", self.root, exc)
            self._commit_failing = True
            self._commit_held = True
            self._retry_commit(COMMIT_RETRY)
            self._wake_waiters(failed=True)
            return
        if self._commit_failing:
            log.info("archive %s: the index is written again", self.root)
        self._commit_failing = False
        self._commit_held = False
        if index.pending:
            # A backlog (the index was locked or failing a while, or a burst
            # beyond a chunk): the next chunk at the next loop turn, after
            # the callbacks ready now (arriving instances, echoes).
            self._schedule_commit(0.0)
        self._wake_waiters()

    def _wake_waiters(self, failed: bool = False) -> None:
        index = self._sqlite
        waiting = []
        for serial, waiter in self._commit_waiters:
            if waiter.done():
                continue
            if failed or index is None or index.written(serial):
                waiter.set_result(None)
            else:
                waiting.append((serial, waiter))
        self._commit_waiters = waiting

    def _retry_commit(self, delay: float) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the next change, flush() or close() writes them
        self._schedule_commit(delay)

    def _admit(self) -> bool:
        """Whether C-STOREs are received again, once refused (see _many_pending).

        The pending changes are memory (some 450 bytes a row) that a peer
        could grow without bound while the index cannot be written (another
        process holds its lock, its disk is full): past ``max_pending``
        stores are refused until the index has written half of them.
        """
        index = self._sqlite
        if index is not None and index.pending > self.max_pending // 2:
            return False
        log.info("archive %s: the index caught up; C-STOREs are accepted again", self.root)
        return True

    def flush(self) -> None:
        """Commit all the index's pending changes now (one transaction), not within COMMIT_DELAY."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        self._write(None)

    async def wait_committed(self) -> None:
        """Wait until the changes made so far have been committed (or the commit failed).

        The archive commits by itself within COMMIT_DELAY of a change (a
        backlog a chunk per loop turn); this only waits for that, so a test
        or an operator tool can know when another reader of the index will
        see them.
        """
        index = self._sqlite
        if index is None or index.written(index.serial):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._commit_waiters.append((index.serial, waiter))
        if self._commit_timer is None:
            self._commit_soon()
        await waiter

    async def open(self, batch: int = 64, scan: bool | None = None) -> int:
        """Connect the index and index the files already in the folder; how many were read.

        Unchanged files (same size and modification time) are not read
        again; rows of files that are gone are dropped. Works in short
        batches so a server on the same loop keeps answering meanwhile.
        ``scan`` defaults to :attr:`scan`: True with SQLite, False with a
        shared index, where a row is written before a store is acknowledged
        and the database, not the folder, says what is stored (several nodes
        scanning a shared folder would index each other's stores in flight).
        """
        try:
            await self.index.connect()
        except IndexUnavailable as exc:
            if not self.index.shared:
                raise
            # Serve anyway: each operation answers a failure status until the
            # database answers, and the first that reaches it connects.
            log.warning("archive %s: %s; operations fail until it answers", self.root, exc)
            return 0
        if scan is None:
            scan = self.scan
        if not scan:
            return 0
        known = await self.index.known_files()
        seen: set[str] = set()
        read = 0
        files = (
            p for p in iter_files([self.root])
            if p.name != _INDEX_NAME and not p.name.startswith(_INDEX_NAME)
            # Dot folders are the archive's own: .incoming, .mpps.
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts[:-1])
        )  # fmt: skip
        for group in chunks(files, batch):
            rows = []
            for path in group:
                key = str(path)
                seen.add(key)
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if known.get(key) == (stat.st_mtime_ns, stat.st_size):
                    continue
                row = index_file(path, stat.st_mtime_ns, stat.st_size)
                if row is not None:
                    rows.append(row)
            read += len(rows)
            await self.index.add_rows(rows)
            await self._commit_batch()
        for gone in set(known) - seen:
            await self.index.remove_path(Path(gone))
        await self._commit_batch()
        log.info(
            "archive %s: %d instances indexed (%d files read)",
            self.root,
            await self.index.count(),
            read,
        )
        return read

    async def _commit_batch(self) -> None:
        """Write what open() indexed so far, waiting (on the loop) for other processes.

        With SQLite a chunk per loop turn, like the archive's own commits:
        open() runs while the server serves, and what waits may include a
        backlog of stores (the index was locked a while).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OPEN_WAIT
        sqlite = self._sqlite
        while True:
            try:
                if sqlite is None:
                    await self.index.commit()
                    break
                sqlite.commit(sqlite.chunk)
                if not sqlite.pending:
                    break
                deadline = loop.time() + OPEN_WAIT  # written: not stuck
                await asyncio.sleep(0)
            except IndexBusy:
                # Several processes opening one archive at once (serve
                # --workers): each writes its batches in turn; rows are keyed
                # by SOP Instance UID, so reading a file twice is harmless.
                if asyncio.get_running_loop().time() > deadline:
                    raise ArchiveError(f"the index of {self.root} stays locked") from None
                await asyncio.sleep(COMMIT_DELAY)
        await asyncio.sleep(0)

    def close(self) -> None:
        """Commit and close the index (a database's connections are cut at once).

        On a running loop prefer :meth:`aclose`, which lets a database's
        calls under way finish and its connections close cleanly.
        """
        self._closing()
        self.index.close()

    async def aclose(self) -> None:
        """Commit and close the index, letting database calls under way finish."""
        self._closing()
        await self.index.aclose()

    def _closing(self) -> None:
        self._closed = True
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        for _, waiter in self._commit_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._commit_waiters = []

    # -- handlers ---------------------------------------------------------------

    def handlers(
        self,
        move_destinations: MoveDestinations | None = None,
        *,
        ae_title: str = "ADICOM",
        ssl: SSLContext | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for :class:`~adicom.Server`: storage, Q/R, commitment, MPPS.

        Storage Commitment results go back on the requestor's association
        while it is open, else to its address among ``move_destinations``
        (by AE title), from ``ae_title``, over TLS with ``ssl``. MPPS
        instances are kept in the ``.mpps`` folder of the archive.
        """
        destinations = move_destinations or {}
        commitment = CommitmentSCP(
            self.holds, ae_title=ae_title, destinations=destinations, ssl=ssl
        )
        if self.mpps is None:
            self.mpps = MppsStore(self.root / ".mpps")
        return {
            "storage": self.storage,
            "on_find": self.find,
            "on_get": self.retrieve,
            "on_move": self.retrieve,
            "move_destinations": destinations,
            "qr_options": SERVED_QR_OPTIONS,
            "n_handlers": {STORAGE_COMMITMENT: commitment, MPPS: self.mpps},
        }

    async def holds(self, sop_instance_uid: str) -> str | None:
        """The SOP class of the instance held under this UID, None if not held.

        Held means indexed and its file still there (PS3.4 J.3.3.1.2: what the
        archive commits to). With ``fsync`` off, a file is in the page cache
        when stored, on disk some seconds later.
        """
        try:
            found = await self.index.sop_class_of(sop_instance_uid)
        except IndexUnavailable as exc:
            log.warning("commitment of %s: %s", sop_instance_uid, exc)
            return None  # not known to be held: the requestor may send it again
        if found is None:
            return None
        sop_class, path = found
        return sop_class if self._exists(str(path)) else None

    async def find(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset | bytes]:
        """C-FIND handler: the matches of ``identifier`` with the keys it asked for.

        Matches of plain ASCII text (nearly all) are encoded here, straight
        from the index's rows, in the request's transfer syntax; the rest go
        through a pydicom Dataset. Hierarchical search unless relational
        queries were negotiated (PS3.4 C.4.1.3); see
        :mod:`adicom.archive.index` for what each agreed option changes.
        """
        level, keys = identifier_keys(identifier)
        template = answer_template(identifier, level)
        wanted = {keyword for _, _, keyword, _ in template if keyword}
        sequences = SequenceKeys(identifier)
        if sequences:
            wanted.add(PATH)
        # context.options: what extended negotiation agreed for this SOP class
        # (relational queries, combined date-time, fuzzy names; PS3.4 C.5.1.1).
        try:
            matches = await self.index.find(
                level, keys, patient_root(context), wanted, context.options
            )
            # The keys are checked and the query run on the first match taken
            # (or before); the rest are made into answers one by one, as sent.
            first = next(matches, None)
        except MatchError as exc:
            raise QueryFailed(exc.status, str(exc)) from None
        except IndexUnavailable as exc:
            # PS3.4 C.4.1.1.4, Table C.4-1: A700, refused: out of resources.
            log.warning("C-FIND refused: %s", exc)
            raise QueryFailed(
                Status.OUT_OF_RESOURCES, "the archive's index is unavailable"
            ) from None
        if first is None:
            return
        matches = itertools.chain([first], matches)
        implicit = context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        quick = implicit or context.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
        for found in matches:
            elements = answer_elements(template, found)
            if sequences:
                # PS3.4 C.2.2.2.6: the entity's own sequences, read from its file.
                matched = sequences.match(found[PATH])
                if matched is None:
                    continue
                answer = answer_dataset(elements)
                for tag, items in matched.items():
                    answer[tag].value = items
                yield answer
                continue
            encoded = encode_text_elements(elements, implicit) if quick else None
            yield encoded if encoded is not None else answer_dataset(elements)

    async def retrieve(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        """C-GET/C-MOVE handler: the count, then each matching file.

        A file that vanished since it was indexed is left out of what is
        sent, counted as failed by the caller, and dropped from the index.
        The unique keys of the levels above are required unless relational
        retrieval was negotiated (PS3.4 C.4.2.3.2.1, C.4.3.3.2.1).
        """
        level, keys = identifier_keys(identifier)
        try:
            rows = await self.index.instances(
                level, keys, patient_root(context), retrieve=True, options=context.options
            )
        except MatchError as exc:
            raise QueryFailed(exc.status, str(exc)) from None
        except IndexUnavailable as exc:
            # PS3.4 C.4.2.1.5, C.4.3.1.5: A701, out of resources, unable to
            # calculate the number of matches.
            log.warning("retrieve refused: %s", exc)
            raise QueryFailed(
                Status.OUT_OF_RESOURCES_MATCHES, "the archive's index is unavailable"
            ) from None
        yield len(rows)
        isfile = self._exists
        for row in rows:
            path = row.path
            if not isfile(path):
                log.warning("%s was deleted behind the index's back", path)
                with contextlib.suppress(IndexUnavailable):
                    await self.index.remove_path(path)
                self._commit_soon()
                yield MissingInstance(row.sop_instance_uid)
                continue
            yield path


class _IndexedStorage(DiskStorage):
    """The SQLite archive's DiskStorage: refuses an instance at once while its index is behind.

    While :attr:`refusing` (the archive sets it past ``max_pending``), each
    C-STORE-RQ's data set is refused as it starts, before anything of it is
    written (no file, no index row), until ``admit()`` says the index
    caught up: the memory of the pending changes stays bounded, and no
    Success is sent for what the index could not take.
    """

    #: Whether stores are refused (until ``admit()``).
    refusing = False

    def __init__(self, admit: Callable[[], bool], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admit = admit

    def open(self, context: StoreContext) -> IncomingInstance:
        """Start receiving one instance, or refuse it (see the class)."""
        if self.refusing:
            if not self.admit():
                return _Refused(context)
            self.refusing = False
        return super().open(context)


class _Refused(IncomingInstance):
    """An instance refused as it starts: its data set is dropped as it comes."""

    # PS3.4 B.2.3: A700, Refused: Out of Resources (at most 64 characters).
    error = "the archive's index is behind; try again later"

    def write(self, data: memoryview, /) -> None:
        """Drop the fragment."""

    def finish_now(self) -> int:
        """0xA700 (see the class)."""
        return Status.OUT_OF_RESOURCES

    async def finish(self) -> int:
        """0xA700 (see the class)."""
        return Status.OUT_OF_RESOURCES
