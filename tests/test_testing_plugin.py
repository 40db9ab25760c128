"""adicom.testing: the pytest plugin loads by its entry point, and its fixtures work.

docs/testing.md's example suite runs in a new pytest process (pytester), so
the plugin is found the way a user's pytest finds it; the fixtures are then
used directly here, where the same entry point has loaded them.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import adicom
import adicom.testing
from adicom.models import DicomNode
from adicom.testing import (
    ArchiveFactory,
    ServerFactory,
    StorageSCPFactory,
    archive_scp,
    node_of,
)

pytest_plugins = ["pytester"]

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def sample_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


CT = sample_file("CT_small.dcm")
MR = sample_file("MR_small.dcm")
MR_IMPLICIT = sample_file("MR_small_implicit.dcm")


def documented_suite() -> dict[str, str]:
    """The ```py title="PATH"``` blocks of docs/testing.md: a user's test suite."""
    blocks = re.findall(r'^```py title="(.*?)"\n(.*?)^```', DOC.read_text(), re.S | re.M)
    return {str(path): str(code) for path, code in blocks}


def write_suite(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for name, code in files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    # As strict as this project's own settings.
    pytester.makeini(
        "[pytest]\naddopts = --strict-markers -p no:cacheprovider\nfilterwarnings =\n    error\n"
    )


def secondary_capture(patient_id: str) -> Dataset:
    """A dataset built in code, with no file meta, as a user's test would make one."""
    dataset = Dataset()
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = patient_id
    dataset.PatientName = "Test^Patient"
    return dataset


# --------------------------------------------------------------------------
# The plugin, as users get it


def test_the_documented_suite_passes_in_a_new_pytest_process(pytester: pytest.Pytester) -> None:
    files = documented_suite()
    assert set(files) == {"tests/conftest.py", "tests/test_pacs.py"}
    files["tests/test_entry_point.py"] = (
        "import adicom.testing\n\n\n"
        "def test_loaded_by_the_entry_point(request):\n"
        "    # -p would name it 'adicom.testing'; the entry point names it 'adicom'.\n"
        '    assert request.config.pluginmanager.get_plugin("adicom") is adicom.testing\n'
    )
    write_suite(pytester, files)
    result = pytester.runpytest_subprocess(timeout=120)
    tests = sum(
        code.count("\ndef test_") + code.count("\nasync def test_") for code in files.values()
    )
    assert tests >= 6
    result.assert_outcomes(passed=tests)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    write_suite(pytester, {"test_off.py": "def test_archive(dicom_archive):\n    pass\n"})
    result = pytester.runpytest_subprocess("-p", "no:adicom", timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'dicom_archive' not found*"])


def test_this_session_loaded_it_by_the_entry_point(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.get_plugin("adicom") is adicom.testing


def test_importing_the_plugin_starts_nothing(tmp_path: pathlib.Path) -> None:
    check = (
        "import asyncio, logging, os, threading\n"
        "import adicom.testing\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not logging.getLogger('adicom').handlers\n"
        "assert not logging.getLogger().handlers\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        "try:\n"
        "    asyncio.get_running_loop()\n"
        "except RuntimeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('a loop is running')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------
# Archives


@pytest.mark.anyio
async def test_an_archive_is_seeded_from_files_folders_and_datasets(
    dicom_archive: ArchiveFactory, tmp_path: pathlib.Path
) -> None:
    folder = tmp_path / "incoming"
    (folder / "ct").mkdir(parents=True)
    (folder / "ct" / "image").write_bytes(pathlib.Path(CT).read_bytes())
    (folder / "README").write_text("not DICOM: skipped in a folder")
    built = secondary_capture("BUILT")
    implicit = pydicom.dcmread(MR_IMPLICIT)
    implicit.SOPInstanceUID = generate_uid()
    implicit.StudyInstanceUID = generate_uid()
    implicit.PatientID = "IMPLICIT"
    async with dicom_archive([folder, MR, built, implicit]) as pacs:
        client = adicom.DicomClient(calling_aet="TESTER")
        studies = await client.find_studies(adicom.StudyQuery(), pacs.node)
        assert sorted(str(s.patient_id) for s in studies) == ["1CT1", "4MR1", "BUILT", "IMPLICIT"]
        for uid in (pydicom.dcmread(CT).SOPInstanceUID, built.SOPInstanceUID):
            assert await pacs.archive.holds(uid)
        result = await client.get_study_to_memory(built.StudyInstanceUID, pacs.node)
        assert result.status == "success"
        (got,) = result.instances
        assert got.SOPInstanceUID == built.SOPInstanceUID and got.PatientName == "Test^Patient"
        # Datasets are written in their own transfer syntax (explicit VR
        # little endian without file meta), and the caller's are left as they were.
        syntaxes = {
            pydicom.dcmread(path).SOPInstanceUID: pydicom.dcmread(path).file_meta.TransferSyntaxUID
            for path in (pacs.root / "seed").glob("*.dcm")
        }
        assert syntaxes[built.SOPInstanceUID] == ExplicitVRLittleEndian
        assert syntaxes[implicit.SOPInstanceUID] == ImplicitVRLittleEndian
        assert not hasattr(built, "file_meta")
        # More, while it runs.
        later = secondary_capture("LATER")
        assert await pacs.add([later]) == 1
        studies = await client.find_studies(adicom.StudyQuery(patient_id="LATER"), pacs.node)
        assert len(studies) == 1
    assert (folder / "ct" / "image").exists()  # copied, not moved
    assert pacs.root.parent == tmp_path


@pytest.mark.anyio
async def test_a_bad_seed_is_refused_before_anything_starts(
    dicom_archive: ArchiveFactory, tmp_path: pathlib.Path
) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM")
    nameless = Dataset()
    nameless.PatientID = "X"
    for seed, message in (
        (text, "notes.dcm: not a DICOM instance"),
        (tmp_path / "missing.dcm", "missing.dcm: not a DICOM instance"),
        (nameless, "needs SOPClassUID and SOPInstanceUID"),
    ):
        with pytest.raises(ValueError, match=message):
            async with dicom_archive([CT, seed], root=tmp_path / "archive"):
                pytest.fail("the archive started")
        assert not (tmp_path / "archive" / "seed").exists()


@pytest.mark.anyio
async def test_move_destinations_and_storage_commitment(
    dicom_archive: ArchiveFactory, dicom_storage_scp: StorageSCPFactory
) -> None:
    ct = pydicom.dcmread(CT)
    async with dicom_archive([ct]) as pacs, dicom_storage_scp("VIEWER") as viewer:
        client = adicom.DicomClient(calling_aet="TESTER")
        result = await client.move_study(ct.StudyInstanceUID, pacs.node, "VIEWER")
        assert result.status_code == 0xA801 and not viewer.received
        pacs.add_destination(viewer)
        assert pacs.destinations == {"VIEWER": ("127.0.0.1", viewer.port)}
        result = await client.move_study(ct.StudyInstanceUID, pacs.node, "VIEWER")
        assert result.status == "success" and result.num_completed == 1
        (received,) = viewer.received
        assert received.dataset.SOPInstanceUID == ct.SOPInstanceUID
        assert received.dataset.PixelData == ct.PixelData
        assert received.status == 0
        context = received.context
        assert (context.calling_ae, context.called_ae) == (pacs.ae_title, "VIEWER")
        assert context.sop_class_uid == ct.SOPClassUID
        assert viewer.contexts == [context] and viewer.datasets == [received.dataset]
        # Storage Commitment, answered from what the archive holds.
        commitment = await client.commit([ct, secondary_capture("NOT-HELD")], pacs.node)
        assert [r.sop_instance_uid for r in commitment.committed] == [ct.SOPInstanceUID]
        assert len(commitment.failed) == 1


@pytest.mark.anyio
async def test_server_options_reach_the_archive(dicom_archive: ArchiveFactory) -> None:
    async with dicom_archive([CT], allowed_calling_aes=["MY_APP"]) as pacs:
        assert await adicom.DicomClient(calling_aet="MY_APP").echo(pacs.node)
        with pytest.raises(adicom.AssociationRejected):
            await adicom.DicomClient(calling_aet="STRANGER").echo(pacs.node)
        # The seed went in without an association: only the test's two counted.
        assert pacs.server.stats["accepted"] == 1 and pacs.server.stats["rejected"] == 1


# --------------------------------------------------------------------------
# Storage SCPs


@pytest.mark.anyio
async def test_a_storage_scp_answers_as_told_and_keeps_everything(
    dicom_storage_scp: StorageSCPFactory,
) -> None:
    def status(dataset: Dataset, context: adicom.StoreContext) -> int | None:
        return 0xA700 if dataset.PatientID == "4MR1" else None

    async with dicom_storage_scp(status=status) as scp:
        results = await adicom.DicomClient().store([CT, MR], scp.node)
        assert [r.status for r in results] == [0, 0xA700]
        assert [(r.dataset.PatientID, r.status) for r in scp.received] == [
            ("1CT1", 0),
            ("4MR1", 0xA700),
        ]
        assert {c.calling_ae for c in scp.contexts} == {"ADICOM"}


@pytest.mark.anyio
async def test_wait_for_is_bounded_and_wakes_on_arrival(
    dicom_storage_scp: StorageSCPFactory,
) -> None:
    async with dicom_storage_scp("WAITER") as scp:
        assert await scp.wait_for(0) == []
        with pytest.raises(TimeoutError, match=r"WAITER: 0 of 1 instances arrived within 0\.2 s"):
            await scp.wait_for(1, timeout=0.2)
        client = adicom.DicomClient()
        sending = asyncio.create_task(client.store([CT, MR], scp.node))
        received = await scp.wait_for(2, timeout=30)
        assert [r.dataset.PatientID for r in received] == ["1CT1", "4MR1"]
        await sending


# --------------------------------------------------------------------------
# Servers, nodes, names, cleanup


@pytest.mark.anyio
async def test_default_names_folders_and_ports_are_distinct(
    dicom_archive: ArchiveFactory,
    dicom_storage_scp: StorageSCPFactory,
    dicom_server: ServerFactory,
    tmp_path: pathlib.Path,
) -> None:
    async with (
        dicom_archive() as first,
        dicom_archive() as second,
        dicom_archive(ae_title="A/B", root=tmp_path / "mine") as named,
        dicom_storage_scp() as store1,
        dicom_storage_scp() as store2,
        dicom_server() as server,
    ):
        assert [first.ae_title, second.ae_title, named.ae_title] == ["ARCHIVE", "ARCHIVE2", "A/B"]
        assert [first.root, second.root, named.root] == [
            tmp_path / "archive1",
            tmp_path / "archive2",
            tmp_path / "mine",
        ]
        assert [store1.ae_title, store2.ae_title, server.ae_title] == [
            "STORESCP",
            "STORESCP2",
            "SCP",
        ]
        ports = {s.port for s in (first, second, named, store1, store2)} | {server.port}
        assert len(ports) == 6
        assert all(node.host == "127.0.0.1" for node in (first.node, store1.node))


@pytest.mark.anyio
async def test_dicom_server_and_dicom_node(
    dicom_server: ServerFactory, dicom_node: Callable[..., DicomNode]
) -> None:
    async def find(identifier: Dataset, context: adicom.QRContext) -> AsyncIterator[Dataset]:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3"
        yield match

    async with dicom_server("MINI", on_find=find) as server:
        node = dicom_node(server)
        assert node == DicomNode(aet="MINI", host="127.0.0.1", port=server.port)
        (study,) = await adicom.DicomClient().find_studies(adicom.StudyQuery(), node)
        assert study.study_instance_uid == "1.2.3"
        other = dicom_node(node, ae_title="OTHER")
        assert (other.aet, other.port) == ("OTHER", server.port)
        assert dicom_node(node) is node
        with pytest.raises(adicom.AssociationRejected):
            await adicom.DicomClient().echo(other)


@pytest.mark.anyio
async def test_the_block_stops_everything_and_starts_no_thread(
    dicom_archive: ArchiveFactory, dicom_storage_scp: StorageSCPFactory
) -> None:
    async with dicom_storage_scp() as viewer, dicom_archive([CT], destinations=[viewer]) as pacs:
        assert threading.active_count() == 1
        uid = pydicom.dcmread(CT).StudyInstanceUID
        result = await adicom.DicomClient().move_study(uid, pacs.node, viewer.ae_title)
        assert result.num_completed == 1
        assert threading.active_count() == 1
        nodes = (pacs.node, viewer.node)
    for node in nodes:
        with pytest.raises(adicom.PeerUnreachable):
            await adicom.DicomClient(connect_timeout=5).echo(node)


@pytest.mark.anyio
async def test_an_scp_left_running_fails_the_teardown() -> None:
    factory = StorageSCPFactory()
    running = factory("LEFT")
    await running.__aenter__()
    try:
        with pytest.raises(pytest.fail.Exception, match="LEFT still running at teardown"):
            factory._check_stopped()
    finally:
        await running.__aexit__(None, None, None)
    factory._check_stopped()


@pytest.mark.anyio
async def test_the_context_managers_work_without_the_fixtures(tmp_path: pathlib.Path) -> None:
    async with archive_scp(tmp_path / "pacs", [CT], ae_title="PLAIN") as pacs:
        assert node_of(pacs) == pacs.node and pacs.node.aet == "PLAIN"
        assert await adicom.DicomClient().echo(pacs.node)
