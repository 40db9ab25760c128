"""The archive's index in PostgreSQL, through asyncpg: one database for several nodes.

Imported only when a ``postgresql://`` URL is used (``pip install
adicom[postgresql]``). asyncpg speaks PostgreSQL's protocol on the event
loop itself: no thread, no executor. asyncio would look a host name up in
its default executor (a thread), so :class:`PostgresIndex` looks the name
up itself, on the loop, and hands asyncpg the address (see
:func:`_address_of`); give an address (or a Unix socket folder) where a
DNS lookup must never hold the loop.

The table is the SQLite index's (:data:`~adicom.archive.matching.ROW_COLUMNS`)
plus what SQLite computes in Python functions at query time and PostgreSQL
cannot: person names folded and fuzzy-folded (PS3.4 C.2.2.2.1), stored
beside them, and Instance Number as an integer. Text columns use the "C"
collation, so comparisons, ranges and wildcards behave as SQLite's.

Every call is bounded: ``timeout`` seconds, waiting for a pooled
connection included, and at most ``pool`` connections. A database that is
down, unreachable or too slow raises :class:`IndexUnavailable`; the pool
connects again by itself on a later call once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from adicom.archive.index import IndexUnavailable, IndexUnusable
from adicom.archive.matching import (
    ATTRIBUTES,
    POSTGRES,
    ROW_COLUMNS,
    Row,
    find_query,
    fold_name,
    found_rows,
    fuzzy_name,
    instances_query,
    numbered,
)
from adicom.errors import ArchiveError
from adicom.negotiation import NO_QR_OPTIONS, QROptions

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "DEFAULT_INDEX_POOL",
    "DEFAULT_INDEX_TIMEOUT",
    "SCHEMA_VERSION",
    "PostgresIndex",
    "migrate",
]

log = logging.getLogger("adicom")

#: Connections at most in a database index's pool (``serve --index-pool``).
DEFAULT_INDEX_POOL = 10
#: Seconds a database index call may take, waiting for a connection
#: included, before the operation fails (``serve --index-timeout``).
DEFAULT_INDEX_TIMEOUT = 5.0


_NAMES = [column for keyword, (column, _, vr) in ATTRIBUTES.items() if vr == "PN"]
# The columns PostgreSQL keeps besides ROW_COLUMNS, computed from them.
_DERIVED = (
    *(f"{column}_{kind}" for column in _NAMES for kind in ("fold", "fuzzy")),
    "instance_order",
)
_ALL = (*ROW_COLUMNS, *_DERIVED)
_INTEGERS = {"mtime_ns", "size", "instance_order"}
_ROW_UID = ROW_COLUMNS.index("sop_instance_uid")
_ROW_NUMBER = ROW_COLUMNS.index("instance_number")
_ROW_NAMES = [ROW_COLUMNS.index(column) for column in _NAMES]


def _column(name: str) -> str:
    if name in _INTEGERS:
        return f"{name} bigint NOT NULL DEFAULT 0"
    if name == "sop_instance_uid":
        return 'sop_instance_uid text COLLATE "C" PRIMARY KEY'
    if name == "path":
        return 'path text COLLATE "C" NOT NULL'
    return f"{name} text COLLATE \"C\" NOT NULL DEFAULT ''"


# Each migration takes the schema one version up; applied in order, each
# in the transaction that records it (see migrate()).
_MIGRATIONS = [
    # 1: one row per instance, as the SQLite index has it.
    f"""
    CREATE TABLE instances (
        {", ".join(_column(name) for name in _ALL)},
        -- Set by a store that replaced another copy: the file to remove.
        replaced_path text
    );
    CREATE INDEX by_patient ON instances (patient_id);
    CREATE INDEX by_study ON instances (study_instance_uid);
    CREATE INDEX by_series ON instances (series_instance_uid);
    CREATE INDEX by_path ON instances (path);
    """,
]
#: The schema version this adicom writes and reads.
SCHEMA_VERSION = len(_MIGRATIONS)
# pg_advisory_xact_lock key: nodes migrating at once take turns.
_LOCK = 0x0AD1C0


async def migrate(connection: asyncpg.Connection) -> int:
    """Create or upgrade the schema on ``connection``; the version it had before.

    Several nodes may run it at once: an advisory lock makes them take
    turns, and each migration is recorded in the transaction that applies
    it. A database of a newer version is refused (:class:`IndexUnusable`).
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS adicom_meta (key text PRIMARY KEY, value text NOT NULL)"
        )
        found = await connection.fetchval("SELECT value FROM adicom_meta WHERE key = 'version'")
        before = int(found or 0)
        if before > SCHEMA_VERSION:
            raise IndexUnusable(
                f"the index has schema version {before}, newer than this adicom's "
                f"{SCHEMA_VERSION}: upgrade adicom"
            )
        for script in _MIGRATIONS[before:]:
            await connection.execute(script)
        await connection.execute(
            "INSERT INTO adicom_meta VALUES ('version', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            str(SCHEMA_VERSION),
        )
    return before


def _instance_order(text: str) -> int:
    # As SQLite's CAST(x AS INTEGER): the leading integer, 0 when there is none.
    text = text.strip()
    digits = len(text) - len(text.lstrip("+-"))
    end = digits
    while end < len(text) and text[end].isdigit():
        end += 1
    try:
        return int(text[:end])
    except ValueError:
        return 0


def _pg_row(row: list[str | int]) -> list[str | int]:
    """A row of ROW_COLUMNS with the derived columns, as PostgreSQL takes it."""
    # PostgreSQL's text cannot hold NUL, which a value as sent may pad with.
    out: list[str | int] = [v.replace("\x00", "") if isinstance(v, str) else v for v in row]
    for index in _ROW_NAMES:
        name = str(out[index])
        out += [fold_name(name), fuzzy_name(name)]
    out.append(_instance_order(str(out[_ROW_NUMBER])))
    return out


_MARKS = ", ".join(f"${n}" for n in range(1, len(_ALL) + 1))
_UPDATES = ", ".join(f"{name} = EXCLUDED.{name}" for name in _ALL if name != "sop_instance_uid")
# The database decides between two stores of one SOP Instance UID: the
# primary key lets one insert in; the other, with "replace", updates that row
# and learns the path it displaced (the row as locked, the latest committed),
# else it learns it lost (no row returned).
_PUT = (
    f"INSERT INTO instances ({', '.join(_ALL)}) VALUES ({_MARKS}) "
    f"ON CONFLICT (sop_instance_uid) DO UPDATE SET {_UPDATES}, "
    f"replaced_path = instances.path WHERE ${len(_ALL) + 1} "
    "RETURNING replaced_path"
)
_UPSERT = (
    f"INSERT INTO instances ({', '.join(_ALL)}) VALUES ({_MARKS}) "
    f"ON CONFLICT (sop_instance_uid) DO UPDATE SET {_UPDATES}"
)


async def _reset(connection: asyncpg.Connection) -> None:
    """Make a connection ready for the next call when it goes back to the pool.

    asyncpg's default resets the whole session (a query per release, which
    doubled the cost of a store); the index changes nothing in a session
    (no SET, no LISTEN, only transaction-scoped locks), so what can be left
    over is an open transaction, rolled back.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def _safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _address_of(url: str) -> dict[str, Any]:
    """The ``host`` and ``port`` for asyncpg when the URL's host is a name; else ``{}``.

    Nothing for an address, a Unix socket folder, several hosts or no host
    at all: asyncpg and asyncio use those as they are, with no lookup. A
    name is looked up here, every address of it, on the event loop (at
    once from /etc/hosts, else a DNS lookup holds the loop until the
    resolver answers), because asyncio's own lookup runs in a thread,
    which adicom never starts. A name that does not resolve is left to
    asyncpg's connection error.
    (With ``sslmode=verify-full`` give an address the certificate names.)
    """
    parts = urlsplit(url)
    if "," in parts.netloc:
        return {}
    host = parts.hostname
    if not host or host.startswith("/"):
        return {}
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return {}
    except socket.gaierror:
        pass
    try:
        found = socket.getaddrinfo(host, parts.port or 5432, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError):
        return {}
    # Every address, in the resolver's order: asyncpg tries them in turn,
    # as asyncio would (``localhost`` is ::1 and 127.0.0.1).
    hosts = list(dict.fromkeys(str(entry[4][0]) for entry in found))
    # The keywords replace the URL's host and port alike: give both.
    return {"host": hosts, "port": parts.port or 5432}


class PostgresIndex:
    """The archive's index in the PostgreSQL database at ``url`` (asyncpg pool).

    ``pool``: connections at most (each node); ``timeout``: seconds any call
    may take, the wait for a connection included.
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        pool: int = DEFAULT_INDEX_POOL,
        timeout: float = DEFAULT_INDEX_TIMEOUT,
    ) -> None:
        if pool < 1 or timeout <= 0:
            raise ValueError("an index pool needs at least one connection and a timeout > 0")
        try:
            import asyncpg
        except ImportError:
            raise ArchiveError(
                "a postgresql:// index needs asyncpg: pip install 'adicom[postgresql]'"
            ) from None
        self._asyncpg = asyncpg
        self._dsn = url
        self.url = _safe_url(url)
        self.pool_size = pool
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None
        # The schema was checked (connect() succeeded once).
        self._ready = False
        self._connecting = asyncio.Lock()
        # What asyncpg raises when the server is down, gone or refuses.
        self._down: tuple[type[BaseException], ...] = (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.OperatorInterventionError,
            asyncpg.TooManyConnectionsError,
            asyncpg.InsufficientResourcesError,
        )

    async def connect(self) -> None:
        """Make the pool and bring the schema up to date (raises IndexUnavailable).

        Called by the first call that needs the database when it was not
        (or could not be) done before: a node started while the database
        was down begins to work once it answers.
        """
        async with self._connecting:
            if self._ready:
                return
            if self._pool is None:
                # min_size 0: no connection is held before it is needed, and a
                # broken one is replaced by a new one on the next call.
                self._pool = self._asyncpg.create_pool(
                    self._dsn,
                    **_address_of(self._dsn),
                    min_size=0,
                    max_size=self.pool_size,
                    max_inactive_connection_lifetime=60.0,
                    reset=_reset,
                )
                await self._pool  # no connection made yet (min_size 0)
            async with self._acquire() as connection:
                before = await migrate(connection)
            self._ready = True
        if before != SCHEMA_VERSION:
            log.info("index %s: schema %d made version %d", self.url, before, SCHEMA_VERSION)

    def close(self) -> None:
        """Close every connection of the pool now."""
        self._ready = False
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def aclose(self) -> None:
        """Close the pool, letting calls under way finish (at most ``timeout``)."""
        self._ready = False
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, the call bounded by ``timeout``; failures as IndexUnavailable."""
        if not self._ready:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.connect()
            except TimeoutError:
                raise IndexUnavailable(f"the index {self.url} does not answer") from None
        async with self._acquire() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise IndexUnavailable(f"the index {self.url} is closed")
        try:
            async with asyncio.timeout(self.timeout), self._pool.acquire() as connection:
                yield connection
        except self._down as exc:
            raise IndexUnavailable(
                f"the index {self.url} does not answer: {exc or type(exc).__name__}"
            ) from None

    async def put(self, row: list[str | int], replace: bool) -> tuple[bool, str | None]:
        """See :meth:`~adicom.archive.backends.IndexBackend.put`: one statement."""
        values = _pg_row(row)
        async with self._connection() as connection:
            found = await connection.fetchrow(_PUT, *values, replace)
            if found is not None:
                return True, found[0]
            kept = await connection.fetchval(
                "SELECT path FROM instances WHERE sop_instance_uid = $1", row[_ROW_UID]
            )
        return False, kept

    async def path_of(self, sop_instance_uid: str) -> Path | None:
        """See :meth:`~adicom.archive.backends.IndexBackend.path_of`."""
        async with self._connection() as connection:
            found = await connection.fetchval(
                "SELECT path FROM instances WHERE sop_instance_uid = $1", sop_instance_uid
            )
        return None if found is None else Path(found)

    async def sop_class_of(self, sop_instance_uid: str) -> tuple[str, Path] | None:
        """See :meth:`~adicom.archive.backends.IndexBackend.sop_class_of`."""
        async with self._connection() as connection:
            found = await connection.fetchrow(
                "SELECT sop_class_uid, path FROM instances WHERE sop_instance_uid = $1",
                sop_instance_uid,
            )
        return None if found is None else (str(found[0]), Path(found[1]))

    async def remove_path(self, path: str | Path) -> None:
        """See :meth:`~adicom.archive.backends.IndexBackend.remove_path`."""
        async with self._connection() as connection:
            await connection.execute("DELETE FROM instances WHERE path = $1", str(path))

    async def known_files(self) -> dict[str, tuple[int, int]]:
        """See :meth:`~adicom.archive.backends.IndexBackend.known_files`."""
        async with self._connection() as connection:
            rows = await connection.fetch("SELECT path, mtime_ns, size FROM instances")
        return {str(path): (int(mtime), int(size)) for path, mtime, size in rows}

    async def count(self) -> int:
        """See :meth:`~adicom.archive.backends.IndexBackend.count`."""
        async with self._connection() as connection:
            return int(await connection.fetchval("SELECT count(*) FROM instances"))

    async def find(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        wanted: Collection[str] | None = None,
        options: QROptions = NO_QR_OPTIONS,
    ) -> Iterator[dict[str, str]]:
        """See :meth:`~adicom.archive.backends.IndexBackend.find` (MatchError raised here)."""
        sql, params, names = find_query(level, keys, patient_root, wanted, options, POSTGRES)
        async with self._connection() as connection:
            rows: list[Any] = await connection.fetch(numbered(sql), *params)
        return found_rows(level, names, rows)

    async def instances(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> list[Row]:
        """See :meth:`~adicom.archive.backends.IndexBackend.instances`."""
        sql, params = instances_query(level, keys, patient_root, retrieve, options, POSTGRES)
        async with self._connection() as connection:
            rows = await connection.fetch(numbered(sql), *params)
        return [Row(*row) for row in rows]

    async def commit(self) -> None:
        """Nothing waits: every change is written when it is made."""

    async def rows(self, batch: int = 1000) -> AsyncIterator[list[list[str | int]]]:
        """See :meth:`~adicom.archive.backends.IndexBackend.rows`."""
        last = ""
        while True:
            async with self._connection() as connection:
                found = await connection.fetch(
                    f"SELECT {', '.join(ROW_COLUMNS)} FROM instances "
                    "WHERE sop_instance_uid > $1 ORDER BY sop_instance_uid LIMIT $2",
                    last,
                    batch,
                )
            if not found:
                return
            yield [list(row) for row in found]
            last = found[-1][_ROW_UID]

    async def add_rows(self, rows: Iterable[list[str | int]]) -> None:
        """See :meth:`~adicom.archive.backends.IndexBackend.add_rows`: written at once."""
        values = [_pg_row(row) for row in rows]
        if values:
            path = ROW_COLUMNS.index("path")
            async with self._connection() as connection, connection.transaction():
                # A file rewritten with another instance: the old instance is gone.
                await connection.executemany(
                    "DELETE FROM instances WHERE path = $1 AND sop_instance_uid <> $2",
                    [(row[path], row[_ROW_UID]) for row in values],
                )
                await connection.executemany(_UPSERT, values)
