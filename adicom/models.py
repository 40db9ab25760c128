"""Pydantic models at the edge of adicom: peers, C-FIND queries and results, retrieve outcomes.

This is where users hand us data (STYLE.md section 4), so everything is
checked here, once, with messages that say which field, what value, and what
is allowed. The protocol core below never sees an unchecked value. The
checks of each value representation, and the matching rules of PS3.4
C.2.2.2 they apply, are in :mod:`adicom.values`.

In a query, ``None`` leaves a key out of the matching keys and ``""`` is
universal matching. Every typed field except ``referring_physician_name`` is
also asked back anyway (see :meth:`Query.to_identifier`), so for them ``""``
and ``None`` build the same identifier. An identifier holding non-ASCII text
is sent with Specific Character Set ``ISO_IR 192`` (UTF-8).

Dates and times may be given as Python values: a ``datetime.date`` for a
DA key, a ``datetime.time`` for TM, a ``datetime.datetime`` for DT (in
``extra_keys``), and a ``(start, end)`` tuple of them for a range, ``None``
for an open end. They are turned into their DICOM text (``20240102``,
``103000.5``, ``20240102103000+0100``, ``20240101-20240131``, ``-20240131``)
when the model is made, so the fields always hold text; the DICOM text
itself is taken as before.

Results are parsed leniently: a peer's odd answer (missing keys, empty
values, padded numbers, even a match without the unique key of its level)
never raises. Each result keeps the peer's data set in ``result.dataset``.
Beside each date or time field (raw DICOM text), a property named after it
with ``_value`` gives it as a Python value: ``StudyResult.study_date_value``
is a ``datetime.date``, or None when the text is missing or malformed
(:func:`parse_date`, :func:`parse_time`, :func:`parse_datetime`).
"""

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from adicom.dimse import describe_status, status_category
from adicom.qrscu import FailedSubOperation
from adicom.values import (
    RESERVED_KEYWORDS,
    STRING_VRS,
    AETitle,
    CodeMatch,
    LongMatch,
    NameMatch,
    NumberMatch,
    ParentUID,
    ShortMatch,
    UIDMatch,
    check_match,
    element,
    known_keyword,
    read_numbers,
    read_text,
    read_value,
    vr_in,
    vr_of,
)

__all__ = [
    "AETitle",
    "DateKey",
    "DateRange",
    "DicomNode",
    "ImageQuery",
    "ImageResult",
    "KeyValue",
    "PatientQuery",
    "PatientResult",
    "Query",
    "QueryLevel",
    "Result",
    "RetrieveResult",
    "ScheduledProcedureStep",
    "SeriesQuery",
    "SeriesResult",
    "StudyQuery",
    "StudyResult",
    "TimeKey",
    "TimeRange",
    "WorklistQuery",
    "WorklistResult",
    "parse_date",
    "parse_datetime",
    "parse_time",
    "status_text",
]

log = logging.getLogger("adicom")

QueryLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
"""The values of Query/Retrieve Level (0008,0052), PS3.4 C.6."""

_LEVELS: tuple[QueryLevel, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


# --------------------------------------------------------------------------
# Dates and times in results: DICOM text to Python values (PS3.5 6.2)

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


class Result(BaseModel):
    """The shared shape of C-FIND results: typed fields and ``extra``.

    ``extra`` holds every other key the peer returned, by keyword (by tag,
    as ``"(gggg,eeee)"``, for elements without one): text as one string
    (several values joined by backslashes), IS and DS as numbers, sequences as
    lists of datasets, empty values as None.

    A match whose unique key (PS3.4 C.6.1.1: Patient ID, Study, Series or SOP
    Instance UID, by level) is missing or empty is still a result: the field
    is ``""`` then, :attr:`missing_unique_key` is True, and a warning was
    logged. Such a match cannot be retrieved by its key; what the peer did
    send is in :attr:`dataset`.
    """

    model_config = ConfigDict(extra="forbid")

    keywords: ClassVar[Mapping[str, str]] = {}
    """Field name to DICOM keyword, for the typed fields."""
    unique_key: ClassVar[str] = ""
    """The field holding the level's unique key ("" in a match that lacks it)."""
    level: ClassVar[QueryLevel]
    """The Query/Retrieve Level of the results."""

    extra: dict[str, Any] = {}

    _dataset: Dataset | None = PrivateAttr(default=None)

    @property
    def dataset(self) -> Dataset | None:
        """The identifier as the peer sent it (None for a result made by hand).

        Kept out of serialization (``model_dump``, JSON) and of equality.
        """
        return self._dataset

    @property
    def missing_unique_key(self) -> bool:
        """True when the peer's match had no value for the unique key of its level."""
        return bool(self.unique_key) and not getattr(self, self.unique_key)

    def __eq__(self, other: object) -> bool:
        # The fields only: two results saying the same are equal whatever
        # encoding (or no data set at all) they came from.
        if not isinstance(other, Result):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Self:
        """Build a result from one C-FIND response identifier.

        Counts and numbers (IS) become ints, padding tolerated, empty as None;
        person names and multi-valued text become strings. Missing or empty
        keys become None, except the level's unique key, which becomes ``""``
        with one warning logged (the match is kept: one odd match must not
        cost the caller every other). The data set is kept in
        :attr:`dataset`. Never raises for what a peer sent.
        """
        data: dict[str, Any] = {}
        for name, keyword in cls.keywords.items():
            tag = Tag(keyword)
            if tag not in ds:
                data[name] = None
            elif vr_in(ds, tag) == "IS":
                elem = ds.get_item(tag)
                assert elem is not None
                number = read_numbers(elem, int)
                if isinstance(number, list):
                    number = number[0]
                if number is not None and not isinstance(number, int):
                    log.warning("%s: ignoring %s %r, not an integer", cls.__name__, keyword, number)
                    number = None
                data[name] = number
            else:
                data[name] = read_text(ds[tag].value)
        if cls.unique_key and data.get(cls.unique_key) is None:
            keyword = cls.keywords[cls.unique_key]
            log.warning(
                "C-FIND: a match at %s level with %s %s %s, its unique key; kept "
                '(%s is "", the data set as received in .dataset)',
                cls.level,
                "an empty" if Tag(keyword) in ds else "no",
                keyword,
                Tag(keyword),
                cls.unique_key,
            )
            data[cls.unique_key] = ""
        known = {Tag(keyword) for keyword in cls.keywords.values()}
        known |= {Tag(keyword) for keyword in RESERVED_KEYWORDS}
        extra: dict[str, Any] = {}
        # Iterating the data set itself would convert every raw element.
        for tag in ds.keys():  # noqa: SIM118
            if tag in known:
                continue
            keyword = keyword_for_tag(tag) or str(Tag(tag))
            extra[keyword] = read_value(ds, Tag(tag))
        data["extra"] = extra
        result = cls(**data)
        result._dataset = ds
        return result


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
    level: ClassVar[QueryLevel] = "PATIENT"

    patient_id: str
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    number_of_patient_related_studies: int | None = None

    @property
    def patient_birth_date_value(self) -> date | None:
        """``patient_birth_date`` as a ``datetime.date`` (None: missing or malformed)."""
        return parse_date(self.patient_birth_date)


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
    level: ClassVar[QueryLevel] = "STUDY"

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

    @property
    def study_date_value(self) -> date | None:
        """``study_date`` as a ``datetime.date`` (None: missing or malformed)."""
        return parse_date(self.study_date)

    @property
    def study_time_value(self) -> time | None:
        """``study_time`` as a ``datetime.time`` (None: missing or malformed)."""
        return parse_time(self.study_time)


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
    level: ClassVar[QueryLevel] = "SERIES"

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
    level: ClassVar[QueryLevel] = "IMAGE"

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str
    sop_class_uid: str | None = None
    instance_number: int | None = None


# --------------------------------------------------------------------------
# Dates and times in queries: Python values to DICOM text (PS3.4 C.2.2.2.5)

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


def _checked_extra_keys(value: object, typed: Mapping[str, str]) -> object:
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


# --------------------------------------------------------------------------
# Queries


ResultT = TypeVar("ResultT", bound=Result)


def _has_non_ascii(values: Iterable[object]) -> bool:
    return any(isinstance(value, str) and not value.isascii() for value in values)


class Query(BaseModel, Generic[ResultT]):
    """The shared shape of C-FIND queries (Study Root, or Patient Root for PATIENT).

    ``extra_keys`` adds matching keys by DICOM keyword, each value checked
    against the keyword's VR like the typed fields are; keys of the typed
    fields, sequences and binary VRs are refused there. A DA, TM or DT
    keyword also takes a ``datetime.date``, ``datetime.time`` or
    ``datetime.datetime`` (a DT with tzinfo gets its UTC offset), or a
    ``(start, end)`` tuple of them, kept as DICOM text like the typed date
    and time fields (:data:`DateKey`, :data:`TimeKey`). ``return_keys`` asks
    for more keys back, sent with empty values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: ClassVar[QueryLevel]
    """The Query/Retrieve Level this query is made for."""
    result_type: ClassVar[type[Result]]
    """The result model of the level, whose keys are asked back."""
    keywords: ClassVar[Mapping[str, str]] = {}
    """Field name to DICOM keyword, for the typed fields."""

    extra_keys: dict[str, KeyValue] = {}
    return_keys: list[str] = []

    @field_validator("extra_keys", mode="before")
    @classmethod
    def _check_extra_keys(cls, value: object) -> object:
        return _checked_extra_keys(value, {kw: name for name, kw in cls.keywords.items()})

    @field_validator("return_keys")
    @classmethod
    def _check_return_keys(cls, value: list[str]) -> list[str]:
        for keyword in value:
            known_keyword(keyword, "return_keys")
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
            ds.add(element("SpecificCharacterSet", "ISO_IR 192"))
        ds.add(element("QueryRetrieveLevel", level))
        for keyword in (*self.result_type.keywords.values(), *self.return_keys):
            ds.add(element(keyword, None))
        for keyword, value in matching.items():
            ds.add(element(keyword, value if value != "" else None))
        return ds

    def parse_result(self, ds: Dataset) -> ResultT:
        """Parse one response identifier into this level's result model."""
        return cast(ResultT, self.result_type.from_dataset(ds))


class PatientQuery(Query[PatientResult]):
    """A PATIENT level C-FIND query (Patient Root Query/Retrieve model only).

    ``patient_birth_date`` takes a ``datetime.date`` or a ``(start, end)``
    tuple of them as well as DICOM text (:data:`DateKey`).
    """

    level: ClassVar[QueryLevel] = "PATIENT"
    result_type: ClassVar[type[Result]] = PatientResult
    keywords: ClassVar[Mapping[str, str]] = {
        "patient_id": "PatientID",
        "patient_name": "PatientName",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
    }

    patient_id: LongMatch | None = None
    patient_name: NameMatch | None = None
    patient_birth_date: DateKey | None = None
    patient_sex: CodeMatch | None = None


class StudyQuery(Query[StudyResult]):
    """A STUDY level C-FIND query.

    ``modality`` matches Modalities in Study (0008,0061). ``study_date``
    takes a ``datetime.date`` or a ``(start, end)`` tuple of them (None for
    an open end) as well as DICOM text, ``study_time`` likewise with
    ``datetime.time``. A study's time rarely means much without its date;
    ``study_time`` ranges apply within each day.
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

    patient_id: LongMatch | None = None
    patient_name: NameMatch | None = None
    study_instance_uid: UIDMatch | None = None
    study_date: DateKey | None = None
    study_time: TimeKey | None = None
    study_description: LongMatch | None = None
    accession_number: ShortMatch | None = None
    modality: CodeMatch | None = None
    referring_physician_name: NameMatch | None = None


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

    study_instance_uid: ParentUID
    series_instance_uid: UIDMatch | None = None
    modality: CodeMatch | None = None
    series_number: NumberMatch | None = None
    series_description: LongMatch | None = None


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

    study_instance_uid: ParentUID
    series_instance_uid: ParentUID
    sop_instance_uid: UIDMatch | None = None
    instance_number: NumberMatch | None = None


# --------------------------------------------------------------------------
# Modality Worklist (PS3.4 Annex K)


class ScheduledProcedureStep(Result):
    """One item of a worklist match's Scheduled Procedure Step Sequence (0040,0100)."""

    keywords: ClassVar[Mapping[str, str]] = {
        "modality": "Modality",
        "scheduled_station_ae_title": "ScheduledStationAETitle",
        "scheduled_station_name": "ScheduledStationName",
        "scheduled_procedure_step_location": "ScheduledProcedureStepLocation",
        "scheduled_procedure_step_start_date": "ScheduledProcedureStepStartDate",
        "scheduled_procedure_step_start_time": "ScheduledProcedureStepStartTime",
        "scheduled_performing_physician_name": "ScheduledPerformingPhysicianName",
        "scheduled_procedure_step_description": "ScheduledProcedureStepDescription",
        "scheduled_procedure_step_id": "ScheduledProcedureStepID",
        "scheduled_procedure_step_status": "ScheduledProcedureStepStatus",
    }

    modality: str | None = None
    scheduled_station_ae_title: str | None = None
    """The AE title(s) the step is scheduled on, backslash-separated when several."""
    scheduled_station_name: str | None = None
    scheduled_procedure_step_location: str | None = None
    scheduled_procedure_step_start_date: str | None = None
    scheduled_procedure_step_start_time: str | None = None
    scheduled_performing_physician_name: str | None = None
    scheduled_procedure_step_description: str | None = None
    scheduled_procedure_step_id: str | None = None
    scheduled_procedure_step_status: str | None = None

    @property
    def scheduled_procedure_step_start_date_value(self) -> date | None:
        """The start date as a ``datetime.date`` (None: missing or malformed)."""
        return parse_date(self.scheduled_procedure_step_start_date)

    @property
    def scheduled_procedure_step_start_time_value(self) -> time | None:
        """The start time as a ``datetime.time`` (None: missing or malformed)."""
        return parse_time(self.scheduled_procedure_step_start_time)


class WorklistResult(Result):
    """One Modality Worklist C-FIND match (a scheduled procedure, PS3.4 K.6.1.2).

    ``scheduled_procedure_steps`` holds the items of the Scheduled Procedure
    Step Sequence the peer returned (those that matched the query's step
    keys, when the peer follows PS3.4 C.2.2.2.6); the other keys it
    returned are in ``extra``, the data set as received in :attr:`WorklistResult.dataset`.
    """

    keywords: ClassVar[Mapping[str, str]] = {
        "patient_name": "PatientName",
        "patient_id": "PatientID",
        "patient_birth_date": "PatientBirthDate",
        "patient_sex": "PatientSex",
        "accession_number": "AccessionNumber",
        "referring_physician_name": "ReferringPhysicianName",
        "study_instance_uid": "StudyInstanceUID",
        "requested_procedure_id": "RequestedProcedureID",
        "requested_procedure_description": "RequestedProcedureDescription",
        "requested_procedure_priority": "RequestedProcedurePriority",
    }

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    referring_physician_name: str | None = None
    study_instance_uid: str | None = None
    requested_procedure_id: str | None = None
    requested_procedure_description: str | None = None
    requested_procedure_priority: str | None = None
    scheduled_procedure_steps: list[ScheduledProcedureStep] = []

    @property
    def patient_birth_date_value(self) -> date | None:
        """``patient_birth_date`` as a ``datetime.date`` (None: missing or malformed)."""
        return parse_date(self.patient_birth_date)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Self:
        """Build a result from one worklist C-FIND response identifier (never raises)."""
        result = super().from_dataset(ds)
        result.extra.pop("ScheduledProcedureStepSequence", None)
        element = ds.get(_SPS_TAG)
        items = element.value if element is not None and element.VR == "SQ" else None
        result.scheduled_procedure_steps = [
            ScheduledProcedureStep.from_dataset(item) for item in items or []
        ]
        return result


_SPS_TAG = 0x00400100


def _check_ae_key(value: str, info: ValidationInfo) -> str:
    return check_match("AE", value, str(info.field_name))


AEMatch = Annotated[str, AfterValidator(_check_ae_key)]
"""An AE matching key (up to 16 characters), wildcards allowed."""


class WorklistQuery(BaseModel):
    """A Modality Worklist C-FIND query (PS3.4 K.6.1.2, Table K.6-1).

    Top-level keys: ``patient_name``, ``patient_id``, ``accession_number``,
    ``requested_procedure_id``, ``study_instance_uid`` and ``extra_keys``
    (more keys by keyword, checked against their VR like the typed ones).
    Scheduled Procedure Step keys (matched inside its sequence):
    ``modality``, ``scheduled_station_ae_title``, ``scheduled_station_name``,
    ``scheduled_date`` (a date, a range ``A-B``, ``-B``, ``A-``, a
    ``datetime.date`` or a ``(start, end)`` tuple of them, see
    :data:`DateKey`), ``scheduled_time`` (likewise with ``datetime.time``,
    :data:`TimeKey`; matched with the date as one range when both are
    given, PS3.4 C.2.2.2.5) and ``scheduled_performing_physician_name``.

    As with the other queries, ``None`` leaves a key out of the matching
    and ``""`` is universal matching; every key of :class:`WorklistResult`
    and :class:`ScheduledProcedureStep` is asked back anyway, and
    ``return_keys`` asks for more top-level keys.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    keywords: ClassVar[Mapping[str, str]] = {
        "patient_name": "PatientName",
        "patient_id": "PatientID",
        "accession_number": "AccessionNumber",
        "requested_procedure_id": "RequestedProcedureID",
        "study_instance_uid": "StudyInstanceUID",
    }
    """Field name to DICOM keyword, for the typed top-level fields."""
    step_keywords: ClassVar[Mapping[str, str]] = {
        "modality": "Modality",
        "scheduled_station_ae_title": "ScheduledStationAETitle",
        "scheduled_station_name": "ScheduledStationName",
        "scheduled_date": "ScheduledProcedureStepStartDate",
        "scheduled_time": "ScheduledProcedureStepStartTime",
        "scheduled_performing_physician_name": "ScheduledPerformingPhysicianName",
    }
    """Field name to DICOM keyword, for the typed Scheduled Procedure Step fields."""

    patient_name: NameMatch | None = None
    patient_id: LongMatch | None = None
    accession_number: ShortMatch | None = None
    requested_procedure_id: ShortMatch | None = None
    study_instance_uid: UIDMatch | None = None
    modality: CodeMatch | None = None
    scheduled_station_ae_title: AEMatch | None = None
    scheduled_station_name: ShortMatch | None = None
    scheduled_date: DateKey | None = None
    scheduled_time: TimeKey | None = None
    scheduled_performing_physician_name: NameMatch | None = None
    extra_keys: dict[str, KeyValue] = {}
    return_keys: list[str] = []

    @field_validator("extra_keys", mode="before")
    @classmethod
    def _check_extra_keys(cls, value: object) -> object:
        typed = {keyword: name for name, keyword in cls.keywords.items()}
        typed |= {keyword: name for name, keyword in cls.step_keywords.items()}
        typed["ScheduledProcedureStepSequence"] = "the scheduled step fields"
        return _checked_extra_keys(value, typed)

    @field_validator("return_keys")
    @classmethod
    def _check_return_keys(cls, value: list[str]) -> list[str]:
        for keyword in value:
            known_keyword(keyword, "return_keys")
        return list(dict.fromkeys(value))

    def to_identifier(self) -> Dataset:
        """Build the C-FIND request identifier of the Modality Worklist model.

        It holds the matching keys set (``None`` fields left out), every key
        of :class:`WorklistResult` and of ``return_keys`` empty (universal
        matching, so the peer returns them), and the Scheduled Procedure
        Step Sequence with one item: the step keys set and every key of
        :class:`ScheduledProcedureStep` empty. Specific Character Set is
        ``ISO_IR 192`` when a value is not ASCII. No Query/Retrieve Level:
        worklist models have one level (PS3.4 K.1.1 note 2).
        """
        matching: dict[str, Any] = {
            keyword: getattr(self, name)
            for name, keyword in self.keywords.items()
            if getattr(self, name) is not None
        }
        matching.update(self.extra_keys)
        step: dict[str, Any] = {
            keyword: getattr(self, name)
            for name, keyword in self.step_keywords.items()
            if getattr(self, name) is not None
        }
        item = Dataset()
        for keyword in ScheduledProcedureStep.keywords.values():
            item.add(element(keyword, None))
        for keyword, value in step.items():
            item.add(element(keyword, value if value != "" else None))
        ds = Dataset()
        if _has_non_ascii([*matching.values(), *step.values()]):
            ds.add(element("SpecificCharacterSet", "ISO_IR 192"))
        for keyword in (*WorklistResult.keywords.values(), *self.return_keys):
            ds.add(element(keyword, None))
        for keyword, value in matching.items():
            ds.add(element(keyword, value if value != "" else None))
        ds.add(element("ScheduledProcedureStepSequence", [item]))
        return ds

    def parse_result(self, ds: Dataset) -> WorklistResult:
        """Parse one response identifier into a :class:`WorklistResult`."""
        return WorklistResult.from_dataset(ds)


# --------------------------------------------------------------------------
# Retrieve

_STATUS = re.compile(r"(?:success|pending|cancel|(?:warning|failure)_0x[0-9A-F]{4})\Z")
# The code a status string stands for when no code is given with it.
_STATUS_CODES = {"success": 0x0000, "pending": 0xFF00, "cancel": 0xFE00}


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

    ``status`` is :func:`status_text` of the final status, as the reference
    API spells it; ``status_code`` is that status as a number, and
    :attr:`status_meaning` says what it means. Left out, ``status_code``
    follows from ``status`` (``"success"`` is 0x0000, ``"cancel"`` 0xFE00,
    ``"pending"`` 0xFF00, ``"failure_0xA801"`` 0xA801); given, it must agree
    with it. The counts are the peer's sub-operation counts;
    ``failed_sop_instances`` the SOP Instance UIDs it reported failed, and
    ``failures`` (C-GET) each of them with its SOP class, transfer syntax
    and why, as far as known; ``error_comment`` is the peer's Error Comment.
    ``instances`` holds the datasets received in memory mode and ``paths`` the
    files written in disk mode.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    status: str
    status_code: int = Field(default=0, ge=0, le=0xFFFF)
    num_remaining: int = Field(default=0, ge=0)
    num_completed: int = Field(default=0, ge=0)
    num_failed: int = Field(default=0, ge=0)
    num_warning: int = Field(default=0, ge=0)
    failed_sop_instances: list[str] = []
    failures: list[FailedSubOperation] = []
    error_comment: str | None = None
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

    @model_validator(mode="before")
    @classmethod
    def _code_from_status(cls, data: Any) -> Any:
        if isinstance(data, dict) and "status_code" not in data:
            status = data.get("status")
            if isinstance(status, str) and _STATUS.match(status):
                code = _STATUS_CODES.get(status)
                if code is None:
                    code = int(status.partition("_0x")[2], 16)
                data = {**data, "status_code": code}
        return data

    @model_validator(mode="after")
    def _check_code_agrees(self) -> Self:
        expected = status_text(self.status_code)
        if expected != self.status:
            raise ValueError(
                f"status_code 0x{self.status_code:04X} is {expected!r}, but status is "
                f"{self.status!r}; allowed: a status_code whose status_text() is the status"
            )
        return self

    @property
    def status_meaning(self) -> str:
        """The final status in the words of PS3.4 and PS3.7.

        For example "Refused: move destination unknown" for 0xA801, or
        "Success".
        """
        return describe_status(self.status_code)
