"""The association pool: reuse, limits, expiry, errors, and DicomClient(pool=)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.models import DicomNode, StudyQuery
from adicom.pool import AssociationPool

pytestmark = pytest.mark.anyio


def node(server: adicom.Server) -> DicomNode:
    return DicomNode(aet=server.ae_title, host="127.0.0.1", port=server.port)


async def test_calls_to_one_peer_share_an_association() -> None:
    async with adicom.Server("POOLED", port=0) as server, AssociationPool() as pool:
        client = adicom.DicomClient("SCU", pool=pool)
        for _ in range(30):
            assert await client.echo(node(server))
        assert server.stats["accepted"] == 1
        assert pool.stats["opened"] == 1 and pool.stats["reused"] == 29
        for _ in range(3):
            assert await adicom.DicomClient("SCU").echo(node(server))  # no pool: one each
        assert server.stats["accepted"] == 4
    assert pool.open_count == 0


async def test_concurrent_calls_stay_within_the_limit() -> None:
    async with adicom.Server("POOLED", port=0) as server:
        async with AssociationPool(max_per_key=3) as pool:
            client = adicom.DicomClient("SCU", pool=pool)
            results = await asyncio.gather(*(client.echo(node(server)) for _ in range(20)))
            assert all(results)
            assert 1 <= server.stats["accepted"] <= 3
            assert pool.open_count <= 3
        async with asyncio.timeout(10):
            while server.stats["released"] < server.stats["accepted"]:
                await asyncio.sleep(0.01)  # aclose released every one


async def test_idle_associations_expire_and_dead_ones_are_not_handed_out() -> None:
    async with adicom.Server("POOLED", port=0, idle_timeout=0.3) as server:
        async with AssociationPool(idle_timeout=0.2) as pool:
            client = adicom.DicomClient("SCU", pool=pool)
            assert await client.echo(node(server))
            async with asyncio.timeout(10):
                while pool.open_count:
                    await asyncio.sleep(0.02)
            assert pool.stats["expired"] == 1
        # Kept longer than the server keeps a silent association: it aborts
        # it, and the pool opens a new one instead of failing the call.
        async with AssociationPool(idle_timeout=30) as pool:
            client = adicom.DicomClient("SCU", pool=pool)
            assert await client.echo(node(server))
            await asyncio.sleep(0.6)
            assert await client.echo(node(server))
            assert pool.stats["opened"] == 2 and pool.stats["reused"] == 0


async def test_an_association_that_failed_a_call_is_not_reused() -> None:
    async def refuse(identifier: Dataset, context: adicom.QRContext) -> AsyncIterator[Dataset]:
        raise adicom.QueryFailed(0xC000, "not today")
        yield identifier  # an async generator

    async with adicom.Server("POOLED", port=0, on_find=refuse) as server:
        async with AssociationPool() as pool:
            client = adicom.DicomClient("SCU", pool=pool)
            for _ in range(2):
                with pytest.raises(adicom.DimseError, match="0xC000"):
                    await client.find_studies(StudyQuery(patient_id="1"), node(server))
            assert pool.stats["discarded"] == 2 and pool.stats["reused"] == 0
            assert pool.stats["opened"] == 2  # a new association after each failed call
    with pytest.raises(RuntimeError, match="closed"):
        async with pool.lease("key", lambda: asyncio.sleep(0)):  # type: ignore[arg-type,return-value]
            pass


async def test_small_stores_go_on_one_pooled_association() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    storage = adicom.MemoryStorage()
    async with adicom.Server("STORE", port=0, storage=storage) as server:
        async with AssociationPool() as pool:
            client = adicom.DicomClient("SCU", pool=pool)
            sent = []
            for _ in range(20):
                dataset = pydicom.dcmread(path)
                dataset.SOPInstanceUID = generate_uid()
                (result,) = await client.store([dataset], node(server))
                assert result.ok
                sent.append(dataset.SOPInstanceUID)
        assert server.stats["accepted"] == 1
    assert [d.SOPInstanceUID for d in storage.datasets] == sent


def test_bad_limits_are_refused() -> None:
    for options in ({"max_per_key": 0}, {"max_per_key": 5, "max_total": 2}, {"idle_timeout": 0}):
        with pytest.raises(ValueError):
            AssociationPool(**options)
