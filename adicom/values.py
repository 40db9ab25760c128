"""DICOM values at the edge: the checks of matching keys, and the reading of returned values.

The pydantic models of :mod:`adicom.models` are built from the annotated
types here; each check runs once, where users hand us data, with a message
that says which field, what value, and what is allowed.

Matching keys follow PS3.4 C.2.2.2 and the VRs of PS3.5 6.2:

- ``""`` is *universal matching* (C.2.2.2.3): the key is sent with an empty
  value and matches everything. The unique keys a level requires
  (:data:`ParentUID`) refuse it.
- Surrounding spaces are removed: PS3.5 6.2 makes them insignificant.
- Wildcards ``*`` and ``?`` (C.2.2.2.4) are allowed in text keys (AE, CS, LO,
  PN, SH and the long text VRs) and refused in UIDs, dates, times and numbers.
- Dates (DA) and times (TM) accept a single value or a range (C.2.2.2.5):
  ``A-B``, ``-B``, ``A-``, with ``A`` not after ``B`` (ranges across midnight
  are not supported by the standard). Dates must exist in the calendar.
- UIDs accept a backslash-separated list (List of UID matching, C.2.2.2.2),
  except the unique keys of the levels above the query level, which must be a
  single UID (C.4.1.2.2.1).
- Text may hold any Unicode character but control characters and backslash.

Returned values are read leniently (:func:`read_text`, :func:`read_numbers`,
:func:`read_value`): a peer's odd but legal answer (empty values, padded
numbers) never raises.
"""

import difflib
import functools
import math
import re
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = [
    "AETitle",
    "CodeMatch",
    "DateMatch",
    "LongMatch",
    "NameMatch",
    "NumberMatch",
    "ParentUID",
    "RESERVED_KEYWORDS",
    "STRING_VRS",
    "ShortMatch",
    "TimeMatch",
    "UIDMatch",
    "check_match",
    "element",
    "known_keyword",
    "read_numbers",
    "read_text",
    "read_value",
    "vr_in",
    "vr_of",
]

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


def check_match(kind: str, value: str, name: str, *, required: bool = False) -> str:
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
        return check_match(kind, value, str(info.field_name), required=required)

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


DateMatch = Annotated[str, _rule("DA")]
"""A DA matching key: a date or a range of dates."""
TimeMatch = Annotated[str, _rule("TM")]
"""A TM matching key: a time or a range of times."""
UIDMatch = Annotated[str, _rule("UI")]
"""A UI matching key: a UID or a backslash-separated list of UIDs."""
ParentUID = Annotated[str, _rule("UI1", required=True)]
"""The unique key of a level above the query's: one UID, required."""
NameMatch = Annotated[str, _rule("PN")]
"""A PN matching key, wildcards allowed."""
LongMatch = Annotated[str, _rule("LO")]
"""A LO matching key, wildcards allowed."""
ShortMatch = Annotated[str, _rule("SH")]
"""A SH matching key, wildcards allowed."""
CodeMatch = Annotated[str, _rule("CS")]
"""A CS matching key, wildcards allowed."""
NumberMatch = Annotated[
    int, BeforeValidator(_refuse_wildcard_number), Field(ge=-(2**31) + 1, le=2**31 - 1)
]
"""An IS matching key, as an int in the range of IS (PS3.5 6.2)."""


# --------------------------------------------------------------------------
# Keywords and elements

RESERVED_KEYWORDS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
"""Keywords set by ``Query.to_identifier`` itself; neither a matching nor a return key."""
STRING_VRS = frozenset(_CHECKS) - {"UI1"}
"""The VRs whose matching key a string can express."""


def known_keyword(keyword: str, what: str) -> BaseTag:
    """The tag of a data set keyword, or a ValueError naming ``what`` and the keyword."""
    tag = tag_for_keyword(keyword) if keyword else None
    if tag is None:
        close = difflib.get_close_matches(keyword, keyword_dict, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{what}: {keyword!r} is not a DICOM keyword{hint}; allowed: keywords of "
            "the pydicom data dictionary, such as 'PatientID'"
        )
    if keyword in RESERVED_KEYWORDS:
        raise ValueError(f"{what}: {keyword!r} is set by to_identifier(); leave it out")
    if Tag(tag).group in (0x0000, 0x0002, 0xFFFE):
        raise ValueError(
            f"{what}: {keyword!r} is a command, file meta or delimiter element, "
            "not a data set attribute"
        )
    return Tag(tag)


@functools.lru_cache(maxsize=4096)
def vr_of(keyword: str) -> str:
    """The VR of a keyword in the data dictionary; the first of an ambiguous one."""
    # Ambiguous VRs ("US or SS") only reach here as empty return keys, where
    # any of them encodes the same zero-length value.
    return dictionary_VR(keyword).split(" or ")[0]


@functools.lru_cache(maxsize=4096)
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    """A keyword's tag and VR, looked up once (pydicom's lookups cost microseconds each)."""
    return Tag(keyword), vr_of(keyword)


def element(keyword: str, value: Any) -> DataElement:
    """A data element of an identifier: ``None`` is an empty value, a UID list is split."""
    # Matching syntax goes beyond the VRs' own (ranges, wildcards, lists), and
    # it has been checked here already: pydicom's VR check would only warn wrongly.
    tag, vr = _tag_and_vr(keyword)
    if vr == "SQ" and value is None:
        value = []
    elif vr == "UI" and isinstance(value, str) and "\\" in value:
        value = value.split("\\")
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


# --------------------------------------------------------------------------
# Returned values (C-FIND responses), read leniently


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


def read_numbers(elem: DataElement | RawDataElement, kind: type[int] | type[float]) -> Any:
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


def read_text(value: Any) -> str | None:
    """A text value as one string, values joined by backslashes; None when empty."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, (list, tuple, MultiValue)):
        parts = [read_text(item) or "" for item in value]
        joined = "\\".join(parts)
        return joined if joined.strip("\\") else None
    text = str(value).strip(" \x00")
    return text or None


def vr_in(ds: Dataset, tag: BaseTag) -> str | None:
    """The VR of an element of ``ds``: its own, else the dictionary's; None if unknown."""
    elem = ds.get_item(tag)
    if elem is not None and elem.VR:
        return str(elem.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def read_value(ds: Dataset, tag: BaseTag) -> Any:
    """The value of any element in plain Python terms, for ``Result.extra``."""
    vr = vr_in(ds, tag)
    if vr in ("IS", "DS"):
        elem = ds.get_item(tag)
        assert elem is not None
        return read_numbers(elem, int if vr == "IS" else float)
    value = ds[tag].value
    if vr == "SQ":
        return list(value) if value else []
    if isinstance(value, (bytes, int, float)):
        return value
    if isinstance(value, (list, tuple, MultiValue)) and any(
        isinstance(item, (int, float)) for item in value
    ):
        return list(value)
    return read_text(value)
