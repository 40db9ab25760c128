"""The values a DiskStorage files an instance by, read from the data set as it arrives."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

import adicom
from adicom import instancevalues
from adicom.fileformat import EXPLICIT_VR_LITTLE_ENDIAN
from adicom.storage import IncomingInstance, StoreContext

CT = "1.2.840.10008.5.1.4.1.1.2"
EXTRA = ("PatientName", "PatientID", "StudyDescription", "StudyID")


def encoded(dataset: Dataset) -> bytes:
    """``dataset`` in explicit VR little endian, as a C-STORE-RQ carries it."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def instance(charset: str | None, **raw_values: bytes) -> tuple[Dataset, bytes]:
    """A CT instance whose extra text values are ``raw_values``, as bytes in the data set."""
    dataset = Dataset()
    if charset is not None:
        dataset.SpecificCharacterSet = charset
    dataset.SOPClassUID = CT
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    body = encoded(dataset)
    # The extra values go in as raw bytes (pydicom would encode text itself),
    # each a whole element in its place among the others: tags ascend.
    extra = Dataset()
    vrs = {"PatientName": "PN", "PatientID": "LO", "StudyDescription": "LO", "StudyID": "SH"}
    for keyword, raw in raw_values.items():
        extra.add_new(keyword, vrs[keyword], raw)
    dataset.update(extra)
    return dataset, encoded(dataset) if raw_values else body


def received(storage: adicom.DiskStorage, dataset: Dataset, body: bytes) -> IncomingInstance:
    context = StoreContext(
        "SCU", "STORE", CT, dataset.SOPInstanceUID, EXPLICIT_VR_LITTLE_ENDIAN, ("127.0.0.1", 1)
    )

    async def run() -> IncomingInstance:
        sink = storage.open(context)
        sink.write(memoryview(body))
        assert sink.finish_now() == 0x0000, sink.error
        return sink

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("charset", "raw_values"),
    [
        # Every value ASCII.
        (None, {"PatientName": b"Doe^John", "PatientID": b"ID1 ", "StudyID": b"7 "}),
        # Every value ASCII, padded either side with spaces and NULs, one empty.
        (None, {"PatientName": b" Doe^John\0", "PatientID": b"\0ID1", "StudyID": b""}),
        # ISO 2022: ASCII bytes, but one value has escape sequences (ESC).
        (
            "\\ISO 2022 IR 87",
            {
                "PatientName": b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
                "PatientID": b"ID2 ",
                "StudyDescription": b"HEAD",
            },
        ),
        # ESC in a value of the default repertoire, next to an empty one.
        (None, {"PatientName": b"", "PatientID": b"A\x1bB ", "StudyID": b"9 "}),
        # Not ASCII at all (Latin-1).
        ("ISO_IR 100", {"PatientName": "Müller^Jörg".encode("latin-1"), "PatientID": b"ID3 "}),
        # Several values with an ESC each.
        ("\\ISO 2022 IR 87", {"PatientID": b"\x1b(B", "StudyDescription": b"\x1b(B"}),
    ],
)
def test_values_are_what_each_decoded_alone_gives(
    tmp_path: pathlib.Path, charset: str | None, raw_values: dict[str, bytes]
) -> None:
    storage = adicom.DiskStorage(tmp_path, extra_keywords=EXTRA)
    dataset, body = instance(charset, **raw_values)
    sink = received(storage, dataset, body)
    encodings = instancevalues._encodings(charset or "")
    for keyword in EXTRA:
        raw = raw_values.get(keyword, b"")
        expected = instancevalues._decode_text(raw, encodings) if raw else ""
        assert sink.values[keyword] == expected, keyword
    assert sink.values["SOPInstanceUID"] == dataset.SOPInstanceUID
    # The raw bytes kept are those of the values that are not plain ASCII.
    kept = sink._raw_values()  # type: ignore[attr-defined]
    plain = {k for k, raw in raw_values.items() if raw.isascii() and b"\x1b" not in raw}
    assert set(kept) == {k for k, raw in raw_values.items() if raw} - plain
    for keyword, raw in kept.items():
        assert raw == raw_values[keyword].rstrip(b" \0")


def test_instances_share_no_state_they_change(tmp_path: pathlib.Path) -> None:
    # What an instance starts with is class defaults, made on first use:
    # one instance's raw values or status never show on another.
    storage = adicom.DiskStorage(tmp_path, extra_keywords=EXTRA)
    first = received(storage, *instance("ISO_IR 100", PatientName="Jörg".encode("latin-1")))
    second = received(storage, *instance(None, PatientName=b"Doe"))
    assert first._raw_values() == {"PatientName": "Jörg".encode("latin-1")}  # type: ignore[attr-defined]
    assert second._raw_values() == {}  # type: ignore[attr-defined]
    fresh = IncomingInstance(first.context)
    assert fresh.values == {} and fresh.error is None and fresh.status is None
    with pytest.raises(TypeError):
        fresh.values["x"] = "y"  # type: ignore[index]
    first.error = "changed"
    assert IncomingInstance(first.context).error is None


def pieces_received(storage: adicom.DiskStorage, dataset: Dataset, body: bytes, cut: int) -> int:
    """The status of ``body`` received in two fragments, the first ``cut`` bytes long."""
    context = StoreContext(
        "SCU", "STORE", CT, dataset.SOPInstanceUID, EXPLICIT_VR_LITTLE_ENDIAN, ("127.0.0.1", 1)
    )

    async def run() -> int:
        sink = storage.open(context)
        sink.write(memoryview(body)[:cut])
        sink.write(memoryview(body)[cut:])
        return await sink.finish()

    return asyncio.run(run())


@pytest.mark.parametrize("short", [0, 100])
def test_a_sequence_that_runs_past_the_first_fragment_is_walked_to_the_end(
    tmp_path: pathlib.Path, short: int
) -> None:
    # The first fragment has the layout's values (the UIDs come before it),
    # then a sequence of undefined length that goes on into the next: the
    # walk goes on from the file. A
    # data set cut short after it is refused; a whole one is stored.
    dataset, _ = instance(None)
    dataset.RequestAttributesSequence = [
        Dataset(RequestedProcedureID=str(n), ScheduledProcedureStepID=str(n)) for n in range(20)
    ]
    dataset["RequestAttributesSequence"].is_undefined_length = True
    dataset.Rows, dataset.Columns = 10, 10
    dataset.PixelData = bytes(200)
    dataset["PixelData"].VR = "OW"
    body = encoded(dataset)
    start = body.index(b"\x40\x00\x75\x02SQ")  # (0040,0275), undefined length
    assert body[start + 8 : start + 12] == b"\xff\xff\xff\xff"
    storage = adicom.DiskStorage(tmp_path)
    status = pieces_received(storage, dataset, body[: len(body) - short], start + 40)
    assert status == (0xC000 if short else 0x0000)
    assert len(list(tmp_path.rglob("*.dcm"))) == (0 if short else 1)


@pytest.mark.parametrize("taken", ["within the file meta", "all the file meta", "within the data"])
def test_a_first_write_cut_short_goes_on_where_it_stopped(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, taken: str
) -> None:
    # The file meta and the first fragment go in one writev; a file system
    # may take less (a signal, a full pipe of a FUSE daemon): the rest is
    # written after it, and the file is the file meta and the data set.
    storage = adicom.DiskStorage(tmp_path)
    dataset, body = instance(None, PatientID=b"ID1 ")
    context = StoreContext(
        "SCU", "STORE", CT, dataset.SOPInstanceUID, EXPLICIT_VR_LITTLE_ENDIAN, ("127.0.0.1", 1)
    )
    meta = context.file_meta()
    limit = {"within the file meta": 10, "all the file meta": len(meta)}.get(taken, len(meta) + 9)
    real_writev = os.writev
    calls = []

    def writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        calls.append(fd)
        if len(calls) > 1:
            return real_writev(fd, buffers)
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:limit])

    monkeypatch.setattr(os, "writev", writev)
    sink = received(storage, dataset, body)
    assert len(calls) == 1
    assert sink.path is not None and sink.path.read_bytes() == meta + body
