"""Matching keys as Python values or DICOM text, and DICOM dates and times read back.

See :mod:`adicom.models` for what they are for.
"""

import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ValidationInfo,
    WithJsonSchema,
)

from adicom.values import (
    STRING_VRS,
    check_match,
    known_keyword,
    vr_of,
)

_DA_TEXT = re.compile(r"([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})\Z")
_TM_TEXT = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(?:\.([0-9]{1,6}))?)?)?\Z")
_DT_TEXT = re.compile(
    r"([0-9]{4})([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?"
    r"(?:\.([0-9]{1,6}))?(?:([+-])([0-9]{2})([0-9]{2}))?\Z"
)


def parse_date(text: str | None) -> date | None:
    """A DA value (``YYYYMMDD``) as a ``datetime.date``; None when empty or malformed.

    Surrounding spaces and NULs are ignored, and the ACR-NEMA form
    ``YYYY.MM.DD`` some old peers still send is read too. Never raises: a
    peer's bad date must not cost the caller its other results.
    """
    match = _DA_TEXT.match((text or "").strip(" \x00"))
    if match is None:
        return None
    try:
        return date(*map(int, match.groups()))
    except ValueError:  # not in the calendar: 20240230
        return None


def parse_time(text: str | None) -> time | None:
    """A TM value (``HH[MM[SS[.ffffff]]]``) as a ``datetime.time``; None when empty or malformed.

    Missing parts are zero (``10`` is 10:00:00); a leap second (60) is read
    as 59, since ``datetime.time`` has none; the ACR-NEMA form ``HH:MM:SS``
    is read too. Never raises.
    """
    match = _TM_TEXT.match((text or "").strip(" \x00"))
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    try:
        return time(
            int(hour),
            int(minute or 0),
            min(int(second or 0), 59),
            int(fraction.ljust(6, "0")) if fraction else 0,
        )
    except ValueError:  # hour 24, minute 61
        return None


def parse_datetime(text: str | None) -> datetime | None:
    """A DT value as a ``datetime.datetime``; None when empty or malformed.

    ``YYYY[MM[DD[HH[MM[SS[.ffffff]]]]]]`` with an optional UTC offset
    ``+HHMM`` or ``-HHMM``, which makes the result timezone-aware; missing
    parts are as low as they go (``2024`` is 2024-01-01 00:00), a leap second
    is read as 59. Never raises.
    """
    match = _DT_TEXT.match((text or "").strip(" \x00"))
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    if fraction is not None and second is None:
        return None  # a fraction belongs to the seconds
    if off_m is not None and int(off_m) > 59:
        return None
    try:
        zone = None
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            min(int(second or 0), 59),
            int(fraction.ljust(6, "0")) if fraction else 0,
            tzinfo=zone,
        )
    except ValueError:  # not in the calendar, or an offset of a day or more
        return None


DateRange = tuple[date | None, date | None]
"""A range of dates (or date-times, for DT): ``(start, end)``, None for an open end."""
TimeRange = tuple[time | None, time | None]
"""A range of times: ``(start, end)``, None for an open end."""
KeyValue = str | date | time | DateRange | TimeRange
"""What an ``extra_keys`` value may be: DICOM matching text, or for a DA, TM or DT
keyword a ``datetime.date``, ``datetime.time``, ``datetime.datetime`` or a range
of them (see :data:`DateKey`, :data:`TimeKey`)."""
# The Python values each VR takes, for messages; the DICOM text forms follow.
_PYTHON_ALLOWED = {
    "DA": (
        "a datetime.date (a datetime counts as its day), a (start, end) tuple of "
        "them with None for an open end, or the text YYYYMMDD, YYYYMMDD-YYYYMMDD, "
        "-YYYYMMDD or YYYYMMDD-"
    ),
    "TM": (
        "a datetime.time without tzinfo, a (start, end) tuple of them with None for "
        "an open end, or the text HHMMSS[.ffffff] (or HH, HHMM) and its ranges A-B, -B, A-"
    ),
    "DT": (
        "a datetime.datetime (with tzinfo for an offset) or a datetime.date, a (start, "
        "end) tuple of them with None for an open end, or the text "
        "YYYYMMDDHHMMSS[.ffffff][+HHMM] (any leading part of it) and its ranges A-B, -B, A-"
    ),
}
_PYTHON_HINT = {
    "DA": "or a datetime.date, or a (start, end) tuple of them with None for an open end",
    "TM": "or a datetime.time, or a (start, end) tuple of them with None for an open end",
    "DT": (
        "or a datetime.datetime or datetime.date, or a (start, end) tuple of them "
        "with None for an open end"
    ),
}


def _date_text(value: date) -> str:
    # Not strftime: it does not pad years before 1000 on every platform.
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def _time_text(value: time) -> str:
    text = f"{value.hour:02d}{value.minute:02d}{value.second:02d}"
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def _datetime_text(value: date, name: str, given: object) -> str:
    """DT text (PS3.5 6.2): a date alone, or date, time and the UTC offset if aware."""
    if not isinstance(value, datetime):
        return _date_text(value)
    text = _date_text(value) + _time_text(value.time())
    offset = value.utcoffset()
    if offset is None:
        return text
    minutes, seconds = divmod(int(offset.total_seconds()), 60)
    if seconds or offset.microseconds:
        raise ValueError(
            f"{name} {given!r} has the UTC offset {offset}, which is not whole minutes; "
            f"allowed: {_PYTHON_ALLOWED['DT']}"
        )
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}{minutes:02d}"


def _a(value: object) -> str:
    """The type of ``value`` with its article, for messages: "an int", "a list"."""
    kind = type(value).__name__
    if isinstance(value, date | time):
        kind = f"datetime.{kind}"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _one_text(kind: str, value: object, name: str, given: object) -> str:
    """One Python value of a DA, TM or DT key as its DICOM text."""
    if kind == "DA" and isinstance(value, date):
        return _date_text(value)
    if kind == "TM" and isinstance(value, time):
        if value.utcoffset() is not None:
            raise ValueError(
                f"{name} {given!r} has a time zone, which TM cannot say (PS3.5 6.2); "
                f"allowed: {_PYTHON_ALLOWED['TM']}"
            )
        return _time_text(value)
    if kind == "DT" and isinstance(value, date):
        return _datetime_text(value, name, given)
    what = _a(value) if value is given else f"{value!r}, which is {_a(value)}"
    verb = "is" if value is given else "has"
    raise ValueError(f"{name} {given!r} {verb} {what}; allowed: {_PYTHON_ALLOWED[kind]}")


def _bound(kind: str, value: date | time, end: bool) -> date | time:
    """A range end in a form comparable with the other end."""
    if kind == "DA":
        assert isinstance(value, date)
        return value.date() if isinstance(value, datetime) else value
    if kind == "DT" and isinstance(value, date) and not isinstance(value, datetime):
        # A date in a DT range stands for its whole day (PS3.4 C.2.2.2.5.1).
        return datetime.combine(value, time.max if end else time.min)
    return value


def _starts_after_end(kind: str, start: date | time, end: date | time) -> bool:
    try:
        return bool(_bound(kind, start, end=False) > _bound(kind, end, end=True))  # type: ignore[operator]
    except TypeError:
        return False  # one end with a UTC offset, one without: no order to check


def _key_text(kind: str, value: object, name: str) -> object:
    """A DA, TM or DT key given as a Python value, as its DICOM text; text passes as it is.

    A ``(start, end)`` tuple is a range (PS3.4 C.2.2.2.5): ``A-B``, ``-B``
    (no start) or ``A-`` (no end).
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, tuple):
        return _one_text(kind, value, name, value)
    if len(value) != 2:
        raise ValueError(
            f"{name} {value!r} is a tuple of {len(value)} item{'' if len(value) == 1 else 's'}, "
            "not (start, end); "
            f"allowed: {_PYTHON_ALLOWED[kind]}"
        )
    start, end = value
    if start is None and end is None:
        raise ValueError(
            f"{name} {value!r} is a range open at both ends; allowed: "
            f"{_PYTHON_ALLOWED[kind]}, or '' for universal matching"
        )
    texts = [_one_text(kind, part, name, value) if part is not None else "" for part in value]
    if start is not None and end is not None and _starts_after_end(kind, start, end):
        midnight = " (ranges across midnight are not supported, PS3.4 C.2.2.2.5.2)"
        raise ValueError(
            f"{name} {value!r} is a range whose start is after its end"
            f"{midnight if kind == 'TM' else ''}; allowed: {_PYTHON_ALLOWED[kind]}"
        )
    return "-".join(texts)


def _checked_text(kind: str, value: str, name: str) -> str:
    """``check_match`` of DICOM text, its message saying the Python values allowed too."""
    try:
        return check_match(kind, value, name)
    except ValueError as exc:
        raise ValueError(f"{exc}; {_PYTHON_HINT[kind]}") from None


def _python_key(kind: str) -> BeforeValidator:
    def convert(value: object, info: ValidationInfo) -> object:
        return _key_text(kind, value, str(info.field_name))

    return BeforeValidator(convert)


def _dicom_key(kind: str) -> AfterValidator:
    def check(value: object, info: ValidationInfo) -> str:
        assert isinstance(value, str)  # _python_key made any other value text
        return _checked_text(kind, value, str(info.field_name))

    return AfterValidator(check)


# JSON (a FastAPI body, model_validate_json) carries the DICOM text; say so in
# the schema rather than advertise ISO dates that would be refused.
DateKey = Annotated[
    str | date | DateRange,
    _python_key("DA"),
    _dicom_key("DA"),
    WithJsonSchema(
        {"type": "string", "description": "DA matching: YYYYMMDD or a range A-B, -B, A-"}
    ),
]
"""A DA matching key: a ``datetime.date``, a ``(start, end)`` range of them, or DICOM text.

Kept as its DICOM text (``20240102``, ``20240101-20240131``, ``-20240131``,
``20240101-``); a ``datetime.datetime`` counts as its day.
"""
TimeKey = Annotated[
    str | time | TimeRange,
    _python_key("TM"),
    _dicom_key("TM"),
    WithJsonSchema(
        {"type": "string", "description": "TM matching: HHMMSS.ffffff or a range A-B, -B, A-"}
    ),
]
"""A TM matching key: a ``datetime.time``, a ``(start, end)`` range of them, or DICOM text.

Kept as its DICOM text (``103000``, ``103000.250000``, ``080000-120000``);
a time with a time zone is refused, TM has none.
"""
_DATE_VRS = frozenset({"DA", "TM", "DT"})


def checked_extra_keys(value: object, typed: Mapping[str, str]) -> object:
    """``extra_keys`` checked against each keyword's VR, Python dates and times made text.

    ``typed`` maps the keywords that have a field of their own to that field.
    """
    if not isinstance(value, Mapping):
        return value  # pydantic says that a dictionary is expected
    checked: dict[str, str] = {}
    for keyword, given in value.items():
        if not isinstance(keyword, str):
            raise ValueError(
                f"extra_keys: {keyword!r} is {_a(keyword)}; allowed: keywords of the "
                "pydicom data dictionary, such as 'PatientID'"
            )
        known_keyword(keyword, "extra_keys")
        if keyword in typed:
            raise ValueError(f"extra_keys: {keyword!r} has its own field; use {typed[keyword]}")
        vr = vr_of(keyword)
        if vr not in STRING_VRS:
            raise ValueError(
                f"extra_keys: {keyword!r} has VR {vr}, which a string cannot match; "
                f"allowed: keywords of VR {', '.join(sorted(STRING_VRS))}"
            )
        name = f"extra_keys[{keyword!r}]"
        if vr in _DATE_VRS:
            text = _key_text(vr, given, name)
            assert isinstance(text, str)
            checked[keyword] = _checked_text(vr, text, name)
        elif isinstance(given, str):
            checked[keyword] = check_match(vr, given, name)
        else:
            raise ValueError(
                f"{name} {given!r} is {_a(given)}; allowed: text (VR {vr}); Python "
                "dates and times only for keywords of VR DA, TM or DT"
            )
    return checked
