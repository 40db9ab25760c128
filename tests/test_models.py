"""The pydantic models at the edge: nodes, queries, results, retrieve outcomes."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pydicom import valuerep
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from adicom.models import (
    DicomNode,
    ImageQuery,
    ImageResult,
    PatientQuery,
    PatientResult,
    Query,
    Result,
    RetrieveResult,
    ScheduledProcedureStep,
    SeriesQuery,
    SeriesResult,
    StudyQuery,
    StudyResult,
    WorklistQuery,
    WorklistResult,
    parse_date,
    parse_datetime,
    parse_time,
    status_text,
)

UID = "1.2.840.113619.2.1.1.1"
UID2 = "1.2.840.113619.2.1.2.1"


def error_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    """The one error's location and message."""
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}"


# --------------------------------------------------------------------------
# DicomNode


@pytest.mark.parametrize(
    ("aet", "expected"),
    [
        ("PACS", "PACS"),
        ("A", "A"),
        ("X" * 16, "X" * 16),
        ("  PACS  ", "PACS"),
        (" " + "Y" * 16 + " ", "Y" * 16),
        ("MY SCP", "MY SCP"),
        ("a-b_c.d*?!~", "a-b_c.d*?!~"),
    ],
)
def test_node_ae_title_valid(aet: str, expected: str) -> None:
    assert DicomNode(aet=aet, host="pacs", port=104).aet == expected


@pytest.mark.parametrize(
    ("aet", "problem"),
    [
        ("", "empty or all spaces"),
        ("    ", "empty or all spaces"),
        ("X" * 17, "17 characters"),
        ("A\\B", "backslash"),
        ("A\tB", "control character"),
        ("A\nB", "control character"),
        ("A\x00", "control character"),
        ("A\x7f", "control character"),
        ("ÄBC", "non-ASCII"),
        ("ПАКС", "non-ASCII"),
    ],
)
def test_node_ae_title_invalid(aet: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DicomNode(aet=aet, host="pacs", port=104)
    message = error_of(exc)
    assert message.startswith("aet: ")
    assert problem in message
    assert repr(aet) in message
    assert "1 to 16 characters of printable ASCII" in message


@pytest.mark.parametrize("port", [1, 104, 11112, 65535])
def test_node_port_valid(port: int) -> None:
    assert DicomNode(aet="PACS", host="pacs", port=port).port == port


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_node_port_invalid(port: int) -> None:
    with pytest.raises(ValidationError) as exc:
        DicomNode(aet="PACS", host="pacs", port=port)
    message = error_of(exc)
    assert message.startswith("port: ")
    assert str(port) in message
    assert "1 to 65535" in message


@pytest.mark.parametrize("host", ["", "   ", "pa cs", "pacs\n"])
def test_node_host_invalid(host: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DicomNode(aet="PACS", host=host, port=104)
    assert error_of(exc).startswith("host: ")


def test_node_host_stripped_and_str() -> None:
    node = DicomNode(aet="PACS", host=" 192.168.1.100 ", port=11112)
    assert node.host == "192.168.1.100"
    assert str(node) == "PACS@192.168.1.100:11112"
    assert str(DicomNode(aet="PACS", host="::1", port=104)) == "PACS@[::1]:104"


def test_node_frozen_and_hashable() -> None:
    node = DicomNode(aet="PACS", host="pacs", port=104)
    with pytest.raises(ValidationError):
        node.port = 105
    assert node == DicomNode(aet=" PACS", host="pacs", port=104)
    assert len({node, DicomNode(aet="PACS", host="pacs", port=104)}) == 1


def test_node_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        DicomNode(aet="PACS", host="pacs", port=104, calling_aet="X")  # type: ignore[call-arg]


# --------------------------------------------------------------------------
# Matching syntax: dates, times, UIDs, text


@pytest.mark.parametrize(
    "value",
    [
        "20240101",
        "20240229",
        "19000101",
        "20240101-20240131",
        "20240101-20240101",
        "-20240131",
        "20240101-",
        " 20240101 ",
        "",
    ],
)
def test_date_valid(value: str) -> None:
    assert StudyQuery(study_date=value).study_date == value.strip()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2024", "not a date YYYYMMDD"),
        ("202401011", "not a date YYYYMMDD"),
        ("2024-01-01", "not a single value or a range"),
        ("2024.01.01", "not a date YYYYMMDD"),
        ("20230229", "not a calendar date"),
        ("20240230", "not a calendar date"),
        ("20241301", "not a calendar date"),
        ("20240100", "not a calendar date"),
        ("20240132", "not a calendar date"),
        ("20240101-20240230", "has '20240230', which is not a calendar date"),
        ("20240131-20240101", "start is after its end"),
        ("-", "not a single value or a range"),
        ("20240101--20240102", "not a single value or a range"),
        ("2024*", "wildcard"),
        ("2024010?", "wildcard"),
        ("20240101\\20240102", "not a date"),
        ("abcdefgh", "not a date"),
    ],
)
def test_date_invalid(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(study_date=value)
    message = error_of(exc)
    assert message.startswith("study_date: ")
    assert repr(value) in message
    assert problem in message
    assert "allowed: a date YYYYMMDD" in message


@pytest.mark.parametrize(
    "value",
    [
        "10",
        "1030",
        "103000",
        "103000.5",
        "103000.123456",
        "235960",
        "000000",
        "10-12",
        "1030-1130",
        "-1200",
        "08-",
        "1030-10",
        "100000.1-100000.2",
        "",
    ],
)
def test_time_valid(value: str) -> None:
    assert StudyQuery(study_time=value).study_time == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1", "not a time"),
        ("103", "not a time"),
        ("1030000", "not a time"),
        ("1030.5", "not a time"),
        ("103000.1234567", "not a time"),
        ("103000.", "not a time"),
        ("24", "hour 24"),
        ("1060", "minute 60"),
        ("103061", "second 61"),
        ("10:30", "not a time"),
        ("11-10", "start is after its end"),
        ("2300-0100", "across midnight"),
        ("10-25", "has '25' with hour 25"),
        ("10*", "wildcard"),
        ("1?", "wildcard"),
        ("10-11-12", "not a single value or a range"),
    ],
)
def test_time_invalid(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(study_time=value)
    message = error_of(exc)
    assert message.startswith("study_time: ")
    assert problem in message
    assert "allowed: a time HH, HHMM" in message


@pytest.mark.parametrize(
    "value",
    [
        UID,
        "1.2",
        "0.0",
        "2.25.329800735698586629295641978511506172918",
        "1." + "2" * 62,
        f"{UID}\\{UID2}",
        f"{UID}\\{UID2}\\1.2.3",
        "",
    ],
)
def test_uid_valid(value: str) -> None:
    assert StudyQuery(study_instance_uid=value).study_instance_uid == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.*", "wildcard"),
        ("1.2.3?", "wildcard"),
        ("*", "wildcard"),
        (f"{UID}\\1.2.*", "wildcard"),
        ("1.02.3", "not a valid UID"),
        ("01.2", "not a valid UID"),
        ("1..2", "not a valid UID"),
        ("1.2.", "not a valid UID"),
        (".1.2", "not a valid UID"),
        ("1.2.a", "not a valid UID"),
        ("1.2 .3", "not a valid UID"),
        ("1." + "2" * 63, "65 characters"),
        (f"{UID}\\", "empty UID"),
        (f"\\{UID}", "empty UID"),
        (f"{UID}\\\\{UID2}", "empty UID"),
        (f"{UID}\\1.02", "has '1.02', which is not a valid UID"),
    ],
)
def test_uid_invalid(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(study_instance_uid=value)
    message = error_of(exc)
    assert message.startswith("study_instance_uid: ")
    assert problem in message
    assert "backslash-separated list of UIDs; no wildcards" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"{UID}\\{UID2}", "is a list"),
        ("", "required"),
        ("  ", "required"),
        ("1.2*", "wildcard"),
        ("1.02", "not a valid UID"),
    ],
)
def test_parent_uid_single_and_required(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SeriesQuery(study_instance_uid=value)
    message = error_of(exc)
    assert message.startswith("study_instance_uid: ")
    assert problem in message
    with pytest.raises(ValidationError) as exc:
        ImageQuery(study_instance_uid=UID, series_instance_uid=value)
    assert error_of(exc).startswith("series_instance_uid: ")


def test_parent_uids_missing() -> None:
    with pytest.raises(ValidationError) as exc:
        SeriesQuery()  # type: ignore[call-arg]
    assert error_of(exc).startswith("study_instance_uid: Field required")
    with pytest.raises(ValidationError) as exc:
        ImageQuery(study_instance_uid=UID)  # type: ignore[call-arg]
    assert error_of(exc).startswith("series_instance_uid: Field required")


def test_level_uid_may_be_a_list() -> None:
    series = SeriesQuery(study_instance_uid=UID, series_instance_uid=f"{UID2}\\1.2.3")
    assert series.series_instance_uid == f"{UID2}\\1.2.3"
    image = ImageQuery(
        study_instance_uid=UID, series_instance_uid=UID2, sop_instance_uid="1.2.3\\1.2.4"
    )
    assert image.sop_instance_uid == "1.2.3\\1.2.4"


@pytest.mark.parametrize(
    "value",
    [
        "Doe^John",
        "Doe*",
        "D?e^J*",
        "*",
        "Doe^John^M^Dr^Jr",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "Иванов^Иван",
        "X" * 64,
        "=" + "Y" * 64,
        "",
    ],
)
def test_person_name_valid(value: str) -> None:
    assert StudyQuery(patient_name=value).patient_name == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("A^B^C^D^E^F", "6 '^'-separated components"),
        ("A=B=C=D", "4 '='-separated component groups"),
        ("X" * 65, "component group of 65 characters"),
        ("Doe\\John", "backslash"),
        ("Doe\x1bJohn", "control character"),
        ("Doe\nJohn", "control character"),
    ],
)
def test_person_name_invalid(value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(patient_name=value)
    message = error_of(exc)
    assert message.startswith("patient_name: ")
    assert problem in message
    assert "allowed: a person name" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", "12345"),
        ("patient_id", "12*"),
        ("patient_id", "?2345"),
        ("patient_id", "X" * 64),
        ("patient_id", "Пациент-1"),
        ("study_description", "CT HEAD*"),
        ("study_description", "Y" * 64),
        ("accession_number", "A" * 16),
        ("accession_number", "ACC*"),
        ("modality", "CT"),
        ("modality", "C?"),
        ("modality", "*"),
        ("modality", "MY_MOD 1"),
        ("modality", "M" * 16),
    ],
)
def test_text_valid(field: str, value: str) -> None:
    assert getattr(StudyQuery.model_validate({field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value", "problem", "allowed"),
    [
        ("patient_id", "X" * 65, "65 characters", "at most 64 characters"),
        ("patient_id", "12\\34", "backslash", "at most 64 characters"),
        ("patient_id", "12\t34", "control character", "at most 64 characters"),
        ("patient_id", "12\x8534", "control character", "at most 64 characters"),
        ("study_description", "Y" * 65, "65 characters", "at most 64 characters"),
        ("accession_number", "A" * 17, "17 characters", "at most 16 characters"),
        ("accession_number", "A\\B", "backslash", "at most 16 characters"),
        ("modality", "ct", "did you mean 'CT'", "uppercase A-Z"),
        ("modality", "CT\\MR", "does not allow", "uppercase A-Z"),
        ("modality", "CT-1", "does not allow", "uppercase A-Z"),
        ("modality", "M" * 17, "17 characters", "at most 16 characters"),
        ("modality", "ЯЯ", "does not allow", "uppercase A-Z"),
    ],
)
def test_text_invalid(field: str, value: str, problem: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery.model_validate({field: value})
    message = error_of(exc)
    assert message.startswith(f"{field}: ")
    assert repr(value) in message
    assert problem in message
    assert allowed in message


@pytest.mark.parametrize(("value", "expected"), [("M", "M"), ("F", "F"), ("O", "O"), ("*", "*")])
def test_patient_sex_valid(value: str, expected: str) -> None:
    assert PatientQuery(patient_sex=value).patient_sex == expected


@pytest.mark.parametrize("value", ["m", "Male!", "M\\F"])
def test_patient_sex_invalid(value: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PatientQuery(patient_sex=value)
    assert error_of(exc).startswith("patient_sex: ")


@pytest.mark.parametrize("value", [1, 0, -5, "12", 2**31 - 1])
def test_number_valid(value: int | str) -> None:
    query = SeriesQuery.model_validate({"study_instance_uid": UID, "series_number": value})
    assert query.series_number == int(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1*", "wildcard"),
        ("?", "wildcard"),
        ("abc", "valid integer"),
        ("1.5", "valid integer"),
        (True, "boolean"),
        (2**31, "less than or equal"),
    ],
)
def test_number_invalid(value: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SeriesQuery(study_instance_uid=UID, series_number=value)
    message = error_of(exc)
    assert message.startswith("series_number: ")
    assert problem in message
    with pytest.raises(ValidationError) as exc:
        ImageQuery(study_instance_uid=UID, series_instance_uid=UID2, instance_number=value)
    assert error_of(exc).startswith("instance_number: ")


def test_queries_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(patientid="1")  # type: ignore[call-arg]
    assert error_of(exc).startswith("patientid: Extra inputs")


def test_queries_are_frozen() -> None:
    query = StudyQuery(patient_id="1")
    with pytest.raises(ValidationError):
        query.patient_id = "2"


def test_multiple_errors_are_all_reported() -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(study_date="2024", study_instance_uid="1.*", modality="ct")
    assert {error["loc"][0] for error in exc.value.errors()} == {
        "study_date",
        "study_instance_uid",
        "modality",
    }


# --------------------------------------------------------------------------
# extra_keys and return_keys


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("InstitutionName", "Hospital*"),
        ("PerformingPhysicianName", "Doe^*"),
        ("PatientBirthDate", "19700101-19801231"),
        ("StudyID", "S?1"),
        ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4"),
        ("AcquisitionDateTime", "20240101120000-20240102"),
        ("AcquisitionDateTime", "20240101120000+0100-20240102-0500"),
        ("PatientAge", "045Y"),
        ("PatientWeight", "70.5"),
        ("NumberOfFrames", "10"),
        ("StationAETitle", "CT*"),
        ("AdditionalPatientHistory", "line one\r\nline two"),
        ("BodyPartExamined", ""),
    ],
)
def test_extra_keys_valid(keyword: str, value: str) -> None:
    query = StudyQuery(extra_keys={keyword: value})
    assert query.extra_keys == {keyword: value}


@pytest.mark.parametrize(
    ("keyword", "value", "problem"),
    [
        ("PatientId", "1", "not a DICOM keyword (did you mean PatientID"),
        ("NoSuchKeyword", "1", "not a DICOM keyword"),
        ("", "1", "not a DICOM keyword"),
        ("PatientID", "1", "has its own field; use patient_id"),
        ("ModalitiesInStudy", "CT", "has its own field; use modality"),
        ("QueryRetrieveLevel", "STUDY", "set by to_identifier"),
        ("SpecificCharacterSet", "ISO_IR 192", "set by to_identifier"),
        ("AffectedSOPClassUID", "1.2", "command, file meta or delimiter element"),
        ("TransferSyntaxUID", "1.2", "command, file meta or delimiter element"),
        ("Rows", "512", "VR US, which a string cannot match"),
        ("ReferencedStudySequence", "", "VR SQ, which a string cannot match"),
        ("PixelData", "", "which a string cannot match"),
        ("SOPClassUID", "1.2.*", "wildcard"),
        ("InstitutionName", "X" * 65, "65 characters"),
        ("PatientBirthDate", "20240230", "not a calendar date"),
        ("PatientAge", "45", "not an age string"),
        ("PatientWeight", "7*", "wildcard"),
        ("PatientWeight", "heavy", "not a number"),
        ("NumberOfFrames", "1.5", "not a number"),
        ("AcquisitionDateTime", "2024*", "wildcard"),
        ("AcquisitionDateTime", "2024-01-01", "not a date-time"),
        ("StationAETitle", "A\\B", "does not allow"),
    ],
)
def test_extra_keys_invalid(keyword: str, value: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(extra_keys={keyword: value})
    message = error_of(exc)
    assert message.startswith("extra_keys: ")
    assert problem in message


def test_extra_keys_stripped() -> None:
    query = StudyQuery(extra_keys={"InstitutionName": " Hospital "})
    assert query.extra_keys == {"InstitutionName": "Hospital"}


def test_return_keys_valid_and_deduplicated() -> None:
    query = StudyQuery(
        return_keys=["InstitutionName", "ReferencedStudySequence", "Rows", "InstitutionName"]
    )
    assert query.return_keys == ["InstitutionName", "ReferencedStudySequence", "Rows"]


@pytest.mark.parametrize(
    ("keyword", "problem"),
    [
        ("Institution", "not a DICOM keyword"),
        ("patient_id", "not a DICOM keyword"),
        ("QueryRetrieveLevel", "set by to_identifier"),
        ("CommandField", "command, file meta or delimiter element"),
        ("Item", "command, file meta or delimiter element"),
    ],
)
def test_return_keys_invalid(keyword: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery(return_keys=[keyword])
    message = error_of(exc)
    assert message.startswith("return_keys: ")
    assert problem in message


# --------------------------------------------------------------------------
# to_identifier


def empty(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is in ``ds`` with a zero-length value."""
    return keyword in ds and ds[keyword].is_empty


STUDY_RETURN_KEYS = [
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]


def test_study_identifier_universal() -> None:
    ds = StudyQuery().to_identifier()
    assert ds.QueryRetrieveLevel == "STUDY"
    assert "SpecificCharacterSet" not in ds
    assert sorted(elem.keyword for elem in ds) == sorted(["QueryRetrieveLevel", *STUDY_RETURN_KEYS])
    for keyword in STUDY_RETURN_KEYS:
        assert empty(ds, keyword), keyword


def test_study_identifier_matching_keys() -> None:
    query = StudyQuery(
        patient_id="12345",
        patient_name="Doe^J*",
        study_instance_uid=f"{UID}\\{UID2}",
        study_date="20240101-20240131",
        study_time="08-12",
        study_description="CT*",
        accession_number="A1",
        modality="CT",
        referring_physician_name="House^*",
    )
    ds = query.to_identifier()
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.PatientID == "12345"
    assert str(ds.PatientName) == "Doe^J*"
    assert list(ds.StudyInstanceUID) == [UID, UID2]
    assert ds.StudyDate == "20240101-20240131"
    assert ds.StudyTime == "08-12"
    assert ds.StudyDescription == "CT*"
    assert ds.AccessionNumber == "A1"
    assert ds.ModalitiesInStudy == "CT"
    assert "Modality" not in ds
    assert str(ds.ReferringPhysicianName) == "House^*"
    assert empty(ds, "NumberOfStudyRelatedSeries")
    assert empty(ds, "NumberOfStudyRelatedInstances")


def test_empty_string_is_universal_matching() -> None:
    with_empty = StudyQuery(patient_id="", referring_physician_name="").to_identifier()
    assert empty(with_empty, "PatientID")
    assert empty(with_empty, "ReferringPhysicianName")
    # None leaves a key out, unless the result model asks it back anyway.
    without = StudyQuery().to_identifier()
    assert empty(without, "PatientID")
    assert "ReferringPhysicianName" not in without


def test_patient_identifier() -> None:
    ds = PatientQuery(patient_id="P1", patient_birth_date="-19800101").to_identifier()
    assert ds.QueryRetrieveLevel == "PATIENT"
    assert ds.PatientID == "P1"
    assert ds.PatientBirthDate == "-19800101"
    for keyword in ("PatientName", "PatientSex", "NumberOfPatientRelatedStudies"):
        assert empty(ds, keyword), keyword
    assert "StudyInstanceUID" not in ds


def test_series_identifier() -> None:
    ds = SeriesQuery(study_instance_uid=UID, modality="CT", series_number=3).to_identifier()
    assert ds.QueryRetrieveLevel == "SERIES"
    assert ds.StudyInstanceUID == UID
    assert ds.Modality == "CT"
    assert ds.SeriesNumber == 3
    for keyword in ("SeriesInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances"):
        assert empty(ds, keyword), keyword


def test_image_identifier() -> None:
    query = ImageQuery(
        study_instance_uid=UID,
        series_instance_uid=UID2,
        sop_instance_uid="1.2.3\\1.2.4",
        instance_number=7,
    )
    ds = query.to_identifier()
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert ds.StudyInstanceUID == UID
    assert ds.SeriesInstanceUID == UID2
    assert list(ds.SOPInstanceUID) == ["1.2.3", "1.2.4"]
    assert ds.InstanceNumber == 7
    assert empty(ds, "SOPClassUID")


def test_identifier_extra_and_return_keys() -> None:
    query = StudyQuery(
        extra_keys={"InstitutionName": "Hosp*", "StudyID": ""},
        return_keys=["ReferencedStudySequence", "SmallestImagePixelValue", "PatientID"],
    )
    ds = query.to_identifier()
    assert ds.InstitutionName == "Hosp*"
    assert empty(ds, "StudyID")
    assert isinstance(ds.ReferencedStudySequence, Sequence)
    assert len(ds.ReferencedStudySequence) == 0
    assert empty(ds, "SmallestImagePixelValue")
    assert empty(ds, "PatientID")


def test_identifier_matching_key_wins_over_return_key() -> None:
    ds = StudyQuery(patient_id="1", return_keys=["PatientID"]).to_identifier()
    assert ds.PatientID == "1"


@pytest.mark.parametrize(
    "query",
    [
        StudyQuery(patient_name="Иванов^Иван"),
        StudyQuery(study_description="Тело*"),
        PatientQuery(extra_keys={"InstitutionName": "Больница"}),
    ],
)
def test_identifier_non_ascii_declares_utf8(query: Query[Any]) -> None:
    ds = query.to_identifier()
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    encoded = encode(ds)
    assert encode(read(encoded)) == encoded


def test_identifier_non_ascii_is_utf8_on_the_wire() -> None:
    encoded = encode(StudyQuery(patient_name="Иванов^Иван").to_identifier())
    assert "Иванов^Иван".encode() in encoded


@pytest.mark.parametrize(
    ("level", "expected"),
    [(None, "STUDY"), ("SERIES", "SERIES"), ("patient", "PATIENT"), ("IMAGE", "IMAGE")],
)
def test_identifier_level_override(level: str | None, expected: str) -> None:
    assert StudyQuery(study_instance_uid=UID).to_identifier(level).QueryRetrieveLevel == expected


def test_identifier_level_invalid() -> None:
    with pytest.raises(ValueError, match="'WORKLIST' is not one of PATIENT, STUDY"):
        StudyQuery().to_identifier("WORKLIST")


def test_class_levels() -> None:
    assert PatientQuery.level == "PATIENT"
    assert StudyQuery.level == "STUDY"
    assert SeriesQuery.level == "SERIES"
    assert ImageQuery.level == "IMAGE"
    assert StudyQuery.result_type is StudyResult


@pytest.mark.parametrize(
    "query",
    [
        PatientQuery(patient_name="Doe*", patient_birth_date="19700101-"),
        StudyQuery(study_date="-20240101", study_time="1030-", modality="C?"),
        SeriesQuery(study_instance_uid=UID, series_description="*AX*"),
        ImageQuery(study_instance_uid=UID, series_instance_uid=UID2),
    ],
)
def test_identifier_encodes_without_warnings(query: Query[Any]) -> None:
    # Wildcards and ranges are not valid VR values; pydicom must not warn.
    encoded = encode(query.to_identifier())
    assert encode(read(encoded)) == encoded


# --------------------------------------------------------------------------
# Results


def encode(ds: Dataset, implicit: bool = True) -> bytes:
    """``ds`` as a peer sends it, Implicit VR Little Endian by default."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def read(data: bytes, implicit: bool = True) -> Dataset:
    """A dataset as pydicom decodes it off the wire: raw, converted on access."""
    return read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)


def raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put an undecoded element in ``ds``, as if read from the network."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def study_response() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "PACS"
    ds.PatientID = "12345"
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = UID
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT HEAD"
    ds.AccessionNumber = "A1"
    ds.ModalitiesInStudy = ["CT", "PT"]
    ds.NumberOfStudyRelatedSeries = "3"
    ds.NumberOfStudyRelatedInstances = "120"
    return ds


def test_study_result_full() -> None:
    result = StudyResult.from_dataset(study_response())
    assert result == StudyResult(
        patient_id="12345",
        patient_name="Doe^John",
        study_instance_uid=UID,
        study_date="20240115",
        study_time="101500",
        study_description="CT HEAD",
        accession_number="A1",
        modalities_in_study="CT\\PT",
        number_of_study_related_series=3,
        number_of_study_related_instances=120,
        extra={"RetrieveAETitle": "PACS"},
    )


@pytest.mark.parametrize("implicit", [True, False])
def test_study_result_from_the_wire(implicit: bool) -> None:
    ds = study_response()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Иванов^Иван"
    result = StudyResult.from_dataset(read(encode(ds, implicit), implicit))
    assert result.patient_name == "Иванов^Иван"
    assert result.modalities_in_study == "CT\\PT"
    assert result.number_of_study_related_series == 3
    assert "SpecificCharacterSet" not in result.extra
    assert "QueryRetrieveLevel" not in result.extra


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"12", 12),
        (b"12 ", 12),
        (b" 12", 12),
        (b"+12", 12),
        (b"0012", 12),
        (b"", None),
        (b"  ", None),
        (b"12\\13", 12),
        (b"abc ", None),
        (b"1.5 ", None),
        (b"12.0", 12),
    ],
)
def test_counts_parsed_leniently(
    text: bytes, expected: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    raw(ds, "NumberOfStudyRelatedSeries", "IS", text)
    with caplog.at_level(logging.WARNING, logger="adicom"):
        result = StudyResult.from_dataset(ds)
    assert result.number_of_study_related_series == expected


@pytest.mark.parametrize(("value", "expected"), [("12 ", 12), ("", None), (None, None), (7, 7)])
def test_counts_from_converted_elements(value: Any, expected: int | None) -> None:
    ds = Dataset()
    ds.SeriesInstanceUID = UID2
    ds.NumberOfSeriesRelatedInstances = value
    ds.SeriesNumber = value
    result = SeriesResult.from_dataset(ds)
    assert result.number_of_series_related_instances == expected
    assert result.series_number == expected


def test_unparsable_count_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    raw(ds, "NumberOfStudyRelatedInstances", "IS", b"many")
    with caplog.at_level(logging.WARNING, logger="adicom"):
        result = StudyResult.from_dataset(ds)
    assert result.number_of_study_related_instances is None
    assert "NumberOfStudyRelatedInstances" in caplog.text


def test_result_missing_and_empty_optional_keys() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    ds.PatientName = ""
    ds.StudyDescription = None
    ds.AccessionNumber = "   "
    ds.ModalitiesInStudy = []
    result = StudyResult.from_dataset(ds)
    assert result == StudyResult(study_instance_uid=UID)
    assert result.extra == {}


@pytest.mark.parametrize(
    ("model", "keyword", "field"),
    [
        (PatientResult, "PatientID", "patient_id"),
        (StudyResult, "StudyInstanceUID", "study_instance_uid"),
        (SeriesResult, "SeriesInstanceUID", "series_instance_uid"),
        (ImageResult, "SOPInstanceUID", "sop_instance_uid"),
    ],
)
@pytest.mark.parametrize("value", [None, "", "  "])
def test_a_match_without_its_unique_key_is_kept_with_a_warning(
    model: Any, keyword: str, field: str, value: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    ds = Dataset()
    if value is not None:
        raw(ds, keyword, "UI" if "UID" in keyword else "LO", value.encode())
    ds.PatientName = "Doe"
    ds.InstitutionName = "Hospital"
    with caplog.at_level(logging.WARNING, logger="adicom"):
        result = model.from_dataset(ds)
    assert getattr(result, field) == "" and result.missing_unique_key
    assert result.dataset is ds
    assert result.extra["InstitutionName"] == "Hospital"
    (record,) = caplog.records
    assert f"{model.level} level with {'no' if value is None else 'an empty'} {keyword}" in (
        record.getMessage()
    )
    # The data set stays out of what is serialized and compared.
    assert "dataset" not in result.model_dump() and "dataset" not in result.model_dump_json()
    assert result == model.model_validate(result.model_dump())
    assert model.model_validate(result.model_dump()).dataset is None


def test_a_result_keeps_its_data_set() -> None:
    ds = study_response()
    result = StudyResult.from_dataset(ds)
    assert result.dataset is ds and not result.missing_unique_key
    assert result == StudyResult.from_dataset(study_response())
    assert result != StudyResult(study_instance_uid=UID)
    assert "dataset" not in repr(result)
    assert set(StudyResult.model_json_schema()["properties"]) == {"extra", *StudyResult.keywords}


def test_result_extra_keys_collected() -> None:
    ds = study_response()
    ds.InstitutionName = "Hospital"
    ds.OtherPatientIDs = ["A", "B"]
    ds.PatientWeight = "70.5"
    ds.ReferencedStudySequence = [Dataset()]
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StationName = ""
    ds.add_new(0x00091010, "LO", "private")
    raw(ds, "NumberOfPatientRelatedStudies", "IS", b" 2\\3 ")
    raw(ds, "SliceThickness", "DS", b"junk")
    result = StudyResult.from_dataset(ds)
    extra = result.extra
    assert extra["InstitutionName"] == "Hospital"
    assert extra["OtherPatientIDs"] == "A\\B"
    assert extra["PatientWeight"] == 70.5
    assert isinstance(extra["ReferencedStudySequence"], list)
    assert len(extra["ReferencedStudySequence"]) == 1
    assert extra["ReferringPhysicianName"] == "House^Gregory"
    assert extra["StationName"] is None
    assert extra["(0009,1010)"] == "private"
    assert extra["NumberOfPatientRelatedStudies"] == [2, 3]
    assert extra["SliceThickness"] == "junk"
    assert extra["RetrieveAETitle"] == "PACS"
    for keyword in STUDY_RETURN_KEYS:
        assert keyword not in extra


def test_patient_result() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.NumberOfPatientRelatedStudies = "4 "
    assert PatientResult.from_dataset(ds) == PatientResult(
        patient_id="P1",
        patient_name="Doe^Jane",
        patient_birth_date="19700101",
        patient_sex="F",
        number_of_patient_related_studies=4,
    )


def test_series_result() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    ds.SeriesInstanceUID = UID2
    ds.Modality = "CT"
    ds.SeriesNumber = "2"
    ds.SeriesDescription = "AX 5mm"
    ds.NumberOfSeriesRelatedInstances = "100"
    assert SeriesQuery(study_instance_uid=UID).parse_result(ds) == SeriesResult(
        study_instance_uid=UID,
        series_instance_uid=UID2,
        modality="CT",
        series_number=2,
        series_description="AX 5mm",
        number_of_series_related_instances=100,
    )


def test_image_result() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    ds.SeriesInstanceUID = UID2
    ds.SOPInstanceUID = "1.2.3"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.InstanceNumber = ""
    result = ImageResult.from_dataset(read(encode(ds)))
    assert result == ImageResult(
        study_instance_uid=UID,
        series_instance_uid=UID2,
        sop_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    )


def test_parse_result_types() -> None:
    ds = study_response()
    ds.PatientID = "P1"
    ds.SeriesInstanceUID = UID2
    ds.SOPInstanceUID = "1.2.3"
    assert isinstance(PatientQuery().parse_result(ds), PatientResult)
    assert isinstance(StudyQuery().parse_result(ds), StudyResult)
    assert isinstance(SeriesQuery(study_instance_uid=UID).parse_result(ds), SeriesResult)
    image = ImageQuery(study_instance_uid=UID, series_instance_uid=UID2)
    assert isinstance(image.parse_result(ds), ImageResult)


def test_results_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        StudyResult(study_instance_uid=UID, modality="CT")  # type: ignore[call-arg]


# --------------------------------------------------------------------------
# RetrieveResult and status_text


def test_retrieve_result_defaults() -> None:
    result = RetrieveResult(status="success")
    assert result.num_remaining == 0
    assert result.num_completed == 0
    assert result.num_failed == 0
    assert result.num_warning == 0
    assert result.failed_sop_instances == []
    assert result.instances == []
    assert result.paths == []
    other = RetrieveResult(status="success")
    result.instances.append(Dataset())
    assert other.instances == []


def test_retrieve_result_fields() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    result = RetrieveResult(
        status="warning_0xB000",
        num_completed=1,
        num_failed=1,
        failed_sop_instances=["1.2.4"],
        instances=[ds],
        paths=[Path("/data/1.2.3.dcm")],
    )
    assert result.instances[0] is ds
    assert result.paths == [Path("/data/1.2.3.dcm")]


@pytest.mark.parametrize(
    "status", ["success", "pending", "cancel", "warning_0xB000", "failure_0xA701"]
)
def test_retrieve_status_valid(status: str) -> None:
    assert RetrieveResult(status=status).status == status


@pytest.mark.parametrize(
    "status", ["", "ok", "SUCCESS", "warning", "failure_0xa701", "failure_0x12345", "failure_A701"]
)
def test_retrieve_status_invalid(status: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RetrieveResult(status=status)
    message = error_of(exc)
    assert message.startswith("status: ")
    assert "'success'" in message


@pytest.mark.parametrize("field", ["num_remaining", "num_completed", "num_failed", "num_warning"])
def test_retrieve_counts_not_negative(field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RetrieveResult.model_validate({"status": "success", field: -1})
    assert error_of(exc).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("status", "code", "meaning"),
    [
        ("success", 0x0000, "Success"),
        ("pending", 0xFF00, "Pending"),
        ("cancel", 0xFE00, "Cancel: operation terminated by cancel request"),
        (
            "warning_0xB000",
            0xB000,
            "Warning: coercion of data elements, or sub-operations completed with failures",
        ),
        ("failure_0xA801", 0xA801, "Refused: move destination unknown"),
        ("failure_0xA702", 0xA702, "Refused: out of resources, unable to perform sub-operations"),
        ("failure_0xC123", 0xC123, "Error: cannot understand, or unable to process"),
    ],
)
def test_retrieve_status_code_follows_status(status: str, code: int, meaning: str) -> None:
    result = RetrieveResult(status=status)
    assert result.status == status
    assert result.status_code == code
    assert result.status_meaning == meaning


def test_retrieve_status_code_given() -> None:
    result = RetrieveResult(status="pending", status_code=0xFF01)
    assert result.status_code == 0xFF01
    assert result.status_meaning == "Pending: optional keys not supported"


def test_retrieve_status_code_must_agree_with_status() -> None:
    with pytest.raises(ValidationError) as exc:
        RetrieveResult(status="failure_0xA801", status_code=0xA702)
    message = error_of(exc)
    assert "status_code 0xA702 is 'failure_0xA702', but status is 'failure_0xA801'" in message


@pytest.mark.parametrize("code", [-1, 0x10000])
def test_retrieve_status_code_is_16_bits(code: int) -> None:
    with pytest.raises(ValidationError) as exc:
        RetrieveResult(status="success", status_code=code)
    assert error_of(exc).startswith("status_code: ")


def test_retrieve_result_round_trips_with_its_code() -> None:
    result = RetrieveResult(status="warning_0xB000", num_completed=2, num_failed=1)
    again = RetrieveResult.model_validate(result.model_dump())
    assert again == result and again.status_code == 0xB000


def test_retrieve_instances_must_be_datasets() -> None:
    with pytest.raises(ValidationError):
        RetrieveResult(status="success", instances=["not a dataset"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "success"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
        (0xFE00, "cancel"),
        (0x0001, "warning_0x0001"),
        (0xB000, "warning_0xB000"),
        (0xB007, "warning_0xB007"),
        (0x0107, "warning_0x0107"),
        (0xA701, "failure_0xA701"),
        (0xA702, "failure_0xA702"),
        (0xA801, "failure_0xA801"),
        (0xA900, "failure_0xA900"),
        (0xC000, "failure_0xC000"),
        (0x0122, "failure_0x0122"),
        (0x1234, "failure_0x1234"),
    ],
)
def test_status_text(code: int, text: str) -> None:
    assert status_text(code) == text
    assert RetrieveResult(status=status_text(code)).status == text
    assert RetrieveResult(status=status_text(code), status_code=code).status_code == code


@pytest.mark.parametrize("code", [-1, 0x10000, True])
def test_status_text_invalid(code: int) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        status_text(code)


# --------------------------------------------------------------------------
# Python values: datetime.date, time, datetime and ranges of them in queries


def series_query(**fields: Any) -> SeriesQuery:
    return SeriesQuery(study_instance_uid=UID, **fields)


def image_query(**fields: Any) -> ImageQuery:
    return ImageQuery(study_instance_uid=UID, series_instance_uid=UID2, **fields)


PLUS_ONE = timezone(timedelta(hours=1))
MINUS_FIVE_THIRTY = timezone(-timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (date(2024, 1, 2), "20240102"),
        (datetime(2024, 1, 2, 23, 59, 59), "20240102"),  # a datetime is its day
        (date(999, 3, 4), "09990304"),  # four digits even before year 1000
        ((date(2024, 1, 1), date(2024, 1, 31)), "20240101-20240131"),
        ((date(2024, 1, 1), date(2024, 1, 1)), "20240101-20240101"),
        ((None, date(2024, 1, 31)), "-20240131"),
        ((date(2024, 1, 1), None), "20240101-"),
        ((datetime(2024, 1, 1, 12), date(2024, 1, 1)), "20240101-20240101"),
    ],
)
def test_date_keys_take_dates_and_ranges(value: Any, text: str) -> None:
    for query, field in [
        (StudyQuery(study_date=value), "study_date"),
        (PatientQuery(patient_birth_date=value), "patient_birth_date"),
        (WorklistQuery(scheduled_date=value), "scheduled_date"),
    ]:
        assert getattr(query, field) == text
    assert StudyQuery(study_date=value).to_identifier().StudyDate == text
    step = WorklistQuery(scheduled_date=value).to_identifier().ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartDate == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (time(10, 30), "103000"),
        (time(0, 0), "000000"),
        (time(10, 30, 5, 250000), "103005.250000"),
        (time(23, 59, 59, 999999), "235959.999999"),
        ((time(8), time(12)), "080000-120000"),
        ((None, time(12, 30)), "-123000"),
        ((time(8, 0, 0, 1), None), "080000.000001-"),
    ],
)
def test_time_keys_take_times_and_ranges(value: Any, text: str) -> None:
    assert StudyQuery(study_time=value).study_time == text
    assert WorklistQuery(scheduled_time=value).scheduled_time == text
    assert StudyQuery(study_time=value).to_identifier().StudyTime == text


@pytest.mark.parametrize(
    ("make", "keys", "expected"),
    [
        (
            PatientQuery,
            {"PatientBirthTime": time(6, 15), "LastMenstrualDate": (None, date(2024, 1, 1))},
            {"PatientBirthTime": "061500", "LastMenstrualDate": "-20240101"},
        ),
        (
            StudyQuery,
            {"PatientBirthDate": (date(1970, 1, 1), date(1979, 12, 31))},
            {"PatientBirthDate": "19700101-19791231"},
        ),
        (
            series_query,
            {"SeriesDate": date(2024, 5, 6), "SeriesTime": (time(8), None)},
            {"SeriesDate": "20240506", "SeriesTime": "080000-"},
        ),
        (
            image_query,
            {
                "AcquisitionDateTime": datetime(2024, 1, 2, 10, 30, tzinfo=PLUS_ONE),
                "ContentDate": date(2024, 1, 2),
            },
            {"AcquisitionDateTime": "20240102103000+0100", "ContentDate": "20240102"},
        ),
        (
            image_query,
            {"AcquisitionDateTime": (datetime(2024, 1, 2, 8), datetime(2024, 1, 2, 9, 0, 0, 5))},
            {"AcquisitionDateTime": "20240102080000-20240102090000.000005"},
        ),
        (
            image_query,
            {"AcquisitionDateTime": (None, datetime(2024, 1, 2, tzinfo=MINUS_FIVE_THIRTY))},
            {"AcquisitionDateTime": "-20240102000000-0530"},
        ),
        (
            image_query,
            {"AcquisitionDateTime": (date(2024, 1, 1), date(2024, 1, 1))},  # whole days
            {"AcquisitionDateTime": "20240101-20240101"},
        ),
        (
            WorklistQuery,
            {"PatientBirthDate": date(1970, 4, 12), "AdmissionID": "ADM*"},
            {"PatientBirthDate": "19700412", "AdmissionID": "ADM*"},
        ),
    ],
)
def test_extra_keys_take_python_values_by_vr(
    make: Any, keys: dict[str, Any], expected: dict[str, str]
) -> None:
    query = make(extra_keys=keys)
    assert query.extra_keys == expected
    identifier = query.to_identifier()
    for keyword, text in expected.items():
        assert identifier[keyword].value == text


def test_dicom_text_still_works_beside_python_values() -> None:
    query = StudyQuery(study_date="20240101-20240131", study_time=" 0800-1200 ")
    assert (query.study_date, query.study_time) == ("20240101-20240131", "0800-1200")
    assert StudyQuery(study_date="") == StudyQuery(study_date="")  # universal matching
    assert StudyQuery(study_date=(date(2024, 1, 1), date(2024, 1, 31))) == StudyQuery(
        study_date="20240101-20240131"
    )


def test_python_values_serialize_as_their_text() -> None:
    query = StudyQuery(study_date=date(2024, 1, 2), extra_keys={"PatientBirthTime": time(1)})
    dumped = query.model_dump()
    assert dumped["study_date"] == "20240102"
    assert dumped["extra_keys"] == {"PatientBirthTime": "010000"}
    assert StudyQuery.model_validate(dumped) == query
    assert StudyQuery.model_validate_json(query.model_dump_json()) == query
    # JSON carries the DICOM text, so the schema says a string (not an ISO date).
    schema = StudyQuery.model_json_schema()["properties"]["study_date"]
    assert schema["anyOf"][0]["type"] == "string"
    assert "format" not in str(schema)


@pytest.mark.parametrize(
    ("fields", "field", "problem", "allowed"),
    [
        ({"study_date": 20240102}, "study_date", "20240102 is an int", "a datetime.date"),
        ({"study_date": time(10)}, "study_date", "is a datetime.time", "a datetime.date"),
        ({"study_date": "2024-01-02"}, "study_date", "not a single value", "or a datetime.date"),
        ({"study_date": [date(2024, 1, 1), None]}, "study_date", "is a list", "(start, end)"),
        (
            {"study_date": (date(2024, 1, 1),)},
            "study_date",
            "a tuple of 1 item, not (start, end)",
            "a datetime.date",
        ),
        (
            {"study_date": (date(2024, 1, 1), date(2024, 2, 1), None)},
            "study_date",
            "a tuple of 3 items",
            "a datetime.date",
        ),
        ({"study_date": (None, None)}, "study_date", "open at both ends", "'' for universal"),
        (
            {"study_date": (date(2024, 2, 1), date(2024, 1, 1))},
            "study_date",
            "start is after its end",
            "a datetime.date",
        ),
        (
            {"study_date": (date(2024, 1, 1), "20240131")},
            "study_date",
            "has '20240131', which is a str",
            "a datetime.date",
        ),
        ({"study_time": datetime(2024, 1, 1, 10)}, "study_time", "is a datetime", "datetime.time"),
        ({"study_time": date(2024, 1, 1)}, "study_time", "is a datetime.date", "datetime.time"),
        (
            {"study_time": time(10, tzinfo=UTC)},
            "study_time",
            "has a time zone",
            "without tzinfo",
        ),
        (
            {"study_time": (time(23), time(1))},
            "study_time",
            "start is after its end (ranges across midnight",
            "datetime.time",
        ),
        ({"study_time": "25"}, "study_time", "hour 25", "or a datetime.time"),
        ({"study_time": 1030}, "study_time", "1030 is an int", "datetime.time"),
        (
            {"patient_birth_date": (date(2024, 1, 2), date(2024, 1, 1))},
            "patient_birth_date",
            "start is after its end",
            "datetime.date",
        ),
    ],
)
def test_python_values_refused_with_what_is_allowed(
    fields: dict[str, Any], field: str, problem: str, allowed: str
) -> None:
    model = PatientQuery if field == "patient_birth_date" else StudyQuery
    with pytest.raises(ValidationError) as exc:
        model.model_validate(fields)
    message = error_of(exc)
    assert message.startswith(f"{field}: Value error, {field} ")
    assert problem in message
    assert "allowed: " in message and allowed in message


@pytest.mark.parametrize(
    ("keys", "problem", "allowed"),
    [
        ({"PatientID": 12}, "'PatientID' has its own field", "use patient_id"),
        ({"InstitutionName": date(2024, 1, 1)}, "is a datetime.date", "allowed: text (VR LO)"),
        ({"InstitutionName": 5}, "is an int", "only for keywords of VR DA, TM or DT"),
        (
            {"PatientBirthTime": date(2024, 1, 1)},
            "['PatientBirthTime'] datetime.date(2024, 1, 1) is a datetime.date",
            "a datetime.time",
        ),
        ({"PatientBirthDate": time(1)}, "is a datetime.time", "a datetime.date"),
        ({"AcquisitionDateTime": time(1)}, "is a datetime.time", "a datetime.datetime"),
        (
            {"AcquisitionDateTime": datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=90)))},
            "not whole minutes",
            "a datetime.datetime",
        ),
        (
            {"AcquisitionDateTime": (datetime(2024, 1, 2), datetime(2024, 1, 1))},
            "start is after its end",
            "a datetime.datetime",
        ),
        (
            {"AcquisitionDateTime": (datetime(2024, 1, 2, 12), date(2024, 1, 1))},
            "start is after its end",
            "a datetime.datetime",
        ),
        ({"AcquisitionDateTime": "2024-01-01"}, "not a date-time", "or a datetime.datetime"),
        ({1: "x"}, "1 is an int", "keywords of the pydicom data dictionary"),
    ],
)
def test_extra_keys_python_values_refused(keys: dict[Any, Any], problem: str, allowed: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StudyQuery.model_validate({"extra_keys": keys})
    message = error_of(exc)
    assert message.startswith("extra_keys: Value error, extra_keys")
    assert problem in message and allowed in message


def test_a_dt_range_may_mix_offsets_and_whole_days() -> None:
    # No order is checked between an aware and a naive end (no common clock).
    aware = datetime(2024, 1, 2, 10, tzinfo=PLUS_ONE)
    query = image_query(extra_keys={"AcquisitionDateTime": (aware, datetime(2024, 1, 1))})
    assert query.extra_keys == {"AcquisitionDateTime": "20240102100000+0100-20240101000000"}
    # A date is its whole day: the day of a date-time after noon is not after it.
    same_day = (date(2024, 1, 1), datetime(2024, 1, 1, 12))
    query = image_query(extra_keys={"AcquisitionDateTime": same_day})
    assert query.extra_keys == {"AcquisitionDateTime": "20240101-20240101120000"}


# Hypothesis: what goes in as a Python value comes back out of the text.

naive_times = st.times().map(lambda t: t.replace(fold=0))
offsets = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
date_times = st.datetimes(timezones=st.none() | offsets).map(lambda d: d.replace(fold=0))


@given(st.dates())
def test_dates_round_trip(day: date) -> None:
    text = StudyQuery(study_date=day).study_date
    assert isinstance(text, str) and len(text) == 8
    assert parse_date(text) == day
    assert StudyResult(study_instance_uid=UID, study_date=text).study_date_value == day
    assert valuerep.DA(text) == day  # pydicom reads it the same


@given(st.dates(), st.dates())
def test_date_ranges_round_trip_or_are_refused(first: date, second: date) -> None:
    if first > second:
        with pytest.raises(ValidationError, match="start is after its end"):
            StudyQuery(study_date=(first, second))
        first, second = second, first
    text = StudyQuery(study_date=(first, second)).study_date
    assert isinstance(text, str)
    start, end = text.split("-")
    assert (parse_date(start), parse_date(end)) == (first, second)
    assert StudyQuery(study_date=(None, second)).study_date == f"-{end}"
    assert StudyQuery(study_date=(first, None)).study_date == f"{start}-"


@given(naive_times)
def test_times_round_trip(moment: time) -> None:
    text = StudyQuery(study_time=moment).study_time
    assert isinstance(text, str)
    assert parse_time(text) == moment
    assert StudyResult(study_instance_uid=UID, study_time=text).study_time_value == moment
    assert valuerep.TM(text) == moment


@given(naive_times, naive_times)
def test_time_ranges_round_trip_or_are_refused(first: time, second: time) -> None:
    if first > second:
        with pytest.raises(ValidationError, match="across midnight"):
            StudyQuery(study_time=(first, second))
        first, second = second, first
    text = StudyQuery(study_time=(first, second)).study_time
    assert isinstance(text, str)
    start, end = text.split("-")
    assert (parse_time(start), parse_time(end)) == (first, second)


@given(date_times)
def test_datetimes_round_trip(moment: datetime) -> None:
    query = image_query(extra_keys={"AcquisitionDateTime": moment})
    text = query.extra_keys["AcquisitionDateTime"]
    assert isinstance(text, str)
    back = parse_datetime(text)
    assert back == moment and back is not None
    assert back.utcoffset() == moment.utcoffset()
    assert valuerep.DT(text) == moment


@given(st.text(max_size=30) | st.from_regex(r"[0-9 .:+\-]{0,24}", fullmatch=True))
def test_parsing_a_peers_text_never_raises(text: str) -> None:
    for parse in (parse_date, parse_time, parse_datetime):
        value = parse(text)
        assert value is None or isinstance(value, date | time)


# --------------------------------------------------------------------------
# Python values in results, beside the DICOM text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240102", date(2024, 1, 2)),
        (" 20240102 ", date(2024, 1, 2)),
        ("20240102\x00", date(2024, 1, 2)),
        ("2024.01.02", date(2024, 1, 2)),  # ACR-NEMA
        ("20240230", None),
        ("20241301", None),
        ("2024", None),
        ("2024-01-02", None),
        ("20240101-20240131", None),
        ("20240101\\20240102", None),
        ("abcdefgh", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_date(text: str | None, expected: date | None) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", time(10)),
        ("1030", time(10, 30)),
        ("103005", time(10, 30, 5)),
        ("103005.5", time(10, 30, 5, 500000)),
        ("103005.123456 ", time(10, 30, 5, 123456)),
        ("235960", time(23, 59, 59)),  # a leap second
        ("10:30:05", time(10, 30, 5)),  # ACR-NEMA
        ("24", None),
        ("1060", None),
        ("103", None),
        ("103005.", None),
        ("103005.1234567", None),
        ("1030-1130", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time(text: str | None, expected: time | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("202401021030", datetime(2024, 1, 2, 10, 30)),
        ("20240102103005.25", datetime(2024, 1, 2, 10, 30, 5, 250000)),
        ("20240102103005+0100", datetime(2024, 1, 2, 10, 30, 5, tzinfo=PLUS_ONE)),
        ("20240102-0530", datetime(2024, 1, 2, tzinfo=MINUS_FIVE_THIRTY)),
        ("20240102235960", datetime(2024, 1, 2, 23, 59, 59)),
        ("20240230", None),
        ("2024010", None),
        ("202401021030.5", None),  # a fraction without seconds
        ("20240102+2400", None),
        ("20240102+0160", None),
        ("20240102-20240103", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_datetime(text: str | None, expected: datetime | None) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    if parsed is not None and expected is not None:
        assert parsed.utcoffset() == expected.utcoffset()


def test_results_give_python_values_beside_the_text() -> None:
    study = StudyResult.from_dataset(study_response())
    assert (study.study_date, study.study_date_value) == ("20240115", date(2024, 1, 15))
    assert (study.study_time, study.study_time_value) == ("101500", time(10, 15))
    patient = PatientResult(patient_id="P1", patient_birth_date="19700101")
    assert patient.patient_birth_date_value == date(1970, 1, 1)
    worklist = WorklistResult(
        patient_birth_date="19700412",
        scheduled_procedure_steps=[
            ScheduledProcedureStep(
                scheduled_procedure_step_start_date="20240105",
                scheduled_procedure_step_start_time="0930",
            )
        ],
    )
    assert worklist.patient_birth_date_value == date(1970, 4, 12)
    step = worklist.scheduled_procedure_steps[0]
    assert step.scheduled_procedure_step_start_date_value == date(2024, 1, 5)
    assert step.scheduled_procedure_step_start_time_value == time(9, 30)
    # Properties, not fields: out of model_dump and JSON, so a dump validates back.
    assert "study_date_value" not in study.model_dump()
    assert "study_date_value" not in StudyResult.model_json_schema()["properties"]
    assert StudyResult.model_validate(study.model_dump()) == study


@pytest.mark.parametrize(
    ("day", "moment"),
    [
        (b"20240230", b"2460"),
        (b"2024", b"103"),
        (b"junk\xff", b"junk\xff"),
        (b"20240101-20240131", b"10-11"),
        (b"", b""),
        (b"  ", b"  "),
    ],
)
def test_a_malformed_date_from_a_peer_is_none_and_never_raises(day: bytes, moment: bytes) -> None:
    ds = Dataset()
    ds.StudyInstanceUID = UID
    ds.PatientID = "P1"
    raw(ds, "StudyDate", "DA", day)
    raw(ds, "StudyTime", "TM", moment)
    raw(ds, "PatientBirthDate", "DA", day)
    result = StudyResult.from_dataset(read(encode(ds)))
    assert result.study_date_value is None and result.study_time_value is None
    assert PatientResult.from_dataset(ds).patient_birth_date_value is None
    step = Dataset()
    raw(step, "ScheduledProcedureStepStartDate", "DA", day)
    raw(step, "ScheduledProcedureStepStartTime", "TM", moment)
    parsed = ScheduledProcedureStep.from_dataset(step)
    assert parsed.scheduled_procedure_step_start_date_value is None
    assert parsed.scheduled_procedure_step_start_time_value is None


def test_every_date_and_time_field_of_a_result_has_its_value() -> None:
    # The naming rule: a DA or TM field "x" of a result has a property "x_value".
    from pydicom.datadict import dictionary_VR

    models: list[type[Result]] = [PatientResult, StudyResult, SeriesResult, ImageResult]
    models += [WorklistResult, ScheduledProcedureStep]
    for model in models:
        for field, keyword in model.keywords.items():
            if dictionary_VR(keyword) in ("DA", "TM", "DT"):
                assert isinstance(getattr(model, f"{field}_value", None), property), (
                    f"{model.__name__}.{field}_value"
                )
