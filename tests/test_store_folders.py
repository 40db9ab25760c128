"""``adicom.store`` on real folders: files that are not DICOM, broken ones, a peer that aborts.

What a user's folder holds besides instances (a README, JSON, a DICOMDIR)
is skipped with its reason; a broken instance fails alone; and with
``reconnects`` an association the peer aborts is replaced by a new one.
"""

from __future__ import annotations

import contextlib
import copy
import pathlib
from collections.abc import AsyncIterator, Callable

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import adicom
from adicom.storage import IncomingInstance, StoreContext

pytestmark = pytest.mark.anyio


def sample(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


def write_instances(folder: pathlib.Path, count: int, name: str = "CT_small.dcm") -> list[str]:
    """``count`` copies of a test file, each with its own SOP Instance UID."""
    template = pydicom.dcmread(sample(name))
    folder.mkdir(parents=True, exist_ok=True)
    uids = []
    for n in range(count):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    return uids


def untidy_folder(root: pathlib.Path) -> dict[str, str]:
    """Good instances among what a real folder holds; file name -> what should happen."""
    write_instances(root / "series", 3)
    (root / "README").write_text("Study exported from the PACS on Monday.\n")
    (root / "manifest.json").write_text('{"files": 3}')
    (root / "broken.dcm").write_bytes(bytes(range(256)) * 4)
    (root / "bad-meta.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff")
    whole = pathlib.Path(sample("CT_small.dcm")).read_bytes()
    (root / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (root / "DICOMDIR").write_bytes(pathlib.Path(sample("DICOMDIR")).read_bytes())
    return {
        "000.dcm": "sent",
        "001.dcm": "sent",
        "002.dcm": "sent",
        "README": "not-dicom",
        "manifest.json": "not-dicom",
        "DICOMDIR": "not-dicom",
        "broken.dcm": "unreadable",
        "bad-meta.dcm": "unreadable",
        "truncated.dcm": "failed",
    }


def outcome(result: adicom.StoreResult) -> str:
    if result.skipped is not None:
        return result.skipped
    return "sent" if result.ok else "failed"


async def test_an_untidy_folder_sends_what_it_can_and_says_why_not(
    tmp_path: pathlib.Path,
) -> None:
    expected = untidy_folder(tmp_path / "export")
    storage = adicom.DiskStorage(tmp_path / "archive")
    async with adicom.Server("STORE", port=0, storage=storage) as server:
        results = await adicom.store(
            "127.0.0.1", server.port, [tmp_path / "export"], called_ae="STORE"
        )
    by_name = {pathlib.Path(r.source).name: r for r in results}
    assert {name: outcome(r) for name, r in by_name.items()} == expected
    assert by_name["README"].error == "not a DICOM file"
    assert by_name["DICOMDIR"].error == "a DICOMDIR (a media directory, not an instance)"
    assert "named like one" in (by_name["broken.dcm"].error or "")
    assert "file meta information is malformed" in (by_name["bad-meta.dcm"].error or "")
    # Sent, and refused by the peer with its reason: it is not whole.
    truncated = by_name["truncated.dcm"]
    assert truncated.status is not None and truncated.error
    assert len(storage.stored) == 3


class AbortingStorage(adicom.MemoryStorage):
    """Keeps instances in memory, but aborts the association on the ones ``when`` picks."""

    def __init__(self, when: Callable[[int, StoreContext], bool]) -> None:
        super().__init__()
        self.when = when
        self.seen = 0
        self.aborts = 0

    def open(self, context: StoreContext) -> IncomingInstance:
        instance = super().open(context)
        self.seen += 1
        if self.when(self.seen, context):
            storage = self

            async def finish() -> int:
                storage.aborts += 1
                # What the server does with a handler's DicomError: A-ABORT.
                raise adicom.DicomError("the storage broke down")

            instance.finish = finish  # type: ignore[method-assign]
            # MemoryStorage stores in the transport callback when it can
            # (finish_now); None sends it the way of finish().
            instance.finish_now = lambda: None  # type: ignore[method-assign]
        return instance


@contextlib.asynccontextmanager
async def scp(storage: adicom.StorageHandler) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("STORE", port=0, storage=storage) as server:
        yield server


async def test_a_peer_that_aborts_once_gets_the_rest_on_a_new_association(
    tmp_path: pathlib.Path,
) -> None:
    uids = write_instances(tmp_path, 8)
    storage = AbortingStorage(lambda seen, _: seen == 3)
    seen: list[adicom.StoreResult] = []
    async with scp(storage) as server:
        results = await adicom.store(
            "127.0.0.1",
            server.port,
            [tmp_path],
            called_ae="STORE",
            reconnects=2,
            progress=seen.append,
        )
        assert server.stats["aborted"] == 1 and server.stats["accepted"] == 2
    assert storage.aborts == 1
    assert all(r.ok for r in results), [r.error for r in results]
    # One result per instance, in order, each reported once.
    assert [r.sop_instance_uid for r in results] == uids
    assert sorted(r.sop_instance_uid for r in seen) == sorted(uids)
    assert sorted(d.SOPInstanceUID for d in storage.datasets) == sorted(uids)


async def test_without_reconnects_an_abort_raises_as_before(tmp_path: pathlib.Path) -> None:
    write_instances(tmp_path, 4)
    async with scp(AbortingStorage(lambda seen, _: seen == 2)) as server:
        with pytest.raises(adicom.AssociationAborted):
            await adicom.store("127.0.0.1", server.port, [tmp_path], called_ae="STORE")


async def test_an_instance_that_makes_the_peer_abort_fails_alone(tmp_path: pathlib.Path) -> None:
    uids = write_instances(tmp_path, 6)
    poison = uids[2]
    storage = AbortingStorage(lambda _, context: context.sop_instance_uid == poison)
    async with scp(storage) as server:
        results = await adicom.store(
            "127.0.0.1", server.port, [tmp_path], called_ae="STORE", reconnects=3
        )
    by_uid = {r.sop_instance_uid: r for r in results}
    assert not by_uid[poison].ok and by_uid[poison].status is None
    assert "the association failed while it was sent, twice" in (by_uid[poison].error or "")
    assert all(by_uid[uid].ok for uid in uids if uid != poison)
    assert storage.aborts == 2
    assert sorted(d.SOPInstanceUID for d in storage.datasets) == sorted(set(uids) - {poison})


async def test_a_peer_that_always_aborts_is_given_up_on(tmp_path: pathlib.Path) -> None:
    write_instances(tmp_path, 5)
    storage = AbortingStorage(lambda seen, _: seen > 1)
    async with scp(storage) as server:
        results = await adicom.store(
            "127.0.0.1", server.port, [tmp_path], called_ae="STORE", reconnects=2
        )
    assert [r.ok for r in results] == [True, False, False, False, False]
    assert storage.aborts == 3  # the first association, then two more in a row
    assert any("not sent: 3 associations in a row failed" in (r.error or "") for r in results)


async def test_a_peer_unreachable_from_the_start_still_raises(tmp_path: pathlib.Path) -> None:
    from tests.interop.peers import free_port

    write_instances(tmp_path, 2)
    with pytest.raises(adicom.PeerUnreachable):
        await adicom.store("127.0.0.1", free_port(), [tmp_path], reconnects=3)
