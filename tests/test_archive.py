"""The reference archive (adicom.archive): indexing, C-FIND matching, C-GET and C-MOVE.

The data is a small synthetic tree made from pydicom's CT_small.dcm with
fresh UIDs: 3 patients, 4 studies, 5 series, 8 instances (each with its own
pixel data, so a retrieve can be checked byte for byte).
"""

from __future__ import annotations

import contextlib
import copy
import os
import pathlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

import adicom
from adicom import archive as archive_module
from adicom import qrscu
from adicom.archive import Archive, ArchiveError
from adicom.archive.backends import IndexBackend, open_index
from adicom.archive.index import ATTRIBUTES, RAW
from adicom.archive.matching import make_row
from tests.postgres import BACKENDS, index_for

pytestmark = pytest.mark.anyio

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INDEX_NAME = ".adicom-index.sqlite"

# PatientID -> (PatientName, PatientBirthDate, PatientSex)
PATIENTS = {
    "PAT1": ("Doe^John", "19700101", "M"),
    "PAT2": ("Dae^Jane", "19851231", "F"),
    "PAT3": ("Smith^Anna", "19501010", "F"),
}
# study label -> patient, date, time, accession, description, series (modality, number,
# description, instances)
STUDIES = {
    "A": ("PAT1", "20240105", "093000", "ACC1", "Chest CT", [
        ("CT", 1, "Axial", 2), ("PT", 2, "Whole body", 2)]),
    "B": ("PAT1", "20240210", "143000", "ACC2", "Head CT", [("CT", 1, "Axial", 2)]),
    "C": ("PAT2", "20231120", "101500", "ACC3", "Knee MR", [("MR", 1, "Sagittal", 1)]),
    "D": ("PAT3", "20240301", "230000", "XYZ9", "chest CT follow-up", [("CT", 1, "Axial", 1)]),
}  # fmt: skip


@dataclass
class Tree:
    """The synthetic instances and labels for their UIDs ("A", "A2", "A2.1")."""

    instances: list[Dataset] = field(default_factory=list)
    uid: dict[str, str] = field(default_factory=dict)  # label -> UID
    label: dict[str, str] = field(default_factory=dict)  # UID -> label

    def by_uid(self, sop_instance_uid: str) -> Dataset:
        return next(d for d in self.instances if d.SOPInstanceUID == sop_instance_uid)

    def under(self, label: str) -> set[str]:
        """SOP Instance UIDs of the instances under a study or series label."""
        return {
            str(d.SOPInstanceUID)
            for d in self.instances
            if self.label[d.StudyInstanceUID] == label or self.label[d.SeriesInstanceUID] == label
        }


def build_tree() -> Tree:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    tree = Tree()

    def name(label: str) -> str:
        uid = generate_uid()
        tree.uid[label], tree.label[uid] = uid, label
        return uid

    count = 0
    for study_label, (patient, date, time, accession, description, series) in STUDIES.items():
        study_uid = name(study_label)
        for modality, number, series_description, instances in series:
            series_uid = name(f"{study_label}{number}")
            for index in range(instances):
                ds = copy.deepcopy(template)
                ds.PatientID = patient
                ds.PatientName, ds.PatientBirthDate, ds.PatientSex = PATIENTS[patient]
                ds.StudyInstanceUID = study_uid
                ds.StudyDate, ds.StudyTime = date, time
                ds.AccessionNumber = accession
                ds.StudyID = study_label
                ds.StudyDescription = description
                ds.ReferringPhysicianName = "Welby^Marcus"
                ds.SeriesInstanceUID = series_uid
                ds.Modality = modality
                ds.SeriesNumber = number
                ds.SeriesDescription = series_description
                ds.SOPInstanceUID = name(f"{study_label}{number}.{index + 1}")
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.InstanceNumber = index + 1
                pixels = bytearray(ds.PixelData)
                pixels[:2] = count.to_bytes(2, "little")  # each instance its own pixels
                ds.PixelData = bytes(pixels)
                count += 1
                tree.instances.append(ds)
    return tree


TREE = build_tree()


def tree_path(root: pathlib.Path, ds: Dataset) -> pathlib.Path:
    """Where :func:`write_tree` puts an instance (not the archive's own layout)."""
    return root / "by-patient" / str(ds.PatientID) / f"{TREE.label[ds.SOPInstanceUID]}.dcm"


def write_tree(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write every instance of the tree as a file; SOP Instance UID -> path."""
    paths = {}
    for ds in TREE.instances:
        path = tree_path(root, ds)
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths[str(ds.SOPInstanceUID)] = path
    return paths


def paths_in(archive: Archive) -> dict[str, pathlib.Path]:
    return {str(ds.SOPInstanceUID): tree_path(archive.root, ds) for ds in TREE.instances}


def rewrite(path: pathlib.Path, ds: Dataset) -> None:
    """Write ``ds`` over ``path`` and make sure its modification time changes."""
    before = path.stat().st_mtime_ns
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.fixture(params=BACKENDS)
async def archive(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Archive]:
    """An archive over a folder holding the tree (not opened yet), on each index backend."""
    root = tmp_path / "archive"
    write_tree(root)
    archive = Archive(root, index=index_for(request))
    archive.scan = True  # the tree was written behind its back
    yield archive
    await archive.aclose()


@contextlib.asynccontextmanager
async def serving(
    archive: Archive, destinations: Mapping[str, tuple[str, int]] | None = None
) -> AsyncIterator[adicom.DicomNode]:
    async with adicom.Server("ARCHIVE", port=0, **archive.handlers(destinations)) as server:
        yield adicom.DicomNode(aet="ARCHIVE", host="127.0.0.1", port=server.port)


def identifier(level: str, **keys: str | list[str]) -> Dataset:
    """A raw identifier: values go on the wire as given (no pydantic, no pydicom checks)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        vr = dictionary_VR(keyword)
        ds.add(DataElement(Tag(keyword), vr, value, validation_mode=config.IGNORE))
    return ds


def labels(found: Iterable[Any], key: str) -> set[str]:
    """The tree's labels of a key's values (datasets, index dicts or result models)."""
    values = [f.get(key) if isinstance(f, Dataset | dict) else getattr(f, key) for f in found]
    return {TREE.label.get(str(v), str(v)) for v in values}


# --------------------------------------------------------------------------
# Storing


async def test_stored_instances_are_indexed_as_they_land(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "archive"
    archive = Archive(root)
    client = adicom.DicomClient()
    try:
        assert await archive.open() == 0
        async with serving(archive) as node:
            first = TREE.instances[0]
            assert [r.ok for r in await client.store([first], node)] == [True]
            # Findable as soon as the C-STORE-RSP is in.
            images = await client.find_images(
                adicom.ImageQuery(
                    study_instance_uid=first.StudyInstanceUID,
                    series_instance_uid=first.SeriesInstanceUID,
                ),
                node,
            )
            assert [i.sop_instance_uid for i in images] == [first.SOPInstanceUID]
            assert images[0].instance_number == 1
            assert images[0].sop_class_uid == CT_IMAGE_STORAGE

            # All of them, the first one again: it replaces itself.
            results = await client.store(TREE.instances, node)
            assert len(results) == 8 and all(r.ok for r in results)
            assert await archive.index.count() == 8
            studies = await client.find_studies(adicom.StudyQuery(), node)
            assert labels(studies, "study_instance_uid") == {"A", "B", "C", "D"}
            a = next(s for s in studies if s.study_instance_uid == TREE.uid["A"])
            assert a.number_of_study_related_instances == 4
        # A restart reads nothing again: the index knows each file's size and time.
        assert await archive.open() == 0
    finally:
        archive.close()

    # The layout: {StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm.
    files = {p for p in root.rglob("*.dcm") if ".incoming" not in p.parts}
    expected = {
        root / d.StudyInstanceUID / d.SeriesInstanceUID / f"{d.SOPInstanceUID}.dcm"
        for d in TREE.instances
    }
    assert files == expected
    for ds in TREE.instances:
        stored = pydicom.dcmread(
            root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        )
        assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData


# --------------------------------------------------------------------------
# Indexing on start


async def test_open_indexes_the_files_already_there(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "archive"
    write_tree(root)
    (root / "notes.txt").write_text("not DICOM at all\n")
    (root / "empty.dcm").write_bytes(b"")
    (root / "by-patient" / "junk.dcm").write_bytes(b"\0" * 128 + b"NOPE" + b"\xff" * 64)
    archive = Archive(root)
    try:
        assert await archive.open(batch=3) == 8  # the batches cut through folders
        assert await archive.index.count() == 8
        assert await archive.open() == 0  # unchanged: nothing read again
        assert await archive.index.count() == 8
    finally:
        archive.close()
    # A restart on the same folder: the index persisted, nothing is read.
    again = Archive(root)
    try:
        assert await again.open() == 0
        found = list(await again.index.find("STUDY", {"StudyInstanceUID": ""}))
        assert labels(found, "StudyInstanceUID") == {"A", "B", "C", "D"}
    finally:
        again.close()


async def test_a_changed_file_is_read_again_and_a_removed_one_dropped(archive: Archive) -> None:
    paths = paths_in(archive)
    assert await archive.open() == 8
    target = TREE.by_uid(TREE.uid["D1.1"])
    changed = copy.deepcopy(target)
    changed.PatientName = "Smith^Annabel"
    changed.StudyDescription = "Chest CT, second reading"
    rewrite(paths[TREE.uid["D1.1"]], changed)
    assert await archive.open() == 1
    (patient,) = await archive.index.find("PATIENT", {"PatientID": "PAT3"}, patient_root=True)
    assert patient["PatientName"] == "Smith^Annabel"
    assert (
        list(await archive.index.find("PATIENT", {"PatientName": "Smith^Anna"}, patient_root=True))
        == []
    )
    (study,) = await archive.index.find("STUDY", {"StudyInstanceUID": TREE.uid["D"]})
    assert study["StudyDescription"] == "Chest CT, second reading"

    gone = TREE.uid["A1.1"]
    paths[gone].unlink()
    assert await archive.open() == 0
    assert await archive.index.count() == 7
    keys = {"StudyInstanceUID": TREE.uid["A"], "SeriesInstanceUID": TREE.uid["A1"]}
    assert {r.sop_instance_uid for r in await archive.index.instances("IMAGE", keys)} == {
        TREE.uid["A1.2"]
    }
    (series,) = await archive.index.find("SERIES", {**keys})
    assert series["NumberOfSeriesRelatedInstances"] == "1"


async def test_a_file_rewritten_with_another_instance_forgets_the_old_one(
    archive: Archive,
) -> None:
    # The file now holds a different instance: the old one is not in the folder any more.
    paths = paths_in(archive)
    assert await archive.open() == 8
    old = TREE.uid["D1.1"]
    other = copy.deepcopy(TREE.by_uid(old))
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    rewrite(paths[old], other)
    assert await archive.open() == 1
    keys = {"StudyInstanceUID": TREE.uid["D"], "SeriesInstanceUID": TREE.uid["D1"]}
    assert {r.sop_instance_uid for r in await archive.index.instances("IMAGE", keys)} == {
        other.SOPInstanceUID
    }
    assert await archive.index.count() == 8


# --------------------------------------------------------------------------
# Matching, on the index itself (PS3.4 C.2.2.2)


@pytest.fixture(scope="module", params=BACKENDS)
def index_url(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    """An index of the tree on each backend, rows only (matching never opens the files)."""
    url = index_for(request) or f"sqlite:{tmp_path_factory.mktemp('index') / INDEX_NAME}"

    async def fill() -> None:
        index = open_index(url)
        await index.connect()
        rows = []
        for ds in TREE.instances:
            values = {keyword: str(ds.get(keyword, "")) for keyword in ATTRIBUTES}
            path = pathlib.Path("/nowhere", f"{ds.SOPInstanceUID}.dcm")
            rows.append(make_row(values, path, "1.2.840.10008.1.2.1"))
        await index.add_rows(rows)
        await index.commit()
        await index.aclose()

    anyio.run(fill)
    return url


@pytest.fixture
async def index(index_url: str) -> AsyncIterator[IndexBackend]:
    """The index of index_url, connected."""
    index = open_index(index_url)
    await index.connect()
    yield index
    await index.aclose()


ALL_STUDIES = {"A", "B", "C", "D"}

MATCHING = [
    # PATIENT level (Patient Root): LO and CS case-sensitive, PN not.
    ("PATIENT", {"PatientID": "PAT1"}, {"PAT1"}),
    ("PATIENT", {"PatientID": "pat1"}, set()),
    ("PATIENT", {"PatientID": ""}, {"PAT1", "PAT2", "PAT3"}),
    ("PATIENT", {"PatientID": "PAT?"}, {"PAT1", "PAT2", "PAT3"}),
    ("PATIENT", {"PatientID": "*3"}, {"PAT3"}),
    ("PATIENT", {"PatientName": "Doe*"}, {"PAT1"}),
    ("PATIENT", {"PatientName": "D?e^*"}, {"PAT1", "PAT2"}),
    ("PATIENT", {"PatientName": "doe^*"}, {"PAT1"}),
    ("PATIENT", {"PatientName": "DOE^JOHN"}, {"PAT1"}),
    ("PATIENT", {"PatientName": "Doe"}, set()),  # a single value is the whole name
    ("PATIENT", {"PatientBirthDate": "19600101-19901231"}, {"PAT1", "PAT2"}),
    ("PATIENT", {"PatientBirthDate": "-19691231"}, {"PAT3"}),
    ("PATIENT", {"PatientSex": "F"}, {"PAT2", "PAT3"}),
    ("PATIENT", {"PatientSex": "f"}, set()),
    ("PATIENT", {"PatientSex": "F", "PatientName": "s*"}, {"PAT3"}),
    # STUDY level
    ("STUDY", {}, ALL_STUDIES),
    ("STUDY", {"StudyInstanceUID": ""}, ALL_STUDIES),
    ("STUDY", {"StudyInstanceUID": "{A}"}, {"A"}),
    ("STUDY", {"StudyInstanceUID": "{A}\\{C}"}, {"A", "C"}),
    ("STUDY", {"StudyInstanceUID": "1.2.3.4"}, set()),
    ("STUDY", {"StudyDate": "20240105"}, {"A"}),
    ("STUDY", {"StudyDate": "20240101-20240228"}, {"A", "B"}),
    ("STUDY", {"StudyDate": "20240105-20240210"}, {"A", "B"}),  # both ends included
    ("STUDY", {"StudyDate": "-20231231"}, {"C"}),
    ("STUDY", {"StudyDate": "20240201-"}, {"B", "D"}),
    ("STUDY", {"StudyTime": "0900-1200"}, {"A", "C"}),
    ("STUDY", {"StudyTime": "1400-"}, {"B", "D"}),
    ("STUDY", {"StudyTime": "-0930"}, {"A"}),
    ("STUDY", {"StudyTime": "14"}, {"B"}),
    ("STUDY", {"StudyTime": "093000"}, {"A"}),
    ("STUDY", {"StudyDate": "20240101-", "StudyTime": "-1200"}, {"A"}),
    ("STUDY", {"AccessionNumber": "ACC*"}, {"A", "B", "C"}),
    ("STUDY", {"StudyDescription": "Chest*"}, {"A"}),
    ("STUDY", {"StudyDescription": "chest*"}, {"D"}),
    ("STUDY", {"StudyDescription": "*CT*"}, {"A", "B", "D"}),
    ("STUDY", {"PatientName": "doe^john"}, {"A", "B"}),
    ("STUDY", {"PatientID": "PAT1", "StudyDate": "-20240131"}, {"A"}),
    ("STUDY", {"ReferringPhysicianName": "WELBY^*"}, ALL_STUDIES),
    ("STUDY", {"StudyID": "?"}, ALL_STUDIES),
    ("STUDY", {"PatientAge": "040Y"}, ALL_STUDIES),  # a key the index lacks: not matched
    # SERIES level
    ("SERIES", {"StudyInstanceUID": "{A}"}, {"A1", "A2"}),
    ("SERIES", {"StudyInstanceUID": "{A}", "Modality": "PT"}, {"A2"}),
    ("SERIES", {"StudyInstanceUID": "{A}", "Modality": "pt"}, set()),
    ("SERIES", {"StudyInstanceUID": "{A}", "SeriesNumber": "2"}, {"A2"}),
    ("SERIES", {"StudyInstanceUID": "{A}", "SeriesDescription": "Whole*"}, {"A2"}),
    ("SERIES", {"StudyInstanceUID": "{A}", "SeriesInstanceUID": "{A1}\\{B1}"}, {"A1"}),
    # IMAGE level
    ("IMAGE", {"StudyInstanceUID": "{A}", "SeriesInstanceUID": "{A2}"}, {"A2.1", "A2.2"}),
    (
        "IMAGE",
        {"StudyInstanceUID": "{A}", "SeriesInstanceUID": "{A2}", "InstanceNumber": "2"},
        {"A2.2"},
    ),
    (
        "IMAGE",
        {
            "StudyInstanceUID": "{A}",
            "SeriesInstanceUID": "{A1}",
            "SOPInstanceUID": "{A1.1}\\{A1.2}",
        },
        {"A1.1", "A1.2"},
    ),
]


def resolve(keys: Mapping[str, str]) -> dict[str, str]:
    """Replace {label} in the values by the tree's UIDs."""
    out = {}
    for keyword, value in keys.items():
        for label, uid in TREE.uid.items():
            value = value.replace("{" + label + "}", uid)
        out[keyword] = value
    return out


UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}  # fmt: skip


@pytest.mark.parametrize(
    ("level", "keys", "expected"),
    MATCHING,
    ids=[f"{m[0]}-{'-'.join(f'{k}={v}' for k, v in m[1].items()) or 'all'}" for m in MATCHING],
)
async def test_matching(
    index: IndexBackend, level: str, keys: dict[str, str], expected: set[str]
) -> None:
    found = list(await index.find(level, resolve(keys), patient_root=level == "PATIENT"))
    assert labels(found, UNIQUE[level]) == expected
    # A retrieve with the same keys selects exactly the instances under the matches.
    rows = await index.instances(level, resolve(keys), patient_root=level == "PATIENT")
    selected = {d.SOPInstanceUID for d in TREE.instances if labels([d], UNIQUE[level]) <= expected}
    assert {r.sop_instance_uid for r in rows} == selected


async def test_counts_and_modalities(index: IndexBackend) -> None:
    (pat1,) = await index.find("PATIENT", {"PatientID": "PAT1"}, patient_root=True)
    assert pat1["NumberOfPatientRelatedStudies"] == "2"
    assert pat1["NumberOfPatientRelatedSeries"] == "3"
    assert pat1["NumberOfPatientRelatedInstances"] == "6"
    assert (pat1["PatientName"], pat1["PatientBirthDate"], pat1["PatientSex"]) == PATIENTS["PAT1"]
    studies = {TREE.label[s["StudyInstanceUID"]]: s for s in await index.find("STUDY", {})}
    assert studies["A"]["NumberOfStudyRelatedSeries"] == "2"
    assert studies["A"]["NumberOfStudyRelatedInstances"] == "4"
    assert studies["A"]["ModalitiesInStudy"] == "CT\\PT"
    assert studies["B"]["ModalitiesInStudy"] == "CT"
    assert studies["C"]["NumberOfStudyRelatedInstances"] == "1"
    assert studies["A"]["PatientID"] == "PAT1"  # the levels above come along
    series = await index.find("SERIES", {"StudyInstanceUID": TREE.uid["A"]})
    assert {
        TREE.label[s["SeriesInstanceUID"]]: s["NumberOfSeriesRelatedInstances"] for s in series
    } == {
        "A1": "2",
        "A2": "2",
    }


# --------------------------------------------------------------------------
# Matching through a real association


async def test_find_at_every_level_through_dicomclient(archive: Archive) -> None:
    await archive.open()
    client = adicom.DicomClient()
    async with serving(archive) as node:
        # PATIENT level, Patient Root (find_patients uses that model).
        patients = await client.find_patients(adicom.PatientQuery(), node)
        by_id = {p.patient_id: p for p in patients}
        assert set(by_id) == set(PATIENTS)
        assert [by_id[p].number_of_patient_related_studies for p in PATIENTS] == [2, 1, 1]
        assert (
            by_id["PAT2"].patient_name,
            by_id["PAT2"].patient_birth_date,
            by_id["PAT2"].patient_sex,
        ) == PATIENTS["PAT2"]
        assert labels_of(
            await client.find_patients(adicom.PatientQuery(patient_name="Doe*"), node)
        ) == {"PAT1"}
        assert labels_of(
            await client.find_patients(adicom.PatientQuery(patient_name="D?e^*"), node)
        ) == {"PAT1", "PAT2"}
        assert labels_of(
            await client.find_patients(adicom.PatientQuery(patient_name="doe^*"), node)
        ) == {"PAT1"}
        assert await client.find_patients(adicom.PatientQuery(patient_id="pat1"), node) == []
        assert labels_of(
            await client.find_patients(adicom.PatientQuery(patient_birth_date="-19691231"), node)
        ) == {"PAT3"}

        # STUDY level: every key asked empty comes back filled.
        studies = await client.find_studies(
            adicom.StudyQuery(
                return_keys=["ReferringPhysicianName", "StudyID", "PatientBirthDate",
                             "InstitutionName", "PatientAge"]
            ),
            node,
        )  # fmt: skip
        a = next(s for s in studies if s.study_instance_uid == TREE.uid["A"])
        assert (a.patient_id, a.patient_name) == ("PAT1", "Doe^John")
        assert (a.study_date, a.study_time) == ("20240105", "093000")
        assert (a.accession_number, a.study_description) == ("ACC1", "Chest CT")
        assert a.modalities_in_study == "CT\\PT"
        assert (a.number_of_study_related_series, a.number_of_study_related_instances) == (2, 4)
        assert a.extra["ReferringPhysicianName"] == "Welby^Marcus"
        assert a.extra["StudyID"] == "A"
        assert a.extra["PatientBirthDate"] == "19700101"
        # Keys the archive does not keep come back, empty (PS3.4 C.2.2.1.2).
        assert "InstitutionName" in a.extra and a.extra["InstitutionName"] is None
        assert "PatientAge" in a.extra and a.extra["PatientAge"] is None
        assert labels(studies, "study_instance_uid") == ALL_STUDIES

        async def study_labels(**query: Any) -> set[str]:
            found = await client.find_studies(adicom.StudyQuery(**query), node)
            return {TREE.label[s.study_instance_uid] for s in found}

        assert await study_labels(study_date="20240101-20240228") == {"A", "B"}
        assert await study_labels(study_date="-20231231") == {"C"}
        assert await study_labels(study_date="20240201-") == {"B", "D"}
        assert await study_labels(study_time="0900-1200") == {"A", "C"}
        assert await study_labels(study_time="1400-") == {"B", "D"}
        assert await study_labels(study_instance_uid=f"{TREE.uid['A']}\\{TREE.uid['C']}") == {
            "A",
            "C",
        }
        assert await study_labels(patient_name="doe^john") == {"A", "B"}
        assert await study_labels(patient_id="pat1") == set()
        assert await study_labels(study_description="chest*") == {"D"}
        assert await study_labels(accession_number="ACC?") == {"A", "B", "C"}

        # SERIES level
        series = await client.find_series(
            adicom.SeriesQuery(study_instance_uid=TREE.uid["A"]), node
        )
        assert sorted((s.series_number, s.modality, s.series_description) for s in series) == [
            (1, "CT", "Axial"),
            (2, "PT", "Whole body"),
        ]
        assert all(s.number_of_series_related_instances == 2 for s in series)
        assert all(s.study_instance_uid == TREE.uid["A"] for s in series)
        pt = await client.find_series(
            adicom.SeriesQuery(study_instance_uid=TREE.uid["A"], modality="PT"), node
        )
        assert [TREE.label[s.series_instance_uid] for s in pt] == ["A2"]

        # IMAGE level
        images = await client.find_images(
            adicom.ImageQuery(study_instance_uid=TREE.uid["A"], series_instance_uid=TREE.uid["A2"]),
            node,
        )
        assert sorted((i.instance_number, TREE.label[i.sop_instance_uid]) for i in images) == [
            (1, "A2.1"),
            (2, "A2.2"),
        ]
        assert {i.sop_class_uid for i in images} == {CT_IMAGE_STORAGE}
        one = await client.find_images(
            adicom.ImageQuery(
                study_instance_uid=TREE.uid["A"],
                series_instance_uid=TREE.uid["A2"],
                sop_instance_uid=TREE.uid["A2.2"],
            ),
            node,
        )
        assert [i.instance_number for i in one] == [2]


def labels_of(patients: list[adicom.PatientResult]) -> set[str]:
    return {p.patient_id for p in patients}


async def test_patient_root_study_query_and_raw_identifiers(archive: Archive) -> None:
    await archive.open()
    contexts = qrscu.find_contexts("study") + qrscu.find_contexts("patient")
    async with (
        serving(archive) as node,
        adicom.connect("127.0.0.1", node.port, called_ae="ARCHIVE", contexts=contexts) as assoc,
    ):
        query = identifier("STUDY", PatientID="PAT1", StudyInstanceUID="", StudyDate="",
                           NumberOfStudyRelatedInstances="")  # fmt: skip
        async with qrscu.find(assoc, query, model="patient") as results:
            found = [d async for d in results]
        assert results.status == 0x0000
        assert labels(found, "StudyInstanceUID") == {"A", "B"}
        for answer in found:
            assert answer.QueryRetrieveLevel == "STUDY" and answer.PatientID == "PAT1"
            assert answer.StudyDate in ("20240105", "20240210")
        assert sorted(int(d.NumberOfStudyRelatedInstances) for d in found) == [2, 4]

        # Only the keys asked come back, plus the level's unique key.
        query = identifier("SERIES", StudyInstanceUID=TREE.uid["A"], Modality="CT")
        async with qrscu.find(assoc, query) as results:
            (series,) = [d async for d in results]
        assert {e.keyword for e in series} == {
            "QueryRetrieveLevel", "StudyInstanceUID", "Modality", "SeriesInstanceUID"
        }  # fmt: skip
        assert series.SeriesInstanceUID == TREE.uid["A1"]


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]
)
async def test_find_encodes_text_matches_itself_and_others_through_pydicom(
    archive: Archive, syntax: str
) -> None:
    """Plain ASCII matches come encoded from the rows; each equals the pydicom encoding."""
    from adicom.archive.answers import answer_dataset, answer_elements, answer_template
    from adicom.fileformat import decode_dataset, encode_dataset
    from adicom.qrscp import QRContext

    await archive.open()
    query = identifier("SERIES", StudyInstanceUID=TREE.uid["A"], Modality="", SeriesDate="",
                       SeriesDescription="", NumberOfSeriesRelatedInstances="")  # fmt: skip
    query.add_new(0x00091010, "LO", "")  # a private key: returned empty
    context = QRContext("SCU", "ARCHIVE", "1.2.840.10008.5.1.4.1.2.2.1", None, 1,
                        transfer_syntax=syntax)  # fmt: skip
    answers = [a async for a in archive.find(query, context)]
    assert len(answers) == 2
    template = answer_template(query, "SERIES")
    found = list(await archive.index.find("SERIES", {"StudyInstanceUID": TREE.uid["A"]}))
    for answer, row in zip(answers, found, strict=True):
        expected = answer_dataset(answer_elements(template, row))
        if syntax == "1.2.840.10008.1.2.2":
            assert isinstance(answer, Dataset)  # no quick encoder for big endian
            assert answer == expected
            continue
        assert isinstance(answer, bytes)
        assert answer == encode_dataset(expected, syntax)
        decoded = decode_dataset(answer, syntax)
        assert decoded.SeriesInstanceUID == row["SeriesInstanceUID"]
        assert decoded.NumberOfSeriesRelatedInstances == 2
        assert decoded[0x00091010].value in ("", None, b"")

    # Non-ASCII text goes back as it was received, with its character set.
    other = copy.deepcopy(TREE.instances[0])
    other.SpecificCharacterSet = "ISO_IR 192"
    other.PatientID, other.PatientName = "PATU", "Müller^Jörg"
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pydicom.dcmwrite(archive.root / "other.dcm", other, enforce_file_format=True)
    assert await archive.open() == 1
    query = identifier("PATIENT", PatientID="PATU", PatientName="")
    query.SpecificCharacterSet = "ISO_IR 192"
    context = QRContext("SCU", "ARCHIVE", "1.2.840.10008.5.1.4.1.2.1.1", None, 1,
                        transfer_syntax="1.2.840.10008.1.2.1")  # fmt: skip
    (answer,) = [a async for a in archive.find(query, context)]
    assert isinstance(answer, bytes)
    assert "Müller^Jörg".encode() in answer  # the bytes of the file, UTF-8
    decoded = decode_dataset(answer, "1.2.840.10008.1.2.1")
    assert decoded.PatientName == "Müller^Jörg"
    assert decoded.SpecificCharacterSet == "ISO_IR 192"


# --------------------------------------------------------------------------
# Bad queries


BAD_QUERIES: list[tuple[qrscu.Model, Dataset, str]] = [
    ("study", identifier("SERIES", SeriesInstanceUID="", Modality=""), "no StudyInstanceUID"),
    ("study", identifier("IMAGE", StudyInstanceUID="1.2.3", SOPInstanceUID=""), "no series UID"),
    ("study", identifier("STUDY", StudyDate="2024-01-01"), "invalid date"),
    ("study", identifier("STUDY", StudyDate="20240101-2024"), "invalid date range end"),
    ("study", identifier("STUDY", StudyDate="yesterday-"), "invalid date range start"),
    ("study", identifier("STUDY", StudyTime="1o00-"), "invalid time range"),
    ("study", identifier("STUDY", AccessionNumber="A\\B"), "list in a non-UID key"),
    ("study", identifier("FOO", StudyInstanceUID=""), "unsupported level"),
    ("study", identifier("STUDY", SeriesInstanceUID="1.2.3"), "key below the level"),
    ("patient", identifier("STUDY", StudyInstanceUID=""), "Patient Root without PatientID"),
    ("patient", identifier("STUDY", PatientID="PAT*"), "Patient Root with a wildcard PatientID"),
]


async def test_bad_queries_fail_and_the_association_goes_on(archive: Archive) -> None:
    await archive.open()
    contexts = qrscu.find_contexts("study") + qrscu.find_contexts("patient")
    async with (
        serving(archive) as node,
        adicom.connect("127.0.0.1", node.port, called_ae="ARCHIVE", contexts=contexts) as assoc,
    ):
        for model, query, why in BAD_QUERIES:
            with pytest.raises(adicom.DimseError) as info:
                async with qrscu.find(assoc, query, model=model) as results:
                    async for _ in results:
                        pass
            assert info.value.status == 0xA900, why
            # The association goes on: a good query right after.
            good = identifier("STUDY", StudyInstanceUID="", PatientID="")
            if model == "patient":
                good.PatientID = "PAT1"
            async with qrscu.find(assoc, good, model=model) as results:
                found = [d async for d in results]
            assert results.status == 0x0000, why
            assert len(found) == (2 if model == "patient" else 4), why


async def test_a_wildcard_in_a_uid_is_refused(archive: Archive) -> None:
    # PS3.4 C.2.2.2.4: no wildcards in UIDs. The answer must be 0xA900 whatever
    # the warnings filter: the peer's value must not make pydicom warn in the SCP.
    await archive.open()
    async with (
        serving(archive) as node,
        adicom.connect(
            "127.0.0.1", node.port, called_ae="ARCHIVE", contexts=qrscu.find_contexts()
        ) as assoc,
    ):
        for query in (
            identifier("STUDY", StudyInstanceUID="1.2.840.*"),
            identifier("SERIES", StudyInstanceUID="1.2.?", SeriesInstanceUID=""),
        ):
            with pytest.raises(adicom.DimseError) as info:
                async for _ in qrscu.find(assoc, query):
                    pass
            assert info.value.status == 0xA900, info.value
        async with qrscu.find(assoc, identifier("STUDY", StudyInstanceUID="")) as results:
            assert len([d async for d in results]) == 4


# --------------------------------------------------------------------------
# Retrieve


async def test_get_study_series_and_image(archive: Archive, tmp_path: pathlib.Path) -> None:
    await archive.open()
    client = adicom.DicomClient()
    async with serving(archive) as node:
        study = await client.get_study_to_memory(TREE.uid["A"], node)
        assert (study.status, study.num_completed, study.num_failed) == ("success", 4, 0)
        assert {d.SOPInstanceUID for d in study.instances} == TREE.under("A")
        for ds in study.instances:
            assert ds.PixelData == TREE.by_uid(ds.SOPInstanceUID).PixelData

        series = await client.get_series(TREE.uid["A"], TREE.uid["A2"], node, tmp_path / "series")
        assert (series.status, series.num_completed) == ("success", 2)
        got = [pydicom.dcmread(p) for p in series.paths]
        assert {d.SOPInstanceUID for d in got} == TREE.under("A2")
        for ds in got:
            assert ds.PixelData == TREE.by_uid(ds.SOPInstanceUID).PixelData

        image = await client.get_image(
            TREE.uid["B"], TREE.uid["B1"], TREE.uid["B1.2"], node, tmp_path / "image"
        )
        assert (image.status, image.num_completed) == ("success", 1)
        (path,) = image.paths
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == TREE.uid["B1.2"]
        assert ds.PixelData == TREE.by_uid(TREE.uid["B1.2"]).PixelData

        # A list of UIDs at IMAGE level, raw through qrscu.
        contexts, roles = qrscu.get_contexts()
        async with adicom.connect(
            "127.0.0.1", node.port, called_ae="ARCHIVE", contexts=contexts, roles=roles
        ) as assoc:
            memory = adicom.MemoryStorage()
            query = identifier(
                "IMAGE",
                StudyInstanceUID=TREE.uid["A"],
                SeriesInstanceUID=TREE.uid["A1"],
                SOPInstanceUID=[TREE.uid["A1.1"], TREE.uid["A1.2"]],
            )
            result = await qrscu.get(assoc, query, memory)
        assert (result.status, result.completed) == (0x0000, 2)
        assert {d.SOPInstanceUID for d in memory.datasets} == TREE.under("A1")


async def test_move_to_another_archive(archive: Archive, tmp_path: pathlib.Path) -> None:
    await archive.open()
    other = Archive(tmp_path / "other")
    client = adicom.DicomClient()
    try:
        async with adicom.Server("OTHER", port=0, storage=other.storage) as destination:
            async with serving(archive, {"OTHER": ("127.0.0.1", destination.port)}) as node:
                study = await client.move_study(TREE.uid["A"], node, "OTHER")
                series = await client.move_series(TREE.uid["B"], TREE.uid["B1"], node, "OTHER")
                image = await client.move_image(
                    TREE.uid["C"], TREE.uid["C1"], TREE.uid["C1.1"], node, "OTHER"
                )
                unknown = await client.move_study(TREE.uid["A"], node, "NOBODY")
        assert (study.status, study.num_completed, study.num_failed) == ("success", 4, 0)
        assert (series.status, series.num_completed) == ("success", 2)
        assert (image.status, image.num_completed) == ("success", 1)
        assert unknown.status == "failure_0xA801"
        moved = {r.sop_instance_uid for r in await other.index.instances("STUDY", {})}
        assert moved == TREE.under("A") | TREE.under("B") | TREE.under("C")
        for row in await other.index.instances("STUDY", {}):
            assert (
                pydicom.dcmread(row.path).PixelData == TREE.by_uid(row.sop_instance_uid).PixelData
            )
    finally:
        other.close()


async def test_a_file_deleted_behind_the_index_fails_alone(archive: Archive) -> None:
    await archive.open()
    gone = TREE.uid["A1.1"]
    paths = {
        r.sop_instance_uid: pathlib.Path(r.path) for r in await archive.index.instances("STUDY", {})
    }
    paths[gone].unlink()
    client = adicom.DicomClient()
    async with serving(archive) as node:
        result = await client.get_study_to_memory(TREE.uid["A"], node)
        assert (result.num_completed, result.num_failed) == (3, 1)
        assert result.failed_sop_instances == [gone]
        assert result.status == "warning_0xB000"
        assert {d.SOPInstanceUID for d in result.instances} == TREE.under("A") - {gone}
        # The server goes on, and the instance is gone from the index.
        images = await client.find_images(
            adicom.ImageQuery(study_instance_uid=TREE.uid["A"], series_instance_uid=TREE.uid["A1"]),
            node,
        )
        assert [i.sop_instance_uid for i in images] == [TREE.uid["A1.2"]]
        again = await client.get_study_to_memory(TREE.uid["A"], node)
        assert (again.status, again.num_completed, again.num_failed) == ("success", 3, 0)
    assert await archive.index.count() == 7


async def test_a_file_deleted_behind_the_index_fails_a_move_alone(archive: Archive) -> None:
    await archive.open()
    received = adicom.MemoryStorage()
    gone = TREE.uid["B1.2"]
    paths = {
        r.sop_instance_uid: pathlib.Path(r.path) for r in await archive.index.instances("STUDY", {})
    }
    paths[gone].unlink()
    paths[TREE.uid["C1.1"]].unlink()
    client = adicom.DicomClient()
    async with adicom.Server("DEST", port=0, storage=received) as destination:
        async with serving(archive, {"DEST": ("127.0.0.1", destination.port)}) as node:
            result = await client.move_study(TREE.uid["B"], node, "DEST")
            assert (result.num_completed, result.num_failed) == (1, 1)
            assert result.failed_sop_instances == [gone]
            assert result.status == "warning_0xB000"
            # Everything of the retrieve gone: a failure, with its UID.
            only = await client.move_study(TREE.uid["C"], node, "DEST")
            assert (only.status, only.num_completed, only.num_failed) == ("failure_0xA702", 0, 1)
            assert only.failed_sop_instances == [TREE.uid["C1.1"]]
            echo = await client.echo(node)
    assert echo is True
    assert [d.SOPInstanceUID for d in received.datasets] == [TREE.uid["B1.1"]]
    assert await archive.index.count() == 6


async def test_a_retrieve_without_its_unique_key_is_refused(archive: Archive) -> None:
    # PS3.4 C.4.2.2.1 / C.4.3.2.1: a retrieve names what it wants by the unique
    # key of its level; an empty one must not send the whole archive.
    await archive.open()
    contexts, roles = qrscu.get_contexts()
    async with (
        serving(archive) as node,
        adicom.connect(
            "127.0.0.1", node.port, called_ae="ARCHIVE", contexts=contexts, roles=roles
        ) as assoc,
    ):
        memory = adicom.MemoryStorage()
        result = await qrscu.get(assoc, identifier("STUDY", StudyInstanceUID=""), memory)
        assert result.status == 0xA900
        assert memory.datasets == []


# --------------------------------------------------------------------------
# A corrupt database on start


GARBAGE = b"this is not an SQLite database\n" * 64


async def test_a_corrupt_index_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "archive"
    write_tree(root)
    database = root / INDEX_NAME
    database.write_bytes(GARBAGE)
    with pytest.raises(ArchiveError) as info:
        Archive(root)
    message = str(info.value)
    assert str(database) in message and "move it away" in message
    assert database.read_bytes() == GARBAGE  # left for the operator to look at

    # Moved away, the archive starts and rebuilds the index from the files.
    database.rename(root.parent / "broken.sqlite")
    archive = Archive(root)
    try:
        assert await archive.open() == 8
    finally:
        archive.close()


async def test_an_index_of_another_version_is_rebuilt_from_the_files(
    tmp_path: pathlib.Path,
) -> None:
    # The index is a cache of the folder: an older one is dropped and made
    # again, and opening the archive reads the files back into it.
    root = tmp_path / "archive"
    archive = Archive(root)
    await archive.open()
    async with serving(archive) as node:
        results = await adicom.store(
            node.host, node.port, [TREE.by_uid(TREE.uid["A1.1"])], called_ae=node.aet
        )
        assert results[0].ok
    archive.close()
    with contextlib.closing(sqlite3.connect(root / INDEX_NAME)) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'version'")
        db.execute("DELETE FROM instances")
        db.commit()
    again = Archive(root)
    try:
        assert await again.index.count() == 0
        assert await again.open() == 1
        assert await again.index.path_of(TREE.uid["A1.1"]) is not None
    finally:
        again.close()


async def test_an_index_of_version_2_is_made_version_3_in_place(tmp_path: pathlib.Path) -> None:
    """Version 3 only makes the path unique: the rows of a version 2 index are kept."""
    root = tmp_path / "archive"
    write_tree(root)
    archive = Archive(root)
    assert await archive.open() == 8
    archive.close()
    with contextlib.closing(sqlite3.connect(root / INDEX_NAME)) as db:
        db.execute("DROP INDEX by_path")
        db.execute("CREATE INDEX by_path ON instances (path)")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
        db.commit()
    again = Archive(root)
    try:
        assert await again.index.count() == 8  # kept: not read again from the files
    finally:
        again.close()
    with contextlib.closing(sqlite3.connect(root / INDEX_NAME)) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'by_path'").fetchone()
        assert version == "3" and "UNIQUE" in sql
        # Two rows of one path are refused by the index itself now.
        (uid, path) = db.execute("SELECT sop_instance_uid, path FROM instances").fetchone()
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO instances (sop_instance_uid, path) VALUES (?, ?)", (uid + ".9", path)
            )
    # One that could not be made so (two rows of one path) is rebuilt from the files.
    with contextlib.closing(sqlite3.connect(root / INDEX_NAME)) as db:
        db.execute("DROP INDEX by_path")
        db.execute("INSERT INTO instances (sop_instance_uid, path) VALUES ('9.9', ?)", (path,))
        db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
        db.commit()
    rebuilt = Archive(root)
    try:
        assert await rebuilt.index.count() == 0
        assert await rebuilt.open() == 8
    finally:
        rebuilt.close()


async def test_serve_on_a_corrupt_index_exits_with_one_line(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    database = root / INDEX_NAME
    database.write_bytes(GARBAGE)
    process = subprocess.run(
        [sys.executable, "-m", "adicom", "serve", "--storage", str(root), "--port", "0",
         "--host", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.returncode != 0
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("adicom serve: ")
    assert str(database) in lines[0] and "move it away" in lines[0]
    assert "listening" not in process.stdout


async def test_find_reads_only_the_columns_asked_for(archive: Archive) -> None:
    await archive.open()
    keys = {"StudyInstanceUID": TREE.uid["A"], "SeriesInstanceUID": TREE.uid["A1"]}
    everything = list(await archive.index.find("IMAGE", keys))
    some = list(await archive.index.find("IMAGE", keys, wanted={"PatientName", "SOPInstanceUID"}))
    shown = {"PatientName", "SOPInstanceUID", "SpecificCharacterSet", RAW}
    assert [set(found) for found in some] == [shown] * 2
    assert [(f["PatientName"], f["SOPInstanceUID"]) for f in some] == [
        (f["PatientName"], f["SOPInstanceUID"]) for f in everything
    ]
    # The counts of PS3.4 C.3 come whatever was asked; nothing asked: the unique key.
    (series,) = await archive.index.find("SERIES", keys, wanted=())
    assert series == {
        "SeriesInstanceUID": TREE.uid["A1"],
        "NumberOfSeriesRelatedInstances": "2",
        "SpecificCharacterSet": series["SpecificCharacterSet"],
        RAW: "",
    }


async def test_stored_instances_are_found_at_once_and_committed_soon(
    tmp_path: pathlib.Path,
) -> None:
    archive = Archive(tmp_path / "empty")
    try:
        await archive.open()
        database = tmp_path / "empty" / INDEX_NAME
        instance = TREE.by_uid(TREE.uid["A1.1"])
        async with serving(archive) as node:
            results = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
            assert results[0].ok
            # Found at once (same connection), though not yet committed ...
            images = await adicom.DicomClient().find_images(
                adicom.ImageQuery(
                    study_instance_uid=TREE.uid["A"], series_instance_uid=TREE.uid["A1"]
                ),
                node,
            )
            assert [i.sop_instance_uid for i in images] == [TREE.uid["A1.1"]]

            def committed() -> int:
                with contextlib.closing(sqlite3.connect(database)) as other:
                    return int(other.execute("SELECT count(*) FROM instances").fetchone()[0])

            # ... and committed by itself, within COMMIT_DELAY, for any other reader.
            with anyio.fail_after(archive_module.COMMIT_DELAY * 40):
                await archive.wait_committed()
            assert committed() == 1
            results = await adicom.store(
                node.host, node.port, [TREE.by_uid(TREE.uid["A1.2"])], called_ae=node.aet
            )
            assert results[0].ok
    finally:
        archive.close()  # commits what is pending
    assert committed() == 2


async def test_an_index_that_cannot_commit_loses_no_instance(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The disk under the index fills (say): the instance is stored and
    # answered Success, the failure is logged, and the server goes on; the
    # next archive opened on the folder indexes the file.
    archive = Archive(tmp_path / "full")
    await archive.open()

    def full(limit: int | None = None) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(archive._sqlite, "commit", full)
    instance = TREE.by_uid(TREE.uid["A1.1"])
    async with serving(archive) as node:
        (result,) = await adicom.store(node.host, node.port, [instance], called_ae=node.aet)
        assert result.ok
        with anyio.fail_after(archive_module.COMMIT_DELAY * 40):
            await archive.wait_committed()
        assert "the index could not be written" in caplog.text
        assert await adicom.DicomClient().echo(node)  # still serving
    monkeypatch.undo()
    assert archive._sqlite is not None
    archive._sqlite._rows.clear()  # what a crash would have lost
    archive._sqlite._paths.clear()
    archive.close()
    again = Archive(tmp_path / "full")
    try:
        assert await again.open() == 1
        assert {r.sop_instance_uid for r in await again.index.instances("STUDY", {})} == {
            TREE.uid["A1.1"]
        }
    finally:
        again.close()


# --------------------------------------------------------------------------
# One copy per SOP Instance UID, wherever it was filed


def filed_at(root: pathlib.Path, ds: Dataset) -> pathlib.Path:
    """Where the archive's default layout files an instance."""
    return root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"


def _file_directly(archive: Archive, dataset: Dataset) -> int:
    """Store ``dataset`` through the archive's storage, as the server does; the status."""
    from adicom.fileformat import encode_dataset

    context = adicom.StoreContext(
        "SENDER",
        "ARCHIVE",
        str(dataset.SOPClassUID),
        str(dataset.SOPInstanceUID),
        "1.2.840.10008.1.2.1",
    )
    instance = archive.storage.open(context)
    instance.write(memoryview(encode_dataset(dataset, "1.2.840.10008.1.2.1")))
    status = instance.finish_now()
    assert status is not None
    return status


@pytest.mark.parametrize("committed", [True, False])
async def test_an_instance_stored_again_under_another_study_leaves_one_copy(
    tmp_path: pathlib.Path, committed: bool
) -> None:
    # "replace": the copy filed under the first study goes, whether its row
    # was committed already (found when the new row is committed, for the
    # whole burst at once) or still pending (removed as the new one lands).
    archive = Archive(tmp_path)
    await archive.open()
    try:
        first = copy.deepcopy(TREE.instances[0])
        assert _file_directly(archive, first) == 0
        old = filed_at(tmp_path, first)
        assert old.exists()
        if committed:
            archive.flush()
        again = copy.deepcopy(first)
        again.StudyInstanceUID = generate_uid()
        assert _file_directly(archive, again) == 0
        new = filed_at(tmp_path, again)
        assert new.exists()
        archive.flush()
        assert not old.exists()
        assert new.exists()
        assert await archive.index.path_of(str(first.SOPInstanceUID)) == new
        assert await archive.index.count() == 1
        # Nothing is removed at a later commit: the new copy stays.
        third = copy.deepcopy(TREE.instances[1])
        assert _file_directly(archive, third) == 0
        archive.flush()
        assert new.exists() and filed_at(tmp_path, third).exists()
    finally:
        archive.close()


async def test_keep_leaves_the_first_copy_under_its_study(tmp_path: pathlib.Path) -> None:
    archive = Archive(tmp_path, on_duplicate="keep")
    await archive.open()
    try:
        first = copy.deepcopy(TREE.instances[0])
        assert _file_directly(archive, first) == 0
        archive.flush()
        again = copy.deepcopy(first)
        again.StudyInstanceUID = generate_uid()
        assert _file_directly(archive, again) == 0  # kept: success, not stored
        archive.flush()
        assert filed_at(tmp_path, first).exists()
        assert not filed_at(tmp_path, again).exists()
        assert await archive.index.path_of(str(first.SOPInstanceUID)) == filed_at(tmp_path, first)
    finally:
        archive.close()


def test_make_row_takes_every_value_or_blanks_what_is_missing() -> None:
    """A receiver's values (every keyword) and a partial mapping make the same kind of row."""
    full = {keyword: f"v-{keyword}" for keyword in ATTRIBUTES}
    full["SpecificCharacterSet"] = "ISO_IR 100"
    row = make_row(full, pathlib.Path("/a/b.dcm"), "1.2.840.10008.1.2.1", 7, 9, {"X": b"\xe9"})
    assert row[: len(ATTRIBUTES)] == [f"v-{keyword}" for keyword in ATTRIBUTES]
    assert row[len(ATTRIBUTES) :] == [
        "1.2.840.10008.1.2.1",
        "ISO_IR 100",
        '{"X": "\\u00e9"}',
        "/a/b.dcm",
        7,
        9,
    ]
    # Missing keywords (a mapping of some only) and None read as "".
    partial: dict[str, Any] = {"SOPInstanceUID": "1.2.3", "PatientName": None}
    row = make_row(partial, "/a/c.dcm", "1.2.840.10008.1.2")
    keywords = list(ATTRIBUTES)
    assert row[keywords.index("SOPInstanceUID")] == "1.2.3"
    assert row[keywords.index("PatientName")] == ""
    assert row[keywords.index("PatientID")] == ""
    assert row[len(ATTRIBUTES) :] == ["1.2.840.10008.1.2", "", "", "/a/c.dcm", 0, 0]
    # Every keyword there, some None: "" too, never NULL in the index.
    full["PatientName"] = None  # type: ignore[assignment]
    row = make_row(full, "/a/d.dcm", "1.2.840.10008.1.2")
    assert row[keywords.index("PatientName")] == ""
