"""C-GET sub-operations: answered in the transport callback when the storage can finish at once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from pydicom.dataset import Dataset

import adicom
from adicom import qrscu
from adicom.storage import IncomingInstance, StorageHandler, StoreContext
from tests.test_dicomclient import Tree, build_tree, pacs

pytestmark = pytest.mark.anyio


class Counting(StorageHandler):
    """Stores nothing; counts how each instance was finished, and refuses some."""

    def __init__(self, refuse: set[str], at_once: bool = True) -> None:
        self.refuse = refuse
        self.at_once = at_once
        self.finished_now = 0
        self.awaited = 0
        self.finished: dict[str, int] = {}

    def open(self, context: StoreContext) -> IncomingInstance:
        return _Counted(context, self)


class _Counted(IncomingInstance):
    def __init__(self, context: StoreContext, owner: Counting) -> None:
        super().__init__(context)
        self.owner = owner
        self.size = 0

    def write(self, data: memoryview, /) -> None:
        self.size += len(data)

    def _status(self) -> int:
        uid = self.context.sop_instance_uid
        self.owner.finished[uid] = self.owner.finished.get(uid, 0) + 1
        if self.context.sop_instance_uid in self.owner.refuse:
            self.error = "no room for this one"
            return 0xA700
        return 0x0000 if self.size else 0xC000

    def finish_now(self) -> int | None:
        if not self.owner.at_once:
            return None
        self.owner.finished_now += 1
        return self._status()

    async def finish(self) -> int:
        self.owner.awaited += 1
        return self._status()


def _series_identifier(tree: Tree) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = tree.instances[0].StudyInstanceUID
    identifier.SeriesInstanceUID = tree.instances[0].SeriesInstanceUID
    return identifier


@contextlib.asynccontextmanager
async def _connected(tree: Tree) -> AsyncIterator[adicom.Association]:
    """An association to a PACS node holding ``tree``, offering what a C-GET receives."""
    contexts, roles = qrscu.get_contexts()
    async with (
        pacs(tree) as node,
        adicom.connect(
            node.host, node.port, called_ae=node.aet, contexts=contexts, roles=roles
        ) as assoc,
    ):
        yield assoc


@pytest.mark.parametrize("at_once", [True, False])
async def test_each_sub_operation_is_stored_once_and_refusals_keep_their_reason(
    at_once: bool,
) -> None:
    tree = Tree(build_tree())
    series = [
        d for d in tree.instances if d.SeriesInstanceUID == tree.instances[0].SeriesInstanceUID
    ]
    refused = str(series[0].SOPInstanceUID)  # the first: likely answered at once
    storage = Counting({refused}, at_once=at_once)
    async with _connected(tree) as assoc:
        progress = await qrscu.get(assoc, _series_identifier(tree), storage, report=False)
        assert assoc.on_request is None  # the C-GET's own hook is gone with it
    assert (progress.completed, progress.failed) == (len(series) - 1, 1)
    # Each instance was finished once: at once where the peer's timing let
    # it (not while more of its PDUs waited), else awaited as usual.
    assert storage.finished == {str(d.SOPInstanceUID): 1 for d in series}
    assert storage.finished_now + storage.awaited == len(series)
    if not at_once:
        assert storage.finished_now == 0
    assert set(progress.received) == {str(d.SOPInstanceUID) for d in series}
    (failure,) = progress.failures
    assert failure.sop_instance_uid == refused
    assert failure.reason == "refused here: no room for this one"


async def test_a_memory_get_finishes_each_instance_at_once() -> None:
    tree = Tree(build_tree())
    storage = adicom.MemoryStorage()
    async with _connected(tree) as assoc:
        progress = await qrscu.get(assoc, _series_identifier(tree), storage)
    expected = {
        str(d.SOPInstanceUID)
        for d in tree.instances
        if d.SeriesInstanceUID == tree.instances[0].SeriesInstanceUID
    }
    assert progress.completed == len(expected) and progress.failed == 0
    assert {str(d.SOPInstanceUID) for d in storage.datasets} == expected
    assert all(d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID for d in storage.datasets)


async def test_a_sub_operation_answered_at_once_is_written_before_its_bookkeeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The C-GET SCP sends its next sub-operation only once it has the
    # C-STORE-RSP: the response leaves before the callback's own work (the
    # counts, the file's path), not when the callback ends.
    tree = Tree(build_tree())
    storage = Counting(set())
    unwritten: list[int] = []
    record = qrscu._record

    def recording(association: adicom.Association, *args: object) -> None:
        unwritten.append(len(association._ul._out))  # PDUs queued, not written yet
        record(association, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(qrscu, "_record", recording)
    async with _connected(tree) as assoc:
        progress = await qrscu.get(assoc, _series_identifier(tree), storage, report=False)
    assert progress.failed == 0 and progress.completed == len(unwritten) > 0
    assert storage.finished_now >= 1  # answered in the callback (the others awaited)
    assert set(unwritten) == {0}
