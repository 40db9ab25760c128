"""The archive's SQLite index: one row per instance, queried per PS3.4 C.2.2.2.

SQLite (standard library) is the right tool for one node: a single file
beside the archive, transactions, indexes, and queries of well under a
millisecond at archive sizes a reference SCP sees, run on the event loop
without a thread. The SQL of matching is in :mod:`adicom.archive.matching`,
shared with the PostgreSQL index (:mod:`adicom.archive.postgres`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

from adicom.archive.matching import (
    ATTRIBUTES,
    AVAILABLE_SYNTAX,
    LEVELS,
    PATH,
    RAW,
    ROW_COLUMNS,
    SQLITE,
    MatchError,
    Row,
    find_query,
    fold_name,
    found_rows,
    fuzzy_name,
    instances_query,
    make_row,
)
from adicom.errors import ArchiveError
from adicom.negotiation import NO_QR_OPTIONS, QROptions

__all__ = [
    "ATTRIBUTES",
    "AVAILABLE_SYNTAX",
    "BUSY_TIMEOUT",
    "LEVELS",
    "PATH",
    "RAW",
    "Index",
    "IndexBusy",
    "IndexUnavailable",
    "IndexUnusable",
    "MatchError",
    "Row",
    "chunks",
    "fold_name",
    "fuzzy_name",
]

log = logging.getLogger("adicom")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    {columns},
    transfer_syntax TEXT NOT NULL DEFAULT '',
    specific_character_set TEXT NOT NULL DEFAULT '',
    raw_values TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS by_patient ON instances (patient_id);
CREATE INDEX IF NOT EXISTS by_study ON instances (study_instance_uid);
CREATE INDEX IF NOT EXISTS by_series ON instances (series_instance_uid);
CREATE UNIQUE INDEX IF NOT EXISTS by_path ON instances (path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# 2: the instance's Specific Character Set and its non-ASCII values as sent.
# 3: one row per path (a unique index): a row stored at the path of another
#    instance replaces it in the insert itself (INSERT OR REPLACE), where a
#    DELETE per row at each commit looked for it first.
_VERSION = "3"
# Made version 3 in place (the rows kept), not rebuilt from the files.
_FROM_VERSION_2 = "DROP INDEX IF EXISTS by_path; CREATE UNIQUE INDEX by_path ON instances (path);"


def _fold(text: str | None) -> str | None:
    """fold_name() as an SQL function."""
    return None if text is None else fold_name(text)


def _fuzzy(text: str | None) -> str | None:
    """fuzzy_name() as an SQL function."""
    return None if text is None else fuzzy_name(text)


class IndexUnusable(ArchiveError):
    """The index database cannot be used (corrupt, not a database, wrong version)."""


class IndexUnavailable(ArchiveError):
    """The index's database does not answer (down, unreachable, too slow): try again later.

    A C-STORE is then refused with 0xA700 (PS3.4 B.2.3, out of resources),
    and a C-FIND, C-GET or C-MOVE answered with a failure status.
    """


class IndexBusy(ArchiveError):
    """Another process holds the index's write lock: nothing was written, try again later."""


#: How long a write waits for another process's write lock before
#: :class:`IndexBusy` (seconds): the event loop is blocked while it waits.
BUSY_TIMEOUT = 0.02
# Opening (schema creation, version check) may wait longer: it runs once,
# before serving, and several processes may open one archive at once.
_OPEN_TIMEOUT = 10.0

_INSERT = (
    f"INSERT OR REPLACE INTO instances ({', '.join(ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
)
# Where the path and the SOP class are in a row (make_row()).
_ROW_PATH = ROW_COLUMNS.index("path")
_ROW_CLASS = ROW_COLUMNS.index("sop_class_uid")
_ROW_UID = ROW_COLUMNS.index("sop_instance_uid")
# SOP Instance UIDs per query when a commit looks for displaced copies
# (SQLite allows 32766 parameters since 3.32, 999 before).
_DISPLACE_CHUNK = 500


class Index:
    """The instance table in ``path`` (created if missing).

    Raises :class:`IndexUnusable` with a plain message when the file is not a
    usable database. Several processes may open the same file (``adicom
    serve --workers``): each write is one short transaction at
    :meth:`commit`, and waits at most ``busy_timeout`` seconds for another
    process's.
    """

    def __init__(self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        # Changes not yet written (see commit()): rows by SOP Instance UID,
        # their paths, and the paths whose rows go.
        self._rows: dict[str, list[str | int]] = {}
        self._paths: dict[str, str] = {}
        self._removed: set[str] = set()
        # SOP Instance UIDs added with displace=True: a committed copy filed
        # elsewhere goes when they are committed (see add()).
        self._displace: set[str] = set()
        # SQLite may answer "database is locked" at once, without waiting
        # out the busy timeout, while another process opening the same file
        # switches it to WAL or creates the schema: opening is tried again
        # until _OPEN_TIMEOUT (before serving, so a short sleep holds nothing).
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            try:
                self._open(busy_timeout)
                return
            except sqlite3.OperationalError as exc:
                locked = "locked" in str(exc) or "busy" in str(exc)
                with contextlib.suppress(Exception):
                    self._db.close()
                if not locked or time.monotonic() >= deadline:
                    raise IndexUnusable(
                        f"the index {self.path} cannot be used ({exc}); "
                        "move it away and it will be rebuilt from the files"
                    ) from None
                time.sleep(0.02 + 0.03 * random.random())
            except sqlite3.DatabaseError as exc:
                raise IndexUnusable(
                    f"the index {self.path} cannot be used ({exc}); "
                    "move it away and it will be rebuilt from the files"
                ) from None

    def _open(self, busy_timeout: float) -> None:
        path = self.path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=_OPEN_TIMEOUT)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.create_function("fold", 1, _fold, deterministic=True)
        self._db.create_function("fuzzy", 1, _fuzzy, deterministic=True)
        self._db.execute("PRAGMA synchronous=NORMAL")
        columns = ",\n    ".join(
            f"{column} TEXT NOT NULL DEFAULT ''"
            for keyword, (column, _, _) in ATTRIBUTES.items()
            if keyword != "SOPInstanceUID"
        )
        # One transaction, the write lock taken first: processes opening
        # the archive at once create (or rebuild) the schema once.
        self._db.execute("BEGIN IMMEDIATE")
        # The version first: an older schema may not take this one as it is.
        found = None
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            found = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if found is not None and found[0] == "2":
            try:
                self._script(_FROM_VERSION_2)
            except sqlite3.IntegrityError:
                pass  # two rows of one path (never written so): rebuilt below
            else:
                log.info("the index %s: version 2 made version %s", path, _VERSION)
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (_VERSION,))
                found = (_VERSION,)
        if found is not None and found[0] != _VERSION:
            # The index is a cache of the folder: one of another version is
            # dropped and made again, and Archive.open() reads the files.
            log.info("the index %s has version %s, not %s: rebuilding", path, found[0], _VERSION)
            self._script("DROP TABLE IF EXISTS instances; DROP TABLE meta;")
            found = None
        self._script(_SCHEMA.format(columns=columns))
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('version', ?)", (_VERSION,))
        self._db.execute("COMMIT")
        self._db.execute(f"PRAGMA busy_timeout={max(0, int(busy_timeout * 1000))}")

    def _script(self, script: str) -> None:
        # Statement by statement: executescript() would commit first.
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        """Write what is pending (waiting for other processes if need be) and close."""
        try:
            if self.pending:
                self._db.execute(f"PRAGMA busy_timeout={int(_OPEN_TIMEOUT * 1000)}")
                self.commit()
        except (IndexBusy, sqlite3.Error) as exc:
            # The files are stored: opening the archive again indexes them.
            log.error("the index %s could not be written on closing (%s)", self.path, exc)
        finally:
            self._db.close()

    # -- writing --------------------------------------------------------------
    #
    # Changes are kept in memory, where this process's lookups see them, and
    # written by commit() in one short transaction: one commit per instance
    # wrote every touched page of the table and its indexes to the WAL each
    # time (53 us an instance on tmpfs, 95 us on disk, against 20-25 us in
    # batches), and a transaction held open between changes would hold the
    # write lock against every other process sharing the file. Nothing is
    # lost if the process dies before a commit: the files are on disk, and
    # opening the archive indexes the files the index does not know.

    @property
    def pending(self) -> int:
        """How many changes wait for :meth:`commit`."""
        return len(self._rows) + len(self._removed)

    def commit(self) -> None:
        """Write the pending changes in one transaction.

        Raises :class:`IndexBusy` (nothing written, the changes kept) when
        another process holds the write lock longer than the busy timeout,
        and :class:`sqlite3.Error` (the changes kept too) when the write
        fails otherwise (a full disk).
        """
        if not self._rows and not self._removed:
            return
        db = self._db
        try:
            # IMMEDIATE: the write lock is taken here or not at all, so a busy
            # database fails before anything is done.
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise IndexBusy(f"the index {self.path} is busy in another process") from None
            raise
        try:
            if self._removed:
                db.executemany(
                    "DELETE FROM instances WHERE path = ?", [(p,) for p in self._removed]
                )
            displaced = self._displaced() if self._displace else []
            # A file rewritten with another instance: the old instance's row
            # goes in the insert (INSERT OR REPLACE, path being unique).
            db.executemany(_INSERT, self._rows.values())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._rows = {}
        self._paths = {}
        self._removed = set()
        self._displace = set()
        for path in displaced:
            # Committed: the index no longer names it. Gone already: fine.
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _displaced(self) -> list[str]:
        """The files of committed rows that pending displacing rows replace (in the transaction).

        One query per 500 instances, not one per instance as it is stored:
        the lookup that finds a copy filed elsewhere (the same SOP Instance
        UID under another study) costs a read transaction, file locks
        included, each time it is asked.
        """
        uids = [uid for uid in self._displace if uid in self._rows]
        displaced = []
        for at in range(0, len(uids), _DISPLACE_CHUNK):
            chunk = uids[at : at + _DISPLACE_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for uid, path in self._db.execute(
                f"SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN ({marks})",
                chunk,
            ):
                row = self._rows.get(uid)
                # Not a file a pending row now holds (stored again there).
                if row is not None and path != row[_ROW_PATH] and path not in self._paths:
                    displaced.append(path)
        return displaced

    def _flush(self) -> None:
        """Commit before a query, so that it sees this process's changes; busy: later."""
        if self._rows or self._removed:
            try:
                self.commit()
            except (IndexBusy, sqlite3.Error) as exc:
                log.debug(
                    "index %s: pending changes not visible to this query (%s)", self.path, exc
                )

    def add(
        self,
        values: Mapping[str, str],
        path: str | Path,
        transfer_syntax: str,
        mtime_ns: int = 0,
        size: int = 0,
        raw: Mapping[str, bytes] | None = None,
        *,
        displace: bool = False,
    ) -> None:
        """Insert or replace one instance (keyed by SOP Instance UID) at the next commit.

        ``values["SpecificCharacterSet"]`` and ``raw`` (the non-ASCII values
        as received) are kept so that C-FIND answers them back byte for byte.
        ``displace``: the commit also removes the file of the committed row
        this one replaces, when it is elsewhere (an instance stored again
        under another study: one copy per SOP Instance UID); the caller
        deals with a pending row's file (:meth:`pending_path`).
        """
        row = make_row(values, path, transfer_syntax, mtime_ns, size, raw)
        where = str(row[_ROW_PATH])
        uid = values.get("SOPInstanceUID", "") or ""
        before = self._rows.get(uid)
        if before is not None and self._paths.get(str(before[_ROW_PATH])) == uid:
            del self._paths[str(before[_ROW_PATH])]
        other = self._paths.get(where)
        if other is not None and other != uid:
            del self._rows[other]  # the file now holds this instance
        self._rows[uid] = row
        self._paths[where] = uid
        if displace:
            self._displace.add(uid)

    def pending_path(self, sop_instance_uid: str) -> str | None:
        """Where a change not yet committed put this instance, if one did."""
        pending = self._rows.get(sop_instance_uid)
        return None if pending is None else str(pending[_ROW_PATH])

    def _written(self, uid: str, path: str) -> bool:
        """Whether the committed row of ``uid`` at ``path`` still holds, pending changes seen."""
        return path not in self._removed and self._paths.get(path, uid) == uid

    def path_of(self, sop_instance_uid: str) -> Path | None:
        """Where the instance with this SOP Instance UID is stored, if it is."""
        pending = self._rows.get(sop_instance_uid)
        if pending is not None:
            return Path(str(pending[_ROW_PATH]))
        row = self._db.execute(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        if row is None or not self._written(sop_instance_uid, row[0]):
            return None
        return Path(row[0])

    def sop_class_of(self, sop_instance_uid: str) -> tuple[str, Path] | None:
        """The SOP class and path of the instance with this SOP Instance UID, if stored."""
        pending = self._rows.get(sop_instance_uid)
        if pending is not None:
            return str(pending[_ROW_CLASS]), Path(str(pending[_ROW_PATH]))
        row = self._db.execute(
            "SELECT sop_class_uid, path FROM instances WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        if row is None or not self._written(sop_instance_uid, row[1]):
            return None
        return str(row[0]), Path(row[1])

    def remove_path(self, path: str | Path) -> None:
        """Forget the instance stored at ``path`` (at the next commit)."""
        where = str(path)
        uid = self._paths.pop(where, None)
        if uid is not None:
            del self._rows[uid]
        self._removed.add(where)

    def rows(self, batch: int = 1000) -> Iterator[list[list[str | int]]]:
        """Every committed row, as make_row() makes them, ``batch`` at a time (a copy)."""
        last = ""
        while True:
            found = self._db.execute(
                f"SELECT {', '.join(ROW_COLUMNS)} FROM instances WHERE sop_instance_uid > ? "
                "ORDER BY sop_instance_uid LIMIT ?",
                (last, batch),
            ).fetchall()
            if not found:
                return
            yield [list(row) for row in found]
            last = found[-1][_ROW_UID]

    def add_rows(self, rows: Iterable[list[str | int]]) -> None:
        """Insert or replace rows as make_row() makes them (at the next commit)."""
        for row in rows:
            uid, where = str(row[_ROW_UID]), str(row[_ROW_PATH])
            self._rows[uid] = list(row)
            self._paths[where] = uid

    def known_files(self) -> dict[str, tuple[int, int]]:
        """Indexed paths with their (mtime_ns, size) (committed rows)."""
        return {
            path: (mtime, size)
            for path, mtime, size in self._db.execute("SELECT path, mtime_ns, size FROM instances")
        }

    def count(self) -> int:
        """How many instances are indexed."""
        self._flush()
        (count,) = self._db.execute("SELECT count(*) FROM instances").fetchone()
        return int(count)

    # -- matching -------------------------------------------------------------
    # -- matching -------------------------------------------------------------

    def find(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        wanted: Collection[str] | None = None,
        options: QROptions = NO_QR_OPTIONS,
    ) -> Iterator[dict[str, str]]:
        """The entities at ``level`` matching ``keys``, one dict per entity.

        See :func:`~adicom.archive.matching.found_rows` for what each dict
        has; only the attributes in ``wanted`` (when given) are read.
        ``options`` are those extended negotiation agreed (relational
        queries, combined date-time and fuzzy person name matching).
        Raises :class:`MatchError` when the first match is taken.
        """
        sql, params, names = find_query(level, keys, patient_root, wanted, options, SQLITE)
        self._flush()
        # Rows are fetched whole (no cursor stays open while the caller
        # awaits between matches); dicts are made one by one as taken.
        yield from found_rows(level, names, self._db.execute(sql, params).fetchall())

    def instances(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> list[Row]:
        """The instances under the entities ``level`` and ``keys`` select (see instances_query)."""
        sql, params = instances_query(level, keys, patient_root, retrieve, options, SQLITE)
        self._flush()
        return [Row(*row) for row in self._db.execute(sql, params)]


def chunks(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    """Cut ``items`` into lists of ``size`` (for indexing in short steps)."""
    batch: list[Path] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
