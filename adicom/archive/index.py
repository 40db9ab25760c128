"""The archive's SQLite index: one row per instance, queried per PS3.4 C.2.2.2.

One table holds every instance with the attributes matching and the result
fields need; the patient, study and series levels are ``GROUP BY`` views of
it, with their counts. SQLite (standard library) is the right tool: a
single file, transactions, indexes, and queries of well under a millisecond
at archive sizes a reference SCP sees, run on the event loop without a
thread.

Matching (PS3.4 C.2.2.2):

* single value: exact and case-sensitive, except PN, matched without
  regard to case (C.2.2.2.1 leaves PN case to the implementation);
* universal: an empty value matches everything, and asks the value back;
* wildcard: ``*`` and ``?`` in text values (C.2.2.2.4);
* range: ``A-B``, ``-B``, ``A-`` for dates and times (C.2.2.2.5);
* list of UIDs: backslash-separated (C.2.2.2.2).

What extended negotiation agreed (PS3.4 C.5, a
:class:`~adicom.negotiation.QROptions`) changes three things:

* relational queries and retrieval (C.4.1.3.2, C.4.2.3.2, C.4.3.3.2): the
  unique keys of the levels above are no longer required (an IMAGE query
  may name only its study, a SERIES retrieve only its series), and the
  unique key of the query's level may be a wildcard (C.4.1.3.2.1); without
  them a query or retrieve that lacks one is refused as today (0xA900);
* combined date-time matching (C.2.2.2.5.4): Study Date and Study Time,
  both ranges of the same form, match as one DT range (July 5 10:00 to
  July 7 18:00, not 10:00 to 18:00 on each of three days);
* fuzzy semantic matching of person names (C.2.2.2.1.1): accents (and the
  other combining marks) are ignored besides case.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from adicom.dimse import Status
from adicom.errors import ArchiveError
from adicom.negotiation import NO_QR_OPTIONS, QROptions

__all__ = [
    "ATTRIBUTES",
    "BUSY_TIMEOUT",
    "LEVELS",
    "PATH",
    "RAW",
    "Index",
    "IndexBusy",
    "IndexUnusable",
    "MatchError",
]

log = logging.getLogger("adicom")

# keyword -> (column, level, VR): the attributes the index keeps.
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "PatientID": ("patient_id", "PATIENT", "LO"),
    "PatientName": ("patient_name", "PATIENT", "PN"),
    "PatientBirthDate": ("patient_birth_date", "PATIENT", "DA"),
    "PatientSex": ("patient_sex", "PATIENT", "CS"),
    "StudyInstanceUID": ("study_instance_uid", "STUDY", "UI"),
    "StudyDate": ("study_date", "STUDY", "DA"),
    "StudyTime": ("study_time", "STUDY", "TM"),
    "AccessionNumber": ("accession_number", "STUDY", "SH"),
    "StudyID": ("study_id", "STUDY", "SH"),
    "StudyDescription": ("study_description", "STUDY", "LO"),
    "ReferringPhysicianName": ("referring_physician_name", "STUDY", "PN"),
    "SeriesInstanceUID": ("series_instance_uid", "SERIES", "UI"),
    "Modality": ("modality", "SERIES", "CS"),
    "SeriesNumber": ("series_number", "SERIES", "IS"),
    "SeriesDescription": ("series_description", "SERIES", "LO"),
    "SOPInstanceUID": ("sop_instance_uid", "IMAGE", "UI"),
    "SOPClassUID": ("sop_class_uid", "IMAGE", "UI"),
    "InstanceNumber": ("instance_number", "IMAGE", "IS"),
}

#: The levels of the Study Root and Patient Root models and their unique keys.
LEVELS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_ORDER = ["PATIENT", "STUDY", "SERIES", "IMAGE"]

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
CREATE INDEX IF NOT EXISTS by_path ON instances (path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# 2: the instance's Specific Character Set and its non-ASCII values as sent.
_VERSION = "2"


class IndexUnusable(ArchiveError):
    """The index database cannot be used (corrupt, not a database, wrong version)."""


class MatchError(ArchiveError, ValueError):
    """A matching key has a value PS3.4 C.2.2.2 does not allow; ``status`` to answer."""

    def __init__(self, message: str, status: int = Status.IDENTIFIER_DOES_NOT_MATCH) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Row:
    """One indexed instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    #: Where the file is, as stored in the index.
    path: str


#: The key of a match's non-ASCII values as received, in the dicts of Index.find.
RAW = "__raw__"
#: Asked in ``wanted``, the key of an entity's file (one of them, for a group).
PATH = "__path__"
#: An IMAGE-level return key the index fills from the syntax the file is in.
AVAILABLE_SYNTAX = "AvailableTransferSyntaxUID"
# The character set and raw values of one instance, as one column, so that a
# group's min() takes both from the same instance.
_CHARSET = "specific_character_set || char(1) || raw_values"


def _put_charset(found: dict[str, str], packed: str | None) -> None:
    charset, _, raw = (packed or "").partition("\x01")
    found["SpecificCharacterSet"] = charset
    found[RAW] = raw


def fold_name(text: str) -> str:
    """A person name as it is matched: case-folded, empty trailing parts dropped.

    PS3.4 C.2.2.2.1 leaves case to the SCP. PS3.5 6.2.1.1 lets trailing
    empty components and component groups go unsent, so
    ``Wang^XiaoDong=王^小東=`` (an empty phonetic group) and
    ``Wang^XiaoDong=王^小東`` are the same name.
    """
    groups = [group.rstrip("^ ") for group in text.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).casefold()


def _fold(text: str | None) -> str | None:
    """fold_name() as an SQL function."""
    return None if text is None else fold_name(text)


def fuzzy_name(text: str) -> str:
    """A person name as fuzzy semantic matching sees it: folded, without accents.

    PS3.4 C.2.2.2.1.1 lets a negotiated fuzzy match ignore "case, position,
    accent, and character encoding (including combining characters)": the
    name is decomposed (NFKD, which also unifies compatibility forms such
    as full-width letters) and its combining marks dropped, so ``Müller``,
    ``MULLER`` and ``Mu\u0308ller`` are one name.
    """
    decomposed = unicodedata.normalize("NFKD", fold_name(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _fuzzy(text: str | None) -> str | None:
    """fuzzy_name() as an SQL function."""
    return None if text is None else fuzzy_name(text)


def _escape_glob(text: str) -> str:
    # GLOB's own specials besides * and ? must match literally.
    return text.replace("[", "[[]")


class IndexBusy(ArchiveError):
    """Another process holds the index's write lock: nothing was written, try again later."""


#: How long a write waits for another process's write lock before
#: :class:`IndexBusy` (seconds): the event loop is blocked while it waits.
BUSY_TIMEOUT = 0.02
# Opening (schema creation, version check) may wait longer: it runs once,
# before serving, and several processes may open one archive at once.
_OPEN_TIMEOUT = 10.0

_COLUMNS = [column for column, _, _ in ATTRIBUTES.values()]
_INSERT = (
    f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}, transfer_syntax, "
    "specific_character_set, raw_values, path, mtime_ns, size) "
    f"VALUES ({', '.join('?' for _ in range(len(_COLUMNS) + 6))})"
)
# Where the path and the SOP class are in a row as _INSERT takes it.
_ROW_PATH = len(_COLUMNS) + 3
_ROW_CLASS = _COLUMNS.index("sop_class_uid")


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
        self._rows: dict[str, list[object]] = {}
        self._paths: dict[str, str] = {}
        self._removed: set[str] = set()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=_OPEN_TIMEOUT)
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
            self._script(_SCHEMA.format(columns=columns))
            found = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if found is not None and found[0] != _VERSION:
                # The index is a cache of the folder: one of another version is
                # dropped and made again, and Archive.open() reads the files.
                log.info(
                    "the index %s has version %s, not %s: rebuilding", path, found[0], _VERSION
                )
                self._script("DROP TABLE instances; DROP TABLE meta;")
                self._script(_SCHEMA.format(columns=columns))
                found = None
            if found is None:
                self._db.execute("INSERT INTO meta VALUES ('version', ?)", (_VERSION,))
            self._db.execute("COMMIT")
            self._db.execute(f"PRAGMA busy_timeout={max(0, int(busy_timeout * 1000))}")
        except sqlite3.DatabaseError as exc:
            raise IndexUnusable(
                f"the index {self.path} cannot be used ({exc}); "
                "move it away and it will be rebuilt from the files"
            ) from None

    def _script(self, script: str) -> None:
        # Statement by statement: executescript() would commit first.
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        """Write what is pending (waiting for other processes if need be) and close."""
        if self.pending:
            self._db.execute(f"PRAGMA busy_timeout={int(_OPEN_TIMEOUT * 1000)}")
            self.commit()
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
            rows = self._rows.values()
            # A file rewritten with another instance: the old instance is gone.
            db.executemany(
                "DELETE FROM instances WHERE path = ? AND sop_instance_uid != ?",
                [(row[_ROW_PATH], uid) for uid, row in self._rows.items()],
            )
            db.executemany(_INSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._rows = {}
        self._paths = {}
        self._removed = set()

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
        path: Path,
        transfer_syntax: str,
        mtime_ns: int = 0,
        size: int = 0,
        raw: Mapping[str, bytes] | None = None,
    ) -> None:
        """Insert or replace one instance (keyed by SOP Instance UID) at the next commit.

        ``values["SpecificCharacterSet"]`` and ``raw`` (the non-ASCII values
        as received) are kept so that C-FIND answers them back byte for byte.
        """
        kept = json.dumps({k: v.decode("latin-1") for k, v in raw.items()}) if raw else ""
        row: list[object] = [values.get(keyword, "") or "" for keyword in ATTRIBUTES]
        where = str(path)
        row += [
            transfer_syntax,
            values.get("SpecificCharacterSet", "") or "",
            kept,
            where,
            mtime_ns,
            size,
        ]
        uid = values.get("SOPInstanceUID", "") or ""
        before = self._rows.get(uid)
        if before is not None and self._paths.get(str(before[_ROW_PATH])) == uid:
            del self._paths[str(before[_ROW_PATH])]
        other = self._paths.get(where)
        if other is not None and other != uid:
            del self._rows[other]  # the file now holds this instance
        self._rows[uid] = row
        self._paths[where] = uid

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

    def _conditions(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> tuple[str, list[str]]:
        """SQL for the matching keys, after checking them against the level (PS3.4 C.4.1.2.2)."""
        if level not in LEVELS:
            raise MatchError(f"Query/Retrieve Level {level!r} is not one of {', '.join(_ORDER)}")
        depth = _ORDER.index(level)
        if level == "PATIENT" and not patient_root:
            raise MatchError("the Study Root model has no PATIENT level (PS3.4 C.6.2)")
        if not options.relational:
            # Hierarchical search: the unique keys of every level above must
            # be single values (C.4.1.2.1, C.4.2.2.1); relational queries and
            # retrieval, when negotiated, lift that (C.4.1.3.2, C.4.2.3.2). In
            # the Study Root model the patient is not a level of its own, so
            # its key is not required.
            for above in _ORDER[0 if patient_root else 1 : depth]:
                unique = LEVELS[above]
                value = keys.get(unique, "")
                if not value or "\\" in value or "*" in value or "?" in value:
                    # At most 64 characters: it goes back as Error Comment.
                    what = "retrieve" if retrieve else "query"
                    raise MatchError(f"{level} {what} needs one {unique} (hierarchical search)")
        if retrieve:
            # PS3.4 C.4.2.2.1: a retrieve names what it wants by the unique
            # key of its level (a UID or a list); an empty key is no answer.
            unique = LEVELS[level]
            if not keys.get(unique, "") or (level == "PATIENT" and not patient_root):
                raise MatchError(f"a {level} retrieve needs its unique key {unique}")
        where: list[str] = []
        params: list[str] = []
        combined = _combined_datetime(keys) if options.datetime_matching and depth >= 1 else None
        if combined is not None:
            clause, values = combined
            where.append(clause)
            params.extend(values)
        for keyword, value in keys.items():
            if combined is not None and keyword in ("StudyDate", "StudyTime"):
                continue  # matched together above
            if keyword == "ModalitiesInStudy" and value and depth >= 1:
                # A study matches if any of its series has one of the modalities.
                modalities = [m for m in value.split("\\") if m]
                marks = ", ".join("?" for _ in modalities)
                where.append(
                    "study_instance_uid IN (SELECT study_instance_uid FROM instances "
                    f"WHERE modality IN ({marks}))"
                )
                params.extend(modalities)
                continue
            if keyword not in ATTRIBUTES or value == "":
                continue  # universal matching, or a key we only return
            column, attribute_level, vr = ATTRIBUTES[keyword]
            if _ORDER.index(attribute_level) > depth:
                raise MatchError(f"{keyword} is a {attribute_level}-level key, below {level}")
            clause, values = _match(
                column,
                vr,
                value,
                keyword,
                # C.4.1.3.2.1: a relational query's own unique key may be a wildcard.
                wildcard_uid=options.relational and not retrieve and keyword == LEVELS[level],
                fuzzy=options.fuzzy_matching and not retrieve,
            )
            where.append(clause)
            params.extend(values)
        return (" AND ".join(where) or "1"), params

    def find(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        wanted: Collection[str] | None = None,
        options: QROptions = NO_QR_OPTIONS,
    ) -> Iterator[dict[str, str]]:
        """The entities at ``level`` matching ``keys``, one dict per entity.

        Each dict has the level's attributes and those of the levels above
        (only those in ``wanted``, when given: fewer columns read), plus the
        counts of PS3.4 C.3 (NumberOf...Related..., ModalitiesInStudy), the
        Specific Character Set of the values and, under :data:`RAW`, the
        non-ASCII ones as they were received (JSON, latin-1 text for bytes).
        ``options`` are those extended negotiation agreed (relational
        queries, combined date-time and fuzzy person name matching).
        """
        where, params = self._conditions(level, keys, patient_root, options=options)
        self._flush()
        depth = _ORDER.index(level)
        shown = [
            (keyword, column)
            for keyword, (column, attribute_level, _) in ATTRIBUTES.items()
            if _ORDER.index(attribute_level) <= depth and (wanted is None or keyword in wanted)
        ]
        if not shown:  # SQL needs a column; the unique key is always there
            shown = [(LEVELS[level], ATTRIBUTES[LEVELS[level]][0])]
        if wanted is not None and PATH in wanted:
            shown.append((PATH, "path"))
        if level == "IMAGE" and (wanted is None or AVAILABLE_SYNTAX in wanted):
            # PS3.4 Table C.6-4, Available Transfer Syntax UID (0008,3002): the
            # syntax the instance is held in, which a C-GET requestor can offer.
            shown.append((AVAILABLE_SYNTAX, "transfer_syntax"))
        names = [keyword for keyword, _ in shown]
        if level == "IMAGE":
            # One row per instance already (SOP Instance UID is the key): no
            # grouping, which costs SQLite a temporary B-tree per query.
            sql = (
                f"SELECT {', '.join(column for _, column in shown)}, {_CHARSET} "
                f"FROM instances WHERE {where} ORDER BY study_date, sop_instance_uid"
            )
            # Rows are fetched whole (no cursor stays open while the caller
            # awaits between matches); dicts are made one by one as taken.
            for row in self._db.execute(sql, params).fetchall():
                found = dict(zip(names, row[:-1], strict=True))
                _put_charset(found, row[-1])
                yield found
            return
        select = ", ".join(f"min({column})" for _, column in shown)
        group = ATTRIBUTES[LEVELS[level]][0]
        extra = {
            "PATIENT": "count(DISTINCT study_instance_uid), count(DISTINCT series_instance_uid), "
            "count(*), ''",
            "STUDY": "0, count(DISTINCT series_instance_uid), count(*), "
            "group_concat(DISTINCT modality)",
            "SERIES": "0, 0, count(*), ''",
        }[level]
        sql = (
            f"SELECT {select}, {extra}, min({_CHARSET}) FROM instances WHERE {where} "
            f"GROUP BY {group} ORDER BY min(study_date), min({group})"
        )
        for row in self._db.execute(sql, params).fetchall():
            found = dict(zip(names, row[: len(names)], strict=True))
            studies, series, instances, modalities, charset = row[len(names) :]
            _put_charset(found, charset)
            if level == "PATIENT":
                found["NumberOfPatientRelatedStudies"] = str(studies)
                found["NumberOfPatientRelatedSeries"] = str(series)
                found["NumberOfPatientRelatedInstances"] = str(instances)
            elif level == "STUDY":
                found["NumberOfStudyRelatedSeries"] = str(series)
                found["NumberOfStudyRelatedInstances"] = str(instances)
                found["ModalitiesInStudy"] = "\\".join(sorted(set((modalities or "").split(","))))
            elif level == "SERIES":
                found["NumberOfSeriesRelatedInstances"] = str(instances)
            yield found

    def instances(
        self,
        level: str,
        keys: Mapping[str, str],
        patient_root: bool = False,
        retrieve: bool = False,
        options: QROptions = NO_QR_OPTIONS,
    ) -> list[Row]:
        """The instances under the entities ``level`` and ``keys`` select.

        With ``retrieve``, the keys must name entities as a C-GET/C-MOVE
        identifier does (PS3.4 C.4.2.2.1: the level's unique key is required;
        those of the levels above too, unless ``options.relational``, the
        relational-retrieval of C.4.2.3.2.1, was agreed).
        """
        where, params = self._conditions(level, keys, patient_root, retrieve, options)
        self._flush()
        return [
            Row(uid, sop_class, transfer, path)
            for uid, sop_class, transfer, path in self._db.execute(
                "SELECT sop_instance_uid, sop_class_uid, transfer_syntax, path FROM instances "
                f"WHERE {where} ORDER BY series_instance_uid, "
                "CAST(instance_number AS INTEGER), sop_instance_uid",
                params,
            )
        ]


def _match(
    column: str,
    vr: str,
    value: str,
    keyword: str,
    *,
    wildcard_uid: bool = False,
    fuzzy: bool = False,
) -> tuple[str, list[str]]:
    """SQL for one matching key (PS3.4 C.2.2.2).

    ``wildcard_uid`` takes ``*`` and ``?`` in a single UID (a relational
    query's own unique key); ``fuzzy`` matches person names by
    :func:`fuzzy_name`.
    """
    if vr == "UI":
        if wildcard_uid and "\\" not in value and ("*" in value or "?" in value):
            pattern = value.strip()
            if not all(c.isdigit() or c in ".*?" for c in pattern):
                raise MatchError(f"{keyword} {pattern!r} is not a UID pattern")
            return f"{column} GLOB ?", [pattern]
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        for uid in uids:
            if "*" in uid or "?" in uid or not all(c.isdigit() or c == "." for c in uid):
                raise MatchError(f"{keyword} {uid!r} is not a UID (wildcards are not allowed)")
        if len(uids) == 1:
            return f"{column} = ?", uids
        return f"{column} IN ({', '.join('?' for _ in uids)})", uids
    if vr in ("DA", "TM"):
        return _range(column, vr, value, keyword)
    if "\\" in value and vr != "PN":
        raise MatchError(f"{keyword} {value!r}: lists are allowed only for UIDs")
    if vr == "PN":
        # Without regard to case, in every script: SQLite's lower() folds
        # ASCII only, so names are folded in Python (fold_name()).
        function, folded = ("fuzzy", fuzzy_name(value)) if fuzzy else ("fold", fold_name(value))
        if "*" in value or "?" in value:
            return f"{function}({column}) GLOB ?", [_escape_glob(folded)]
        return f"{function}({column}) = ?", [folded]
    if "*" in value or "?" in value:
        return f"{column} GLOB ?", [_escape_glob(value)]
    return f"{column} = ?", [value]


def _range(column: str, vr: str, value: str, keyword: str) -> tuple[str, list[str]]:
    width = 8 if vr == "DA" else None
    low, dash, high = value.partition("-")
    for part in (low, high):
        digits = part.split(".")[0]
        if part and (not digits.isdigit() or (width and len(digits) != width)):
            raise MatchError(f"{keyword} {value!r} is not a valid {vr} value or range")
    if not dash:
        if vr == "TM":
            # A time matches by its given precision: "10" matches 10:xx:xx.
            return f"substr({column}, 1, ?) = ?", [str(len(low)), low]
        return f"{column} = ?", [low]
    clauses, params = [], []
    if low:
        clauses.append(f"{column} >= ?")
        params.append(low)
    if high:
        clauses.append(f"{column} <= ?" if vr == "DA" else f"substr({column}, 1, ?) <= ?")
        params.extend([high] if vr == "DA" else [str(len(high)), high])
    if not clauses:
        raise MatchError(f"{keyword} {value!r}: a range needs at least one end")
    # An empty stored value never matches a range.
    clauses.append(f"{column} != ''")
    return " AND ".join(clauses), params


def _combined_datetime(keys: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """SQL for Study Date and Study Time as one DT range (PS3.4 C.2.2.2.5.4), or None.

    Only when both are ranges of the same form (``A-B`` with ``C-D``, ``-B``
    with ``-D``, ``A-`` with ``C-``): the bounds are the dates and times
    joined (``A`` + ``C`` to ``B`` + ``D``). A stored value is compared at
    the precision both have, so a study without a time matches by its date
    alone, and one at 18:00:30 is within a range ending at "1800"; a study
    without a date never matches a range.
    """
    date, time = keys.get("StudyDate", ""), keys.get("StudyTime", "")
    if "-" not in date or "-" not in time:
        return None
    date_low, _, date_high = (part.strip() for part in date.partition("-"))
    time_low, _, time_high = (part.strip() for part in time.partition("-"))
    if bool(date_low) != bool(time_low) or bool(date_high) != bool(time_high):
        return None
    for part, width in ((date_low, 8), (date_high, 8), (time_low, 0), (time_high, 0)):
        digits = part.split(".")[0]
        if part and (not digits.isdigit() or (width and len(digits) != width)):
            raise MatchError(f"StudyDate {date!r} / StudyTime {time!r} is not a valid range")
    stored = "(study_date || study_time)"
    clauses, params = ["study_date != ''"], []
    for bound, op in ((date_low + time_low, ">="), (date_high + time_high, "<=")):
        if bound:
            clauses.append(
                f"substr({stored}, 1, min(length({stored}), CAST(? AS INTEGER))) "
                f"{op} substr(?, 1, min(length({stored}), CAST(? AS INTEGER)))"
            )
            params.extend([str(len(bound)), bound, str(len(bound))])
    if len(clauses) == 1:
        raise MatchError(f"StudyDate {date!r} / StudyTime {time!r}: a range needs an end")
    return " AND ".join(clauses), params


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
