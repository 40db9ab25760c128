"""Batches: store_many, get_studies, move_studies (spread, bounded, cancel-safe)."""

from __future__ import annotations

import asyncio
import copy
import pathlib
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.archive import Archive
from adicom.models import DicomNode
from adicom.storescu import StoreResult

pytestmark = pytest.mark.anyio


def node(server: adicom.Server) -> DicomNode:
    return DicomNode(aet=server.ae_title, host="127.0.0.1", port=server.port)


def instances(count: int, studies: int = 1) -> Iterator[Dataset]:
    """Small CT instances made one at a time, as a long batch would be read."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    for number in range(count):
        dataset = copy.deepcopy(template)  # Dataset.copy() shares the elements
        dataset.StudyInstanceUID = study_uids[number % studies]
        dataset.SeriesInstanceUID = series_uids[number % studies]
        dataset.SOPInstanceUID = generate_uid()
        yield dataset


async def test_store_many_spreads_reads_lazily_and_counts() -> None:
    storage = adicom.MemoryStorage()
    produced = 0
    produced_at_first_result: list[int] = []

    def counted() -> Iterator[Dataset]:
        nonlocal produced
        for dataset in instances(120):
            produced += 1
            yield dataset

    def progress(result: StoreResult) -> None:
        if not produced_at_first_result:
            produced_at_first_result.append(produced)

    async with adicom.Server("BATCH", port=0, storage=storage) as server:
        client = adicom.DicomClient("SCU")
        batch = await adicom.batch.store_many(
            client, counted(), node(server), concurrency=3, progress=progress, chunk=20
        )
        assert server.stats["accepted"] == 6  # a chunk each
    assert batch.ok and batch.sent == 120 and batch.failures == []
    assert len({d.SOPInstanceUID for d in storage.datasets}) == 120
    # Read as the associations took them, never the whole batch up front.
    assert produced_at_first_result[0] < 120


async def test_store_many_reads_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("adicom.batch.CHUNK", 10)
    storage = adicom.MemoryStorage()
    produced = 0
    high_water = 0

    def counted() -> Iterator[Dataset]:
        nonlocal produced
        for dataset in instances(100):
            produced += 1
            yield dataset

    def progress(result: StoreResult) -> None:
        nonlocal high_water
        high_water = max(high_water, produced - len(storage.datasets))

    async with adicom.Server("BATCH", port=0, storage=storage) as server:
        client = adicom.DicomClient("SCU")
        batch = await adicom.batch.store_many(
            client, counted(), node(server), concurrency=2, progress=progress, chunk=10
        )
    assert batch.sent == 100
    assert high_water <= 2 * 10 + 10  # what is read and not yet stored: about two chunks


async def test_a_cancelled_store_batch_reports_only_what_was_stored() -> None:
    storage = adicom.MemoryStorage()
    reported: list[StoreResult] = []
    enough = asyncio.Event()

    def progress(result: StoreResult) -> None:
        reported.append(result)
        if len(reported) >= 40:
            enough.set()

    async with adicom.Server("BATCH", port=0, storage=storage) as server:
        client = adicom.DicomClient("SCU")
        task = asyncio.get_running_loop().create_task(
            adicom.batch.store_many(
                client, instances(5000), node(server), concurrency=2, progress=progress, chunk=50
            )
        )
        async with asyncio.timeout(30):
            await enough.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            await server.wait_idle()
    stored = {str(d.SOPInstanceUID) for d in storage.datasets}
    sent = {r.sop_instance_uid for r in reported if r.ok}
    assert sent <= stored  # each reported success is at the SCP
    assert len(stored) < 5000  # it stopped


async def test_get_and_move_many_studies(tmp_path: pathlib.Path) -> None:
    archive = Archive(tmp_path / "archive")
    await archive.open()
    received = adicom.MemoryStorage()
    try:
        async with adicom.Server("DEST", port=0, storage=received) as destination:
            handlers = archive.handlers({"DEST": ("127.0.0.1", destination.port)})
            async with adicom.Server("ARCHIVE", port=0, **handlers) as server:
                client = adicom.DicomClient("SCU")
                batch = await client.store_many(instances(12, studies=3), node(server))
                assert batch.sent == 12
                studies = sorted({str(d.StudyInstanceUID) for d in archive_datasets(archive)})
                assert len(studies) == 3
                done: list[str] = []
                got = await client.get_studies(
                    studies,
                    node(server),
                    tmp_path / "out",
                    concurrency=2,
                    progress=lambda uid, result: done.append(uid),
                )
                assert got.ok and got.num_completed == 12 and sorted(done) == studies
                assert len(list((tmp_path / "out").rglob("*.dcm"))) == 12
                moved = await client.move_studies(studies, node(server), "DEST", concurrency=3)
                assert moved.ok and moved.num_completed == 12
                assert len(received.datasets) == 12
                unreachable = DicomNode(aet="NONE", host="127.0.0.1", port=1)
                failed = await client.move_studies(studies[:1], unreachable, "DEST")
                assert not failed.ok and studies[0] in failed.errors
    finally:
        archive.close()


def archive_datasets(archive: Archive) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in archive.root.rglob("*.dcm") if ".mpps" not in p.parts]


async def test_bad_concurrency_is_refused() -> None:
    client = adicom.DicomClient("SCU")
    peer = DicomNode(aet="X", host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="concurrency"):
        await client.store_many([], peer, concurrency=0)
    with pytest.raises(ValueError, match="concurrency"):
        await client.get_studies([], peer, "/tmp/x", concurrency=0)


async def test_a_cancelled_retrieve_releases_its_association(tmp_path: pathlib.Path) -> None:
    """Ctrl-C during a get: C-CANCEL on the wire, then A-RELEASE, not A-ABORT (issue 16)."""
    archive = Archive(tmp_path / "archive")
    await archive.open()
    try:
        handlers = archive.handlers()
        retrieve = handlers["on_get"]

        async def slowly(identifier: Dataset, context: adicom.QRContext):  # type: ignore[no-untyped-def]
            async for item in retrieve(identifier, context):
                yield item
                await asyncio.sleep(0.2)

        handlers["on_get"] = slowly
        async with adicom.Server("SLOW", port=0, **handlers) as server:
            client = adicom.DicomClient("SCU")
            await client.store_many(instances(10), node(server))
            study = next(iter({str(p.parent.parent.name) for p in archive.root.rglob("*.dcm")}))
            task = asyncio.get_running_loop().create_task(
                client.get_study_to_memory(study, node(server))
            )
            async with asyncio.timeout(30):
                while not task.done() and server.stats["accepted"] < 3:
                    await asyncio.sleep(0.05)  # the survey's association, then the C-GET's
                await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with asyncio.timeout(10):
                await server.wait_idle()
            assert server.stats["aborted"] == 0
            assert server.stats["released"] == server.stats["accepted"]
    finally:
        archive.close()
