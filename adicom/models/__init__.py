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

from adicom.models.keys import (
    DateKey,
    DateRange,
    KeyValue,
    TimeKey,
    TimeRange,
    parse_date,
    parse_datetime,
    parse_time,
)
from adicom.models.queries import (
    ImageQuery,
    PatientQuery,
    Query,
    SeriesQuery,
    StudyQuery,
)
from adicom.models.results import (
    DicomNode,
    ImageResult,
    PatientResult,
    QueryLevel,
    Result,
    RetrieveResult,
    SeriesResult,
    StudyResult,
    status_text,
)
from adicom.models.worklist import (
    ScheduledProcedureStep,
    WorklistQuery,
    WorklistResult,
)
from adicom.values import (
    AETitle,
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
