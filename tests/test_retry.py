"""Retries: the policy, which failures are retried, and DicomClient against peers that fail."""

from __future__ import annotations

import asyncio
import pathlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

import adicom
from adicom.archive import Archive
from adicom.errors import (
    AssociationAborted,
    AssociationRejected,
    DicomTimeout,
    DimseError,
    PeerUnreachable,
    TimeoutKind,
)
from adicom.models import DicomNode
from adicom.qrscp import QRContext
from adicom.retry import NO_RETRY, RetryPolicy, retry_reason
from adicom.settings import DicomSettings
from tests.test_cli import free_port

FAST = RetryPolicy(attempts=4, backoff=0.05, max_delay=0.2, deadline=20)


def test_the_waits_grow_and_stay_within_bounds() -> None:
    policy = RetryPolicy(attempts=6, backoff=1.0, multiplier=2.0, max_delay=5.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, base in ((2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (6, 5.0)):
        for _ in range(50):
            assert base * 0.5 <= policy.delay(attempt, rng) <= base
    assert RetryPolicy(jitter=0).delay(2) == 0.5
    for bad in (
        {"attempts": 0},
        {"jitter": 1.5},
        {"multiplier": 0.5},
        {"deadline": 0},
        {"backoff": -1},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_only_failures_worth_it_are_retried() -> None:
    assert retry_reason(PeerUnreachable("refused")) == "the peer was unreachable"
    assert retry_reason(AssociationRejected(2, 3, 2)) is not None  # transient: busy
    assert retry_reason(AssociationRejected(1, 1, 7)) is None  # permanent: called AE
    assert retry_reason(AssociationAborted(2, 0)) is not None
    timeout = DicomTimeout(TimeoutKind.DIMSE, 1.0)
    assert retry_reason(timeout) is not None
    assert retry_reason(timeout, idempotent=False) is None
    assert retry_reason(timeout, timeouts=False) is None
    assert retry_reason(DimseError(0xA700, "out of resources")) is None  # the peer's answer
    assert retry_reason(ValueError("bad")) is None


def test_settings_make_a_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADICOM_RETRY_ATTEMPTS", "5")
    monkeypatch.setenv("ADICOM_RETRY_BACKOFF", "0.25")
    policy = DicomSettings().retry_policy()
    assert (policy.attempts, policy.backoff) == (5, 0.25)
    assert adicom.DicomClient.from_settings().retry.attempts == 5
    monkeypatch.setenv("ADICOM_RETRY_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="retry_attempts"):
        DicomSettings()


@pytest.mark.anyio
async def test_a_peer_that_comes_up_late_is_reached(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    peer = DicomNode(aet="LATE", host="127.0.0.1", port=port)
    with pytest.raises(PeerUnreachable):
        await adicom.DicomClient("SCU", connect_timeout=1).echo(peer)  # no retry by default
    started = asyncio.Event()

    async def start_late() -> None:
        await asyncio.sleep(0.3)
        async with adicom.Server("LATE", port=port):
            started.set()
            await asyncio.sleep(5)

    task = asyncio.get_running_loop().create_task(start_late())
    try:
        patient = RetryPolicy(attempts=10, backoff=0.1, max_delay=0.2, deadline=20)
        client = adicom.DicomClient("SCU", connect_timeout=1, retry=patient)
        assert await client.echo(peer)
        assert started.is_set()
    finally:
        task.cancel()
    retried = [r.getMessage() for r in caplog.records if "try " in r.getMessage()]
    assert retried and "the peer was unreachable" in retried[0]


@pytest.mark.anyio
async def test_a_busy_peer_is_tried_again_and_a_refusal_is_final() -> None:
    async with adicom.Server("BUSY", port=0, max_associations=1) as server:
        peer = DicomNode(aet="BUSY", host="127.0.0.1", port=server.port)
        holder = await adicom.open_association(
            "127.0.0.1", server.port, called_ae="BUSY", calling_ae="HOLDER"
        )

        async def free_soon() -> None:
            await asyncio.sleep(0.3)
            await holder.release()

        task = asyncio.get_running_loop().create_task(free_soon())
        client = adicom.DicomClient("SCU", retry=RetryPolicy(attempts=8, backoff=0.1, deadline=20))
        assert await client.echo(peer)  # rejected (2, 3, 2) until the holder leaves
        await task
        wrong = DicomNode(aet="NOT-IT", host="127.0.0.1", port=server.port)
        counted = server.stats["rejected"]
        with pytest.raises(AssociationRejected):
            await client.echo(wrong)
        assert server.stats["rejected"] == counted + 1  # tried once: permanent


async def _archive_with(tmp_path: pathlib.Path, count: int) -> tuple[Archive, list[Dataset]]:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    study, series = generate_uid(), generate_uid()
    datasets: list[Dataset] = []
    for number in range(count):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = generate_uid()
        dataset.InstanceNumber = number + 1
        datasets.append(dataset)
    assert template.SOPClassUID
    archive = Archive(tmp_path / "archive")
    await archive.open()
    return archive, datasets


@pytest.mark.anyio
async def test_a_get_that_loses_its_association_asks_again_only_for_what_is_missing(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive, datasets = await _archive_with(tmp_path, 6)
    asked: list[str] = []
    calls = 0

    async def vanishing(identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
        """The first C-GET dies after 3 instances; the next ones are served."""
        nonlocal calls
        calls += 1
        asked.append(str(identifier.get("SOPInstanceUID", "")))
        sent = 0
        async for item in archive.retrieve(identifier, context):
            if calls == 1 and not isinstance(item, int) and sent == 3:
                raise AssociationAborted(0, 0)  # the SCP goes away mid-operation
            if not isinstance(item, int):
                sent += 1
            yield item

    try:
        handlers = archive.handlers()
        handlers["on_get"] = vanishing
        async with adicom.Server("FLAKY", port=0, **handlers) as server:
            peer = DicomNode(aet="FLAKY", host="127.0.0.1", port=server.port)
            await adicom.DicomClient("SCU").store(datasets, peer)
            study = str(datasets[0].StudyInstanceUID)
            with pytest.raises(adicom.DicomError):
                await adicom.DicomClient("SCU").get_study_to_memory(study, peer)
            calls = 0
            asked.clear()
            client = adicom.DicomClient("SCU").with_retry(FAST)
            result = await client.get_study_to_memory(study, peer)
    finally:
        archive.close()
    got = sorted(str(d.SOPInstanceUID) for d in result.instances)
    assert got == sorted(str(d.SOPInstanceUID) for d in datasets)
    assert result.num_completed == 6 and result.status == "success"
    # The second C-GET named only the instances that had not arrived.
    assert len(asked) == 2 and asked[0] == ""
    again = asked[1].split("\\")
    assert 0 < len(again) < 6 and len(set(again)) == len(again)
    assert any("C-GET of study failed" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_a_move_asks_again_only_for_what_failed_and_adds_up_the_tries(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive, datasets = await _archive_with(tmp_path, 6)
    study = str(datasets[0].StudyInstanceUID)
    series = str(datasets[0].SeriesInstanceUID)
    asked: list[list[str]] = []
    seen: set[str] = set()

    async def busy_at_first(dataset: Dataset, _context: Any) -> int | None:
        """The destination refuses every other instance the first time it comes."""
        uid = str(dataset.SOPInstanceUID)
        first = uid not in seen
        seen.add(uid)
        return 0xA700 if first and int(dataset.InstanceNumber) % 2 else None

    destination = adicom.CallbackStorage(busy_at_first)
    try:
        async with adicom.Server("DEST", port=0, storage=destination) as dest:
            handlers = archive.handlers({"DEST": ("127.0.0.1", dest.port)})
            moving = handlers["on_move"]

            async def recording(identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
                uids = identifier.get("SOPInstanceUID", "")
                asked.append([str(u) for u in uids] if isinstance(uids, MultiValue) else [uids])
                async for item in moving(identifier, context):
                    yield item

            handlers["on_move"] = recording
            async with adicom.Server("ARCHIVE", port=0, **handlers) as server:
                peer = DicomNode(aet="ARCHIVE", host="127.0.0.1", port=server.port)
                await adicom.DicomClient("SCU").store(datasets, peer)
                client = adicom.DicomClient("SCU").with_retry(FAST)
                result = await client.move_series(study, series, peer, "DEST")
    finally:
        archive.close()
    assert result.status == "success", result
    assert (result.num_completed, result.num_failed) == (6, 0)
    # The second C-MOVE named the three refused instances, and only them.
    odd = {str(d.SOPInstanceUID) for d in datasets if int(d.InstanceNumber) % 2}
    assert len(asked) == 2 and asked[0] == [""]
    assert sorted(asked[1]) == sorted(odd)
    assert any(
        "C-MOVE of series to DEST failed (3 sub-operations failed)" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.anyio
async def test_a_move_that_loses_its_association_is_asked_again_whole(
    tmp_path: pathlib.Path,
) -> None:
    archive, datasets = await _archive_with(tmp_path, 4)
    study = str(datasets[0].StudyInstanceUID)
    received = adicom.MemoryStorage()
    calls = 0
    try:
        async with adicom.Server("DEST", port=0, storage=received) as dest:
            handlers = archive.handlers({"DEST": ("127.0.0.1", dest.port)})
            moving = handlers["on_move"]

            async def vanishing(identifier: Dataset, context: QRContext) -> AsyncIterator[Any]:
                """The first C-MOVE dies after 2 instances; the next is served."""
                nonlocal calls
                calls += 1
                sent = 0
                async for item in moving(identifier, context):
                    if calls == 1 and not isinstance(item, int) and sent == 2:
                        raise AssociationAborted(0, 0)
                    sent += not isinstance(item, int)
                    yield item

            handlers["on_move"] = vanishing
            async with adicom.Server("ARCHIVE", port=0, **handlers) as server:
                peer = DicomNode(aet="ARCHIVE", host="127.0.0.1", port=server.port)
                await adicom.DicomClient("SCU").store(datasets, peer)
                with pytest.raises(adicom.DicomError):
                    await adicom.DicomClient("SCU").move_study(study, peer, "DEST")
                calls = 0
                client = adicom.DicomClient("SCU").with_retry(FAST)
                result = await client.move_study(study, peer, "DEST")
    finally:
        archive.close()
    assert calls == 2
    assert result.status == "success" and result.num_completed == 4
    assert {str(d.SOPInstanceUID) for d in received.datasets} == {
        str(d.SOPInstanceUID) for d in datasets
    }


@pytest.mark.anyio
async def test_a_store_retries_the_first_association_and_never_resends(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    peer = DicomNode(aet="LATE", host="127.0.0.1", port=port)
    storage = adicom.MemoryStorage()
    _, datasets = await _archive_with(tmp_path, 3)

    async def start_late() -> None:
        await asyncio.sleep(0.3)
        async with adicom.Server("LATE", port=port, storage=storage):
            await asyncio.sleep(5)

    task = asyncio.get_running_loop().create_task(start_late())
    try:
        client = adicom.DicomClient(
            "SCU", retry=RetryPolicy(attempts=10, backoff=0.1, max_delay=0.2, deadline=20)
        )
        results = await client.store(datasets, peer)
    finally:
        task.cancel()
    assert [r.status for r in results] == [0, 0, 0]
    assert len(storage.datasets) == 3  # each sent once


def test_no_retry_is_one_attempt() -> None:
    assert NO_RETRY.attempts == 1
    assert adicom.DicomClient().retry is NO_RETRY
    client = adicom.DicomClient()
    assert client.with_retry(FAST).retry is FAST and client.retry is NO_RETRY


@pytest.mark.anyio
async def test_the_cli_retries_when_told() -> None:
    from tests.test_cli import run_cli

    port = free_port()
    code, _, err = await run_cli("echo", "--aec", "LATE", "127.0.0.1", str(port))
    assert code == 3, err  # unreachable, at once

    # The server starts once the CLI has said it failed a first time, not
    # after a fixed delay: a loaded machine can take longer than any delay
    # to start the CLI, and then nothing would be retried.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adicom", "echo", "--retries", "6", "--aec", "LATE",
        "127.0.0.1", str(port),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    said = b""
    async with asyncio.timeout(60):
        while b"the peer was unreachable" not in said:
            line = await process.stderr.readline()
            assert line, f"the CLI ended without retrying: {said.decode()!r}"
            said += line
        async with adicom.Server("LATE", port=port):
            out_bytes, err_bytes = await process.communicate()
    out, err = out_bytes.decode(), said.decode() + err_bytes.decode()
    assert process.returncode == 0 and "success" in out, err
    assert "the peer was unreachable" in err and "try 2 of 7" in err
