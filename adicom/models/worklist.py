"""The Modality Worklist query and its results (PS3.4 K.6)."""

from collections.abc import Mapping
from datetime import date, time
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydicom.dataset import Dataset

from adicom.models.keys import (
    DateKey,
    KeyValue,
    TimeKey,
    checked_extra_keys,
    parse_date,
    parse_time,
)
from adicom.models.queries import (
    has_non_ascii,
)
from adicom.models.results import (
    Result,
)
from adicom.values import (
    CodeMatch,
    LongMatch,
    NameMatch,
    ShortMatch,
    UIDMatch,
    check_match,
    element,
    known_keyword,
)


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
    scheduled_procedure_steps: list[ScheduledProcedureStep] = Field(default_factory=list)

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
        return checked_extra_keys(value, typed)

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
        if has_non_ascii([*matching.values(), *step.values()]):
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
