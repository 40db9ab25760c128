"""Pydantic models at the edge of adicom: peers, C-FIND queries and results, retrieve outcomes.

This is where users hand us data (STYLE.md section 4), so everything is
checked here, once, with messages that say which field, what value, and what
is allowed. The protocol core below never sees an unchecked value.

Queries follow the matching rules of PS3.4 C.2.2.2:

- ``None`` leaves a key out of the matching keys. ``""`` is *universal
  matching* (C.2.2.2.3): the key is sent with an empty value and matches
  everything. Every typed field except ``referring_physician_name`` is also
  asked back anyway (see :meth:`Query.to_identifier`), so for them ``""`` and
  ``None`` build the same identifier. The unique keys a level requires
  (``SeriesQuery.study_instance_uid`` and so on) refuse ``""``.
- Surrounding spaces are removed: PS3.5 6.2 makes them insignificant.
- Wildcards ``*`` and ``?`` (C.2.2.2.4) are allowed in text keys (AE, CS, LO,
  PN, SH and the long text VRs) and refused in UIDs, dates, times and numbers.
- Dates (DA) and times (TM) accept a single value or a range (C.2.2.2.5):
  ``A-B``, ``-B``, ``A-``, with ``A`` not after ``B`` (ranges across midnight
  are not supported by the standard). Dates must exist in the calendar.
- UIDs accept a backslash-separated list (List of UID matching, C.2.2.2.2),
  except the unique keys of the levels above the query level, which must be a
  single UID (C.4.1.2.2.1).
- Text may hold any Unicode character but control characters and backslash;
  an identifier holding non-ASCII text is sent with Specific Character Set
  ``ISO_IR 192`` (UTF-8).

Results are parsed leniently: a peer's odd but legal answer (missing keys,
empty values, padded numbers) never raises; only a missing unique key does.
"""

import difflib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from adicom.dimse import status_category

__all__ = [
    "AETitle",
    "DicomNode",
    "ImageQuery",
    "ImageResult",
    "PatientQuery",
    "PatientResult",
    "Query",
    "QueryLevel",
    "Result",
    "RetrieveResult",
    "SeriesQuery",
    "SeriesResult",
    "StudyQuery",
    "StudyResult",
    "status_text",
]

log = logging.getLogger("adicom")

QueryLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
"""The values of Query/Retrieve Level (0008,0052), PS3.4 C.6."""

_LEVELS: tuple[QueryLevel, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


# --------------------------------------------------------------------------
# AE titles (PS3.5 6.2, VR AE)

_AE_ALLOWED = (
    "an AE title is 1 to 16 characters of printable ASCII (no backslash, "
    "no control characters), not all spaces"
)


def _check_ae_title(value: str) -> str:
    for ch in value:
        if ch == "\\":
            problem = "contains a backslash"
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            problem = f"contains the control character {ch!r}"
        elif ord(ch) > 0x7E:
            problem = f"contains the non-ASCII character {ch!r}"
        else:
            continue
        raise ValueError(f"AE title {value!r} {problem}; {_AE_ALLOWED}")
    title = value.strip(" ")
    if not title:
        raise ValueError(f"AE title {value!r} is empty or all spaces; {_AE_ALLOWED}")
    if len(title) > 16:
        raise ValueError(f"AE title {value!r} has {len(title)} characters; {_AE_ALLOWED}")
    return title


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
"""An Application Entity title (PS3.5 VR AE), surrounding spaces removed."""


class DicomNode(BaseModel):
    """A DICOM peer: its AE title and where to reach it.

    ``aet`` is checked as a PS3.5 AE title (1 to 16 printable ASCII characters,
    no backslash, not all spaces; surrounding spaces are dropped). ``host`` is
    a host name or IP address, ``port`` a TCP port from 1 to 65535.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    aet: AETitle
    host: str
    port: int

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        host = value.strip(" ")
        allowed = "a host name or IP address, without spaces or control characters"
        if not host:
            raise ValueError(f"host {value!r} is empty; expected {allowed}")
        if any(ch.isspace() or not ch.isprintable() for ch in host):
            raise ValueError(f"host {value!r} contains spaces or control characters; {allowed}")
        return host

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is out of range; allowed: 1 to 65535")
        return value

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


# --------------------------------------------------------------------------
# Matching key syntax (PS3.4 C.2.2.2, PS3.5 6.2)

_WILDCARDS = frozenset("*?")
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\Z")
_DATE = re.compile(r"[0-9]{8}\Z")
_TIME = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?\Z")
_DATETIME = re.compile(
    r"[0-9]{4}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?)?)?)?"
    r"(?:[+-][0-9]{4})?\Z"
)
_CS = re.compile(r"[A-Z0-9 _*?]*\Z")
_IS = re.compile(r"[+-]?[0-9]+\Z")
_DS = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_AS = re.compile(r"[0-9]{3}[DWMY]\Z")

# Text VRs: maximum length in characters (None: no limit beyond the VR's).
_TEXT_LENGTHS: dict[str, int | None] = {
    "LO": 64,
    "SH": 16,
    "LT": 10240,
    "ST": 1024,
    "UC": None,
    "UR": None,
    "UT": None,
}
# Long texts may hold these format effectors (PS3.5 6.1.3).
_FORMAT_EFFECTORS = frozenset("\t\n\f\r")

_ALLOWED: dict[str, str] = {
    "DA": (
        "a date YYYYMMDD, or a range YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD- "
        "(start not after end); no wildcards"
    ),
    "TM": (
        "a time HH, HHMM, HHMMSS or HHMMSS.ffffff (1 to 6 fraction digits), or a "
        "range A-B, -B or A- of them (start not after end); no wildcards"
    ),
    "DT": (
        "a date-time YYYY[MM[DD[HH[MM[SS[.ffffff]]]]]] with an optional offset "
        "+HHMM or -HHMM, or a range A-B, -B or A- of them; no wildcards"
    ),
    "UI": (
        "a UID (at most 64 characters: digits and dots, no empty component, no "
        "leading zero in a component other than '0'), or a backslash-separated "
        "list of UIDs; no wildcards"
    ),
    "UI1": (
        "a single UID (at most 64 characters: digits and dots, no empty "
        "component, no leading zero in a component other than '0'); no list, "
        "no wildcards"
    ),
    "PN": (
        "a person name: up to 3 '='-separated groups of up to 5 '^'-separated "
        "components, at most 64 characters per group; wildcards * and ? "
        "allowed; no backslash or control characters"
    ),
    "CS": (
        "at most 16 characters among uppercase A-Z, digits, space and "
        "underscore; wildcards * and ? allowed"
    ),
    "AE": "at most 16 printable ASCII characters, no backslash; wildcards * and ? allowed",
    "IS": "an integer string (optional sign and digits, at most 12 characters); no wildcards",
    "DS": "a decimal string such as 1.5 or -2e3 (at most 16 characters); no wildcards",
    "AS": "an age string nnnD, nnnW, nnnM or nnnY; no wildcards",
}
for _vr, _length in _TEXT_LENGTHS.items():
    _limit = f"at most {_length} characters" if _length else "any length"
    _ALLOWED[_vr] = f"{_limit}, no backslash or control characters; wildcards * and ? allowed"


class _Bad(ValueError):
    """A matching key value is wrong; the message says how."""


def _is(part: str, whole: bool) -> str:
    """The verb of a message about ``part`` of a value, or about all of it."""
    return "is" if whole else f"has {part!r}, which is"


def _has(part: str, whole: bool) -> str:
    return "has" if whole else f"has {part!r} with"


def _check_uid(uid: str, whole: bool) -> None:
    if not uid:
        raise _Bad("has an empty UID in the list")
    if _WILDCARDS & set(uid):
        raise _Bad("contains a wildcard, which UIDs do not allow (PS3.4 C.2.2.2.4)")
    if len(uid) > 64:
        raise _Bad(f"{_has(uid, whole)} {len(uid)} characters")
    if not _UID.match(uid):
        raise _Bad(f"{_is(uid, whole)} not a valid UID")


def _check_uids(value: str, single: bool) -> None:
    uids = value.split("\\")
    if single and len(uids) > 1:
        raise _Bad(
            "is a list; the unique keys of the levels above the query level "
            "take one UID (PS3.4 C.4.1.2.2.1)"
        )
    for uid in uids:
        _check_uid(uid, whole=len(uids) == 1)


def _no_wildcards(value: str) -> None:
    if _WILDCARDS & set(value):
        raise _Bad("contains a wildcard, which this value representation does not allow")


def _split_range(value: str) -> tuple[str, str] | None:
    """Split ``A-B``, ``-B`` or ``A-`` of DA or TM; None for a single value."""
    if "-" not in value:
        return None
    if value.count("-") > 1 or value == "-":
        raise _Bad("is not a single value or a range A-B, -B or A-")
    start, _, end = value.partition("-")
    return start, end


def _parse_date(text: str, whole: bool) -> date:
    if not _DATE.match(text):
        raise _Bad(f"{_is(text, whole)} not a date YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise _Bad(f"{_is(text, whole)} not a calendar date") from None


def _check_date(value: str) -> None:
    _no_wildcards(value)
    bounds = _split_range(value)
    if bounds is None:
        _parse_date(value, whole=True)
        return
    start, end = (_parse_date(text, whole=False) if text else None for text in bounds)
    if start is not None and end is not None and start > end:
        raise _Bad("is a range whose start is after its end")


def _parse_time(text: str, *, upper: bool, whole: bool) -> tuple[int, int, int, int]:
    """A time as (hour, minute, second, microsecond).

    Missing parts are taken as low as they go for a range's start and as high
    as they go for its end (``upper``), so ``10`` spans 10:00:00 to
    10:59:59.999999.
    """
    match = _TIME.match(text)
    if not match:
        raise _Bad(f"{_is(text, whole)} not a time HH, HHMM, HHMMSS or HHMMSS.ffffff")
    hh, mm, ss, frac = match.groups()
    if int(hh) > 23:
        raise _Bad(f"{_has(text, whole)} hour {hh}; hours go from 00 to 23")
    if mm is not None and int(mm) > 59:
        raise _Bad(f"{_has(text, whole)} minute {mm}; minutes go from 00 to 59")
    if ss is not None and int(ss) > 60:
        raise _Bad(f"{_has(text, whole)} second {ss}; seconds go from 00 to 60 (leap second)")
    fill = 59 if upper else 0
    micro = int(frac.ljust(6, "9" if upper else "0")) if frac else (999999 if upper else 0)
    return (
        int(hh),
        int(mm) if mm is not None else fill,
        int(ss) if ss is not None else fill,
        micro,
    )


def _check_time(value: str) -> None:
    _no_wildcards(value)
    bounds = _split_range(value)
    if bounds is None:
        _parse_time(value, upper=False, whole=True)
        return
    start_text, end_text = bounds
    start = _parse_time(start_text, upper=False, whole=False) if start_text else None
    end = _parse_time(end_text, upper=True, whole=False) if end_text else None
    if start is not None and end is not None and start > end:
        raise _Bad(
            "is a range whose start is after its end (range matching across "
            "midnight is not supported, PS3.4 C.2.2.2.5.2)"
        )


def _check_datetime(value: str) -> None:
    _no_wildcards(value)
    if _DATETIME.match(value):
        return
    # The range's "-" may also be an offset's sign: try every split.
    for at, ch in enumerate(value):
        if ch != "-":
            continue
        start, end = value[:at], value[at + 1 :]
        if (start or end) and all(not part or _DATETIME.match(part) for part in (start, end)):
            return
    raise _Bad("is not a date-time or a range of date-times")


def _check_characters(value: str, *, effectors: bool = False) -> None:
    for ch in value:
        if ch == "\\":
            raise _Bad("contains a backslash, the value delimiter")
        if (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0) and not (
            effectors and ch in _FORMAT_EFFECTORS
        ):
            raise _Bad(f"contains the control character {ch!r}")


def _check_length(value: str, limit: int | None) -> None:
    if limit is not None and len(value) > limit:
        raise _Bad(f"has {len(value)} characters")


def _check_person_name(value: str) -> None:
    _check_characters(value)
    groups = value.split("=")
    if len(groups) > 3:
        raise _Bad(f"has {len(groups)} '='-separated component groups")
    for group in groups:
        if group.count("^") > 4:
            raise _Bad(f"has {group.count('^') + 1} '^'-separated components in {group!r}")
        if len(group) > 64:
            raise _Bad(f"has a component group of {len(group)} characters")


def _check_code_string(value: str) -> None:
    if not _CS.match(value):
        hint = f" (did you mean {value.upper()!r}?)" if _CS.match(value.upper()) else ""
        raise _Bad(f"holds characters a code string does not allow{hint}")
    _check_length(value, 16)


def _check_ae_match(value: str) -> None:
    if any(ord(ch) < 0x20 or ord(ch) > 0x7E or ch == "\\" for ch in value):
        raise _Bad("holds a character an AE title does not allow")
    _check_length(value, 16)


def _check_number(value: str, pattern: re.Pattern[str], limit: int) -> None:
    _no_wildcards(value)
    if not pattern.match(value):
        raise _Bad("is not a number of this form")
    _check_length(value, limit)


def _check_age(value: str) -> None:
    _no_wildcards(value)
    if not _AS.match(value):
        raise _Bad("is not an age string")


_CHECKS: dict[str, Callable[[str], None]] = {
    "DA": _check_date,
    "TM": _check_time,
    "DT": _check_datetime,
    "UI": lambda value: _check_uids(value, single=False),
    "UI1": lambda value: _check_uids(value, single=True),
    "PN": _check_person_name,
    "CS": _check_code_string,
    "AE": _check_ae_match,
    "IS": lambda value: _check_number(value, _IS, 12),
    "DS": lambda value: _check_number(value, _DS, 16),
    "AS": _check_age,
}


def _text_check(limit: int | None, effectors: bool) -> Callable[[str], None]:
    def check(value: str) -> None:
        _check_characters(value, effectors=effectors)
        _check_length(value, limit)

    return check


for _vr, _length in _TEXT_LENGTHS.items():
    _CHECKS[_vr] = _text_check(_length, effectors=_vr in {"LT", "ST", "UT"})


def _check_match(kind: str, value: str, name: str, *, required: bool = False) -> str:
    """Check one matching key value of ``kind`` (a VR, or UI1); return it stripped.

    ``name`` is the field or keyword, for the message.
    """
    text = value.strip(" ")
    if not text:
        if required:
            raise ValueError(
                f"{name} {value!r} is empty, but this key is required; allowed: {_ALLOWED[kind]}"
            )
        return ""  # universal matching, PS3.4 C.2.2.2.3
    try:
        _CHECKS[kind](text)
    except _Bad as exc:
        raise ValueError(f"{name} {value!r} {exc}; allowed: {_ALLOWED[kind]}") from None
    return text


def _rule(kind: str, *, required: bool = False) -> AfterValidator:
    def check(value: str, info: ValidationInfo) -> str:
        return _check_match(kind, value, str(info.field_name), required=required)

    return AfterValidator(check)


def _refuse_wildcard_number(value: object, info: ValidationInfo) -> object:
    if isinstance(value, bool):
        raise ValueError(f"{info.field_name} {value!r} is a boolean; allowed: an integer")
    if isinstance(value, str) and _WILDCARDS & set(value):
        raise ValueError(
            f"{info.field_name} {value!r} contains a wildcard, which numbers do not "
            "allow; allowed: an integer"
        )
    return value


_DateMatch = Annotated[str, _rule("DA")]
_TimeMatch = Annotated[str, _rule("TM")]
_UIDMatch = Annotated[str, _rule("UI")]
_ParentUID = Annotated[str, _rule("UI1", required=True)]
_NameMatch = Annotated[str, _rule("PN")]
_LongMatch = Annotated[str, _rule("LO")]
_ShortMatch = Annotated[str, _rule("SH")]
_CodeMatch = Annotated[str, _rule("CS")]
# IS range, PS3.5 6.2.
_NumberMatch = Annotated[
    int, BeforeValidator(_refuse_wildcard_number), Field(ge=-(2**31) + 1, le=2**31 - 1)
]


# --------------------------------------------------------------------------
# Keywords and elements

# Set by to_identifier itself; neither a matching nor a return key.
_RESERVED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
# VRs whose matching key a string can express.
_STRING_VRS = frozenset(_CHECKS) - {"UI1"}


def _known_keyword(keyword: str, what: str) -> BaseTag:
    """The tag of a data set keyword, or a ValueError naming ``what`` and the keyword."""
    tag = tag_for_keyword(keyword) if keyword else None
    if tag is None:
        close = difflib.get_close_matches(keyword, keyword_dict, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{what}: {keyword!r} is not a DICOM keyword{hint}; allowed: keywords of "
            "the pydicom data dictionary, such as 'PatientID'"
        )
    if keyword in _RESERVED:
        raise ValueError(f"{what}: {keyword!r} is set by to_identifier(); leave it out")
    if Tag(tag).group in (0x0000, 0x0002, 0xFFFE):
        raise ValueError(
            f"{what}: {keyword!r} is a command, file meta or delimiter element, "
            "not a data set attribute"
        )
    return Tag(tag)


def _vr_of(keyword: str) -> str:
    # Ambiguous VRs ("US or SS") only reach here as empty return keys, where
    # any of them encodes the same zero-length value.
    return dictionary_VR(keyword).split(" or ")[0]


def _element(keyword: str, value: Any) -> DataElement:
    # Matching syntax goes beyond the VRs' own (ranges, wildcards, lists), and
    # it has been checked above: pydicom's VR check would only warn wrongly.
    tag = Tag(keyword)
    vr = _vr_of(keyword)
    if vr == "SQ" and value is None:
        value = []
    elif vr == "UI" and isinstance(value, str) and "\\" in value:
        value = value.split("\\")
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


# --------------------------------------------------------------------------
# Results


def _plain_number(text: str, kind: type[int] | type[float]) -> int | float | str | None:
    text = text.strip(" \x00")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if kind is int:
        if math.isfinite(number) and number.is_integer():
            return int(number)
        return text
    return number


def _numbers(elem: DataElement | RawDataElement, kind: type[int] | type[float]) -> Any:
    """IS or DS values as numbers, read without pydicom's conversion.

    pydicom warns on an invalid IS or DS; peers send "12 " and worse, so this
    reads the raw text itself. Returns a number, a list for several values,
    None when empty, or the text when it is no number at all.
    """
    value: Any = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").split("\\")
    elif isinstance(value, str):
        value = value.split("\\")
    elif not isinstance(value, (list, tuple, MultiValue)):
        value = [value]
    parsed: list[Any] = []
    for item in value:
        if item is None:
            continue
        if isinstance(item, str):
            number = _plain_number(item, kind)
        elif kind is int and isinstance(item, (int, float)) and float(item).is_integer():
            number = int(item)
        elif kind is float and isinstance(item, (int, float)):
            number = float(item)
        else:
            number = str(item)
        if number is not None:
            parsed.append(number)
    if not parsed:
        return None
    return parsed[0] if len(parsed) == 1 else parsed


def _text(value: Any) -> str | None:
    """A text value as one string, values joined by backslashes; None when empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, (list, tuple, MultiValue)):
        parts = [_text(item) or "" for item in value]
        joined = "\\".join(parts)
        return joined if joined.strip("\\") else None
    text = str(value).strip(" \x00")
    return text or None


def _vr_for(ds: Dataset, tag: BaseTag) -> str | None:
    elem = ds.get_item(tag)
    if elem is not None and elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _value(ds: Dataset, tag: BaseTag) -> Any:
    """The value of any element in plain Python terms, for ``Result.extra``."""
    vr = _vr_for(ds, tag)
    if vr in ("IS", "DS"):
        elem = ds.get_item(tag)
        assert elem is not None
        return _numbers(elem, int if vr == "IS" else float)
    value = ds[tag].value
    if vr == "SQ":
        return list(value) if value else []
    if isinstance(value, (bytes, int, float)):
        return value
    if isinstance(value, (list, tuple, MultiValue)) and any(
        isinstance(item, (int, float)) for item in value
    ):
        return list(value)
    return _text(value)


class Result(BaseModel):
    """The shared shape of C-FIND results: typed fields and ``extra``.

    ``extra`` holds every other key the peer returned, by keyword (by tag,
    as ``"(gggg,eeee)"``, for elements without one): text as one string
    (several values joined by backslashes), IS and DS as numbers, sequences as
    lists of datasets, empty values as None.
    """

    model_config = ConfigDict(extra="forbid")

    keywords: ClassVar[Mapping[str, str]] = {}
    """Field name to DICOM keyword, for the typed fields."""
    unique_key: ClassVar[str] = ""
    """The field holding the level's unique key, required in every result."""

    extra: dict[str, Any] = {}

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Self:
        """Build a result from one C-FIND response identifier.

        Counts and numbers (IS) become ints, padding tolerated, empty as None;
        person names and multi-valued text become strings. Missing or empty
        keys become None. Raises ValueError only when the unique key of the
        level is missing or empty.
        """
        data: dict[str, Any] = {}
        for name, keyword in cls.keywords.items():
            tag = Tag(keyword)
            if tag not in ds:
                data[name] = None
            elif _vr_for(ds, tag) == "IS":
                elem = ds.get_item(tag)
                assert elem is not None
                number = _numbers(elem, int)
                if isinstance(number, list):
                    number = number[0]
                if number is not None and not isinstance(number, int):
                    log.warning("%s: ignoring %s %r, not an integer", cls.__name__, keyword, number)
                    number = None
                data[name] = number
            else:
                data[name] = _text(ds[tag].value)
        if cls.unique_key and data.get(cls.unique_key) is None:
            keyword = cls.keywords[cls.unique_key]
            raise ValueError(
                f"{cls.__name__}.from_dataset: the response has no {keyword} "
                f"{Tag(keyword)}, the unique key of its level (or it is empty)"
            )
        known = {Tag(keyword) for keyword in cls.keywords.values()}
        known |= {Tag(keyword) for keyword in _RESERVED}
        extra: dict[str, Any] = {}
        # Iterating the data set itself would convert every raw element.
        for tag in ds.keys():  # noqa: SIM118
            if tag in known:
                continue
            keyword = keyword_for_tag(tag) or str(Tag(tag))
            extra[keyword] = _value(ds, Tag(tag))
        data["extra"] = extra
        return cls(**data)


class PatientResult(Result):
    """One PATIENT level C-FIND match (Patient Root model)."""

    keywords: ClassVar[Mapping[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
        "number_of_patient_related_studies": "NumberOfPatientRelatedStudies",
    }
    unique_key: ClassVar[str] = "patient_id"

    patient_id: str
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    number_of_patient_related_studies: int | None = None


class StudyResult(Result):
    """One STUDY level C-FIND match."""

    keywords: ClassVar[Mapping[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "study_instance_uid": "StudyInstanceUID",
        "study_date": "StudyDate",
        "study_time": "StudyTime",
        "study_description": "StudyDescription",
        "accession_number": "AccessionNumber",
        "modalities_in_study": "ModalitiesInStudy",
        "number_of_study_related_series": "NumberOfStudyRelatedSeries",
        "number_of_study_related_instances": "NumberOfStudyRelatedInstances",
    }
    unique_key: ClassVar[str] = "study_instance_uid"

    patient_id: str | None = None
    patient_name: str | None = None
    study_instance_uid: str
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    modalities_in_study: str | None = None
    """All modalities of the study, backslash-separated, such as ``CT\\PT``."""
    number_of_study_related_series: int | None = None
    number_of_study_related_instances: int | None = None


class SeriesResult(Result):
    """One SERIES level C-FIND match."""

    keywords: ClassVar[Mapping[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "modality": "Modality",
        "series_number": "SeriesNumber",
        "series_description": "SeriesDescription",
        "number_of_series_related_instances": "NumberOfSeriesRelatedInstances",
    }
    unique_key: ClassVar[str] = "series_instance_uid"

    study_instance_uid: str | None = None
    series_instance_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    number_of_series_related_instances: int | None = None


class ImageResult(Result):
    """One IMAGE level C-FIND match."""

    keywords: ClassVar[Mapping[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID",
        "sop_class_uid": "SOPClassUID",
        "instance_number": "InstanceNumber",
    }
    unique_key: ClassVar[str] = "sop_instance_uid"

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str
    sop_class_uid: str | None = None
    instance_number: int | None = None


# --------------------------------------------------------------------------
# Queries


ResultT = TypeVar("ResultT", bound=Result)


def _has_non_ascii(values: Iterable[object]) -> bool:
    return any(isinstance(value, str) and not value.isascii() for value in values)


class Query(BaseModel, Generic[ResultT]):
    """The shared shape of C-FIND queries (Study Root, or Patient Root for PATIENT).

    ``extra_keys`` adds matching keys by DICOM keyword, each value checked
    against the keyword's VR like the typed fields are; keys of the typed
    fields, sequences and binary VRs are refused there. ``return_keys`` asks
    for more keys back, sent with empty values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: ClassVar[QueryLevel]
    """The Query/Retrieve Level this query is made for."""
    result_type: ClassVar[type[Result]]
    """The result model of the level, whose keys are asked back."""
    keywords: ClassVar[Mapping[str, str]] = {}
    """Field name to DICOM keyword, for the typed fields."""

    extra_keys: dict[str, str] = {}
    return_keys: list[str] = []

    @field_validator("extra_keys")
    @classmethod
    def _check_extra_keys(cls, value: dict[str, str]) -> dict[str, str]:
        typed = {keyword: name for name, keyword in cls.keywords.items()}
        checked: dict[str, str] = {}
        for keyword, text in value.items():
            _known_keyword(keyword, "extra_keys")
            if keyword in typed:
                raise ValueError(f"extra_keys: {keyword!r} has its own field; use {typed[keyword]}")
            vr = _vr_of(keyword)
            if vr not in _STRING_VRS:
                raise ValueError(
                    f"extra_keys: {keyword!r} has VR {vr}, which a string cannot match; "
                    f"allowed: keywords of VR {', '.join(sorted(_STRING_VRS))}"
                )
            checked[keyword] = _check_match(vr, text, f"extra_keys[{keyword!r}]")
        return checked

    @field_validator("return_keys")
    @classmethod
    def _check_return_keys(cls, value: list[str]) -> list[str]:
        for keyword in value:
            _known_keyword(keyword, "return_keys")
        return list(dict.fromkeys(value))

    def to_identifier(self, level: str | None = None) -> Dataset:
        """Build the C-FIND request identifier.

        It holds Query/Retrieve Level (``level``, by default the model's), the
        matching keys set (``None`` fields are left out), every key of the
        result model and of ``return_keys`` with an empty value (universal
        matching, so the peer returns them), and Specific Character Set
        ``ISO_IR 192`` when any value is not ASCII.
        """
        if level is None:
            level = self.level
        elif level.upper() in _LEVELS:
            level = level.upper()
        else:
            raise ValueError(f"level {level!r} is not one of {', '.join(_LEVELS)}")
        ds = Dataset()
        matching: dict[str, Any] = {
            keyword: getattr(self, name)
            for name, keyword in self.keywords.items()
            if getattr(self, name) is not None
        }
        matching.update(self.extra_keys)
        if _has_non_ascii(matching.values()):
            ds.add(_element("SpecificCharacterSet", "ISO_IR 192"))
        ds.add(_element("QueryRetrieveLevel", level))
        for keyword in (*self.result_type.keywords.values(), *self.return_keys):
            ds.add(_element(keyword, None))
        for keyword, value in matching.items():
            ds.add(_element(keyword, value if value != "" else None))
        return ds

    def parse_result(self, ds: Dataset) -> ResultT:
        """Parse one response identifier into this level's result model."""
        return cast(ResultT, self.result_type.from_dataset(ds))


class PatientQuery(Query[PatientResult]):
    """A PATIENT level C-FIND query (Patient Root Query/Retrieve model only)."""

    level: ClassVar[QueryLevel] = "PATIENT"
    result_type: ClassVar[type[Result]] = PatientResult
    keywords: ClassVar[Mapping[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
    }

    patient_id: _LongMatch | None = None
    patient_name: _NameMatch | None = None
    patient_birth_date: _DateMatch | None = None
    patient_sex: _CodeMatch | None = None


class StudyQuery(Query[StudyResult]):
    """A STUDY level C-FIND query.

    ``modality`` matches Modalities in Study (0008,0061). A study's time
    rarely means much without its date; ``study_time`` ranges apply within
    each day.
    """

    level: ClassVar[QueryLevel] = "STUDY"
    result_type: ClassVar[type[Result]] = StudyResult
    keywords: ClassVar[Mapping[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "study_instance_uid": "StudyInstanceUID",
        "study_date": "StudyDate",
        "study_time": "StudyTime",
        "study_description": "StudyDescription",
        "accession_number": "AccessionNumber",
        "modality": "ModalitiesInStudy",
        "referring_physician_name": "ReferringPhysicianName",
    }

    patient_id: _LongMatch | None = None
    patient_name: _NameMatch | None = None
    study_instance_uid: _UIDMatch | None = None
    study_date: _DateMatch | None = None
    study_time: _TimeMatch | None = None
    study_description: _LongMatch | None = None
    accession_number: _ShortMatch | None = None
    modality: _CodeMatch | None = None
    referring_physician_name: _NameMatch | None = None


class SeriesQuery(Query[SeriesResult]):
    """A SERIES level C-FIND query within one study (Study Root model)."""

    level: ClassVar[QueryLevel] = "SERIES"
    result_type: ClassVar[type[Result]] = SeriesResult
    keywords: ClassVar[Mapping[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "modality": "Modality",
        "series_number": "SeriesNumber",
        "series_description": "SeriesDescription",
    }

    study_instance_uid: _ParentUID
    series_instance_uid: _UIDMatch | None = None
    modality: _CodeMatch | None = None
    series_number: _NumberMatch | None = None
    series_description: _LongMatch | None = None


class ImageQuery(Query[ImageResult]):
    """An IMAGE level C-FIND query within one series (Study Root model)."""

    level: ClassVar[QueryLevel] = "IMAGE"
    result_type: ClassVar[type[Result]] = ImageResult
    keywords: ClassVar[Mapping[str, str]] = {
        "study_instance_uid": "StudyInstanceUID",
        "series_instance_uid": "SeriesInstanceUID",
        "sop_instance_uid": "SOPInstanceUID",
        "instance_number": "InstanceNumber",
    }

    study_instance_uid: _ParentUID
    series_instance_uid: _ParentUID
    sop_instance_uid: _UIDMatch | None = None
    instance_number: _NumberMatch | None = None


# --------------------------------------------------------------------------
# Retrieve

_STATUS = re.compile(r"(?:success|pending|cancel|(?:warning|failure)_0x[0-9A-F]{4})\Z")


def status_text(code: int) -> str:
    """Name a C-GET/C-MOVE status code as :attr:`RetrieveResult.status` does.

    ``"success"``, ``"pending"`` or ``"cancel"``, or ``"warning_0xB000"`` and
    ``"failure_0xA701"`` style strings carrying the code (PS3.7 Annex C);
    codes PS3.7 does not classify count as failures.
    """
    if isinstance(code, bool) or not 0 <= code <= 0xFFFF:
        raise ValueError(f"status code {code!r} is not a 16-bit unsigned integer")
    category = status_category(code).value
    if category in ("warning", "failure"):
        return f"{category}_0x{code:04X}"
    return category


class RetrieveResult(BaseModel):
    """The outcome of a C-GET or C-MOVE.

    ``status`` is :func:`status_text` of the final status. The counts are the
    peer's sub-operation counts; ``failed_sop_instances`` the SOP Instance
    UIDs it reported failed. ``instances`` holds the datasets received in
    memory mode and ``paths`` the files written in disk mode.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    status: str
    num_remaining: int = Field(default=0, ge=0)
    num_completed: int = Field(default=0, ge=0)
    num_failed: int = Field(default=0, ge=0)
    num_warning: int = Field(default=0, ge=0)
    failed_sop_instances: list[str] = []
    instances: list[Dataset] = []
    paths: list[Path] = []

    @field_validator("status")
    @classmethod
    def _check_status(cls, value: str) -> str:
        if not _STATUS.match(value):
            raise ValueError(
                f"status {value!r} is not a retrieve status; allowed: 'success', "
                "'pending', 'cancel', 'warning_0xHHHH' or 'failure_0xHHHH' "
                "(uppercase hex digits), as status_text() makes them"
            )
        return value
