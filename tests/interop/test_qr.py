"""Query/retrieve: adicom's SCU (adicom.qrscu) against real Q/R SCPs.

The SCPs are DCMTK dcmqrscp and pynetdicom's qrscp app, each started once
per session and seeded by C-STORE (DCMTK storescu, pynetdicom's storage SCU)
with the archive of tests/interop/qr_peers.py: patients QR-P1 and QR-P2,
two studies each of two series of three instances (CT and MR explicit VR
little endian, RT Plan implicit VR little endian, Secondary Capture in JPEG
lossless), and QR-MANY with one 40-instance CT series.

Every cell checks content against what was seeded:
- C-FIND at PATIENT, STUDY, SERIES and IMAGE level, Study Root and Patient
  Root: the returned UIDs are exactly the seeded ones for the identifier;
  matching by Patient ID, by date range, by wildcard on Patient's Name; the
  returned attribute values; the count attributes when a peer returns them;
  leaving the loop early (C-CANCEL) keeps the association usable.
- C-GET of a study and a series, to disk (each file equal to the seeded one
  element by element, compressed pixel data byte for byte) and to memory;
  a storage class not offered makes those sub-operations fail, the others
  still arrive.
- C-MOVE of a study and a series to an in-process adicom.Server (received
  files compared the same way); an unknown destination is status 0xA801 in
  the result.
- Cancelling a C-GET midway, by its timeout (RetrieveCancelled) and by
  cancelling the task (CancelledError): what was stored stays, listed in
  progress.paths, nothing half-written is left, the association ends
  within a bound, and a new association to the same SCP works.
- adicom.DicomClient: find_patients/studies/series/images (pydantic results
  against the seeded values), get_study/get_series to disk,
  get_study_to_memory, move_study/move_series, a move to an unknown
  destination ("failure_0xA801").

Neither SCP returns the Number of ... Related ... count attributes (both
drop keys they do not index); the count checks apply when a peer does.

Each SOP class is seeded in one transfer syntax only; a C-GET offers the
compressed class only its own syntax (see :func:`get_contexts_for`), since
pynetdicom, as acceptor, picks the first syntax of *its* list that was
offered (implicit VR little endian), and cannot then send a JPEG instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import anyio
import pytest
from pydicom.dataset import Dataset

import adicom
from adicom import DiskStorage, MemoryStorage, qrscu
from adicom.pdu import RoleSelection
from adicom.storage import IncomingInstance, StorageHandler, StoreContext
from tests.interop import data, peers
from tests.interop.qr_peers import Archive, QrScp, Seeded

pytestmark = pytest.mark.interop

HOST = peers.HOST
CALLING_AE = "ADICOM"
TEST_DEADLINE = 60.0

SUCCESS = 0x0000
CANCEL = 0xFE00
WARNING = 0xB000
UNKNOWN_DESTINATION = 0xA801

SCP_KINDS = ("dcmtk", "pynetdicom")


@pytest.fixture(params=SCP_KINDS)
def scp(request: pytest.FixtureRequest) -> QrScp:
    """Each seeded Q/R SCP in turn."""
    name = "dcmqrscp_seeded" if request.param == "dcmtk" else "pynetdicom_qrscp_seeded"
    seeded: QrScp = request.getfixturevalue(name)
    return seeded


# --------------------------------------------------------------------------
# Helpers


def identifier(level: str, **keys: object) -> Dataset:
    """A query/retrieve identifier: the level and the keys (None: empty value)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, "" if value is None else value)
    return ds


def query_contexts(model: qrscu.Model) -> list[tuple[str, list[str]]]:
    return qrscu.find_contexts(model) + qrscu.move_contexts(model)


def get_contexts_for(
    model: qrscu.Model, seeded: Iterable[Seeded]
) -> tuple[list[tuple[str, list[str]]], list[RoleSelection]]:
    """C-GET contexts for the classes of ``seeded``; a compressed class gets only its syntax."""
    seeded = list(seeded)
    classes = sorted({s.instance.sop_class_uid for s in seeded})
    contexts, roles = qrscu.get_contexts(model, classes)
    own = {s.instance.sop_class_uid: s.instance.transfer_syntax for s in seeded}
    compressed = {s.instance.sop_class_uid for s in seeded if s.instance.compressed}
    contexts = [(sop, [own[sop]] if sop in compressed else ts) for sop, ts in contexts]
    return contexts, roles


@contextlib.asynccontextmanager
async def associate(
    scp: QrScp,
    contexts: Sequence[tuple[str, Sequence[str]]],
    roles: Iterable[RoleSelection] = (),
) -> AsyncIterator[adicom.Association]:
    async with adicom.connect(
        HOST,
        scp.port,
        calling_ae=CALLING_AE,
        called_ae=scp.aet,
        contexts=contexts,
        roles=roles,
        timeout=30.0,
    ) as association:
        yield association


async def find_all(scp: QrScp, query: Dataset, model: qrscu.Model) -> tuple[list[Dataset], int]:
    """All matches of one C-FIND on a new association, and the final status."""
    async with associate(scp, qrscu.find_contexts(model)) as association:
        async with qrscu.find(association, query, model=model) as results:
            matches = [ds async for ds in results]
        assert results.status is not None
        return matches, results.status


def values(matches: Sequence[Dataset], keyword: str) -> list[str]:
    return [str(ds.get(keyword, "")) for ds in matches]


def unique(scp: QrScp, matches: Sequence[Dataset], keyword: str) -> dict[str, Dataset]:
    """Index matches by ``keyword``; dcmqrscp must answer each entity once.

    pynetdicom's qrscp answers a query above IMAGE level with one response
    per matching *instance* (its database joins through the instance
    table), so there identical duplicates are tolerated; their values must
    still agree.
    """
    found: dict[str, Dataset] = {}
    for ds in matches:
        key = str(ds.get(keyword, ""))
        if key in found:
            assert scp.kind == "pynetdicom", f"{scp.kind} returned {keyword} {key} twice"
            assert ds == found[key], f"two different responses for {keyword} {key}"
        found[key] = ds
    return found


def stored_files(root: Path) -> set[Path]:
    """Files DiskStorage finished under ``root`` (its .incoming folder aside)."""
    return {
        p for p in root.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(root).parts
    }


def leftovers(root: Path) -> list[Path]:
    """Half-received instances DiskStorage left behind."""
    incoming = root / ".incoming"
    return sorted(incoming.iterdir()) if incoming.exists() else []


def check_files(
    root: Path, expected: Sequence[Seeded], *, paths: Sequence[Path] | None = None
) -> None:
    """``root`` holds exactly ``expected``, at DiskStorage's layout, each as seeded."""
    files = stored_files(root)
    wanted = {data.layout_path(root, s.instance): s for s in expected}
    assert files == set(wanted), (
        f"missing: {sorted(map(str, set(wanted) - files))}\n"
        f"unexpected: {sorted(map(str, files - set(wanted)))}"
    )
    if paths is not None:
        assert sorted(paths) == sorted(files), "progress.paths differs from the stored files"
    assert not leftovers(root), f"half-received files left: {leftovers(root)}"
    for path, seeded in wanted.items():
        data.assert_same_instance(seeded.instance, path)


def check_datasets(datasets: Sequence[Dataset], expected: Sequence[Seeded]) -> None:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    assert len(by_uid) == len(datasets), "an instance arrived twice"
    assert set(by_uid) == {s.sop_instance_uid for s in expected}
    for seeded in expected:
        data.assert_same_instance(seeded.instance, by_uid[seeded.sop_instance_uid])


# --------------------------------------------------------------------------
# C-FIND


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["patient"])
async def test_find_patients(scp: QrScp, model: qrscu.Model) -> None:
    archive = scp.archive
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(
            scp,
            identifier("PATIENT", PatientID=None, PatientName=None),
            model,
        )
    assert status == SUCCESS
    found = unique(scp, matches, "PatientID")
    assert {pid: str(ds.PatientName) for pid, ds in found.items()} == archive.patients()
    assert set(values(matches, "QueryRetrieveLevel")) == {"PATIENT"}


STUDY_KEYS = {
    "StudyInstanceUID": None,
    "PatientID": None,
    "PatientName": None,
    "StudyDate": None,
    "StudyID": None,
    "AccessionNumber": None,
}


def check_studies(scp: QrScp, matches: Sequence[Dataset], expected: set[str]) -> None:
    """The matches are the studies ``expected``, with their seeded attributes."""
    found = unique(scp, matches, "StudyInstanceUID")
    assert set(found) == expected
    for uid, ds in found.items():
        seeded = scp.archive.first(study_instance_uid=uid)
        assert ds.QueryRetrieveLevel == "STUDY"
        assert str(ds.PatientID) == seeded.patient_id
        assert str(ds.PatientName) == seeded.patient_name
        assert str(ds.StudyDate) == seeded.study_date
        assert str(ds.StudyID) == seeded.study_id
        assert str(ds.AccessionNumber) == seeded.accession_number


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["study", "patient"])
async def test_find_studies_of_patient(scp: QrScp, model: qrscu.Model) -> None:
    archive = scp.archive
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(
            scp, identifier("STUDY", **{**STUDY_KEYS, "PatientID": "QR-P1"}), model
        )
    assert status == SUCCESS
    check_studies(scp, matches, archive.studies("QR-P1"))


@pytest.mark.anyio
async def test_find_all_studies_with_counts(scp: QrScp) -> None:
    """Universal match on every key; count attributes, when returned, are right."""
    archive = scp.archive
    keys = {
        **STUDY_KEYS,
        "NumberOfStudyRelatedSeries": None,
        "NumberOfStudyRelatedInstances": None,
    }
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(scp, identifier("STUDY", **keys), "study")
    assert status == SUCCESS
    check_studies(scp, matches, archive.studies())
    for ds in matches:
        uid = str(ds.StudyInstanceUID)
        for keyword, expected in (
            ("NumberOfStudyRelatedSeries", len(archive.series(uid))),
            ("NumberOfStudyRelatedInstances", len(archive.in_study(uid))),
        ):
            value = ds.get(keyword)
            if value not in (None, ""):
                assert int(value) == expected, f"{keyword} of {uid}: {value}, not {expected}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("date_range", "studies"),
    [
        ("20210101-20221231", [("QR-P1", "20210610"), ("QR-P2", "20220315")]),
        ("20230101-", [("QR-P2", "20230920")]),
        ("-20200131", [("QR-MANY", "20190202"), ("QR-P1", "20200105")]),
    ],
)
async def test_find_studies_by_date_range(
    scp: QrScp, date_range: str, studies: list[tuple[str, str]]
) -> None:
    archive = scp.archive
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(
            scp, identifier("STUDY", **{**STUDY_KEYS, "StudyDate": date_range}), "study"
        )
    assert status == SUCCESS
    check_studies(scp, matches, {archive.study_of(pid, date) for pid, date in studies})


@pytest.mark.anyio
@pytest.mark.parametrize(("pattern", "patient_id"), [("Be*", "QR-P2"), ("?lpha^A*", "QR-P1")])
async def test_find_studies_by_name_wildcard(scp: QrScp, pattern: str, patient_id: str) -> None:
    archive = scp.archive
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(
            scp, identifier("STUDY", **{**STUDY_KEYS, "PatientName": pattern}), "study"
        )
    assert status == SUCCESS
    check_studies(scp, matches, archive.studies(patient_id))


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["study", "patient"])
async def test_find_series(scp: QrScp, model: qrscu.Model) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P2", "20220315")
    keys: dict[str, object] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": None,
        "Modality": None,
        "SeriesNumber": None,
    }
    if model == "patient":
        keys["PatientID"] = "QR-P2"
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(scp, identifier("SERIES", **keys), model)
    assert status == SUCCESS
    found = unique(scp, matches, "SeriesInstanceUID")
    assert set(found) == archive.series(study)
    for uid, ds in found.items():
        seeded = archive.first(series_instance_uid=uid)
        assert ds.QueryRetrieveLevel == "SERIES"
        assert str(ds.StudyInstanceUID) == study
        assert str(ds.Modality) == seeded.modality
        assert int(ds.SeriesNumber) == seeded.series_number


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["study", "patient"])
async def test_find_images(scp: QrScp, model: qrscu.Model) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P1", "20210610")
    series = archive.series_of(study, "jpeg")
    keys: dict[str, object] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": None,
        "InstanceNumber": None,
    }
    if model == "patient":
        keys["PatientID"] = "QR-P1"
    with anyio.fail_after(TEST_DEADLINE):
        matches, status = await find_all(scp, identifier("IMAGE", **keys), model)
    assert status == SUCCESS
    found = unique(scp, matches, "SOPInstanceUID")
    assert len(found) == len(matches), "an instance was returned twice"
    assert set(found) == {s.sop_instance_uid for s in archive.in_series(series)}
    for uid, ds in found.items():
        seeded = archive.by_uid()[uid]
        assert ds.QueryRetrieveLevel == "IMAGE"
        assert str(ds.SeriesInstanceUID) == series
        assert int(ds.InstanceNumber) == seeded.instance_number


@pytest.mark.anyio
async def test_find_stopped_early_keeps_association(scp: QrScp) -> None:
    """Leaving the loop after one match sends C-CANCEL; the association goes on."""
    archive = scp.archive
    study = archive.study_of("QR-MANY", "20190202")
    series = archive.series_of(study, "ct")
    query = identifier(
        "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=None
    )
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, qrscu.find_contexts("study")) as association:
            async with qrscu.find(association, query, model="study") as results:
                async for _ in results:
                    break
            assert results.count == 1
            # Cancelled, or the peer had already sent everything: either way done.
            assert results.status in (CANCEL, SUCCESS), hex(results.status or 0)
            again = identifier("STUDY", StudyInstanceUID=study, PatientID=None)
            async with qrscu.find(association, again, model="study") as results2:
                second = [ds async for ds in results2]
            assert results2.status == SUCCESS
            assert {str(ds.StudyInstanceUID) for ds in second} == {study}


# --------------------------------------------------------------------------
# C-GET


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["study", "patient"])
async def test_get_study_to_disk(scp: QrScp, model: qrscu.Model, tmp_path: Path) -> None:
    """P1's second study: JPEG lossless Secondary Capture and implicit VR RT Plans."""
    archive = scp.archive
    study = archive.study_of("QR-P1", "20210610")
    expected = archive.in_study(study)
    contexts, roles = get_contexts_for(model, expected)
    keys: dict[str, object] = {"StudyInstanceUID": study}
    if model == "patient":
        keys["PatientID"] = "QR-P1"
    seen: list[tuple[int | None, int, int]] = []
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, contexts, roles) as association:
            progress = await qrscu.get(
                association,
                identifier("STUDY", **keys),
                DiskStorage(tmp_path),
                model=model,
                progress=lambda p: seen.append((p.status, p.completed, p.remaining)),
            )
    assert progress.status == SUCCESS, progress
    assert (progress.completed, progress.failed, progress.warning) == (len(expected), 0, 0)
    assert not progress.cancelled and not progress.failed_sop_instances
    assert seen and seen[-1][0] == SUCCESS, seen
    check_files(tmp_path, expected, paths=progress.paths)


@pytest.mark.anyio
async def test_get_series_to_memory(scp: QrScp) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P2", "20220315")
    series = archive.series_of(study, "jpeg")
    expected = archive.in_series(series)
    contexts, roles = get_contexts_for("study", expected)
    storage = MemoryStorage()
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, contexts, roles) as association:
            progress = await qrscu.get(
                association,
                identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series),
                storage,
            )
    assert progress.status == SUCCESS, progress
    assert (progress.completed, progress.failed) == (len(expected), 0)
    assert progress.paths == []
    check_datasets(storage.datasets, expected)


@pytest.mark.anyio
async def test_get_series_default_contexts(scp: QrScp, tmp_path: Path) -> None:
    """qrscu.get_contexts() as it comes, for an uncompressed series."""
    archive = scp.archive
    study = archive.study_of("QR-P2", "20230920")
    series = archive.series_of(study, "rtplan")
    expected = archive.in_series(series)
    contexts, roles = qrscu.get_contexts("study")
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, contexts, roles) as association:
            progress = await qrscu.get(
                association,
                identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=series),
                DiskStorage(tmp_path),
            )
    assert progress.status == SUCCESS, progress
    assert progress.completed == len(expected)
    check_files(tmp_path, expected, paths=progress.paths)


@pytest.mark.anyio
async def test_get_compressed_study_default_contexts(scp: QrScp, tmp_path: Path) -> None:
    """qrscu.get_contexts() as it comes, for a study holding JPEG lossless instances.

    The SCP holds the Secondary Captures in JPEG lossless and cannot
    decompress them, so it needs a context for Secondary Capture in that
    syntax. get_contexts() offers each storage class in one context listing
    every syntax; dcmqrscp picks JPEG lossless from it (its profile prefers
    it), but pynetdicom picks the first syntax of its own list, implicit VR
    little endian, and then has no context to send the JPEG instances on.
    """
    archive = scp.archive
    study = archive.study_of("QR-P1", "20210610")
    expected = archive.in_study(study)
    contexts, roles = qrscu.get_contexts("study")
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, contexts, roles) as association:
            progress = await qrscu.get(
                association, identifier("STUDY", StudyInstanceUID=study), DiskStorage(tmp_path)
            )
    assert (progress.status, progress.completed, progress.failed) == (
        SUCCESS,
        len(expected),
        0,
    ), progress
    check_files(tmp_path, expected, paths=progress.paths)


@pytest.mark.anyio
async def test_get_class_not_offered(scp: QrScp, tmp_path: Path) -> None:
    """Only Secondary Capture offered: the RT Plans fail, are listed, the rest arrive."""
    archive = scp.archive
    study = archive.study_of("QR-P1", "20210610")
    expected = [s for s in archive.in_study(study) if s.kind == "jpeg"]
    missing = [s for s in archive.in_study(study) if s.kind == "rtplan"]
    contexts, roles = get_contexts_for("study", expected)
    with anyio.fail_after(TEST_DEADLINE):
        async with associate(scp, contexts, roles) as association:
            progress = await qrscu.get(
                association, identifier("STUDY", StudyInstanceUID=study), DiskStorage(tmp_path)
            )
    # PS3.4 C.4.3.1.3.1: some sub-operations failed -> warning (or a failure status).
    assert progress.status is not None and progress.status != SUCCESS, progress
    assert (progress.completed, progress.failed) == (len(expected), len(missing)), progress
    assert sorted(progress.failed_sop_instances) == sorted(s.sop_instance_uid for s in missing)
    check_files(tmp_path, expected, paths=progress.paths)


# --------------------------------------------------------------------------
# C-MOVE


@contextlib.asynccontextmanager
async def move_destination(scp: QrScp, root: Path) -> AsyncIterator[adicom.Server]:
    """The AE the SCP knows as its move destination, storing into ``root``."""
    dest = scp.move_destination
    async with adicom.Server(dest.aet, host=HOST, port=dest.port, storage=DiskStorage(root)) as s:
        yield s


@pytest.mark.anyio
async def test_move_study(scp: QrScp, tmp_path: Path) -> None:
    """P2's first study (MR, JPEG lossless) to an adicom Server."""
    archive = scp.archive
    study = archive.study_of("QR-P2", "20220315")
    expected = archive.in_study(study)
    with anyio.fail_after(TEST_DEADLINE):
        async with move_destination(scp, tmp_path):
            async with associate(scp, query_contexts("study")) as association:
                progress = await qrscu.move(
                    association,
                    identifier("STUDY", StudyInstanceUID=study),
                    scp.move_destination.aet,
                )
    assert progress.status == SUCCESS, progress
    assert (progress.completed, progress.failed, progress.warning) == (len(expected), 0, 0)
    assert progress.paths == []
    check_files(tmp_path, expected)
    for path in stored_files(tmp_path):
        meta = data.read_header(path).file_meta
        assert str(meta.SourceApplicationEntityTitle).strip() == scp.aet


@pytest.mark.anyio
async def test_move_series_patient_root(scp: QrScp, tmp_path: Path) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P1", "20210610")
    series = archive.series_of(study, "rtplan")
    expected = archive.in_series(series)
    query = identifier(
        "SERIES", PatientID="QR-P1", StudyInstanceUID=study, SeriesInstanceUID=series
    )
    with anyio.fail_after(TEST_DEADLINE):
        async with move_destination(scp, tmp_path):
            async with associate(scp, query_contexts("patient")) as association:
                progress = await qrscu.move(
                    association, query, scp.move_destination.aet, model="patient"
                )
    assert progress.status == SUCCESS, progress
    assert progress.completed == len(expected)
    check_files(tmp_path, expected)


@pytest.mark.anyio
async def test_move_unknown_destination(scp: QrScp, tmp_path: Path) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P1", "20200105")
    with anyio.fail_after(TEST_DEADLINE):
        async with move_destination(scp, tmp_path):
            async with associate(scp, query_contexts("study")) as association:
                progress = await qrscu.move(
                    association, identifier("STUDY", StudyInstanceUID=study), "NOBODY-KNOWS"
                )
                # The association is still good for the next request.
                again = await qrscu.move(
                    association,
                    identifier("STUDY", StudyInstanceUID=study),
                    "NOBODY-KNOWS",
                )
    assert progress.status == UNKNOWN_DESTINATION, progress
    assert again.status == UNKNOWN_DESTINATION, again
    assert progress.completed == 0
    assert not stored_files(tmp_path)


# --------------------------------------------------------------------------
# Cancelling a C-GET midway


class SlowDisk(StorageHandler):
    """DiskStorage that takes ``delay`` seconds before storing each instance.

    Stands for a slow disk, so that a retrieve of the 40-instance series is
    surely still running when it is stopped.
    """

    def __init__(self, root: Path, delay: float) -> None:
        self.disk = DiskStorage(root)
        self.delay = delay

    def open(self, context: StoreContext) -> IncomingInstance:
        return _SlowInstance(context, self.disk.open(context), self.delay)


class _SlowInstance(IncomingInstance):
    def __init__(self, context: StoreContext, inner: IncomingInstance, delay: float) -> None:
        super().__init__(context)
        self.inner = inner
        self.delay = delay

    def write(self, data: memoryview, /) -> None:
        self.inner.write(data)

    def abort(self) -> None:
        self.inner.abort()

    async def finish(self) -> int:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.inner.abort()
            raise
        status = await self.inner.finish()
        self.path, self.error = self.inner.path, self.inner.error
        return status


MANY_DELAY = 0.1  # x 40 instances = 4 s for the whole series
MANY_TIMEOUT = 1.0
CANCEL_BOUND = 15.0  # from the stop to the end of the association


def many_series(archive: Archive) -> tuple[str, list[Seeded]]:
    """QR-MANY's study (one series) and its 40 instances."""
    study = archive.study_of("QR-MANY", "20190202")
    return study, archive.in_study(study)


def check_partial(root: Path, paths: Sequence[Path], archive: Archive, total: int) -> None:
    """What a stopped retrieve stored: some but not all, each whole and intact."""
    assert 1 <= len(paths) < total, f"{len(paths)} of {total} stored"
    by_uid = archive.by_uid()
    stored = data.index_by_instance_uid(paths)
    check_files(root, [by_uid[uid] for uid in stored], paths=paths)


async def check_scp_still_serves(scp: QrScp, study: str, total: int) -> None:
    """A new association to the SCP works after the stopped one."""
    series = scp.archive.series_of(study, "ct")
    query = identifier(
        "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=None
    )
    matches, status = await find_all(scp, query, "study")
    assert status == SUCCESS
    assert len({str(ds.SOPInstanceUID) for ds in matches}) == total


@pytest.mark.anyio
async def test_get_timeout_cancels_midway(scp: QrScp, tmp_path: Path) -> None:
    archive = scp.archive
    study, expected = many_series(archive)
    contexts, roles = get_contexts_for("study", expected)
    with anyio.fail_after(TEST_DEADLINE):
        started = time.monotonic()
        with pytest.raises(qrscu.RetrieveCancelled) as caught:
            async with associate(scp, contexts, roles) as association:
                await qrscu.get(
                    association,
                    identifier("STUDY", StudyInstanceUID=study),
                    SlowDisk(tmp_path, MANY_DELAY),
                    timeout=MANY_TIMEOUT,
                )
        elapsed = time.monotonic() - started
        stop = caught.value
        assert stop.why == "timeout"
        assert stop.progress.cancelled
        if stop.acknowledged:
            assert stop.progress.status == CANCEL, stop.progress
        assert elapsed < MANY_TIMEOUT + CANCEL_BOUND, elapsed
        check_partial(tmp_path, stop.progress.paths, archive, len(expected))
        assert stop.progress.completed <= len(stop.progress.paths), stop.progress
        await check_scp_still_serves(scp, study, len(expected))


@pytest.mark.anyio
async def test_get_task_cancelled_midway(scp: QrScp, tmp_path: Path) -> None:
    archive = scp.archive
    study, expected = many_series(archive)
    contexts, roles = get_contexts_for("study", expected)
    latest: list[qrscu.RetrieveProgress] = []
    task: asyncio.Task[qrscu.RetrieveProgress] | None = None

    def on_progress(progress: qrscu.RetrieveProgress) -> None:
        latest[:] = [progress]
        if progress.completed >= 1 and task is not None:
            task.cancel()

    async def retrieve() -> qrscu.RetrieveProgress:
        async with associate(scp, contexts, roles) as association:
            return await qrscu.get(
                association,
                identifier("STUDY", StudyInstanceUID=study),
                SlowDisk(tmp_path, MANY_DELAY),
                progress=on_progress,
            )

    with anyio.fail_after(TEST_DEADLINE):
        task = asyncio.get_running_loop().create_task(retrieve())
        await asyncio.wait([task], timeout=CANCEL_BOUND + len(expected) * MANY_DELAY)
        assert task.done(), "the cancelled retrieve did not end"
        assert task.cancelled(), task.result()  # CancelledError, not a result
        assert latest, "no progress was reported before the cancellation"
        progress = latest[0]
        assert progress.cancelled
        check_partial(tmp_path, progress.paths, archive, len(expected))
        await check_scp_still_serves(scp, study, len(expected))


# --------------------------------------------------------------------------
# adicom.DicomClient (one association per call) against the same SCPs


def client() -> adicom.DicomClient:
    return adicom.DicomClient(CALLING_AE, dimse_timeout=30.0, timeout=30.0)


def node(scp: QrScp) -> adicom.DicomNode:
    return adicom.DicomNode(aet=scp.aet, host=HOST, port=scp.port)


def distinct(scp: QrScp, keys: Sequence[str]) -> set[str]:
    """The keys of a result list; dcmqrscp must not repeat one (see :func:`unique`)."""
    if scp.kind == "dcmtk":
        assert len(set(keys)) == len(keys), f"repeated: {sorted(keys)}"
    return set(keys)


@pytest.mark.anyio
async def test_client_find_patients(scp: QrScp) -> None:
    with anyio.fail_after(TEST_DEADLINE):
        results = await client().find_patients(adicom.PatientQuery(), node(scp))
    assert all(isinstance(r, adicom.PatientResult) for r in results)
    distinct(scp, [r.patient_id for r in results])
    assert {r.patient_id: r.patient_name for r in results} == scp.archive.patients()
    for r in results:
        if r.number_of_patient_related_studies is not None:
            assert r.number_of_patient_related_studies == len(scp.archive.studies(r.patient_id))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "studies"),
    [
        (adicom.StudyQuery(patient_id="QR-P1"), [("QR-P1", "20200105"), ("QR-P1", "20210610")]),
        (
            adicom.StudyQuery(study_date="20210101-20221231"),
            [("QR-P1", "20210610"), ("QR-P2", "20220315")],
        ),
        (adicom.StudyQuery(patient_name="Be*"), [("QR-P2", "20220315"), ("QR-P2", "20230920")]),
    ],
    ids=["patient-id", "date-range", "name-wildcard"],
)
async def test_client_find_studies(
    scp: QrScp, query: adicom.StudyQuery, studies: list[tuple[str, str]]
) -> None:
    archive = scp.archive
    with anyio.fail_after(TEST_DEADLINE):
        results = await client().find_studies(query, node(scp))
    found = distinct(scp, [r.study_instance_uid for r in results])
    assert found == {archive.study_of(pid, date) for pid, date in studies}
    for r in results:
        assert isinstance(r, adicom.StudyResult)
        seeded = archive.first(study_instance_uid=r.study_instance_uid)
        assert (r.patient_id, r.patient_name, r.study_date, r.accession_number) == (
            seeded.patient_id,
            seeded.patient_name,
            seeded.study_date,
            seeded.accession_number,
        )
        if r.number_of_study_related_series is not None:
            assert r.number_of_study_related_series == len(archive.series(r.study_instance_uid))
        if r.number_of_study_related_instances is not None:
            n = len(archive.in_study(r.study_instance_uid))
            assert r.number_of_study_related_instances == n


@pytest.mark.anyio
async def test_client_find_series_and_images(scp: QrScp) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P1", "20200105")
    with anyio.fail_after(TEST_DEADLINE):
        series = await client().find_series(adicom.SeriesQuery(study_instance_uid=study), node(scp))
        assert distinct(scp, [r.series_instance_uid for r in series]) == archive.series(study)
        for r in series:
            seeded = archive.first(series_instance_uid=r.series_instance_uid)
            assert (r.modality, r.series_number) == (seeded.modality, seeded.series_number)
            images = await client().find_images(
                adicom.ImageQuery(
                    study_instance_uid=study, series_instance_uid=r.series_instance_uid
                ),
                node(scp),
            )
            expected = {s.sop_instance_uid: s for s in archive.in_series(r.series_instance_uid)}
            assert len(images) == len(expected)
            assert {i.sop_instance_uid for i in images} == set(expected)
            for image in images:
                assert image.instance_number == expected[image.sop_instance_uid].instance_number


@pytest.mark.anyio
async def test_client_get_study_and_series_to_disk(scp: QrScp, tmp_path: Path) -> None:
    """P2's second study (CT, RT Plan), then P1's MR series, into two folders."""
    archive = scp.archive
    study = archive.study_of("QR-P2", "20230920")
    other = archive.study_of("QR-P1", "20200105")
    series = archive.series_of(other, "mr")
    with anyio.fail_after(TEST_DEADLINE):
        result = await client().get_study(study, node(scp), tmp_path / "study")
        result2 = await client().get_series(other, series, node(scp), tmp_path / "series")
    expected = archive.in_study(study)
    assert (result.status, result.num_completed, result.num_failed) == (
        "success",
        len(expected),
        0,
    ), result
    check_files(tmp_path / "study", expected, paths=result.paths)
    expected2 = archive.in_series(series)
    assert (result2.status, result2.num_completed) == ("success", len(expected2)), result2
    check_files(tmp_path / "series", expected2, paths=result2.paths)


@pytest.mark.anyio
async def test_client_get_study_to_memory(scp: QrScp) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P2", "20230920")
    expected = archive.in_study(study)
    with anyio.fail_after(TEST_DEADLINE):
        result = await client().get_study_to_memory(study, node(scp))
    assert (result.status, result.num_completed, result.num_failed) == (
        "success",
        len(expected),
        0,
    ), result
    assert result.paths == []
    check_datasets(result.instances, expected)


@pytest.mark.anyio
async def test_client_move_study_and_series(scp: QrScp, tmp_path: Path) -> None:
    archive = scp.archive
    study = archive.study_of("QR-P1", "20200105")
    other = archive.study_of("QR-P2", "20220315")
    series = archive.series_of(other, "jpeg")
    dest = scp.move_destination.aet
    with anyio.fail_after(TEST_DEADLINE):
        async with move_destination(scp, tmp_path):
            result = await client().move_study(study, node(scp), dest)
            result2 = await client().move_series(other, series, node(scp), dest)
    expected = archive.in_study(study) + archive.in_series(series)
    assert (result.status, result.num_completed, result.num_failed) == (
        "success",
        len(archive.in_study(study)),
        0,
    ), result
    assert (result2.status, result2.num_completed) == ("success", 3), result2
    check_files(tmp_path, expected)


@pytest.mark.anyio
async def test_client_move_unknown_destination(scp: QrScp) -> None:
    study = scp.archive.study_of("QR-P1", "20200105")
    with anyio.fail_after(TEST_DEADLINE):
        result = await client().move_study(study, node(scp), "NOBODY-KNOWS")
    assert result.status == f"failure_0x{UNKNOWN_DESTINATION:04X}", result
    assert result.num_completed == 0
