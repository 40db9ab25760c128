"""C-STORE between adicom's SCU and SCP: content, statuses, bad input, nothing half-written."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import pathlib
import warnings
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

import adicom
from adicom import instancevalues
from adicom.dimse import Command, CommandField
from adicom.fileformat import (
    ConvertedFile,
    decode_dataset,
    encode_dataset,
    encode_file_meta,
    read_file_meta,
)
from adicom.pdu import (
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    PDataTF,
    PDUReader,
    PresentationContextRQ,
    UserInformation,
)
from adicom.storage import IncomingInstance, StoreContext

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def sample(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return str(path)


FILES = {
    "explicit": sample("CT_small.dcm"),
    "implicit": sample("rtplan.dcm"),
    "jpeg2000": sample("JPEG2000.dcm"),
    "jpeg": sample("SC_rgb_jpeg_gdcm.dcm"),
}


@contextlib.asynccontextmanager
async def scp(handler: adicom.StorageHandler, **options: Any) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("STORE", port=0, storage=handler, **options) as server:
        yield server


def same_content(sent: Dataset, received: Dataset) -> None:
    assert sent.file_meta.TransferSyntaxUID == received.file_meta.TransferSyntaxUID
    assert list(sent.keys()) == list(received.keys())
    for tag in sent.keys():  # noqa: SIM118 - iterating a Dataset gives elements
        assert sent[tag].value == received[tag].value, tag


def received_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)


async def test_files_arrive_intact_in_their_own_transfer_syntax(tmp_path: pathlib.Path) -> None:
    disk = adicom.DiskStorage(tmp_path / "in")
    async with scp(disk) as server:
        results = await adicom.store("127.0.0.1", server.port, FILES.values(), called_ae="STORE")
    assert [r.status for r in results] == [0, 0, 0, 0]
    for path in FILES.values():
        sent = pydicom.dcmread(path)
        (stored,) = (tmp_path / "in").rglob(f"{sent.SOPInstanceUID}.dcm")
        assert stored.parts[-3:-1] == (sent.StudyInstanceUID, sent.SeriesInstanceUID)
        received = pydicom.dcmread(stored)
        same_content(sent, received)
        assert received.file_meta.SourceApplicationEntityTitle == "ADICOM"
    # Nothing is left half-written.
    assert list((tmp_path / "in" / ".incoming").iterdir()) == []


async def test_memory_storage_and_datasets_as_sources() -> None:
    memory = adicom.MemoryStorage()
    dataset = pydicom.dcmread(FILES["explicit"])
    async with scp(memory) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="STORE")
    assert result.ok and result.source == dataset.SOPInstanceUID
    (received,) = memory.datasets
    assert received.PixelData == dataset.PixelData
    assert received.PatientName == dataset.PatientName


async def test_conversion_when_only_another_uncompressed_syntax_is_accepted() -> None:
    memory = adicom.MemoryStorage()
    async with scp(memory) as server:
        server.supported[CT] = [IMPLICIT]  # this SCP takes CT in implicit VR only
        (result,) = await adicom.store(
            "127.0.0.1", server.port, [FILES["explicit"]], called_ae="STORE"
        )
    assert result.ok
    (received,) = memory.datasets
    assert received.file_meta.TransferSyntaxUID == IMPLICIT
    sent = pydicom.dcmread(FILES["explicit"])
    for tag in sent.keys():  # noqa: SIM118 - iterating a Dataset gives elements
        assert sent[tag].value == received[tag].value


async def test_refused_compressed_syntax_fails_alone() -> None:
    memory = adicom.MemoryStorage()
    jpeg2000 = pydicom.dcmread(FILES["jpeg2000"])
    async with scp(memory) as server:
        server.supported[jpeg2000.SOPClassUID] = [EXPLICIT, IMPLICIT]
        results = await adicom.store(
            "127.0.0.1", server.port, [FILES["jpeg2000"], FILES["explicit"]], called_ae="STORE"
        )
    assert results[0].status is None and not results[0].ok
    assert "JPEG 2000" in (results[0].error or "")
    assert results[1].ok
    assert len(memory.datasets) == 1


async def test_callback_decides_the_status() -> None:
    seen: list[tuple[str, StoreContext]] = []

    async def refuse_ct(dataset: Dataset, context: StoreContext) -> int | None:
        seen.append((dataset.SOPInstanceUID, context))
        if dataset.SOPClassUID == CT:
            return 0xA700
        if dataset.Modality == "RTPLAN":
            raise RuntimeError("the callback's own bug")
        return None

    async with scp(adicom.CallbackStorage(refuse_ct)) as server:
        results = await adicom.store(
            "127.0.0.1",
            server.port,
            [FILES["explicit"], FILES["implicit"], FILES["jpeg"]],
            called_ae="STORE",
            calling_ae="MODALITY",
        )
    assert [r.status for r in results] == [0xA700, 0xC000, 0x0000]
    assert "out of resources" in (results[0].error or "")
    assert seen[0][1].calling_ae == "MODALITY" and seen[0][1].transfer_syntax == EXPLICIT


async def test_callback_with_path(tmp_path: pathlib.Path) -> None:
    paths: list[pathlib.Path] = []

    async def keep(path: pathlib.Path, context: StoreContext) -> None:
        assert path.is_file()
        paths.append(path)

    handler = adicom.CallbackStorage(keep, storage=adicom.DiskStorage(tmp_path))
    async with scp(handler) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [FILES["jpeg"]], called_ae="STORE")
    assert result.ok and paths == received_files(tmp_path)


@pytest.mark.parametrize(
    ("policy", "second_status"), [("replace", 0), ("keep", 0), ("reject", 0x0111)]
)
async def test_instance_received_twice(
    tmp_path: pathlib.Path, policy: Any, second_status: int
) -> None:
    disk = adicom.DiskStorage(tmp_path, on_duplicate=policy)
    first = pydicom.dcmread(FILES["explicit"])
    second = pydicom.dcmread(FILES["explicit"])
    second.PatientName = "Second^Copy"
    async with scp(disk) as server:
        statuses = []
        for dataset in (first, second):
            (result,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="STORE")
            statuses.append(result.status)
    assert statuses == [0, second_status]
    (stored,) = received_files(tmp_path)
    expected = "Second^Copy" if policy == "replace" else str(first.PatientName)
    assert str(pydicom.dcmread(stored).PatientName) == expected


async def test_layout_values_are_made_safe(tmp_path: pathlib.Path) -> None:
    disk = adicom.DiskStorage(tmp_path, layout="{PatientID}/{SOPInstanceUID}.dcm")
    dataset = pydicom.dcmread(FILES["explicit"])
    dataset.PatientID = "../../escape"
    async with scp(disk) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="STORE")
    assert result.ok
    (stored,) = received_files(tmp_path)
    assert stored.parent.parent == tmp_path  # stayed inside the root
    assert stored.parent.name == ".._.._escape"


def test_layout_with_unknown_keyword_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="NoSuchKeyword"):
        adicom.DiskStorage(tmp_path, layout="{NoSuchKeyword}.dcm")


async def test_unwritable_destination_fails_the_instance_and_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    async with scp(adicom.DiskStorage(blocker / "store")) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="STORE", contexts=[(CT, [EXPLICIT, IMPLICIT])]
        ) as assoc:
            result = await adicom.store_instance(assoc, FILES["explicit"])
            assert result.status == 0xA700 and "cannot store the instance" in (result.error or "")
            assert str(tmp_path) not in (result.error or "")  # no server path to the peer
            # The association goes on: the next instance gets its own answer.
            again = await adicom.store_instance(assoc, FILES["explicit"])
            assert again.status == 0xA700
    assert not (blocker.parent / "store").exists()


async def test_full_disk_leaves_no_partial_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def full_disk_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if str(path).endswith(".part") and flags & os.O_WRONLY:
            # The temporary file is made (so its removal is checked), but
            # every write goes to /dev/full: ENOSPC.
            os.close(real_open(path, flags, mode, **kwargs))
            return real_open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        return real_open(path, flags, mode, **kwargs)

    # adicom.storage calls os.open through the os module (the one object
    # every importer shares), so patching it here reaches the store.
    monkeypatch.setattr(os, "open", full_disk_open)
    disk = adicom.DiskStorage(tmp_path)
    async with scp(disk) as server:
        (result,) = await adicom.store(
            "127.0.0.1", server.port, [FILES["explicit"]], called_ae="STORE"
        )
    assert result.status == 0xA700
    assert "No space left" in (result.error or "")
    assert received_files(tmp_path) == []
    assert list((tmp_path / ".incoming").iterdir()) == []


async def test_data_set_that_does_not_parse_fails_and_association_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    disk = adicom.DiskStorage(tmp_path)
    async with scp(disk) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="STORE", contexts=[(CT, [EXPLICIT])]
        ) as assoc:
            (context,) = assoc.contexts.values()
            garbage = b"\x08\x00\x18\x00ZZ\xff\xff" + bytes(50)
            response = await assoc.send_c_store(context.context_id, CT, "1.2.3.4", garbage)
            assert response.status == 0xC000
            assert response.affected_sop_instance_uid == "1.2.3.4"
            good = await adicom.store_instance(assoc, FILES["explicit"])
            assert good.ok
    assert len(received_files(tmp_path)) == 1
    assert list((tmp_path / ".incoming").iterdir()) == []


async def test_peer_aborting_mid_instance_leaves_nothing(tmp_path: pathlib.Path) -> None:
    opened = asyncio.Event()

    class Watched(adicom.DiskStorage):
        def open(self, context: adicom.StoreContext) -> IncomingInstance:
            instance = super().open(context)
            opened.set()  # the data of the same PDU is written in the same callback
            return instance

    disk = Watched(tmp_path)
    async with scp(disk) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        rq = AAssociateRQ(
            called_ae="STORE",
            calling_ae="RAW",
            presentation_contexts=(PresentationContextRQ(1, CT, (EXPLICIT,)),),
            user_information=UserInformation(16384, "1.2.3"),
        )
        writer.write(rq.encode())
        decoder = PDUReader()
        async with asyncio.timeout(5):
            while (answer := decoder.next_pdu()) is None:
                decoder.feed(await reader.read(65536))
        assert isinstance(answer, AAssociateAC)
        command = Command(
            CommandField.C_STORE_RQ,
            message_id=1,
            affected_sop_class_uid=CT,
            affected_sop_instance_uid="1.2.3.4",
            priority=0,
            command_data_set_type=0,
        )
        first_part = PDataTF(
            (PDV(1, True, True, command.encode()), PDV(1, False, False, bytes(1000)))
        )
        writer.write(first_part.encode())
        await writer.drain()
        async with asyncio.timeout(5):
            await opened.wait()
        assert list((tmp_path / ".incoming").glob("*.part"))
        writer.write(AAbort(0, 0).encode())
        await writer.drain()
        writer.close()
        async with asyncio.timeout(5):
            await server.wait_idle()
    assert list((tmp_path / ".incoming").iterdir()) == []
    assert received_files(tmp_path) == []


async def test_forward_answers_with_the_destination_status() -> None:
    destination = adicom.MemoryStorage()
    async with scp(destination) as final:
        forward = adicom.ForwardStorage("127.0.0.1", final.port, called_ae="STORE")
        async with adicom.Server("ROUTER", port=0, storage=forward) as router:
            ct = pydicom.dcmread(FILES["explicit"])
            ct_again = copy.deepcopy(ct)
            ct_again.SOPInstanceUID = generate_uid()
            first = await adicom.store(
                "127.0.0.1", router.port, [FILES["explicit"], ct_again], called_ae="ROUTER"
            )
            # The same SOP class and syntax reuse the association to the destination.
            assert final.stats["accepted"] == 1
            second = await adicom.store(
                "127.0.0.1", router.port, [FILES["jpeg"]], called_ae="ROUTER"
            )
            # A new SOP class needs a context the old association lacks.
            assert final.stats["accepted"] == 2
        assert [r.status for r in first + second] == [0, 0, 0]
    assert [d.SOPInstanceUID for d in destination.datasets] == [
        ct.SOPInstanceUID,
        ct_again.SOPInstanceUID,
        pydicom.dcmread(FILES["jpeg"]).SOPInstanceUID,
    ]


async def test_forward_to_unreachable_node_is_out_of_resources() -> None:
    async with scp(adicom.MemoryStorage()) as gone:
        port = gone.port
    forward = adicom.ForwardStorage("127.0.0.1", port)
    async with adicom.Server("ROUTER", port=0, storage=forward) as router:
        (result,) = await adicom.store(
            "127.0.0.1", router.port, [FILES["explicit"]], called_ae="ROUTER"
        )
    assert result.status == 0xA700


async def test_more_than_128_contexts_use_more_associations() -> None:
    memory = adicom.MemoryStorage()
    template = pydicom.dcmread(FILES["explicit"])
    classes = list(adicom.presentation.STORAGE_SOP_CLASSES)[:130]
    datasets = []
    for sop_class in classes:
        dataset = copy.deepcopy(template)
        dataset.SOPClassUID = sop_class
        dataset.SOPInstanceUID = generate_uid()
        datasets.append(dataset)
    async with scp(memory) as server:
        results = await adicom.store("127.0.0.1", server.port, datasets, called_ae="STORE")
        # Explicit VR instances propose two contexts per class (explicit,
        # and implicit to fall back on): 260 contexts, 128 per association.
        assert server.stats["accepted"] == 3
    assert all(r.ok for r in results)
    assert [d.SOPClassUID for d in memory.datasets] == classes


async def test_store_sources_that_are_not_dicom_are_reported(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ct.dcm").write_bytes(pathlib.Path(FILES["explicit"]).read_bytes())
    async with scp(adicom.MemoryStorage()) as server:
        results = await adicom.store("127.0.0.1", server.port, [tmp_path], called_ae="STORE")
    by_name = {pathlib.Path(r.source).name: r for r in results}
    assert by_name["notes.txt"].error == "not a DICOM file"
    assert by_name["ct.dcm"].ok


async def test_folders_removed_behind_our_back_are_made_again(tmp_path: pathlib.Path) -> None:
    import shutil

    disk = adicom.DiskStorage(tmp_path)
    async with scp(disk) as server:
        (first,) = await adicom.store(
            "127.0.0.1", server.port, [FILES["explicit"]], called_ae="STORE"
        )
        assert first.ok
        for child in tmp_path.iterdir():
            shutil.rmtree(child)  # .incoming and the study folder go away
        (again,) = await adicom.store(
            "127.0.0.1", server.port, [FILES["explicit"]], called_ae="STORE"
        )
    assert again.ok and len(received_files(tmp_path)) == 1


def test_an_instance_about_to_be_sent_is_read_once_if_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adicom import storesources
    from adicom.fileformat import read_file_meta

    path = FILES["explicit"]
    raw = pathlib.Path(path).read_bytes()
    with open(path, "rb") as fp:
        _, offset = read_file_meta(fp)
    ready = storesources.prepare_source(path, preload=True)
    assert ready.data is not None and bytes(ready.data) == raw[offset:]
    assert ready.offset == offset and ready.sop_instance_uid and not ready.error
    assert storesources.prepare_source(path).data is None  # meta only, for a batch of files
    monkeypatch.setattr(storesources, "PRELOAD_LIMIT", len(raw) - 1)
    assert storesources.prepare_source(path, preload=True).data is None  # large: streamed when sent


async def test_an_instance_not_encoded_as_its_syntax_says_is_stored_as_received(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom's SC_rgb_jpeg.dcm: implicit VR under an explicit syntax (met in the wild)."""
    path = get_testdata_file("SC_rgb_jpeg.dcm")
    assert path is not None
    disk = adicom.DiskStorage(tmp_path)
    async with scp(disk) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [path], called_ae="STORE")
    assert result.status == 0x0000, result.error
    (stored,) = received_files(tmp_path)
    sent = pathlib.Path(path).read_bytes()
    with open(path, "rb") as fp:
        from adicom.fileformat import read_file_meta

        _, offset = read_file_meta(fp)
    with open(stored, "rb") as fp:
        _, stored_offset = read_file_meta(fp)
    assert stored.read_bytes()[stored_offset:] == sent[offset:]  # byte for byte
    assert "implicit VR" in caplog.text  # and the oddity is in the log


@pytest.mark.parametrize(
    ("charset", "raw", "text"),
    [
        ("", b"Doe^John ", "Doe^John"),
        ("ISO_IR 100", "Müller^Jörg".encode("latin-1"), "Müller^Jörg"),
        ("ISO_IR 192", "Иванов^Иван".encode(), "Иванов^Иван"),
        # ISO 2022: ASCII bytes, but the escape sequences switch to JIS X 0208.
        (
            "\\ISO 2022 IR 87",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
            "Yamada^Tarou=山田^太郎",
        ),
    ],
)
def test_layout_text_is_decoded_in_its_character_set(charset: str, raw: bytes, text: str) -> None:
    encodings = instancevalues._encodings(charset)
    assert instancevalues._decode_text(raw, encodings) == text


@pytest.mark.parametrize(
    ("before_uids", "pixels"),
    [
        (300, 600_000),  # the UIDs come a few fragments in; the data needs several writes
        (1500, 4_000),  # the UIDs come after 64 KiB: pydicom reads them from the file
    ],
)
async def test_layout_attributes_found_however_the_data_set_arrives(
    tmp_path: pathlib.Path, before_uids: int, pixels: int
) -> None:
    # Fragments of 4 KiB: the layout's attributes are looked for as they
    # come, and the fragments are written in batches; the file must be the
    # data set sent, at the place its UIDs say.
    dataset = pydicom.dcmread(FILES["explicit"])
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    # (0008,1140) comes before (0020,000D) and (0020,000E).
    dataset.ReferencedImageSequence = [
        Dataset(ReferencedSOPClassUID=CT, ReferencedSOPInstanceUID=generate_uid())
        for _ in range(before_uids)
    ]
    dataset.Rows, dataset.Columns = pixels // 400, 200  # 16-bit
    dataset.PixelData = os.urandom(pixels)
    disk = adicom.DiskStorage(tmp_path)
    async with scp(disk, max_pdu=4096) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="STORE")
    assert result.ok, result.error
    (path,) = received_files(tmp_path)
    assert path == tmp_path / dataset.StudyInstanceUID / dataset.SeriesInstanceUID / (
        dataset.SOPInstanceUID + ".dcm"
    )
    stored = pydicom.dcmread(path)
    assert stored.PixelData == dataset.PixelData
    assert len(stored.ReferencedImageSequence) == before_uids
    assert list((tmp_path / ".incoming").iterdir()) == []


DEFLATED = "1.2.840.10008.1.2.1.99"


def _deflated_instance(before_uids: bytes = b"") -> tuple[Dataset, bytes]:
    """A Secondary Capture data set in Deflated Explicit VR LE, and its bytes on the wire."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    if before_uids:
        # A private OB value before (0020,000D): the layout's UIDs come after it.
        dataset.add_new(0x00091010, "LO", "ADICOM TEST")
        dataset.add_new(0x00091011, "OB", before_uids)
    return dataset, encode_dataset(dataset, DEFLATED)


async def _receive(disk: adicom.DiskStorage, dataset: Dataset, encoded: bytes) -> int:
    incoming = disk.open(
        StoreContext(
            calling_ae="SCU",
            called_ae="STORE",
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            transfer_syntax=DEFLATED,
        )
    )
    view = memoryview(encoded)
    for start in range(0, len(view), 16384):  # as the PDVs would bring it
        incoming.write(view[start : start + 16384])
    return await incoming.finish()


@pytest.mark.parametrize("before", [0, 200_000], ids=["in-the-head", "past-the-head"])
async def test_a_deflated_instance_is_filed_by_its_inflated_head(
    tmp_path: pathlib.Path, before: int
) -> None:
    disk = adicom.DiskStorage(tmp_path)
    dataset, encoded = _deflated_instance(os.urandom(before) if before else b"")
    assert await _receive(disk, dataset, encoded) == 0x0000
    (path,) = received_files(tmp_path)
    assert path.parent.name == dataset.SeriesInstanceUID
    assert pydicom.dcmread(path).SOPInstanceUID == dataset.SOPInstanceUID


async def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path: pathlib.Path) -> None:
    # 64 MiB of zeros before the UIDs, sent as ~64 KB: the layout is looked
    # for in the first 4 MiB inflated, no further, and the instance refused.
    disk = adicom.DiskStorage(tmp_path)
    dataset, encoded = _deflated_instance(bytes(64 << 20))
    assert len(encoded) < 1 << 20
    assert await _receive(disk, dataset, encoded) == 0xC000
    assert received_files(tmp_path) == []
    assert list((tmp_path / ".incoming").iterdir()) == []


def _multiframe(path: pathlib.Path, frames: int, private: int = 0) -> Dataset:
    """A multi-frame explicit VR LE file of ``frames`` 256 x 256 x 16-bit frames.

    The pydicom test file it starts from ends with trailing padding after
    the pixel data; ``private`` bytes of a private OB come before them.
    """
    dataset = pydicom.dcmread(FILES["explicit"])
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.Rows = dataset.Columns = 256
    dataset.NumberOfFrames = frames
    dataset.PixelData = os.urandom(frames * 256 * 256 * 2)
    if private:
        dataset.add_new(0x00091010, "LO", "ADICOM TEST")
        dataset.add_new(0x00091011, "OB", bytes(private))
    dataset.save_as(path, enforce_file_format=True)
    return dataset


@pytest.mark.parametrize(("source", "target"), [(EXPLICIT, IMPLICIT), (IMPLICIT, EXPLICIT)])
def test_a_large_file_is_converted_streaming_its_pixel_data(
    tmp_path: pathlib.Path, source: str, target: str
) -> None:
    # Explicit to implicit LE changes headers only: the head (and the
    # trailing padding after the pixel data) is re-encoded, the 5 MB of pixel
    # data read from the file as it goes; the bytes are those of a whole
    # conversion by pydicom.
    path = tmp_path / "mf.dcm"
    dataset = _multiframe(path, 40)
    if source == IMPLICIT:
        dataset.file_meta.TransferSyntaxUID = UID(IMPLICIT)
        dataset.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    with open(path, "rb") as fp:
        _, offset = read_file_meta(fp)
    converted = ConvertedFile.open(str(path), offset, source, target)
    assert converted is not None
    try:
        streamed = b"".join(iter(lambda: converted.read(1 << 16), b""))
    finally:
        converted.close()
    assert len(streamed) == converted.size
    assert streamed == encode_dataset(pydicom.dcmread(path), target)
    assert dataset.PixelData in streamed


async def test_a_large_file_that_cannot_stream_fails_alone_without_being_read(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adicom import storescu

    monkeypatch.setattr(storescu, "CONVERT_LIMIT", 1 << 20)
    big = tmp_path / "deep.dcm"
    _multiframe(big, 2, private=2 << 20)  # pixel data beyond the head read: no streaming
    small = tmp_path / "small.dcm"
    _multiframe(small, 2)
    memory = adicom.MemoryStorage()
    async with scp(memory, transfer_syntaxes=[IMPLICIT]) as server:
        async with adicom.connect(
            "127.0.0.1", server.port, called_ae="STORE", contexts=[(CT, [IMPLICIT])]
        ) as assoc:
            refused = await adicom.store_instance(assoc, big)
            sent = await adicom.store_instance(assoc, small)
    assert refused.status is None and "converts files whole only up to 1 MiB" in (
        refused.error or ""
    )
    assert sent.ok and len(memory.datasets) == 1


async def test_a_private_storage_class_is_stored(tmp_path: pathlib.Path) -> None:
    csa = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image: no registry names it
    dataset = pydicom.dcmread(FILES["explicit"])
    dataset.SOPClassUID = csa
    dataset.SOPInstanceUID = generate_uid()
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [dataset], called_ae="STORE")
    assert result.ok, result.error
    (path,) = received_files(tmp_path)
    assert pydicom.dcmread(path).SOPClassUID == csa


async def test_the_requestors_syntax_is_kept_when_it_proposes_several_in_one_context(
    tmp_path: pathlib.Path,
) -> None:
    # As storescu -xw +C does: the file's own syntax first, the uncompressed
    # ones after it, all in one context. The SCP keeps the file as sent.
    source = pydicom.dcmread(FILES["jpeg2000"])
    syntax = str(source.file_meta.TransferSyntaxUID)
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        async with adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="STORE",
            contexts=[(source.SOPClassUID, [syntax, EXPLICIT, IMPLICIT])],
        ) as assoc:
            (context,) = assoc.contexts.values()
            assert context.transfer_syntax == syntax
            result = await adicom.store_instance(assoc, FILES["jpeg2000"])
        assert result.ok, result.error
    (path,) = received_files(tmp_path)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == source.PixelData


async def test_an_scp_may_prefer_its_own_syntax_or_restrict_its_classes() -> None:
    source = pydicom.dcmread(FILES["explicit"])
    memory = adicom.MemoryStorage()
    async with scp(memory, prefer_requestor_syntax=False, storage_sop_classes=[CT]) as server:
        async with adicom.connect(
            "127.0.0.1",
            server.port,
            called_ae="STORE",
            contexts=[(CT, [IMPLICIT, EXPLICIT]), ("1.3.12.2.1107.5.9.1", [EXPLICIT])],
        ) as assoc:
            ct, csa = assoc.contexts.values()
            assert ct.transfer_syntax == EXPLICIT  # ours first: explicit before implicit
            assert not csa.accepted and csa.result == 3
            assert (await adicom.store_instance(assoc, source)).ok


class _Recorder(adicom.StorageHandler):
    """Keeps each received data set's fragments, as they came."""

    def __init__(self) -> None:
        self.fragments: list[list[bytes]] = []

    def open(self, context: StoreContext) -> IncomingInstance:
        parts: list[bytes] = []
        self.fragments.append(parts)

        class Incoming(IncomingInstance):
            def write(self, data: memoryview, /) -> None:
                parts.append(bytes(data))

            async def finish(self) -> int:
                return 0

        return Incoming(context)


def _odd_deflated_file(path: pathlib.Path, size: int) -> bytes:
    """A deflated Part 10 file whose stream is odd and unpadded (as some are); the stream."""
    dataset, _ = _deflated_instance(os.urandom(size))  # random: deflate cannot shrink it
    while True:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        stream = compressor.compress(encode_dataset(dataset, EXPLICIT)) + compressor.flush()
        if len(stream) % 2:
            break
        dataset.PatientID = str(dataset.get("PatientID", "")) + "xx"  # another length
    meta = encode_file_meta(
        str(dataset.SOPClassUID),
        str(dataset.SOPInstanceUID),
        DEFLATED,
        implementation_class_uid="1.2.3",
    )
    path.write_bytes(meta + stream)
    return stream


@pytest.mark.parametrize(
    "size", [1000, 3 << 20], ids=["read-whole", "read-as-sent"]
)  # either side of storescu.PRELOAD_LIMIT
async def test_an_odd_deflated_stream_is_sent_padded_in_even_fragments(
    tmp_path: pathlib.Path, size: int
) -> None:
    # PS3.5 A.5: an odd deflated stream ends with a NUL byte; PS3.8 E.1: every
    # fragment is even. pydicom's image_dfl.dcm lacks the pad; DCMTK aborts
    # on the odd fragment it would make.
    stream = _odd_deflated_file(tmp_path / "odd.dcm", size)
    recorder = _Recorder()
    async with scp(recorder) as server:
        (result,) = await adicom.store(
            "127.0.0.1", server.port, [tmp_path / "odd.dcm"], called_ae="STORE"
        )
    assert result.status == 0, result
    (parts,) = recorder.fragments
    assert all(len(p) % 2 == 0 for p in parts), [len(p) for p in parts]
    assert b"".join(parts) == stream + b"\0"
    # The pad follows the deflate stream's end: the data set still decodes.
    decoded = decode_dataset(b"".join(parts), DEFLATED)
    assert decoded.SOPInstanceUID == pydicom.dcmread(tmp_path / "odd.dcm").SOPInstanceUID


def test_encode_dataset_pads_an_odd_deflated_stream() -> None:
    for n in range(8):  # some of these compress to an odd length
        dataset, encoded = _deflated_instance(os.urandom(n))
        assert len(encoded) % 2 == 0
        assert decode_dataset(encoded, DEFLATED).SOPInstanceUID == dataset.SOPInstanceUID


async def test_stores_are_answered_from_the_callback_unless_they_have_more_to_say(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A C-STORE stored at once is answered Success where its last fragment
    # was read (Association.respond_now); a refusal (with its comment and
    # offending element) goes through Association.respond.
    responded: list[int] = []
    respond = adicom.Association.respond

    async def counting(self: adicom.Association, request: Any, status: int, **fields: Any) -> None:
        responded.append(status)
        await respond(self, request, status, **fields)

    monkeypatch.setattr(adicom.Association, "respond", counting)
    good = pydicom.dcmread(FILES["explicit"])
    bad = copy.deepcopy(good)
    bad.SOPInstanceUID = generate_uid()
    disk = adicom.DiskStorage(tmp_path / "in")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID we make
        bad.SeriesInstanceUID = "1.2.03"  # a leading zero: not a UID (PS3.5 9.1)
        async with scp(disk) as server:
            # One association each: stores sent back to back may come in one
            # read, and one with more of the peer's messages behind it waits
            # for them (Driver._dispatch), however it could be answered.
            results = [
                *await adicom.store("127.0.0.1", server.port, [good], called_ae="STORE"),
                *await adicom.store("127.0.0.1", server.port, [bad], called_ae="STORE"),
            ]
    assert [r.status for r in results] == [0x0000, 0xA900]
    assert responded == [0xA900]
    (stored,) = received_files(tmp_path / "in")
    same_content(good, pydicom.dcmread(stored))


async def test_required_uids_given_as_a_generator_are_still_checked(
    tmp_path: pathlib.Path,
) -> None:
    # The keywords are read once: a generator must not leave the storage
    # without its checks (two instances whose bad UIDs make one file name
    # would then both be acknowledged, the first lost under the second).
    required = (k for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"))
    disk = adicom.DiskStorage(tmp_path / "in", required=required)
    assert disk.required == ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
    assert [keyword for keyword, is_uid in disk.required_checks if is_uid] == list(disk.required)
    bad = pydicom.dcmread(FILES["explicit"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID we make
        bad.SOPInstanceUID = "1.2.03.x/"  # not a UID (PS3.5 9.1)
        async with scp(disk) as server:
            results = await adicom.store("127.0.0.1", server.port, [bad], called_ae="STORE")
    assert [r.status for r in results] == [0xA900]
    assert received_files(tmp_path / "in") == []


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (
            "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
            "1.2.3/1.2.3.4/1.2.3.4.5.dcm",
        ),
        ("{PatientID}/{{literal}}/{SOPInstanceUID}", "a_b_../{literal}/1.2.3.4.5"),
        ("{StudyDate:.4}/{PatientName!s}/{SOPInstanceUID}", "2020/Doe^John/1.2.3.4.5"),
        ("{PatientID}{Modality}.dcm", "a_b_..unknown.dcm"),
        ("{PatientID}/..", "a_b_../.."),
    ],
)
def test_file_names_follow_the_layout(tmp_path: pathlib.Path, layout: str, expected: str) -> None:
    # Plain layouts are joined piece by piece, the rest go through format():
    # both name a file alike, values made safe as path components.
    storage = adicom.DiskStorage(tmp_path, layout)
    values = {
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "SOPInstanceUID": "1.2.3.4.5",
        "PatientID": "a/b ..",
        "PatientName": "Doe^John",
        "StudyDate": "20200101",
    }
    assert storage.final_name(values) == f"{tmp_path}{os.sep}{expected}"
    assert storage.final_path(values) == tmp_path / expected
    absolute = adicom.DiskStorage(tmp_path, f"{tmp_path}/elsewhere/{layout}")
    assert absolute.final_name(values) == f"{tmp_path}/elsewhere/{expected}"


def test_on_filed_has_the_name_and_the_stat_and_on_stored_a_path(tmp_path: pathlib.Path) -> None:
    # on_filed: the name as text and the stat of the file as filed; the
    # instance's path and the storage's stored list are Paths, made when asked.
    filed: list[tuple[str, os.stat_result]] = []
    stored: list[pathlib.Path] = []
    storage = adicom.DiskStorage(
        tmp_path,
        on_filed=lambda name, values, context, raw, stat: filed.append((name, stat)),
        on_stored=lambda path, values, context, raw: stored.append(path),
    )
    dataset = pydicom.dcmread(FILES["explicit"])
    context = StoreContext("A", "B", CT, str(dataset.SOPInstanceUID), EXPLICIT)
    instance = storage.open(context)
    instance.write(memoryview(encode_dataset(dataset, EXPLICIT)))
    assert instance.finish_now() == 0
    (where,) = received_files(tmp_path)
    assert instance.path == where and isinstance(instance.path, pathlib.Path)
    assert stored == [where] and list(storage.stored) == [where]
    ((name, stat),) = filed
    assert name == str(where) and isinstance(name, str)
    now = os.stat(where)
    assert (stat.st_size, stat.st_mtime_ns, stat.st_ino) == (
        now.st_size,
        now.st_mtime_ns,
        now.st_ino,
    )
