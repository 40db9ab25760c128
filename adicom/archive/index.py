"""The archive's SQLite index: one row per instance, queried per PS3.4 C.2.2.2.

SQLite (standard library) is the right tool for one node: a single file
beside the archive, transactions, indexes, and queries of well under a
millisecond at archive sizes a reference SCP sees, run on the event loop
without a thread. The SQL of matching is in :mod:`adicom.archive.matching`,
shared with the PostgreSQL index (:mod:`adicom.archive.postgres`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import operator
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
    "COMMIT_CHUNK",
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

_INSERT_HEAD = f"INSERT OR REPLACE INTO instances ({', '.join(ROW_COLUMNS)}) VALUES "
_INSERT_ROW = f"({', '.join('?' for _ in ROW_COLUMNS)})"
#: Rows per INSERT statement at most (:func:`_insert_rows`): the largest
#: power of two whose values stay under 999 parameters, SQLite's limit
#: before 3.32 (32 rows of 24 values).
INSERT_ROWS = 1 << ((999 // len(ROW_COLUMNS)).bit_length() - 1)
# The INSERT of 1, 2, 4, ... INSERT_ROWS rows at once (VALUES (...), (...)):
# a few statements, each prepared once and kept in the connection's cache.
_INSERTS = {
    count: _INSERT_HEAD + ", ".join([_INSERT_ROW] * count)
    for count in (1 << bit for bit in range(INSERT_ROWS.bit_length()))
}
# Where the path and the SOP class are in a row (make_row()).
_ROW_PATH = ROW_COLUMNS.index("path")
_ROW_CLASS = ROW_COLUMNS.index("sop_class_uid")
_ROW_UID = ROW_COLUMNS.index("sop_instance_uid")
# SOP Instance UIDs per query when a commit looks for displaced copies
# (SQLite allows 32766 parameters since 3.32, 999 before).
_DISPLACE_CHUNK = 512
#: Changes written per transaction by a bounded commit (:meth:`Index.commit`
#: with a limit: the archive's timer, a query's flush). Measured on tmpfs
#: (a table of 20,000-40,000 rows, displaced copies looked for; CPU per
#: row): 100 us one per transaction, 51 by 8, 32-41 from 32 rows up to
#: 20,000 at once (a transaction's own cost, ~70 us, is then under 1 us a
#: row); 128 rows hold the event loop ~5 ms, where 100,000 at once held it
#: for seconds.
COMMIT_CHUNK = 128


class Index:
    """The instance table in ``path`` (created if missing).

    Raises :class:`IndexUnusable` with a plain message when the file is not a
    usable database. Several processes may open the same file (``adicom
    serve --workers``): each write is one short transaction at
    :meth:`commit`, and waits at most ``busy_timeout`` seconds for another
    process's.
    """

    def __init__(
        self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT, chunk: int = COMMIT_CHUNK
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be 1 change or more, not {chunk}")
        self.path = Path(path)
        #: Changes a bounded commit writes per transaction (see :meth:`commit`).
        self.chunk = chunk
        # Changes not yet written (see commit()), oldest first: rows by SOP
        # Instance UID with the serial number of the change that made them
        # pending, their paths, and the paths whose rows go (with theirs).
        # A row changed again keeps its place and number: the first pending
        # change has the lowest number (see written()).
        self._rows: dict[str, tuple[int, list[str | int]]] = {}
        self._paths: dict[str, str] = {}
        self._removed: dict[str, int] = {}
        # The number of the latest change (see serial).
        self._serial = 0
        # Changes that superseded a pending one (a row at the path of
        # another instance's pending row, a removal of a pending row's path)
        # with the lowest number of what they superseded: until they are
        # written, that older change is not (see written()). Rare: a layout
        # that files two instances under one name, a file gone meanwhile.
        self._inherited_rows: dict[str, int] = {}
        self._inherited_removals: dict[str, int] = {}
        # Rows a bounded commit took from the front of _rows since it was made.
        self._dropped = 0
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

    @property
    def serial(self) -> int:
        """The number of the latest change (for :meth:`written`)."""
        return self._serial

    def written(self, serial: int) -> bool:
        """Whether every change up to number ``serial`` is committed (or superseded).

        A change made pending again later (a row stored again) keeps its
        first number, so it counts as not written until it is; a change
        superseded by another (a row at its path, a removal of its path)
        until that other is written.
        """
        for inherited in (self._inherited_rows, self._inherited_removals):
            if inherited and min(inherited.values()) <= serial:
                return False
        # Oldest first: the first of each has the lowest number.
        removal = next(iter(self._removed.values()), None)
        if removal is not None and removal <= serial:
            return False
        row = next(iter(self._rows.values()), None)
        return row is None or row[0] > serial

    def commit(self, limit: int | None = None) -> None:
        """Write the pending changes, all of them or the ``limit`` oldest, in one transaction.

        A bounded commit holds the caller (an event loop) for a bounded
        time; what is left waits for the next. Removals are written before
        any row (a row pending at a path whose removal is pending was added
        after that removal: a removal drops the pending row of its path).
        Raises :class:`IndexBusy` (nothing written, the changes kept) when
        another process holds the write lock longer than the busy timeout,
        and :class:`sqlite3.Error` (the changes kept too) when the write
        fails otherwise (a full disk).
        """
        if not self._rows and not self._removed:
            return
        if limit is not None:
            limit = max(1, limit)  # a commit of nothing would never end a backlog
        everything = limit is None or len(self._rows) + len(self._removed) <= limit
        if everything:
            removals: Collection[str] = self._removed
            rows = self._rows
        else:
            assert limit is not None
            removals = list(itertools.islice(self._removed, limit))
            room = max(0, limit - len(removals))
            rows = dict(itertools.islice(self._rows.items(), room)) if room else {}
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
            if removals:
                db.executemany("DELETE FROM instances WHERE path = ?", [(p,) for p in removals])
            displaced = self._displaced(rows) if self._displace and rows else []
            # A file rewritten with another instance: the old instance's row
            # goes in the insert (INSERT OR REPLACE, path being unique).
            _insert_rows(db, [row for _, row in rows.values()])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if everything:
            self._rows = {}
            self._paths = {}
            self._removed = {}
            self._displace = set()
            self._dropped = 0
            self._inherited_rows = {}
            self._inherited_removals = {}
        else:
            for where in removals:
                del self._removed[where]
                self._inherited_removals.pop(where, None)
            for uid, (_, row) in rows.items():
                del self._rows[uid]
                self._paths.pop(str(row[_ROW_PATH]), None)
                self._displace.discard(uid)
                self._inherited_rows.pop(uid, None)
            if not self._rows:
                self._displace = set()  # UIDs whose rows went before a commit
            # A dict keeps the places of the entries deleted from its front,
            # and each chunk taken from it walks over them again (100,000
            # rows: 0.15 s in all): copied anew once they outnumber the rest.
            self._dropped += len(rows)
            if self._dropped > len(self._rows):
                self._rows = dict(self._rows)
                self._removed = dict(self._removed)
                self._dropped = 0
        for path in displaced:
            # Committed: the index no longer names it. Gone already: fine.
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _displaced(self, rows: Mapping[str, tuple[int, list[str | int]]]) -> list[str]:
        """The files of committed rows that displacing ``rows`` replace (in the transaction).

        One query per 500 instances, not one per instance as it is stored:
        the lookup that finds a copy filed elsewhere (the same SOP Instance
        UID under another study) costs a read transaction, file locks
        included, each time it is asked.
        """
        displace = self._displace
        uids = [uid for uid in rows if uid in displace]
        displaced = []
        for at in range(0, len(uids), _DISPLACE_CHUNK):
            chunk = uids[at : at + _DISPLACE_CHUNK]
            # Padded (a UID repeated: IN matches a row once) to a power of
            # two: a handful of statements, prepared once, where each size
            # (the timer commits whatever came) was prepared anew and took
            # a place of the connection's statement cache (128, shared with
            # the queries' statements).
            chunk += chunk[-1:] * (_padded(len(chunk)) - len(chunk))
            marks = ", ".join("?" for _ in chunk)
            for uid, path in self._db.execute(
                f"SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN ({marks})",
                chunk,
            ):
                row = rows[uid][1]
                # Not a file a pending row holds, of this commit or a later one
                # (stored again there).
                if path != row[_ROW_PATH] and path not in self._paths:
                    displaced.append(path)
        return displaced

    def _flush(self) -> None:
        """Commit before a query, so that it sees this process's changes; busy: later.

        At most :attr:`chunk` changes, like any commit on the event loop: a
        query made while a backlog is written (the index was locked or its
        disk full for a while) sees the changes committed so far and one
        chunk more, not all of this process's (the archive writes the rest
        a chunk per loop turn). In the steady state fewer than a chunk wait.
        """
        if self._rows or self._removed:
            try:
                self.commit(self.chunk)
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
    ) -> str | None:
        """Insert or replace one instance (keyed by SOP Instance UID) at the next commit.

        ``values["SpecificCharacterSet"]`` and ``raw`` (the non-ASCII values
        as received) are kept so that C-FIND answers them back byte for byte.
        ``displace``: the commit also removes the file of the committed row
        this one replaces, when it is elsewhere (an instance stored again
        under another study: one copy per SOP Instance UID); the caller
        deals with a pending row's file: with ``displace``, its path is
        returned when it is not ``path`` (else None), as
        :meth:`pending_path` would have told before the call.
        """
        row = make_row(values, path, transfer_syntax, mtime_ns, size, raw)
        where = str(row[_ROW_PATH])
        uid = str(row[_ROW_UID])  # "" for a missing UID, as make_row() gives it
        self._serial = serial = self._serial + 1
        rows = self._rows
        paths = self._paths
        before = rows.get(uid)
        replaced = None
        if before is not None:
            serial = before[0]  # pending since then: it keeps its place
            replaced = str(before[1][_ROW_PATH])
            if paths.get(replaced) == uid:
                del paths[replaced]
        other = paths.get(where)
        if other is not None and other != uid:
            self._supersede(uid, other)  # the file now holds this instance
        rows[uid] = (serial, row)
        paths[where] = uid
        if displace:
            self._displace.add(uid)
            if replaced != where:
                return replaced
        return None

    def _supersede(self, uid: str, other: str) -> None:
        """Drop ``other``'s pending row for ``uid``'s, which inherits its number (written())."""
        serial = self._rows.pop(other)[0]
        inherited = self._inherited_rows
        lowest = min(serial, inherited.pop(other, serial), inherited.get(uid, serial))
        inherited[uid] = lowest

    def pending_path(self, sop_instance_uid: str) -> str | None:
        """Where a change not yet committed put this instance, if one did."""
        pending = self._rows.get(sop_instance_uid)
        return None if pending is None else str(pending[1][_ROW_PATH])

    def _written(self, uid: str, path: str) -> bool:
        """Whether the committed row of ``uid`` at ``path`` still holds, pending changes seen."""
        return path not in self._removed and self._paths.get(path, uid) == uid

    def path_of(self, sop_instance_uid: str) -> Path | None:
        """Where the instance with this SOP Instance UID is stored, if it is."""
        pending = self._rows.get(sop_instance_uid)
        if pending is not None:
            return Path(str(pending[1][_ROW_PATH]))
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
            row = pending[1]
            return str(row[_ROW_CLASS]), Path(str(row[_ROW_PATH]))
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
            # Its pending row goes unwritten: the removal inherits its number.
            serial = self._rows.pop(uid)[0]
            serial = min(serial, self._inherited_rows.pop(uid, serial))
            removals = self._inherited_removals
            removals[where] = min(serial, removals.get(where, serial))
            self._displace.discard(uid)
        self._serial += 1
        self._removed.setdefault(where, self._serial)

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
            self._serial += 1
            before = self._rows.get(uid)
            if before is not None and self._paths.get(str(before[1][_ROW_PATH])) == uid:
                del self._paths[str(before[1][_ROW_PATH])]
            other = self._paths.get(where)
            if other is not None and other != uid:
                self._supersede(uid, other)
            self._rows[uid] = (self._serial if before is None else before[0], list(row))
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


def _insert_rows(db: sqlite3.Connection, rows: list[list[str | int]]) -> None:
    """INSERT OR REPLACE ``rows``, in order, up to INSERT_ROWS of them per statement.

    One statement per row (executemany) spent ~12k instructions a row on
    the statement itself (its reset, its halt, the call into SQLite)
    besides the row's own work; a multi-row VALUES list pays that once per
    statement. Each row is still inserted on its own, in order, with its
    own conflict resolution (a row replaces the one of its SOP Instance UID
    or its path), as one statement per row did. ``rows`` are cut into
    statements of INSERT_ROWS rows and one of each power of two for the
    rest (45 rows: 32, 8, 4, 1), so that only a handful of statements are
    ever prepared.
    """
    at, left = 0, len(rows)
    while left:
        count = INSERT_ROWS if left >= INSERT_ROWS else 1 << (left.bit_length() - 1)
        # The rows' values in one list: each row's added whole to the first
        # (list += list, a copy in C), ~3x cheaper than chaining them value by value.
        db.execute(_INSERTS[count], functools.reduce(operator.iadd, rows[at : at + count], []))
        at += count
        left -= count


def _padded(count: int) -> int:
    """``count`` rounded up to a power of two (at least 8)."""
    return max(8, 1 << (count - 1).bit_length())


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
