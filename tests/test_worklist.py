"""Modality Worklist (PS3.4 Annex K): matching, answers, the folder, the query model.

The matching rules are tested one by one on :class:`WorklistMatcher`, each
with items that must match and items that must not; hypothesis checks the
wildcard and range matching against plain Python comparisons. The folder
is tested with real files (DCMTK-style ``.wl`` data sets and DICOM files
with meta information), bad files among them, its bounds, its re-reading
while serving, and the event loop staying responsive. The handler is
driven directly (as ``Server`` will call it) with identifiers that went
through the wire encoding, character sets included.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

import adicom
from adicom.dimse import Status
from adicom.errors import DimseError
from adicom.fileformat import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    decode_dataset,
    encode_dataset,
)
from adicom.models import ScheduledProcedureStep, WorklistQuery, WorklistResult
from adicom.qrscp import FindHandler, QRContext, QueryFailed
from adicom.values import element
from adicom.worklist import (
    MODALITY_WORKLIST_FIND,
    WorklistFolder,
    WorklistMatcher,
    fold_person_name,
    glob_match,
)

CONTEXT = QRContext(
    calling_ae="MODALITY",
    called_ae="WLSCP",
    sop_class_uid=MODALITY_WORKLIST_FIND,
    address=("127.0.0.1", 11112),
    message_id=1,
)


# --------------------------------------------------------------------------
# Building items and identifiers


def step(**keys: Any) -> Dataset:
    """A Scheduled Procedure Step item (keywords as arguments)."""
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return item


def make_item(
    accession: str,
    patient_name: str = "DOE^JOHN",
    patient_id: str = "P1",
    steps: Iterable[Dataset] = (),
    **extra: Any,
) -> Dataset:
    """A worklist item with the keys of Table K.6-1 that the tests use."""
    item = Dataset()
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    item.AccessionNumber = accession
    item.PatientName = patient_name
    item.PatientID = patient_id
    item.StudyInstanceUID = extra.get("StudyInstanceUID", "1.2.3." + str(abs(hash(accession))))
    item.RequestedProcedureID = "RP-" + accession
    item.ScheduledProcedureStepSequence = list(steps) or [
        step(Modality="CT", ScheduledStationAETitle="CT1", ScheduledProcedureStepID="S1")
    ]
    return item


def identifier(step_keys: dict[str, Any] | None = None, /, **keys: Any) -> Dataset:
    """A query identifier: ``None`` values are empty (return keys).

    Values go in unchecked, as a peer may send them (no pydicom warnings).
    """
    ds = Dataset()
    ds.add(element("AccessionNumber", None))
    for keyword, value in keys.items():
        ds.add(element(keyword, value))
    if step_keys is not None:
        item = Dataset()
        for keyword, value in step_keys.items():
            item.add(element(keyword, value))
        ds.add(element("ScheduledProcedureStepSequence", [item]))
    return ds


def matched(query: Dataset, items: Iterable[Dataset]) -> list[str]:
    """The accession numbers of the items the query matches."""
    return [str(answer.AccessionNumber) for answer in WorklistMatcher(query).filter(items)]


def refused(query: Dataset) -> QueryFailed:
    with pytest.raises(QueryFailed) as caught:
        WorklistMatcher(query)
    return caught.value


# --------------------------------------------------------------------------
# Universal and single value matching (C.2.2.2.1, C.2.2.2.3, K.2.2.1.1.1)


def test_universal_matching_matches_every_item_even_without_the_attribute() -> None:
    with_sex = make_item("A1", PatientSex="F")
    without = make_item("A2")
    assert matched(identifier(PatientSex=None), [with_sex, without]) == ["A1", "A2"]
    answers = WorklistMatcher(identifier(PatientSex=None)).filter([with_sex, without])
    assert answers[0].PatientSex == "F"
    assert "PatientSex" in answers[1] and not answers[1].PatientSex  # returned empty


def test_single_value_matching_is_exact_and_case_sensitive_for_text() -> None:
    items = [make_item("A1", patient_id="AV35674"), make_item("A2", patient_id="AV35675")]
    assert matched(identifier(PatientID="AV35674"), items) == ["A1"]
    assert matched(identifier(PatientID="av35674"), items) == []  # LO: case counts
    assert matched(identifier(PatientID="AV3567"), items) == []  # no prefix matching


def test_padding_spaces_do_not_count() -> None:
    items = [make_item("A1", patient_id="AV35674")]
    assert matched(identifier(PatientID=" AV35674 "), items) == ["A1"]


def test_an_item_without_the_value_matches_no_matching_key() -> None:
    # K.2.2.1.1.1: an unknown (absent or empty) value fails to match any key.
    items = [make_item("A1", PatientSex=""), make_item("A2"), make_item("A3", PatientSex="M")]
    assert matched(identifier(PatientSex="M"), items) == ["A3"]
    assert matched(identifier(PatientSex="?"), items) == ["A3"]


def test_a_lone_asterisk_is_universal_even_for_an_unknown_value() -> None:
    # C.2.2.2.4 note 1 and K.2.2.1.1.1 note 1.
    items = [make_item("A1", PatientSex=""), make_item("A2"), make_item("A3", PatientSex="M")]
    assert matched(identifier(PatientSex="*"), items) == ["A1", "A2", "A3"]
    assert matched(identifier(ReferringPhysicianName="**"), items) == ["A1", "A2", "A3"]


def test_a_multi_valued_attribute_matches_when_one_value_does() -> None:
    items = [
        make_item("A1", steps=[step(ScheduledStationAETitle=["AA32", "AA33"])]),
        make_item("A2", steps=[step(ScheduledStationAETitle="AA32")]),
        make_item("A3", steps=[step(ScheduledStationAETitle="AA34")]),
    ]
    assert matched(identifier({"ScheduledStationAETitle": "AA33"}), items) == ["A1"]
    assert matched(identifier({"ScheduledStationAETitle": "AA32"}), items) == ["A1", "A2"]


def test_numbers_match_by_value() -> None:
    # (A wildcard in a number never reaches matching: the identifier does not decode.)
    items = [make_item("A1", PatientWeight="70.0"), make_item("A2", PatientWeight="71")]
    assert matched(identifier(PatientWeight="70"), items) == ["A1"]
    assert matched(identifier(PatientWeight="7"), items) == []


# --------------------------------------------------------------------------
# Wild card matching (C.2.2.2.4)


def test_wildcards_in_text_keys() -> None:
    items = [
        make_item("A1", patient_id="AV35674", steps=[step(Modality="CT")]),
        make_item("A2", patient_id="AV45674", steps=[step(Modality="CR")]),
        make_item("A3", patient_id="BV35674", steps=[step(Modality="MR")]),
    ]
    assert matched(identifier(PatientID="AV*"), items) == ["A1", "A2"]
    assert matched(identifier(PatientID="?V35674"), items) == ["A1", "A3"]
    assert matched(identifier(PatientID="A?5674"), items) == []  # ? is one character
    assert matched(identifier(PatientID="av*"), items) == []  # LO wildcards keep case
    assert matched(identifier({"Modality": "C?"}), items) == ["A1", "A2"]
    assert matched(identifier(PatientID="*674"), items) == ["A1", "A2", "A3"]


def test_wildcards_are_not_regular_expressions() -> None:
    items = [make_item("A1", patient_id="A.B[1]"), make_item("A2", patient_id="AxB1")]
    assert matched(identifier(PatientID="A.B[1]"), items) == ["A1"]
    assert matched(identifier(PatientID="A.B*"), items) == ["A1"]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", "1.2.*"),
        ("StudyInstanceUID", "1.2.?"),
        ("PatientBirthDate", "1990*"),
        ("PatientAge", "04?Y"),
    ],
)
def test_wildcards_are_refused_where_the_vr_takes_none(keyword: str, value: str) -> None:
    failure = refused(identifier(**{keyword: value}))
    assert failure.status == 0xA900  # Status.IDENTIFIER_DOES_NOT_MATCH
    assert "wildcard" in failure.comment
    assert len(failure.comment) <= 64  # it goes into Error Comment (LO)


@given(
    pattern=st.text(alphabet="ab*?", max_size=8),
    text=st.text(alphabet="ab", max_size=8),
)
def test_glob_match_agrees_with_a_regular_expression(pattern: str, text: str) -> None:
    reference = re.fullmatch(fnmatch.translate(pattern), text, re.DOTALL) is not None
    assert glob_match(pattern, text) == reference


def test_glob_match_takes_linear_steps_on_a_backtracking_pattern() -> None:
    # "*a*a*...b" against a run of "a": exponential for a backtracking regex.
    pattern = "*a" * 40 + "b"
    text = "a" * 2000
    assert glob_match(pattern, text) is False
    assert glob_match(pattern[:-1], text) is True


# --------------------------------------------------------------------------
# Person names (C.2.2.2.1, C.2.2.2.4: case left to the SCP; adicom ignores it)


def test_person_names_match_without_regard_to_case() -> None:
    items = [make_item("A1", "VIVALDI^ANTONIO"), make_item("A2", "Vivaldo^Antonio")]
    assert matched(identifier(PatientName="vivaldi^antonio"), items) == ["A1"]
    assert matched(identifier(PatientName="vival*"), items) == ["A1", "A2"]
    assert matched(identifier(PatientName="VIVALD?^ANTONIO"), items) == ["A1", "A2"]
    assert matched(identifier(PatientName="VIVALDI"), items) == []  # family name alone


def test_person_names_ignore_empty_trailing_components() -> None:
    items = [make_item("A1", "VIVALDI^ANTONIO^^^"), make_item("A2", "VIVALDI^ANTONIO^X")]
    assert matched(identifier(PatientName="VIVALDI^ANTONIO"), items) == ["A1"]
    assert matched(identifier(PatientName="VIVALDI^ANTONIO^^"), items) == ["A1"]


def test_a_single_group_key_matches_any_component_group() -> None:
    item = make_item(
        "A1",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
    )
    assert matched(identifier(PatientName="YAMADA^TAROU"), [item]) == ["A1"]
    assert matched(identifier(PatientName="山田^太郎"), [item]) == ["A1"]
    assert matched(identifier(PatientName="山田*"), [item]) == ["A1"]
    # With "=", the key is the whole name.
    assert matched(identifier(PatientName="Yamada^Tarou=山田^太郎"), [item]) == []
    assert matched(identifier(PatientName="Yamada^Tarou=山田^太郎=*"), [item]) == ["A1"]


def test_fold_person_name() -> None:
    assert fold_person_name("Wang^XiaoDong^^=王^小東=") == "wang^xiaodong=王^小東"
    assert fold_person_name("STRASSE") == fold_person_name("Straße")


# --------------------------------------------------------------------------
# Range matching (C.2.2.2.5)


def dated(accession: str, day: str, time: str = "120000", **more: Any) -> Dataset:
    return make_item(
        accession,
        steps=[
            step(
                ScheduledProcedureStepStartDate=day,
                ScheduledProcedureStepStartTime=time,
                Modality="CT",
                **more,
            )
        ],
    )


DAYS = [dated("D1", "20240101"), dated("D2", "20240102"), dated("D3", "20240103")]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("20240102", ["D2"]),
        ("20240101-20240102", ["D1", "D2"]),
        ("20240102-", ["D2", "D3"]),
        ("-20240101", ["D1"]),
        ("20240104-", []),
    ],
)
def test_date_matching(key: str, expected: list[str]) -> None:
    assert matched(identifier({"ScheduledProcedureStepStartDate": key}), DAYS) == expected


@pytest.mark.parametrize(
    "key",
    ["2024XX01-", "20240230", "20240105-20240101", "2024-01-05", "-", "20240101--20240102"],
)
def test_an_invalid_date_key_is_refused_with_0xA900(key: str) -> None:
    failure = refused(identifier({"ScheduledProcedureStepStartDate": key}))
    assert failure.status == Status.IDENTIFIER_DOES_NOT_MATCH
    assert failure.comment.startswith("(0040,0002)")


TIMES = [dated("T1", "20240101", "075959"), dated("T2", "20240101", "160700"),
         dated("T3", "20240101", "1630"), dated("T4", "20240101", "170001")]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("080000-170000", ["T2", "T3"]),
        ("-0800", ["T1"]),
        ("17-", ["T4"]),
        ("16", ["T2", "T3"]),  # an hour: 16:00:00 to 16:59:59.999999
        ("1607", ["T2"]),
        ("160700", ["T2"]),
        ("1630", ["T3"]),
        ("163000", ["T3"]),  # the item's "1630" is 16:30:00
        ("0800-0900", []),
    ],
)
def test_time_matching(key: str, expected: list[str]) -> None:
    assert matched(identifier({"ScheduledProcedureStepStartTime": key}), TIMES) == expected


def test_an_invalid_time_key_is_refused() -> None:
    for key in ("2500", "1700-0800", "12:00", "12*"):
        failure = refused(identifier({"ScheduledProcedureStepStartTime": key}))
        assert failure.status == Status.IDENTIFIER_DOES_NOT_MATCH, key


SPAN = [
    dated("S1", "20240101", "070000"),  # before 08:00 on the first day
    dated("S2", "20240101", "090000"),
    dated("S3", "20240102", "030000"),  # outside 08-17, but inside the combined range
    dated("S4", "20240103", "163000"),
    dated("S5", "20240103", "180000"),  # after 17:00 on the last day
    dated("S6", "20240104", "100000"),
]


@pytest.mark.parametrize(
    ("day", "time", "expected"),
    [
        # PS3.4 C.2.2.2.5: <date1><time1> to <date2><time2>, not two separate ranges.
        ("20240101-20240103", "080000-170000", ["S2", "S3", "S4"]),
        ("20240102", "0000-0400", ["S3"]),
        ("20240103", "1630", ["S4"]),
        ("20240102-", "120000-", ["S4", "S5", "S6"]),
        ("-20240101", "-080000", ["S1"]),
        # A side the date leaves open stays open.
        ("-20240102", "080000-", ["S1", "S2", "S3"]),
    ],
)
def test_start_date_and_time_together_are_one_range(
    day: str, time: str, expected: list[str]
) -> None:
    keys = {"ScheduledProcedureStepStartDate": day, "ScheduledProcedureStepStartTime": time}
    assert matched(identifier(keys), SPAN) == expected


def test_a_combined_range_may_run_through_the_night() -> None:
    night = [
        dated("N1", "20240101", "210000"),
        dated("N2", "20240101", "230000"),
        dated("N3", "20240102", "050000"),
        dated("N4", "20240102", "070000"),
    ]
    keys = {"ScheduledProcedureStepStartDate": "20240101-20240102"}
    keys["ScheduledProcedureStepStartTime"] = "2200-0600"
    assert matched(identifier(keys), night) == ["N2", "N3"]
    # On one day, such a range is empty: refused rather than answered with nothing.
    keys["ScheduledProcedureStepStartDate"] = "20240101"
    failure = refused(identifier(keys))
    assert failure.status == Status.IDENTIFIER_DOES_NOT_MATCH
    assert failure.comment.startswith("(0040,0003)")


def test_start_date_or_time_alone_match_separately() -> None:
    only_time = identifier({"ScheduledProcedureStepStartTime": "080000-170000"})
    assert matched(only_time, SPAN) == ["S2", "S4", "S6"]
    only_date = identifier(
        {
            "ScheduledProcedureStepStartDate": "20240101-20240103",
            "ScheduledProcedureStepStartTime": "",
        }
    )
    assert matched(only_date, SPAN) == ["S1", "S2", "S3", "S4", "S5"]


def test_other_date_and_time_pairs_are_not_combined() -> None:
    items = [
        make_item("A1", PatientBirthDate="19900102", PatientBirthTime="030000"),
        make_item("A2", PatientBirthDate="19900101", PatientBirthTime="090000"),
    ]
    query = identifier(PatientBirthDate="19900101-19900103", PatientBirthTime="080000-170000")
    assert matched(query, items) == ["A2"]


moments = st.datetimes(min_value=datetime(2023, 12, 30), max_value=datetime(2024, 1, 5))


def dicom_moment(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


@settings(max_examples=200)
@given(
    item=moments,
    start=moments,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=4)),
)
def test_combined_range_matches_as_datetimes_do(
    item: datetime, start: datetime, length: timedelta
) -> None:
    end = start + length
    item, start, end = (m.replace(microsecond=0) for m in (item, start, end))
    (day, time), (day1, time1), (day2, time2) = map(dicom_moment, (item, start, end))
    query = identifier(
        {
            "ScheduledProcedureStepStartDate": f"{day1}-{day2}",
            "ScheduledProcedureStepStartTime": f"{time1}-{time2}",
        }
    )
    assert bool(matched(query, [dated("X", day, time)])) == (start <= item <= end)


@given(
    day=st.dates(min_value=date(2020, 1, 1), max_value=date(2020, 12, 31)),
    low=st.none() | st.dates(min_value=date(2020, 1, 1), max_value=date(2020, 12, 31)),
    high=st.none() | st.dates(min_value=date(2020, 1, 1), max_value=date(2020, 12, 31)),
)
def test_date_ranges_match_as_dates_do(day: date, low: date | None, high: date | None) -> None:
    if (low is None and high is None) or (low and high and low > high):
        return
    key = f"{low.strftime('%Y%m%d') if low else ''}-{high.strftime('%Y%m%d') if high else ''}"
    item = dated("X", day.strftime("%Y%m%d"))
    expected = (low is None or low <= day) and (high is None or day <= high)
    assert bool(matched(identifier({"ScheduledProcedureStepStartDate": key}), [item])) == expected


def test_datetime_ranges() -> None:
    items = [
        make_item("A1", steps=[step(ScheduledProcedureStepExpirationDateTime="20240101120000")]),
        make_item("A2", steps=[step(ScheduledProcedureStepExpirationDateTime="20240102")]),
        make_item("A3", steps=[step(ScheduledProcedureStepExpirationDateTime="2024010318+0100")]),
    ]
    key = "ScheduledProcedureStepExpirationDateTime"
    assert matched(identifier({key: "20240101-20240102"}), items) == ["A1", "A2"]
    assert matched(identifier({key: "2024010112-"}), items) == ["A1", "A2", "A3"]
    assert matched(identifier({key: "-20240101115959"}), items) == []
    assert matched(identifier({key: "202401031800-0100-"}), items) == ["A3"]
    assert refused(identifier({key: "2024*"})).status == Status.IDENTIFIER_DOES_NOT_MATCH


# --------------------------------------------------------------------------
# List of UID matching (C.2.2.2.2), and lists elsewhere


def test_list_of_uid_matching() -> None:
    items = [make_item(f"A{n}", StudyInstanceUID=f"1.2.3.{n}") for n in range(1, 4)]
    assert matched(identifier(StudyInstanceUID="1.2.3.1\\1.2.3.3"), items) == ["A1", "A3"]
    assert matched(identifier(StudyInstanceUID="1.2.3.2"), items) == ["A2"]
    assert matched(identifier(StudyInstanceUID="1.2.3"), items) == []


@pytest.mark.parametrize("uid", ["1.2.*", "1.02.3", "1.2.3\\", "1..2", "abc"])
def test_an_invalid_uid_key_is_refused(uid: str) -> None:
    assert refused(identifier(StudyInstanceUID=uid)).status == Status.IDENTIFIER_DOES_NOT_MATCH


def test_a_list_is_refused_where_one_value_goes() -> None:
    # Multiple Value Matching is an extended negotiation adicom does not offer.
    failure = refused(identifier({"Modality": "CT\\MR"}))
    assert failure.status == Status.IDENTIFIER_DOES_NOT_MATCH
    assert "list" in failure.comment


# --------------------------------------------------------------------------
# Sequence matching (C.2.2.2.6) and answers


TWO_STEPS = make_item(
    "M1",
    steps=[
        step(Modality="MR", ScheduledStationAETitle="SCANNER1", ScheduledProcedureStepID="S1"),
        step(Modality="CT", ScheduledStationAETitle="SCANNER2", ScheduledProcedureStepID="S2"),
    ],
)


def test_a_step_key_matches_when_one_step_matches_and_only_that_step_is_returned() -> None:
    query = identifier({"Modality": "CT", "ScheduledProcedureStepID": None})
    (answer,) = WorklistMatcher(query).filter([TWO_STEPS])
    steps = answer.ScheduledProcedureStepSequence
    assert len(steps) == 1
    assert steps[0].Modality == "CT" and steps[0].ScheduledProcedureStepID == "S2"
    assert set(steps[0].keys()) == {0x00080060, 0x00400009}  # the keys asked for only
    assert matched(identifier({"Modality": "US"}), [TWO_STEPS]) == []


def test_all_step_keys_must_match_in_the_same_step() -> None:
    same = identifier({"Modality": "CT", "ScheduledStationAETitle": "SCANNER2"})
    crossed = identifier({"Modality": "CT", "ScheduledStationAETitle": "SCANNER1"})
    assert matched(same, [TWO_STEPS]) == ["M1"]
    assert matched(crossed, [TWO_STEPS]) == []


def test_a_universal_sequence_key_returns_the_steps_whole() -> None:
    for query in (identifier({}), identifier(ScheduledProcedureStepSequence=[])):
        (answer,) = WorklistMatcher(query).filter([TWO_STEPS])
        steps = answer.ScheduledProcedureStepSequence
        assert [s.ScheduledProcedureStepID for s in steps] == ["S1", "S2"]
        assert steps[0].ScheduledStationAETitle == "SCANNER1"


def test_step_return_keys_answer_every_step() -> None:
    query = identifier({"ScheduledProcedureStepID": None, "ScheduledStationName": None})
    (answer,) = WorklistMatcher(query).filter([TWO_STEPS])
    steps = answer.ScheduledProcedureStepSequence
    assert [s.ScheduledProcedureStepID for s in steps] == ["S1", "S2"]
    assert all("ScheduledStationName" in s and not s.ScheduledStationName for s in steps)


def test_an_item_without_steps_matches_only_universal_step_keys() -> None:
    bare = make_item("B1")
    del bare.ScheduledProcedureStepSequence
    assert matched(identifier({"ScheduledProcedureStepID": None}), [bare]) == ["B1"]
    assert matched(identifier({"Modality": "CT"}), [bare]) == []
    (answer,) = WorklistMatcher(identifier({})).filter([bare])
    assert len(answer.ScheduledProcedureStepSequence) == 0


def test_nested_sequence_matching() -> None:
    def coded(code: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "99X", "P " + code
        return item

    items = [
        make_item("A1", steps=[step(Modality="CT", ScheduledProtocolCodeSequence=[coded("P1")])]),
        make_item("A2", steps=[step(Modality="CT", ScheduledProtocolCodeSequence=[coded("P2")])]),
    ]
    code = Dataset()
    code.add(element("CodeValue", "P2"))
    code.add(element("CodeMeaning", None))
    query = identifier({"ScheduledProtocolCodeSequence": [code]})
    (answer,) = WorklistMatcher(query).filter(items)
    assert answer.AccessionNumber == "A2"
    (protocol,) = answer.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence
    assert protocol.CodeMeaning == "P P2" and "CodingSchemeDesignator" not in protocol


def test_a_sequence_key_with_two_items_is_refused() -> None:
    failure = refused(identifier(ScheduledProcedureStepSequence=[Dataset(), Dataset()]))
    assert failure.status == Status.IDENTIFIER_DOES_NOT_MATCH
    assert failure.comment.startswith("(0040,0100)")


def test_sequence_keys_nested_too_deep_are_refused() -> None:
    inner = Dataset()
    inner.add(element("CodeValue", "X"))
    for _ in range(12):
        outer = Dataset()
        outer.add(element("ScheduledProtocolCodeSequence", [inner]))
        inner = outer
    assert refused(identifier(**{"ScheduledProtocolCodeSequence": [inner]})).status == 0xA900


def test_the_answer_holds_exactly_the_keys_asked_for() -> None:
    item = make_item("A1", PatientSex="F", PatientBirthDate="19800101", AdmissionID="ADM1")
    query = identifier(PatientName=None, PatientSex="F", QueryRetrieveLevel="WORKLIST")
    query.add_new(0x00091010, "UN", b"")  # a private key: returned empty
    (answer,) = WorklistMatcher(query).filter([item])
    assert sorted(answer.keys()) == [0x00080050, 0x00091010, 0x00100010, 0x00100040]
    assert (answer.AccessionNumber, answer.PatientName, answer.PatientSex) == (
        "A1",
        "DOE^JOHN",
        "F",
    )
    assert not answer[0x00091010].value


def test_the_answer_carries_the_item_character_set() -> None:
    item = make_item("A1", "Müller^Hans", SpecificCharacterSet="ISO_IR 100")
    (answer,) = WorklistMatcher(identifier(PatientName=None)).filter([item])
    assert answer.SpecificCharacterSet == "ISO_IR 100"
    (plain,) = WorklistMatcher(identifier(PatientName=None)).filter([make_item("A2")])
    assert "SpecificCharacterSet" not in plain


def test_answers_do_not_share_values_with_the_items() -> None:
    item = make_item("A1", steps=[step(ScheduledStationAETitle=["AA32", "AA33"])])
    (answer,) = WorklistMatcher(identifier({})).filter([item])
    answer.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "CHANGED"
    answer.AccessionNumber = "CHANGED"
    assert item.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == ["AA32", "AA33"]
    assert item.AccessionNumber == "A1"


# --------------------------------------------------------------------------
# Through the wire encoding, character sets included


def over_the_wire(ds: Dataset, syntax: str = EXPLICIT_VR_LITTLE_ENDIAN) -> Dataset:
    return decode_dataset(encode_dataset(ds, syntax), syntax)


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN])
def test_matching_across_character_sets_and_answering_in_the_item_set(syntax: str) -> None:
    latin = make_item(
        "L1",
        "Müller^Hans",
        SpecificCharacterSet="ISO_IR 100",
        steps=[step(Modality="MR", ScheduledPerformingPhysicianName="Sørensen^Åse")],
    )
    held = over_the_wire(latin)  # as a file reader would have it
    query = identifier({"ScheduledPerformingPhysicianName": "SØRENSEN*"}, PatientName="müller*")
    query.add(element("SpecificCharacterSet", "ISO_IR 192"))
    received = over_the_wire(query, syntax)
    answers = WorklistMatcher(received).filter([held])
    assert len(answers) == 1
    back = over_the_wire(answers[0], syntax)
    assert back.SpecificCharacterSet == "ISO_IR 100"
    assert str(back.PatientName) == "Müller^Hans"
    physician = back.ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName
    assert str(physician) == "Sørensen^Åse"
    # The bytes are Latin-1, as the set says, not UTF-8.
    assert "Müller".encode("latin-1") in encode_dataset(answers[0], syntax)


# --------------------------------------------------------------------------
# The query model (adicom.models.WorklistQuery)


def test_worklist_query_builds_the_identifier_with_the_usual_return_keys() -> None:
    query = WorklistQuery(
        scheduled_station_ae_title="CT1",
        scheduled_date=date(2024, 1, 5),
        scheduled_time="0800-1200",
        modality="CT",
        patient_name="Müller*",
        return_keys=["AdmissionID"],
    )
    ds = query.to_identifier()
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "QueryRetrieveLevel" not in ds
    assert ds.PatientName == "Müller*" and not ds.AdmissionID and not ds.PatientID
    for keyword in WorklistResult.keywords.values():
        assert keyword in ds
    (item,) = ds.ScheduledProcedureStepSequence
    assert item.ScheduledStationAETitle == "CT1" and item.Modality == "CT"
    assert item.ScheduledProcedureStepStartDate == "20240105"
    assert item.ScheduledProcedureStepStartTime == "0800-1200"
    for keyword in ScheduledProcedureStep.keywords.values():
        assert keyword in item


def test_worklist_query_identifier_matches_what_it_says() -> None:
    items = [
        dated("W1", "20240105", "0900", ScheduledStationAETitle="CT1"),
        dated("W2", "20240105", "1300", ScheduledStationAETitle="CT1"),
        dated("W3", "20240105", "0900", ScheduledStationAETitle="CT2"),
        dated("W4", "20240106", "0900", ScheduledStationAETitle="CT1"),
    ]
    query = WorklistQuery(
        scheduled_station_ae_title="CT1", scheduled_date="20240105", scheduled_time="08-12"
    )
    assert matched(over_the_wire(query.to_identifier()), items) == ["W1"]
    everything = WorklistQuery()
    assert matched(over_the_wire(everything.to_identifier()), items) == ["W1", "W2", "W3", "W4"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheduled_date", "2024XX01-"),
        ("scheduled_time", "2500"),
        ("scheduled_station_ae_title", "A\\B"),
        ("study_instance_uid", "1.2.*"),
        ("modality", "ct"),
    ],
)
def test_worklist_query_refuses_bad_keys(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        WorklistQuery.model_validate({field: value})


def test_worklist_query_extra_keys() -> None:
    query = WorklistQuery(extra_keys={"AdmissionID": "ADM*"})
    assert query.to_identifier().AdmissionID == "ADM*"
    with pytest.raises(ValidationError, match="has its own field"):
        WorklistQuery(extra_keys={"Modality": "CT"})
    with pytest.raises(ValidationError, match="not a DICOM keyword"):
        WorklistQuery(extra_keys={"Modalty": "CT"})


def test_worklist_result_from_an_answer() -> None:
    (answer,) = WorklistMatcher(WorklistQuery(modality="CT").to_identifier()).filter([TWO_STEPS])
    result = WorklistResult.from_dataset(over_the_wire(answer))
    assert result.accession_number == "M1" and result.patient_name == "DOE^JOHN"
    assert [s.modality for s in result.scheduled_procedure_steps] == ["CT"]
    assert result.scheduled_procedure_steps[0].scheduled_station_ae_title == "SCANNER2"
    assert "ScheduledProcedureStepSequence" not in result.extra
    assert result.dataset is not None


# --------------------------------------------------------------------------
# The folder


def write_item(path: Path, item: Dataset, *, meta: bool = False) -> Path:
    """Write ``item`` as DCMTK's dump2dcm does (with meta) or as a bare data set (.wl)."""
    if meta:
        item.file_meta = FileMetaDataset()
        item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
        item.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        item.save_as(path, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, item, implicit_vr=True, little_endian=True)
    return path


def bump(path: Path) -> None:
    """Give ``path`` a modification time of its own (file systems have coarse clocks)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


async def find(folder: WorklistFolder, query: Dataset) -> list[str]:
    return [str(answer.AccessionNumber) async for answer in folder.find(query, CONTEXT)]


@pytest.mark.anyio
async def test_folder_reads_wl_data_sets_and_dicom_files(tmp_path: Path) -> None:
    write_item(tmp_path / "a.wl", make_item("A1"))
    write_item(tmp_path / "b.dcm", make_item("B1"), meta=True)
    write_item(tmp_path / "noext", make_item("C1"), meta=True)
    folder = WorklistFolder(tmp_path)
    assert await find(folder, identifier({})) == ["A1", "B1", "C1"]
    assert [Path(str(item.filename)).name for item in folder.items] == ["a.wl", "b.dcm", "noext"]


@pytest.mark.anyio
async def test_folder_skips_and_logs_unusable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    write_item(tmp_path / "good.wl", make_item("G1"))
    (tmp_path / "garbage.wl").write_bytes(b"\x08\x00\x50\x00\xff\xff\xff\x7f" + b"x" * 40)
    (tmp_path / "readme.txt").write_text("worklist items go here\n")
    (tmp_path / "empty.wl").write_bytes(b"")
    image = make_item("I1")
    del image.ScheduledProcedureStepSequence
    write_item(tmp_path / "image.dcm", image, meta=True)
    # Left alone without a word: wlmscpfs's lock file, hidden and partial files.
    (tmp_path / "lockfile").write_bytes(b"")
    write_item(tmp_path / ".hidden.wl", make_item("H1"))
    write_item(tmp_path / "copying.wl.part", make_item("P1"))
    folder = WorklistFolder(tmp_path)
    assert await find(folder, identifier({})) == ["G1"]
    skipped = {r.getMessage().split()[2] for r in caplog.records if "skipped" in r.getMessage()}
    assert {Path(s).name for s in skipped} == {"garbage.wl", "readme.txt", "empty.wl", "image.dcm"}
    assert "no Scheduled Procedure Step Sequence" in caplog.text
    # Logged once: asking again reads nothing again.
    caplog.clear()
    assert await find(folder, identifier({})) == ["G1"]
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


@pytest.mark.anyio
async def test_folder_follows_changes_while_serving(tmp_path: Path) -> None:
    first = write_item(tmp_path / "1.wl", make_item("A1", patient_id="P1"))
    folder = WorklistFolder(tmp_path)
    assert await find(folder, identifier(PatientID="P1")) == ["A1"]
    # Added.
    write_item(tmp_path / "2.wl", make_item("A2", patient_id="P1"))
    assert await find(folder, identifier(PatientID="P1")) == ["A1", "A2"]
    # Changed in place.
    write_item(first, make_item("A1", patient_id="P9-CHANGED"))
    bump(first)
    assert await find(folder, identifier(PatientID="P1")) == ["A2"]
    assert await find(folder, identifier(PatientID="P9*")) == ["A1"]
    # Removed.
    (tmp_path / "2.wl").unlink()
    assert await find(folder, identifier({})) == ["A1"]
    # A file that was unusable and is then fixed is read again.
    broken = tmp_path / "3.wl"
    broken.write_bytes(b"not yet")
    assert await find(folder, identifier({})) == ["A1"]
    write_item(broken, make_item("A3"))
    bump(broken)
    assert await find(folder, identifier({})) == ["A1", "A3"]


@pytest.mark.anyio
async def test_folder_reads_only_what_changed(tmp_path: Path) -> None:
    for n in range(3):
        write_item(tmp_path / f"{n}.wl", make_item(f"A{n}"))
    folder = WorklistFolder(tmp_path)
    await folder.refresh()
    before = folder.items
    await folder.refresh()
    assert all(a is b for a, b in zip(before, folder.items, strict=True))
    write_item(tmp_path / "1.wl", make_item("A1-NEW"))
    bump(tmp_path / "1.wl")
    await folder.refresh()
    assert folder.items[0] is before[0] and folder.items[2] is before[2]
    assert folder.items[1] is not before[1] and folder.items[1].AccessionNumber == "A1-NEW"


@pytest.mark.anyio
async def test_folder_bounds_items_and_file_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(4):
        write_item(tmp_path / f"{n}.wl", make_item(f"A{n}"))
    big = make_item("BIG", PatientComments="x" * 5000)
    write_item(tmp_path / "0-big.wl", big)
    folder = WorklistFolder(tmp_path, max_items=3, max_file_bytes=4096)
    assert await find(folder, identifier({})) == ["A0", "A1", "A2"]
    assert "more than max_file_bytes" in caplog.text
    assert "more than 3 items" in caplog.text
    caplog.clear()
    assert await find(folder, identifier({})) == ["A0", "A1", "A2"]
    assert "more than 3 items" not in caplog.text  # said once


@pytest.mark.anyio
async def test_a_query_ends_with_0xA700_after_max_matches(tmp_path: Path) -> None:
    for n in range(5):
        write_item(tmp_path / f"{n}.wl", make_item(f"A{n}", patient_id="SAME"))
    folder = WorklistFolder(tmp_path, max_matches=3)
    answers: list[str] = []
    with pytest.raises(QueryFailed) as caught:
        async for answer in folder.find(identifier(PatientID="SAME"), CONTEXT):
            answers.append(str(answer.AccessionNumber))
    assert answers == ["A0", "A1", "A2"]
    assert caught.value.status == 0xA700  # Status.OUT_OF_RESOURCES
    # Exactly max_matches matches is a plain success.
    assert await find(WorklistFolder(tmp_path, max_matches=5), identifier()) == [
        f"A{n}" for n in range(5)
    ]


@pytest.mark.anyio
async def test_a_bad_identifier_fails_before_the_folder_is_read(tmp_path: Path) -> None:
    write_item(tmp_path / "a.wl", make_item("A1"))
    folder = WorklistFolder(tmp_path)
    with pytest.raises(QueryFailed) as caught:
        await find(folder, identifier({"ScheduledProcedureStepStartDate": "2024XX01-"}))
    assert caught.value.status == 0xA900
    assert folder.items == ()


@pytest.mark.anyio
async def test_a_folder_gone_is_0xC000(tmp_path: Path) -> None:
    where = tmp_path / "wl"
    where.mkdir()
    folder = WorklistFolder(where)
    where.rmdir()
    with pytest.raises(QueryFailed) as caught:
        await find(folder, identifier())
    assert caught.value.status == 0xC000  # Status.CANNOT_UNDERSTAND


def test_folder_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        WorklistFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_items"):
        WorklistFolder(tmp_path, max_items=0)


@pytest.mark.anyio
async def test_reading_and_matching_leave_the_loop_responsive(tmp_path: Path) -> None:
    for n in range(60):
        write_item(tmp_path / f"{n:03}.wl", make_item(f"A{n:03}"))
    folder = WorklistFolder(tmp_path, files_per_step=4, items_per_step=10)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await folder.refresh()
        after_reading = ticks
        # 60 files read 4 at a time: the loop ran in between at least 14 times.
        assert after_reading >= 14
        names = await find(folder, identifier(PatientID="nobody"))
        assert names == []
        assert ticks - after_reading >= 5  # 60 items matched 10 at a time
        assert threading.active_count() == 1
    finally:
        stop.set()
        await task


@pytest.mark.anyio
async def test_the_handler_fits_the_find_handler_type(tmp_path: Path) -> None:
    write_item(tmp_path / "a.wl", make_item("A1"))
    handler: FindHandler = WorklistFolder(tmp_path).find
    answers = [answer async for answer in handler(identifier(), CONTEXT)]
    assert len(answers) == 1 and isinstance(answers[0], Dataset)


# --------------------------------------------------------------------------
# End to end: adicom.Server(on_worklist=WorklistFolder.find) and DicomClient.find_worklist


@pytest.mark.anyio
async def test_end_to_end_through_server_and_client(tmp_path: Path) -> None:
    write_item(tmp_path / "1.wl", dated("E1", "20240105", "0900", ScheduledStationAETitle="CT1"))
    write_item(
        tmp_path / "2.wl",
        make_item(
            "E2",
            "Müller^Hans",
            SpecificCharacterSet="ISO_IR 100",
            steps=[
                step(
                    Modality="MR",
                    ScheduledStationAETitle="MR1",
                    ScheduledProcedureStepStartDate="20240105",
                )
            ],
        ),
        meta=True,
    )
    folder = WorklistFolder(tmp_path, max_matches=1)
    client = adicom.DicomClient("MODALITY")
    async with adicom.Server("WLSCP", port=0, on_worklist=folder.find) as server:
        node = adicom.DicomNode(aet="WLSCP", host="127.0.0.1", port=server.port)
        ct = await client.find_worklist(WorklistQuery(scheduled_station_ae_title="CT1"), node)
        assert [r.accession_number for r in ct] == ["E1"]
        assert ct[0].scheduled_procedure_steps[0].scheduled_procedure_step_start_time == "0900"
        mr = await client.find_worklist(WorklistQuery(patient_name="müller*"), node)
        assert [r.patient_name for r in mr] == ["Müller^Hans"]
        assert mr[0].dataset is not None and mr[0].dataset.SpecificCharacterSet == "ISO_IR 100"
        # A refusal and the cap come back as failure statuses.
        bad = identifier({"ScheduledProcedureStepStartDate": "2024XX01-"})
        with pytest.raises(DimseError) as refused:
            await client.find_worklist(bad, node)
        assert refused.value.status == 0xA900 and "(0040,0002)" in str(refused.value)
        with pytest.raises(DimseError) as capped:
            await client.find_worklist(WorklistQuery(scheduled_date="20240105"), node)
        assert capped.value.status == 0xA700


# --------------------------------------------------------------------------
# The command line


@pytest.mark.anyio
async def test_the_cli_queries_a_worklist_and_serves_one(tmp_path: Path) -> None:
    """`adicom find --worklist` against `adicom serve --worklist DIR` (both real processes)."""
    import asyncio
    import signal
    import subprocess
    import sys

    from tests.test_cli import run_cli

    folder = tmp_path / "worklist"
    folder.mkdir()
    write_item(folder / "a.wl", make_item("ACC1", patient_name="Doe^Jane"))
    write_item(
        folder / "b.wl",
        make_item("ACC2", steps=[step(Modality="MR", ScheduledStationAETitle="MR1")]),
    )
    code, _, err = await run_cli("serve", "--port", "0", "--worklist", str(tmp_path / "none"))
    assert code == 2 and "no such folder" in err, err
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "serve", "--host", "127.0.0.1", "--port", "0",
        "--aet", "RIS", "--worklist", str(folder),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        port = line.rsplit(":", 1)[1].strip()
        peer = ["--aec", "RIS", "127.0.0.1", port]
        code, out, err = await run_cli("find", "--worklist", "-k", "Modality=CT", "--json", *peer)
        assert code == 0, err
        (found,) = json.loads(out)
        assert found["accession_number"] == "ACC1" and found["modality"] == "CT"
        assert found["patient_name"] == "Doe^Jane"
        code, out, err = await run_cli("find", "-W", "-k", "PatientName=doe*", *peer)
        assert code == 0 and "adicom find: 2 worklist item(s)" in out, out + err
        # A key no SCP could match is refused before anything is sent (exit 2).
        code, _, err = await run_cli("find", "-W", "-k", "StudyInstanceUID=1.2.*", *peer)
        assert code == 2 and "contains a wildcard" in err, err
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
