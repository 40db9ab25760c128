"""DiskStorage writes a large data set a slice per loop turn, holding the sender when behind.

A 1 MiB PDV written at once held the event loop (and every other
association) for up to ~10 ms on a busy page cache; these tests check the
slicing, the hold on the sender, and that nothing is lost or left behind.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

import adicom
from adicom import diskinstance, diskstorage
from adicom.diskinstance import WRITE_SLICE
from adicom.fileformat import EXPLICIT_VR_LITTLE_ENDIAN, encode_dataset
from adicom.storage import IncomingInstance, StoreContext

pytestmark = pytest.mark.anyio

SC = "1.2.840.10008.5.1.4.1.1.7"


def _instance(pixel_bytes: int) -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.add_new(0x7FE00010, "OB", os.urandom(pixel_bytes))
    return ds, encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)


def _open(disk: adicom.DiskStorage, ds: Dataset) -> IncomingInstance:
    return disk.open(
        StoreContext(
            calling_ae="SCU",
            called_ae="STORE",
            sop_class_uid=SC,
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        )
    )


def _part_size(root: pathlib.Path) -> int:
    (part,) = (root / ".incoming").iterdir()
    return part.stat().st_size


async def test_a_large_fragment_is_written_a_slice_per_loop_turn(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time to spare in a callback: one slice each (however fast the disk).
    monkeypatch.setattr(diskinstance, "WRITE_TIME", 0.0)
    disk = adicom.DiskStorage(tmp_path)
    ds, encoded = _instance(5 << 20)
    incoming = _open(disk, ds)
    holds: list[bool] = []
    incoming.hold_input = holds.append
    meta = len(incoming.context.file_meta())
    fragment = 1 << 20
    view = memoryview(bytearray(encoded))  # a buffer the "reader" overwrites below
    incoming.write(view[:fragment])
    # One slice went to the file in this callback; the rest waits.
    assert _part_size(tmp_path) == meta + WRITE_SLICE
    view[:fragment] = bytes(fragment)  # the receive buffer reused: the copy is what counts
    turns = 0
    while _part_size(tmp_path) < meta + fragment:
        await asyncio.sleep(0)
        turns += 1
        assert turns < 100
    assert turns == fragment // WRITE_SLICE - 1  # one slice per turn
    for start in range(fragment, len(encoded), fragment):
        incoming.write(memoryview(encoded)[start : start + fragment])
    # More than write_behind (2 MiB) was waiting: the sender was held, then let go.
    assert holds and holds[0] is True
    assert await incoming.finish() == 0x0000
    assert holds[-1] is False and holds.count(True) == holds.count(False)
    (path,) = (p for p in tmp_path.rglob("*.dcm"))
    assert path.read_bytes()[meta:] == encoded  # what was received, not what the buffer became
    assert list((tmp_path / ".incoming").iterdir()) == []


async def test_the_received_instance_is_whole_and_the_sender_let_go(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through a server: two instances of 20 MiB in 1 MiB PDUs on one association.
    monkeypatch.setattr(diskinstance, "WRITE_TIME", 0.0)  # behind whatever the disk's speed
    holds: list[bool] = []
    real_hold = adicom.Association.hold_input

    def hold_input(self: adicom.Association, hold: bool) -> None:
        holds.append(hold)
        real_hold(self, hold)

    monkeypatch.setattr(adicom.Association, "hold_input", hold_input)
    disk = adicom.DiskStorage(tmp_path / "store")
    sent = []
    for i in range(2):
        ds, _ = _instance(20 << 20)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        ds.file_meta.MediaStorageSOPClassUID = UID(SC)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent.append((ds, path))
    async with adicom.Server("STORE", port=0, storage=disk) as server:
        results = await asyncio.wait_for(
            adicom.store("127.0.0.1", server.port, [p for _, p in sent], called_ae="STORE"), 60
        )
    assert [r.status for r in results] == [0x0000, 0x0000]
    # The reading stopped while the disk was behind, and went on each time.
    assert True in holds and holds.count(True) == holds.count(False)
    for ds, _ in sent:
        (path,) = (tmp_path / "store").rglob(f"{ds.SOPInstanceUID}.dcm")
        stored = pydicom.dcmread(path)
        assert stored.PixelData == ds.PixelData
    assert disk.write_behind == diskstorage.DEFAULT_WRITE_BEHIND


async def test_aborted_mid_backlog_leaves_nothing_and_lets_the_sender_go(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diskinstance, "WRITE_TIME", 0.0)
    disk = adicom.DiskStorage(tmp_path)
    ds, encoded = _instance(4 << 20)
    incoming = _open(disk, ds)
    holds: list[bool] = []
    incoming.hold_input = holds.append
    for start in range(0, len(encoded), 1 << 20):
        incoming.write(memoryview(encoded)[start : start + (1 << 20)])
    assert holds == [True]
    incoming.abort()
    assert holds == [True, False]
    for _ in range(20):
        await asyncio.sleep(0)  # the drain callback was cancelled: nothing more happens
    assert list((tmp_path / ".incoming").iterdir()) == []
    assert list(tmp_path.rglob("*.dcm")) == []


async def test_a_disk_error_while_writing_behind_fails_the_instance(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diskinstance, "WRITE_TIME", 0.0)
    disk = adicom.DiskStorage(tmp_path)
    ds, encoded = _instance(2 << 20)
    incoming = _open(disk, ds)
    incoming.write(memoryview(encoded)[: 1 << 20])
    real_write = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    await asyncio.sleep(0)  # the next slice hits the full disk
    monkeypatch.setattr(os, "write", real_write)
    incoming.write(memoryview(encoded)[1 << 20 :])  # dropped: the instance failed
    assert await incoming.finish() == 0xA700
    assert "No space left" in (incoming.error or "")
    assert list((tmp_path / ".incoming").iterdir()) == []


async def test_write_behind_zero_writes_each_fragment_at_once(tmp_path: pathlib.Path) -> None:
    disk = adicom.DiskStorage(tmp_path, write_behind=0)
    ds, encoded = _instance(2 << 20)
    incoming = _open(disk, ds)
    meta = len(incoming.context.file_meta())
    incoming.write(memoryview(encoded)[: 1 << 20])
    assert _part_size(tmp_path) == meta + (1 << 20)
    incoming.write(memoryview(encoded)[1 << 20 :])
    assert await incoming.finish() == 0x0000
    with pytest.raises(ValueError, match="write_behind"):
        adicom.DiskStorage(tmp_path, write_behind=-1)


def test_serve_has_a_flag_for_it() -> None:
    from adicom import cli

    assert cli.build_parser().parse_args(["serve"]).write_behind == (
        diskstorage.DEFAULT_WRITE_BEHIND
    )
    assert cli.build_parser().parse_args(["serve", "--write-behind", "0"]).write_behind == 0
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--write-behind", "-1"])


async def test_the_input_is_read_again_when_the_last_holder_lets_go() -> None:
    # Two instances in flight on one association may each hold the input.
    reading: list[bool] = []

    class Transport:
        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            reading.append(False)

        def resume_reading(self) -> None:
            reading.append(True)

    assoc = adicom.Association(requestor=False)
    assoc._transport = Transport()  # type: ignore[assignment]
    assoc.hold_input(True)
    assoc.hold_input(True)
    assoc.hold_input(False)
    assert reading[-1] is False  # the second still holds
    assoc.hold_input(False)
    assert reading[-1] is True


@pytest.mark.parametrize("first", [None, 1, 7, 30], ids=["whole", "1", "7", "30"])
async def test_a_group_0002_inside_the_data_set_is_dropped_however_it_is_cut(
    tmp_path: pathlib.Path, first: int | None
) -> None:
    # PS3.10 7.1: the file meta is the SCP's to write; the data set's first
    # bytes decide, read in place when the first fragment holds them.
    ds, encoded = _instance(1 << 20)
    meta_group = (
        bytes.fromhex("02001000") + b"UI" + (20).to_bytes(2, "little") + b"1.2.840.10008.1.2.1\0"
    )
    sent = meta_group + encoded
    disk = adicom.DiskStorage(tmp_path)
    incoming = _open(disk, ds)
    cuts = [0, len(sent)] if first is None else [0, *range(1, first + 1), len(sent)]
    for a, b in itertools.pairwise(cuts):
        incoming.write(memoryview(sent)[a:b])
    assert await incoming.finish() == 0xB006
    (path,) = tmp_path.rglob("*.dcm")
    meta = len(incoming.context.file_meta())
    assert path.read_bytes()[meta:] == encoded


async def test_finish_now_files_a_whole_instance_at_once_and_waits_for_a_backlog(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = adicom.DiskStorage(tmp_path)
    small, encoded = _instance(1000)
    incoming = _open(disk, small)
    assert isinstance(incoming, diskinstance.DiskInstance)
    incoming.write(memoryview(encoded))
    # Nothing behind: stored here, without awaiting anything.
    assert incoming.finish_now() == 0x0000
    assert [p.name for p in tmp_path.rglob("*.dcm")] == [f"{small.SOPInstanceUID}.dcm"]
    # finish() gives the same status and files nothing twice.
    assert await incoming.finish() == 0x0000
    assert list(disk.stored) == list(tmp_path.rglob("*.dcm"))

    # A fragment still being written behind: finish_now leaves it to finish().
    monkeypatch.setattr(diskinstance, "WRITE_TIME", 0.0)
    large, encoded = _instance(2 * WRITE_SLICE)
    incoming = _open(disk, large)
    assert isinstance(incoming, diskinstance.DiskInstance)
    incoming.write(memoryview(encoded))
    assert incoming.finish_now() is None
    assert not (tmp_path / str(large.StudyInstanceUID)).exists()
    assert await incoming.finish() == 0x0000
    (path,) = tmp_path.rglob(f"{large.SOPInstanceUID}.dcm")
    assert path.read_bytes().endswith(encoded)


async def test_finish_now_refuses_as_finish_does(tmp_path: pathlib.Path) -> None:
    disk = adicom.DiskStorage(tmp_path)
    ds, _ = _instance(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID we make
        ds.SeriesInstanceUID = "1.2.03"  # a leading zero: not a UID (PS3.5 9.1)
        encoded = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
    incoming = _open(disk, ds)
    assert isinstance(incoming, diskinstance.DiskInstance)
    incoming.write(memoryview(encoded))
    assert incoming.finish_now() == 0xA900
    assert incoming.offending_element == 0x0020000E
    assert await incoming.finish() == 0xA900
    assert list(tmp_path.rglob("*.dcm")) == []
    assert list((tmp_path / ".incoming").iterdir()) == []
