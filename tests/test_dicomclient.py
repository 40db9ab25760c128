"""DicomClient against an in-process SCP: the reference README's story, in adicom terms."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import pathlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.qrscp import QRContext, QueryFailed

pytestmark = pytest.mark.anyio

LEVEL_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}


def build_tree() -> list[Dataset]:
    """2 patients x 2 studies x 2 series x 3 instances, from CT_small."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    out: list[Dataset] = []
    for p in range(2):
        for s in range(2):
            study = generate_uid()
            for r in range(2):
                series = generate_uid()
                for i in range(3):
                    ds = copy.deepcopy(template)
                    ds.PatientID = f"PAT{p}"
                    ds.PatientName = f"Doe^Patient{p}"
                    ds.StudyInstanceUID = study
                    ds.StudyDate = f"2024010{s + 1}"
                    ds.StudyDescription = f"Study {s}"
                    ds.SeriesInstanceUID = series
                    ds.SeriesNumber = r + 1
                    ds.Modality = "CT"
                    ds.SOPInstanceUID = generate_uid()
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    ds.InstanceNumber = i + 1
                    out.append(ds)
    return out


class Tree:
    """Exact/universal matching over a list of datasets (enough to drive the client)."""

    def __init__(self, instances: list[Dataset]) -> None:
        self.instances = instances

    def select(self, identifier: Dataset) -> list[Dataset]:
        level = identifier.get("QueryRetrieveLevel", "")
        if level not in LEVEL_KEYS:
            raise QueryFailed(0xA900, f"no level {level!r}")
        chosen = []
        for ds in self.instances:
            ok = True
            for element in identifier:
                if element.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                    continue
                wanted = str(element.value or "")
                if wanted and "*" not in wanted and "-" not in wanted:
                    ok = ok and str(ds.get(element.keyword, "")) == wanted
            if ok:
                chosen.append(ds)
        return chosen

    async def find(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        level = identifier.get("QueryRetrieveLevel", "")
        seen = set()
        for ds in self.select(identifier):
            key = tuple(str(ds.get(k, "")) for k in LEVEL_KEYS[level])
            if key in seen:
                continue
            seen.add(key)
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for element in identifier:
                keyword = element.keyword
                if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") or not keyword:
                    continue
                if keyword == "NumberOfStudyRelatedSeries":
                    answer.NumberOfStudyRelatedSeries = len(
                        {
                            d.SeriesInstanceUID
                            for d in self.instances
                            if d.StudyInstanceUID == ds.StudyInstanceUID
                        }
                    )
                elif keyword in ds:
                    answer[element.tag] = copy.deepcopy(ds[element.tag])
                else:
                    answer[element.tag] = copy.deepcopy(element)
            yield answer

    async def retrieve(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        matches = self.select(identifier)
        yield len(matches)
        for ds in matches:
            yield ds


@contextlib.asynccontextmanager
async def pacs(tree: Tree, **options: Any) -> AsyncIterator[adicom.DicomNode]:
    async with adicom.Server(
        "PACS", port=0, on_find=tree.find, on_get=tree.retrieve, on_move=tree.retrieve, **options
    ) as server:
        yield adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)


async def test_the_reference_story(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    tree = Tree(build_tree())
    client = adicom.DicomClient(calling_aet="CLARINET", max_pdu=16384)
    async with pacs(tree) as node:
        assert await client.echo(node) is True
        studies = await client.find_studies(adicom.StudyQuery(patient_id="PAT1"), node)
        assert len(studies) == 2
        assert {s.patient_id for s in studies} == {"PAT1"}
        assert all(s.number_of_study_related_series == 2 for s in studies)
        study_uid = studies[0].study_instance_uid
        series = await client.find_series(adicom.SeriesQuery(study_instance_uid=study_uid), node)
        assert sorted(s.series_number or 0 for s in series) == [1, 2]
        images = await client.find_images(
            adicom.ImageQuery(
                study_instance_uid=study_uid, series_instance_uid=series[0].series_instance_uid
            ),
            node,
        )
        assert len(images) == 3

        result = await client.get_study(study_uid, node, tmp_path / "study")
        assert result.status == "success" and result.num_completed == 6
        assert len(result.paths) == 6
        expected = {d.SOPInstanceUID for d in tree.instances if d.StudyInstanceUID == study_uid}
        assert {pydicom.dcmread(p).SOPInstanceUID for p in result.paths} == expected

        in_memory = await client.get_series_to_memory(
            study_uid, series[0].series_instance_uid, node
        )
        assert in_memory.num_completed == 3 and len(in_memory.instances) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Searching studies on PACS@127.0.0.1") for m in messages)
    assert "Found 2 studies" in messages
    assert any(m.startswith("Retrieved study: 6 completed, 0 failed") for m in messages)


async def test_patients_and_concurrent_calls() -> None:
    tree = Tree(build_tree())
    client = adicom.DicomClient()
    async with pacs(tree) as node:
        patients = await client.find_patients(adicom.PatientQuery(patient_id=""), node)
        assert sorted(p.patient_id for p in patients) == ["PAT0", "PAT1"]
        # Many calls at once, one association each, on one event loop.
        results = await asyncio.gather(
            *(
                client.find_studies(adicom.StudyQuery(patient_id=f"PAT{i % 2}"), node)
                for i in range(10)
            )
        )
        assert [len(r) for r in results] == [2] * 10
        assert threading.active_count() == 1


async def test_move_study_to_a_storage_scp_of_ours() -> None:
    tree = Tree(build_tree())
    received = adicom.MemoryStorage()
    client = adicom.DicomClient(calling_aet="CLARINET")
    async with adicom.Server("CLARINET", port=0, storage=received) as ours:
        destinations = {"CLARINET": ("127.0.0.1", ours.port)}
        async with pacs(tree, move_destinations=destinations) as node:
            study_uid = tree.instances[0].StudyInstanceUID
            progress: list[int] = []
            result = await client.move_study(
                study_uid, node, "CLARINET", progress=lambda p: progress.append(p.completed)
            )
            unknown = await client.move_series(
                study_uid, tree.instances[0].SeriesInstanceUID, node, "STRANGER"
            )
    assert result.status == "success" and result.num_completed == 6
    assert (result.status_code, result.status_meaning) == (0x0000, "Success")
    assert progress[-1] == 6
    assert {d.SOPInstanceUID for d in received.datasets} == {
        d.SOPInstanceUID for d in tree.instances if d.StudyInstanceUID == study_uid
    }
    assert unknown.status == "failure_0xA801"
    assert unknown.status_code == 0xA801
    assert unknown.status_meaning == "Refused: move destination unknown"


async def test_retrieve_timeout_cancels_and_reports(tmp_path: pathlib.Path) -> None:
    tree = Tree(build_tree() * 3)

    async def slow(identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        async for item in tree.retrieve(identifier, context):
            await asyncio.sleep(0.05)
            yield item

    client = adicom.DicomClient()
    async with adicom.Server("PACS", port=0, on_get=slow) as server:
        node = adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)
        with pytest.raises(adicom.RetrieveCancelled) as info:
            await client.get_study(tree.instances[0].StudyInstanceUID, node, tmp_path, timeout=0.4)
    stopped = info.value.progress
    assert info.value.acknowledged and 0 < stopped.completed < 18
    assert all(p.is_file() for p in stopped.paths)


async def test_bad_arguments_fail_before_anything_is_sent() -> None:
    client = adicom.DicomClient()
    node = adicom.DicomNode(aet="PACS", host="127.0.0.1", port=9)  # nothing listens there
    with pytest.raises(ValueError, match="not a valid UID"):
        await client.get_study("1.2.abc", node, "/tmp/never")
    with pytest.raises(ValueError):
        adicom.StudyQuery(study_date="2024-01-01")
    with pytest.raises(ValueError):
        adicom.DicomNode(aet="BACK\\SLASH", host="h", port=104)
    with pytest.raises(ValueError):
        adicom.DicomClient(calling_aet="X" * 17)
    with pytest.raises(adicom.PeerUnreachable):
        await client.find_studies(adicom.StudyQuery(), node)


async def test_peer_failure_status_raises_with_its_meaning() -> None:
    async def refuse(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        raise QueryFailed(0xC001, "index unavailable")
        yield identifier  # pragma: no cover - makes this an async generator

    client = adicom.DicomClient()
    async with adicom.Server("PACS", port=0, on_find=refuse) as server:
        node = adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)
        with pytest.raises(adicom.DimseError) as info:
            await client.find_studies(adicom.StudyQuery(), node)
    assert info.value.status == 0xC001 and "index unavailable" in str(info.value)


async def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADICOM_AET", "FROM-ENV")
    monkeypatch.setenv("ADICOM_MAX_PDU", "32768")
    client = adicom.DicomClient.from_settings()
    assert (client.calling_aet, client.max_pdu) == ("FROM-ENV", 32768)


# -- matches without their unique key (issue 12) -------------------------------

UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def odd_matches(level: str) -> list[Dataset]:
    """Three matches: a good one, one without the unique key, one with it empty."""
    out = []
    for n, key in enumerate(("1.2.3.4", None, "")):
        answer = Dataset()
        answer.QueryRetrieveLevel = level
        answer.PatientName = f"Doe^Match{n}"
        for keyword, value in (("StudyInstanceUID", "1.2.3"), ("SeriesInstanceUID", "1.2.3.1")):
            if keyword != UNIQUE_KEYS[level]:
                setattr(answer, keyword, value)
        if key is not None:
            setattr(answer, UNIQUE_KEYS[level], key)
        out.append(answer)
    return out


@contextlib.asynccontextmanager
async def answering(matches: list[Dataset]) -> AsyncIterator[adicom.DicomNode]:
    async def find(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        for answer in matches:
            if answer.QueryRetrieveLevel == identifier.QueryRetrieveLevel:
                yield answer

    async with adicom.Server("PACS", port=0, on_find=find) as server:
        yield adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
async def test_a_match_without_its_unique_key_is_yielded_not_fatal(
    level: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    client = adicom.DicomClient()
    queries: dict[str, Any] = {
        "PATIENT": (client.find_patients, adicom.PatientQuery()),
        "STUDY": (client.find_studies, adicom.StudyQuery()),
        "SERIES": (client.find_series, adicom.SeriesQuery(study_instance_uid="1.2.3")),
        "IMAGE": (
            client.find_images,
            adicom.ImageQuery(study_instance_uid="1.2.3", series_instance_uid="1.2.3.1"),
        ),
    }
    finder, query = queries[level]
    async with answering(odd_matches(level)) as node:
        results = await finder(query, node)
    keyword = UNIQUE_KEYS[level]
    field = type(results[0]).unique_key
    assert [getattr(r, field) for r in results] == ["1.2.3.4", "", ""]
    assert [r.missing_unique_key for r in results] == [False, True, True]
    names = [r.dataset.PatientName for r in results if r.dataset is not None]
    assert names == ["Doe^Match0", "Doe^Match1", "Doe^Match2"]
    # The peer's data set, kept for what the model has no field for.
    assert results[1].dataset is not None and keyword not in results[1].dataset
    assert results[2].dataset is not None and results[2].dataset[keyword].value in ("", None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"{level} level with no {keyword}" in warnings[0]
    assert f"{level} level with an empty {keyword}" in warnings[1]
    assert f"(2 without {keyword})" in caplog.text


async def test_a_match_without_its_key_cannot_retrieve_everything() -> None:
    client = adicom.DicomClient()
    async with answering(odd_matches("STUDY")) as node:
        studies = await client.find_studies(adicom.StudyQuery(), node)
        # An empty Study Instance UID would be universal matching: refused
        # before anything is sent.
        with pytest.raises(ValueError, match="needs the study UID"):
            await client.get_study_to_memory(studies[1].study_instance_uid, node)
        with pytest.raises(ValueError, match="needs the series UID"):
            await client.move_series(studies[0].study_instance_uid, "", node, "DEST")
