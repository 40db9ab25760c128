"""Peers and C-FIND results (read leniently), and retrieve outcomes.

See :mod:`adicom.models` for how results are read.
"""

import logging
import re
from collections.abc import Mapping
from datetime import date, time
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from adicom.dimse import describe_status, status_category
from adicom.models.keys import (
    parse_date,
    parse_time,
)
from adicom.qrscu import FailedSubOperation
from adicom.values import (
    RESERVED_KEYWORDS,
    AETitle,
    read_numbers,
    read_text,
    read_value,
    vr_in,
)

log = logging.getLogger("adicom")
QueryLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
"""The values of Query/Retrieve Level (0008,0052), PS3.4 C.6."""
LEVELS: tuple[QueryLevel, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


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
