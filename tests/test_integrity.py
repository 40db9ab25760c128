"""What a storage SCP keeps: exactly what it acknowledges, one copy per instance.

Refusals with PS3.4 B.2.3's statuses and nothing stored; a group 0002 inside
the data set never written; one file per SOP Instance UID whatever order and
study the copies come in; no server path in a comment; unfinished files of a
killed process removed at start. Against a real Server over loopback, with
pydicom's own test files.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import struct
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import adicom
from adicom.archive import Archive
from adicom.elements import (
    DataSetTruncated,
    check_whole,
    scan_elements,
    skip_group_0002,
)
from adicom.fileformat import (
    encode_dataset,
    is_valid_uid,
)

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def ct() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    dataset = pydicom.dcmread(path)
    dataset.SOPInstanceUID = generate_uid()
    return dataset


@contextlib.asynccontextmanager
async def scp(storage: adicom.StorageHandler, **options: Any) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("STORE", port=0, storage=storage, **options) as server:
        yield server


def files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)


async def send_raw(
    server: adicom.Server, data: bytes, *, sop_class: str = CT, sop_instance: str = "1.2.3"
) -> adicom.dimse.Command:
    """A C-STORE-RQ whose data set is exactly these bytes (implicit VR LE)."""
    async with adicom.connect(
        "127.0.0.1", server.port, called_ae="STORE", contexts=[(sop_class, [IMPLICIT])]
    ) as assoc:
        return await assoc.send_c_store(1, sop_class, sop_instance, data)


@pytest.mark.parametrize(
    ("data", "status", "comment"),
    [
        (b"", 0xC000, "the data set is empty"),
        # Random bytes either fail to parse or parse into elements that are
        # not an instance; both are refused as data that cannot be understood.
        (os.urandom(1000), 0xC000, ("does not parse", "not an instance")),
        (b"\x08\x00\x16\x00\x30\x00\x00\x00abc", 0xC000, "does not parse"),  # cut short
    ],
    ids=["empty", "random", "truncated"],
)
async def test_what_does_not_parse_is_refused_and_nothing_kept(
    tmp_path: pathlib.Path, data: bytes, status: int, comment: str | tuple[str, ...]
) -> None:
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        response = await send_raw(server, data)
        assert response.status == status
        said = response.error_comment or ""
        assert any(c in said for c in ((comment,) if isinstance(comment, str) else comment)), said
        assert str(tmp_path) not in (response.error_comment or "")
    assert files(tmp_path) == []
    assert list((tmp_path / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("change", "offending"),
    [
        (lambda d: delattr(d, "StudyInstanceUID"), 0x0020000D),
        (lambda d: setattr(d, "SeriesInstanceUID", "1.2/99"), 0x0020000E),
        (lambda d: setattr(d, "StudyInstanceUID", ".1.2"), 0x0020000D),
        (lambda d: setattr(d, "StudyInstanceUID", "1." + "2" * 70), 0x0020000D),
        (lambda d: setattr(d, "SOPInstanceUID", "9.9.9"), 0x00080018),
        (lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.4"), 0x00080016),
    ],
    ids=["no-study", "slash", "leading-dot", "too-long", "other-instance", "other-class"],
)
async def test_what_cannot_be_filed_is_refused_with_the_offending_element(
    tmp_path: pathlib.Path, change: Any, offending: int
) -> None:
    dataset = ct()
    named = str(dataset.SOPInstanceUID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UIDs we make
        change(dataset)
        encoded = encode_dataset(dataset, IMPLICIT)
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        response = await send_raw(server, encoded, sop_instance=named)
    assert response.status == 0xA900
    assert response.offending_element == (offending,)
    assert files(tmp_path) == []


async def test_a_group_0002_inside_the_data_set_is_dropped(tmp_path: pathlib.Path) -> None:
    dataset = ct()
    body = encode_dataset(dataset, IMPLICIT)
    # A sender's own file meta (explicit VR LE, as PS3.10 writes it), naming
    # another transfer syntax and another instance, before the data set.
    injected = _explicit(0x00020010, b"UI", b"1.2.840.10008.1.2.2\x00") + _explicit(
        0x00020003, b"UI", b"9.9.9.9\x00"
    )
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        response = await send_raw(server, injected + body, sop_instance=dataset.SOPInstanceUID)
    assert response.status == 0xB006  # elements discarded
    (path,) = files(tmp_path)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == IMPLICIT
    assert stored.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert stored.SOPInstanceUID == dataset.SOPInstanceUID
    assert path.read_bytes().count(b"9.9.9.9") == 0


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def test_group_0002_is_measured_only_as_far_as_bytes_allow() -> None:
    element = _explicit(0x00020010, b"UI", b"1.2\x00")
    assert skip_group_0002(element + b"\x08\x00", little=True, complete=False) == len(element)
    assert skip_group_0002(element[:5], little=True, complete=False) is None
    with pytest.raises(ValueError, match="group 0002"):
        skip_group_0002(element[:10], little=True, complete=True)
    assert skip_group_0002(b"\x08\x00\x16\x00", little=True, complete=False) == 0


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.2.0.3", True),
        ("1.02", False),
        ("1..2", False),
        (".1", False),
        ("1.2.", False),
        ("1.2/99", False),
        ("1.2_99", False),
        ("1.2\\99", False),
        ("1." + "1" * 63, False),
        ("", False),
        ("1.²", False),
    ],
)
def test_uids_are_checked_as_ps3_5_9_1_says(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


async def test_one_instance_per_sop_instance_uid_across_studies_and_restarts(
    tmp_path: pathlib.Path,
) -> None:
    # The same SOP Instance UID sent again under 20 other studies: the
    # archive keeps one file, the last, and its index points to it; after a
    # restart the rebuilt index agrees.
    archive = Archive(tmp_path)
    await archive.open()
    base = ct()
    async with adicom.Server("STORE", port=0, **archive.handlers()) as server:
        for _ in range(20):
            copy = ct()
            copy.SOPInstanceUID = base.SOPInstanceUID
            copy.StudyInstanceUID = generate_uid()
            (result,) = await adicom.store("127.0.0.1", server.port, [copy], called_ae="STORE")
            assert result.ok, result.error
    archive.close()
    (path,) = files(tmp_path)
    assert pydicom.dcmread(path).StudyInstanceUID == copy.StudyInstanceUID
    again = Archive(tmp_path)
    await again.open()
    try:
        assert await again.index.count() == 1
        assert await again.index.path_of(str(base.SOPInstanceUID)) == path
    finally:
        again.close()


async def test_leftovers_of_a_killed_receiver_are_removed_at_start(
    tmp_path: pathlib.Path,
) -> None:
    incoming = tmp_path / ".incoming"
    incoming.mkdir()
    dead = incoming / "999999999-abcdef01-1.part"  # no such process
    dead.write_bytes(b"half an instance")
    alive = incoming / f"{os.getpid()}-abcdef01-1.part"  # ours: another storage's, maybe
    alive.write_bytes(b"being received")
    storage = adicom.DiskStorage(tmp_path)
    assert not dead.exists() and alive.exists()
    assert storage.remove_leftovers() == 0
    alive.unlink()


async def test_fsync_stores_the_same(tmp_path: pathlib.Path) -> None:
    async with scp(adicom.DiskStorage(tmp_path, fsync=True)) as server:
        (result,) = await adicom.store("127.0.0.1", server.port, [ct()], called_ae="STORE")
    assert result.ok and len(files(tmp_path)) == 1


@pytest.mark.parametrize(("trailer", "tag"), [(True, 0xFFFCFFFC), (False, 0x7FE00010)])
async def test_a_file_cut_short_is_refused_not_stored(
    tmp_path: pathlib.Path, trailer: bool, tag: int
) -> None:
    # A truncated file sent as it lies: its start parses; its last element,
    # the Pixel Data or the trailing padding after it, is cut.
    dataset = ct()
    if not trailer:
        del dataset[0xFFFCFFFC]  # CT_small.dcm ends with Data Set Trailing Padding
    whole = encode_dataset(dataset, IMPLICIT)
    async with scp(adicom.DiskStorage(tmp_path)) as server:
        response = await send_raw(server, whole[:-100], sop_instance=dataset.SOPInstanceUID)
    assert response.status == 0xC000
    name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    assert f"cut short: 100 bytes of {name} missing" in (response.error_comment or "")
    assert response.offending_element == (tag,)
    assert files(tmp_path) == []


async def test_names_in_every_character_set_come_back_as_they_were_stored(
    tmp_path: pathlib.Path,
) -> None:
    # pydicom's charset files: ISO 8859 (Latin, Cyrillic, Greek, Arabic,
    # Hebrew), ISO 2022 with escapes (Japanese, Korean), GB18030, UTF-8. The
    # archive answers each name in its own character set, byte for byte, with
    # its (0008,0005); matching on a non-ASCII name finds it.
    from pydicom.data import get_charset_files

    from adicom import qrscu

    sources = [pathlib.Path(f) for f in get_charset_files() if f.endswith(".dcm")]
    archive = Archive(tmp_path)
    await archive.open()
    try:
        async with adicom.Server("STORE", port=0, **archive.handlers()) as server:
            results = await adicom.store("127.0.0.1", server.port, sources, called_ae="STORE")
            refused = {pathlib.Path(r.source).name for r in results if not r.ok}
            # Two files are single sequence items without any UID: not instances.
            assert refused == {"chrSQEncoding.dcm", "chrSQEncoding1.dcm"}
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="STORE", contexts=qrscu.find_contexts()
            ) as assoc:
                # Two pairs share a SOP Instance UID (the same data in another
                # encoding): the archive keeps one copy, the last sent.
                last = {
                    pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID: source
                    for source in sources
                    if source.name not in refused
                }
                assert len(last) == len(sources) - 2 - 2
                for source in last.values():
                    original = pydicom.dcmread(source, stop_before_pixels=True)
                    query = Dataset()
                    query.QueryRetrieveLevel = "IMAGE"
                    query.StudyInstanceUID = original.StudyInstanceUID
                    query.SeriesInstanceUID = original.SeriesInstanceUID
                    query.SOPInstanceUID = original.SOPInstanceUID
                    query.PatientName = ""
                    async with qrscu.find(assoc, query) as found:
                        (answer,) = [a async for a in found]
                    assert answer.PatientName == original.PatientName, source.name
                    assert answer.get("SpecificCharacterSet") == original.SpecificCharacterSet
                # Matching on a non-ASCII value (PS3.4 C.2.2.2, PS3.5 6.1).
                german = pydicom.dcmread(next(s for s in sources if s.name == "chrGerm.dcm"))
                query = Dataset()
                query.SpecificCharacterSet = "ISO_IR 100"
                query.QueryRetrieveLevel = "STUDY"
                query.PatientName = "Äneas^Rüdiger"
                query.StudyInstanceUID = ""
                async with qrscu.find(assoc, query) as found:
                    (study,) = [a async for a in found]
                assert study.StudyInstanceUID == german.StudyInstanceUID
    finally:
        archive.close()


async def test_c_find_matches_and_returns_sequence_keys(tmp_path: pathlib.Path) -> None:
    # PS3.4 C.2.2.2.6: an item of keys matches when one stored item matches
    # them all; an empty item is universal and returns the sequence whole.
    from adicom import qrscu

    def with_procedure(code: str) -> Dataset:
        dataset = ct()
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "LN", f"code {code}"
        dataset.ProcedureCodeSequence = [item]
        return dataset

    chest, head = with_procedure("24627-2"), with_procedure("24725-4")
    archive = Archive(tmp_path)
    await archive.open()
    try:
        async with adicom.Server("STORE", port=0, **archive.handlers()) as server:
            results = await adicom.store("127.0.0.1", server.port, [chest, head], called_ae="STORE")
            assert all(r.ok for r in results)
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="STORE", contexts=qrscu.find_contexts()
            ) as assoc:

                async def studies(**item_keys: str) -> list[Dataset]:
                    query = Dataset()
                    query.QueryRetrieveLevel = "STUDY"
                    query.StudyInstanceUID = ""
                    item = Dataset()
                    for keyword, value in item_keys.items():
                        setattr(item, keyword, value)
                    query.ProcedureCodeSequence = [item]
                    async with qrscu.find(assoc, query) as found:
                        return [a async for a in found]

                (match,) = await studies(CodeValue="24627-2", CodeMeaning="")
                assert match.StudyInstanceUID == chest.StudyInstanceUID
                (returned,) = match.ProcedureCodeSequence
                assert returned.CodeMeaning == "code 24627-2"
                assert "CodingSchemeDesignator" not in returned  # only the keys asked
                (wild,) = await studies(CodeValue="24725*")
                assert wild.StudyInstanceUID == head.StudyInstanceUID
                everything = await studies()  # universal: every study, sequence whole
                assert len(everything) == 2
                assert all(len(s.ProcedureCodeSequence) == 1 for s in everything)
                assert await studies(CodeValue="0000-0") == []
    finally:
        archive.close()


def test_names_match_without_their_empty_trailing_parts() -> None:
    # PS3.5 6.2.1.1: trailing empty components and groups may go unsent; a
    # query without them must still find the name stored with them.
    from adicom.archive.index import fold_name

    assert fold_name("Wang^XiaoDong=王^小東=") == fold_name("wang^xiaodong=王^小東")
    assert fold_name("Doe^John^^^") == fold_name("DOE^JOHN") == "doe^john"
    assert fold_name("Doe^John=^=") == "doe^john"
    assert fold_name("=山田^太郎") == "=山田^太郎"  # an empty leading group stays
    assert fold_name("Doe^John") != fold_name("Doe^Jon")


async def test_image_level_answers_say_the_syntax_each_instance_is_held_in(
    tmp_path: pathlib.Path,
) -> None:
    # (0008,3002) Available Transfer Syntax UID: what a C-GET requestor needs
    # to offer the right presentation contexts (adicom get asks for it).
    from pydicom.data import get_testdata_file

    from adicom import qrscu

    names = ("CT_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm")
    sources = [pathlib.Path(str(get_testdata_file(name))) for name in names]
    held = {
        str(ds.SOPInstanceUID): str(ds.file_meta.TransferSyntaxUID)
        for ds in (pydicom.dcmread(s, stop_before_pixels=True) for s in sources)
    }
    archive = Archive(tmp_path)
    await archive.open()
    try:
        async with adicom.Server("STORE", port=0, **archive.handlers()) as server:
            results = await adicom.store("127.0.0.1", server.port, sources, called_ae="STORE")
            assert all(r.ok for r in results), results
            async with adicom.connect(
                "127.0.0.1", server.port, called_ae="STORE", contexts=qrscu.find_contexts()
            ) as assoc:
                answered = {}
                for source in sources:
                    original = pydicom.dcmread(source, stop_before_pixels=True)
                    query = Dataset()
                    query.QueryRetrieveLevel = "IMAGE"
                    query.StudyInstanceUID = original.StudyInstanceUID
                    query.SeriesInstanceUID = original.SeriesInstanceUID
                    query.SOPInstanceUID = ""
                    query.AvailableTransferSyntaxUID = ""
                    async with qrscu.find(assoc, query) as found:
                        for answer in [a async for a in found]:
                            uid = str(answer.SOPInstanceUID)
                            answered[uid] = str(answer.AvailableTransferSyntaxUID)
    finally:
        archive.close()
    assert answered == held


async def test_a_dicomdir_sent_by_c_store_is_not_archived(tmp_path: pathlib.Path) -> None:
    # A sender that does not skip DICOMDIRs (adicom store and storescu do):
    # refused as no instance, nothing filed, and queries still work.
    path = get_testdata_file("DICOMDIR")
    assert path is not None
    dicomdir = pydicom.dcmread(path)
    media_storage_directory = "1.2.840.10008.1.3.10"
    archive = Archive(tmp_path)
    await archive.open()
    try:
        async with adicom.Server("STORE", port=0, **archive.handlers()) as server:
            response = await send_raw(
                server,
                encode_dataset(dicomdir, IMPLICIT),
                sop_class=media_storage_directory,
                sop_instance=str(dicomdir.file_meta.MediaStorageSOPInstanceUID),
            )
            assert response.status == 0xC000
            assert (response.error_comment or "").startswith("not an instance")
            client = adicom.DicomClient("SCU")
            node = adicom.DicomNode(aet="STORE", host="127.0.0.1", port=server.port)
            assert await client.find_studies(adicom.StudyQuery(), node) == []
    finally:
        archive.close()
    assert files(tmp_path) == []


@pytest.mark.parametrize("transfer", [EXPLICIT, IMPLICIT])
def test_check_whole_from_where_the_scan_stopped_sees_every_cut(transfer: str) -> None:
    """Going on from scan_elements' resume finds a cut wherever the data set is cut."""
    data = encode_dataset(ct(), transfer)
    implicit = transfer == IMPLICIT
    wanted = frozenset({0x00080016, 0x00080018, 0x0020000D, 0x0020000E})
    cuts = 0
    for end in [*range(0, 400, 7), *range(len(data) - 300, len(data) + 1, 5)]:
        cut = data[:end]
        try:
            check_whole(cut, implicit=implicit, little=True)
            whole = True
        except DataSetTruncated:
            whole = False
        resume: list[int] = []
        try:
            found = scan_elements(cut, wanted, implicit=implicit, complete=True, resume=resume)
            check_whole(cut, implicit=implicit, little=True, start=resume[0])
            assert found is not None and (end < len(data) or len(found) == len(wanted))
            resumed = True
        except DataSetTruncated:
            resumed = False
        assert resumed is whole, end
        cuts += not whole
    assert cuts > 40  # most ends fall inside an element (a few on a boundary)
