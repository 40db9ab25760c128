"""C-FIND queries at each level of the Query/Retrieve information models.

See :mod:`adicom.models` for the rules of matching keys.
"""

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    field_validator,
)
from pydicom.dataset import Dataset

from adicom.models.keys import (
    DateKey,
    KeyValue,
    TimeKey,
    checked_extra_keys,
)
from adicom.models.results import (
    LEVELS,
    ImageResult,
    PatientResult,
    QueryLevel,
    Result,
    SeriesResult,
    StudyResult,
)
from adicom.values import (
    CodeMatch,
    LongMatch,
    NameMatch,
    NumberMatch,
    ParentUID,
    ShortMatch,
    UIDMatch,
    element,
    known_keyword,
)

ResultT = TypeVar("ResultT", bound=Result)


def has_non_ascii(values: Iterable[object]) -> bool:
    """Whether any of ``values`` is text beyond ASCII (the identifier then says UTF-8)."""
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
        return checked_extra_keys(value, {kw: name for name, kw in cls.keywords.items()})

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
        elif level.upper() in LEVELS:
            level = level.upper()
        else:
            raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
        ds = Dataset()
        matching: dict[str, Any] = {
            keyword: getattr(self, name)
            for name, keyword in self.keywords.items()
            if getattr(self, name) is not None
        }
        matching.update(self.extra_keys)
        if has_non_ascii(matching.values()):
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
