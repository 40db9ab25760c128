"""Test data for the storage interop tests, and the content checks.

Sample instances are copies of pydicom's bundled test files, each given a
fresh SOP Instance UID (several bundled files share one), one per transfer
syntax the tests exercise. The big instance is synthetic: a header written by
pydicom followed by a streamed Pixel Data value, so it is never held in memory
whole; its pixel data is checked through a streaming hash.

The comparison (:func:`assert_same_instance`) reads the sent and the received
instance with pydicom and walks both element by element (recursing into
sequences): same tags, same VRs where both encodings are explicit, same values.
When both sides use the same transfer syntax it compares the encoded value
bytes (so an encapsulated Pixel Data must be passed through untouched, item by
item, byte for byte); when an uncompressed instance was converted to another
uncompressed transfer syntax on the way, it compares decoded values, with the
OB/OW-style values byte-swapped across an endianness change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

PIXEL_DATA = 0x7FE00010
DATASET_TRAILING_PADDING = 0xFFFCFFFC
UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
#: Instances bigger than this are compared without loading their pixel data.
STREAM_THRESHOLD = 16 * 1024 * 1024

# VRs whose values are words of this many bytes, swapped across endianness.
_WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


# --------------------------------------------------------------------------
# Sample instances (pydicom's bundled files)


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """One bundled file and how DCMTK storescu proposes its transfer syntax."""

    label: str
    filename: str
    transfer_syntax: str
    #: storescu option proposing this transfer syntax (with the uncompressed
    #: ones); storescu never proposes a file's own syntax unless told to.
    storescu_option: str


SAMPLE_SPECS: tuple[SampleSpec, ...] = (
    SampleSpec("implicit-le", "MR_small_implicit.dcm", ImplicitVRLittleEndian, "-xi"),
    SampleSpec("implicit-le-rtplan", "rtplan.dcm", ImplicitVRLittleEndian, "-xi"),
    SampleSpec("explicit-le", "CT_small.dcm", ExplicitVRLittleEndian, "-xe"),
    SampleSpec("explicit-be", "MR_small_bigendian.dcm", ExplicitVRBigEndian, "-xb"),
    SampleSpec("jpeg-baseline", "SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "-xy"),
    SampleSpec("jpeg-extended", "JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", "-xx"),
    SampleSpec("jpeg-lossless", "SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", "-xs"),
    SampleSpec(
        "jpeg-ls-lossless", "MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "-xt"
    ),
    SampleSpec("jpeg2000-lossless", "MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "-xv"),
    SampleSpec("jpeg2000", "JPEG2000.dcm", "1.2.840.10008.1.2.4.91", "-xw"),
    SampleSpec("rle", "SC_rgb_rle.dcm", "1.2.840.10008.1.2.5", "-xr"),
)
SPECS_BY_LABEL = {spec.label: spec for spec in SAMPLE_SPECS}
UNCOMPRESSED_LABELS = ("implicit-le", "implicit-le-rtplan", "explicit-le", "explicit-be")
COMPRESSED_LABELS = tuple(s.label for s in SAMPLE_SPECS if s.transfer_syntax not in UNCOMPRESSED)


@dataclasses.dataclass(frozen=True)
class Instance:
    """A DICOM file on disk that a test sends."""

    label: str
    path: Path
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    storescu_option: str = "-xe"
    #: For a big instance: length and SHA-256 of the Pixel Data value.
    pixel_length: int | None = None
    pixel_sha256: str | None = None

    @property
    def compressed(self) -> bool:
        return self.transfer_syntax not in UNCOMPRESSED


def bundled_file(filename: str) -> Path:
    """Path of one of pydicom's bundled test files (never downloads)."""
    found = get_testdata_file(filename, download=False)
    if not isinstance(found, str):
        raise FileNotFoundError(f"pydicom does not bundle {filename}")
    return Path(found)


def write_sample(spec: SampleSpec, directory: Path) -> Instance:
    """Copy a bundled file into ``directory`` with a fresh SOP Instance UID."""
    ds = pydicom.dcmread(bundled_file(spec.filename))
    actual = str(ds.file_meta.TransferSyntaxUID)
    if actual != spec.transfer_syntax:
        raise AssertionError(
            f"{spec.filename}: transfer syntax {actual}, not {spec.transfer_syntax}"
        )
    # Two quirks of the bundled files that real peers repair in transit
    # (DCMTK's storescu does both), removed here so that the sent instance is
    # conformant and the comparison can stay exact: Data Set Trailing Padding
    # (PS3.10 7.2: no meaning, may be dropped), and an encapsulated Pixel Data
    # with VR OW (PS3.5 A.4: it is OB).
    if DATASET_TRAILING_PADDING in ds:
        del ds[DATASET_TRAILING_PADDING]
    if PIXEL_DATA in ds and ds[PIXEL_DATA].is_undefined_length:
        ds[PIXEL_DATA].VR = "OB"
    uid = generate_uid(prefix=None)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    path = directory / f"{spec.label}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Instance(
        label=spec.label,
        path=path,
        transfer_syntax=spec.transfer_syntax,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=uid,
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        storescu_option=spec.storescu_option,
    )


def write_samples(directory: Path) -> dict[str, Instance]:
    directory.mkdir(parents=True, exist_ok=True)
    return {spec.label: write_sample(spec, directory) for spec in SAMPLE_SPECS}


# --------------------------------------------------------------------------
# The big synthetic instance

#: Multi-frame Grayscale Word Secondary Capture Image Storage.
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
BIG_ROWS = BIG_COLUMNS = 2048
BIG_FRAMES = 25  # 25 frames x 2048 x 2048 x 2 bytes = 200 MiB (209,715,200 bytes)
_CHUNK = 1024 * 1024


def _pixel_chunks(length: int, seed: int) -> Iterator[bytes]:
    """``length`` bytes of random-looking data, 1 MiB at a time.

    One random block, each chunk stamped with its index, so that a chunk
    lost, repeated or moved changes the hash.
    """
    block = random.Random(seed).randbytes(_CHUNK)
    index = 0
    remaining = length
    while remaining > 0:
        chunk = struct.pack("<Q", index) + block[8:]
        yield chunk[:remaining]
        remaining -= len(chunk)
        index += 1


def write_big_instance(path: Path, frames: int = BIG_FRAMES, seed: int = 20240517) -> Instance:
    """Write a multi-frame 16-bit Secondary Capture instance with fresh UIDs.

    The header is written by pydicom (explicit VR little endian); the Pixel
    Data element, the last one, is appended by streaming its value.
    """
    sop_instance_uid = generate_uid(prefix=None)
    study_uid = generate_uid(prefix=None)
    series_uid = generate_uid(prefix=None)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MULTIFRAME_WORD_SC)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = UID(MULTIFRAME_WORD_SC)
    ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.StudyDate = "20240517"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.PatientName = "Interop^Big"
    ds.PatientID = "ADICOM-BIG"
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows = BIG_ROWS
    ds.Columns = BIG_COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0

    length = frames * BIG_ROWS * BIG_COLUMNS * 2
    digest = hashlib.sha256()
    with path.open("wb") as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved, 4 length.
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for chunk in _pixel_chunks(length, seed):
            digest.update(chunk)
            f.write(chunk)
    return Instance(
        label="big",
        path=path,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=MULTIFRAME_WORD_SC,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        storescu_option="-xe",
        pixel_length=length,
        pixel_sha256=digest.hexdigest(),
    )


# --------------------------------------------------------------------------
# Reading received instances


def read_header(path: Path) -> Dataset:
    """The instance at ``path`` without its Pixel Data (and what follows)."""
    return pydicom.dcmread(path, stop_before_pixels=True)


@dataclasses.dataclass(frozen=True)
class PixelDigest:
    vr: str | None  # None in implicit VR
    length: int  # 0xFFFFFFFF when encapsulated
    sha256: str  # of the value bytes as stored (swapped to little endian if asked)


def pixel_data_digest(path: Path, to_little_endian: bool = False) -> PixelDigest:
    """Hash the Pixel Data value of the file at ``path`` without loading it.

    A native (defined length) value is hashed as stored; with
    ``to_little_endian`` an OW value of a big endian file is byte-swapped
    first. An encapsulated value is hashed from its first item to the end of
    the file.
    """
    with path.open("rb") as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ts = UID(str(ds.file_meta.TransferSyntaxUID))
        start = f.tell()
        little = ts != ExplicitVRBigEndian
        implicit = ts == ImplicitVRLittleEndian
        endian = "<" if little else ">"
        group, element = struct.unpack(endian + "HH", _read_exactly(f, 4))
        if (group << 16 | element) != PIXEL_DATA:
            raise AssertionError(f"{path}: no Pixel Data at offset {start}")
        vr: str | None
        if implicit:
            vr = None
            (length,) = struct.unpack("<I", _read_exactly(f, 4))
        else:
            vr = _read_exactly(f, 2).decode("ascii")
            _read_exactly(f, 2)
            (length,) = struct.unpack(endian + "I", _read_exactly(f, 4))
        digest = hashlib.sha256()
        swap = to_little_endian and not little and vr == "OW"
        remaining = None if length == 0xFFFFFFFF else length
        while remaining is None or remaining > 0:
            want = _CHUNK if remaining is None else min(_CHUNK, remaining)
            chunk = f.read(want)
            if not chunk:
                if remaining is not None:
                    raise AssertionError(f"{path}: Pixel Data truncated, {remaining} bytes missing")
                break
            if swap:
                chunk = _swap_words(chunk, 2)
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
        if remaining is not None and f.read(1):
            # Anything after a native Pixel Data would have to be trailing
            # padding, which none of the peers here writes.
            raise AssertionError(f"{path}: data after the Pixel Data element")
    return PixelDigest(vr, length, digest.hexdigest())


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise AssertionError(f"unexpected end of file at offset {f.tell()}")
    return data


def _swap_words(data: bytes, size: int) -> bytes:
    if len(data) % size:
        raise AssertionError(f"value of {len(data)} bytes is not a multiple of {size}")
    out = bytearray(len(data))
    for i in range(size):
        out[i::size] = data[size - 1 - i :: size]
    return bytes(out)


# --------------------------------------------------------------------------
# Comparing a received instance with the sent one


def _encoding(ts: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of an uncompressed or compressed syntax."""
    if ts == ImplicitVRLittleEndian:
        return True, True
    if ts == ExplicitVRBigEndian:
        return False, False
    return False, True


def _tags(ds: Dataset, skip_group_lengths: bool) -> list[int]:
    tags = [int(t) for t in ds.keys()]  # noqa: SIM118 (iterating a Dataset yields elements)
    if skip_group_lengths:
        tags = [t for t in tags if t & 0xFFFF != 0]
    return tags


def _raw(ds: Dataset, tag: int) -> RawDataElement | DataElement:
    return ds.get_item(tag)  # without converting a raw element


def compare_datasets(
    sent: Dataset,
    received: Dataset,
    sent_ts: str,
    received_ts: str,
    where: str = "",
    skip_pixel_data: bool = False,
) -> list[str]:
    """Differences between two datasets, element by element; [] when equal.

    Same transfer syntax: the encoded bytes of every non-sequence value must
    be equal. Different (uncompressed) syntaxes: decoded values must be.
    """
    problems: list[str] = []
    same_ts = sent_ts == received_ts
    sent_implicit, sent_little = _encoding(sent_ts)
    recv_implicit, recv_little = _encoding(received_ts)
    both_explicit = not sent_implicit and not recv_implicit
    swap = sent_little != recv_little

    a_tags = _tags(sent, skip_group_lengths=not same_ts)
    b_tags = _tags(received, skip_group_lengths=not same_ts)
    if skip_pixel_data:
        a_tags = [t for t in a_tags if t != PIXEL_DATA]
        b_tags = [t for t in b_tags if t != PIXEL_DATA]
    for t in sorted(set(a_tags) - set(b_tags)):
        problems.append(f"{where}{_tag(t)}: missing from the received instance")
    for t in sorted(set(b_tags) - set(a_tags)):
        problems.append(f"{where}{_tag(t)}: not in the sent instance")

    for t in a_tags:
        if t not in b_tags:
            continue
        name = f"{where}{_tag(t)}"
        raw_a, raw_b = _raw(sent, t), _raw(received, t)
        if both_explicit and None not in (raw_a.VR, raw_b.VR) and raw_a.VR != raw_b.VR:
            problems.append(f"{name}: VR {raw_a.VR} sent, {raw_b.VR} received")
        a, b = sent[t], received[t]  # converted DataElements
        if a.VR == "SQ" or b.VR == "SQ":
            if a.VR != b.VR:
                problems.append(f"{name}: a sequence on one side only")
                continue
            if len(a.value) != len(b.value):
                problems.append(f"{name}: {len(a.value)} items sent, {len(b.value)} received")
                continue
            for i, (item_a, item_b) in enumerate(zip(a.value, b.value, strict=True)):
                problems += compare_datasets(
                    item_a, item_b, sent_ts, received_ts, where=f"{name}[{i}]."
                )
            continue
        if same_ts and isinstance(raw_a, RawDataElement) and isinstance(raw_b, RawDataElement):
            if raw_a.value != raw_b.value:
                problems.append(f"{name}: {_describe_bytes(raw_a.value, raw_b.value)}")
            continue
        va, vb = a.value, b.value
        if isinstance(va, bytes) and isinstance(vb, bytes):
            size = _WORD_SIZE.get(str(a.VR)) or _WORD_SIZE.get(str(b.VR))
            if swap and size and not a.is_undefined_length:
                vb = _swap_words(vb, size)
            if va != vb:
                problems.append(f"{name}: {_describe_bytes(va, vb)}")
        elif va != vb:
            problems.append(f"{name}: {va!r} sent, {vb!r} received")
    return problems


def _tag(t: int) -> str:
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"


def _describe_bytes(a: bytes | None, b: bytes | None) -> str:
    a, b = a or b"", b or b""
    if len(a) != len(b):
        return f"{len(a)} bytes sent, {len(b)} received"
    first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"values of {len(a)} bytes differ from byte {first} on"


def assert_same_instance(
    sent: Instance,
    received: Path | Dataset,
    *,
    same_transfer_syntax: bool | None = None,
    calling_ae: str | None = None,
) -> None:
    """Fail unless ``received`` (a file, or a dataset with .file_meta) is ``sent``.

    The received file meta must name the sent SOP class and instance. Its
    transfer syntax must be the sent one when ``same_transfer_syntax`` is True,
    or when the sent instance is compressed (a compressed instance must pass
    through untouched); otherwise it may be another uncompressed syntax (the
    sender converted), and values are compared decoded. With ``calling_ae``
    the file meta's Source Application Entity Title must be it.
    """
    what = f"{sent.label} ({sent.path.name})"
    if isinstance(received, Path):
        what += f" received as {received}"
        big = received.stat().st_size > STREAM_THRESHOLD
        recv_ds = read_header(received) if big else pydicom.dcmread(received)
    else:
        big = False
        recv_ds = received
    meta = getattr(recv_ds, "file_meta", None)
    assert meta is not None, f"{what}: no file meta"
    received_ts = str(meta.get("TransferSyntaxUID", ""))
    problems: list[str] = []

    for keyword, expected in (
        ("MediaStorageSOPClassUID", sent.sop_class_uid),
        ("MediaStorageSOPInstanceUID", sent.sop_instance_uid),
    ):
        got = meta.get(keyword)
        if got != expected:
            problems.append(f"file meta {keyword} {got!r}, expected {expected!r}")
    if calling_ae is not None:
        got = str(meta.get("SourceApplicationEntityTitle", "")).strip()
        if got != calling_ae:
            problems.append(f"file meta SourceApplicationEntityTitle {got!r}, not {calling_ae!r}")
    must_match = sent.compressed or bool(same_transfer_syntax)
    if must_match and received_ts != sent.transfer_syntax:
        problems.append(f"transfer syntax {received_ts}, sent as {sent.transfer_syntax}")
    elif received_ts not in UNCOMPRESSED | {sent.transfer_syntax}:
        problems.append(f"transfer syntax {received_ts} for a {sent.transfer_syntax} instance")
    if problems:
        raise AssertionError(f"{what}:\n  " + "\n  ".join(problems))

    sent_big = sent.pixel_sha256 is not None
    sent_ds = read_header(sent.path) if sent_big else pydicom.dcmread(sent.path)
    problems += compare_datasets(
        sent_ds, recv_ds, sent.transfer_syntax, received_ts, skip_pixel_data=sent_big or big
    )
    if sent_big or big:
        assert isinstance(received, Path), f"{what}: a big instance must be compared as a file"
        problems += _compare_big_pixel_data(sent, received, received_ts)
    if problems:
        raise AssertionError(f"{what} differs from the sent instance:\n  " + "\n  ".join(problems))


def _compare_big_pixel_data(sent: Instance, received: Path, received_ts: str) -> list[str]:
    if sent.pixel_sha256 is not None and sent.pixel_length is not None:
        expected = PixelDigest("OW", sent.pixel_length, sent.pixel_sha256)
    else:
        expected = pixel_data_digest(sent.path, to_little_endian=True)
    got = pixel_data_digest(received, to_little_endian=True)
    problems = []
    if got.vr is not None and expected.vr is not None and got.vr != expected.vr:
        problems.append(f"Pixel Data VR {got.vr}, sent {expected.vr}")
    if got.length != expected.length:
        problems.append(f"Pixel Data length {got.length}, sent {expected.length}")
    elif got.sha256 != expected.sha256:
        problems.append(f"Pixel Data differs (SHA-256 {got.sha256}, sent {expected.sha256})")
    return problems


# --------------------------------------------------------------------------
# Finding received files


def index_by_instance_uid(files: Iterable[Path]) -> dict[str, Path]:
    """Map SOP Instance UID -> file, for the DICOM files among ``files``."""
    found: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except pydicom.errors.InvalidDicomError:
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in found:
            raise AssertionError(f"two received files hold {uid}: {found[uid]}, {path}")
        found[uid] = path
    return found


def received_files(directory: Path) -> dict[str, Path]:
    """Index every file under ``directory`` (recursively) by SOP Instance UID."""
    return index_by_instance_uid(sorted(directory.rglob("*")))


def layout_path(root: Path, instance: Instance) -> Path:
    """Where DiskStorage's default layout puts ``instance`` under ``root``."""
    return (
        root
        / instance.study_instance_uid
        / instance.series_instance_uid
        / f"{instance.sop_instance_uid}.dcm"
    )
