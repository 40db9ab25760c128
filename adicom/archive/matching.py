"""Matching keys as SQL, for every index backend (PS3.4 C.2.2.2).

One table holds every instance with the attributes matching and the result
fields need; the patient, study and series levels are ``GROUP BY`` views of
it, with their counts. The SQL is written once, with ``?`` marks, and a
:class:`Dialect` says what differs between SQLite and PostgreSQL (pattern
matching, folded person names, a few function names), so that both match
alike.

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
import operator
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from adicom.dimse import Status
from adicom.errors import ArchiveError
from adicom.negotiation import NO_QR_OPTIONS, QROptions

__all__ = [
    "ATTRIBUTES",
    "AVAILABLE_SYNTAX",
    "LEVELS",
    "PATH",
    "POSTGRES",
    "RAW",
    "SQLITE",
    "Dialect",
    "MatchError",
    "ROW_COLUMNS",
    "Row",
    "conditions",
    "find_query",
    "fold_name",
    "found_rows",
    "fuzzy_name",
    "instances_query",
    "make_row",
    "numbered",
]

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


def put_charset(found: dict[str, str], packed: str | None) -> None:
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


def _escape_glob(text: str) -> str:
    # GLOB's own specials besides * and ? must match literally.
    return text.replace("[", "[[]")


def _glob(column: str, pattern: str) -> tuple[str, list[str | int]]:
    return f"{column} GLOB ?", [_escape_glob(pattern)]


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern (``*``, ``?``) as a LIKE pattern, the rest literal."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _like(column: str, pattern: str) -> tuple[str, list[str | int]]:
    # LIKE is case-sensitive in PostgreSQL, as GLOB is in SQLite.
    return f"{column} LIKE ?", [like_pattern(pattern)]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the SQL of one database engine spells its own way."""

    name: str
    #: A person name column folded (fold_name()), ``{column}`` for the column.
    fold: str
    #: A person name column as fuzzy matching sees it (fuzzy_name()).
    fuzzy: str
    #: The two-argument minimum.
    least: str
    #: The character set and raw values of one instance as one value, so that
    #: a group's min() takes both from the same instance.
    charset: str
    #: The distinct modalities of a group, comma-separated.
    modalities: str
    #: Instance Number as an integer, for the order of a retrieve.
    instance_order: str
    #: A wildcard pattern match: (clause, params) for a column and a pattern.
    pattern: Callable[[str, str], tuple[str, list[str | int]]]


#: SQLite: names folded by Python functions registered on the connection.
SQLITE = Dialect(
    name="sqlite",
    fold="fold({column})",
    fuzzy="fuzzy({column})",
    least="min",
    charset="specific_character_set || char(1) || raw_values",
    modalities="group_concat(DISTINCT modality)",
    instance_order="CAST(instance_number AS INTEGER)",
    pattern=_glob,
)
#: PostgreSQL: names folded in Python when stored, in columns of their own.
POSTGRES = Dialect(
    name="postgresql",
    fold="{column}_fold",
    fuzzy="{column}_fuzzy",
    least="least",
    charset="specific_character_set || chr(1) || raw_values",
    modalities="string_agg(DISTINCT modality, ',')",
    instance_order="instance_order",
    pattern=_like,
)


def conditions(
    level: str,
    keys: Mapping[str, str],
    patient_root: bool = False,
    retrieve: bool = False,
    options: QROptions = NO_QR_OPTIONS,
    dialect: Dialect = SQLITE,
) -> tuple[str, list[str | int]]:
    """SQL (``?`` marks) for the matching keys, checked against the level (PS3.4 C.4.1.2.2)."""
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
    params: list[str | int] = []
    combined = (
        _combined_datetime(keys, dialect) if options.datetime_matching and depth >= 1 else None
    )
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
            dialect=dialect,
        )
        where.append(clause)
        params.extend(values)
    return (" AND ".join(where) or "1=1"), params


def _match(
    column: str,
    vr: str,
    value: str,
    keyword: str,
    *,
    wildcard_uid: bool = False,
    fuzzy: bool = False,
    dialect: Dialect,
) -> tuple[str, list[str | int]]:
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
            return dialect.pattern(column, pattern)
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        for uid in uids:
            if "*" in uid or "?" in uid or not all(c.isdigit() or c == "." for c in uid):
                raise MatchError(f"{keyword} {uid!r} is not a UID (wildcards are not allowed)")
        if len(uids) == 1:
            return f"{column} = ?", list(uids)
        return f"{column} IN ({', '.join('?' for _ in uids)})", list(uids)
    if vr in ("DA", "TM"):
        return _range(column, vr, value, keyword)
    if "\\" in value and vr != "PN":
        raise MatchError(f"{keyword} {value!r}: lists are allowed only for UIDs")
    if vr == "PN":
        # Without regard to case, in every script: SQLite's lower() folds
        # ASCII only, so names are folded in Python (fold_name()).
        folding, folded = (
            (dialect.fuzzy, fuzzy_name(value)) if fuzzy else (dialect.fold, fold_name(value))
        )
        if "*" in value or "?" in value:
            return dialect.pattern(folding.format(column=column), folded)
        return f"{folding.format(column=column)} = ?", [folded]
    if "*" in value or "?" in value:
        return dialect.pattern(column, value)
    return f"{column} = ?", [value]


def _range(column: str, vr: str, value: str, keyword: str) -> tuple[str, list[str | int]]:
    width = 8 if vr == "DA" else None
    low, dash, high = value.partition("-")
    for part in (low, high):
        digits = part.split(".")[0]
        if part and (not digits.isdigit() or (width and len(digits) != width)):
            raise MatchError(f"{keyword} {value!r} is not a valid {vr} value or range")
    if not dash:
        if vr == "TM":
            # A time matches by its given precision: "10" matches 10:xx:xx.
            return f"substr({column}, 1, ?) = ?", [len(low), low]
        return f"{column} = ?", [low]
    clauses: list[str] = []
    params: list[str | int] = []
    if low:
        clauses.append(f"{column} >= ?")
        params.append(low)
    if high:
        clauses.append(f"{column} <= ?" if vr == "DA" else f"substr({column}, 1, ?) <= ?")
        params.extend([high] if vr == "DA" else [len(high), high])
    if not clauses:
        raise MatchError(f"{keyword} {value!r}: a range needs at least one end")
    # An empty stored value never matches a range.
    clauses.append(f"{column} != ''")
    return " AND ".join(clauses), params


def _combined_datetime(
    keys: Mapping[str, str], dialect: Dialect
) -> tuple[str, list[str | int]] | None:
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
    clauses = ["study_date != ''"]
    params: list[str | int] = []
    for bound, op in ((date_low + time_low, ">="), (date_high + time_high, "<=")):
        if bound:
            clauses.append(
                f"substr({stored}, 1, {dialect.least}(length({stored}), CAST(? AS INTEGER))) "
                f"{op} substr(CAST(? AS TEXT), 1, {dialect.least}(length({stored}), "
                "CAST(? AS INTEGER)))"
            )
            params.extend([len(bound), bound, len(bound)])
    if len(clauses) == 1:
        raise MatchError(f"StudyDate {date!r} / StudyTime {time!r}: a range needs an end")
    return " AND ".join(clauses), params


def find_query(
    level: str,
    keys: Mapping[str, str],
    patient_root: bool = False,
    wanted: Collection[str] | None = None,
    options: QROptions = NO_QR_OPTIONS,
    dialect: Dialect = SQLITE,
) -> tuple[str, list[str | int], list[str]]:
    """The SQL of a C-FIND at ``level`` (``?`` marks), its parameters and result names.

    Raises :class:`MatchError` for keys that PS3.4 C.2.2.2 or the level do
    not allow. :func:`found_rows` makes the rows into matches.
    """
    where, params = conditions(level, keys, patient_root, options=options, dialect=dialect)
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
            f"SELECT {', '.join(column for _, column in shown)}, {dialect.charset} "
            f"FROM instances WHERE {where} ORDER BY study_date, sop_instance_uid"
        )
        return sql, params, names
    select = ", ".join(f"min({column})" for _, column in shown)
    group = ATTRIBUTES[LEVELS[level]][0]
    extra = {
        "PATIENT": "count(DISTINCT study_instance_uid), count(DISTINCT series_instance_uid), "
        "count(*), ''",
        "STUDY": f"0, count(DISTINCT series_instance_uid), count(*), {dialect.modalities}",
        "SERIES": "0, 0, count(*), ''",
    }[level]
    sql = (
        f"SELECT {select}, {extra}, min({dialect.charset}) FROM instances WHERE {where} "
        f"GROUP BY {group} ORDER BY min(study_date), min({group})"
    )
    return sql, params, names


def found_rows(
    level: str, names: list[str], rows: Iterable[Sequence[object]]
) -> Iterator[dict[str, str]]:
    """The matches of :func:`find_query`'s rows, one dict per entity, made as taken.

    Each dict has the level's attributes and those of the levels above
    (only those asked), plus the counts of PS3.4 C.3
    (NumberOf...Related..., ModalitiesInStudy), the Specific Character Set
    of the values and, under :data:`RAW`, the non-ASCII ones as they were
    received (JSON, latin-1 text for bytes).
    """
    if level == "IMAGE":
        for row in rows:
            found = dict(zip(names, row[:-1], strict=True))
            put_charset(found, row[-1])  # type: ignore[arg-type]
            yield found  # type: ignore[misc]
        return
    for row in rows:
        found = dict(zip(names, row[: len(names)], strict=True))
        studies, series, instances, modalities, charset = row[len(names) :]
        put_charset(found, charset)  # type: ignore[arg-type]
        if level == "PATIENT":
            found["NumberOfPatientRelatedStudies"] = str(studies)
            found["NumberOfPatientRelatedSeries"] = str(series)
            found["NumberOfPatientRelatedInstances"] = str(instances)
        elif level == "STUDY":
            found["NumberOfStudyRelatedSeries"] = str(series)
            found["NumberOfStudyRelatedInstances"] = str(instances)
            found["ModalitiesInStudy"] = "\\".join(sorted(set(str(modalities or "").split(","))))
        elif level == "SERIES":
            found["NumberOfSeriesRelatedInstances"] = str(instances)
        yield found  # type: ignore[misc]


def instances_query(
    level: str,
    keys: Mapping[str, str],
    patient_root: bool = False,
    retrieve: bool = False,
    options: QROptions = NO_QR_OPTIONS,
    dialect: Dialect = SQLITE,
) -> tuple[str, list[str | int]]:
    """The SQL (``?`` marks) of the instances under the entities ``level`` and ``keys`` select.

    Its rows are (SOP Instance UID, SOP Class UID, transfer syntax, path),
    in series and instance number order. With ``retrieve``, the keys must
    name entities as a C-GET/C-MOVE identifier does (PS3.4 C.4.2.2.1: the
    level's unique key is required; those of the levels above too, unless
    ``options.relational``, the relational-retrieval of C.4.2.3.2.1, was
    agreed).
    """
    where, params = conditions(level, keys, patient_root, retrieve, options, dialect)
    sql = (
        "SELECT sop_instance_uid, sop_class_uid, transfer_syntax, path FROM instances "
        f"WHERE {where} ORDER BY series_instance_uid, {dialect.instance_order}, sop_instance_uid"
    )
    return sql, params


def numbered(sql: str) -> str:
    """``?`` marks as PostgreSQL's ``$1``, ``$2``... (no ``?`` is ever in the SQL text)."""
    parts = sql.split("?")
    out = [parts[0]]
    for number, part in enumerate(parts[1:], 1):
        out.append(f"${number}{part}")
    return "".join(out)


#: The columns of a row as :func:`make_row` makes it, in order: what every
#: backend stores, and what a copy carries.
ROW_COLUMNS = (
    *(column for column, _, _ in ATTRIBUTES.values()),
    "transfer_syntax",
    "specific_character_set",
    "raw_values",
    "path",
    "mtime_ns",
    "size",
)


def make_row(
    values: Mapping[str, str],
    path: str | Path,
    transfer_syntax: str,
    mtime_ns: int = 0,
    size: int = 0,
    raw: Mapping[str, bytes] | None = None,
) -> list[str | int]:
    """One instance as a row of :data:`ROW_COLUMNS`.

    ``values`` are text; an attribute missing from them is "".
    ``values["SpecificCharacterSet"]`` and ``raw`` (the non-ASCII values
    as received) are kept so that C-FIND answers them back byte for byte.
    """
    kept = json.dumps({k: v.decode("latin-1") for k, v in raw.items()}) if raw else ""
    try:
        # A receiver's values have every keyword (DiskStorage's: "" when
        # absent): one C call takes them all, cheaper than a get() each
        # (~1.2 -> ~0.8 us per stored instance).
        row: list[str | int] = list(_ATTRIBUTE_VALUES(values))
    except KeyError:
        row = [values.get(keyword, "") or "" for keyword in ATTRIBUTES]
    else:
        if None in row:  # a caller's None for "": one C scan, not a test per value
            row = [value or "" for value in row]
    row += [
        transfer_syntax,
        values.get("SpecificCharacterSet", "") or "",
        kept,
        path if isinstance(path, str) else str(path),
        mtime_ns,
        size,
    ]
    return row


# The values of ATTRIBUTES, in order, from a mapping that has them all.
_ATTRIBUTE_VALUES = operator.itemgetter(*ATTRIBUTES)
