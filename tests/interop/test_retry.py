"""Retries against a real DCMTK storescp that is not there yet, vanishes mid-store, comes back."""

from __future__ import annotations

import asyncio
import copy
import pathlib
import signal
import subprocess
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.models import DicomNode
from adicom.retry import RetryPolicy
from adicom.storescu import StoreResult
from tests.interop import peers

pytestmark = [pytest.mark.interop, pytest.mark.anyio]

PATIENT = RetryPolicy(attempts=8, backoff=0.2, max_delay=1.0, deadline=60)


def instances(count: int) -> Iterator[Dataset]:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    template = pydicom.dcmread(path)
    for _ in range(count):
        dataset = copy.deepcopy(template)
        dataset.SOPInstanceUID = generate_uid()
        yield dataset


async def storescp(port: int, outdir: pathlib.Path) -> asyncio.subprocess.Process:
    """DCMTK storescp on ``port``, answering once it accepts connections."""
    binary = peers.require_dcmtk("storescp")
    process = await asyncio.create_subprocess_exec(
        binary, "--aetitle", "STORESCP", "--output-directory", str(outdir), str(port),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(peers.READY_TIMEOUT):
        while True:
            try:
                _, writer = await asyncio.open_connection(peers.HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return process


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    async with asyncio.timeout(10):
        await process.wait()


def stored_uids(outdir: pathlib.Path) -> list[str]:
    return [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in outdir.iterdir()
    ]


async def test_storescp_not_there_yet(tmp_path: pathlib.Path) -> None:
    port = peers.free_port()
    peer = DicomNode(aet="STORESCP", host=peers.HOST, port=port)
    datasets = list(instances(3))
    client = adicom.DicomClient("SCU", retry=PATIENT)
    started: list[asyncio.subprocess.Process] = []

    async def start_late() -> None:
        await asyncio.sleep(0.5)
        started.append(await storescp(port, tmp_path))

    task = asyncio.get_running_loop().create_task(start_late())
    try:
        results = await client.store(datasets, peer)
        await task
    finally:
        for process in started:
            await stop(process)
    assert [r.status for r in results] == [0, 0, 0]
    assert sorted(stored_uids(tmp_path)) == sorted(str(d.SOPInstanceUID) for d in datasets)


async def test_storescp_vanishes_mid_store_and_comes_back(tmp_path: pathlib.Path) -> None:
    """Every instance arrives; none the peer confirmed is sent again."""
    port = peers.free_port()
    peer = DicomNode(aet="STORESCP", host=peers.HOST, port=port)
    datasets = list(instances(30))
    first = tmp_path / "first"
    again = tmp_path / "again"
    first.mkdir()
    again.mkdir()
    processes = [await storescp(port, first)]
    confirmed: list[str] = []
    restart: asyncio.Task[None] | None = None

    async def come_back() -> None:
        await stop(processes[0])
        await asyncio.sleep(3.0)  # away for a while: reconnects fail, then the retry waits
        processes.append(await storescp(port, again))

    def progress(result: StoreResult) -> None:
        nonlocal restart
        if result.ok:
            confirmed.append(result.sop_instance_uid)
        if len(confirmed) == 10 and restart is None:
            restart = asyncio.get_running_loop().create_task(come_back())

    client = adicom.DicomClient("SCU", retry=PATIENT)
    try:
        results = await client.store(datasets, peer, progress=progress)
        if restart is not None:
            await restart
    finally:
        for process in processes:
            await stop(process)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    before, after = set(stored_uids(first)), stored_uids(again)
    assert before | set(after) == {str(d.SOPInstanceUID) for d in datasets}
    # What the first storescp confirmed was not sent to the second.
    first_confirmed = set(confirmed[:10])
    assert not first_confirmed & set(after)
    assert len(after) == len(set(after))
