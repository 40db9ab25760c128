"""The index behind an archive, pluggable: what it must do, and how one is chosen by URL.

:class:`IndexBackend` is what :class:`~adicom.archive.Archive` asks of an
index: async methods, since a database server answers over the network.
Two backends:

* ``sqlite:PATH`` (the default, :class:`SQLiteIndex`): the file beside the
  archive's folder, embedded, no server; synchronous inside (its calls
  take microseconds), merely awaited. Several processes of one host may
  share it (``serve --workers``).
* ``postgresql://...`` (:class:`~adicom.archive.postgres.PostgresIndex`):
  a PostgreSQL database through asyncpg, which several ``adicom serve``
  nodes share (imported only when such a URL is used).

Both match alike: the SQL comes from :mod:`adicom.archive.matching`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from adicom.archive.index import BUSY_TIMEOUT, Index, IndexUnavailable, IndexUnusable
from adicom.archive.matching import ROW_COLUMNS, Row
from adicom.archive.postgres import DEFAULT_INDEX_POOL, DEFAULT_INDEX_TIMEOUT, PostgresIndex
from adicom.errors import ArchiveError
from adicom.negotiation import NO_QR_OPTIONS, QROptions

__all__ = [
    "DEFAULT_INDEX_POOL",
    "DEFAULT_INDEX_TIMEOUT",
    "IndexBackend",
    "IndexUnavailable",
    "SQLiteIndex",
    "index_url",
    "open_index",
]

_ROW_PATH = ROW_COLUMNS.index("path")
_ROW_UID = ROW_COLUMNS.index("sop_instance_uid")


class IndexBackend(Protocol):
    """What an archive asks of its index (rows as :func:`~adicom.archive.matching.make_row`)."""

    #: Where it is, as a URL (``sqlite:/data/.adicom-index.sqlite``,
    #: ``postgresql://host/db``, without a password).
    url: str
    #: Shared by several nodes: each store is written to it before its
    #: success status is sent, and the database settles two stores of one
    #: SOP Instance UID (:meth:`put`).
    shared: bool

    async def connect(self) -> None:
        """Make ready (connect, create or check the schema); raises ArchiveError."""

    def close(self) -> None:
        """Write what is pending and let go of the database (at once)."""

    async def aclose(self) -> None:
        """Write what is pending and let go of the database, calls under way let finish."""

    async def put(self, row: list[str | int], replace: bool) -> tuple[bool, str | None]:
        """Store ``row`` now, atomically against other nodes storing the same UID.

        Returns (stored, other path): with ``replace``, (True, the path of the
        instance it replaced, if any); else (True, None) when the UID was
        new, (False, the path of the instance kept) when it was not.
        """
        ...

    async def path_of(self, sop_instance_uid: str) -> Path | None:
        """Where the instance with this SOP Instance UID is stored, if it is."""
        ...

    async def sop_class_of(self, sop_instance_uid: str) -> tuple[str, Path] | None:
        """The SOP class and path of the instance with this UID, if stored."""
        ...

    async def remove_path(self, path: str | Path) -> None:
        """Forget the instance stored at ``path``."""

    async def known_files(self) -> dict[str, tuple[int, int]]:
        """Indexed paths with their (mtime_ns, size)."""
        ...

    async def count(self) -> int:
        """How many instances are indexed."""
        ...

    async def find(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        wanted: Collection[str] | None = None,
        options: QROptions = NO_QR_OPTIONS,
    ) -> Iterator[dict[str, str]]:
        """The matches of a C-FIND (see :func:`~adicom.archive.matching.found_rows`).

        Raises :class:`~adicom.archive.matching.MatchError` for keys
        PS3.4 does not allow (perhaps only when the first match is taken).
        """
        ...

    async def instances(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> list[Row]:
        """The instances under the entities ``level`` and ``keys`` select."""
        ...

    async def commit(self) -> None:
        """Write what is pending now (changes made through :meth:`add_rows`)."""

    def rows(self, batch: int = 1000) -> AsyncIterator[list[list[str | int]]]:
        """Every row, ``batch`` at a time (for a copy to another backend)."""
        ...

    async def add_rows(self, rows: Iterable[list[str | int]]) -> None:
        """Insert or replace rows (a copy from another backend); written by :meth:`commit`."""


class SQLiteIndex:
    """The SQLite index (:class:`~adicom.archive.index.Index`, in :attr:`db`) as a backend."""

    shared = False

    def __init__(self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        #: The synchronous index, used directly on the store path (no await).
        self.db = Index(path, busy_timeout)
        self.url = f"sqlite:{self.db.path}"

    async def connect(self) -> None:
        """Nothing to do: the file is open."""

    def close(self) -> None:
        """Commit and close the file."""
        self.db.close()

    async def aclose(self) -> None:
        """Commit and close the file."""
        self.db.close()

    async def put(self, row: list[str | int], replace: bool) -> tuple[bool, str | None]:
        """Store one row (one process at a time decides: the lookup and add do not await)."""
        uid = str(row[_ROW_UID])
        before = self.db.path_of(uid)
        if before is not None and not replace:
            return False, str(before)
        self.db.add_rows([row])
        self.db.commit()
        return True, None if before is None else str(before)

    async def path_of(self, sop_instance_uid: str) -> Path | None:
        """See :meth:`IndexBackend.path_of`."""
        return self.db.path_of(sop_instance_uid)

    async def sop_class_of(self, sop_instance_uid: str) -> tuple[str, Path] | None:
        """See :meth:`IndexBackend.sop_class_of`."""
        return self.db.sop_class_of(sop_instance_uid)

    async def remove_path(self, path: str | Path) -> None:
        """See :meth:`IndexBackend.remove_path` (written at the next commit)."""
        self.db.remove_path(path)

    async def known_files(self) -> dict[str, tuple[int, int]]:
        """See :meth:`IndexBackend.known_files`."""
        return self.db.known_files()

    async def count(self) -> int:
        """See :meth:`IndexBackend.count`."""
        return self.db.count()

    async def find(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        wanted: Collection[str] | None = None,
        options: QROptions = NO_QR_OPTIONS,
    ) -> Iterator[dict[str, str]]:
        """See :meth:`IndexBackend.find`."""
        return self.db.find(level, keys, patient_root, wanted, options)

    async def instances(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> list[Row]:
        """See :meth:`IndexBackend.instances`."""
        return self.db.instances(level, keys, patient_root, retrieve, options)

    async def commit(self) -> None:
        """Write what is pending (raises IndexBusy when another process holds the lock)."""
        self.db.commit()

    async def rows(self, batch: int = 1000) -> AsyncIterator[list[list[str | int]]]:
        """See :meth:`IndexBackend.rows`."""
        for rows in self.db.rows(batch):
            yield rows

    async def add_rows(self, rows: Iterable[list[str | int]]) -> None:
        """See :meth:`IndexBackend.add_rows`."""
        self.db.add_rows(rows)


def index_url(text: str, default_path: Path) -> str:
    """``--index`` as a URL: empty or ``sqlite:`` means the file at ``default_path``."""
    if text in ("", "sqlite:", "sqlite://"):
        return f"sqlite:{default_path}"
    return text


def open_index(
    url: str,
    *,
    pool: int = DEFAULT_INDEX_POOL,
    timeout: float = DEFAULT_INDEX_TIMEOUT,
) -> IndexBackend:
    """The backend a URL names: ``sqlite:PATH`` or ``postgresql://user@host:port/db``.

    ``pool`` (connections at most) and ``timeout`` (seconds per call) bound
    what a database server may cost; SQLite ignores them. Raises
    :class:`ArchiveError` for a URL of another kind or an unusable file.
    """
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if path.startswith("//"):
            path = path[2:]
        try:
            return SQLiteIndex(Path(path))
        except IndexUnusable as exc:
            raise ArchiveError(str(exc)) from None
    if url.startswith(("postgresql://", "postgres://")):
        # asyncpg (an optional extra, adicom[postgresql]) is imported here.
        return PostgresIndex(url, pool=pool, timeout=timeout)
    raise ArchiveError(f"--index {url!r}: not sqlite:PATH nor postgresql://...")
