"""Query/retrieve between adicom's SCU (qrscu) and SCP (Server handlers), in process."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

import adicom
from adicom import qrscu
from adicom.dimse import CommandField
from adicom.operation import Operation
from adicom.qrscp import QRContext, QueryFailed

pytestmark = pytest.mark.anyio


def make_instances(count: int) -> list[Dataset]:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    study = generate_uid()
    out: list[Dataset] = []
    for index in range(count):
        dataset = copy.deepcopy(template)
        dataset.StudyInstanceUID = study
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = index + 1
        out.append(dataset)
    return out


class Archive:
    """Handlers over a list of datasets, with knobs for the bad cases."""

    def __init__(self, instances: list[Dataset]) -> None:
        self.instances = instances
        self.delay = 0.0
        self.find_calls: list[QRContext] = []
        self.closed = 0

    def matching(self, identifier: Dataset) -> list[Dataset]:
        wanted = identifier.get("StudyInstanceUID", "")
        return [d for d in self.instances if not wanted or d.StudyInstanceUID == wanted]

    async def find(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        self.find_calls.append(context)
        if identifier.get("QueryRetrieveLevel") not in ("STUDY", "SERIES", "IMAGE"):
            raise QueryFailed(0xA900, "unsupported level")
        try:
            for dataset in self.matching(identifier):
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = Dataset()
                answer.QueryRetrieveLevel = identifier.QueryRetrieveLevel
                answer.StudyInstanceUID = dataset.StudyInstanceUID
                answer.SOPInstanceUID = dataset.SOPInstanceUID
                yield answer
        finally:
            self.closed += 1

    async def retrieve(self, identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        matches = self.matching(identifier)
        yield len(matches)
        for dataset in matches:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield dataset


@contextlib.asynccontextmanager
async def qr_server(archive: Archive, **options: Any) -> AsyncIterator[adicom.Server]:
    async with adicom.Server(
        "QR",
        port=0,
        on_find=archive.find,
        on_get=archive.retrieve,
        on_move=archive.retrieve,
        **options,
    ) as server:
        yield server


def study_identifier(study_uid: str = "", level: str = "STUDY") -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = study_uid
    identifier.SOPInstanceUID = ""
    return identifier


async def test_find_streams_every_match() -> None:
    archive = Archive(make_instances(25))
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            async with qrscu.find(assoc, study_identifier(level="IMAGE")) as results:
                found = [d.SOPInstanceUID async for d in results]
            assert results.status == 0x0000 and results.count == 25
    assert found == [d.SOPInstanceUID for d in archive.instances]
    assert archive.find_calls[0].calling_ae == "ADICOM"


async def test_find_failure_status_raises_and_association_goes_on() -> None:
    archive = Archive(make_instances(2))
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            with pytest.raises(adicom.DimseError) as info:
                async for _ in qrscu.find(assoc, study_identifier(level="PATIENTS")):
                    pass
            assert info.value.status == 0xA900 and "unsupported level" in str(info.value)
            async with qrscu.find(assoc, study_identifier()) as results:
                assert len([d async for d in results]) == 2


async def test_a_failure_after_matches_raises_with_the_matches_counted() -> None:
    # The final response after pending ones ends the loop with its status
    # (PS3.4 C.4.1.3.1): a failure raises, the matches before it were given.
    async def fails_midway(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        for n in range(3):
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            answer.SOPInstanceUID = f"1.2.3.{n}"
            yield answer
        raise QueryFailed(0xC001, "the index went away")

    async with adicom.Server("QR", port=0, on_find=fails_midway) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            found: list[str] = []
            results = qrscu.find(assoc, study_identifier(level="IMAGE"))
            with pytest.raises(adicom.DimseError) as info:
                async for match in results:
                    found.append(match.SOPInstanceUID)
            assert info.value.status == 0xC001 and "the index went away" in str(info.value)
            assert found == ["1.2.3.0", "1.2.3.1", "1.2.3.2"] and results.count == 3
            assert results.status == 0xC001 and assoc.is_established


async def test_leaving_a_find_early_cancels_it() -> None:
    archive = Archive(make_instances(50))
    archive.delay = 0.01
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            async with qrscu.find(assoc, study_identifier()) as results:
                async for _ in results:
                    if results.count == 3:
                        break
            assert results.status == 0xFE00  # the SCP answered Cancel
            assert results.count < 50
            # The association is still good for another query.
            archive.delay = 0
            async with qrscu.find(assoc, study_identifier()) as again:
                assert len([d async for d in again]) == 50
    assert archive.closed == 2  # the SCP closed the cancelled handler too


async def test_get_to_disk_and_memory_with_progress(tmp_path: pathlib.Path) -> None:
    archive = Archive(make_instances(12))
    contexts, roles = qrscu.get_contexts()
    seen: list[tuple[int, int]] = []
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=contexts, roles=roles
        ) as assoc:
            disk = adicom.DiskStorage(tmp_path)
            result = await qrscu.get(
                assoc,
                study_identifier(archive.instances[0].StudyInstanceUID),
                disk,
                progress=lambda p: seen.append((p.remaining, p.completed)),
            )
            memory = adicom.MemoryStorage()
            in_memory = await qrscu.get(assoc, study_identifier(), memory)
    assert result.status == 0x0000 and result.completed == 12 and result.failed == 0
    assert len(result.paths) == 12 and all(p.is_file() for p in result.paths)
    assert list((tmp_path / ".incoming").iterdir()) == []  # nothing half-written
    assert seen[0] == (11, 1) and seen[-1][1] == 12
    for path, sent in zip(sorted(result.paths), sorted(archive.instances, key=_uid), strict=True):
        assert pydicom.dcmread(path).PixelData == sent.PixelData
    assert in_memory.completed == 12
    assert sorted(d.SOPInstanceUID for d in memory.datasets) == sorted(map(_uid, archive.instances))


def _uid(dataset: Dataset) -> str:
    return str(dataset.SOPInstanceUID)


async def test_get_without_the_storage_context_reports_failed_instances() -> None:
    archive = Archive(make_instances(3))
    # Ask for MR only: the CT instances have no context with the SCP role.
    contexts, roles = qrscu.get_contexts(sop_classes=["1.2.840.10008.5.1.4.1.1.4"])
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=contexts, roles=roles
        ) as assoc:
            result = await qrscu.get(assoc, study_identifier(), adicom.MemoryStorage())
    assert (result.completed, result.failed) == (0, 3)
    assert result.status == 0xA702
    assert sorted(result.failed_sop_instances) == sorted(map(_uid, archive.instances))


async def test_get_timeout_cancels_and_keeps_what_arrived(tmp_path: pathlib.Path) -> None:
    archive = Archive(make_instances(40))
    archive.delay = 0.02
    contexts, roles = qrscu.get_contexts()
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=contexts, roles=roles
        ) as assoc:
            with pytest.raises(qrscu.RetrieveCancelled) as info:
                await qrscu.get(
                    assoc, study_identifier(), adicom.DiskStorage(tmp_path), timeout=0.3
                )
            assert info.value.acknowledged and info.value.why == "timeout"
            stopped = info.value.progress
            assert 0 < stopped.completed < 40 and stopped.status == 0xFE00
            assert stopped.paths and all(p.is_file() for p in stopped.paths)
            assert await_count_files(tmp_path) == len(stopped.paths)
            # The association goes on.
            archive.delay = 0
            again = await qrscu.get(assoc, study_identifier(), adicom.MemoryStorage())
            assert again.completed == 40


def await_count_files(root: pathlib.Path) -> int:
    return len([p for p in root.rglob("*.dcm") if ".incoming" not in p.parts])


async def test_cancelling_the_task_sends_c_cancel() -> None:
    archive = Archive(make_instances(40))
    archive.delay = 0.02
    contexts, roles = qrscu.get_contexts()
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=contexts, roles=roles
        ) as assoc:
            under_way = asyncio.Event()

            def progress(state: qrscu.RetrieveProgress) -> None:
                if state.completed >= 3:
                    under_way.set()

            task = asyncio.get_running_loop().create_task(
                qrscu.get(assoc, study_identifier(), adicom.MemoryStorage(), progress=progress)
            )
            async with asyncio.timeout(10):
                await under_way.wait()  # cancelled mid-retrieve, not before or after it
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert assoc.is_established and assoc.outstanding == 0
            archive.delay = 0
            assert (
                await qrscu.get(assoc, study_identifier(), adicom.MemoryStorage())
            ).completed == 40


async def test_move_to_a_known_destination_and_to_an_unknown_one() -> None:
    archive = Archive(make_instances(5))
    received = adicom.MemoryStorage()
    async with adicom.Server("DEST", port=0, storage=received) as destination:
        destinations = {"DEST": ("127.0.0.1", destination.port)}
        async with qr_server(archive, move_destinations=destinations) as server:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.move_contexts()
            ) as assoc:
                result = await qrscu.move(assoc, study_identifier(), "DEST")
                unknown = await qrscu.move(assoc, study_identifier(), "NOBODY")
    assert result.status == 0 and result.completed == 5
    assert sorted(d.SOPInstanceUID for d in received.datasets) == sorted(
        map(_uid, archive.instances)
    )
    assert unknown.status == 0xA801 and unknown.completed == 0


async def test_a_retrieve_without_progress_wakes_only_for_its_final_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a progress callback the pending responses are counted in the
    # transport callback: the retrieve's task waits once, for the final one.
    archive = Archive(make_instances(6))
    woken: list[int | None] = []
    original = Operation.next_response

    async def counted(self: Operation, timeout: float | None = None) -> Any:
        reply = await original(self, timeout)
        if self.command_field == CommandField.C_MOVE_RQ:  # not the sub-operations'
            woken.append(reply.command.status)
        return reply

    monkeypatch.setattr(Operation, "next_response", counted)
    received = adicom.MemoryStorage()
    async with adicom.Server("DEST", port=0, storage=received) as destination:
        destinations = {"DEST": ("127.0.0.1", destination.port)}
        async with qr_server(archive, move_destinations=destinations) as server:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.move_contexts()
            ) as assoc:
                quiet = await qrscu.move(assoc, study_identifier(), "DEST")
                assert woken == [0x0000]
                woken.clear()
                seen: list[int] = []
                watched = await qrscu.move(
                    assoc, study_identifier(), "DEST", progress=lambda p: seen.append(p.completed)
                )
    assert (quiet.status, quiet.completed, quiet.remaining) == (0, 6, 0)
    assert (watched.status, watched.completed) == (0, 6)
    # With a callback, the task takes each response: pending ones, then the final.
    assert len(woken) == len(seen) > 1 and woken[-1] == 0 and set(woken[:-1]) == {0xFF00}
    assert seen[-1] == 6


@pytest.mark.parametrize(("gap", "timeout", "count"), [(0.1, 1.0, 20), (0.8, 0.4, 8)])
async def test_each_pending_response_restarts_the_dimse_timeout(
    gap: float, timeout: float, count: int
) -> None:
    # PS3.7 9.1.2.1: the DIMSE timeout bounds the wait for each response, so
    # a retrieve longer than it goes on while pending responses keep coming
    # (counted in the transport callback), and a gap longer than it ends it.
    # The gaps under the timeout keep a tenfold margin: a loaded machine
    # stretches each one.
    archive = Archive(make_instances(count))

    async def slow(_dataset: Dataset, _context: Any) -> None:
        await asyncio.sleep(gap)  # a pending C-MOVE-RSP per instance stored

    async with adicom.Server("DEST", port=0, storage=adicom.CallbackStorage(slow)) as destination:
        destinations = {"DEST": ("127.0.0.1", destination.port)}
        async with qr_server(archive, move_destinations=destinations) as server:
            async with adicom.connect(
                "127.0.0.1",
                server.port,
                called_ae="QR",
                contexts=qrscu.move_contexts(),
                timeout=timeout,
            ) as assoc:
                loop = asyncio.get_running_loop()
                started = loop.time()
                if gap < timeout:
                    result = await qrscu.move(assoc, study_identifier(), "DEST")
                    assert (result.status, result.completed) == (0, count)
                    assert loop.time() - started > timeout * 1.5  # longer than one DIMSE timeout
                else:
                    # The DIMSE timeout aborts the association: the C-CANCEL
                    # then goes nowhere, and the retrieve reports it unanswered.
                    with pytest.raises(qrscu.RetrieveCancelled) as info:
                        await qrscu.move(assoc, study_identifier(), "DEST")
                    assert not info.value.acknowledged
                    assert loop.time() - started < 3
                    assert not assoc.is_established


async def test_move_to_an_unreachable_destination_counts_failures() -> None:
    archive = Archive(make_instances(3))
    async with adicom.Server("GONE", port=0) as gone:
        port = gone.port
    async with qr_server(archive, move_destinations={"GONE": ("127.0.0.1", port)}) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.move_contexts()
        ) as assoc:
            result = await qrscu.move(assoc, study_identifier(), "GONE")
    assert (result.completed, result.failed, result.status) == (0, 3, 0xA702)
    assert sorted(result.failed_sop_instances) == sorted(map(_uid, archive.instances))


async def test_release_cancels_an_operation_left_open() -> None:
    archive = Archive(make_instances(30))
    archive.delay = 0.01
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            results = qrscu.find(assoc, study_identifier())
            await results.__anext__()  # one match, then walk away without closing
        assert assoc.state.name == "STA1"
        assert server.stats["released"] == 1


async def test_a_handler_stuck_in_an_await_is_stopped_by_c_cancel() -> None:
    """The server cancels a handler awaiting something that never comes; answer: Cancel."""
    stopped = asyncio.Event()

    async def stuck(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        first = Dataset()
        first.QueryRetrieveLevel = "STUDY"
        first.StudyInstanceUID = "1.2.3"
        yield first
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()
        yield first

    async with adicom.Server("QR", port=0, on_find=stuck) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            results = qrscu.find(assoc, study_identifier())
            assert (await results.__anext__()).StudyInstanceUID == "1.2.3"
            final = await results._operation.cancel(wait=2)  # type: ignore[union-attr]
            assert final is not None and final.command.status == 0xFE00
            assert stopped.is_set()
            # The association goes on, and the same handler answers again.
            async with qrscu.find(assoc, study_identifier()) as again:
                assert (await again.__anext__()).StudyInstanceUID == "1.2.3"


async def test_a_get_handler_stuck_between_instances_is_stopped_by_c_cancel(
    tmp_path: pathlib.Path,
) -> None:
    instances = make_instances(3)

    async def slow(identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        yield len(instances)
        yield instances[0]
        await asyncio.sleep(3600)  # e.g. fetching the next one from slow storage
        yield instances[1]

    contexts, roles = qrscu.get_contexts()
    async with adicom.Server("QR", port=0, on_get=slow) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=contexts, roles=roles
        ) as assoc:
            with pytest.raises(qrscu.RetrieveCancelled) as info:
                await qrscu.get(assoc, study_identifier(), adicom.DiskStorage(tmp_path),
                                timeout=0.5)  # fmt: skip
            assert info.value.acknowledged
            progress = info.value.progress
            assert progress.status == 0xFE00 and progress.completed == 1
            assert len(progress.paths) == 1 and progress.paths[0].is_file()
            assert assoc.is_established  # and the release below goes through


async def test_a_peer_that_ignores_c_cancel_is_aborted() -> None:
    async def stuck(identifier: Dataset, context: QRContext) -> AsyncIterator[Dataset]:
        first = Dataset()
        first.QueryRetrieveLevel = "STUDY"
        first.StudyInstanceUID = "1.2.3"
        yield first
        ignored = 0
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # Deaf to C-CANCEL (the first cancellation), not to the end
                # of the association (the second).
                ignored += 1
                if ignored > 1:
                    raise

    async with adicom.Server("QR", port=0, on_find=stuck) as server:
        assoc = await adicom.open_association(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        )
        results = qrscu.find(assoc, study_identifier())
        assert (await results.__anext__()).StudyInstanceUID == "1.2.3"
        loop = asyncio.get_running_loop()
        started = loop.time()
        final = await results._operation.cancel(wait=0.5)  # type: ignore[union-attr]
        assert final is None  # no answer: the association was aborted
        assert loop.time() - started < 2
        await assoc.wait_closed(5)
        assert assoc.state.name == "STA1"
        with pytest.raises(adicom.AssociationAborted):
            async for _ in qrscu.find(assoc, study_identifier()):
                pass
        # The server cancelled the stuck handler and serves the next caller.
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as again:
            assert again.is_established


@pytest.mark.parametrize("window", [1, 16])
async def test_get_pending_counts_add_up_with_a_failure_among_them(
    window: int, caplog: pytest.LogCaptureFixture
) -> None:
    # The next C-STORE-RQ leaves before the last one's result is reported
    # (storescu.send_instances): every pending C-GET-RSP must still carry
    # counts that add up, in order, whatever the window.
    instances = make_instances(9)
    mr = copy.deepcopy(instances[4])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    instances[4] = mr  # no context with the SCP role for MR: fails, is listed
    archive = Archive(instances)
    contexts, roles = qrscu.get_contexts(sop_classes=["1.2.840.10008.5.1.4.1.1.2"])
    seen: list[tuple[int, int, int, int]] = []
    async with qr_server(archive) as server:
        async with adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="QR",
            contexts=contexts,
            roles=roles,
            async_window=window,
        ) as assoc:
            memory = adicom.MemoryStorage()
            result = await qrscu.get(
                assoc,
                study_identifier(),
                memory,
                progress=lambda p: seen.append((p.remaining, p.completed, p.failed, p.warning)),
            )
    assert (result.status, result.completed, result.failed) == (0xB000, 8, 1)
    assert result.failed_sop_instances == [mr.SOPInstanceUID]
    pending, final = seen[:-1], seen[-1]  # progress follows the final response too
    assert len(pending) == 9
    assert all(sum(counts) == 9 for counts in pending)
    assert [remaining for remaining, *_ in pending] == list(range(8, -1, -1))
    assert pending[-1] == (0, 8, 1, 0) and final[1:] == (8, 1, 0)
    # The requestor gets counts and UIDs; the server's log says why.
    [line] = [r.getMessage() for r in caplog.records if "sub-operations failed" in r.getMessage()]
    assert "C-GET-RQ from" in line and "1 of 9 sub-operations failed" in line
    assert "no presentation context for MR Image Storage" in line, line
    assert sorted(d.SOPInstanceUID for d in memory.datasets) == sorted(
        _uid(d) for d in instances if d is not mr
    )


async def test_a_cancelled_move_counts_every_instance_the_destination_got() -> None:
    # The destination takes 20 ms an instance and 16 C-STOREs at once: when
    # the C-CANCEL comes, several are in flight. They are awaited and
    # counted; nothing more is sent; the counts match the destination.
    archive = Archive(make_instances(60))
    received: list[str] = []

    async def slow(dataset: Dataset, _context: Any) -> None:
        received.append(str(dataset.SOPInstanceUID))  # it has arrived whole
        await asyncio.sleep(0.02)

    async with adicom.Server("DEST", port=0, storage=adicom.CallbackStorage(slow)) as destination:
        destinations = {"DEST": ("127.0.0.1", destination.port)}
        async with qr_server(archive, move_destinations=destinations) as server:
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.move_contexts()
            ) as assoc:
                with pytest.raises(qrscu.RetrieveCancelled) as info:
                    await qrscu.move(assoc, study_identifier(), "DEST", timeout=0.3)
    stopped = info.value.progress
    assert info.value.acknowledged and stopped.status == 0xFE00
    assert 0 < len(received) < 60
    assert stopped.completed == len(received)


async def test_a_match_cut_short_is_the_peers_error_not_a_shorter_match() -> None:
    async def cut_short(identifier: Dataset, context: QRContext) -> AsyncIterator[bytes]:
        assert context.transfer_syntax == "1.2.840.10008.1.2.1"
        yield b"\x08\x00\x18\x00UI\x06\x001.2.3\x00"  # a whole match first
        yield b"\x08\x00\x18\x00UI\x10\x001.2.3\x00"  # 16 bytes said, 6 there

    async with adicom.Server("QR", port=0, on_find=cut_short) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            found: list[str] = []
            with pytest.raises(adicom.DimseError, match=r"match 2: .* ends inside"):
                async with qrscu.find(assoc, study_identifier()) as results:
                    async for match in results:
                        found.append(match.SOPInstanceUID)
            assert found == ["1.2.3"]


async def test_an_identifier_that_does_not_decode_is_the_peers_error() -> None:
    async def garbage(identifier: Dataset, context: QRContext) -> AsyncIterator[bytes]:
        # A sequence claiming more bytes than the identifier holds.
        assert context.transfer_syntax == "1.2.840.10008.1.2.1"
        yield b"\x10\x00\x10\x00SQ\x00\x00\x10\x00\x00\x00\x01\x02"

    async with adicom.Server("QR", port=0, on_find=garbage) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="QR", contexts=qrscu.find_contexts()
        ) as assoc:
            with pytest.raises(adicom.DimseError, match="match 1: the identifier does not decode"):
                async with qrscu.find(assoc, study_identifier()) as results:
                    async for _ in results:
                        pass
            # The association goes on.
            async with qrscu.find(assoc, study_identifier()) as results:
                with pytest.raises(adicom.DimseError):
                    await anext(results)
