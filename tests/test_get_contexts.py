"""A C-GET that retrieves whatever the archive holds (issue 12).

The contexts a C-GET proposes are decided from what is retrieved: an IMAGE
level C-FIND first (SOP classes, and Available Transfer Syntax UID when the
peer gives it), within PS3.8's 128 contexts, each class with the SCP role.
What fails is said per instance: its class, its syntax, and why.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom import qrscu
from adicom.archive import Archive
from adicom.presentation import MAX_CONTEXTS, PresentationContext
from adicom.qrscp import QRContext, QueryFailed

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _lenient_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    # pydicom's own test files hold values it warns about (a UID component
    # with a leading zero); the warnings are errors in this suite.
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_ION_PLAN = "1.2.840.10008.5.1.4.1.1.481.8"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"

#: pydicom's test files of classes and syntaxes the fixed C-GET offer missed,
#: and two it had; (file, SOP class made of it, transfer syntax).
MIXED = [
    ("CT_small.dcm", CT, EXPLICIT),
    ("waveform_ecg.dcm", ECG, EXPLICIT),
    ("rtdose_rle.dcm", RT_DOSE, RLE),
    ("JPGExtended.dcm", SC, JPEG_EXTENDED),
    ("image_dfl.dcm", SC, DEFLATED),
    ("rtplan.dcm", RT_ION_PLAN, IMPLICIT),  # pydicom has no RT Ion Plan: relabelled
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.5.1.4.1.1.4", JPEG_LS),
    ("SC_rgb_jpeg_dcmtk.dcm", SC, JPEG_BASELINE),
]


def mixed_study(folder: pathlib.Path) -> tuple[str, dict[str, pathlib.Path]]:
    """One study, a series per file of MIXED; SOP Instance UID -> file."""
    study = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, pathlib.Path] = {}
    for n, (name, sop_class, syntax) in enumerate(MIXED):
        path = get_testdata_file(name)
        assert path is not None, name
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax, name
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = "MIXED"
        # Two quirks of the bundled files that DCMTK repairs in transit (see
        # tests/interop/data.py), removed so that comparisons stay exact:
        # Data Set Trailing Padding (PS3.10 7.2: no meaning), and encapsulated
        # Pixel Data with VR OW (PS3.5 A.4: it is OB).
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
        if "PixelData" in ds and ds["PixelData"].is_undefined_length:
            ds["PixelData"].VR = "OB"
        out = folder / f"{n}-{name}"
        ds.save_as(out, enforce_file_format=True)
        files[ds.SOPInstanceUID] = out
    return study, files


@contextlib.asynccontextmanager
async def archive_with(
    root: pathlib.Path, files: dict[str, pathlib.Path]
) -> AsyncIterator[adicom.DicomNode]:
    archive = Archive(root / "pacs")
    try:
        async with adicom.Server("PACS", port=0, **archive.handlers()) as server:
            node = adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)
            stored = await adicom.DicomClient().store(list(files.values()), node)
            assert all(r.ok for r in stored), [r.error for r in stored]
            yield node
    finally:
        archive.close()


def assert_same(received: Dataset, original_path: pathlib.Path) -> None:
    """Identical data elements, byte-identical pixel data, the same transfer syntax."""
    original = pydicom.dcmread(original_path)
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert received.SOPInstanceUID == original.SOPInstanceUID
    for element in original:
        assert element.tag in received, (original_path.name, element.tag)
        if element.tag == 0x7FE00010:
            assert received.PixelData == original.PixelData, original_path.name
        else:
            assert received[element.tag].value == element.value, (original_path.name, element)
    assert set(received.keys()) == set(original.keys())


# --------------------------------------------------------------------------
# Against the reference archive


async def test_get_study_brings_back_every_class_and_syntax(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    study, files = mixed_study(tmp_path / "src")
    async with archive_with(tmp_path, files) as node:
        client = adicom.DicomClient()
        result = await client.get_study(study, node, tmp_path / "out")
        assert (result.status, result.num_completed, result.num_failed) == (
            "success",
            len(MIXED),
            0,
        )
        assert result.failures == []
        for path in result.paths:
            received = pydicom.dcmread(path)
            assert_same(received, files[received.SOPInstanceUID])
        # The same, into memory.
        memory = await client.get_study_to_memory(study, node)
        assert memory.num_completed == len(MIXED)
        for ds in memory.instances:
            assert ds.SOPInstanceUID in files
    assert "C-GET: the study holds 8 instances of 6 SOP classes" in caplog.text


async def test_get_series_and_image_of_a_class_not_offered_before(tmp_path: pathlib.Path) -> None:
    study, files = mixed_study(tmp_path / "src")
    async with archive_with(tmp_path, files) as node:
        client = adicom.DicomClient()
        for uid, path in files.items():
            ds = pydicom.dcmread(path)
            if ds.SOPClassUID not in (ECG, RT_ION_PLAN):
                continue
            series = await client.get_series_to_memory(study, ds.SeriesInstanceUID, node)
            assert series.num_completed == 1 and series.instances[0].SOPInstanceUID == uid
            image = await client.get_image(study, ds.SeriesInstanceUID, uid, node, tmp_path / "one")
            assert image.num_completed == 1
            assert_same(pydicom.dcmread(image.paths[0]), path)


async def test_what_failed_says_its_class_and_why(tmp_path: pathlib.Path) -> None:
    study, files = mixed_study(tmp_path / "src")
    async with archive_with(tmp_path, files) as node:
        # The fixed offer of old: CT, SC, MR, RT Dose... in the usual syntaxes.
        client = adicom.DicomClient(get_sop_classes=qrscu.DEFAULT_GET_SOP_CLASSES)
        result = await client.get_study_to_memory(study, node)
    assert result.num_failed == 5 and result.status == "warning_0xB000"
    by_uid = {f.sop_instance_uid: f for f in result.failures}
    assert set(by_uid) == set(result.failed_sop_instances)
    kinds = {pydicom.dcmread(files[uid]).SOPClassUID: f for uid, f in by_uid.items()}
    assert set(kinds) == {ECG, RT_ION_PLAN, RT_DOSE, SC}
    assert kinds[ECG].reason.startswith("12-lead ECG Waveform Storage was not offered")
    assert kinds[RT_ION_PLAN].sop_class_uid == RT_ION_PLAN
    # The archive says (0008,3002) the syntax each instance is held in.
    assert kinds[RT_DOSE].reason == (
        "held in RLE Lossless; the peer accepted RT Dose Storage only in Explicit VR Little Endian"
    )
    assert str(kinds[ECG]).endswith(
        "(12-lead ECG Waveform Storage, Explicit VR Little Endian): 12-lead ECG Waveform "
        "Storage was not offered "
        "(adicom get --offer, DicomClient(get_offer=...))"
    )


async def test_offer_chooses_what_is_offered(tmp_path: pathlib.Path) -> None:
    study, files = mixed_study(tmp_path / "src")
    async with archive_with(tmp_path, files) as node:
        client = adicom.DicomClient(get_offer={ECG: [EXPLICIT], RT_DOSE: []})
        result = await client.get_study_to_memory(study, node)
    got = {pydicom.dcmread(files[ds.SOPInstanceUID]).SOPClassUID for ds in result.instances}
    assert got == {ECG, RT_DOSE}
    assert result.num_failed == len(MIXED) - 2
    assert {f.sop_class_uid for f in result.failures} == {CT, SC, RT_ION_PLAN, MR_IMAGE}


MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


async def test_our_own_refusal_is_named_as_such(tmp_path: pathlib.Path) -> None:
    study, files = mixed_study(tmp_path / "src")

    async def picky(dataset: Dataset, _context: Any) -> int | None:
        return 0xA700 if dataset.SOPClassUID == ECG else None

    async with archive_with(tmp_path, files) as node:
        client = adicom.DicomClient()
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        async with adicom.connect(
            node.host, node.port, called_ae=node.aet, contexts=qrscu.find_contexts()
        ) as assoc:
            found = await qrscu.survey(assoc, study)
        contexts, roles = qrscu.plan_get_contexts("study", found.wanted())
        async with adicom.connect(
            node.host, node.port, called_ae=node.aet, contexts=contexts, roles=roles
        ) as assoc:
            progress = await qrscu.get(
                assoc, identifier, adicom.CallbackStorage(picky), held=found.instances
            )
        assert client  # the same path DicomClient takes, by hand
    assert progress.completed == len(MIXED) - 1 and progress.failed == 1
    (failure,) = progress.failures
    assert failure.sop_class_uid == ECG and failure.transfer_syntax == EXPLICIT
    assert failure.reason.startswith("refused here: ")


# --------------------------------------------------------------------------
# Against a peer that says what it holds (Available Transfer Syntax UID)


class Holding:
    """Q/R handlers over files, answering (0008,3002) with each file's syntax."""

    def __init__(self, files: dict[str, pathlib.Path], say_syntax: bool = True) -> None:
        self.files = files
        self.say_syntax = say_syntax
        self.datasets = {
            uid: pydicom.dcmread(p, stop_before_pixels=True) for uid, p in files.items()
        }
        self.queries: list[Dataset] = []

    async def find(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        self.queries.append(identifier)
        level = identifier.QueryRetrieveLevel
        seen = set()
        for ds in self.datasets.values():
            if ds.StudyInstanceUID != identifier.StudyInstanceUID:
                continue
            if level == "IMAGE" and ds.SeriesInstanceUID != identifier.SeriesInstanceUID:
                continue
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            answer.StudyInstanceUID = ds.StudyInstanceUID
            answer.SeriesInstanceUID = ds.SeriesInstanceUID
            if level == "IMAGE":
                answer.SOPInstanceUID = ds.SOPInstanceUID
                answer.SOPClassUID = ds.SOPClassUID
                if self.say_syntax:
                    answer.AvailableTransferSyntaxUID = ds.file_meta.TransferSyntaxUID
            elif ds.SeriesInstanceUID in seen:
                continue
            seen.add(ds.SeriesInstanceUID)
            yield answer

    async def retrieve(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        chosen = [
            str(self.files[uid])
            for uid, ds in self.datasets.items()
            if ds.StudyInstanceUID == identifier.StudyInstanceUID
        ]
        yield len(chosen)
        for path in chosen:
            yield path


@contextlib.asynccontextmanager
async def holding(peer: Holding, **handlers: Any) -> AsyncIterator[adicom.DicomNode]:
    handlers = {"on_find": peer.find, "on_get": peer.retrieve, **handlers}
    async with adicom.Server("PACS", port=0, **handlers) as server:
        yield adicom.DicomNode(aet="PACS", host="127.0.0.1", port=server.port)


async def test_a_peer_that_says_each_syntax_gets_one_context_per_syntax(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    study, files = mixed_study(tmp_path / "src")
    peer = Holding(files)
    async with holding(peer) as node:
        result = await adicom.DicomClient().get_study_to_memory(study, node)
    assert result.num_completed == len(MIXED) and result.num_failed == 0
    # One context per (class, syntax) held: 8 instances, 8 pairs.
    assert "holds 8 instances of 6 SOP classes; offering 8 presentation contexts" in caplog.text
    image_queries = [q for q in peer.queries if q.QueryRetrieveLevel == "IMAGE"]
    assert len(image_queries) == len(MIXED)  # one per series, hierarchical
    assert all("AvailableTransferSyntaxUID" in q for q in image_queries)
    for ds in result.instances:
        assert_same(ds, files[ds.SOPInstanceUID])


async def test_offer_all_syntaxes_ignores_what_the_peer_says(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adicom")
    study, files = mixed_study(tmp_path / "src")
    async with holding(Holding(files)) as node:
        result = await adicom.DicomClient(get_all_syntaxes=True).get_study_to_memory(study, node)
    assert result.num_completed == len(MIXED)
    assert "offering 127 presentation contexts" in caplog.text


async def test_a_peer_that_does_not_answer_c_find_gets_the_common_offer(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    study, files = mixed_study(tmp_path / "src")
    peer = Holding({uid: p for uid, p in files.items() if p.name.startswith("0-")})

    async def refuse(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        raise QueryFailed(0xC001, "no queries here")
        yield identifier  # pragma: no cover - an async generator

    async with holding(peer, on_find=refuse) as node:
        result = await adicom.DicomClient().get_study_to_memory(study, node)
    assert result.num_completed == 1  # CT_small, of the common classes
    assert "could not ask PACS what the study holds" in caplog.text
    assert "offering the common storage classes" in caplog.text


# --------------------------------------------------------------------------
# The plan itself


def ids(contexts: list[tuple[str, list[str]]]) -> Iterator[tuple[str, tuple[str, ...]]]:
    for sop, syntaxes in contexts[1:]:
        yield sop, tuple(syntaxes)


def test_known_syntaxes_each_get_their_context_compressed_first() -> None:
    contexts, roles = qrscu.plan_get_contexts(
        "study", {SC: [EXPLICIT, JPEG_EXTENDED, DEFLATED], ECG: [EXPLICIT]}
    )
    assert contexts[0] == ("1.2.840.10008.5.1.4.1.2.2.3", [EXPLICIT, IMPLICIT])
    assert list(ids(contexts)) == [
        (SC, (JPEG_EXTENDED,)),
        (SC, (EXPLICIT,)),
        (SC, (DEFLATED,)),
        (ECG, (EXPLICIT,)),
    ]
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in roles] == [
        (SC, False, True),
        (ECG, False, True),
    ]


@pytest.mark.parametrize("classes", [1, 2, 3, 5, 20, 126, 127, 128, 300])
def test_unknown_syntaxes_share_the_128_contexts(classes: int) -> None:
    wanted: dict[str, list[str]] = {f"1.2.3.{n}": [] for n in range(classes)}
    contexts, roles = qrscu.plan_get_contexts("study", wanted)
    assert len(contexts) <= MAX_CONTEXTS
    every = set(qrscu.GET_SYNTAX_PRIORITY)
    offered = {sop for sop, _ in ids(contexts)}
    assert len(offered) == min(classes, MAX_CONTEXTS - 1)
    assert {r.sop_class_uid for r in roles} == offered
    for sop in offered:
        mine = [syntaxes for s, syntaxes in ids(contexts) if s == sop]
        # Every syntax pydicom knows, each once, the likely ones in contexts of their own.
        assert sorted(t for syntaxes in mine for t in syntaxes) == sorted(every)
        if classes <= 3:
            assert all(len(syntaxes) == 1 for syntaxes in mine)
        alone = {syntaxes[0] for syntaxes in mine if len(syntaxes) == 1}
        if classes <= 20:
            assert {EXPLICIT, IMPLICIT, DEFLATED, JPEG_BASELINE, JPEG_EXTENDED} <= alone


def test_known_and_unknown_together_and_the_usual_ones_added() -> None:
    contexts, _ = qrscu.plan_get_contexts(
        "study", {CT: [EXPLICIT], RT_DOSE: []}, also=[CT, ECG, SC]
    )
    pairs = list(ids(contexts))
    assert pairs[0] == (CT, (EXPLICIT,))
    assert (RT_DOSE, (RLE,)) in pairs
    assert (ECG, (EXPLICIT, IMPLICIT)) in pairs  # the usual offer, where room was left
    assert len(contexts) <= MAX_CONTEXTS
    assert sum(sop == CT for sop, _ in pairs) == 1  # not offered twice


def test_too_many_known_syntaxes_share_a_context_per_class() -> None:
    syntaxes = list(qrscu.GET_SYNTAX_PRIORITY[:10])
    wanted = {f"1.2.3.{n}": syntaxes for n in range(20)}
    contexts, _ = qrscu.plan_get_contexts("study", wanted)
    assert len(contexts) == 21
    assert all(len(ts) == 10 for _, ts in ids(contexts))


def test_the_survey_says_what_each_class_is_held_in() -> None:
    survey = qrscu.Survey(
        {
            "1": qrscu.HeldInstance("1", CT, (EXPLICIT,)),
            "2": qrscu.HeldInstance("2", CT, (JPEG_LS,)),
            "3": qrscu.HeldInstance("3", SC, ()),
            "4": qrscu.HeldInstance("4", SC, (RLE,)),
            "5": qrscu.HeldInstance("5", "", ()),
        }
    )
    assert survey.wanted() == {CT: [EXPLICIT, JPEG_LS], SC: []}


def test_a_failure_explained_from_the_contexts_and_the_peers_comment() -> None:
    contexts = {
        1: PresentationContext(1, pydicom.uid.UID(SC), pydicom.uid.UID(EXPLICIT), 0, False, True),
        3: PresentationContext(3, pydicom.uid.UID(ECG), None, 3, False, False),
    }
    progress = qrscu.RetrieveProgress(
        failed_sop_instances=["1", "2", "3"], error_comment="disk on fire"
    )
    held = {
        "1": qrscu.HeldInstance("1", SC, (JPEG_EXTENDED,)),
        "2": qrscu.HeldInstance("2", ECG, (EXPLICIT,)),
    }
    one, two, three = qrscu.explain_failures(contexts, progress, held)
    assert one.reason == (
        "held in JPEG Extended (Process 2 and 4); the peer accepted Secondary Capture "
        "Image Storage only in Explicit VR Little Endian; the peer says: disk on fire"
    )
    assert one.transfer_syntax == JPEG_EXTENDED
    assert two.reason.startswith("the peer accepted no presentation context for 12-lead ECG")
    assert three.reason == "the peer says: disk on fire (its C-FIND did not list this instance)"
    assert three.sop_class_uid is None
